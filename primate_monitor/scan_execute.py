"""Execute a scan: one recording (or one piece of a long one) in, its results out.

The scan has three steps, one module each:

- plan (``scan_plan``): which recordings, under which output names, with their fingerprints;
- execute (this module): ``scan_one`` turns one recording into a ``RecordingResult`` (its
  JSON record, events and window scores) and writes nothing; an *executor* runs it over the
  plan, in this process (``serial``), in local worker processes (``processes``) or on a Dask
  cluster (``dask``);
- finalise (``scan_finalize``): the run-level files, from the committed parts alone.

Whatever the executor, the client commits every finished recording itself (``ScanState.commit``),
once, in one place: a worker that dies mid-task and is retried, or a result that arrives
twice, can neither lose nor duplicate a recording, and a client killed mid-run resumes from
what it committed. Workers of the ``processes`` and ``dask`` executors write a finished
recording's parts (or a piece's scores) into the output folder themselves, when they can see
it, and return only the file names (``scan_stage``); the client's commit is then a rename.

A long recording can be cut into *pieces* (``plan_pieces``) so that one 24-hour file keeps many
workers busy. A piece scores the windows whose start falls in its range; it reads the audio
those windows need plus the context the scorer needs at both edges, cut on the scorer's own
grid; resampled audio comes in fixed segments (``audio.ResampleGrid``) that a piece computes
exactly as the whole-file reader does. The pieces' scores are concatenated before events are
built, so a split scan equals an unsplit one exactly (tests/test_executors.py).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Union

import numpy as np
import pandas as pd

from .audio import AudioReadError, audio_error_from_message, probe, unread_tail_message
from .checkpoint import LoadedModel
from .inference import make_scorer
from .scan_plan import Recording
from .scan_stage import StagedResult, stage_piece_scores, stage_result
from .scanner import RecordingScores, ScanConfig, events_table, score_recording
from .windows import window_starts

logger = logging.getLogger(__name__)

EXECUTORS = ("serial", "processes", "dask")
# formats whose seek is sample-accurate in libsndfile; other files are never split
SPLITTABLE_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "AIFF", "CAF", "FLAC"})


# --- results -------------------------------------------------------------------------------
@dataclass
class RecordingResult:
    """What a finished recording commits: its JSON record, events (None when it failed) and
    window scores (None unless asked for). Plain data, so it pickles to and from workers."""

    rec: Recording
    record: dict[str, Any]
    events: pd.DataFrame | None
    windows: pd.DataFrame | None

    @property
    def audio_seconds(self) -> float:
        return float(self.record.get("duration_s") or 0.0)


@dataclass(frozen=True)
class Piece:
    """Part ``index`` of ``count`` of a recording: the windows with global index in
    [first, stop) (stop None: to the end), read from model sample ``read_from`` to ``read_to``
    (None: to the end of the file)."""

    index: int
    count: int
    first: int
    stop: int | None
    read_from: int
    read_to: int | None


@dataclass(frozen=True)
class Task:
    """One unit of work for an executor: a whole recording, or one piece of it."""

    rec: Recording
    piece: Piece | None = None

    @property
    def key(self) -> str:
        return self.rec.key if self.piece is None else f"{self.rec.key}-{self.piece.index}"


@dataclass
class PieceScores:
    """The scores of one piece, in global sample positions, for the client to merge."""

    rec: Recording
    piece: Piece
    starts: np.ndarray  # (n,) int64 window starts, samples from the start of the recording
    scores: np.ndarray  # (n, classes) float32
    end_sample: int  # model samples decoded up to (global): the recording's length if this is the last piece
    seconds: float  # wall time spent on it
    fingerprint: dict[str, int] | None
    info: Any = None  # AudioInfo of the file (None when it could not be opened)
    start: Any = None  # recording start (datetime) or None
    error: tuple[str, str] | None = None  # (kind, message) of a read error; piece 0 with no windows: the file failed
    hop: int = 1
    staged: str | None = None  # starts and scores are in this staged .npz (scan_stage), not in the arrays above

    def loaded(self) -> "PieceScores":
        """These scores with their arrays in memory: read back (and the staged file removed) if staged."""
        if self.staged is None:
            return self
        from dataclasses import replace

        from .scan_stage import load_piece_scores, remove

        starts, scores = load_piece_scores(self.staged)
        remove([self.staged])
        return replace(self, starts=starts, scores=scores, staged=None)

    def owned_seconds(self, sample_rate: int) -> float:
        """Audio this piece accounts for (for progress): its own range, clipped to what was decoded."""
        lo = self.piece.first * self.hop
        hi = self.end_sample if self.piece.stop is None else min(self.end_sample, self.piece.stop * self.hop)
        return max(0, hi - lo) / sample_rate


TaskResult = Union[RecordingResult, PieceScores, StagedResult]


# --- one recording -------------------------------------------------------------------------
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
        assert error is not None
        return record | {"status": "failed", "error_kind": error.kind, "error": str(error), "duration_s": 0.0,
                         "n_windows": 0, "n_events": 0}
    info = scores.info
    # cut short: the header said so (scores.truncated), or decoding stopped early (an MP3)
    truncated = scores.truncated or (scores.error is not None and scores.error.kind == "truncated")
    kind, message = "", ""
    if scores.error is not None:
        kind, message = scores.error.kind, str(scores.error)
    elif scores.truncated:
        kind, message = "truncated", (f"{rec.display_path}: truncated file, cut short before the end it declares; "
                                      f"scanned the {scores.duration_s:.3f} s present")
    elif info.unread_bytes:
        kind, message = "oversize", (f"{rec.display_path}: the file holds {info.unread_bytes / 2**20:.0f} MiB more than its "
                                     f"WAV header declares (a WAV cannot describe more than 4 GiB), so only the first "
                                     f"{scores.duration_s:.3f} s were scanned; convert it to RF64, W64 or FLAC and scan again")
    elif info.unread_seconds:
        kind, message = "unread_tail", f"{rec.display_path}: {unread_tail_message(info)}"
    note = ""
    if truncated:
        note = f"truncated file: scanned the {scores.duration_s:.3f} s present"
    elif info.unread_bytes:
        note = f"oversize WAV: scanned the {scores.duration_s:.3f} s its header declares"
    elif info.unread_seconds:
        note = f"VBR MP3 without a Xing header: scanned the {scores.duration_s:.3f} s libsndfile decodes"
    return record | {
        "status": "partial" if kind else "ok", "error_kind": kind, "error": message, "note": note,
        "duration_s": scores.duration_s, "sample_rate": info.sample_rate, "channels": info.channels,
        "format": f"{info.format}/{info.subtype}",
        "recording_start": scores.start.isoformat() if scores.start else None,
        "truncated": truncated, "n_windows": int(len(scores.starts_s)), "n_events": n_events,
    }


def result_from_scores(rec: Recording, scores: RecordingScores, model: LoadedModel, config: ScanConfig,
                       save_windows: bool, seconds: float, fingerprint: dict[str, int] | None) -> RecordingResult:
    """Events, window scores and record of a scored recording."""
    events = events_table(scores, model, config.events, rec.rel, rec.display_path)
    windows = windows_frame(scores, model, rec) if save_windows else None
    record = recording_record(rec, scores, None, len(events), seconds, fingerprint)
    return RecordingResult(rec, record, events, windows)


def scan_one(rec: Recording, model: LoadedModel, config: ScanConfig, save_windows: bool = False,
             blocks: Iterable[np.ndarray] | None = None,
             on_block: Callable[[int], None] | None = None) -> RecordingResult:
    """Scan one recording; returns its record, events and window scores and writes nothing.

    Why pure: any executor (this process, a worker process, a Dask worker on another machine)
    can run it and hand the result back; only the client commits, so a retried task cannot
    commit twice. A file that cannot be read is a failed record, not an exception, so a broken
    file on a worker lands in failures.csv like any other. ``blocks`` may come from a
    prefetching reader; ``on_block`` is told each block's length (progress)."""
    started = time.perf_counter()
    fingerprint = rec.fingerprint()  # before reading: a file that grows meanwhile is seen as changed next time
    try:
        scores = score_recording(rec.path, model, config, blocks, on_block)
    except AudioReadError as e:
        logger.warning("cannot scan %s", e)
        record = recording_record(rec, None, e, 0, time.perf_counter() - started, fingerprint)
        return RecordingResult(rec, record, None, None)
    return result_from_scores(rec, scores, model, config, save_windows, time.perf_counter() - started, fingerprint)


