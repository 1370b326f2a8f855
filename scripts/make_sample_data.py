#!/usr/bin/env python
"""Build the sample data, the demo-model training set and the test fixtures.

Everything is cut from the real, openly licensed recordings in the shared data
folder (see its README.md). Nothing is synthesized: the "field recordings" are
real held-out calls placed into real held-out forest backgrounds at known times
and SNRs, so that a detector can be scored against an exact truth table.

The split is by source recording: a recording named in HELD_OUT_* is used only
for devel/test/recordings, every other recording only for train. Output is
deterministic (fixed seeds, one RNG per item), so two runs give identical bytes.

The bundled demo model's training data is built by scripts/make_demo_data.py, which
reuses the mixing helpers here under its own split.

Usage (paths relative to the repository root):
    python scripts/make_sample_data.py --shared ../shared/data --out sample_data \
        --fixtures tests/fixtures
"""
from __future__ import annotations

import argparse
import functools
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import scipy.signal
import soundfile as sf
import soxr

LOG = logging.getLogger("make_sample_data")
REPO_ROOT = Path(__file__).resolve().parents[1]

SEED = 20240312
PRIMATES = ("chimpanzee", "gibbon", "howler_monkey", "titi_monkey")
CLASSES = ("background",) + PRIMATES

# --- held-out split, by source recording (file stem prefix) -----------------
HELD_OUT_CALLS: dict[str, tuple[str, ...]] = {
    "chimpanzee": ("5_2C_", "6_2C_", "15_2C_"),
    "gibbon": ("FemaleGibbon_4", "MaleSolo_4"),
    "titi_monkey": ("TestSample_003",),
    "howler_monkey": ("TestSample_012",),
}
HELD_OUT_BACKGROUNDS = ("Borneo_Morning_04", "Borneo_Night_04", "Sulawesi_Morning_04",
                        "Sulawesi_Night_04", "5_20200205_")
HELD_OUT_OTHER = ("GreatArgus_4",)

# Field recordings with a primate calling in a known stretch (begin s, end s), marked by
# us from the spectrogram; the authors' metadata says which species is audible. They add
# a second, real-field source for a class with few focal recordings (one training howler
# template). Used for the demo model's training set only (scripts/make_demo_data.py), never
# in sample_data. PUMA_2014-02-07_074500.wav (titi duet) is a field test there.
FIELD_CALLS: dict[str, tuple[tuple[str, float, float], ...]] = {
    "howler_monkey": (("backgrounds/ecuador_amazon/HARPIA_2014-02-04_061500.wav", 1.0, 40.0),),
}

# --- source folders, relative to --shared ------------------------------------
CALL_DIRS = {c: f"calls/{c}" for c in PRIMATES}
FOREST_DIRS = ("backgrounds/borneo_sulawesi", "backgrounds/cameroon_sanctuary")
OTHER_DIR = "calls/other_animals"
LICENSE_DIR = "licenses"

# --- analysis constants -------------------------------------------------------
WORK_SR_HZ = 16_000            # rate at which recordings are mixed
ENERGY_BAND_HZ = (200.0, 3000.0)   # band used to find call-rich stretches
SNR_BAND_HZ = (100.0, 4000.0)      # band in which SNRs are measured, unless SNR_BANDS_HZ says
# The Cameroon chimpanzee clips carry a loud insect chorus at 1.6-2.9 kHz, while the grunts
# and hoots sit below about 1 kHz. Measured over 100-4000 Hz, a clip's power is mostly
# insects, so a "9 dB" chimpanzee call was in fact far quieter than 9 dB. Their SNR is
# measured where the calls are.
SNR_BANDS_HZ = {"chimpanzee": (100.0, 1200.0)}
FRAME_S = 0.064                # analysis frame for the energy criterion
ACTIVE_MARGIN_DB = 6.0         # frame is "active" if this far above the median
CANDIDATE_REL = 0.5            # window kept if its active fraction >= this x best
WINDOW_S = 3.0                 # classifier window length
PEAK_LIMIT = 0.89              # -1 dBFS, clip guard for every written file
XFADE_S = 0.5                  # cross-fade between background pieces
BG_PIECE_GAIN_DB = (-3.0, 3.0)  # random gain of each background piece

