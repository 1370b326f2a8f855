"""Find held-out audio that also appears in training audio, by normalised cross-correlation.

Why: a "held-out" field recording that shares samples with a training or checkpoint-choice
file reports figures the model has, in part, already seen (issue 8: PUMA_2014-02-07_074500
holds TestSample_003 from 49.72 s on). File names cannot be trusted to tell: the same audio
travels under different names and sample rates.

How: both files are resampled to 8 kHz mono. Each held-out file is cut into 1 s chunks
(every 0.5 s); each chunk is correlated with the whole training file by FFT
(scipy.signal.correlate) and normalised by the energy of the chunk and of every training
stretch of its length (Pearson correlation at every lag). Chunks whose peak NCC reaches
--min-ncc (0.95) at lags that agree (same offset between the files, within 2 ms) are merged
into spans; spans of at least --min-seconds (1 s) are reported.

A second, name-only check flags pairs whose names hold the same original recording stamp
(``YYYYMMDD_HHMMSS``): excerpts of one recording that share no samples still share its site,
time and sound scene, so a split by original recording must keep them together.

    python scripts/check_leaks.py --held-out A.wav B.wav --train C.wav D.wav
    python scripts/check_leaks.py --held-out-list held.txt --train-list train.txt

Exit status 1 when shared audio or a shared original recording is found, 0 otherwise.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import correlate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from primate_monitor.audio import load_audio  # noqa: E402

RATE = 8000
STAMP = re.compile(r"(\d{8}_\d{6})")


@dataclass
class Span:
    held_out: str
    train: str
    held_start_s: float
    held_end_s: float
    train_start_s: float
    peak_ncc: float

    @property
    def seconds(self) -> float:
        return self.held_end_s - self.held_start_s


def chunk_ncc(chunk: np.ndarray, target: np.ndarray, cum_sq: np.ndarray, cum: np.ndarray) -> tuple[int, float]:
    """(lag, Pearson correlation) of the best match of ``chunk`` anywhere in ``target``."""
    n = chunk.size
    a = chunk - chunk.mean()
    a_norm = np.sqrt(np.sum(a * a))
    if a_norm < 1e-8 or target.size < n:
        return -1, 0.0
    num = correlate(target, a, mode="valid", method="fft")  # sum a * b[lag:lag+n] (a has zero mean)
    s = cum[n:] - cum[:-n]
    sq = cum_sq[n:] - cum_sq[:-n]
    b_norm = np.sqrt(np.maximum(sq - s * s / n, 0.0))
    ncc = num / np.maximum(a_norm * b_norm, 1e-12)
    ncc[b_norm < 1e-6 * np.sqrt(n)] = 0.0  # silent stretches of the target match nothing
    lag = int(np.argmax(ncc))
    return lag, float(ncc[lag])


@functools.lru_cache(maxsize=64)
def _audio(path: Path) -> np.ndarray:
    """8 kHz mono float64, cached: every held-out file meets every training file."""
    return load_audio(path, RATE).astype(np.float64)


@functools.lru_cache(maxsize=256)
def _with_sums(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = _audio(path)
    return y, np.concatenate(([0.0], np.cumsum(y))), np.concatenate(([0.0], np.cumsum(y * y)))


def shared_spans(held: Path, train: Path, min_ncc: float = 0.95, min_seconds: float = 1.0,
                 chunk_s: float = 1.0, hop_s: float = 0.5) -> list[Span]:
    """Stretches of ``held`` that reappear in ``train`` (NCC >= min_ncc over >= min_seconds)."""
    x = _audio(held)
    y, cum, cum_sq = _with_sums(train)
    n, hop = int(chunk_s * RATE), int(hop_s * RATE)
    hits = []  # (chunk start, offset train - held, ncc)
    for start in range(0, max(0, x.size - n) + 1, hop):
        lag, value = chunk_ncc(x[start:start + n], y, cum_sq, cum)
        if value >= min_ncc:
            hits.append((start, lag - start, value))
    spans: list[Span] = []
    tolerance = int(0.002 * RATE)
    run: list[tuple[int, int, float]] = []  # consecutive chunks at one offset
    for h in [*hits, None]:
        if run and (h is None or h[0] - run[-1][0] > hop or abs(h[1] - run[-1][1]) > tolerance):
            begin, end = run[0][0] / RATE, (run[-1][0] + n) / RATE
            if end - begin >= min_seconds:
                spans.append(Span(str(held), str(train), begin, end, (run[0][0] + run[0][1]) / RATE,
                                  max(r[2] for r in run)))
            run = []
        if h is not None:
            run.append(h)
    return spans


def same_recording_pairs(held: list[Path], train: list[Path]) -> list[tuple[str, Path, Path]]:
    """(stamp, held, train) for names holding the same YYYYMMDD_HHMMSS recording stamp."""
    pairs = []
    for h in held:
        for t in train:
            a, b = STAMP.search(h.name), STAMP.search(t.name)
            if a and b and a.group(1) == b.group(1) and h.resolve() != t.resolve():
                pairs.append((a.group(1), h, t))
    return pairs


def _paths(files: list[str], lists: list[str]) -> list[Path]:
    out = [Path(f) for f in files]
    for name in lists:
        out += [Path(line.strip()) for line in Path(name).read_text().splitlines() if line.strip()]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held-out", nargs="*", default=[], help="held-out audio files")
    parser.add_argument("--held-out-list", action="append", default=[], help="text file, one held-out path per line")
    parser.add_argument("--train", nargs="*", default=[], help="training audio files")
    parser.add_argument("--train-list", action="append", default=[], help="text file, one training path per line")
    parser.add_argument("--min-ncc", type=float, default=0.95)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--hop", type=float, default=0.5,
                        help="s between held-out chunk starts; a larger hop screens faster but only finds "
                             "shared spans of at least hop + 1 s")
    args = parser.parse_args(argv)
    held, train = _paths(args.held_out, args.held_out_list), _paths(args.train, args.train_list)
    if not held or not train:
        parser.error("give held-out and training files")
    found = 0
    for h in held:
        for t in train:
            for span in shared_spans(h, t, args.min_ncc, args.min_seconds, hop_s=args.hop):
                found += 1
                print(f"SHARED AUDIO {span.seconds:.2f} s (peak NCC {span.peak_ncc:.4f}): held-out {h.name} "
                      f"{span.held_start_s:.2f}-{span.held_end_s:.2f} s = training {t.name} "
                      f"{span.train_start_s:.2f}-{span.train_start_s + span.seconds:.2f} s")
    same = same_recording_pairs(held, train)
    for stamp, h, t in same:
        print(f"SAME ORIGINAL RECORDING {stamp}: held-out {h.name} and training {t.name} (name stamp)")
    print(f"{len(held)} held-out x {len(train)} training file(s): {found} shared span(s) of >= {args.min_seconds:g} s "
          f"at NCC >= {args.min_ncc}")
    return 1 if found or same else 0


if __name__ == "__main__":
    sys.exit(main())
