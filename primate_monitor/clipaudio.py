"""Decoded, resampled audio for labelled clips, cached on disk as plain ``.npy`` arrays.

Decoding and resampling dominate a data pipeline that reads each clip thousands of
times, so each clip is decoded once per (file version, sample rate) and kept in memory;
the on-disk cache keeps it across runs (``--resume``, evaluate after train).

The cache holds nothing but float32 arrays read with ``allow_pickle=False``: a run folder
is data a user may have copied from anywhere, and a pickle in it (as the old joblib cache
was) would run code on ``train --resume``. A cache file that is not a plain 1-D float32
array is ignored and decoded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .audio import AudioReadError, load_audio
from .config import PADDINGS
from .data import Clip, DataError
from .fsutil import atomic_write

if TYPE_CHECKING:
    from .checkpoint import LoadedModel

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # part of every key: bump when decoding changes what a clip's samples are
CACHE_SUBDIR = "clips-v2"  # under cache_dir; the old joblib layout (cache_dir/joblib) is never read


def cache_key(clip: Clip, sample_rate: int) -> str:
    """SHA-256 of what determines a clip's decoded samples: the file (resolved path, size,
    mtime in ns), the stretch and the sample rate. An edited file gets a new key, so a stale
    entry is never used; two runs over the same files share entries."""
    stat = clip.path.stat()
    ident = {"v": CACHE_VERSION, "path": str(clip.path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "sample_rate": sample_rate, "start_s": clip.start_s, "end_s": clip.end_s}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / CACHE_SUBDIR / key[:2] / f"{key}.npy"


def _read_cached(path: Path) -> np.ndarray | None:
    """The cached samples, or None when the entry is missing or not a plain float32 vector."""
    try:
        audio = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as e:  # truncated, foreign or pickled: decode again
        logger.warning("ignoring unusable cache entry %s (%s)", path, e)
        return None
    if not isinstance(audio, np.ndarray) or audio.dtype != np.float32 or audio.ndim != 1:
        logger.warning("ignoring cache entry %s: not a float32 vector", path)
        return None
    return audio


def _write_cached(path: Path, audio: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(audio, dtype=np.float32), allow_pickle=False)
    except OSError as e:  # a cache that cannot be written only costs time
        logger.warning("cannot write cache entry %s: %s", path, e)


def _decode_one(clip: Clip, sample_rate: int, cache_dir: Path | None) -> np.ndarray | str:
    """The clip's samples, or an error message (so a worker never dies on a bad file)."""
    try:
        entry = _cache_file(cache_dir, cache_key(clip, sample_rate)) if cache_dir is not None else None
        audio = _read_cached(entry) if entry is not None else None
        if audio is None:
            audio = np.asarray(load_audio(clip.path, sample_rate, start_s=clip.start_s, end_s=clip.end_s), dtype=np.float32)
            if entry is not None and audio.size:
                _write_cached(entry, audio)
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
    cache = Path(cache_dir) if cache_dir is not None else None
    if workers > 1 and len(clips) > 1:
        # spawn, not fork: forking a process that already runs torch threads can deadlock
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            chunk = max(1, len(clips) // (4 * workers))
            results = list(pool.map(_decode_one, clips, [sample_rate] * len(clips), [cache] * len(clips), chunksize=chunk))
    else:
        results = [_decode_one(c, sample_rate, cache) for c in clips]
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


# How a clip shorter than the window is presented to the network (config key ``padding``).
# zeros_end is the paper's; the others exist because zero padding stalls learning on short
# clips (docs/short_clips.md): most frames sit at the log floor, bn0's statistics are
# those of the padding, and batch-wide SpecAugment stripes fall on every call at once.
PAPER_PADDING = "zeros_end"  # what a checkpoint without a ``padding`` key was trained with


def model_padding(model: "LoadedModel") -> str:
    """How the model's training padded short clips; evaluation, embedding and scanning present
    them the same way. A checkpoint from before the ``padding`` key was trained with the paper's zeros."""
    return str(model.info.config.get("padding", PAPER_PADDING))


def pad_train(audio: np.ndarray, n_samples: int, padding: str, rng: np.random.Generator) -> np.ndarray:
    """One training window of ``n_samples``: a random crop of a long clip, or a short clip
    padded by ``padding`` with random placement, so the network sees the call anywhere.

    - ``zeros_end``: the clip at the start, zeros after (the paper);
    - ``random_offset``: the clip at a random offset, zeros around;
    - ``repeat``: the clip tiled over the window from a random phase.

    Padding with real background was measured too and dropped: evaluation cannot present a
    clip the same way (no background travels with a checkpoint), see docs/short_clips.md.
    """
    n = len(audio)
    if n >= n_samples:
        offset = int(rng.integers(0, n - n_samples + 1))
        return audio[offset : offset + n_samples]
    if padding == "zeros_end":
        return np.pad(audio, (0, n_samples - n))
    if padding == "repeat":
        return _tile(audio, n_samples, int(rng.integers(0, n)))
    if padding != "random_offset":
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
    offset = int(rng.integers(0, n_samples - n + 1))
    out = np.zeros(n_samples, dtype=audio.dtype)
    out[offset : offset + n] = audio
    return out


def pad_eval(audio: np.ndarray, n_samples: int, padding: str) -> np.ndarray:
    """The one deterministic window evaluation, validation and prediction use for a clip of
    at most ``n_samples``: the training rule of ``padding`` with its random choice fixed
    (zeros_end: at the start; repeat: tiled from phase 0; random_offset: centred in zeros)."""
    n = len(audio)
    if n >= n_samples:
        return audio[:n_samples]
    if padding == "zeros_end":
        return np.pad(audio, (0, n_samples - n))
    if padding == "repeat":
        return _tile(audio, n_samples, 0)
    if padding == "random_offset":
        before = (n_samples - n) // 2
        return np.pad(audio, (before, n_samples - n - before))
    raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")


def _tile(audio: np.ndarray, n_samples: int, phase: int) -> np.ndarray:
    """``audio`` repeated end to end, starting ``phase`` samples into it, cut to n_samples."""
    reps = -(-(n_samples + phase) // len(audio))
    return np.tile(audio, reps)[phase : phase + n_samples]


def eval_windows(audio: np.ndarray, n_samples: int, hop_samples: int, padding: str = PAPER_PADDING) -> np.ndarray:
    """(n_windows, n_samples) windows over a clip for evaluation, cut by the scan's own schedule
    (``windows.window_starts``: every ``hop``, and a last, zero-padded window over the tail), so
    that evaluate and scan score a stretch of audio the same way. A clip no longer than one
    window is presented by ``pad_eval`` (the model's padding rule), as the scan presents a
    recording that short."""
    from .windows import window_starts

    if len(audio) <= n_samples:
        return pad_eval(audio, n_samples, padding)[None, :]
    starts = window_starts(len(audio), n_samples, hop_samples)
    out = np.zeros((len(starts), n_samples), dtype=audio.dtype)
    for row, s in zip(out, starts):
        piece = audio[s : s + n_samples]
        row[: len(piece)] = piece
    return out
