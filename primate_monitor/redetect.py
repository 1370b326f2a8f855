"""Rebuild events from saved window scores (``detect``) and convert formats (``export``),
without decoding any audio again.

``detect`` works through the scan state, so every file of the folder it writes agrees:
in place it first reads every recording's window scores (so a damaged part stops it before
anything is written), then rewrites the run's parameters, each recording's events and tables,
and every run-level file (detections.parquet, recordings.csv, run.json); into a new folder it
writes a complete scan folder of its own. A later ``scan`` with the old thresholds into the
rewritten folder is then refused as "different parameters" instead of silently mixing runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .data import DataError
from .events import EventOptions, passing, validate_options
from .fsutil import OutputDirError, ensure_output_dir
from .scan_plan import Recording, ScanError
from .scan_run import finalize, recording_pairs
from .scan_state import ScanState
from .events import EventContext, build_events
from .writers import EXPORT_FORMATS, get_writer, read_parquet

logger = logging.getLogger(__name__)


def _scan_state(scan_dir: Path) -> ScanState:
    if not scan_dir.is_dir():
        raise FileNotFoundError(f"no such scan folder: {scan_dir}")
    state = ScanState(scan_dir)
    if not state.exists():
        raise FileNotFoundError(f"{scan_dir} is not a scan output folder (no {state.dir.name}/params.json); "
                                "give the -o folder of a `primate-monitor scan`")
    if not state.params().get("save_window_scores"):
        raise FileNotFoundError(f"{scan_dir}: the scan saved no window scores; rerun it with --save-window-scores "
                                "(into a new folder, or with --overwrite)")
    return state


def redetect(scan_dir: str | Path, options: EventOptions, dest: str | Path | None = None) -> pd.DataFrame:
    """New events from a scan's saved window scores with other thresholds or merging options.

    Writes into ``dest`` (a new scan folder) or, when ``dest`` is None or the scan folder, in
    place; either way every file in the folder written describes the new options."""
    scan_dir = Path(scan_dir)
    source = _scan_state(scan_dir)
    meta = source.meta()
    model = meta["model"]
    reject = model["reject_class"] if model["reject_class"] in model["classes"] else None
    ctx = EventContext(tuple(model["classes"]), reject, model["clip_seconds"], model["low_freq_hz"],
                       model["high_freq_hz"], model["name"])
    validate_options(options, ctx.classes, ctx.reject_class)
    keys, folder_errors = source.plan()
    records = {k: source.record(k) for k in keys}
    missing = [k for k, r in records.items() if r is None]
    if missing:
        raise ScanError(f"{scan_dir}: the scan is unfinished ({len(missing)} recording(s) not done); "
                        "rerun the scan command to finish it first")
    new_params = meta["params"] | {
        "threshold": options.threshold, "class_thresholds": dict(sorted(options.class_thresholds.items())),
        "report_classes": list(options.classes) if options.classes else None, "min_windows": options.min_windows,
        "max_gap_s": options.max_gap_s, "redetected_from": str(scan_dir.resolve())}
    score_cols = [f"score_{c}" for c in ctx.classes]
    # every recording's new events before anything is written: a damaged windows part then
    # stops the run with the folder as it was, not half rewritten
    new_events = {key: _recording_events(source, key, records[key], ctx, options, score_cols)
                  for key in keys if records[key]["status"] != "failed"}
    in_place = dest is None or Path(dest).resolve() == scan_dir.resolve()
    if in_place:
        target = source
        # before the first rewritten part: if this process dies midway, a rerun of the old scan
        # command is refused instead of finishing the folder from a mix of old and new events
        target.update_params(new_params)
    else:
        target = ScanState(ensure_output_dir(Path(dest)))
        if target.exists() and target.params().get("redetected_from") != str(scan_dir.resolve()):
            raise ScanError(f"{dest} holds another scan; `detect -o` writes into a new folder (or pass no -o to "
                            f"rewrite {scan_dir} in place)")
        new_params = new_params | {"save_window_scores": False}  # the window scores stay in the source folder
        target.begin(new_params, model, overwrite=True)
        target.set_plan(keys, folder_errors)
    for key in keys:
        record = records[key]
        rec = Recording(record["recording"], Path(record["path"]))
        if record["status"] == "failed":
            if not in_place:
                target.commit(rec, record, None, None)
            continue
        events = new_events[key]
        target.commit(rec, record | {"n_events": len(events)}, events, None)
    finalize(target)
    return read_parquet(target.out / "detections.parquet")


def _recording_events(source: ScanState, key: str, record: dict, ctx: EventContext, options: EventOptions,
                      score_cols: list[str]) -> pd.DataFrame:
    """One recording's events from its saved window scores; a part that cannot be read or
    lacks a column is a DataError naming the file (and the way to score it again)."""
    path = source.part(key, "windows")
    fix = "delete it and rerun the original scan command to score that recording again"
    try:
        w = pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path} ({record['recording']}): cannot read the saved window scores ({e}); {fix}") from e
    missing = [c for c in ["begin_s", *score_cols] if c not in w.columns]
    if missing:
        raise DataError(f"{path} ({record['recording']}): window scores lack column(s) {missing}; {fix}")
    start = pd.Timestamp(record["recording_start"]).to_pydatetime() if record.get("recording_start") else None
    return build_events(ctx, options, record["recording"], record["path"], start, w["begin_s"].to_numpy(),
                        w[score_cols].to_numpy(), float(record["duration_s"]))


def export(detections: str | Path, fmt: str, dest: str | Path, min_score: float = 0.0,
           classes: tuple[str, ...] | None = None, overwrite: bool = False) -> list[Path]:
    """Convert a detections.parquet to another format, optionally filtered by score and species.
    Per-recording formats get one file per recording listed in recordings.csv beside it (or
    per recording with an event when there is none); names that would leave ``dest`` are
    rewritten to stay under it (see fsutil.safe_relative).

    A file already at a target path (a Raven table someone reviewed, their own events.csv) is
    refused before anything is written, unless ``overwrite``: export keeps no record of what it
    wrote, so it cannot tell its own earlier output from a person's work."""
    detections = Path(detections)
    events = read_parquet(detections)
    meta = events.attrs.get("primate_monitor", {})
    if classes:
        known = set(meta.get("classes") or []) | set(events["species"])
        unknown = sorted(set(classes) - known)
        if unknown:
            raise ValueError(f"--classes: unknown species {unknown}; {detections} knows {sorted(known)}")
        events = events[events["species"].isin(classes)]
    events = events[passing(events["peak_score"].to_numpy(float), min_score)].reset_index(drop=True)
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}")
    writer = get_writer(fmt)()
    ensure_output_dir(dest)
    targets = writer.targets(events, recording_pairs(events, detections.parent), dest)
    existing = [str(path) for path, _ in targets if path.exists() or path.is_symlink()]
    if existing and not overwrite:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise OutputDirError(f"{shown} already exist(s); pass --overwrite to replace, or give another -o")
    return [writer.write(frame, path, meta) for path, frame in targets]
