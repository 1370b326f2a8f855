"""A whole scan: many recordings → OUT/ with Parquet, Raven tables and a run summary.

Each finished recording is committed on its own (its events, window scores, Raven
table, then a small JSON record that marks it done, each written atomically), so a
rerun after Ctrl-C, kill -9 or power loss scans only what is missing, and the final
files are assembled from the committed parts in a fixed order: an interrupted and
resumed scan writes the same detections as one that ran straight through.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from . import __version__
from .audio import AudioReadError, probe
from .checkpoint import LoadedModel
from .fsutil import atomic_write, ensure_output_dir, write_csv
from .prefetch import Prefetcher
from .scan_plan import Recording, ScanError, plan_recordings
from .scan_state import STATE_DIR, ScanState, now
from .scanner import RecordingScores, ScanConfig, check_hop, events_table, prepare_model, score_recording
from .writers import EVENT_COLUMNS, read_parquet, write_parquet

__all__ = ["STATE_DIR", "Recording", "ScanError", "ScanRun", "ScanSummary", "finalize", "plan_recordings", "scan",
           "scanned_recordings"]

logger = logging.getLogger(__name__)

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


def windows_frame(scores: RecordingScores, model: LoadedModel, rec: Recording) -> pd.DataFrame:
    """Every window's score for every class, to re-threshold without decoding audio."""
    frame = pd.DataFrame({"recording": rec.rel, "begin_s": scores.starts_s,
                          "end_s": (scores.starts_s + model.info.clip_seconds).clip(max=scores.duration_s)})
    for k, name in enumerate(model.info.classes):
        frame[f"score_{name}"] = scores.scores[:, k].astype("float32")
    return frame


def recording_record(rec: Recording, scores: RecordingScores | None, error: AudioReadError | None,
                     n_events: int, seconds: float, fingerprint: dict[str, int] | None) -> dict[str, Any]:
    """The JSON record that marks a recording as done (ok, partial or failed).

    One rule for "partial": any file that was not read to the end its header promised, a
    decode error midway or a truncated file, is partial, listed in failures.csv, and makes
    the scan exit with 3; the audio that was there is scanned and its events kept."""
    record: dict[str, Any] = {"recording": rec.rel, "path": rec.display_path, "scan_seconds": round(seconds, 3),
                              "fingerprint": fingerprint}
    if rec.display_path != str(rec.path):  # a name with a tab or invalid UTF-8: keep the real bytes, as hex
        record["path_bytes_hex"] = os.fsencode(rec.path).hex()
    if scores is None:
        return record | {"status": "failed", "error_kind": error.kind, "error": str(error), "duration_s": 0.0,
                         "n_windows": 0, "n_events": 0}
    info = scores.info
    kind, message = "", ""
    if scores.error is not None:
        kind, message = scores.error.kind, str(scores.error)
    elif scores.truncated:
        kind, message = "truncated", (f"{rec.display_path}: truncated file, the header promises more audio than it holds; "
                                      f"scanned the {scores.duration_s:.3f} s present")
    note = f"truncated file: scanned the {scores.duration_s:.3f} s present" if scores.truncated else ""
    return record | {
        "status": "partial" if kind else "ok", "error_kind": kind, "error": message, "note": note,
        "duration_s": scores.duration_s, "sample_rate": info.sample_rate, "channels": info.channels,
        "format": f"{info.format}/{info.subtype}",
        "recording_start": scores.start.isoformat() if scores.start else None,
        "truncated": scores.truncated, "n_windows": int(len(scores.starts_s)), "n_events": n_events,
    }


def model_record(model: LoadedModel) -> dict[str, Any]:
    """What the outputs say about the model; kept in the state so ``detect`` can rebuild them."""
    info = model.info
    return {"name": model.name, "path": str(model.path.resolve()), "architecture": info.model,
            "sample_rate": info.sample_rate, "classes": list(info.classes), "reject_class": info.reject_class,
            "clip_seconds": info.clip_seconds, "low_freq_hz": float(info.frontend.fmin_hz),
            "high_freq_hz": float(info.frontend.upper_hz)}


