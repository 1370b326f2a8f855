"""Window scoring over a stream: an exact per-window mode and a shared-convolution fast mode.

Both consume float32 mono blocks at the model's rate and return, per window, its start
sample and per-class scores. Windows follow ``windows.window_starts``: every ``hop``
samples, plus a final zero-padded window so the end of the recording is covered.

- ``exact``: each window is cut, zero-padded if short, and goes through front end and
  network on its own, exactly as in training and evaluation.
- ``fast``: overlapping windows share their convolution work. The front end and the
  network's trunk run once over a span of consecutive windows (with context on both
  sides), and each window pools its own columns of the trunk's feature map before the
  classifier head. The differences from ``exact``: a window sees real audio instead of
  zero padding at its borders, and its start is rounded to the trunk's column grid
  (16 frames for CNN10, 0.32 s at 16 kHz). docs/benchmarks.md reports how often the two
  agree on real recordings.

Jobs (the input of a span, or of a batch of windows) are cut on the CPU apart from being
scored, so that on a GPU several spans, from one stream or several (``score_streams``), go
through the network in one call, with bf16 autocast, channels_last and pinned, non-blocking
host-to-device copies. On the CPU each job is its own call, as it always was, through a
copy of the network with BatchNorm folded into the convolutions in channels_last layout
(``fold_batch_norms``), and glibc is told to return large buffers to the system
(``limit_heap_growth``) so that a long recording's peak memory stays flat.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .checkpoint import LoadedModel
from .clipaudio import model_padding, pad_eval
from .devices import autocast
from .frontend import LogMel
from .predict import activate
from .prefetch import put_unless_stopped
from .windows import window_starts

MODES = ("auto", "fast", "exact")
SPAN_WINDOWS = 32  # windows per trunk call in fast mode; fixed so results do not depend on --batch-size
CONTEXT_COLUMNS = 4  # trunk columns of audio context on each side of a span (64 frames for CNN10)
SPANS_PER_CALL_CUDA = 16  # fast-mode spans (or exact-mode batches) per network call on a GPU: ~29k frames at hop 1 s


_FOLDED: dict[int, tuple[torch.nn.Module, tuple, torch.nn.Module]] = {}  # id(network) -> (network, versions, folded)


def _weights_version(network: torch.nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or updated in place (optimizer steps,
    load_state_dict), so a cached folded copy is never stale."""
    return tuple((id(t), t._version) for t in [*network.parameters(), *network.buffers()])


def cpu_inference_network(network: torch.nn.Module) -> torch.nn.Module:
    """``fold_batch_norms(network)``, made once per network and weights, not once per recording:
    a scan creates a scorer per file, and re-folding means a fresh copy of the weights each time."""
    if getattr(network, "inference_ready", False):  # already folded (prepare_model folds the networks it loads)
        return network
    key, version = id(network), _weights_version(network)
    cached = _FOLDED.get(key)
    if cached is not None and cached[0] is network and cached[1] == version:
        return cached[2]
    folded = fold_batch_norms(network)
    _FOLDED.clear()  # one network at a time: a scan uses one model
    _FOLDED[key] = (network, version, folded)
    return folded


_HEAP_LIMITED = False
MMAP_THRESHOLD_BYTES = 256 * 1024


def limit_heap_growth() -> None:
    """Ask glibc to serve allocations of 256 KB and more (the trunk's activation maps, STFT
    buffers, decoded blocks, resampled segments) from mmap, returned to the system when freed,
    for the rest of the process.

    Why: by default glibc raises its mmap threshold after the first large free, so later
    multi-MB buffers come from the heap, where they fragment it and the resident size creeps
    with the recording's length (docs/benchmarks.md: 424 -> 536 MB over 2 h at 48 kHz; 690 ->
    830 MB over 22 h before). A fixed 1 MB threshold kept ``score_recording`` flat (~405 MB),
    but through the CLI the peak still crept, to 476-524 MB over 2 h: buffers between 256 KB and
    1 MB (the 15 s resampled segments are just under 1 MB at 16 kHz) still came from the heap.
    At 256 KB the CLI's curve is flat (peak 437 MB), at the same speed. 4 MB was not enough.
    A ``MALLOC_MMAP_THRESHOLD_`` in the environment wins. No-op off Linux/glibc."""
    global _HEAP_LIMITED
    if _HEAP_LIMITED:
        return
    _HEAP_LIMITED = True
    import ctypes
    import ctypes.util
    import os
    import sys

    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return  # the user's own setting wins
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_mmap_threshold = -3  # from malloc.h
        libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # musl or another libc without mallopt
        pass