# --- sample_data/clips ------------------------------------------------------------
CLIPS_PER_CLASS = {"train": 6, "devel": 3}
TEST_CLIPS_PER_CLASS = 1      # unlabelled test split, one held-out clip per class
CLIP_SR_CYCLE_HZ = (16_000, 8_000, 8_000, 8_000)  # 1 in 4 clips at 16 kHz: keeps sample_data < 10 MB

# --- mixing of the demo model's training clips (used by scripts/make_demo_data.py) ------
SCRATCH_SR_HZ = 8_000
SCRATCH_SNR_DB = (-3.0, 20.0)
SCRATCH_GAIN_DB = (-20.0, 0.0)
OTHER_SNR_DB = (0.0, 15.0)     # argus-over-forest background clips
# The Cameroon chimpanzee clips share an insect chorus (1.6-2.9 kHz) that the forest
# backgrounds lack, a shortcut a network would happily learn ("insects = chimpanzee").
# Against it: half of those chimpanzee examples are low-passed below the chorus, and some
# background examples are those clips high-passed above the calls (insects only).
INSECT_SPLIT_HZ = 1200.0
CHIMP_LOWPASS_P = 0.5
INSECT_BACKGROUND_P = 0.15

# --- truth tables -------------------------------------------------------------------
RAVEN_HEADER = ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\t"
                "Low Freq (Hz)\tHigh Freq (Hz)\tSpecies")
TRUTH_BAND_HZ = (100, 4000)
MIN_GAP_S = 6.0                # pure background between placed events
EDGE_S = 2.0                   # background before the first / after the last event
SNR_CYCLE_DB = (12.0, 6.0, 9.0, 3.0, 15.0)  # every placed call gets the next value
ARGUS_SNR_DB = 9.0


@dataclass(frozen=True)
class RecordingSpec:
    """One constructed field recording: file name, format and call plan."""

    name: str
    sr_hz: int
    fmt: str
    duration_s: float
    counts: dict[str, int]
    call_len_s: float          # cut length for long templates (gibbon/titi/howler/argus)
    comment: str | None = None


RECORDINGS = (
    RecordingSpec("20240312_053000.flac", 48_000, "FLAC", 98.0,
                  {"chimpanzee": 2, "gibbon": 2, "titi_monkey": 2, "howler_monkey": 2}, 5.0,
                  "Recorded at 05:30:00 12/03/2024 (UTC) by AudioMoth 24F3190360E2A0C1 at "
                  "medium gain while battery was 4.2V and temperature was 21.3C."),
    RecordingSpec("CAM02_20240312_180000.wav", 16_000, "WAV", 64.0,
                  {"chimpanzee": 2, "gibbon": 1, "titi_monkey": 1, "howler_monkey": 1}, 4.0),
    RecordingSpec("SITE03_2024-03-13_064500.wav", 16_000, "WAV", 60.0,
                  {"chimpanzee": 1, "gibbon": 2, "titi_monkey": 1, "howler_monkey": 1}, 4.0),
)

# --- tests/fixtures ---------------------------------------------------------------
FIXTURE_SR_HZ = 8_000
FIXTURE_CLIP_S = 2.0
FIXTURE_CLASSES = ("background", "chimpanzee", "gibbon", "titi_monkey")
FIXTURE_COUNTS = {"train": 3, "devel": 2}
FIXTURE_REC_S = 20.0
FIXTURE_CALLS = (("gibbon", 3.0, 5.0, 12.0), ("chimpanzee", 14.5, 0.0, 9.0))  # class, at s, len s, SNR dB
CLEAN_CLIP = ("gibbon", "FemaleGibbon_1", 16_000)