class ScanRun:
    """One invocation of ``scan``: plan, resume check, the loop over recordings, outputs."""

    def __init__(self, paths: list[str | Path], out: str | Path, config: ScanConfig, model: LoadedModel,
                 workers: int = 1, save_window_scores: bool = False) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        check_hop(config.hop_seconds, model.info.sample_rate)  # before anything is written
        self.out, self.config, self.model = Path(out), config, model
        self.workers, self.save_windows = workers, save_window_scores
        self.inputs = [printable_path(p) for p in paths]
        self.plan = plan_recordings(list(paths))
        self.recordings = self.plan.recordings
        self.state = ScanState(self.out)

    def params(self) -> dict[str, Any]:
        """What determines the outputs; a resumed run must match it exactly."""
        info = self.model.info
        return {"inputs": self.inputs, "model": self.model.name, "model_path": str(self.model.path.resolve()),
                "classes": list(info.classes), "reject_class": info.reject_class,
                "save_window_scores": self.save_windows, **self.config.parameters()}

    def scan_one(self, rec: Recording, blocks, bar: tqdm) -> dict[str, Any]:
        sr = self.model.info.sample_rate
        started = time.perf_counter()
        fingerprint = rec.fingerprint()  # before reading: a file that grows meanwhile is seen as changed next time
        try:
            scores = score_recording(rec.path, self.model, self.config, blocks, lambda n: bar.update(n / sr / 3600))
        except AudioReadError as e:
            logger.warning("cannot scan %s", e)
            record = recording_record(rec, None, e, 0, time.perf_counter() - started, fingerprint)
            self.state.commit(rec, record, None, None)
            return record
        events = events_table(scores, self.model, self.config.events, rec.rel, rec.display_path)
        windows = windows_frame(scores, self.model, rec) if self.save_windows else None
        record = recording_record(rec, scores, None, len(events), time.perf_counter() - started, fingerprint)
        self.state.commit(rec, record, events, windows)
        return record

    def run(self, overwrite: bool = False, progress: bool = True) -> ScanSummary:
        ensure_output_dir(self.out)
        self.state.begin(self.params(), model_record(self.model), overwrite)
        self.state.set_plan([r.key for r in self.recordings], self.plan.folder_errors)
        planned = {r.key for r in self.recordings}
        for key in sorted(self.state.keys() - planned):  # deleted or moved since: drop its results and tables
            logger.info("%s: a recording scanned earlier is gone from the inputs; removing its results",
                        (self.state.record(key) or {}).get("recording", key))
            self.state.forget(key)
        # failed files are tried again (a permission or a copy may have been fixed since), and so
        # is every file whose size or mtime changed since it was scanned
        todo, changed = [], 0
        for rec in self.recordings:
            record = self.state.record(rec.key)
            if not self.state.is_current(rec, record, self.save_windows):
                todo.append(rec)
                if record is not None and record["status"] != "failed":
                    changed += 1
                    logger.warning("%s changed since it was scanned (size or modification time); scanning it again",
                                   rec.display_path)
        done_before = len(self.recordings) - len(todo)
        if done_before:
            logger.info("resuming: %d of %d recordings already done in %s", done_before, len(self.recordings), self.out)
        total_h = sum(_duration_or_zero(r.path) for r in todo) / 3600
        bar = tqdm(total=total_h, unit="h", desc="scan", disable=not progress,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.2f}/{total:.2f} h audio [{elapsed}<{remaining}{postfix}]")
        prefetch = Prefetcher([r.path for r in todo], self.model.info.sample_rate, self.config.channel,
                              self.config.block_seconds, self.workers)
        t0 = time.perf_counter()
        try:
            for i, rec in enumerate(todo):
                try:
                    self.scan_one(rec, prefetch.blocks(i), bar)
                finally:
                    prefetch.release(i)
                elapsed = time.perf_counter() - t0
                bar.set_postfix_str(f"{i + 1}/{len(todo)} files, {bar.n * 3600 / max(elapsed, 1e-9):.0f}x real time")
        finally:
            prefetch.close()
            bar.close()
        return finalize(self.state, time.perf_counter() - t0, done_before)


