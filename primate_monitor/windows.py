"""The window schedule: where each analysis window starts, in samples.

Pure integer arithmetic, so the schedule is the same for every caller and
exactly reproducible; the scan converts starts to seconds only for output.
"""

from __future__ import annotations

import math

import numpy as np


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int (samples), got {value!r}")
    return int(value)


def window_starts(n_samples: int, window: int, hop: int) -> np.ndarray:
    """Start offsets (int64 samples) of the windows covering ``n_samples`` samples.

    Rule: starts are 0, hop, 2*hop, ... while start + window <= n_samples.
    If the last full window ends before n_samples and last start + hop <
    n_samples, one more start (last start + hop) is added: a partial window
    that the caller zero-pads, so the tail is not dropped. Hence:

    - n_samples == 0 gives no windows; 0 < n_samples <= window gives [0];
    - with hop <= window every sample is covered;
    - with hop > window the gaps between windows are not covered, and the
      final partial window exists only if it starts before n_samples.
    """
    window = _positive_int("window", window)
    hop = _positive_int("hop", hop)
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 0:
        raise ValueError(f"n_samples must be an int >= 0, got {n_samples!r}")
    n_samples = int(n_samples)
    if n_samples == 0:
        return np.zeros(0, dtype=np.int64)
    if n_samples <= window:
        return np.zeros(1, dtype=np.int64)
    n_full = (n_samples - window) // hop + 1
    starts = np.arange(n_full, dtype=np.int64) * hop
    last = int(starts[-1])
    if last + window < n_samples and last + hop < n_samples:
        starts = np.append(starts, np.int64(last + hop))
    return starts


def hop_samples(hop_seconds: float, sample_rate: int) -> int:
    """A hop in whole samples at ``sample_rate``; ValueError unless it is a finite number of
    seconds of at least one sample. One check for scan, evaluate and embed: a hop that rounds
    to 0 samples would never advance, and inf or NaN cannot be rounded."""
    if isinstance(hop_seconds, bool) or not isinstance(hop_seconds, (int, float, np.integer, np.floating)) \
            or not math.isfinite(hop_seconds) or hop_seconds * sample_rate < 1:
        raise ValueError(f"--hop {hop_seconds!r} s: must be a finite number of seconds of at least one sample "
                         f"(1/{sample_rate} s at the model's {sample_rate} Hz)")
    return seconds_to_samples(hop_seconds, sample_rate)


def seconds_to_samples(seconds: float, sample_rate: int) -> int:
    """``seconds`` at ``sample_rate`` Hz as a whole number of samples, rounding half up.

    Half-up (not Python's half-to-even) so that e.g. 0.5 s at 1 Hz is 1 sample,
    the same on every platform.
    """
    sample_rate = _positive_int("sample_rate", sample_rate)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds must be finite and >= 0, got {seconds!r}")
    return int(math.floor(seconds * sample_rate + 0.5))
