"""A whole scan: many recordings → OUT/ with Parquet, Raven tables and a run summary.

The scan's three steps, each in its own module: plan (``scan_plan``: which recordings, with
their fingerprints), execute (``scan_execute``: ``scan_one`` per recording, run by the chosen
executor), finalise (``scan_finalize``: the run-level files from the committed parts). This
module ties them together, and is the one commit path: each finished recording, whichever
executor ran it, is committed here on its own (its events, window scores, Raven table, then
a small JSON record that marks it done, each written atomically), so a rerun after Ctrl-C,
kill -9 or power loss scans only what is missing, and the final files are assembled from the
committed parts in a fixed order: an interrupted and resumed scan writes the same detections
as one that ran straight through, on any executor or cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from .audio import AudioReadError, probe
from .checkpoint import LoadedModel
from .fsutil import ensure_output_dir
from .scan_execute import (EXECUTORS, DaskExecutor, Executor, ModelRef, PieceCollector, PieceScores, ProcessExecutor,
                           RecordingResult, SerialExecutor, Task, merge_pieces, plan_pieces, recording_record,
                           scan_one, windows_frame)
from .scan_finalize import FAILURE_COLUMNS, RECORDING_COLUMNS, ScanSummary, finalize
from .scan_plan import Recording, ScanError, plan_recordings
from .scan_stage import StagedResult
from .scan_state import STATE_DIR, ScanState
from .scanner import ScanConfig, prepare_scan

__all__ = ["EXECUTORS", "FAILURE_COLUMNS", "RECORDING_COLUMNS", "STATE_DIR", "Recording", "RecordingResult",
           "ScanError", "ScanRun", "ScanSummary", "finalize", "plan_recordings", "recording_record", "scan",
           "scanned_recordings", "windows_frame"]

logger = logging.getLogger(__name__)


def model_record(model: LoadedModel) -> dict[str, Any]:
    """What the outputs say about the model; kept in the state so ``detect`` can rebuild them."""
    info = model.info
    return {"name": model.name, "path": str(model.path.resolve()), "architecture": info.model,
            "sample_rate": info.sample_rate, "classes": list(info.classes), "reject_class": info.reject_class,
            "clip_seconds": info.clip_seconds, "low_freq_hz": float(info.frontend.fmin_hz),
            "high_freq_hz": float(info.frontend.upper_hz)}


BATCHED_PIECE_SECONDS = 3600.0  # pieces of long recordings on a GPU, so that several decoders read one file
GPU_DECODERS = 16  # decoder threads on a GPU when --workers is not given: the best of 1-16 on an H200


class ScanRun:
    """One invocation of ``scan``: plan, resume check, the executor over what is left, the
    client-side commit of each finished recording, then the run-level outputs.

    ``executor``: ``serial`` (this process, ``workers`` threads decoding ahead), ``processes``
    (``workers`` local processes) or ``dask`` (``cluster``: ``local:N``, ``tcp://host:port``,
    ``slurm:N``, or a connected ``distributed.Client``; a cluster implies dask).
    ``piece_seconds`` cuts recordings longer than that into pieces scored apart (None: whole).
    ``workers`` None: 1, or for the batched executor GPU_DECODERS (at most the CPU count).
    ``batch_recordings`` (None: when the model is on a GPU) makes the serial executor score
    spans from ``workers`` recordings in each network call (``scan_batched.BatchedExecutor``);
    with more than one worker it then cuts recordings longer than BATCHED_PIECE_SECONDS into
    pieces unless ``piece_seconds`` says otherwise.
    None of these change the results, so they are not run parameters: the same scan rerun
    with another executor or cluster resumes."""

    def __init__(self, paths: list[str | Path], out: str | Path, config: ScanConfig, model: LoadedModel,
                 workers: int | None = 1, save_window_scores: bool = False, executor: str | None = None,
                 cluster: Any = None, piece_seconds: float | None = None, torch_threads: int | None = None,
                 batch_recordings: bool | None = None) -> None:
        executor = executor or ("dask" if cluster is not None else "serial")
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
        # the serial executor on a GPU batches spans from ``workers`` recordings into each call
        batch = model.device.type == "cuda" if batch_recordings is None else batch_recordings
        self.batch_recordings = batch and executor == "serial"
        if workers is None:  # one decoder cannot feed a GPU (docs/benchmarks.md, "GPU")
            workers = min(GPU_DECODERS, os.cpu_count() or 1) if self.batch_recordings else 1
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if cluster is not None and executor != "dask":
            raise ValueError(f"a cluster runs the dask executor, not {executor!r}")
        if executor == "dask" and cluster is None:
            cluster = f"local:{workers}"
        if isinstance(cluster, str):
            from .cluster import check_cluster

            check_cluster(cluster)
        if piece_seconds is not None and not piece_seconds > 0:
            raise ValueError(f"piece length must be > 0 s, got {piece_seconds!r}")
        if torch_threads is not None and torch_threads < 1:
            raise ValueError(f"torch threads must be at least 1, got {torch_threads}")
        config.hop_samples(model.info.sample_rate)  # checked before anything is written
        self.out, self.config, self.model = Path(out), config, model
        self.workers, self.save_windows = workers, save_window_scores
        self.executor, self.cluster = executor, cluster
        self.torch_threads = torch_threads
        if piece_seconds is None and self.batch_recordings and workers > 1:
            # one long recording would feed the GPU from a single decoder thread: cut it into
            # pieces that the workers decode side by side (the outputs do not change)
            piece_seconds = BATCHED_PIECE_SECONDS
        self.piece_seconds = piece_seconds
        self.inputs = [printable_path(p) for p in paths]
        self.plan = plan_recordings(list(paths))
        self.recordings = self.plan.recordings
        self.state = ScanState(self.out)

    def params(self) -> dict[str, Any]:
        """What determines the outputs; a resumed run must match it exactly. How the work is run
        (executor, cluster, pieces, threads) is not among them."""
        info = self.model.info
        return {"inputs": self.inputs, "model": self.model.name,  # the weights' digest, not where they lie
                "classes": list(info.classes), "reject_class": info.reject_class,
                "save_window_scores": self.save_windows, **self.config.parameters()}

    def scan_one(self, rec: Recording, blocks: Iterable[np.ndarray] | None = None,
                 on_block=None) -> RecordingResult:
        """One recording in this process (the serial executor's step); commits nothing."""
        return scan_one(rec, self.model, self.config, self.save_windows, blocks, on_block)

    def commit(self, result: RecordingResult | StagedResult) -> None:
        """The one commit path: every executor's finished recordings land here, once each (parts a
        worker staged in the output folder are renamed into place)."""
        if isinstance(result, StagedResult):
            self.state.commit_staged(result)
        else:
            self.state.commit(result.rec, result.record, result.events, result.windows)

    def todo(self) -> tuple[list[Recording], int]:
        """Recordings still to scan, and how many were done before. Failed files are tried again
        (a permission or a copy may have been fixed since), and so is every file whose size or
        mtime changed since it was scanned."""
        todo = []
        for rec in self.recordings:
            record = self.state.record(rec.key)
            if not self.state.is_current(rec, record, self.save_windows):
                todo.append(rec)
                if record is not None and record["status"] != "failed":
                    logger.warning("%s changed since it was scanned (size or modification time); scanning it again",
                                   rec.display_path)
        return todo, len(self.recordings) - len(todo)

    def tasks(self, todo: list[Recording]) -> list[Task]:
        """One task per recording, or one per piece of a recording long enough to split."""
        tasks: list[Task] = []
        for rec in todo:
            pieces = plan_pieces(rec, self.model, self.config, self.piece_seconds)
            tasks += [Task(rec)] if pieces is None else [Task(rec, p) for p in pieces]
        return tasks

    @contextlib.contextmanager
    def open_executor(self) -> Iterator[Executor]:
        """The executor asked for, with its cluster or process pool, closed on exit."""
        sr = self.model.info.sample_rate
        if self.executor == "serial":
            if self.batch_recordings:
                from .scan_batched import BatchedExecutor

                yield BatchedExecutor(self.model, self.config, self.workers, self.save_windows)
            else:
                yield SerialExecutor(self.scan_one, self.model, self.config, self.workers, self.save_windows)
            return
        stage = str(self.state.stage_folder())  # workers that see OUT write their parts here
        if self.executor == "processes":
            executor = ProcessExecutor(ModelRef.of(self.model, self.torch_threads or 1), self.config, self.workers,
                                       self.save_windows, sr, stage)
            try:
                yield executor
            finally:
                executor.close()
            return
        from .cluster import open_cluster

        threads = self.torch_threads or (1 if isinstance(self.cluster, str) and self.cluster.startswith("local:") else None)
        with open_cluster(self.cluster, threads) as client:
            yield DaskExecutor(client, ModelRef.of(self.model, threads), self.config, self.save_windows, sr, stage)

    def run(self, overwrite: bool = False, progress: bool = True) -> ScanSummary:
        ensure_output_dir(self.out)
        self.state.begin(self.params(), model_record(self.model), overwrite)
        self.state.set_plan([r.key for r in self.recordings], self.plan.folder_errors)
        planned = {r.key for r in self.recordings}
        for key in sorted(self.state.keys() - planned):  # deleted or moved since: drop its results and tables
            logger.info("%s: a recording scanned earlier is gone from the inputs; removing its results",
                        (self.state.record(key) or {}).get("recording", key))
            self.state.forget(key)
        todo, done_before = self.todo()
        if done_before:
            logger.info("resuming: %d of %d recordings already done in %s", done_before, len(self.recordings), self.out)
        total = AudioTotal([r.path for r in todo])  # probed beside the scan: the first file starts at once
        bar = tqdm(total=None, unit="h", desc="scan", disable=not progress,
                   bar_format="{desc}: {n:.2f} h audio [{elapsed}{postfix}]")
        tasks = self.tasks(todo)
        if len(tasks) > len(todo):
            logger.info("%d recording(s) split into pieces: %d tasks", sum(t.piece is not None and t.piece.index == 0
                                                                           for t in tasks), len(tasks))
        pieces = PieceCollector()
        finished = 0
        t0 = time.perf_counter()
        try:
            with self.open_executor() as executor:
                def advance(seconds: float) -> None:
                    bar.update(seconds / 3600)
                    total.show_on(bar)

                for result in executor.run(tasks, advance):
                    if isinstance(result, PieceScores):
                        parts = pieces.add(result)
                        if parts is None:
                            continue
                        result = merge_pieces(parts, self.model, self.config, self.save_windows)
                    self.commit(result)
                    finished += 1
                    elapsed = time.perf_counter() - t0
                    bar.set_postfix_str(f"{finished}/{len(todo)} files, "
                                        f"{bar.n * 3600 / max(elapsed, 1e-9):.0f}x real time")
        finally:
            total.stop()
            bar.close()
        # every task is committed and the workers are gone: a staged file still here is a killed
        # attempt's, which nothing will commit
        self.state.clear_staged()
        return finalize(self.state, time.perf_counter() - t0, done_before)


class AudioTotal:
    """Hours of audio to scan, summed from the files' headers in a background thread.

    Why: the progress bar needs a total, but reading every header first (a million files on
    network storage) would hold the scan back for as long; the bar shows hours done until the
    total is known, then percent and time left."""

    BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.2f}/{total:.2f} h audio [{elapsed}<{remaining}{postfix}]"

    def __init__(self, paths: list[Path]) -> None:
        self.hours: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sum, args=(paths,), name="audio-total", daemon=True)
        self._thread.start()

    def _sum(self, paths: list[Path]) -> None:
        seconds = 0.0
        for path in paths:
            if self._stop.is_set():
                return
            seconds += _duration_or_zero(path)
        self.hours = seconds / 3600

    def show_on(self, bar: tqdm) -> None:
        """Give ``bar`` the total once it is known (once)."""
        if self.hours is not None and bar.total is None:
            bar.total = max(self.hours, bar.n)
            bar.bar_format = self.BAR_FORMAT
            bar.refresh()

    def stop(self) -> None:
        self._stop.set()


