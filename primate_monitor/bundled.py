"""The demo model shipped inside the package (docs/models/demo.md)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .checkpoint import CheckpointError

DEMO_MODEL_FILE = "demo_cnn10_8k.safetensors"


def default_model_path() -> Path:
    """Path of the bundled demo checkpoint: CNN10 at 8 kHz, chimpanzee/gibbon/titi/howler + background."""
    path = Path(str(resources.files("primate_monitor") / "assets" / DEMO_MODEL_FILE))
    if not path.is_file():
        raise CheckpointError(f"{path}: the bundled demo model is missing from this installation; pass --model CKPT")
    return path
