"""Training configuration: one frozen dataclass, loaded from YAML, overridable per key.

Every paper setting is a YAML file under ``configs/``; ``--set key=value`` overrides any
key, and an unknown key is an error that lists the valid ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable

import yaml

from .models import MODELS
from .yaml_strict import load_yaml


# How a clip shorter than clip_seconds fills the window (primate_monitor.clipaudio.pad_train).
# zeros_end is the paper's; repeat is the default because short clips learn in far fewer
# iterations with it and long ones lose nothing (docs/short_clips.md).
PADDINGS = ("zeros_end", "random_offset", "repeat")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which key and why."""


@dataclass(frozen=True)
class TrainConfig:
    """The paper's recipe (Pellegrini 2021) as defaults."""

    model: str = "cnn10"  # one of primate_monitor.models.MODELS
    sample_rate: int = 16000  # Hz; audio is resampled to this
    clip_seconds: float = 3.0  # window length the model sees, s
    padding: str = "repeat"  # how a shorter clip fills the window: one of PADDINGS (paper: zeros_end)
    reject_class: str = "background"  # the class that means "no primate call"
    iterations: int = 60000  # optimizer steps
    batch_size: int = 32
    lr: float = 1e-3  # Adam learning rate
    amsgrad: bool = True  # the reference code used AMSGrad
    sampler: str = "balanced"  # balanced (round robin over classes) | random
    mixup: bool = True  # MixUp on log-mels, sigmoid + BCE; off means softmax + CE
    mixup_alpha: float = 1.0  # Beta(alpha, alpha); 1.0 as in the reference code
    specaugment: bool = True
    specaugment_per_example: bool = False  # paper: the same stripes for the whole batch
    time_stripes: int = 2  # at most this many time stripes
    time_stripe_width: int = 16  # frames, at most
    freq_stripes: int = 2
    freq_stripe_width: int = 8  # mel bins, at most
    ema: bool = True  # keep an exponential moving average of the weights
    ema_decay: float = 0.995
    ema_start: int = 15000  # iteration from which the EMA averages (copies before)
    eval_every: int = 1000  # validate on devel every N iterations
    eval_hop_seconds: float = 1.0  # hop of the 3 s windows over a long devel clip, s
    log_every: int = 50  # iterations between progress updates
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    data_format: str = "auto"  # auto | compare | folders | raven
    train_split: str = "train"
    devel_split: str = "devel"
    devel_fraction: float = 0.2  # held-out share of recordings when the data has no devel split
    raven_label_column: str = "Species"  # label column of Raven tables
    raven_background: bool = False  # use unannotated stretches as the reject class
    raven_background_per_file: int = 20  # at most this many background windows per recording
    skip_bad: bool = False  # skip unreadable clips (listed in the output) instead of failing
    cache_dir: str | None = None  # decoded-audio cache; None means OUT/cache
    workers: int = 1  # processes for decoding clips
    init_from: str | None = None  # checkpoint whose weights start the run (fine-tuning); None: random
    # seconds of training clips on which best.safetensors is calibrated for int8 scans at the end
    # (best.int8.safetensors; scan --precision auto uses it where int8 agrees with fp32); 0: none
    int8_calibration_seconds: float = 300.0

    def __post_init__(self) -> None:
        checks = [
            (self.model in MODELS, f"model must be one of {sorted(MODELS)}, got {self.model!r}"),
            (self.sample_rate >= 1000, f"sample_rate must be at least 1000 Hz, got {self.sample_rate}"),
            (all(math.isfinite(v) for v in (self.clip_seconds, self.lr, self.mixup_alpha, self.eval_hop_seconds)),
             "clip_seconds, lr, mixup_alpha and eval_hop_seconds must be finite numbers"),
            (self.clip_seconds > 0, "clip_seconds must be positive"),
            (self.padding in PADDINGS, f"padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}"),
            (self.iterations >= 1, "iterations must be at least 1"),
            (self.batch_size >= 2, "batch_size must be at least 2"),
            (self.lr > 0, "lr must be positive"),
            (self.sampler in ("balanced", "random"), "sampler must be 'balanced' or 'random'"),
            (self.mixup_alpha > 0, "mixup_alpha must be positive"),
            (0.0 < self.ema_decay < 1.0, "ema_decay must be in (0, 1)"),
            (self.ema_start >= 0, "ema_start must be >= 0"),
            (self.eval_every >= 1, "eval_every must be at least 1"),
            (self.eval_hop_seconds * self.sample_rate >= 1, "eval_hop_seconds must be positive and at least one sample"),
            (self.log_every >= 1, "log_every must be at least 1"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
            (self.data_format in ("auto", "compare", "folders", "raven"), "data_format must be auto, compare, folders or raven"),
            (0.0 < self.devel_fraction < 1.0, "devel_fraction must be in (0, 1)"),
            (self.workers >= 1, "workers must be at least 1"),
            (math.isfinite(self.int8_calibration_seconds) and self.int8_calibration_seconds >= 0,
             "int8_calibration_seconds must be a finite number >= 0 (0: no int8 calibration)"),
            (min(self.time_stripes, self.freq_stripes, self.time_stripe_width, self.freq_stripe_width) >= 0,
             "SpecAugment stripe counts and widths must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def recipe(self) -> dict[str, Any]:
        """The keys that decide what is learned: what a resumed run must match. The run options
        (RUN_OPTIONS: where it runs, how it logs and caches, how long it goes on) may change on
        resume, e.g. a run started on a GPU continued on a CPU."""
        return {k: v for k, v in asdict(self).items() if k not in RUN_OPTIONS}


# Keys that say how a run is carried out, not what it learns (see TrainConfig.recipe).
RUN_OPTIONS = frozenset({"device", "workers", "cache_dir", "log_every", "iterations", "int8_calibration_seconds"})


# One line per key for `primate-monitor config-keys`; kept beside the dataclass so a new
# key gets its meaning in the same edit (a test checks that every key has one).
KEY_HELP: dict[str, str] = {
    "model": f"network architecture: one of {', '.join(sorted(MODELS))}",
    "sample_rate": "audio is resampled to this rate (Hz) before the log-mel front end",
    "clip_seconds": "length of the window the model sees, s (longer clips are cropped, shorter padded)",
    "padding": "a shorter clip fills the window by: repeat (tiled; default), zeros_end (the paper), or random_offset (docs/short_clips.md)",
    "reject_class": "the class that means 'no primate call' (background)",
    "iterations": "number of optimizer steps to train for",
    "batch_size": "clips per optimizer step",
    "lr": "Adam learning rate",
    "amsgrad": "use the AMSGrad variant of Adam (as the reference code)",
    "sampler": "balanced: round robin over classes; random: uniform over clips",
    "mixup": "MixUp on log-mels with sigmoid + BCE loss; false: softmax + cross-entropy",
    "mixup_alpha": "MixUp mixing weights are drawn from Beta(alpha, alpha)",
    "specaugment": "mask random time and frequency stripes of the log-mels",
    "specaugment_per_example": "draw SpecAugment stripes per clip instead of once per batch",
    "time_stripes": "at most this many SpecAugment time stripes",
    "time_stripe_width": "SpecAugment time stripe width, frames, at most",
    "freq_stripes": "at most this many SpecAugment frequency stripes",
    "freq_stripe_width": "SpecAugment frequency stripe width, mel bins, at most",
    "ema": "also keep an exponential moving average of the weights (validated too)",
    "ema_decay": "EMA decay per step, in (0, 1)",
    "ema_start": "step from which the EMA averages (it copies the weights before)",
    "eval_every": "validate on the devel split every this many steps",
    "eval_hop_seconds": "hop of the windows over a devel clip longer than clip_seconds, s",
    "log_every": "steps between progress-bar updates",
    "init_from": "checkpoint (.safetensors) whose weights start training, e.g. to fine-tune with hard negatives; same model, classes and sample rate; default: random weights",
    "int8_calibration_seconds": "seconds of training clips on which best.safetensors is calibrated for int8 scans when training ends (scan --precision auto uses int8 only where that calibration agrees with fp32); 0: none",
    "seed": "random seed (initial weights, sampler, augmentation, devel hold-out)",
    "device": "auto (CUDA when available), cpu or cuda",
    "data_format": "layout of DATA: auto, compare (lab/*.csv), folders (one per class) or raven",
    "train_split": "name of the training split (CSV name or folder)",
    "devel_split": "name of the validation split (CSV name or folder)",
    "devel_fraction": "share of recordings held out for devel, per class, when DATA has no devel split",
    "raven_label_column": "column of Raven selection tables that holds the class label",
    "raven_background": "turn unannotated stretches of Raven-annotated recordings into reject-class clips",
    "raven_background_per_file": "at most this many background clips per recording",
    "skip_bad": "skip unreadable clips (listed in OUT/skipped_clips.csv) instead of failing",
    "cache_dir": "folder for decoded audio (.npy); null means OUT/cache",
    "workers": "processes that decode clips",
}


def valid_keys() -> list[str]:
    """Every config key, in the dataclass's order (for error messages and --set)."""
    return [f.name for f in fields(TrainConfig)]


def describe_keys() -> list[tuple[str, str, Any, str]]:
    """(key, type, default, one-line meaning) for every config key, for ``config-keys``:
    a user choosing ``--set`` values needs to know what each key takes and does."""
    return [(f.name, str(f.type), f.default, KEY_HELP.get(f.name, "")) for f in fields(TrainConfig)]


def _check_keys(keys: Iterable[str], source: str) -> None:
    unknown = sorted(set(keys) - set(valid_keys()))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys are: {', '.join(valid_keys())}")


def _coerce(key: str, value: Any) -> Any:
    """Convert a YAML value to the field's type, so '1e-3' or 3 work where a float is due."""
    default = getattr(TrainConfig, key)
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: expected {type(default).__name__}, got {value!r}") from e
    # text keys (cache_dir may also be null): a YAML number such as a split named 2021 is
    # taken as its text; a list, mapping, bool (yes/no/on/off: quote it) or null is an error
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{key}: expected text, got {value!r}" + (" (quote it)" if isinstance(value, bool) else ""))
    return str(value)


def from_dict(values: dict[str, Any], source: str = "config", base: TrainConfig | None = None) -> TrainConfig:
    """Validated config from a mapping; keys not given keep ``base``'s values."""
    _check_keys(values, source)
    return replace(base or TrainConfig(), **{k: _coerce(k, v) for k, v in values.items()})


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> TrainConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = load_yaml(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read config: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config must be a mapping of key: value")
        values.update(loaded or {})
    config = from_dict(values, source=str(path or "defaults"))
    return from_dict(parse_overrides(overrides), source="--set", base=config)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """['iterations=500', 'mixup=false'] -> {'iterations': 500, 'mixup': False} (YAML scalars)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return parsed
