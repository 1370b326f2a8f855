"""Training configuration: one frozen dataclass, loaded from YAML, overridable per key.

Every paper setting is a YAML file under ``configs/``; ``--set key=value`` overrides any
key, and an unknown key is an error that lists the valid ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable

import yaml

from .models import MODELS


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which key and why."""


@dataclass(frozen=True)
class TrainConfig:
    """The paper's recipe (Pellegrini 2021) as defaults."""

    model: str = "cnn10"  # one of primate_monitor.models.MODELS
    sample_rate: int = 16000  # Hz; audio is resampled to this
    clip_seconds: float = 3.0  # window length the model sees, s
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

    def __post_init__(self) -> None:
        checks = [
            (self.model in MODELS, f"model must be one of {sorted(MODELS)}, got {self.model!r}"),
            (self.sample_rate >= 1000, f"sample_rate must be at least 1000 Hz, got {self.sample_rate}"),
            (self.clip_seconds > 0, "clip_seconds must be positive"),
            (self.iterations >= 1, "iterations must be at least 1"),
            (self.batch_size >= 2, "batch_size must be at least 2"),
            (self.lr > 0, "lr must be positive"),
            (self.sampler in ("balanced", "random"), "sampler must be 'balanced' or 'random'"),
            (self.mixup_alpha > 0, "mixup_alpha must be positive"),
            (0.0 < self.ema_decay < 1.0, "ema_decay must be in (0, 1)"),
            (self.ema_start >= 0, "ema_start must be >= 0"),
            (self.eval_every >= 1, "eval_every must be at least 1"),
            (self.eval_hop_seconds > 0, "eval_hop_seconds must be positive"),
            (self.log_every >= 1, "log_every must be at least 1"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
            (self.data_format in ("auto", "compare", "folders", "raven"), "data_format must be auto, compare, folders or raven"),
            (0.0 < self.devel_fraction < 1.0, "devel_fraction must be in (0, 1)"),
            (self.workers >= 1, "workers must be at least 1"),
            (min(self.time_stripes, self.freq_stripes, self.time_stripe_width, self.freq_stripe_width) >= 0,
             "SpecAugment stripe counts and widths must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def valid_keys() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


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
            loaded = yaml.safe_load(Path(path).read_text())
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
