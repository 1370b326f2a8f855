#!/usr/bin/env python
"""Build a short-clip data set (single calls, 0.15-1 s) and its long-clip counterpart
(3-10 s) from the real recordings in the shared data folder, split by original recording.

Why: the paper's corpus and most users' labels are short clips, padded to the model's
3 s window. Issue 13 found that the padding, not the data, stalls learning on short
clips; this set lets the tests and ``benchmarks/short_clip_curves.py`` show it on our
own data. The long-clip set cuts the same sources, with the same split, into 3-10 s
clips, to check that a padding choice costs nothing on long clips.

What "original recording" means here, i.e. what never straddles train and devel:
- chimpanzee: the Cameroon clips are excerpts of longer files made by one sanctuary
  recorder ("2C") on 20 Dec 2019; their names are ``N_2C_<date>_<time>_<offset>.wav``.
  The original recording is the recorder's file ``2C_<date>_<time>``: excerpts 1_/2_
  (17:10:24) and 7_/8_ (18:51:40) come from the same file and stay together. All of them
  are one recorder, one site, one day, one group: a split by file is the best we can do,
  and it is still easier than a split by site would be. The Budongo pant hoot is its own.
- background, Cameroon: ``N_<date>_<time>_<offset>.wav``, grouped by ``<date>_<time>``.
- everything else: one file is one original recording.

Short clips: single calls cut where the band energy of a focal recording rises above its
noise floor (chimpanzee grunts in 40-600 Hz, under the insect chorus those clips carry;
the other species in 150-3000 Hz), joined across gaps < 60 ms, 0.15-1 s (longer calls are
cut into equal pieces of at most 1 s). Background clips are 0.15-1 s snippets at seeded
random places of real forest recordings. Long clips: 3-10 s windows of the same
recordings (a recording of at most 10 s, such as a chimpanzee excerpt of 1.5-5.2 s, is
used whole: there is no longer audio, so some chimpanzee "long" clips are under 3 s).

Deterministic: one seeded generator per source file; two runs write identical samples.

Usage:
    python scripts/make_short_clips.py --shared ../shared/data --out /tmp/short_clips
    # -> OUT/short/{train,devel}/<class>/*.flac, OUT/long/{train,devel}/<class>/*.flac,
    #    OUT/manifest.csv (clip, set, split, class, source, original, start_s, end_s)
    python scripts/make_short_clips.py --shared ../shared/data --fixture tests/fixtures/short_clips
    # -> a tiny short-clip subset (< 1 MB) for the tests
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.signal
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from primate_monitor.fsutil import atomic_write, write_csv  # noqa: E402

LOG = logging.getLogger("make_short_clips")
SEED = 13
WORK_SR = 16_000  # analysis rate

CALL_DIRS = {
    "chimpanzee": "calls/chimpanzee",
    "gibbon": "calls/gibbon",
    "howler_monkey": "calls/howler_monkey",
    "titi_monkey": "calls/titi_monkey",
}
BACKGROUND_DIRS = ("backgrounds/borneo_sulawesi", "backgrounds/cameroon_sanctuary",
                   "backgrounds/jura_24h", "backgrounds/puerto_rico_sabana_seca")
CLASSES = ("background", *CALL_DIRS)

# held out for devel, by original recording (see original_id); the same recordings that
# scripts/make_sample_data.py holds out, except that Cameroon background 4_ and 5_ (one
# original, 19:41:04) are held out together here.
DEVEL_ORIGINALS = {
    "chimpanzee": {"2C_20191220_174328", "2C_20191220_181122", "2C_20191220_185752"},
    "gibbon": {"FemaleGibbon_4", "MaleSolo_4"},
    "titi_monkey": {"TestSample_003"},
    "howler_monkey": {"TestSample_012"},
    "background": {"Borneo_Morning_04", "Borneo_Night_04", "Sulawesi_Morning_04", "Sulawesi_Night_04",
                   "cameroon_20200205_194104"},
}
# jura_24h and puerto_rico hold many files: every 4th (sorted by name) goes to devel
MANY_FILE_DIRS = ("jura_24h", "puerto_rico_sabana_seca")
MANY_FILES_PER_DIR = 24  # use this many of them, spread over the day

BANDS_HZ = {"chimpanzee": (40.0, 600.0)}  # grunts sit below 500 Hz, the insect chorus at 1.6-2.9 kHz
DEFAULT_BAND_HZ = (150.0, 3000.0)
FRAME_HOP_S = 0.01
FRAME_LEN_S = 0.032
ACTIVE_DB = {"chimpanzee": 6.0}  # dB above the recording's 20th-percentile band energy
DEFAULT_ACTIVE_DB = 8.0
MERGE_GAP_S = 0.06
MARGIN_S = 0.03  # added on both sides of a detected call
SHORT_S = (0.15, 1.0)
LONG_S = (3.0, 10.0)

SHORT_CAP = {"train": 100, "devel": 30}  # clips per class
LONG_CAP = {"train": 30, "devel": 10}
FIXTURE_CAP = {"train": 6, "devel": 3}
FIXTURE_SR = 8000


@dataclass(frozen=True)
class Cut:
    """One clip to write: a stretch of a source file."""

    label: str
    split: str
    source: Path
    original: str
    start: int  # samples at WORK_SR
    end: int

    @property
    def name(self) -> str:
        return f"{self.original}_{self.source.stem[:12]}_{self.start / WORK_SR:08.3f}_{(self.end - self.start) / WORK_SR:.3f}"


def original_id(path: Path) -> str:
    """The original recording a file was cut from (see the module docstring)."""
    m = re.match(r"^\d+_(2C_\d{8}_\d{6})_", path.name)
    if m:
        return m.group(1)
    m = re.match(r"^\d+_(\d{8}_\d{6})_", path.name)
    if m and "cameroon" in str(path):
        return f"cameroon_{m.group(1)}"
    return path.stem


@functools.lru_cache(maxsize=None)
def load(path: Path) -> np.ndarray:
    """Mono float32 at WORK_SR (soxr HQ), as the tool's own reader would resample."""
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != WORK_SR:
        x = soxr.resample(x, sr, WORK_SR, quality="HQ")
    return np.ascontiguousarray(x, dtype=np.float32)


