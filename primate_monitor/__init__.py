"""primate-monitor: find primate calls in long forest recordings.

The library API (the CLI is a thin layer over it)::

    from primate_monitor import scan_recording, scan, ScanConfig, EventOptions, load_checkpoint, create_model
    from primate_monitor.train import train            # and primate_monitor.evaluate.evaluate
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# name -> module; imported on first use so `import primate_monitor` stays light
_API = {
    "scan_recording": "scanner",
    "ScanConfig": "scanner",
    "scan": "scan_run",
    "EventOptions": "events",
    "load_checkpoint": "checkpoint",
    "create_model": "models",
    "load_config": "config",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'primate_monitor' has no attribute {name!r}")
