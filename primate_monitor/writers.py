"""Output formats: one small ResultWriter subclass per format, in the WRITERS registry.

Every file is written atomically (temp file + os.replace), so an interrupted
run never leaves a half-written table that looks complete.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .events import EVENT_COLUMNS, EVENT_SCHEMA  # noqa: F401 - re-exported: their home is events.py
from .fsutil import atomic_write, safe_relative
from .raven import RAVEN_COLUMNS

logger = logging.getLogger(__name__)

TIME_COLUMNS = ("recording_start", "begin_time", "end_time")
METADATA_KEY = "primate_monitor"  # Parquet key-value metadata key holding the JSON run parameters
RAVEN_HEADER = (*RAVEN_COLUMNS, "Species", "Score", "Begin Path", "File Offset (s)")
RAVEN_VIEW = "Spectrogram 1"
RAVEN_CHANNEL = "1"  # scans down-mix to mono, so every box is on channel 1


def _check_columns(events: pd.DataFrame, needed: Sequence[str] = EVENT_COLUMNS) -> None:
    missing = [c for c in needed if c not in events.columns]
    if missing:
        raise ValueError(f"events lack column(s) {missing}; expected {list(needed)}")


def _fmt(values: pd.Series, spec: str) -> pd.Series:
    return values.astype("float64").map(spec.format).astype(str)  # astype: an empty map stays float


def _in_order(events: pd.DataFrame) -> pd.DataFrame:
    return events.sort_values(["begin_s", "species"], kind="mergesort", ignore_index=True)


def _write_tsv(lines: pd.DataFrame, path: Path, header: bool) -> None:
    """Tab-separated, \\n line ends; refuses values that would break the layout."""
    text = lines.astype(str)
    for col in text.columns:
        if text[col].str.contains(r"[\t\r\n]", regex=True).any():
            raise ValueError(f"column {col!r} has a value containing a tab or newline")
    rows = ["\t".join(map(str, lines.columns))] if header else []
    rows += ["\t".join(row) for row in text.itertuples(index=False, name=None)]
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


class ResultWriter:
    """Base writer: owns output paths and atomic writing; subclasses override write_events."""

    suffix: ClassVar[str]  # appended to the recording's relative path, or the flat file name
    per_recording: ClassVar[bool] = False  # one file per recording (True) or one file for the run
    exportable: ClassVar[bool] = True  # offered by `export` (events formats)

    def write_events(self, events: pd.DataFrame, path: Path, meta: Mapping[str, Any]) -> None:
        """Write ``events`` to the new file ``path``. The one method subclasses override."""
        raise NotImplementedError

    def write(self, events: pd.DataFrame, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
        """Write ``events`` atomically to ``path`` (parent folders created); returns ``path``.
        ``meta`` is the run's JSON-serialisable parameters, for formats that store them."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            self.write_events(events, tmp, dict(meta or {}))
        return path

    def write_all(self, events: pd.DataFrame, recordings: Sequence[tuple[str, str]], out_dir: str | Path,
                  meta: Mapping[str, Any] | None = None) -> list[Path]:
        """Write the run's outputs under ``out_dir`` (the files ``targets`` names); returns the
        paths written."""
        return [self.write(frame, path, meta) for path, frame in self.targets(events, recordings, out_dir)]

    def targets(self, events: pd.DataFrame, recordings: Sequence[tuple[str, str]],
                out_dir: str | Path) -> list[tuple[Path, pd.DataFrame]]:
        """(path, events) of every file ``write_all`` would write, without writing any, so a
        caller can check first what the paths would replace.

        ``recordings`` are (relative, absolute) paths of every scanned file.
        Per-recording formats write ``out_dir/<relative><suffix>`` for each,
        even with no events; flat formats write ``out_dir/events<suffix>``.
        """
        out_dir = Path(out_dir)
        if not self.per_recording:
            return [(out_dir / f"events{self.suffix}", events)]
        _check_columns(events, ("recording",))
        rels = [rel for rel, _ in recordings]
        duplicates = sorted(rel for rel, n in Counter(rels).items() if n > 1)
        if duplicates:
            raise ValueError(f"recordings listed twice, outputs would collide: {duplicates}")
        unlisted = sorted(set(events["recording"]) - set(rels))
        if unlisted:
            raise ValueError(f"events for recordings not in the list: {unlisted}")
        groups = {rel: frame for rel, frame in events.groupby("recording", sort=False)}
        names = {rel: safe_relative(rel) for rel in rels}  # recording names are data: keep every file under out_dir
        clashes = sorted(n for n, k in Counter(names.values()).items() if k > 1)
        if clashes:
            raise ValueError(f"recording names that would write the same file: {clashes}")
        for rel, name in names.items():
            if name != rel:
                logger.warning("recording %r is written as %s under %s", rel, name, out_dir)
        return [(out_dir / f"{names[rel]}{self.suffix}", groups.get(rel, events.iloc[:0])) for rel in rels]


class RavenWriter(ResultWriter):
    """Raven Pro selection table for one recording; times in s from the file start."""

    suffix = ".selections.txt"
    per_recording = True

    def write_events(self, events: pd.DataFrame, path: Path, meta: Mapping[str, Any]) -> None:
        _check_columns(events, ("recording_path", "begin_s", "end_s", "species", "peak_score",
                                "low_freq_hz", "high_freq_hz"))
        events = _in_order(events)
        freqs = events[["low_freq_hz", "high_freq_hz"]].astype("float64").to_numpy()
        if not np.isfinite(freqs).all():
            raise ValueError("low_freq_hz/high_freq_hz must be finite for Raven boxes")
        table = pd.DataFrame({
            "Selection": pd.Series(np.arange(1, len(events) + 1)).astype(str),
            "View": RAVEN_VIEW,
            "Channel": RAVEN_CHANNEL,
            "Begin Time (s)": _fmt(events["begin_s"], "{:.6f}"),  # µs: finer than any sample period used
            "End Time (s)": _fmt(events["end_s"], "{:.6f}"),
            "Low Freq (Hz)": _fmt(events["low_freq_hz"], "{:.1f}"),
            "High Freq (Hz)": _fmt(events["high_freq_hz"], "{:.1f}"),
            "Species": events["species"].astype(str),
            "Score": _fmt(events["peak_score"], "{:.4f}"),
            "Begin Path": events["recording_path"].astype(str),
            "File Offset (s)": _fmt(events["begin_s"], "{:.6f}"),
        }, columns=list(RAVEN_HEADER))
        _write_tsv(table, path, header=True)


