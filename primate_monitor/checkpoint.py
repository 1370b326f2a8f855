"""Self-describing checkpoints: safetensors weights plus JSON metadata, never pickle.

One ``.safetensors`` file holds the weights and, in its header metadata under the key
``primate_monitor``, a JSON document with everything needed to score audio: model name,
classes, reject class, output activation, sample rate, front-end parameters, clip length,
the full training config, metrics, package version and a training-data summary. A
``.json`` sidecar with the same document is written beside it for people to read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .frontend import FrontEndConfig
from .fsutil import atomic_write
from .models import AudioClassifier, create_model

FORMAT_NAME = "primate-monitor-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "primate_monitor"


class CheckpointError(Exception):
    """A file that is not a usable primate-monitor checkpoint; the message names it."""


@dataclass(frozen=True)
class ModelInfo:
    """The metadata a checkpoint carries about its model."""

    model: str
    classes: tuple[str, ...]
    reject_class: str
    activation: str  # "sigmoid" (trained with MixUp + BCE) or "softmax"
    frontend: FrontEndConfig
    clip_seconds: float
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data_summary: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    # calibrated per-species score thresholds (``primate-monitor set-thresholds``); scan uses them
    # unless told otherwise. Empty for checkpoints without them: every species then uses 0.5.
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "classes": list(self.classes),
            "reject_class": self.reject_class,
            "activation": self.activation,
            "sample_rate": self.sample_rate,
            "frontend": self.frontend.to_dict(),
            "clip_seconds": self.clip_seconds,
            "config": self.config,
            "metrics": self.metrics,
            "data_summary": self.data_summary,
            "version": self.version,
        } | ({"thresholds": dict(sorted(self.thresholds.items()))} if self.thresholds else {})

    @classmethod
    def from_dict(cls, meta: dict[str, Any], source: str) -> "ModelInfo":
        if meta.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{source}: not a primate-monitor checkpoint (format is {meta.get('format')!r})")
        try:
            return cls(
                model=meta["model"],
                classes=tuple(meta["classes"]),
                reject_class=meta["reject_class"],
                activation=meta["activation"],
                frontend=FrontEndConfig(**meta["frontend"]),
                clip_seconds=float(meta["clip_seconds"]),
                config=meta.get("config", {}),
                metrics=meta.get("metrics", {}),
                data_summary=meta.get("data_summary", {}),
                version=meta.get("version", "unknown"),
                thresholds=_read_thresholds(meta.get("thresholds"), meta["classes"], meta["reject_class"], source),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: checkpoint metadata is incomplete or invalid: {e}") from e


def _read_thresholds(raw: Any, classes: list[str], reject_class: str, source: str) -> dict[str, float]:
    """The optional ``thresholds`` field: species of this model -> a number in [0, 1]. Absent (older
    checkpoints) means none. Checked here so a bad field fails at load, naming the file."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: metadata field 'thresholds' must map species to numbers, got {raw!r}")
    out = {}
    for name, value in raw.items():
        if name not in classes or name == reject_class:
            raise CheckpointError(f"{source}: threshold for {name!r}, which is not a species of this model "
                                  f"({[c for c in classes if c != reject_class]})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise CheckpointError(f"{source}: threshold for {name!r} must be a number in [0, 1], got {value!r}")
        out[str(name)] = float(value)
    return out


@dataclass
class LoadedModel:
    """A network ready for inference, with its metadata and a short identity string."""

    network: AudioClassifier
    info: ModelInfo
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        """``<model>@<first 12 hex digits of the weights file's sha256>``, stored with every detection."""
        return f"{self.info.model}@{self.sha256[:12]}"

    @property
    def device(self) -> torch.device:
        """Where the network's weights are: what decides CPU-only paths (int8) and GPU batching."""
        return next(self.network.parameters()).device


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], info: ModelInfo, dtype: torch.dtype | None = None) -> Path:
    """Write weights + metadata atomically (temp file then rename); ``dtype`` casts float tensors (e.g. fp16)."""
    path = Path(path)
    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    meta = info.to_dict()
    text = json.dumps(meta, indent=2, sort_keys=True, default=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: text})
    with atomic_write(path.with_suffix(".json")) as tmp:
        Path(tmp).write_text(text + "\n")
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, read from the safetensors header (no weights loaded)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if header_len <= 0 or header_len > 100_000_000:
                raise ValueError("bad header length")
            header = json.loads(f.read(header_len))
        meta = json.loads(header["__metadata__"][METADATA_KEY])
        data_end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a primate-monitor checkpoint (no safetensors header with our metadata)") from e
    # the header is whole but the weights may not be (a copy cut short): say so now, not at load
    missing = 8 + header_len + data_end - path.stat().st_size
    if missing > 0:
        raise CheckpointError(f"{path}: truncated, {missing} bytes of its weights are missing; copy it again")
    return meta


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights on the CPU (safetensors: never unpickles); CheckpointError naming
    the file when they cannot be read."""
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read weights: {e}") from e


def fit_weights(network: AudioClassifier | torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | Path,
                what: str = "this network") -> None:
    """Load ``tensors`` into ``network``, cast to its dtypes (bundled weights are fp16);
    CheckpointError naming the file, and ``what`` was expected, when they do not fit
    (another model or class count)."""
    expected = network.state_dict()
    try:
        network.load_state_dict({k: v.to(expected[k].dtype) if k in expected else v for k, v in tensors.items()})
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match {what}: {e}") from e


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the network from a checkpoint, in eval mode on ``device``. Never unpickles."""
    path = Path(path)
    info = ModelInfo.from_dict(read_metadata(path), str(path))
    network = create_model(info.model, len(info.classes))
    fit_weights(network, read_tensors(path), path, f"a {info.model} with {len(info.classes)} classes")
    return LoadedModel(network.to(device).eval(), info, path, file_sha256(path))
