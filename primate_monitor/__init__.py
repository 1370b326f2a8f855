"""primate-monitor: find primate calls in long forest recordings."""

__version__ = "0.1.0"
