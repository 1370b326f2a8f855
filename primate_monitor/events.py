"""Windows -> detection events: threshold each species, then merge nearby windows."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    from datetime import datetime

    from .checkpoint import LoadedModel

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5  # score in [0, 1] at or above which a window is a detection
# A threshold of 1 switches a species off: it is never reported. Why not "score >= 1": scores
# saturate (a float32 sigmoid or softmax reaches exactly 1.0 for a confident window, and
# float16 window scores do so from 0.99976), so ">= 1" would still report the loudest false
# alarms of a species that calibrate found absent from a site (calibrate.py).
OFF_THRESHOLD = 1.0
# Window starts are floats (start_samples / sample_rate); windows that touch
# exactly (hop == window) can show a gap of ~1e-15 s and must still merge.
GAP_TOLERANCE_S = 1e-6

# The schema of an event row: every output (Parquet, CSV, Raven, ...) is written from these columns.
EVENT_SCHEMA = pa.schema([
    ("recording", pa.string()),  # path relative to the scanned root
    ("recording_path", pa.string()),  # absolute path
    ("recording_start", pa.timestamp("us", tz="UTC")),  # null when unknown
    ("begin_s", pa.float64()),  # seconds from the start of the recording
    ("end_s", pa.float64()),
    ("begin_time", pa.timestamp("us", tz="UTC")),  # recording_start + begin_s, or null
    ("end_time", pa.timestamp("us", tz="UTC")),
    ("species", pa.string()),
    ("peak_score", pa.float64()),
    ("mean_score", pa.float64()),
    ("n_windows", pa.int64()),
    ("low_freq_hz", pa.float64()),  # band the model looked at, for the Raven box
    ("high_freq_hz", pa.float64()),
    ("model", pa.string()),
])
EVENT_COLUMNS = tuple(EVENT_SCHEMA.names)

EVENT_DTYPES: dict[str, str] = {
    "species": "str",
    "begin_s": "float64",
    "end_s": "float64",
    "peak_score": "float64",
    "mean_score": "float64",
    "n_windows": "int64",
}


def passing(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask of the scores that are detections at ``threshold``: score >= threshold,
    and none at all when the threshold is OFF_THRESHOLD (1, "off"). Every place that applies a
    threshold (events, summarize) uses this, so "off" means the same everywhere."""
    scores = np.asarray(scores)
    if threshold >= OFF_THRESHOLD:
        return np.zeros(scores.shape, dtype=bool)
    return scores >= threshold


def _check_threshold(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"threshold for {name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"threshold for {name} must be in [0, 1], got {value}")
    return value


@dataclass(frozen=True)
class EventOptions:
    """How window scores become events. Validated on construction."""

    threshold: float = DEFAULT_THRESHOLD  # default per-class score threshold, in [0, 1]; 1 = off
    # per-class overrides, species -> threshold; stored read-only, excluded from hash
    class_thresholds: Mapping[str, float] = field(default_factory=dict, hash=False)
    classes: tuple[str, ...] | None = None  # only report these species (None = all but the reject class)
    min_windows: int = 1  # drop events with fewer detected windows
    max_gap_s: float = 0.0  # merge when the next detected window starts <= this many s after the event's end

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", _check_threshold("default", self.threshold))
        overrides = {str(k): _check_threshold(repr(k), v) for k, v in dict(self.class_thresholds).items()}
        object.__setattr__(self, "class_thresholds", MappingProxyType(overrides))
        if self.classes is not None:
            if isinstance(self.classes, str):
                raise ValueError(f"classes must be a sequence of species names, not the string {self.classes!r}")
            if len(self.classes) == 0:
                raise ValueError("classes must not be empty; use None to report all species")
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if isinstance(self.min_windows, bool) or not isinstance(self.min_windows, (int, np.integer)) \
                or self.min_windows < 1:
            raise ValueError(f"min_windows must be an int >= 1, got {self.min_windows!r}")
        if not isinstance(self.max_gap_s, (int, float)) or not math.isfinite(self.max_gap_s) or self.max_gap_s < 0:
            raise ValueError(f"max_gap_s must be a finite number of seconds >= 0, got {self.max_gap_s!r}")

    def __reduce__(self):
        """Pickle by value (the read-only mapping cannot be pickled), so a scan's options reach
        worker processes and Dask workers."""
        from dataclasses import fields

        values = (getattr(self, f.name) for f in fields(self))
        return (type(self), tuple(dict(v) if isinstance(v, MappingProxyType) else v for v in values))

    def threshold_for(self, species: str) -> float:
        """The score threshold for ``species``: its override, else the default."""
        return self.class_thresholds.get(species, self.threshold)


def parse_thresholds(values: Sequence[str]) -> tuple[float, dict[str, float]]:
    """Parse CLI items like ["0.6", "chimpanzee=0.7"] into (default, overrides).

    The default is DEFAULT_THRESHOLD when no bare number is given.
    """
    default: float | None = None
    overrides: dict[str, float] = {}
    for item in values:
        name, sep, number = item.rpartition("=")
        name = name.strip()
        try:
            value = float(number)
        except ValueError as e:
            raise ValueError(f"bad threshold {item!r}: expected NUMBER or SPECIES=NUMBER") from e
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"bad threshold {item!r}: must be in [0, 1]")
        if not sep:
            if default is not None:
                raise ValueError(f"bad threshold {item!r}: a default threshold was already given ({default})")
            default = value
        elif not name:
            raise ValueError(f"bad threshold {item!r}: empty species name")
        elif name in overrides:
            raise ValueError(f"bad threshold {item!r}: {name!r} given twice")
        else:
            overrides[name] = value
    return (DEFAULT_THRESHOLD if default is None else default), overrides


