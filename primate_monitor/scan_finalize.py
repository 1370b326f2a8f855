"""Finalise a scan: OUT's run-level files, assembled from the committed parts alone.

The third step of a scan (plan -> execute -> finalise, see scan_execute): whatever executor
ran the recordings, their parts were committed one by one to OUT/.scan-state; this merges
them, in plan order, into detections.parquet, windows.parquet, recordings.csv,
failures.csv and run.json. ``detect`` calls it too, after rewriting the events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .fsutil import write_csv, write_json
from .scan_plan import ScanError
from .scan_state import ScanState, now
from .writers import EVENT_COLUMNS, get_writer, read_parquet, write_parquet

RECORDING_COLUMNS = ["recording", "path", "status", "duration_s", "recording_start", "sample_rate", "channels",
                     "format", "n_windows", "n_events", "truncated", "note", "error_kind", "error"]
FAILURE_COLUMNS = ["path", "recording", "status", "kind", "message"]


@dataclass
class ScanSummary:
    out: Path
    files: int
    scanned: int
    failed: int  # recordings not scanned fully, plus folders that could not be read
    events: int
    audio_hours: float
    wall_seconds: float  # this invocation
    processing_seconds: float  # summed over every invocation's recordings
    skipped_done: int  # recordings already committed by an earlier run
    species_counts: dict[str, int] = field(default_factory=dict)  # events per species

    @property
    def times_real_time(self) -> float:
        return self.audio_hours * 3600 / self.processing_seconds if self.processing_seconds else 0.0


def finalize(state: ScanState, wall_seconds: float = 0.0, done_before: int = 0) -> ScanSummary:
    """Assemble OUT's run-level files from the committed parts alone, in plan order.

    Built from the state, not from a live model, so that ``detect`` can rebuild every file
    of a folder after rewriting its events: all files in one folder always agree."""
    out, meta = state.out, state.meta()
    params = meta["params"]
    keys, folder_errors = state.plan()
    records = [state.record(k) for k in keys]
    missing = [k for k, r in zip(keys, records) if r is None]
    if missing:
        raise ScanError(f"{out}: {len(missing)} planned recording(s) have no committed result; rerun the scan to finish")
    scanned = [k for k, r in zip(keys, records) if r["status"] != "failed"]
    frames = [read_parquet(state.part(k, "events")) for k in scanned]
    events = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(EVENT_COLUMNS))
    write_parquet(events, out / "detections.parquet", params)
    if params.get("save_window_scores"):
        _write_windows(state, scanned, meta)
    table = pd.DataFrame(records).reindex(columns=RECORDING_COLUMNS + ["scan_seconds"])
    write_csv(table[RECORDING_COLUMNS], out / "recordings.csv")
    failed = table[table["status"] != "ok"].rename(columns={"error_kind": "kind", "error": "message"})[FAILURE_COLUMNS]
    folders = pd.DataFrame([{"path": f, "recording": "", "status": "failed", "kind": "unreadable_folder",
                             "message": f"{f}: cannot list this folder ({reason}); its files were not scanned"}
                            for f, reason in folder_errors], columns=FAILURE_COLUMNS)
    write_csv(pd.concat([failed, folders], ignore_index=True) if len(folders) else failed, out / "failures.csv")
    summary = ScanSummary(out, len(records), int((table["status"] != "failed").sum()),
                          int((table["status"] != "ok").sum()) + len(folder_errors), len(events),
                          float(table["duration_s"].sum()) / 3600, wall_seconds, float(table["scan_seconds"].sum()),
                          done_before, {str(k): int(v) for k, v in events["species"].value_counts().sort_index().items()})
    _write_run_json(state, summary, table, len(folder_errors))
    return summary


def _write_windows(state: ScanState, keys: list[str], meta: dict[str, Any]) -> None:
    model = meta["model"]
    tables = [pq.read_table(state.part(k, "windows")) for k in keys]
    info = {"classes": model["classes"], "reject_class": model["reject_class"], "clip_seconds": model["clip_seconds"],
            "low_freq_hz": model["low_freq_hz"], "high_freq_hz": model["high_freq_hz"], "params": meta["params"]}
    table = pa.concat_tables(tables) if tables else pa.table({"recording": pa.array([], pa.string())})
    get_writer("windows")().write(table, state.out / "windows.parquet", info)


def _write_run_json(state: ScanState, summary: ScanSummary, table: pd.DataFrame, unreadable_folders: int) -> None:
    meta = state.meta()
    model = meta["model"]
    run = {"version": __version__, "parameters": meta["params"], "started": meta["started"], "finished": now(),
           "model": {k: model[k] for k in ("name", "path", "architecture", "sample_rate", "classes")},
           "totals": {"files": summary.files, "scanned": summary.scanned, "failed": summary.failed,
                      "unreadable_folders": unreadable_folders,
                      "truncated": int(table["truncated"].eq(True).sum()),
                      "audio_hours": round(summary.audio_hours, 6), "events": summary.events,
                      "events_per_species": summary.species_counts,
                      "wall_seconds_this_run": round(summary.wall_seconds, 3),
                      "processing_seconds": round(summary.processing_seconds, 3),
                      "times_real_time": round(summary.times_real_time, 1),
                      "resumed_recordings": summary.skipped_done}}
    write_json(state.out / "run.json", run)