def rng_for(path: Path, salt: str = "") -> np.random.Generator:
    """One generator per file, seeded by its name: the output does not depend on order."""
    return np.random.default_rng([SEED, zlib.crc32(f"{path.name}:{salt}".encode())])


def detect_calls(x: np.ndarray, label: str) -> list[tuple[int, int]]:
    """(start, end) samples of stretches whose band energy is ACTIVE_DB over the noise floor."""
    hop, n = round(FRAME_HOP_S * WORK_SR), round(FRAME_LEN_S * WORK_SR)
    f, _, spec = scipy.signal.stft(x, WORK_SR, nperseg=n, noverlap=n - hop, boundary=None, padded=False)
    band = BANDS_HZ.get(label, DEFAULT_BAND_HZ)
    sel = (f >= band[0]) & (f <= band[1])
    db = 10 * np.log10((np.abs(spec[sel]) ** 2).sum(axis=0) + 1e-12)
    db = np.convolve(db, np.ones(3) / 3, mode="same")
    active = db > np.percentile(db, 20) + ACTIVE_DB.get(label, DEFAULT_ACTIVE_DB)
    runs, start = [], None
    for i, a in enumerate(np.append(active, False)):
        if a and start is None:
            start = i
        elif not a and start is not None:
            runs.append([start, i])
            start = None
    merged: list[list[int]] = []
    for r in runs:
        if merged and (r[0] - merged[-1][1]) * FRAME_HOP_S < MERGE_GAP_S:
            merged[-1][1] = r[1]
        else:
            merged.append(r)
    margin = round(MARGIN_S * WORK_SR)
    out = []
    for a, b in merged:
        s, e = max(0, a * hop - margin), min(len(x), b * hop + n + margin)
        out += split_long(s, e)
    lo = round(SHORT_S[0] * WORK_SR)
    return [(s, e) for s, e in out if e - s >= lo]