def printable_path(path: str | Path) -> str:
    """An input argument as absolute, printable text (for run parameters)."""
    from .fsutil import printable

    return printable(str(Path(path).absolute()))


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


INDEX_COLUMNS = ("recording", "path", "status", "duration_s", "recording_start")  # what the readers of the index use


def scanned_recordings(scan_dir: str | Path) -> pd.DataFrame:
    """Rows of OUT/recordings.csv for recordings that were scanned (ok or partial), in plan order.

    The file may have been edited or damaged (opened and saved with ';', emptied): one that
    cannot be parsed or lacks a column is a DataError naming it, not a KeyError deep in
    summarize, evaluate-events, review or calibrate."""
    from .data import DataError

    path = Path(scan_dir) / "recordings.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{scan_dir}: not a scan output folder (no recordings.csv)")
    # a rerun scan finds every recording done and rebuilds the file from the state (finalize)
    fix = (f"rerun the scan command that made this folder, with the same options, to rebuild it from {STATE_DIR}"
           if ScanState(scan_dir).exists() else "scan the recordings again into a new folder")
    try:
        table = pd.read_csv(path, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the scan's recordings table ({e}); {fix}") from e
    missing = [c for c in INDEX_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: not a scan's recordings table, missing column(s) {missing}; {fix}")
    return table[table["status"] != "failed"].reset_index(drop=True)


def scan_index(scan_dir: str | Path) -> pd.DataFrame | None:
    """``scanned_recordings`` when ``scan_dir`` holds a recordings.csv, else None: a bare
    detections.parquet (copied out of its folder) still works where the index is optional."""
    return scanned_recordings(scan_dir) if (Path(scan_dir) / "recordings.csv").is_file() else None


def recording_pairs(events: pd.DataFrame, scan_dir: str | Path) -> list[tuple[str, str]]:
    """(name, path) of every scanned recording, from the scan's index, or, without one, of every
    recording that has an event; in order, each once."""
    table = scan_index(scan_dir)
    if table is not None:
        return list(zip(table["recording"].astype(str), table["path"].astype(str)))
    return list(dict.fromkeys(zip(events["recording"].astype(str), events["recording_path"].astype(str))))


def find_recording(events: pd.DataFrame, scan_dir: str | Path, recording: str | Path) -> str:
    """The scan's name (the ``recording`` column) of a file given as a path.

    Tried in turn: the same file (absolute or resolved path), the same name relative to the
    scanned folder, then the same file name, with a warning naming the others when several
    recordings share it. A file the scan never saw is a ValueError, not an empty picture."""
    from .fsutil import printable

    candidates = recording_pairs(events, scan_dir)
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
         model: LoadedModel | str | Path | None = None, device: str = "auto", workers: int | None = 1,
         save_window_scores: bool = False, overwrite: bool = False, progress: bool = True,
         executor: str | None = None, cluster: Any = None, piece_seconds: float | None = None,
         torch_threads: int | None = None, batch_recordings: bool | None = None) -> ScanSummary:
    """Scan every recording under ``paths`` into ``out``; resumes an interrupted scan of the same
    parameters, whatever executor ran it. ``model`` is a LoadedModel, a checkpoint path, or None
    for the bundled demo model. ``executor``, ``cluster``, ``piece_seconds``, ``torch_threads`` and
    ``batch_recordings`` say how the work is spread (see ScanRun); they never change the outputs
    (batching: up to float rounding)."""
    # precision auto resolved, and the checkpoint's calibrated thresholds filled in unless overridden
    loaded, config = prepare_scan(model, config or ScanConfig(), device)
    return ScanRun(paths, out, config, loaded, workers, save_window_scores, executor, cluster, piece_seconds,
                   torch_threads, batch_recordings).run(overwrite, progress)