def fold_batch_norms(network: torch.nn.Module) -> torch.nn.Module:
    """An inference copy of ``network`` with every ``Conv2d`` followed by a ``BatchNorm2d`` (in
    an ``nn.Sequential``) merged into one convolution, and in channels_last layout.

    Why: on the CPU the trunk is ~90 % of a scan (docs/benchmarks.md), and a folded,
    channels_last trunk runs about 1.3x faster and holds fewer activation buffers (no
    separate BatchNorm output per convolution). Scores change only by float rounding
    (~1e-6). The caller's network is left as it is (a copy is folded), so training and
    evaluation keep the network they trained."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(network).eval()
    for module in list(folded.modules()):
        if not isinstance(module, torch.nn.Sequential):
            continue
        layers = list(module)
        merged: list[torch.nn.Module] = []
        i = 0
        while i < len(layers):
            conv = layers[i]
            bn = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d) \
                    and bn.track_running_stats and bn.num_features == conv.out_channels:
                merged.append(fuse_conv_bn_eval(conv, bn))
                i += 2
            else:
                merged.append(conv)
                i += 1
        if len(merged) != len(layers):
            for name in list(module._modules):
                del module._modules[name]
            for k, layer in enumerate(merged):
                module.add_module(str(k), layer)
    folded = folded.to(memory_format=torch.channels_last)
    folded.inference_ready = True  # for inference only: the scorers use it as it is
    return folded


class SampleBuffer:
    """The recent part of a stream, addressed by absolute sample index.

    Samples before 0 are a reflection of the start (as ``center=True`` STFT padding does);
    samples past the end of a finished stream are zeros (a short last window is padded).
    The blocks are kept as they came, not joined: joining copied every buffered sample again
    at each append, a fifth of a decoder thread's work on 48 kHz audio (issue 11).
    """

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.offset = 0  # absolute index of chunks[0][0]
        self.length = 0  # samples held
        self.head = np.zeros(0, dtype=np.float32)  # first samples, kept for the reflection
        self.finished = False

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def data(self) -> np.ndarray:
        """The samples held, joined into one array (a copy)."""
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.float32)

    def append(self, block: np.ndarray) -> None:
        if not len(block):
            return
        self.chunks.append(block.astype(np.float32, copy=False))
        self.length += len(block)
        if len(self.head) < 1025 and self.offset == 0:
            self.head = self.data[:1025].copy()

    def get(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop); start may be negative (reflected), stop past the end (zeros)."""
        out = np.zeros(stop - start, dtype=np.float32)
        if start < 0:
            n = min(-start, len(self.head) - 1)
            out[-start - n : -start] = self.head[1 : n + 1][::-1]
        at = self.offset  # absolute index of the chunk's first sample
        for chunk in self.chunks:
            a, b = max(start, at), min(stop, at + len(chunk))
            if b > a:
                out[a - start : b - start] = chunk[a - at : b - at]
            at += len(chunk)
            if at >= stop:
                break
        return out

    def drop_before(self, index: int) -> None:
        cut = min(max(0, index - self.offset), self.length)
        self.offset += cut
        self.length -= cut
        while cut:
            first = self.chunks[0]
            if len(first) <= cut:
                self.chunks.pop(0)
                cut -= len(first)
            else:
                self.chunks[0] = first[cut:]  # a view: the block is freed once wholly dropped
                cut = 0


@dataclass
class WindowScores:
    starts: np.ndarray  # (n,) int64 start sample of each window
    scores: np.ndarray  # (n, classes) float32