def load_thresholds_file(path: str | Path) -> dict[str, float]:
    """Per-species thresholds from a YAML file: calibrate's ``thresholds.yaml`` (the mapping under
    its ``thresholds:`` key; its ``fitted:`` block is documentation) or a plain ``species: threshold``
    mapping, as summarize reads.

    Why a file: calibrated thresholds differ per species and site, and typing each on the
    command line invites mistakes. Every value must be a number in [0, 1]; errors name the file.
    An empty mapping is allowed (calibrate found no species with enough verdicts) and logged.
    """
    import yaml

    from .yaml_strict import load_yaml

    path = Path(path)
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read thresholds file: {e}") from e
    if isinstance(data, dict) and "thresholds" in data:
        data = data["thresholds"] if data["thresholds"] is not None else {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a thresholds file maps species to thresholds ('gibbon: 0.7'), "
                         "optionally under a 'thresholds:' key")
    out: dict[str, float] = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{path}: threshold for {name!r} must be a number in [0, 1], got {value!r}")
        out[str(name)] = float(value)
    if not out:
        logger.warning("%s holds no thresholds; every species keeps its default", path)
    return out


def validate_options(options: EventOptions, classes: Sequence[str], reject_class: str | None) -> None:
    """Raise ValueError if options name a species the model does not report."""
    if reject_class is not None and reject_class not in classes:
        raise ValueError(f"reject class {reject_class!r} is not one of the model classes {list(classes)}")
    valid = [c for c in classes if c != reject_class]
    named = list(options.classes or ()) + list(options.class_thresholds)
    unknown = sorted({c for c in named if c not in valid})
    if unknown:
        raise ValueError(f"unknown species {unknown}; valid species: {valid}")


def empty_events() -> pd.DataFrame:
    """A 0-row events frame with the columns and dtypes detect_events returns."""
    return pd.DataFrame({col: pd.Series([], dtype=dtype) for col, dtype in EVENT_DTYPES.items()})


def _species_events(starts_s: np.ndarray, window_s: float, duration_s: float, species_scores: np.ndarray,
                    threshold: float, max_gap_s: float) -> dict[str, np.ndarray] | None:
    """Events of one species as column arrays, or None if it has no detected window."""
    idx = np.flatnonzero(passing(species_scores, threshold))
    if idx.size == 0:
        return None
    s = starts_s[idx]
    score = species_scores[idx].astype(np.float64)
    # windows have one length and are sorted, so the event's end is its last window's end
    gap = s[1:] - (s[:-1] + window_s)
    first = np.flatnonzero(np.concatenate(([True], gap > max_gap_s + GAP_TOLERANCE_S)))  # event heads
    last = np.append(first[1:], s.size) - 1
    n = last - first + 1
    return {
        "begin_s": s[first],
        "end_s": np.minimum(s[last] + window_s, duration_s),
        "peak_score": np.maximum.reduceat(score, first),
        "mean_score": np.add.reduceat(score, first) / n,
        "n_windows": n.astype(np.int64),
    }


