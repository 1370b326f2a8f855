#!/usr/bin/env python
"""Hard-negative mining for the demo model: the training backgrounds' highest-scoring windows
become extra ``background`` clips.

Why: a model trained on a few hundred random background crops has rarely seen the sounds
it confuses with primates (issue 8: 130 false detections per hour on unseen rainforest).
Scanning the *training* backgrounds (no primate calls) and adding the windows it scores
highest teaches it exactly those sounds. Only training-role audio is read (SPLIT in
scripts/make_demo_data.py): devel and field audio never become training clips.

``--background FILE...`` mines named recordings instead: a day of a site's audio that a person
has reviewed and found free of primates, the "learn from your own site" step of the README.
Whatever role those files had before, they are training audio from then on; say so wherever
a figure is reported on them.

    python scripts/mine_hard_negatives.py --model RUN/best.safetensors \
        --data /work/scratch/demo_data5/clips --out /work/scratch/demo_data5_r1

OUT is a new ComParE-layout folder: DATA's clips (hard links), plus ``hardneg_NNNNN.wav``
added to train as background, and ``hard_negatives.csv`` (source file, start s, species,
score) to say where each came from.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_demo_data as mdd  # noqa: E402
import make_sample_data as msd  # noqa: E402

from primate_monitor.scanner import ScanConfig, prepare_model, score_recording  # noqa: E402

LOG = logging.getLogger("mine_hard_negatives")
BACKGROUND_GROUPS = ("forest", "temperate", "noise", "other")


def candidates(path: Path, model, config: ScanConfig, per_file: int, min_score: float) -> list[tuple]:
    """Up to ``per_file`` non-overlapping windows of one file, highest primate score first."""
    result = score_recording(path, model, config)
    classes = list(model.info.classes)
    keep = [i for i, c in enumerate(classes) if c != model.info.reject_class]
    primate = result.scores[:, keep]
    best = primate.max(axis=1)
    picked: list[tuple] = []
    for i in np.argsort(-best, kind="stable"):
        if best[i] < min_score or len(picked) == per_file:
            break
        start = float(result.starts_s[i])
        if all(abs(start - p[1]) >= model.info.clip_seconds for p in picked):
            picked.append((path, start, classes[keep[int(np.argmax(primate[i]))]], float(best[i])))
    return picked


def link_dataset(data: Path, out: Path) -> None:
    """OUT/wav holds hard links to DATA/wav (no copy of 200 MB); labels are copied."""
    (out / "wav").mkdir(parents=True)
    for p in sorted((data / "wav").iterdir()):
        os.link(p, out / "wav" / p.name)
    shutil.copytree(data / "lab", out / "lab")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", type=Path, required=True, help="the clips folder the model was trained on")
    ap.add_argument("--out", type=Path, required=True, help="new data folder (must not exist)")
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--total", type=int, default=500, help="hard negatives to add")
    ap.add_argument("--per-file", type=int, default=6, help="at most this many windows per file")
    ap.add_argument("--min-score", type=float, default=0.05, help="ignore windows scored below this")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--background", type=Path, nargs="+",
                    help="mine these primate-free recordings instead of the training-role backgrounds")
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"error: {args.out} exists; choose a new folder")

    config = ScanConfig(hop_seconds=1.0, model_thresholds=False, precision="fp32")
    model = prepare_model(args.model, config)
    if args.background:
        missing = [str(p) for p in args.background if not p.is_file()]
        if missing:
            raise SystemExit(f"error: --background file(s) not found: {', '.join(missing)}")
        sources = list(args.background)
    else:
        files = mdd.resolve(args.shared, "train")
        sources = [p for g in BACKGROUND_GROUPS for p in files[g]]
    found: list[tuple] = []
    for k, path in enumerate(sources):
        found += candidates(path, model, config, args.per_file, args.min_score)
        if (k + 1) % 20 == 0:
            LOG.info("scanned %d/%d background files, %d candidate windows", k + 1, len(sources), len(found))
    found.sort(key=lambda c: -c[3])
    chosen = found[:args.total]
    LOG.info("%d candidates over %.2f; keeping %d (lowest kept score %.3f)", len(found), args.min_score,
             len(chosen), chosen[-1][3] if chosen else float("nan"))

    link_dataset(args.data, args.out)
    sr, n = mdd.SR_HZ, int(msd.WINDOW_S * mdd.SR_HZ)
    rows, report = [], []
    for i, (path, start_s, species, score) in enumerate(chosen):
        x = msd.load(path, sr)
        a = min(int(round(start_s * sr)), max(0, len(x) - n))
        clip = msd.crop(x[a:a + n], n, np.random.default_rng([args.seed, i]))  # loops a short file
        name = f"hardneg_{i + 1:05d}.wav"
        msd.write_audio(args.out / "wav" / name, msd.normalise_level(clip, np.random.default_rng([args.seed, 1, i])), sr)
        rows.append((name, "background"))
        report.append((name, path.name, f"{start_s:.2f}", species, f"{score:.4f}"))
    with open(args.out / "lab" / "train.csv", "a", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    with open(args.out / "hard_negatives.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["clip", "source", "start_s", "species", "score"])
        w.writerows(report)
    by_species: dict[str, int] = {}
    for r in report:
        by_species[r[3]] = by_species.get(r[3], 0) + 1
    LOG.info("added %d hard negatives to %s (by the species they were taken for: %s)", len(rows),
             args.out / "lab" / "train.csv", by_species)


if __name__ == "__main__":
    main()