@dataclass
class Job:
    """The input of a run of consecutive windows of one stream, cut on the CPU.

    Jobs are cut (``StreamScorer.jobs``) apart from being scored (``StreamScorer.score_jobs``)
    so that decoder threads can cut them while the device scores earlier ones, and jobs of
    equal shape, from one stream or several, can share one network call.
    """

    starts: np.ndarray  # (n,) int64 start sample of each window
    wave: np.ndarray  # exact: (n, window) windows; fast: (samples,) the span with its context
    offsets: np.ndarray | None = None  # fast: trunk column where each window begins; None: windows, as exact

    @property
    def shape(self) -> tuple[int, ...]:
        return self.wave.shape


class StreamScorer:
    """Shared bookkeeping: which windows are ready, and the final partial windows.

    ``spans_per_call``: how many jobs (fast: spans; exact: batches) go through the network in
    one call. 1 on the CPU, where a span alone already keeps the cores busy and the scores stay
    exactly those of one span per call; SPANS_PER_CALL_CUDA on a GPU, which needs large calls.
    """

    def __init__(self, model: LoadedModel, hop_samples: int, batch_size: int, spans_per_call: int | None = None,
                 precision: str = "fp32") -> None:
        info = model.info
        self.model = model
        self.network = model.network.eval()
        self.device = model.device
        self.cuda = self.device.type == "cuda"
        if precision == "auto":  # a library caller's: int8 where the calibration allows it (int8_check.auto_precision)
            from .int8_check import auto_precision

            precision = auto_precision(model)[0]
        if precision == "int8":  # the body in int8 from the checkpoint's calibration (quantize.py)
            from .quantize import int8_network

            self.network = int8_network(model)
            limit_heap_growth()
        elif precision != "fp32":
            raise ValueError(f"precision must be auto, fp32 or int8, got {precision!r}")
        elif getattr(self.network, "is_int8", False):  # never run int8 under an fp32 label
            raise ValueError(f"{model.path}: this model was prepared for --precision int8; load the checkpoint "
                             "again to scan in fp32")
        elif self.cuda:  # cuDNN's fastest bf16 convolutions want NHWC
            self.network = self.network.to(memory_format=torch.channels_last)
        elif self.device.type == "cpu":  # BatchNorm folded into the convolutions, NHWC (oneDNN's fast layout)
            self.network = cpu_inference_network(self.network)
            limit_heap_growth()
        self.frontend = LogMel(info.frontend).to(self.device)
        self.window = round(info.clip_seconds * info.sample_rate)
        self.hop = hop_samples
        self.batch_size = batch_size
        self.activation = info.activation
        self.padding = model_padding(model)
        if spans_per_call is not None and spans_per_call < 1:
            raise ValueError(f"spans_per_call must be at least 1, got {spans_per_call}")
        self.spans_per_call = spans_per_call or (SPANS_PER_CALL_CUDA if self.cuda else 1)

    def jobs(self, blocks: Iterable[np.ndarray]) -> Iterator[Job]:
        """Cut the stream into jobs, in window order; numpy only, so it may run in a decoder thread."""
        buf = SampleBuffer()
        next_index = 0  # index of the next window to score
        for block in blocks:
            buf.append(block)
            while True:
                ready = self.ready_windows(next_index, buf)
                if ready == 0:
                    break
                yield self.cut(np.arange(next_index, next_index + ready) * self.hop, buf)
                next_index += ready
                buf.drop_before(self.keep_from(next_index * self.hop))
        buf.finished = True
        if next_index == 0 and buf.offset == 0 and 0 < buf.end < self.window:
            # shorter than one window: the one window the model was trained to see for such a clip
            yield Job(np.zeros(1, dtype=np.int64), pad_eval(buf.data, self.window, self.padding)[None])
            return
        starts = window_starts(buf.end, self.window, self.hop)
        rest = starts[starts >= next_index * self.hop]
        for i in range(0, len(rest), self.group):
            yield self.cut(rest[i : i + self.group], buf)

    def run(self, blocks: Iterable[np.ndarray]) -> Iterator[WindowScores]:
        """Score every window of the stream; yields results as they are ready."""
        pending: list[Job] = []
        for job in self.jobs(blocks):
            pending.append(job)
            if len(pending) == self.spans_per_call:
                yield from self.score_jobs(pending)
                pending = []
        if pending:
            yield from self.score_jobs(pending)

    @property
    def group(self) -> int:
        return self.batch_size

    def ready_windows(self, next_index: int, buf: SampleBuffer) -> int:
        """How many windows from ``next_index`` can be scored with the samples buffered."""
        # a full group or nothing; needed_end grows with the count, so the last window decides
        return self.group if self.needed_end(next_index, self.group) <= buf.end else 0

    def needed_end(self, first: int, count: int) -> int:
        return (first + count - 1) * self.hop + self.window

    def keep_from(self, start: int) -> int:
        return start

    def cut(self, starts: np.ndarray, buf: SampleBuffer) -> Job:
        raise NotImplementedError

    def score_jobs(self, jobs: Sequence[Job]) -> list[WindowScores]:
        """Scores of each job, in order. Jobs of equal input shape share one network call."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.shape, []).append(i)
        results: list[WindowScores | None] = [None] * len(jobs)
        for members in groups.values():
            group = [jobs[i] for i in members]
            with torch.no_grad():
                scores = self.score_group(group)
            scores = scores.cpu().numpy()
            at = 0
            for i, job in zip(members, group):
                n = len(job.starts)
                results[i] = WindowScores(np.asarray(job.starts, dtype=np.int64), scores[at : at + n])
                at += n
        return results  # type: ignore[return-value]

    def score_group(self, jobs: list[Job]) -> torch.Tensor:
        """(sum of windows, classes) float32 scores of jobs of one shape, on the device."""
        raise NotImplementedError

    def to_device(self, arrays: list[np.ndarray], stack: bool) -> torch.Tensor:
        """The jobs' samples as one tensor on the device. On CUDA they are gathered straight into
        pinned host memory and copied without blocking, so the copy overlaps earlier GPU work."""
        n = len(arrays) if stack else sum(len(a) for a in arrays)
        shape = (n,) + arrays[0].shape[(0 if stack else 1):]
        host = torch.empty(shape, dtype=torch.float32, pin_memory=self.cuda)
        if stack:
            np.stack(arrays, out=host.numpy())
        else:
            np.concatenate(arrays, out=host.numpy())
        return host.to(self.device, non_blocking=True) if self.cuda else host

    def finish(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(activate(logits.float(), self.activation), nan=0.0)

    def score_windows(self, jobs: list[Job]) -> torch.Tensor:
        """Jobs of whole windows (n, window), each through front end and network on its own."""
        wave = self.to_device([j.wave for j in jobs], stack=False)
        with autocast(self.device):
            mel = self.frontend(wave)
            if self.cuda:
                mel = mel.contiguous(memory_format=torch.channels_last)
            logits, _ = self.network(mel)
        return self.finish(logits)


class ExactScorer(StreamScorer):
    """Each window through front end and network on its own, in batches of ``batch_size``."""

    def cut(self, starts: np.ndarray, buf: SampleBuffer) -> Job:
        # windows never start before 0, so get() only zero-pads a final short window; one read of
        # the stretch the windows cover, then each window gathered from a strided view of it
        starts = np.asarray(starts, dtype=np.int64)
        first = int(starts[0])
        stretch = buf.get(first, int(starts[-1]) + self.window)
        return Job(starts, np.lib.stride_tricks.sliding_window_view(stretch, self.window)[starts - first])

    def score_group(self, jobs: list[Job]) -> torch.Tensor:
        return self.score_windows(jobs)


class FastScorer(StreamScorer):
    """Trunk once over a span of ``SPAN_WINDOWS`` windows plus context; pool per window."""

    def __init__(self, model: LoadedModel, hop_samples: int, batch_size: int, spans_per_call: int | None = None,
                 precision: str = "fp32") -> None:
        super().__init__(model, hop_samples, batch_size, spans_per_call, precision)
        if not self.network.fast_path:
            raise ValueError(f"model {model.info.model} has no fast path (its head pools over frequency and time jointly); use exact mode")
        cfg = model.info.frontend
        self.fe_hop = cfg.hop_samples
        self.half_fft = cfg.n_fft // 2
        self.stride = self.network.time_stride
        self.window_frames = cfg.frames(self.window)
        with torch.no_grad():  # trunk columns per window, e.g. 150 frames -> 9 for CNN10
            probe = torch.zeros(1, 1, self.window_frames, cfg.n_mels, device=self.device)
            self.window_columns = self.network.eval().trunk(probe).shape[2]
        self.margin = CONTEXT_COLUMNS * self.stride  # frames

    @property
    def group(self) -> int:
        return SPAN_WINDOWS

    def column(self, start_sample: int) -> int:
        """The trunk column where a window starting at this sample begins (rounded)."""
        return int(np.floor(start_sample / self.fe_hop / self.stride + 0.5))  # half up, not to even

    def frame_range(self, starts: np.ndarray) -> tuple[int, int]:
        """[first, stop) frames the trunk runs over: stride-aligned, with context."""
        first = max(0, self.column(int(starts[0])) * self.stride - self.margin)
        stop = (self.column(int(starts[-1])) + self.window_columns) * self.stride + self.margin
        return first, stop

    def needed_end(self, first: int, count: int) -> int:
        starts = np.array([first * self.hop, (first + count - 1) * self.hop])
        return (self.frame_range(starts)[1] - 1) * self.fe_hop + self.half_fft

    def keep_from(self, start: int) -> int:
        # the next span's left context reaches back before its first window
        return max(0, start - self.margin * self.fe_hop - self.half_fft - self.stride * self.fe_hop)

    def cut(self, starts: np.ndarray, buf: SampleBuffer) -> Job:
        first, stop = self.frame_range(starts)
        # frame f is centred on sample f*hop: STFT without centring over [first*hop - n_fft/2, ...)
        wave = buf.get(first * self.fe_hop - self.half_fft, (stop - 1) * self.fe_hop + self.half_fft)
        offsets = np.array([self.column(int(s)) - first // self.stride for s in starts], dtype=np.int64)
        return Job(np.asarray(starts, dtype=np.int64), wave, offsets)

    def score_group(self, jobs: list[Job]) -> torch.Tensor:
        """Spans of one length: one front-end and trunk call over all of them, then each window
        pools its ``window_columns`` columns, gathered from a strided (unfold) view in one step.
        Jobs of whole windows (a recording shorter than one window) are scored as in exact mode."""
        if jobs[0].offsets is None:
            return self.score_windows(jobs)
        wave = self.to_device([j.wave for j in jobs], stack=True)  # (spans, samples)
        span = torch.from_numpy(np.concatenate([np.full(len(j.starts), k) for k, j in enumerate(jobs)])).to(self.device)
        offsets = torch.from_numpy(np.concatenate([j.offsets for j in jobs])).to(self.device)
        head = self.network.head
        with autocast(self.device):
            mel = self.frontend(wave, center=False)  # (spans, 1, frames, mels)
            if self.cuda:
                mel = mel.contiguous(memory_format=torch.channels_last)
            columns = self.network.trunk(mel).mean(dim=3)  # (spans, channels, columns)
            views = columns.unfold(2, self.window_columns, 1)  # (spans, channels, positions, window_columns)
            pooled = head.pool_time(views[span, :, offsets])  # (windows, channels, window_columns) -> (windows, channels)
            logits, _ = head.from_pooled(pooled)
        return self.finish(logits)


def resolve_mode(model: LoadedModel, hop_samples: int, mode: str) -> str:
    """``auto``: fast when windows overlap (hop < window), where sharing convolutions pays
    (2.1-2.7x at hop 1 s, docs/benchmarks.md); exact otherwise, where it gains nothing."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        window = round(model.info.clip_seconds * model.info.sample_rate)
        return "fast" if hop_samples < window and model.network.fast_path else "exact"
    return mode