def split_long(s: int, e: int) -> list[tuple[int, int]]:
    """A call longer than 1 s as equal pieces of at most 1 s."""
    hi = round(SHORT_S[1] * WORK_SR)
    k = int(np.ceil((e - s) / hi))
    edges = np.linspace(s, e, k + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def source_files(shared: Path) -> dict[str, list[Path]]:
    """Source recordings per class, sorted by name."""
    files = {c: sorted(p for p in (shared / d).iterdir() if p.suffix.lower() in (".wav", ".flac"))
             for c, d in CALL_DIRS.items()}
    bg: list[Path] = []
    for d in BACKGROUND_DIRS:
        found = sorted(p for p in (shared / d).iterdir() if p.suffix.lower() in (".wav", ".flac"))
        if Path(d).name in MANY_FILE_DIRS:
            found = [found[i] for i in np.linspace(0, len(found) - 1, MANY_FILES_PER_DIR).round().astype(int)]
        bg += found
    files["background"] = bg
    return files


def split_of(label: str, path: Path, index_in_dir: int) -> str:
    if label == "background" and path.parent.name in MANY_FILE_DIRS:
        return "devel" if index_in_dir % 4 == 3 else "train"
    return "devel" if original_id(path) in DEVEL_ORIGINALS[label] else "train"


def short_cuts(label: str, path: Path, x: np.ndarray) -> list[tuple[int, int]]:
    """Candidate short clips of one source: detected calls, or random background snippets."""
    rng = rng_for(path, "short")
    if label == "background":
        k = max(1, int(len(x) / WORK_SR / 2))  # about one snippet per 2 s of recording
        lengths = rng.uniform(*SHORT_S, size=k)
        starts = rng.uniform(0, 1, size=k) * (len(x) - lengths * WORK_SR)
        return [(int(s), int(s + d * WORK_SR)) for s, d in zip(starts, lengths)]
    calls = detect_calls(x, label)
    order = rng.permutation(len(calls))
    return [calls[i] for i in order]


def long_cuts(label: str, path: Path, x: np.ndarray) -> list[tuple[int, int]]:
    """Candidate long clips: non-overlapping 3-10 s windows (a short excerpt whole)."""
    rng = rng_for(path, "long")
    if len(x) <= LONG_S[1] * WORK_SR:
        return [(0, len(x))]
    calls = [] if label == "background" else detect_calls(x, label)
    out, pos = [], int(rng.uniform(0, 1) * WORK_SR)
    while True:
        n = int(rng.uniform(*LONG_S) * WORK_SR)
        if pos + n > len(x):
            break
        # a call-class window must hold at least one detected call
        if label == "background" or any(s >= pos and e <= pos + n for s, e in calls):
            out.append((pos, pos + n))
        pos += n
    return [out[i] for i in rng.permutation(len(out))]


def round_robin(per_source: list[list[Cut]], cap: int) -> list[Cut]:
    """Take one clip from each source in turn, so that no source dominates a class."""
    picked: list[Cut] = []
    queues = [list(q) for q in per_source]
    while len(picked) < cap and any(queues):
        for q in queues:
            if q and len(picked) < cap:
                picked.append(q.pop(0))
    return picked


def plan(shared: Path, kind: str, caps: dict[str, int]) -> list[Cut]:
    """Every clip of one set (``short`` or ``long``), balanced over sources, capped per class."""
    cuts: list[Cut] = []
    for label, files in source_files(shared).items():
        per_dir: dict[Path, int] = {}
        by_split: dict[str, list[list[Cut]]] = {"train": [], "devel": []}
        for path in files:
            index = per_dir.setdefault(path.parent, 0)
            per_dir[path.parent] += 1
            split = split_of(label, path, index)
            x = load(path)
            found = (short_cuts if kind == "short" else long_cuts)(label, path, x)
            by_split[split].append([Cut(label, split, path, original_id(path), s, e) for s, e in found])
        for split, sources in by_split.items():
            chosen = round_robin(sources, caps[split])
            LOG.info("%s %s %s: %d clips from %d recordings", kind, split, label, len(chosen), sum(bool(s) for s in sources))
            cuts += chosen
    return cuts


def write_set(shared: Path, cuts: list[Cut], out: Path, kind: str, sample_rate: int) -> list[dict]:
    """Write the clips as FLAC (PCM16) at ``sample_rate``; returns manifest rows."""
    rows = []
    for cut in cuts:
        x = load(cut.source)[cut.start : cut.end]
        if sample_rate != WORK_SR:
            x = soxr.resample(x, WORK_SR, sample_rate, quality="HQ")
        x = np.clip(x, -1.0, 1.0)
        path = out / kind / cut.split / cut.label / f"{cut.name}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            sf.write(tmp, x, sample_rate, format="FLAC", subtype="PCM_16")
        rows.append({"clip": str(path.relative_to(out)), "set": kind, "split": cut.split, "class": cut.label,
                     "source": str(cut.source.relative_to(shared)), "original": cut.original,
                     "start_s": round(cut.start / WORK_SR, 4), "end_s": round(cut.end / WORK_SR, 4)})
    return rows


def check_split(rows: list[dict]) -> None:
    """No original recording may feed both train and devel."""
    table = pd.DataFrame(rows)
    both = table.groupby("original")["split"].nunique()
    leaks = sorted(both[both > 1].index)
    if leaks:
        raise SystemExit(f"original recording(s) in both train and devel: {leaks}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, required=True, help="the shared data folder (its README.md lists sources)")
    p.add_argument("--out", type=Path, help="output folder (not in the repository)")
    p.add_argument("--fixture", type=Path, help="write only a tiny short-clip subset here (for tests)")
    p.add_argument("--sample-rate", type=int, default=16000, help="rate of the written clips, Hz")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if (args.out is None) == (args.fixture is None):
        p.error("give exactly one of --out and --fixture")
    if args.fixture is not None:
        cuts = plan(args.shared, "short", FIXTURE_CAP)
        rows = write_set(args.shared, cuts, args.fixture, "short", FIXTURE_SR)
        check_split(rows)
        write_csv(pd.DataFrame(rows), args.fixture / "manifest.csv")
        return
    rows = []
    for kind, caps in (("short", SHORT_CAP), ("long", LONG_CAP)):
        cuts = plan(args.shared, kind, caps)
        rows += write_set(args.shared, cuts, args.out, kind, args.sample_rate)
    check_split(rows)
    write_csv(pd.DataFrame(rows), args.out / "manifest.csv")
    table = pd.DataFrame(rows)
    table["dur"] = table.end_s - table.start_s
    LOG.info("%s", table.groupby(["set", "split", "class"])["dur"].agg(["count", "median", "min", "max"]).round(2))


if __name__ == "__main__":
    main()
