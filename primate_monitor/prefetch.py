"""Decode and resample upcoming recordings in background threads while the model scores.

libsndfile and soxr release the GIL, so threads overlap decoding with scoring; on a GPU
this keeps the device busy instead of waiting on one file. Each file's blocks pass
through a small bounded queue, so memory stays at a few blocks per worker.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .audio import stream_audio

QUEUE_BLOCKS = 4  # decoded blocks buffered per file


def put_unless_stopped(out: queue.Queue, item: tuple, stop: threading.Event) -> bool:
    """Put ``item`` on a bounded queue, waiting while it is full, unless ``stop`` is set (the
    consumer gave up: an interrupted scan, a failed file); False then. A decoder thread blocked
    for good on a full queue would keep its file open and its memory for the rest of the run."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.5)
            return True
        except queue.Full:
            continue
    return False


class _Producer(threading.Thread):
    def __init__(self, path: Path, sample_rate: int, channel: int | None, block_seconds: float) -> None:
        super().__init__(daemon=True)  # an interrupted scan must not wait for readers
        self.args = (path, sample_rate, channel, block_seconds)
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_BLOCKS)
        self.stop = threading.Event()

    def _put(self, item: tuple) -> bool:
        return put_unless_stopped(self.queue, item, self.stop)

    def run(self) -> None:
        try:
            for block in stream_audio(*self.args):
                if not self._put(("block", block)):
                    return
            self._put(("end", None))
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(("error", e))

    def blocks(self) -> Iterator[np.ndarray]:
        try:
            while True:
                kind, item = self.queue.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                yield item
        finally:
            self.stop.set()


class Prefetcher:
    """``blocks(i)`` streams file i; files i+1 .. i+workers-1 are already being decoded."""

    def __init__(self, paths: Sequence[Path], sample_rate: int, channel: int | None, block_seconds: float, workers: int) -> None:
        self.paths, self.workers = list(paths), max(1, workers)
        self.args = (sample_rate, channel, block_seconds)
        self.started: dict[int, _Producer] = {}

    def _start(self, i: int) -> None:
        if i < len(self.paths) and i not in self.started:
            producer = _Producer(self.paths[i], *self.args)
            producer.start()
            self.started[i] = producer

    def blocks(self, i: int) -> Iterator[np.ndarray]:
        for j in range(i, i + self.workers):
            self._start(j)
        return self.started[i].blocks()

    def release(self, i: int) -> None:
        """Stop file i's reader (done, failed or abandoned)."""
        producer = self.started.pop(i, None)
        if producer is not None:
            producer.stop.set()

    def close(self) -> None:
        for producer in self.started.values():
            producer.stop.set()
        self.started.clear()
