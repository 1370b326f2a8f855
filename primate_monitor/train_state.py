"""The resume state of a training run, saved without pickle.

Tensors (raw weights, EMA weights, optimizer moments, RNG states) go into one
safetensors file; everything else (step, sampler order, numpy RNG state, optimizer
hyper-parameters, history) into its JSON header metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .checkpoint import CheckpointError
from .fsutil import atomic_write

STATE_KEY = "primate_monitor_resume"


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_train_state(path: Path, tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    """Atomically write model/EMA/RNG ``tensors`` plus the optimizer and ``meta`` (JSON-able)."""
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    payload = {k: v.detach().cpu().contiguous() for k, v in tensors.items()} | opt_tensors
    text = json.dumps(meta | {"optimizer": opt_meta})
    with atomic_write(path) as tmp:
        save_file(payload, str(tmp), metadata={STATE_KEY: text})


def load_train_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a resume file; ``meta['optimizer']`` rebuilds the optimizer."""
    try:
        tensors = load_file(str(path))
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        meta = json.loads(header["__metadata__"][STATE_KEY])
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise CheckpointError(f"{path}: not a primate-monitor resume file: {e}") from e
    return tensors, meta


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], opt_meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, scalars in opt_meta["scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": opt_meta["param_groups"]})