# --- pieces of a long recording --------------------------------------------------------------
@dataclass(frozen=True)
class PieceGrid:
    """Where pieces may be cut, from the scorer's own arithmetic: piece starts are multiples of
    ``granule`` windows (whole fast-mode spans, on the trunk's column grid); ``left`` and
    ``right`` are the model samples of context read before a piece's first window and after
    its last window's start."""

    hop: int
    window: int
    granule: int
    left: int
    right: int


def piece_grid(model: LoadedModel, config: ScanConfig) -> PieceGrid:
    """The grid pieces are cut on, for this model and scan configuration."""
    sr = model.info.sample_rate
    hop = config.hop_samples(sr)
    scorer = make_scorer(model, hop, config.batch_size, config.mode, precision=config.precision)
    column = int(getattr(scorer, "stride", 1)) * int(getattr(scorer, "fe_hop", 1))  # samples per trunk column
    granule = math.lcm(int(scorer.group), column // math.gcd(hop, column))
    far = granule * 10_000  # a window index far from the start, where no clamping applies
    need_left = far * hop - int(scorer.keep_from(far * hop))  # audio a span reads before its first window
    block = granule * hop
    left = -(-need_left // block) * block  # whole granules, so spans and columns stay aligned
    right = max(0, int(scorer.needed_end(far, int(scorer.group))) - (far + int(scorer.group)) * hop) + column + hop
    return PieceGrid(hop, scorer.window, granule, left, right)


def plan_pieces(rec: Recording, model: LoadedModel, config: ScanConfig, piece_seconds: float | None) -> list[Piece] | None:
    """Pieces of about ``piece_seconds`` for ``rec``, or None when it stays whole (no split
    asked for, short, unreadable, or a format whose seeking is not sample-accurate)."""
    if not piece_seconds or piece_seconds <= 0:
        return None
    try:
        info = probe(rec.path)
    except AudioReadError:
        return None  # scanned whole, where it fails like any broken file
    if info.format not in SPLITTABLE_FORMATS or info.truncated:
        return None
    sr = model.info.sample_rate
    grid = piece_grid(model, config)
    n_samples = math.ceil(info.frames * sr / info.sample_rate)
    n_windows = len(window_starts(n_samples, grid.window, grid.hop))
    per_piece = max(1, round(piece_seconds * sr / grid.hop / grid.granule)) * grid.granule
    count = -(-n_windows // per_piece)
    if count < 2:
        return None
    pieces = []
    for k in range(count):
        first, stop = k * per_piece, (k + 1) * per_piece if k < count - 1 else None
        read_from = max(0, first * grid.hop - grid.left)
        read_to = None if stop is None else stop * grid.hop + grid.right
        pieces.append(Piece(k, count, first, stop, read_from, read_to))
    return pieces


def read_span(path: Path, sample_rate: int, channel: int | None, block_seconds: float, start: int,
              stop: int | None) -> Iterator[np.ndarray]:
    """Model-rate mono blocks of samples [start, stop) of ``path`` (stop None: to the end),
    exactly the same samples as ``audio.stream_audio`` gives there: the file is sought to the
    start of the resampling segment that holds ``start`` (``audio.ResampleGrid``, left context
    included), so every segment is resampled from the same source frames either way."""
    from . import audio

    if start == 0 and stop is None:
        yield from audio.stream_audio(path, sample_rate, channel, block_seconds)
        return
    with audio._open(path) as f:
        info = audio._info(f, path)
        audio._check_rate_and_channel(path, sample_rate, channel, info.channels)
        if info.sample_rate == sample_rate:
            source_from, drop = start, 0
        else:
            grid = audio.ResampleGrid(info.sample_rate, sample_rate)
            first = start // grid.seg_out
            source_from, drop = grid.source_start(first), start - first * grid.seg_out
        if source_from >= info.frames:
            return
        f.seek(source_from)
        blocks = audio.read_mono_blocks(f, path, info, channel, block_seconds)
        if info.sample_rate != sample_rate:
            blocks = audio.resample_segments(blocks, grid, first)
        wanted = None if stop is None else stop - start
        for x in blocks:
            if drop:
                cut = min(drop, len(x))
                x, drop = x[cut:], drop - cut
            if wanted is not None:
                x = x[:wanted]
                wanted -= len(x)
            if x.size:
                yield x
            if wanted is not None and wanted <= 0:
                return


def piece_blocks(rec: Recording, piece: Piece, model: LoadedModel, config: ScanConfig) -> Iterator[np.ndarray]:
    """The model-rate blocks ``piece`` reads (its windows' audio and the context they need); lazy."""
    return read_span(rec.path, model.info.sample_rate, config.channel, config.block_seconds, piece.read_from,
                     piece.read_to)


def score_piece(rec: Recording, piece: Piece, model: LoadedModel, config: ScanConfig) -> PieceScores:
    """Scores of the windows ``piece`` owns, in global sample positions; writes nothing."""
    started = time.perf_counter()
    fingerprint = rec.fingerprint()
    try:
        scores: RecordingScores | AudioReadError = score_recording(rec.path, model, config,
                                                                   piece_blocks(rec, piece, model, config))
    except AudioReadError as e:
        scores = e
    return piece_scores(rec, piece, scores, model, config, time.perf_counter() - started, fingerprint)


def piece_scores(rec: Recording, piece: Piece, scores: RecordingScores | AudioReadError, model: LoadedModel,
                 config: ScanConfig, seconds: float, fingerprint: dict[str, int] | None) -> PieceScores:
    """What ``piece`` owns of the scores of its blocks (or the error reading them raised)."""
    sr = model.info.sample_rate
    hop = config.hop_samples(sr)
    if isinstance(scores, AudioReadError):
        classes = len(model.info.classes)
        empty = (np.zeros(0, dtype=np.int64), np.zeros((0, classes), dtype=np.float32))
        if piece.index > 0 and scores.kind == "no_samples":  # past the end the header promised: nothing to own
            return PieceScores(rec, piece, *empty, piece.read_from, seconds, fingerprint, hop=hop)
        return PieceScores(rec, piece, *empty, piece.read_from, seconds, fingerprint,
                           error=(scores.kind, str(scores)), hop=hop)
    rel = np.rint(scores.starts_s * sr).astype(np.int64)  # starts_s = int samples / sr: exact round trip
    keep = rel + piece.read_from >= piece.first * hop
    if piece.stop is not None:
        keep &= rel + piece.read_from < piece.stop * hop
    error = (scores.error.kind, str(scores.error)) if scores.error is not None else None
    return PieceScores(rec, piece, rel[keep] + piece.read_from, scores.scores[keep],
                       piece.read_from + round(scores.duration_s * sr), seconds, fingerprint,
                       scores.info, scores.start, error, hop)


def merge_pieces(parts: Sequence[PieceScores], model: LoadedModel, config: ScanConfig,
                 save_windows: bool) -> RecordingResult:
    """One recording's result from all its pieces: scores concatenated in order up to the first
    piece that hit a read error (as an unsplit scan stops there), then events built once."""
    parts = sorted(parts, key=lambda p: p.piece.index)
    first = parts[0]
    rec, sr = first.rec, model.info.sample_rate
    seconds = sum(p.seconds for p in parts)
    if first.info is None:  # the file could not be read at all
        kind, message = first.error or ("not_audio", f"{rec.display_path}: unreadable")
        error = audio_error_from_message(rec.display_path, kind, message)
        logger.warning("cannot scan %s", error)
        return RecordingResult(rec, recording_record(rec, None, error, 0, seconds, first.fingerprint), None, None)
    used: list[PieceScores] = []
    for part in parts:
        if part.info is None and part.error is None:  # past the real end of the file
            break
        used.append(part)
        if part.error is not None:
            break
    last = used[-1]
    error = audio_error_from_message(rec.display_path, *last.error) if last.error is not None else None
    scores = RecordingScores(rec.path, first.info, first.start,
                             np.concatenate([p.starts for p in used]) / sr,
                             np.concatenate([p.scores for p in used]), last.end_sample / sr,
                             first.info.truncated, error)
    return result_from_scores(rec, scores, model, config, save_windows, seconds, first.fingerprint)


# --- model once per worker process ------------------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to load the scan's model itself: the checkpoint on storage it can
    read, the sha256 it must have (a different file at that path is refused), the device, and
    torch intra-op threads (None: leave torch's default)."""

    path: str
    sha256: str
    device: str = "cpu"
    threads: int | None = None

    @classmethod
    def of(cls, model: LoadedModel, threads: int | None = None, device: str = "cpu") -> "ModelRef":
        return cls(str(model.path.resolve()), model.sha256, device, threads)


_MODELS: dict[tuple[str, str, str], LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def worker_model(ref: ModelRef, config: ScanConfig) -> LoadedModel:
    """The model of ``ref``, loaded once per process and cached (by path, sha256 and device)."""
    from .checkpoint import CheckpointError
    from .scanner import prepare_model

    key = (ref.path, ref.sha256, ref.device)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            if ref.threads:
                import torch

                torch.set_num_threads(ref.threads)
            model = prepare_model(ref.path, config, ref.device)
            if model.sha256 != ref.sha256:
                raise CheckpointError(f"{ref.path}: this worker reads a checkpoint with sha256 {model.sha256[:12]}, "
                                      f"not the scan's {ref.sha256[:12]}; give every worker the same file")
            _MODELS[key] = model
        return model


def run_task(task: Task, model: LoadedModel, config: ScanConfig, save_windows: bool) -> TaskResult:
    """A whole recording's result, or one piece's scores."""
    if task.piece is None:
        return scan_one(task.rec, model, config, save_windows)
    return score_piece(task.rec, task.piece, model, config)


_NO_STAGE_WARNED: set[str] = set()


def staged(result: TaskResult, stage: str | None) -> TaskResult:
    """``result`` (fresh from ``run_task``) with its parts written to the stage folder
    (``scan_stage``) when this process can see it, so only file names go back to the client;
    else ``result`` itself."""
    if stage is None:
        return result
    folder = Path(stage)
    try:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: not visible from this worker")
        if isinstance(result, PieceScores):
            if not len(result.starts):  # nothing to stage
                return result
            from dataclasses import replace

            path = stage_piece_scores(Task(result.rec, result.piece).key, result.starts, result.scores, folder)
            return replace(result, starts=result.starts[:0], scores=result.scores[:0], staged=path)
        return stage_result(result, folder)
    except OSError as e:  # no shared storage here: send the parts back through the scheduler
        if stage not in _NO_STAGE_WARNED:
            _NO_STAGE_WARNED.add(stage)
            logger.warning("cannot write parts to the output folder (%s); returning them to the client instead", e)
        return result


def run_remote_task(ref: ModelRef, config: ScanConfig, save_windows: bool, task: Task,
                    stage: str | None = None) -> TaskResult:
    """``run_task`` in a worker process, with the process's cached model (Dask's task function);
    parts go to ``stage`` (OUT/.scan-state/staged) when the worker sees it."""
    return staged(run_task(task, worker_model(ref, config), config, save_windows), stage)


_WORKER: dict[str, Any] = {}


def _init_process(ref: ModelRef, config: ScanConfig, save_windows: bool, stage: str | None = None) -> None:
    """ProcessPoolExecutor initializer: load the model once per worker process."""
    _WORKER.update(model=worker_model(ref, config), config=config, save_windows=save_windows, stage=stage)


def _process_task(task: Task) -> TaskResult:
    result = run_task(task, _WORKER["model"], _WORKER["config"], _WORKER["save_windows"])
    return staged(result, _WORKER["stage"])


# --- executors ----------------------------------------------------------------------------
class Executor(Protocol):
    """Runs tasks and yields their results as they finish, in any order. Results are plain
    data; the caller commits them. ``progress`` is told audio seconds as they are done."""

    def run(self, tasks: Sequence[Task], progress: Callable[[float], None]) -> Iterator[TaskResult]: ...

    def close(self) -> None: ...


ScoreFn = Callable[[Recording, Iterable[np.ndarray], Callable[[int], None]], RecordingResult]


class SerialExecutor:
    """This process, one task after the other, while ``workers`` threads decode the next files
    ahead (``prefetch.Prefetcher``): today's default, and the one to use on a GPU."""

    def __init__(self, score: ScoreFn, model: LoadedModel, config: ScanConfig, workers: int = 1,
                 save_windows: bool = False) -> None:
        self.score, self.model, self.config = score, model, config
        self.workers, self.save_windows = workers, save_windows

    def run(self, tasks: Sequence[Task], progress: Callable[[float], None]) -> Iterator[TaskResult]:
        from .prefetch import Prefetcher

        sr = self.model.info.sample_rate
        whole = [t for t in tasks if t.piece is None]
        index = {id(t): i for i, t in enumerate(whole)}
        prefetch = Prefetcher([t.rec.path for t in whole], sr, self.config.channel, self.config.block_seconds,
                              self.workers)
        try:
            for task in tasks:
                if task.piece is not None:
                    result = score_piece(task.rec, task.piece, self.model, self.config)
                    progress(result.owned_seconds(sr))
                    yield result
                    continue
                i = index[id(task)]
                try:
                    result = self.score(task.rec, prefetch.blocks(i), lambda n: progress(n / sr))
                finally:
                    prefetch.release(i)
                yield result
        finally:
            prefetch.close()

    def close(self) -> None:
        pass


def _progress_of(result: TaskResult, sample_rate: int) -> float:
    return result.owned_seconds(sample_rate) if isinstance(result, PieceScores) else result.audio_seconds


class ProcessExecutor:
    """``workers`` local processes (spawned, so no torch or thread state is forked), each
    loading the model once in its initializer, with one torch thread unless told otherwise."""

    def __init__(self, ref: ModelRef, config: ScanConfig, workers: int, save_windows: bool, sample_rate: int,
                 stage: str | None = None) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.sample_rate, self.workers = sample_rate, workers
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_process, initargs=(ref, config, save_windows, stage))

    def run(self, tasks: Sequence[Task], progress: Callable[[float], None]) -> Iterator[TaskResult]:
        from concurrent.futures import FIRST_COMPLETED, wait

        queue = iter(tasks)
        running = set()
        limit = 2 * self.workers  # bounded: a million files are not a million futures at once
        while True:
            for task in queue:
                running.add(self.pool.submit(_process_task, task))
                if len(running) >= limit:
                    break
            if not running:
                return
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                progress(_progress_of(result, self.sample_rate))
                yield result

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """Tasks on a Dask cluster (see ``cluster.open_cluster``). Each worker process loads the model
    once (``worker_model``'s cache); a worker lost mid-task has its task rerun elsewhere by the
    scheduler, and since only the client commits, nothing is lost or committed twice."""

    def __init__(self, client: Any, ref: ModelRef, config: ScanConfig, save_windows: bool, sample_rate: int,
                 stage: str | None = None) -> None:
        self.client, self.ref, self.config = client, ref, config
        self.save_windows, self.sample_rate, self.stage = save_windows, sample_rate, stage

    def run(self, tasks: Sequence[Task], progress: Callable[[float], None]) -> Iterator[TaskResult]:
        from distributed import as_completed

        threads = sum(self.client.nthreads().values()) or 1
        limit = max(4, 2 * threads)  # bounded in flight; adaptive clusters that grow still stay fed
        queue = iter(tasks)
        submitted: set[str] = set()

        def submit(task: Task):
            submitted.add(task.key)
            return self.client.submit(run_remote_task, self.ref, self.config, self.save_windows, task, self.stage, pure=False,
                                      key=f"scan-{task.key}-{os.getpid()}-{time.time_ns()}")

        futures = as_completed([submit(t) for _, t in zip(range(limit), queue)])  # range first: zip must not drop a task
        for future in futures:
            result = future.result()
            future.release()
            progress(_progress_of(result, self.sample_rate))
            yield result
            for task in queue:
                futures.add(submit(task))
                break

    def close(self) -> None:
        pass


@dataclass
class PieceCollector:
    """Gathers the pieces of split recordings until each is complete."""

    parts: dict[str, list[PieceScores]] = field(default_factory=dict)

    def add(self, result: PieceScores) -> list[PieceScores] | None:
        """The recording's pieces once all arrived (a piece seen twice counts once), else None."""
        got = self.parts.setdefault(result.rec.key, [])
        if any(p.piece.index == result.piece.index for p in got):
            if result.staged is not None:  # a second attempt's copy: ours, and not needed
                from .scan_stage import remove

                remove([result.staged])
            return None
        result = result.loaded()  # staged scores read back now: the file is not kept past its arrival
        got.append(result)
        if len(got) < result.piece.count:
            return None
        return self.parts.pop(result.rec.key)
