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

Pieces of long recordings (``--piece-hours``) are scored one after the other, as in the serial
executor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

from .audio import AudioReadError
from .checkpoint import LoadedModel
from .inference import SPANS_PER_CALL_CUDA
from .scan_execute import RecordingResult, TaskResult, Task, recording_record, result_from_scores, score_piece
from .scanner import ScanConfig, score_recordings


class BatchedExecutor:
    """This process, ``workers`` decoder threads feeding one batched scorer (see module doc)."""

    def __init__(self, model: LoadedModel, config: ScanConfig, workers: int = 1, save_windows: bool = False,
                 spans_per_call: int = SPANS_PER_CALL_CUDA) -> None:
        self.model, self.config = model, config
        self.workers, self.save_windows, self.spans_per_call = workers, save_windows, spans_per_call

    def run(self, tasks: Sequence[Task], progress: Callable[[float], None]) -> Iterator[TaskResult]:
        sr = self.model.info.sample_rate
        for task in tasks:
            if task.piece is not None:
                result = score_piece(task.rec, task.piece, self.model, self.config)
                progress(result.owned_seconds(sr))
                yield result
        whole = [t for t in tasks if t.piece is None]
        if not whole:
            return
        # before any file is read: a file that grows during the scan is seen as changed next time
        fingerprints = [t.rec.fingerprint() for t in whole]
        lock = threading.Lock()  # the decoder threads report their blocks

        def on_block(n: int) -> None:
            with lock:
                progress(n / sr)

        last = time.perf_counter()
        results = score_recordings([t.rec.path for t in whole], self.model, self.config, self.workers, on_block,
                                   self.spans_per_call)
        for task, fingerprint, (_, scores) in zip(whole, fingerprints, results):
            now = time.perf_counter()
            seconds, last = now - last, now  # the wall time since the previous recording finished
            if isinstance(scores, AudioReadError):
                record = recording_record(task.rec, None, scores, 0, seconds, fingerprint)
                yield RecordingResult(task.rec, record, None, None)
            else:
                yield result_from_scores(task.rec, scores, self.model, self.config, self.save_windows, seconds,
                                         fingerprint)

    def close(self) -> None:
        pass
