"""A whole scan: many recordings → OUT/ with Parquet, Raven tables and a run summary.

Each finished recording is committed on its own (its events, window scores, Raven
table, then a small JSON record that marks it done, each written atomically), so a
rerun after Ctrl-C, kill -9 or power loss scans only what is missing, and the final
files are assembled from the committed parts in a fixed order: an interrupted and
resumed scan writes the same detections as one that ran straight through.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from . import __version__
from .audio import AudioReadError, find_audio_files, probe
from .checkpoint import LoadedModel
from .fsutil import atomic_write, write_csv
from .prefetch import Prefetcher
from .scanner import RecordingScores, ScanConfig, events_table, prepare_model, score_recording
from .writers import EVENT_COLUMNS, RavenWriter, read_parquet, write_parquet

logger = logging.getLogger(__name__)

STATE_DIR = ".scan-state"  # per-recording commits and the run's parameters
OUTPUTS = ("detections.parquet", "windows.parquet", "failures.csv", "recordings.csv", "run.json", "raven", "plots")


RECORDING_COLUMNS = ["recording", "path", "status", "duration_s", "recording_start", "sample_rate", "channels",
                     "format", "n_windows", "n_events", "truncated", "note", "error_kind", "error"]


class ScanError(ValueError):
    """A scan that must not start (collisions, parameters differing from OUT's scan)."""


@dataclass(frozen=True)
class Recording:
    rel: str  # name in outputs: path relative to the scanned root, posix
    path: Path  # absolute

    @property
    def key(self) -> str:
        return hashlib.sha1(self.rel.encode()).hexdigest()[:16]


@dataclass
class ScanSummary:
    out: Path
    files: int
    scanned: int
    failed: int
    events: int
    audio_hours: float
    wall_seconds: float  # this invocation
    processing_seconds: float  # summed over every invocation's recordings
    skipped_done: int  # recordings already committed by an earlier run
    species_counts: dict[str, int] = field(default_factory=dict)  # events per species

    @property
    def times_real_time(self) -> float:
        return self.audio_hours * 3600 / self.processing_seconds if self.processing_seconds else 0.0


def plan_recordings(paths: list[str | Path]) -> list[Recording]:
    """Every audio file under ``paths``, named relative to its folder argument (or, for
    several arguments, to their common folder) so names are unique and mirror the input."""
    found = find_audio_files(paths)
    abs_paths = list(dict.fromkeys(p.resolve() for _, p in found))
    if not abs_paths:
        raise ScanError(f"no audio files found under {', '.join(map(str, paths))}")
    roots = {root.resolve() for root, _ in found}
    base = next(iter(roots)) if len(roots) == 1 else Path(os.path.commonpath([str(p.parent) for p in abs_paths]))
    recordings = [Recording(p.relative_to(base).as_posix(), p) for p in abs_paths]
    seen: dict[str, Path] = {}
    for r in recordings:
        if r.rel in seen:
            raise ScanError(f"two inputs would share the output name {r.rel!r}: {seen[r.rel]} and {r.path}")
        seen[r.rel] = r.path
    return recordings


class ScanState:
    """OUT/.scan-state: the run's parameters and one committed record per recording."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.dir = out / STATE_DIR

    def params_path(self) -> Path:
        return self.dir / "params.json"

    def begin(self, params: dict[str, Any], overwrite: bool) -> None:
        """Start or resume; refuse to mix parameters unless ``overwrite`` wipes OUT's scan."""
        if overwrite:
            self.clear()
        if self.params_path().is_file():
            saved = json.loads(self.params_path().read_text())
            if saved["params"] != params:
                diff = sorted(k for k in set(saved["params"]) | set(params) if saved["params"].get(k) != params.get(k))
                raise ScanError(f"{self.out} holds a scan made with different parameters (differs: {', '.join(diff)}); "
                                "rerun with the same options to resume, or pass --overwrite to start again")
            return
        leftovers = [name for name in OUTPUTS if (self.out / name).exists()]
        if leftovers:
            raise ScanError(f"{self.out} already holds outputs ({', '.join(leftovers)}) but no scan state; use --overwrite or another -o")
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.params_path()) as tmp:
            tmp.write_text(json.dumps({"params": params, "started": _now()}, indent=2, sort_keys=True))

    def clear(self) -> None:
        for name in (STATE_DIR,) + OUTPUTS:
            target = self.out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    def started(self) -> str:
        return json.loads(self.params_path().read_text())["started"]

    def record(self, rec: Recording) -> dict[str, Any] | None:
        path = self.dir / f"{rec.key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def part(self, rec: Recording, name: str) -> Path:
        return self.dir / f"{rec.key}.{name}.parquet"

    def commit(self, rec: Recording, record: dict[str, Any], events: pd.DataFrame | None, windows: pd.DataFrame | None) -> None:
        """Parts first, the JSON record last: a recording counts as done only once all landed."""
        if events is not None:
            write_parquet(events, self.part(rec, "events"), {})
        if windows is not None:
            with atomic_write(self.part(rec, "windows")) as tmp:
                windows.to_parquet(tmp, index=False)
        with atomic_write(self.dir / f"{rec.key}.json") as tmp:
            tmp.write_text(json.dumps(record, indent=2, sort_keys=True))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def windows_frame(scores: RecordingScores, model: LoadedModel, rec: Recording) -> pd.DataFrame:
    """Every window's score for every class, to re-threshold without decoding audio."""
    frame = pd.DataFrame({"recording": rec.rel, "begin_s": scores.starts_s,
                          "end_s": (scores.starts_s + model.info.clip_seconds).clip(max=scores.duration_s)})
    for k, name in enumerate(model.info.classes):
        frame[f"score_{name}"] = scores.scores[:, k].astype("float32")
    return frame