def printable_path(path: str | Path) -> str:
    """An input argument as absolute, printable text (for run parameters)."""
    from .fsutil import printable

    return printable(str(Path(path).absolute()))


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
    table = table.replace_schema_metadata({b"primate_monitor": json.dumps(info, sort_keys=True).encode()})
    with atomic_write(state.out / "windows.parquet") as tmp:
        pq.write_table(table, tmp)


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
    with atomic_write(state.out / "run.json") as tmp:
        tmp.write_text(json.dumps(run, indent=2) + "\n")


def _duration_or_zero(path: Path) -> float:
    try:
        return probe(path).duration_s
    except AudioReadError:
        return 0.0


def scanned_files(scan_dir: str | Path) -> list[tuple[str, Path]]:
    """(recording name, real path) of every scanned recording, in plan order. The real path
    comes from the scan state, where a file name that tables can only show escaped (a tab,
    invalid UTF-8) is kept as bytes, so the file can still be opened (for plots)."""
    state = ScanState(scan_dir)
    table = scanned_recordings(scan_dir)
    if not state.exists():
        return [(rel, Path(p)) for rel, p in zip(table["recording"], table["path"])]
    files = []
    for rel, shown in zip(table["recording"], table["path"]):
        record = state.record(Recording(rel, Path(shown)).key) or {}
        raw = record.get("path_bytes_hex")
        files.append((rel, Path(os.fsdecode(bytes.fromhex(raw))) if raw else Path(shown)))
    return files


def scanned_recordings(scan_dir: str | Path) -> pd.DataFrame:
    """Rows of OUT/recordings.csv for recordings that were scanned (ok or partial), in plan order."""
    path = Path(scan_dir) / "recordings.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{scan_dir}: not a scan output folder (no recordings.csv)")
    table = pd.read_csv(path, keep_default_na=False)
    return table[table["status"] != "failed"].reset_index(drop=True)


def find_recording(events: pd.DataFrame, scan_dir: str | Path, recording: str | Path) -> str:
    """The scan's name (the ``recording`` column) of a file given as a path.

    Tried in turn: the same file (absolute or resolved path), the same name relative to the
    scanned folder, then the same file name, with a warning naming the others when several
    recordings share it. A file the scan never saw is a ValueError, not an empty picture."""
    from .fsutil import printable

    scan_dir = Path(scan_dir)
    if (scan_dir / "recordings.csv").is_file():
        table = scanned_recordings(scan_dir)
        candidates = list(zip(table["recording"].astype(str), table["path"].astype(str)))
    else:
        candidates = list(dict.fromkeys(zip(events["recording"].astype(str), events["recording_path"].astype(str))))
    given = Path(recording)
    wanted = {printable(str(given.absolute())), printable(str(given.resolve()))}
    for rel, path in candidates:
        if path in wanted or printable(str(Path(path).resolve())) in wanted:
            return rel
    for rel, _ in candidates:
        if rel == printable(str(recording)):
            return rel
    by_name = [rel for rel, _ in candidates if Path(rel).name == printable(given.name)]
    if len(by_name) > 1:
        logger.warning("%s matches %d scanned recordings by file name (%s); using %s", recording, len(by_name),
                       ", ".join(by_name), by_name[0])
    if by_name:
        return by_name[0]
    raise ValueError(f"{printable(str(recording))} is not among the {len(candidates)} recordings scanned into {scan_dir}")


def scan(paths: list[str | Path], out: str | Path, config: ScanConfig | None = None,
         model: LoadedModel | str | Path | None = None, device: str = "auto", workers: int = 1,
         save_window_scores: bool = False, overwrite: bool = False, progress: bool = True) -> ScanSummary:
    """Scan every recording under ``paths`` into ``out``; resumes an interrupted scan of the same
    parameters. ``model`` is a LoadedModel, a checkpoint path, or None for the bundled demo model."""
    config = config or ScanConfig()
    loaded = prepare_model(model, config, device)
    return ScanRun(paths, out, config, loaded, workers, save_window_scores).run(overwrite, progress)