LICENSES = ("behaviouR-MIT.md", "animal-sounds-Apache-2.0.md", "sed_great_ape-MIT.md",
            "scikit-maad-BSD-3.txt")
CC_BY_NOTICE = """# van Kuijk et al. 2023: CC BY 4.0

The titi monkey and howler monkey templates come from
github.com/SoundScience/Automated-detection-and-detection-range-of-titi-monkey-duets
(van Kuijk et al. 2023), licensed under the Creative Commons Attribution 4.0
International licence: https://creativecommons.org/licenses/by/4.0/legalcode

Changes made here: resampled, cut to call-rich excerpts, and mixed into other
real forest recordings at set signal-to-noise ratios.
"""


# ============================================================================
# source discovery and loading
# ============================================================================
def is_held_out(path: Path, prefixes: tuple[str, ...]) -> bool:
    """Held-out membership is decided by file-name prefix, so the split is by recording."""
    return path.stem.startswith(prefixes)


def list_sources(shared: Path) -> dict[tuple[str, str], list]:
    """Map (group, split) to sorted source files; groups are the primates, 'forest', 'other'.

    (primate, "field") holds that class's FIELD_CALLS stretches as (path, begin s, end s).
    """
    out: dict[tuple[str, str], list] = {}
    groups: dict[str, tuple[list[Path], tuple[str, ...]]] = {
        c: (sorted((shared / CALL_DIRS[c]).glob("*.wav")), HELD_OUT_CALLS[c]) for c in PRIMATES}
    forest = sorted(p for d in FOREST_DIRS for p in (shared / d).glob("*.wav"))
    groups["forest"] = (forest, HELD_OUT_BACKGROUNDS)
    groups["other"] = (sorted((shared / OTHER_DIR).glob("*.wav")), HELD_OUT_OTHER)
    for group, (files, held) in groups.items():
        out[(group, "train")] = [p for p in files if not is_held_out(p, held)]
        out[(group, "held")] = [p for p in files if is_held_out(p, held)]
    for c in PRIMATES:
        out[(c, "field")] = [(shared / rel, b, e) for rel, b, e in FIELD_CALLS.get(c, ())]
    return out


@functools.lru_cache(maxsize=None)
def load(path: Path, sr: int) -> np.ndarray:
    """Read mono float32 audio at `sr`, resampled with soxr HQ; cached because sources repeat."""
    x, sr_in = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr_in != sr:
        x = soxr.resample(x, sr_in, sr, quality="HQ")
    return np.ascontiguousarray(x, dtype=np.float32)


# ============================================================================
# energy criterion: where in a focal recording are the calls?
# ============================================================================
@functools.lru_cache(maxsize=None)
def active_frames(path: Path, sr: int) -> tuple[np.ndarray, int]:
    """Per-frame flag: band energy (200-3000 Hz) above the recording's median + margin."""
    x = load(path, sr)
    n_fft = int(2 ** np.ceil(np.log2(FRAME_S * sr)))
    hop = n_fft // 2
    spec = np.abs(librosa.stft(x, n_fft=n_fft, hop_length=hop, center=True)) ** 2
    freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
    band = (freqs >= ENERGY_BAND_HZ[0]) & (freqs <= ENERGY_BAND_HZ[1])
    db = 10.0 * np.log10(spec[band].sum(axis=0) + 1e-12)
    return db > np.median(db) + ACTIVE_MARGIN_DB, hop


def window_scores(path: Path, sr: int, length: int) -> np.ndarray:
    """Active-frame fraction of every window start (in hops) of `length` samples."""
    active, hop = active_frames(path, sr)
    n_win = max(1, int(round(length / hop)))
    csum = np.concatenate([[0.0], np.cumsum(active, dtype=np.float64)])
    n_starts = max(1, len(active) - n_win + 1)
    max_start = (len(load(path, sr)) - length) // hop
    n_starts = max(1, min(n_starts, max_start + 1))
    return (csum[n_win:n_win + n_starts] - csum[:n_starts]) / n_win


