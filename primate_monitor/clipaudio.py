"""Decoded, resampled audio for labelled clips, cached on disk with joblib.

Decoding and resampling dominate a data pipeline that reads each clip thousands of
times, so each clip is decoded once per (file version, sample rate) and kept in memory;
the joblib cache keeps it across runs (``--resume``, evaluate after train).
"""

from __future__ import annotations

import logging
from pathlib import Path

import joblib
import numpy as np

from .audio import AudioReadError, load_audio
from .data import Clip, DataError

logger = logging.getLogger(__name__)


def _decode(path: str, mtime_ns: int, size: int, sample_rate: int, start_s: float, end_s: float | None) -> np.ndarray:
    """Cache key includes mtime and size so an edited file is decoded again."""
    del mtime_ns, size
    return load_audio(path, sample_rate, start_s=start_s, end_s=end_s)


def _decode_one(clip: Clip, sample_rate: int, memory: joblib.Memory | None) -> np.ndarray | str:
    """The clip's samples, or an error message (so a worker never dies on a bad file)."""
    try:
        stat = clip.path.stat()
        fn = memory.cache(_decode) if memory is not None else _decode
        audio = fn(str(clip.path), stat.st_mtime_ns, stat.st_size, sample_rate, clip.start_s, clip.end_s)
    except (AudioReadError, OSError) as e:
        return str(e) if isinstance(e, AudioReadError) else f"{clip.path}: {e}"
    if audio.size == 0:
        return f"{clip.path}: no samples in {clip.start_s:.3f}-{clip.end_s} s"
    return audio


def decode_clips(
    clips: list[Clip], sample_rate: int, cache_dir: str | Path | None, workers: int = 1, skip_bad: bool = False
) -> tuple[list[Clip], list[np.ndarray], list[tuple[Clip, str]]]:
    """Decode every clip to float32 mono at ``sample_rate``.

    Returns the clips that decoded, their audio, and (clip, reason) for those that did not.
    Without ``skip_bad`` the first unreadable clip raises DataError naming it.
    """
    memory = joblib.Memory(str(cache_dir), verbose=0) if cache_dir is not None else None
    results = joblib.Parallel(n_jobs=workers, prefer="processes" if workers > 1 else None)(
        joblib.delayed(_decode_one)(c, sample_rate, memory) for c in clips
    )
    good, audio, bad = [], [], []
    for clip, result in zip(clips, results):
        if isinstance(result, str):
            if not skip_bad:
                raise DataError(f"unreadable clip: {result} (use --skip-bad to skip it)")
            logger.warning("skipping unreadable clip: %s", result)
            bad.append((clip, result))
        else:
            good.append(clip)
            audio.append(result)
    return good, audio, bad


def fit_length(audio: np.ndarray, n_samples: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Zero-pad a short clip at the end (as the paper does); crop a long one.

    With ``rng`` the crop offset is random (training); without, it is the start.
    """
    if len(audio) < n_samples:
        return np.pad(audio, (0, n_samples - len(audio)))
    offset = int(rng.integers(0, len(audio) - n_samples + 1)) if rng is not None else 0
    return audio[offset : offset + n_samples]


def eval_windows(audio: np.ndarray, n_samples: int, hop_samples: int) -> np.ndarray:
    """(n_windows, n_samples) windows over a clip for evaluation: one padded window for a
    short clip; for a long one every ``hop`` plus a final window flush with the end, so that
    the clip score can be the maximum over windows covering all of it."""
    if len(audio) <= n_samples:
        return fit_length(audio, n_samples)[None, :]
    starts = list(range(0, len(audio) - n_samples + 1, hop_samples))
    if starts[-1] != len(audio) - n_samples:
        starts.append(len(audio) - n_samples)
    return np.stack([audio[s : s + n_samples] for s in starts])
