"""Reading YAML the project's way: safe, and strict about duplicate keys.

Configs (``configs/*.yaml``) and thresholds files (``calibrate``'s ``thresholds.yaml``) are
edited by hand. PyYAML keeps the last of two equal keys without a word, so a key written
twice would silently drop a value; here it is an error that points at the line.
"""

from __future__ import annotations

from typing import Any

import yaml


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:  # an unhashable key: the safe loader's own error names it
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"the key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """YAML as ``yaml.safe_load`` reads it, except that a duplicate key raises a YAMLError. Why:
    PyYAML keeps the last of two equal keys without a word, so ``lr`` or ``gibbon`` written twice
    in a config or thresholds file would silently drop one of the values."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
