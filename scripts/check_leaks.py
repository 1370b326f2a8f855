"""Find held-out audio that also appears in training audio, by normalised cross-correlation.

Why: a "held-out" field recording that shares samples with a training or checkpoint-choice
file reports figures the model has, in part, already seen (issue 8: PUMA_2014-02-07_074500
holds TestSample_003 from 49.72 s on). File names cannot be trusted to tell: the same audio
travels under different names and sample rates.

What: both files are resampled to 8 kHz mono. Each held-out file is cut into 1 s chunks
(every 0.5 s); each chunk is compared with every stretch of its length in the training file
by Pearson correlation (NCC) at every lag, and its best lag kept. Chunks whose peak NCC
reaches --min-ncc (0.95) at lags that agree (same offset between the files, within 2 ms) are
merged into spans; spans of at least --min-seconds (1 s) are reported.

How, fast: all training files are put back to back (each centred and scaled to unit RMS, which
changes no NCC) and cut once into overlapping blocks of BLOCK samples (overlap-save: blocks
overlap by one chunk less one sample, so every lag lies wholly inside one block); each block's
rfft is kept. The chunks of one held-out file are rfft'd once, zero-padded to BLOCK. The
correlation of a batch of chunks with a block is then one multiply and one batched irfft, in
float32; lags are normalised by the running-sum window norms (float64 cumsums, as
``chunk_ncc``) and the best lag per chunk and training file kept (lags that straddle two files
are never looked at). A block whose float32 rounding could move some lag's NCC by more than
NCC_TOLERANCE (a very quiet stretch next to loud ones) is done in float64. The NCC at each
chosen lag is then recomputed exactly in float64. ``chunk_ncc`` is the direct reference
(one FFT of the whole training file per chunk); tests/test_check_leaks.py holds the two equal.

A second, name-only check flags pairs whose names hold the same original recording stamp
(``YYYYMMDD_HHMMSS``): excerpts of one recording that share no samples still share its site,
time and sound scene, so a split by original recording must keep them together.

    python scripts/check_leaks.py --held-out A.wav B.wav --train C.wav D.wav
    python scripts/check_leaks.py --held-out-list held.txt --train-list train.txt

Exit status 1 when shared audio or a shared original recording is found, 0 otherwise
(2 on bad arguments or unreadable audio).
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
from scipy.signal import correlate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from primate_monitor.audio import AudioReadError, load_audio  # noqa: E402

log = logging.getLogger("check_leaks")

RATE = 8000
STAMP = re.compile(r"(\d{8}_\d{6})")
BLOCK = 65536  # overlap-save block (samples at RATE); 2**16 keeps one irfft row in cache
CHUNK_BATCH = 256  # chunks correlated together: about 3 x 64 MB of buffers at BLOCK
# |float32 FFT correlation - exact| <= FLOAT32_ERROR * |chunk| * |block| (measured worst case 7.3e-9
# over white, random-walk-modulated and 80 dB-step signals at BLOCK; 14x margin).
FLOAT32_ERROR = 1e-7
NCC_TOLERANCE = 2e-4  # a block whose float32 bound on some lag's NCC exceeds this is done in float64
SILENT_CHUNK = 1e-8  # chunk norm below which a chunk matches nothing (as chunk_ncc)
SILENT_WINDOW = 1e-6  # training window norm / sqrt(n) below which it matches nothing (as chunk_ncc)


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
    """(lag, Pearson correlation) of the best match of ``chunk`` anywhere in ``target``.

    The direct reference: one FFT of the whole target per chunk. ``best_matches`` gives the
    same answer much faster and is tested against this.
    """
    n = chunk.size
    a = chunk - chunk.mean()
    a_norm = np.sqrt(np.sum(a * a))
    if a_norm < SILENT_CHUNK or target.size < n:
        return -1, 0.0
    num = correlate(target, a, mode="valid", method="fft")  # sum a * b[lag:lag+n] (a has zero mean)
    s = cum[n:] - cum[:-n]
    sq = cum_sq[n:] - cum_sq[:-n]
    b_norm = np.sqrt(np.maximum(sq - s * s / n, 0.0))
    ncc = num / np.maximum(a_norm * b_norm, 1e-12)
    ncc[b_norm < SILENT_WINDOW * np.sqrt(n)] = 0.0  # silent stretches of the target match nothing
    lag = int(np.argmax(ncc))
    return lag, float(ncc[lag])


def _sums(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 signal with its running sums and running sums of squares (leading 0)."""
    y = np.asarray(y, dtype=np.float64)
    return y, np.concatenate(([0.0], np.cumsum(y))), np.concatenate(([0.0], np.cumsum(y * y)))