def make_scorer(model: LoadedModel, hop_samples: int, batch_size: int, mode: str,
                spans_per_call: int | None = None, precision: str = "fp32") -> StreamScorer:
    """The scorer for ``mode``; ``spans_per_call`` None picks 1 on the CPU, SPANS_PER_CALL_CUDA on a GPU;
    ``precision`` int8 runs the body in int8 (CPU only: quantize.py); auto lets int8_check.auto_precision choose."""
    # an explicit --mode fast on a network without a fast path is an error (FastScorer says so), not a silent fallback
    if resolve_mode(model, hop_samples, mode) == "fast":
        return FastScorer(model, hop_samples, batch_size, spans_per_call, precision)
    return ExactScorer(model, hop_samples, batch_size, spans_per_call, precision)


def _joined(parts: list[WindowScores], classes: int) -> WindowScores:
    if not parts:
        return WindowScores(np.zeros(0, dtype=np.int64), np.zeros((0, classes), dtype=np.float32))
    return WindowScores(np.concatenate([p.starts for p in parts]), np.concatenate([p.scores for p in parts]))


def score_stream(model: LoadedModel, blocks: Iterable[np.ndarray], hop_samples: int, batch_size: int = 32,
                 mode: str = "auto", spans_per_call: int | None = None, precision: str = "fp32") -> WindowScores:
    """All windows of a stream: (starts, scores), in order."""
    parts = list(make_scorer(model, hop_samples, batch_size, mode, spans_per_call, precision).run(blocks))
    return _joined(parts, len(model.info.classes))