def _check_inputs(starts_s: np.ndarray, window_s: float, duration_s: float, scores: np.ndarray,
                  classes: Sequence[str]) -> None:
    if scores.ndim != 2 or scores.shape != (starts_s.shape[0], len(classes)):
        raise ValueError(f"scores must have shape (n_windows, n_classes) = ({starts_s.shape[0]}, {len(classes)}), "
                         f"got {scores.shape}")
    if not window_s > 0 or not duration_s >= 0:
        raise ValueError(f"window_s must be > 0 and duration_s >= 0, got {window_s}, {duration_s}")
    if starts_s.size > 1 and np.any(np.diff(starts_s) < 0):
        raise ValueError("starts_s must be sorted ascending")


def detect_events(starts_s: np.ndarray, window_s: float, duration_s: float, scores: np.ndarray,
                  classes: Sequence[str], reject_class: str | None, options: EventOptions) -> pd.DataFrame:
    """Turn per-window scores into per-species events.

    starts_s: (n_windows,) window starts in s, ascending; window_s: window length in s;
    duration_s: recording length in s (clips the last event's end); scores:
    (n_windows, n_classes) in ``classes`` order. A window is a detection of a
    species (not reject_class, selected by options.classes) when its score is
    >= options.threshold_for(species), never when that threshold is 1 (off). Per species, detections merge while
    next start - current end <= options.max_gap_s (overlapping windows always
    merge). Returns columns EVENT_DTYPES, sorted by begin_s then species.
    """
    starts_s = np.asarray(starts_s, dtype=np.float64)
    scores = np.asarray(scores)
    _check_inputs(starts_s, window_s, duration_s, scores, classes)
    validate_options(options, classes, reject_class)
    frames = []
    for j, species in enumerate(classes):
        if species == reject_class or (options.classes is not None and species not in options.classes):
            continue
        cols = _species_events(starts_s, window_s, duration_s, scores[:, j], options.threshold_for(species),
                               options.max_gap_s)
        if cols is not None:
            frames.append(pd.DataFrame({"species": species, **cols}))
    if not frames:
        return empty_events()
    events = pd.concat(frames, ignore_index=True)
    events = events[events["n_windows"] >= options.min_windows]
    events = events.sort_values(["begin_s", "species"], kind="mergesort", ignore_index=True)
    return events.astype(EVENT_DTYPES)[list(EVENT_DTYPES)]


# ---- event rows: windows of one recording -> rows with every column of EVENT_SCHEMA ----------


@dataclass(frozen=True)
class EventContext:
    """What turning window scores into event rows needs to know about the model."""

    classes: tuple[str, ...]
    reject_class: str | None  # None when the model has no reject class
    clip_seconds: float
    low_freq_hz: float  # the band the model analyses, for the Raven box
    high_freq_hz: float
    model_name: str

    @classmethod
    def from_model(cls, model: "LoadedModel") -> "EventContext":
        info = model.info
        return cls(info.classes, info.reject_class if info.reject_class in info.classes else None, info.clip_seconds,
                   float(info.frontend.fmin_hz), float(info.frontend.upper_hz), model.name)


def build_events(ctx: EventContext, options: EventOptions, recording: str, path: str, start: datetime | None,
                 starts_s: np.ndarray, scores: np.ndarray, duration_s: float) -> pd.DataFrame:
    """Detection events of one recording with every column of the Parquet schema."""
    events = detect_events(starts_s, ctx.clip_seconds, duration_s, scores, list(ctx.classes), ctx.reject_class, options)
    stamp = pd.Timestamp(start) if start is not None else pd.NaT
    events.insert(0, "recording", recording)
    events.insert(1, "recording_path", path)
    events.insert(2, "recording_start", pd.Series([stamp] * len(events), dtype="datetime64[us, UTC]"))
    for col, secs in (("begin_time", "begin_s"), ("end_time", "end_s")):
        events[col] = events["recording_start"] + pd.to_timedelta(events[secs], unit="s")  # NaT stays NaT
    events["low_freq_hz"] = ctx.low_freq_hz
    events["high_freq_hz"] = ctx.high_freq_hz
    events["model"] = ctx.model_name
    return events[list(EVENT_COLUMNS)].reset_index(drop=True)
