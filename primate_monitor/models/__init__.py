"""Model registry: ``create_model(name, num_classes)`` builds any of the paper's networks."""

from __future__ import annotations

from typing import Callable

from .base import AudioClassifier
from .cnn import cnn6, cnn10
from .mobilenet import mobilenetv1
from .resnet import resnet22
from .wrn import wrn28_2

MODELS: dict[str, Callable[[int], AudioClassifier]] = {
    "cnn6": cnn6,
    "cnn10": cnn10,
    "mobilenetv1": mobilenetv1,
    "resnet22": resnet22,
    "wrn28_2": wrn28_2,
}


def create_model(name: str, num_classes: int) -> AudioClassifier:
    """A freshly initialised network; ``forward(logmel) -> (logits, embedding)``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return MODELS[name](num_classes)


__all__ = ["AudioClassifier", "MODELS", "create_model"]