class AudacityWriter(ResultWriter):
    """Audacity label track for one recording: begin, end, "species (score)"; no header."""

    suffix = ".labels.txt"
    per_recording = True

    def write_events(self, events: pd.DataFrame, path: Path, meta: Mapping[str, Any]) -> None:
        _check_columns(events, ("begin_s", "end_s", "species", "peak_score"))
        events = _in_order(events)
        labels = events["species"].astype(str) + " (" + _fmt(events["peak_score"], "{:.2f}") + ")"
        table = pd.DataFrame({"begin": _fmt(events["begin_s"], "{:.6f}"),
                              "end": _fmt(events["end_s"], "{:.6f}"), "label": labels})
        _write_tsv(table, path, header=False)


class CsvWriter(ResultWriter):
    """One flat CSV of all events of the run, columns EVENT_COLUMNS, times ISO 8601 UTC."""

    suffix = ".csv"

    def write_events(self, events: pd.DataFrame, path: Path, meta: Mapping[str, Any]) -> None:
        _check_columns(events)
        events[list(EVENT_COLUMNS)].to_csv(path, index=False, lineterminator="\n")


def _to_arrow(events: pd.DataFrame, metadata: Mapping[str, Any]) -> pa.Table:
    _check_columns(events)
    frame = events[list(EVENT_COLUMNS)].copy()
    for col in TIME_COLUMNS:  # to µs, as EVENT_SCHEMA stores; NaT stays null
        frame[col] = pd.to_datetime(frame[col], utc=True).dt.round("us")
    table = pa.Table.from_pandas(frame, schema=EVENT_SCHEMA, preserve_index=False)
    kv = dict(table.schema.metadata or {})
    kv[METADATA_KEY.encode()] = json.dumps(dict(metadata), sort_keys=True).encode()
    return table.replace_schema_metadata(kv)


class ParquetWriter(ResultWriter):
    """One Parquet file of all events, schema EVENT_SCHEMA, run parameters as JSON metadata."""

    suffix = ".parquet"

    def write_events(self, events: pd.DataFrame, path: Path, meta: Mapping[str, Any]) -> None:
        pq.write_table(_to_arrow(events, meta), path)


class WindowsWriter(ResultWriter):
    """windows.parquet: every window's score for every class (a DataFrame or an Arrow table),
    with the model and run parameters as JSON metadata, so ``detect`` can re-threshold later.
    Not an export format: it holds window scores, not events."""

    suffix = ".parquet"
    exportable = False

    def write_events(self, windows: pd.DataFrame | pa.Table, path: Path, meta: Mapping[str, Any]) -> None:
        table = windows if isinstance(windows, pa.Table) else pa.Table.from_pandas(windows, preserve_index=False)
        pq.write_table(table.replace_schema_metadata({METADATA_KEY.encode(): json.dumps(dict(meta), sort_keys=True).encode()}), path)


WRITERS: dict[str, type[ResultWriter]] = {
    "raven": RavenWriter,
    "csv": CsvWriter,
    "audacity": AudacityWriter,
    "parquet": ParquetWriter,
    "windows": WindowsWriter,
}
EXPORT_FORMATS = tuple(sorted(name for name, cls in WRITERS.items() if cls.exportable))


def get_writer(name: str) -> type[ResultWriter]:
    """The writer class registered as ``name``; ValueError listing the valid names."""
    try:
        return WRITERS[name]
    except KeyError as e:
        raise ValueError(f"unknown output format {name!r}; valid: {sorted(WRITERS)}") from e


def write_raven_tables(events: pd.DataFrame, recordings: Sequence[tuple[str, str]], out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/<relative>.selections.txt`` for every (relative, absolute) recording."""
    return RavenWriter().write_all(events, recordings, out_dir)


def write_parquet(events: pd.DataFrame, path: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Write events with EVENT_SCHEMA and ``metadata`` as JSON under key METADATA_KEY."""
    return ParquetWriter().write(events, path, metadata)


def model_species(events: pd.DataFrame) -> tuple[list[str], str | None]:
    """(classes, reject class) of the model a scan ran with, from the run parameters that
    ``read_parquet`` put in ``events.attrs``; ([], None) when the file records none. Why one
    reader: review, evaluate-events and summarize each check names against the model's species."""
    params = events.attrs.get(METADATA_KEY) or {}
    classes = params.get("classes")
    return ([str(c) for c in classes] if isinstance(classes, list) else []), params.get("reject_class")


def read_parquet(path: str | Path) -> pd.DataFrame:
    """Read an events Parquet file; the run parameters are in ``.attrs[METADATA_KEY]`` (a dict)."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: cannot read as Parquet ({e})") from e
    missing = [c for c in EVENT_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: not an events file, missing column(s) {missing}")
    events = table.to_pandas()
    raw = (table.schema.metadata or {}).get(METADATA_KEY.encode())
    events.attrs[METADATA_KEY] = json.loads(raw) if raw is not None else {}
    return events