def top_windows(path: Path, sr: int, length: int, k: int) -> list[int]:
    """Up to k non-overlapping call-rich window starts (samples), best first."""
    x = load(path, sr)
    if len(x) <= length:
        return [0]
    _, hop = active_frames(path, sr)
    scores = window_scores(path, sr, length)
    picked: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        start = min(int(i) * hop, len(x) - length)
        if all(abs(start - p) >= length for p in picked):
            picked.append(start)
        if len(picked) == k:
            break
    return picked


def random_call_window(path: Path, sr: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Random window among the call-rich ones (active fraction near the recording's best)."""
    x = load(path, sr)
    if len(x) <= length:
        return x
    _, hop = active_frames(path, sr)
    scores = window_scores(path, sr, length)
    cands = np.flatnonzero(scores >= CANDIDATE_REL * scores.max())
    start = min(int(rng.choice(cands)) * hop + int(rng.integers(0, hop)), len(x) - length)
    return x[start:start + length]


# ============================================================================
# mixing helpers
# ============================================================================
def band_power(x: np.ndarray, sr: int, band: tuple[float, float] = SNR_BAND_HZ) -> float:
    """Mean power of x inside `band` (FFT mask + Parseval), for SNRs that ignore rumble/hiss."""
    spec = np.fft.rfft(x.astype(np.float64))
    freqs = np.fft.rfftfreq(len(x), 1.0 / sr)
    mask = (freqs >= band[0]) & (freqs <= band[1])
    return float(2.0 * np.sum(np.abs(spec[mask]) ** 2) / len(x) ** 2) + 1e-20


def gain_for_snr(call: np.ndarray, bg: np.ndarray, sr: int, snr_db: float, label: str = "") -> float:
    """Linear gain that puts `call` at snr_db over `bg` (same length) in the label's SNR band."""
    band = SNR_BANDS_HZ.get(label, SNR_BAND_HZ)
    return float(np.sqrt(band_power(bg, sr, band) / band_power(call, sr, band) * 10 ** (snr_db / 10.0)))


def db_gain(db: float) -> float:
    """dB to linear amplitude factor."""
    return float(10 ** (db / 20.0))


def crop(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random n-sample crop; loops short inputs so any length can be served."""
    if len(x) < n:
        x = np.tile(x, int(np.ceil(n / len(x))) + 1)
    start = int(rng.integers(0, len(x) - n + 1))
    return x[start:start + n].copy()


def limit_peak(x: np.ndarray) -> np.ndarray:
    """Scale down (never up) so the peak stays below -1 dBFS and PCM16 never clips."""
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    return x * (PEAK_LIMIT / peak) if peak > PEAK_LIMIT else x


def write_audio(path: Path, x: np.ndarray, sr: int, fmt: str = "WAV",
                comment: str | None = None) -> None:
    """Write PCM16 (optionally with a comment tag); x is (n,) or (n, ch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(path, "w", samplerate=sr, channels=1 if x.ndim == 1 else x.shape[1],
                      subtype="PCM_16", format=fmt) as f:
        if comment:
            f.comment = comment
        f.write(limit_peak(x).astype(np.float32))


def write_labels(path: Path, rows: list[tuple[str, str]]) -> None:
    """ComParE label file: filename,label with Unix newlines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("filename,label\n" + "".join(f"{f},{lab}\n" for f, lab in rows))


# ============================================================================
# helpers for the demo model's training clips (scripts/make_demo_data.py)
# ============================================================================
def place_in_window(call: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Zero-pad a short call into an n-sample window at a random offset."""
    out = np.zeros(n, dtype=np.float32)
    off = int(rng.integers(0, n - len(call) + 1))
    out[off:off + len(call)] = call
    return out, off


def split_band(x: np.ndarray, sr: int, low: bool) -> np.ndarray:
    """Zero-phase 8th-order Butterworth low-pass (or high-pass) at INSECT_SPLIT_HZ."""
    sos = scipy.signal.butter(8, INSECT_SPLIT_HZ, "lowpass" if low else "highpass", fs=sr, output="sos")
    return scipy.signal.sosfiltfilt(sos, x).astype(np.float32)


def has_insect_chorus(path: Path) -> bool:
    """The Cameroon sanctuary chimpanzee clips (``N_2C_...``) carry the insect chorus."""
    return "_2C_" in path.stem


def field_call_window(field: tuple[Path, float, float], sr: int, n: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Random n-sample window inside the marked calling stretch of a field recording."""
    path, begin_s, end_s = field
    x = load(path, sr)[int(begin_s * sr):int(end_s * sr)]
    return crop(x, n, rng)


def normalise_level(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Peak-normalise to -1 dBFS, then apply the random overall gain."""
    peak = float(np.max(np.abs(x))) + 1e-9
    return x * (PEAK_LIMIT / peak) * db_gain(float(rng.uniform(*SCRATCH_GAIN_DB)))


# ============================================================================
# sample_data/clips: small real labelled clips
# ============================================================================
def spread(items: list[Path], k: int) -> list[Path]:
    """k items spread evenly over a sorted list, so the sample covers different recordings."""
    if k <= 1:
        return items[:k]
    idx = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[int(i)] for i in idx]


def clip_sources(label: str, split: str, src: dict, k: int) -> list[Path]:
    """Source per clip; background alternates forest soundscapes and other animals."""
    if label != "background":
        return spread(src[(label, split)], k)
    forest, other = src[("forest", split)], src[("other", split)]
    n_other = max(1, k // 3)
    return spread(forest, k - n_other) + spread(other, n_other)


def real_clip(path: Path, sr: int, rank: int) -> np.ndarray:
    """The rank-th best call-rich 3 s window of a source (whole clip if shorter)."""
    n = int(WINDOW_S * sr)
    starts = top_windows(path, sr, n, rank + 1)
    start = starts[min(rank, len(starts) - 1)]
    return load(path, sr)[start:start + n]


def build_clips(src: dict, out: Path) -> list[tuple[str, str, str]]:
    """Write sample_data/clips (train/devel/test); returns (split, file, source) for credits."""
    reset_dirs(out / "wav", out / "lab")
    used: list[tuple[str, str, str]] = []
    uses: dict[Path, int] = {}
    for s_idx, split in enumerate(("train", "devel", "test")):
        k = CLIPS_PER_CLASS.get(split, TEST_CLIPS_PER_CLASS)
        src_split = "train" if split == "train" else "held"
        items = [(c, p) for c in CLASSES for p in clip_sources(c, src_split, src, k)]
        order = np.random.default_rng([SEED, 3, s_idx]).permutation(len(items))
        rows = []
        for i, j in enumerate(order):
            label, path = items[int(j)]
            sr = CLIP_SR_CYCLE_HZ[i % len(CLIP_SR_CYCLE_HZ)]
            rank = uses.get(path, 0)
            uses[path] = rank + 1
            name = f"{split}_{i + 1:04d}.wav"
            write_audio(out / "wav" / name, real_clip(path, sr, rank), sr)
            rows.append((name, label if split != "test" else "?"))
            used.append((split, name, path.name))
        write_labels(out / "lab" / f"{split}.csv", rows)
    return used


def reset_dirs(*dirs: Path) -> None:
    """Remove and recreate output folders so stale files never survive a rerun."""
    for d in dirs:
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)


# ============================================================================
# sample_data/recordings: real calls placed into real backgrounds
# ============================================================================
def fade(x: np.ndarray, sr: int, fade_s: float = 0.05) -> np.ndarray:
    """Raised-cosine fade in/out so cut call excerpts do not click."""
    n = min(int(fade_s * sr), len(x) // 2)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n, dtype=np.float32))
    y = x.copy()
    y[:n] *= ramp
    y[len(y) - n:] *= ramp[::-1]
    return y


def build_background(paths: list[Path], sr: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Concatenate shuffled held-out backgrounds with cross-fades, looping (random crops) as needed."""
    xf = int(XFADE_S * sr)
    ramp = np.linspace(0.0, 1.0, xf, dtype=np.float32)
    out = np.zeros(0, dtype=np.float32)
    loop = 0
    while len(out) < n:
        for i in rng.permutation(len(paths)):
            x = load(paths[int(i)], sr)
            if loop:  # a repeat: take a random 60-100 % stretch so it is not an exact copy
                x = crop(x, int(len(x) * rng.uniform(0.6, 1.0)), rng)
            x = x * db_gain(float(rng.uniform(*BG_PIECE_GAIN_DB)))
            if len(out) == 0:
                out = x.copy()
            else:
                head = out[-xf:] * ramp[::-1] + x[:xf] * ramp
                out = np.concatenate([out[:-xf], head, x[xf:]])
        loop += 1
    return out[:n]


def cut_call(label: str, path: Path, spec: RecordingSpec, rank: int) -> np.ndarray:
    """Whole clip for chimpanzees; otherwise the rank-th call-rich excerpt of the template."""
    x = load(path, WORK_SR_HZ)
    if label == "chimpanzee":
        return fade(x, WORK_SR_HZ)
    n = int(spec.call_len_s * WORK_SR_HZ)
    starts = top_windows(path, WORK_SR_HZ, n, rank + 1)
    start = starts[min(rank, len(starts) - 1)]
    return fade(x[start:start + n], WORK_SR_HZ)


def plan_events(spec: RecordingSpec, r_idx: int, src: dict,
                rng: np.random.Generator) -> list[tuple[str, np.ndarray, Path]]:
    """Calls (plus one great-argus distractor) in a random order, each cut from held-out audio."""
    events = []
    for label in PRIMATES:
        held = src[(label, "held")]
        for j in range(spec.counts[label]):
            path = held[(2 * r_idx + j) % len(held)]
            events.append((label, cut_call(label, path, spec, r_idx + j // len(held)), path))
    argus = src[("other", "held")][0]
    events.append(("argus", cut_call("argus", argus, spec, r_idx), argus))
    return [events[int(i)] for i in rng.permutation(len(events))]


def event_starts(lengths: list[int], n_total: int, sr: int, rng: np.random.Generator) -> list[int]:
    """Start samples with >= MIN_GAP_S between events and the slack spread at random."""
    n_min_gap, n_edge = int(MIN_GAP_S * sr), int(EDGE_S * sr)
    slack = n_total - sum(lengths) - (len(lengths) - 1) * n_min_gap - 2 * n_edge
    if slack < 0:
        raise ValueError(f"recording too short by {-slack / sr:.1f} s for its call plan")
    extra = np.floor(rng.dirichlet(np.ones(len(lengths) + 1)) * slack).astype(int)
    starts, pos = [], n_edge + int(extra[0])
    for i, length in enumerate(lengths):
        starts.append(pos)
        pos += length + n_min_gap + int(extra[i + 1])
    return starts


def build_recording(spec: RecordingSpec, r_idx: int, src: dict, out_dir: Path) -> list[dict]:
    """Mix one recording at 16 kHz, resample to its rate, write it and its Raven truth table."""
    sr = WORK_SR_HZ
    rng = np.random.default_rng([SEED, 4, r_idx])
    n = int(spec.duration_s * sr)
    bg = build_background(src[("forest", "held")], sr, n, rng)
    events = plan_events(spec, r_idx, src, rng)
    starts = event_starts([len(e[1]) for e in events], n, sr, rng)
    mix, truth, k = bg.copy(), [], 0
    for (label, call, path), s in zip(events, starts):
        seg = slice(s, s + len(call))
        snr = ARGUS_SNR_DB if label == "argus" else SNR_CYCLE_DB[(r_idx + k) % len(SNR_CYCLE_DB)]
        mix[seg] += gain_for_snr(call, bg[seg], sr, snr, label) * call
        if label != "argus":
            k += 1
        truth.append({"label": label, "begin": s / sr, "end": (s + len(call)) / sr,
                      "snr_db": snr, "source": path.name})
    if spec.sr_hz != sr:
        mix = soxr.resample(mix, sr, spec.sr_hz, quality="HQ")
    write_audio(out_dir / spec.name, mix, spec.sr_hz, spec.fmt, spec.comment)
    write_truth(out_dir / f"{Path(spec.name).stem}.truth.selections.txt",
                [t for t in truth if t["label"] != "argus"])
    return truth


def write_truth(path: Path, events: list[dict]) -> None:
    """Raven Pro selection table with exactly the columns the project's reader expects."""
    lines = [RAVEN_HEADER]
    for i, e in enumerate(events, start=1):
        lines.append(f"{i}\tSpectrogram 1\t1\t{e['begin']:.3f}\t{e['end']:.3f}\t"
                     f"{TRUTH_BAND_HZ[0]}\t{TRUTH_BAND_HZ[1]}\t{e['label']}")
    path.write_text("\n".join(lines) + "\n")


def build_recordings(src: dict, out: Path) -> dict[str, list[dict]]:
    """All constructed field recordings; returns the placed events (argus included) per file."""
    reset_dirs(out)
    return {spec.name: build_recording(spec, i, src, out) for i, spec in enumerate(RECORDINGS)}


# ============================================================================
# tests/fixtures
# ============================================================================
FIXTURE_SPECIALS = {  # (split, label, index) -> (sample rate Hz, duration s, channels)
    ("train", "gibbon", 0): (16_000, FIXTURE_CLIP_S, 1),
    ("train", "titi_monkey", 0): (44_100, FIXTURE_CLIP_S, 2),
    ("train", "background", 0): (FIXTURE_SR_HZ, 1.5, 1),
    ("devel", "titi_monkey", 0): (FIXTURE_SR_HZ, 6.0, 1),
}


def fixture_clip(path: Path, sr: int, dur_s: float, channels: int, rank: int = 0) -> np.ndarray:
    """rank-th call-rich excerpt; stereo copies get a 1 dB right-channel offset to test down-mixing."""
    n = int(dur_s * sr)
    starts = top_windows(path, sr, n, rank + 1)
    start = starts[min(rank, len(starts) - 1)]
    x = load(path, sr)[start:start + n]
    if channels == 2:
        x = np.stack([x, x * db_gain(-1.0)], axis=1)
    return x


def build_fixture_clips(src: dict, out: Path) -> None:
    """Tiny ComParE-layout clip set with one odd rate, one stereo, one short and one long clip."""
    reset_dirs(out / "wav", out / "lab")
    plans = {split: [(c, k) for c in FIXTURE_CLASSES] for split, k in FIXTURE_COUNTS.items()}
    plans["test"] = [("titi_monkey", 1), ("background", 1)]
    uses: dict[Path, int] = {}  # reuse of a source takes its next-best window
    for split, plan in plans.items():
        src_split = "train" if split == "train" else "held"
        rows, i = [], 0
        for label, k in plan:
            for j, path in enumerate(clip_sources(label, src_split, src, k)):
                sr, dur, ch = FIXTURE_SPECIALS.get((split, label, j), (FIXTURE_SR_HZ, FIXTURE_CLIP_S, 1))
                i += 1
                name = f"{split}_{i:04d}.wav"
                uses[path] = uses.get(path, -1) + 1
                write_audio(out / "wav" / name, fixture_clip(path, sr, dur, ch, uses[path]), sr)
                rows.append((name, label if split != "test" else "?"))
        write_labels(out / "lab" / f"{split}.csv", rows)


def build_fixture_recording(src: dict, out: Path) -> list[dict]:
    """20 s, 8 kHz held-out background with one gibbon and one chimpanzee call at fixed times."""
    sr = FIXTURE_SR_HZ
    reset_dirs(out)
    rng = np.random.default_rng([SEED, 5])
    bg = build_background(src[("forest", "held")], sr, int(FIXTURE_REC_S * sr), rng)
    mix, truth = bg.copy(), []
    for label, at_s, len_s, snr in FIXTURE_CALLS:
        path = src[(label, "held")][0]
        x = load(path, sr)
        if len_s:
            start = top_windows(path, sr, int(len_s * sr), 1)[0]
            x = x[start:start + int(len_s * sr)]
        call, s = fade(x, sr), int(at_s * sr)
        seg = slice(s, s + len(call))
        mix[seg] += gain_for_snr(call, bg[seg], sr, snr, label) * call
        truth.append({"label": label, "begin": s / sr, "end": (s + len(call)) / sr,
                      "snr_db": snr, "source": path.name})
    write_audio(out / "20240312_053000.wav", mix, sr)
    write_truth(out / "20240312_053000.truth.selections.txt", truth)
    return truth


def build_fixtures(src: dict, out: Path) -> list[dict]:
    """All test fixtures: clips, one recording with truth, and a clean 16 kHz gibbon excerpt."""
    build_fixture_clips(src, out / "clips")
    truth = build_fixture_recording(src, out / "recording")
    label, stem, sr = CLEAN_CLIP
    path = next(p for p in src[(label, "train")] if p.stem == stem)
    write_audio(out / "clean_clip.wav", fixture_clip(path, sr, WINDOW_S, 1), sr)
    return truth


# ============================================================================
# driver
# ============================================================================
def copy_licenses(shared: Path, out: Path) -> None:
    """Keep every source licence next to the data that needs it."""
    reset_dirs(out)
    for name in LICENSES:
        shutil.copyfile(shared / LICENSE_DIR / name, out / name)
    (out / "vanKuijk2023-CC-BY-4.0.md").write_text(CC_BY_NOTICE)


def folder_bytes(path: Path) -> int:
    """Total size of the files under a folder."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def parse_args() -> argparse.Namespace:
    """Command-line options; relative paths are taken from the repository root."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared/data", help="read-only source data")
    ap.add_argument("--out", default="sample_data", help="sample data folder (committed)")
    ap.add_argument("--fixtures", default="tests/fixtures", help="unit-test fixtures")
    args = ap.parse_args()
    for key in ("shared", "out", "fixtures"):
        setattr(args, key, (REPO_ROOT / getattr(args, key)).resolve())
    return args


def main() -> None:
    """Build everything and log one summary."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args()
    t0 = time.perf_counter()
    src = list_sources(args.shared)
    clips = build_clips(src, args.out / "clips")
    recs = build_recordings(src, args.out / "recordings")
    copy_licenses(args.shared, args.out / "licenses")
    fix_truth = build_fixtures(src, args.fixtures)
    lines = [f"sample_data: {len(clips)} clips, {len(recs)} recordings, "
             f"{folder_bytes(args.out) / 1e6:.2f} MB; fixtures {folder_bytes(args.fixtures) / 1e3:.0f} kB; "
             f"{time.perf_counter() - t0:.1f} s"]
    for name, events in list(recs.items()) + [("fixture 20240312_053000.wav", fix_truth)]:
        lines.append(name)
        lines += [f"  {e['begin']:7.3f}-{e['end']:7.3f} s  {e['label']:<14} "
                  f"SNR {e['snr_db']:4.1f} dB  from {e['source']}" for e in events]
    LOG.info("\n".join(lines))


if __name__ == "__main__":
    main()