class _Feeder(threading.Thread):
    """Pulls one stream's blocks (decoding and resampling happen in this thread) and cuts its jobs."""

    def __init__(self, index: int, source: Callable[[], Iterable[np.ndarray]], scorer: StreamScorer,
                 out: queue.Queue, stop: threading.Event) -> None:
        super().__init__(daemon=True)  # an interrupted scan must not wait for decoders
        self.index, self.source, self.scorer, self.out, self.stop = index, source, scorer, out, stop

    def _put(self, item: tuple) -> bool:
        return put_unless_stopped(self.out, item, self.stop)

    def run(self) -> None:
        try:
            for job in self.scorer.jobs(self.source()):
                if not self._put(("job", self.index, job)):
                    return
            self._put(("end", self.index, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(("error", self.index, e))


def score_streams(scorer: StreamScorer, sources: Sequence[Callable[[], Iterable[np.ndarray]]],
                  workers: int = 1) -> Iterator[tuple[int, WindowScores | BaseException]]:
    """Score several streams with one scorer, ``workers`` of them at a time.

    Why: one decoder cannot keep a GPU busy (decoding and resampling 48 kHz audio is far
    slower than CNN10's trunk there). Each of ``workers`` threads calls one source (a callable
    returning that stream's blocks, so the decoding runs in the thread) and cuts its jobs; this
    thread takes whatever jobs are waiting, from any stream, up to ``scorer.spans_per_call``, and
    scores them in as few network calls as their shapes allow. Scores do not depend on how
    jobs were grouped (up to float rounding). Yields ``(index, scores)`` in source order, or
    ``(index, exception)`` for a source whose blocks raised, after its partial scores are dropped.
    """
    classes = len(scorer.model.info.classes)
    stop = threading.Event()
    out: queue.Queue = queue.Queue(maxsize=max(4, 2 * scorer.spans_per_call, 2 * workers))
    parts: dict[int, list[WindowScores]] = {}
    finished: dict[int, WindowScores | BaseException] = {}
    started = active = done = 0

    def start_more() -> None:
        nonlocal started, active
        while active < max(1, workers) and started < len(sources):
            parts[started] = []
            _Feeder(started, sources[started], scorer, out, stop).start()
            started += 1
            active += 1

    try:
        start_more()
        while done < len(sources):
            while done in finished:
                yield done, finished.pop(done)
                done += 1
            if done == len(sources):
                break
            items = [out.get()]
            while sum(kind == "job" for kind, _, _ in items) < scorer.spans_per_call:
                try:
                    items.append(out.get_nowait())
                except queue.Empty:
                    break
            jobs = [(i, job) for kind, i, job in items if kind == "job"]
            if jobs:  # a stream's "end" always comes after its jobs, so these are scored first
                for (i, _), scores in zip(jobs, scorer.score_jobs([job for _, job in jobs])):
                    parts[i].append(scores)
            for kind, i, payload in items:
                if kind == "end":
                    finished[i] = _joined(parts.pop(i), classes)
                elif kind == "error":
                    parts.pop(i)
                    finished[i] = payload
                if kind != "job":
                    active -= 1
                    start_more()
    finally:
        stop.set()