@dataclass
class TrainBank:
    """All training audio, back to back, with the block spectra that every held-out chunk meets.

    Built once per run: the training side of every correlation is transformed once, not once
    per held-out chunk. File j holds signal[offsets[j]:offsets[j] + lengths[j]], centred and
    scaled by scales[j] (NCC does not change); inv_norm[g] is 1 / (norm of the window at global
    lag g), 0 where the window is silent or crosses into the next file.
    """

    names: list[str]
    n: int
    block: int
    signal: np.ndarray  # float32, padded by `block` zeros
    inv_norm: np.ndarray  # float32, one per global lag, padded like signal
    offsets: np.ndarray
    lengths: np.ndarray
    scales: np.ndarray
    spectra: np.ndarray  # (blocks, block // 2 + 1) complex64; rows of exact blocks unused
    exact: np.ndarray  # (blocks,) bool: do this block in float64
    empty: np.ndarray  # (blocks,) bool: no lag in this block has a non-silent window
    segments: list[list[tuple[int, int, int]]]  # per block: (file, first global lag, end lag)

    @property
    def step(self) -> int:
        """New lags per block."""
        return self.block - self.n + 1

    @classmethod
    def build(cls, signals: Sequence[np.ndarray], names: Sequence[str], n: int = RATE,
              block: int = BLOCK, workers: int = 1) -> TrainBank:
        """Bank of ``signals`` (mono, RATE) for chunks of ``n`` samples."""
        if block < 2 * n:
            raise ValueError(f"block {block} must be at least twice the chunk length {n}")
        lengths = np.array([s.size for s in signals], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        total = int(lengths.sum())
        signal = np.zeros(total + block, np.float32)
        inv_norm = np.zeros(total + block, np.float32)
        scales = np.ones(len(signals))
        for j, (raw, off) in enumerate(zip(signals, offsets)):
            y, cum, cum_sq = _sums(raw)
            if y.size == 0:
                continue
            centred = y - y.mean()
            rms = float(np.sqrt(np.mean(centred * centred)))
            scales[j] = 1.0 / rms if rms > 0 else 1.0
            signal[off:off + y.size] = centred * scales[j]
            if y.size >= n:  # the window norms exactly as chunk_ncc computes them
                s, sq = cum[n:] - cum[:-n], cum_sq[n:] - cum_sq[:-n]
                b_norm = np.sqrt(np.maximum(sq - s * s / n, 0.0))
                live = b_norm >= SILENT_WINDOW * np.sqrt(n)
                inv_norm[off:off + b_norm.size][live] = 1.0 / (b_norm[live] * scales[j])
        step = block - n + 1
        blocks = -(-max(total - n + 1, 0) // step)
        spectra = np.zeros((blocks, block // 2 + 1), np.complex64)
        exact, empty = np.zeros(blocks, bool), np.zeros(blocks, bool)
        segments: list[list[tuple[int, int, int]]] = []
        ends = offsets + lengths - n + 1  # end (exclusive) of each file's lags
        for k in range(blocks):
            g = k * step
            piece = signal[g:g + block]
            worst_inv = float(inv_norm[g:g + step].max())
            empty[k] = worst_inv == 0.0
            exact[k] = FLOAT32_ERROR * float(np.linalg.norm(piece.astype(np.float64))) * worst_inv > NCC_TOLERANCE
            if not (empty[k] or exact[k]):
                spectra[k] = scipy.fft.rfft(piece, workers=workers)
            files = np.nonzero((offsets < g + step) & (ends > g) & (lengths >= n))[0]
            segments.append([(int(j), max(g, int(offsets[j])), min(g + step, int(ends[j]))) for j in files])
        log.info("training bank: %d file(s), %.1f min, %d block(s) of %d, %d in float64, %d silent",
                 len(signals), total / RATE / 60, blocks, block, int(exact.sum()), int(empty.sum()))
        return cls(list(names), n, block, signal, inv_norm, offsets, lengths, scales, spectra, exact, empty,
                   segments)

    def original(self, j: int) -> np.ndarray:
        """File j as chunk_ncc would see it (centred, original scale), float64."""
        off = self.offsets[j]
        return self.signal[off:off + self.lengths[j]].astype(np.float64) / self.scales[j]


def chunk_starts(size: int, n: int, hop: int) -> list[int]:
    """Start of every held-out chunk (one chunk, the whole file, when it is shorter than n)."""
    return list(range(0, max(0, size - n) + 1, hop)) if size > 0 else []


def best_matches(x: np.ndarray, bank: TrainBank, hop: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per chunk of ``x`` (rows, starts from chunk_starts) and training file (columns): best lag
    and its NCC, as chunk_ncc would give them (lag -1 and NCC 0 for a silent chunk or a training
    file shorter than a chunk).

    Why one call per held-out file: its chunk spectra are made once and meet every block once.
    """
    n, block, step = bank.n, bank.block, bank.step
    x = np.asarray(x, dtype=np.float64)
    starts = chunk_starts(x.size, n, hop)
    files = len(bank.names)
    lags = np.full((len(starts), files), -1, np.int64)
    values = np.zeros((len(starts), files))
    if 0 < x.size < n:  # one short chunk: the direct reference, whose windows are that short too
        for j in range(files):
            y, cum, cum_sq = _sums(bank.original(j))
            lags[0, j], values[0, j] = chunk_ncc(x, y, cum_sq, cum)
        return lags, values
    if not starts:
        return lags, values
    chunks = np.stack([x[s:s + n] for s in starts])
    chunks -= chunks.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.sum(chunks * chunks, axis=1))
    live = np.nonzero(norms >= SILENT_CHUNK)[0]
    for first in range(0, live.size, CHUNK_BATCH):
        rows = live[first:first + CHUNK_BATCH]
        unit = chunks[rows] / norms[rows, None]
        spec32 = np.conj(scipy.fft.rfft(unit.astype(np.float32), block, axis=1, workers=workers))
        spec64 = None
        best = np.full((rows.size, files), -np.inf, np.float32)
        where = np.full((rows.size, files), -1, np.int64)
        product = np.empty_like(spec32)
        index = np.arange(rows.size)
        for k, segments in enumerate(bank.segments):
            g = k * step
            if bank.empty[k]:  # every window silent: NCC 0 at every lag, the first one wins ties
                for j, lo, _ in segments:
                    better = best[:, j] < 0.0
                    best[better, j], where[better, j] = 0.0, lo - bank.offsets[j]
                continue
            if bank.exact[k]:
                if spec64 is None:
                    spec64 = np.conj(scipy.fft.rfft(unit, block, axis=1, workers=workers))
                spectrum = scipy.fft.rfft(bank.signal[g:g + block].astype(np.float64), workers=workers)
                out = scipy.fft.irfft(spec64 * spectrum, block, axis=1, workers=workers, overwrite_x=True)
            else:
                np.multiply(spec32, bank.spectra[k], out=product)
                out = scipy.fft.irfft(product, block, axis=1, workers=workers, overwrite_x=True)
            ncc = out[:, :step]
            ncc *= bank.inv_norm[g:g + step]
            for j, lo, hi in segments:
                part = ncc[:, lo - g:hi - g]
                at = part.argmax(axis=1)
                value = part[index, at]
                better = value > best[:, j]  # strict: the first lag of equal NCC wins, as argmax
                best[better, j], where[better, j] = value[better], lo - bank.offsets[j] + at[better]
        lags[rows] = where
        values[rows] = np.where(where >= 0, best, 0.0)
        for j in range(files):  # the chosen lags' NCC, exactly (float64, direct)
            start = bank.offsets[j] + np.maximum(where[:, j], 0)
            chosen = np.nonzero((where[:, j] >= 0) & (bank.inv_norm[start] > 0))[0]  # not at a silent window
            if chosen.size:
                start = start[chosen]
                windows = bank.signal[start[:, None] + np.arange(n)].astype(np.float64)
                windows -= windows.mean(axis=1, keepdims=True)
                b_norm = np.sqrt(np.sum(windows * windows, axis=1))
                values[rows[chosen], j] = np.sum(unit[chosen] * windows, axis=1) / np.maximum(b_norm, 1e-30)
    return lags, values


def _spans(held: str, train: str, starts: Sequence[int], lags: np.ndarray, values: np.ndarray, n: int,
           hop: int, min_ncc: float, min_seconds: float) -> list[Span]:
    """Chunks at NCC >= min_ncc merged into spans at one offset (2 ms), kept from min_seconds."""
    hits = [(s, int(lag) - s, float(v)) for s, lag, v in zip(starts, lags, values) if v >= min_ncc]
    spans: list[Span] = []
    tolerance = int(0.002 * RATE)
    run: list[tuple[int, int, float]] = []  # consecutive chunks at one offset
    for h in [*hits, None]:
        if run and (h is None or h[0] - run[-1][0] > hop or abs(h[1] - run[-1][1]) > tolerance):
            begin, end = run[0][0] / RATE, (run[-1][0] + n) / RATE
            if end - begin >= min_seconds:
                spans.append(Span(held, train, begin, end, (run[0][0] + run[0][1]) / RATE, max(r[2] for r in run)))
            run = []
        if h is not None:
            run.append(h)
    return spans


@functools.lru_cache(maxsize=4)
def _bank(paths: tuple[Path, ...], n: int, workers: int = 1) -> TrainBank:
    return TrainBank.build([load_audio(p, RATE) for p in paths], [str(p) for p in paths], n, workers=workers)


def shared_spans(held: Path, train: Path, min_ncc: float = 0.95, min_seconds: float = 1.0,
                 chunk_s: float = 1.0, hop_s: float = 0.5) -> list[Span]:
    """Stretches of ``held`` that reappear in ``train`` (NCC >= min_ncc over >= min_seconds)."""
    n, hop = int(chunk_s * RATE), int(hop_s * RATE)
    x = load_audio(held, RATE)
    lags, values = best_matches(x, _bank((Path(train),), n), hop)
    return _spans(str(held), str(train), chunk_starts(x.size, n, hop), lags[:, 0], values[:, 0], n, hop,
                  min_ncc, min_seconds)


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
    parser.add_argument("--jobs", type=int, default=1, help="threads for the FFTs")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress log on stderr")
    args = parser.parse_args(argv)
    held, train = _paths(args.held_out, args.held_out_list), _paths(args.train, args.train_list)
    if not held or not train:
        parser.error("give held-out and training files")
    if not 0 < args.hop or args.jobs < 1:
        parser.error("--hop must be > 0 s and --jobs >= 1")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    n, hop = RATE, int(args.hop * RATE)
    started = time.monotonic()
    found = 0
    try:
        bank = TrainBank.build([load_audio(t, RATE) for t in train], [str(t) for t in train], n, workers=args.jobs)
        log.info("training bank ready in %.0f s", time.monotonic() - started)
        for i, h in enumerate(held, 1):
            x = load_audio(h, RATE)
            lags, values = best_matches(x, bank, hop, args.jobs)
            starts = chunk_starts(x.size, n, hop)
            for j, t in enumerate(train):
                for span in _spans(str(h), str(t), starts, lags[:, j], values[:, j], n, hop, args.min_ncc,
                                   args.min_seconds):
                    found += 1
                    print(f"SHARED AUDIO {span.seconds:.2f} s (peak NCC {span.peak_ncc:.4f}): held-out {h.name} "
                          f"{span.held_start_s:.2f}-{span.held_end_s:.2f} s = training {t.name} "
                          f"{span.train_start_s:.2f}-{span.train_start_s + span.seconds:.2f} s", flush=True)
            elapsed = time.monotonic() - started
            log.info("held-out %d/%d done (%s, %d chunk(s)): %.0f s elapsed, about %.0f s to go", i, len(held),
                     h.name, len(starts), elapsed, elapsed / i * (len(held) - i))
    except (AudioReadError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    same = same_recording_pairs(held, train)
    for stamp, h, t in same:
        print(f"SAME ORIGINAL RECORDING {stamp}: held-out {h.name} and training {t.name} (name stamp)")
    print(f"{len(held)} held-out x {len(train)} training file(s): {found} shared span(s) of >= {args.min_seconds:g} s "
          f"at NCC >= {args.min_ncc}")
    return 1 if found or same else 0


if __name__ == "__main__":
    sys.exit(main())
