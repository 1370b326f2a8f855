"""The executor for a GPU: spans from several recordings batched into each network call.

Why: on a GPU, CNN10 scores an hour of audio in well under a second, so one recording at a
time (``SerialExecutor``) leaves the device waiting on one decoder, and its calls are as small
as one recording's spans. Here ``workers`` threads decode and resample recordings side by side
and one scorer takes jobs from all of them (``scanner.score_recordings``); each recording's
result is then built and yielded exactly as ``scan_one`` builds it. The scores equal the
serial executor's up to float rounding, so the choice is not a run parameter: a scan started
on a CPU resumes on a GPU and the other way round.

Asked for on a CPU (``ScanRun(batch_recordings=True)``), it batches the same way; that only
costs memory there, and serves to test it without a GPU.

Pieces of a long recording (``--piece-hours``) are streams like any other, each read by its own
decoder thread: one 24-hour file split into pieces is decoded by ``workers`` threads at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from .audio import AudioReadError, stream_audio
from .checkpoint import LoadedModel
from .inference import SPANS_PER_CALL_CUDA
from .scan_execute import (RecordingResult, Task, TaskResult, piece_blocks, piece_scores, recording_record,
                           result_from_scores)
from .scanner import ScanConfig, counted, score_recordings


class BatchedExecutor:
    """This process, ``workers`` decoder threads feeding one batched scorer (see module doc)."""

    def __init__(self, model: LoadedModel, config: ScanConfig, workers: int = 1, save_windows: bool = False,
                 spans_per_call: int = SPANS_PER_CALL_CUDA) -> None:
        self.model, self.config = model, config
        self.workers, self.save_windows, self.spans_per_call = workers, save_windows, spans_per_call

    def run(self, tasks: Sequence[Task], progress: Callable[[float], None]) -> Iterator[TaskResult]:
        if not tasks:
            return
        sr = self.model.info.sample_rate
        # before any file is read: a file that grows during the scan is seen as changed next time
        fingerprints = [t.rec.fingerprint() for t in tasks]
        lock = threading.Lock()  # the decoder threads report their blocks, this thread its pieces

        def advance(seconds: float) -> None:
            with lock:
                progress(seconds)

        def report(n: int) -> None:  # a block of n model samples decoded
            advance(n / sr)

        def source(task: Task) -> Iterator[np.ndarray]:
            """Lazy blocks, read in a decoder thread: a whole recording, counted block by block for
            the progress bar, or a piece's span with its context (it reports what it owns when done)."""
            if task.piece is not None:
                return piece_blocks(task.rec, task.piece, self.model, self.config)
            return counted(stream_audio(task.rec.path, sr, self.config.channel, self.config.block_seconds), report)

        results = score_recordings([t.rec.path for t in tasks], self.model, self.config, self.workers,
                                   spans_per_call=self.spans_per_call, blocks=[source(t) for t in tasks])
        last = time.perf_counter()
        for task, fingerprint, (_, scores) in zip(tasks, fingerprints, results):
            now = time.perf_counter()
            seconds, last = now - last, now  # the wall time since the previous task finished
            if task.piece is not None:
                result = piece_scores(task.rec, task.piece, scores, self.model, self.config, seconds, fingerprint)
                advance(result.owned_seconds(sr))
                yield result
            elif isinstance(scores, AudioReadError):
                record = recording_record(task.rec, None, scores, 0, seconds, fingerprint)
                yield RecordingResult(task.rec, record, None, None)
            else:
                yield result_from_scores(task.rec, scores, self.model, self.config, self.save_windows, seconds,
                                         fingerprint)

    def close(self) -> None:
        pass
