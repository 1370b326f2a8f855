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
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .checkpoint import LoadedModel
from .devices import autocast
from .frontend import LogMel
from .predict import activate
from .windows import window_starts

MODES = ("auto", "fast", "exact")
SPAN_WINDOWS = 32  # windows per trunk call in fast mode; fixed so results do not depend on --batch-size
CONTEXT_COLUMNS = 4  # trunk columns of audio context on each side of a span (64 frames for CNN10)


class SampleBuffer:
    """The recent part of a stream, addressed by absolute sample index.

    Samples before 0 are a reflection of the start (as ``center=True`` STFT padding does);
    samples past the end of a finished stream are zeros (a short last window is padded).
    """

    def __init__(self) -> None:
        self.data = np.zeros(0, dtype=np.float32)
        self.offset = 0  # absolute index of data[0]
        self.head = np.zeros(0, dtype=np.float32)  # first samples, kept for the reflection
        self.finished = False

    @property
    def end(self) -> int:
        return self.offset + len(self.data)

    def append(self, block: np.ndarray) -> None:
        self.data = np.concatenate([self.data, block.astype(np.float32, copy=False)])
        if len(self.head) < 1025 and self.offset == 0:
            self.head = self.data[:1025].copy()

    def get(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop); start may be negative (reflected), stop past the end (zeros)."""
        out = np.zeros(stop - start, dtype=np.float32)
        if start < 0:
            n = min(-start, len(self.head) - 1)
            out[-start - n : -start] = self.head[1 : n + 1][::-1]
        a, b = max(start, self.offset), min(stop, self.end)
        if b > a:
            out[a - start : b - start] = self.data[a - self.offset : b - self.offset]
        return out

    def drop_before(self, index: int) -> None:
        cut = min(max(0, index - self.offset), len(self.data))
        if cut:
            self.data = self.data[cut:]
            self.offset += cut


@dataclass
class WindowScores:
    starts: np.ndarray  # (n,) int64 start sample of each window
    scores: np.ndarray  # (n, classes) float32


class StreamScorer:
    """Shared bookkeeping: which windows are ready, and the final partial windows."""

    def __init__(self, model: LoadedModel, hop_samples: int, batch_size: int) -> None:
        info = model.info
        self.model = model
        self.network = model.network.eval()
        self.device = next(self.network.parameters()).device
        self.frontend = LogMel(info.frontend).to(self.device)
        self.window = round(info.clip_seconds * info.sample_rate)
        self.hop = hop_samples
        self.batch_size = batch_size
        self.activation = info.activation

    def run(self, blocks: Iterable[np.ndarray]) -> Iterator[WindowScores]:
        """Score every window of the stream; yields results as they are ready."""
        buf = SampleBuffer()
        next_index = 0  # index of the next window to score
        for block in blocks:
            buf.append(block)
            while True:
                ready = self.ready_windows(next_index, buf)
                if ready == 0:
                    break
                yield self.score(np.arange(next_index, next_index + ready) * self.hop, buf)
                next_index += ready
                buf.drop_before(self.keep_from(next_index * self.hop))
        buf.finished = True
        starts = window_starts(buf.end, self.window, self.hop)
        rest = starts[starts >= next_index * self.hop]
        for i in range(0, len(rest), self.group):
            yield self.score(rest[i : i + self.group], buf)

    @property
    def group(self) -> int:
        return self.batch_size

    def ready_windows(self, next_index: int, buf: SampleBuffer) -> int:
        """How many windows from ``next_index`` can be scored with the samples buffered."""
        n = 0
        while n < self.group and self.needed_end(next_index, n + 1) <= buf.end:
            n += 1
        return n if n == self.group else 0

    def needed_end(self, first: int, count: int) -> int:
        return (first + count - 1) * self.hop + self.window

    def keep_from(self, start: int) -> int:
        return start

    def score(self, starts: np.ndarray, buf: SampleBuffer) -> WindowScores:
        raise NotImplementedError


class ExactScorer(StreamScorer):
    """Each window through front end and network on its own, in batches of ``batch_size``."""

    @torch.no_grad()
    def score(self, starts: np.ndarray, buf: SampleBuffer) -> WindowScores:
        # windows never start before 0, so get() only zero-pads a final short window
        batch = np.stack([buf.get(int(s), int(s) + self.window) for s in starts])
        wave = torch.from_numpy(batch).to(self.device)
        with autocast(self.device):
            logits, _ = self.network(self.frontend(wave))
        scores = torch.nan_to_num(activate(logits.float(), self.activation), nan=0.0)
        return WindowScores(np.asarray(starts, dtype=np.int64), scores.cpu().numpy())


class FastScorer(StreamScorer):
    """Trunk once over a span of ``SPAN_WINDOWS`` windows plus context; pool per window."""

    def __init__(self, model: LoadedModel, hop_samples: int, batch_size: int) -> None:
        super().__init__(model, hop_samples, batch_size)
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

    @torch.no_grad()
    def score(self, starts: np.ndarray, buf: SampleBuffer) -> WindowScores:
        first, stop = self.frame_range(starts)
        # frame f is centred on sample f*hop: STFT without centring over [first*hop - n_fft/2, ...)
        wave = buf.get(first * self.fe_hop - self.half_fft, (stop - 1) * self.fe_hop + self.half_fft)
        x = torch.from_numpy(wave).to(self.device)[None]
        head = self.network.head
        with autocast(self.device):
            mel = self.frontend(x, center=False)  # (1, 1, frames, mels)
            columns = self.network.trunk(mel).mean(dim=3)[0]  # (channels, columns)
            offsets = [self.column(int(s)) - first // self.stride for s in starts]
            pooled = torch.stack([head.pool_time(columns[None, :, o : o + self.window_columns])[0] for o in offsets])
            logits, _ = head.from_pooled(pooled)
        scores = torch.nan_to_num(activate(logits.float(), self.activation), nan=0.0)
        return WindowScores(np.asarray(starts, dtype=np.int64), scores.cpu().numpy())


def resolve_mode(model: LoadedModel, hop_samples: int, mode: str) -> str:
    """``auto``: fast when windows overlap (hop < window), where sharing convolutions pays
    (2.1-2.7x at hop 1 s, docs/benchmarks.md); exact otherwise, where it gains nothing."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        window = round(model.info.clip_seconds * model.info.sample_rate)
        return "fast" if hop_samples < window and model.network.fast_path else "exact"
    return mode


def make_scorer(model: LoadedModel, hop_samples: int, batch_size: int, mode: str) -> StreamScorer:
    # an explicit --mode fast on a network without a fast path is an error (FastScorer says so), not a silent fallback
    if resolve_mode(model, hop_samples, mode) == "fast":
        return FastScorer(model, hop_samples, batch_size)
    return ExactScorer(model, hop_samples, batch_size)


def score_stream(model: LoadedModel, blocks: Iterable[np.ndarray], hop_samples: int, batch_size: int = 32,
                 mode: str = "auto") -> WindowScores:
    """All windows of a stream: (starts, scores), in order."""
    parts = list(make_scorer(model, hop_samples, batch_size, mode).run(blocks))
    if not parts:
        return WindowScores(np.zeros(0, dtype=np.int64), np.zeros((0, len(model.info.classes)), dtype=np.float32))
    return WindowScores(np.concatenate([p.starts for p in parts]), np.concatenate([p.scores for p in parts]))