def recording_record(rec: Recording, scores: RecordingScores | None, error: AudioReadError | None,
                     n_events: int, seconds: float) -> dict[str, Any]:
    """The JSON record that marks a recording as done (ok, partial or failed)."""
    record: dict[str, Any] = {"recording": rec.rel, "path": str(rec.path), "scan_seconds": round(seconds, 3)}
    if scores is None:
        return record | {"status": "failed", "error_kind": error.kind, "error": str(error), "duration_s": 0.0,
                         "n_windows": 0, "n_events": 0}
    info = scores.info
    status = "partial" if scores.error is not None else "ok"
    note = f"truncated file: scanned the {scores.duration_s:.3f} s present" if scores.truncated else ""
    return record | {
        "status": status, "error_kind": scores.error.kind if scores.error else "",
        "error": str(scores.error) if scores.error else "", "note": note,
        "duration_s": scores.duration_s, "sample_rate": info.sample_rate, "channels": info.channels,
        "format": f"{info.format}/{info.subtype}",
        "recording_start": scores.start.isoformat() if scores.start else None,
        "truncated": scores.truncated, "n_windows": int(len(scores.starts_s)), "n_events": n_events,
    }


class ScanRun:
    """One invocation of ``scan``: plan, resume check, the loop over recordings, outputs."""

    def __init__(self, paths: list[str | Path], out: str | Path, config: ScanConfig, model: LoadedModel,
                 workers: int = 1, save_window_scores: bool = False) -> None:
        self.out, self.config, self.model = Path(out), config, model
        self.workers, self.save_windows = workers, save_window_scores
        self.inputs = [str(Path(p).resolve()) for p in paths]
        self.recordings = plan_recordings(list(paths))
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
        try:
            scores = score_recording(rec.path, self.model, self.config, blocks, lambda n: bar.update(n / sr / 3600))
        except AudioReadError as e:
            logger.warning("cannot scan %s", e)
            record = recording_record(rec, None, e, 0, time.perf_counter() - started)
            self.state.commit(rec, record, None, None)
            return record
        events = events_table(scores, self.model, self.config.events, rec.rel)
        windows = windows_frame(scores, self.model, rec) if self.save_windows else None
        RavenWriter().write(events, self.out / "raven" / f"{rec.rel}{RavenWriter.suffix}")
        record = recording_record(rec, scores, None, len(events), time.perf_counter() - started)
        self.state.commit(rec, record, events, windows)
        return record

    def run(self, overwrite: bool = False, progress: bool = True) -> ScanSummary:
        self.state.begin(self.params(), overwrite)
        # failed files are tried again: a permission or a copy may have been fixed since
        todo = [r for r in self.recordings if (self.state.record(r) or {"status": "failed"})["status"] == "failed"]
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
        return self.finalize(time.perf_counter() - t0, done_before)

    def finalize(self, wall_seconds: float, done_before: int) -> ScanSummary:
        """Assemble the run's outputs from the committed parts, in plan order."""
        records = [self.state.record(r) for r in self.recordings]
        parts = [self.state.part(r, "events") for r, rec in zip(self.recordings, records) if rec["status"] != "failed"]
        frames = [read_parquet(p) for p in parts]
        events = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(EVENT_COLUMNS))
        write_parquet(events, self.out / "detections.parquet", self.params())
        if self.save_windows:
            self._write_windows(records)
        table = pd.DataFrame(records).reindex(columns=RECORDING_COLUMNS + ["scan_seconds"])
        write_csv(table[RECORDING_COLUMNS], self.out / "recordings.csv")
        failed = table[table["status"] != "ok"]
        write_csv(failed.rename(columns={"error_kind": "kind", "error": "message"})[["path", "recording", "status", "kind", "message"]],
                   self.out / "failures.csv")
        summary = ScanSummary(self.out, len(records), int((table["status"] != "failed").sum()),
                              int((table["status"] != "ok").sum()), len(events), float(table["duration_s"].sum()) / 3600,
                              wall_seconds, float(table["scan_seconds"].sum()), done_before,
                              {str(k): int(v) for k, v in events["species"].value_counts().sort_index().items()})
        self._write_run_json(summary, table)
        return summary

    def _write_windows(self, records: list[dict[str, Any]]) -> None:
        parts = [self.state.part(r, "windows") for r, rec in zip(self.recordings, records) if rec["status"] != "failed"]
        tables = [pq.read_table(p) for p in parts]
        meta = {"classes": list(self.model.info.classes), "reject_class": self.model.info.reject_class,
                "clip_seconds": self.model.info.clip_seconds, "low_freq_hz": self.model.info.frontend.fmin_hz,
                "high_freq_hz": self.model.info.frontend.upper_hz, "params": self.params()}
        table = pa.concat_tables(tables) if tables else pa.table({"recording": pa.array([], pa.string())})
        table = table.replace_schema_metadata({b"primate_monitor": json.dumps(meta, sort_keys=True).encode()})
        with atomic_write(self.out / "windows.parquet") as tmp:
            pq.write_table(table, tmp)

    def _write_run_json(self, summary: ScanSummary, table: pd.DataFrame) -> None:
        run = {"version": __version__, "parameters": self.params(), "started": self.state.started(), "finished": _now(),
               "model": {"name": self.model.name, "path": str(self.model.path.resolve()), "architecture": self.model.info.model,
                         "sample_rate": self.model.info.sample_rate, "classes": list(self.model.info.classes)},
               "totals": {"files": summary.files, "scanned": summary.scanned, "failed": summary.failed,
                          "truncated": int(table.get("truncated", pd.Series(dtype=bool)).fillna(False).astype(bool).sum()),
                          "audio_hours": round(summary.audio_hours, 6), "events": summary.events,
                          "events_per_species": summary.species_counts,
                          "wall_seconds_this_run": round(summary.wall_seconds, 3),
                          "processing_seconds": round(summary.processing_seconds, 3),
                          "times_real_time": round(summary.times_real_time, 1),
                          "resumed_recordings": summary.skipped_done}}
        with atomic_write(self.out / "run.json") as tmp:
            tmp.write_text(json.dumps(run, indent=2) + "\n")


def _duration_or_zero(path: Path) -> float:
    try:
        return probe(path).duration_s
    except AudioReadError:
        return 0.0


def scanned_recordings(scan_dir: str | Path) -> pd.DataFrame:
    """Rows of OUT/recordings.csv for recordings that were scanned (ok or partial), in plan order."""
    table = pd.read_csv(Path(scan_dir) / "recordings.csv", keep_default_na=False)
    return table[table["status"] != "failed"].reset_index(drop=True)


def scan(paths: list[str | Path], out: str | Path, config: ScanConfig | None = None,
         model: LoadedModel | str | Path | None = None, device: str = "auto", workers: int = 1,
         save_window_scores: bool = False, overwrite: bool = False, progress: bool = True) -> ScanSummary:
    """Scan every recording under ``paths`` into ``out``; resumes an interrupted scan of the same
    parameters. ``model`` is a LoadedModel, a checkpoint path, or None for the bundled demo model."""
    config = config or ScanConfig()
    loaded = prepare_model(model, config, device)
    return ScanRun(paths, out, config, loaded, workers, save_window_scores).run(overwrite, progress)
