"""Rebuild events from saved window scores (``detect``) and convert formats (``export``),
without decoding any audio again."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from .events import EventOptions, validate_options
from .scan_run import scanned_recordings
from .scanner import EventContext, build_events
from .writers import EVENT_COLUMNS, ParquetWriter, get_writer, read_parquet, write_parquet

logger = logging.getLogger(__name__)


def _read_windows(scan_dir: Path) -> tuple[pd.DataFrame, dict]:
    path = scan_dir / "windows.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no window scores; rerun the scan with --save-window-scores")
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"primate_monitor", b"{}"))
    if "classes" not in meta:
        raise ValueError(f"{path}: not a primate-monitor windows file")
    return table.to_pandas(), meta


def redetect(scan_dir: str | Path, options: EventOptions, dest: str | Path | None = None) -> pd.DataFrame:
    """New events from OUT/windows.parquet with other thresholds or merging options; writes
    DEST/detections.parquet and DEST/raven/ (DEST defaults to the scan folder)."""
    scan_dir = Path(scan_dir)
    dest = Path(dest) if dest is not None else scan_dir
    windows, meta = _read_windows(scan_dir)
    params = meta["params"]
    reject = meta["reject_class"] if meta["reject_class"] in meta["classes"] else None
    ctx = EventContext(tuple(meta["classes"]), reject, meta["clip_seconds"], meta["low_freq_hz"], meta["high_freq_hz"], params["model"])
    validate_options(options, ctx.classes, ctx.reject_class)
    recordings = scanned_recordings(scan_dir)
    score_cols = [f"score_{c}" for c in ctx.classes]
    groups = dict(tuple(windows.groupby("recording", sort=False)))
    frames = []
    for row in recordings.itertuples(index=False):
        w = groups.get(row.recording, windows.iloc[:0])
        start = pd.Timestamp(row.recording_start).to_pydatetime() if row.recording_start else None
        frames.append(build_events(ctx, options, row.recording, row.path, start, w["begin_s"].to_numpy(),
                                   w[score_cols].to_numpy(), float(row.duration_s)))
    events = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(EVENT_COLUMNS))
    new_params = params | {"threshold": options.threshold, "class_thresholds": dict(options.class_thresholds),
                           "report_classes": list(options.classes) if options.classes else None,
                           "min_windows": options.min_windows, "max_gap_s": options.max_gap_s, "redetected_from": str(scan_dir)}
    write_parquet(events, dest / "detections.parquet", new_params)
    get_writer("raven")().write_all(events, list(zip(recordings["recording"], recordings["path"])), dest / "raven")
    return events


def export(detections: str | Path, fmt: str, dest: str | Path, min_score: float = 0.0,
           classes: tuple[str, ...] | None = None) -> list[Path]:
    """Convert a detections.parquet to another format, optionally filtered by score and species.
    Per-recording formats get one file per recording listed in recordings.csv beside it (or
    per recording with an event when there is none)."""
    detections = Path(detections)
    events = read_parquet(detections)
    meta = events.attrs.get("primate_monitor", {})
    if classes:
        events = events[events["species"].isin(classes)]
    events = events[events["peak_score"] >= min_score].reset_index(drop=True)
    writer_cls = get_writer(fmt)
    writer = writer_cls(meta) if writer_cls is ParquetWriter else writer_cls()
    index = detections.parent / "recordings.csv"
    if index.is_file():
        rec = scanned_recordings(detections.parent)
        recordings = list(zip(rec["recording"], rec["path"]))
    else:
        recordings = list(dict.fromkeys(zip(events["recording"], events["recording_path"])))
    return writer.write_all(events, recordings, dest)
