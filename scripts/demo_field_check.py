#!/usr/bin/env python
"""False detections per hour of the demo model on real forest background, and a look at
one real field recording it never saw.

Why: the sample recordings say how well calls are found; they say little about how
often a model cries wolf on hours of plain forest, which is what a field team pays for
in review time. This scans, with the scan defaults (hop 1 s, threshold 0.5):

- held-out forest backgrounds (never used in training): every detection is false;
- the training forest backgrounds (seen in training, so optimistic): likewise;
- PUMA_2014-02-07_074500.wav (Song Meter SM2, Ecuador; never used anywhere in training):
  a titi duet runs from about 50 s to the end (marked by us from the spectrogram). Its
  detections are listed; anything other than titi_monkey there is false.

Usage (from the repository root):
    python scripts/demo_field_check.py --shared ../shared/data [--model CKPT]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample_data import FOREST_DIRS, HELD_OUT_BACKGROUNDS  # noqa: E402

from primate_monitor.audio import probe  # noqa: E402
from primate_monitor.scanner import ScanConfig, prepare_model, scan_recording  # noqa: E402

LOG = logging.getLogger("demo_field_check")
FIELD_RECORDING = "backgrounds/ecuador_amazon/PUMA_2014-02-07_074500.wav"


def scan_set(paths: list[Path], model, config: ScanConfig) -> tuple[float, pd.DataFrame]:
    """Total hours scanned and all detections of a set of recordings."""
    hours, tables = 0.0, []
    for p in paths:
        hours += probe(p).duration_s / 3600.0
        tables.append(scan_recording(p, model, config))
    events = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return hours, events


def per_hour(name: str, hours: float, events: pd.DataFrame, classes: list[str]) -> str:
    """One Markdown table row: detections per hour, total and by class."""
    counts = events["species"].value_counts() if len(events) else pd.Series(dtype=int)
    cells = [f"{int(counts.get(c, 0))} ({counts.get(c, 0) / hours:.0f}/h)" for c in classes]
    return (f"| {name} | {hours * 3600:.0f} s | {len(events)} ({len(events) / hours:.0f}/h) | "
            + " | ".join(cells) + " |")


def main() -> None:
    """Scan the three sets and print Markdown tables for the model card."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled demo model)")
    args = ap.parse_args()

    config = ScanConfig()
    model = prepare_model(args.model, config)
    classes = [c for c in model.info.classes if c != model.info.reject_class]
    forest = sorted(p for d in FOREST_DIRS for p in (args.shared / d).glob("*.wav"))
    held = [p for p in forest if p.stem.startswith(HELD_OUT_BACKGROUNDS)]
    seen = [p for p in forest if not p.stem.startswith(HELD_OUT_BACKGROUNDS)]

    lines = ["| set | audio | detections | " + " | ".join(classes) + " |",
             "|---|---|---|" + "---|" * len(classes)]
    for name, paths in (("held-out forest backgrounds", held), ("training forest backgrounds", seen)):
        hours, events = scan_set(paths, model, config)
        lines.append(per_hour(f"{name} ({len(paths)} files)", hours, events, classes))
        for _, e in events.iterrows():
            lines.append(f"|  | {e['recording']} {e['begin_s']:.0f}-{e['end_s']:.0f} s | "
                         f"{e['species']} {e['peak_score']:.2f} |" + " |" * len(classes))
    field = args.shared / FIELD_RECORDING
    events = scan_recording(field, model, config)
    lines += ["", f"{field.name} ({probe(field).duration_s:.0f} s), detections:", "",
              "| begin s | end s | species | peak score |", "|---|---|---|---|"]
    lines += [f"| {e['begin_s']:.0f} | {e['end_s']:.0f} | {e['species']} | {e['peak_score']:.2f} |"
              for _, e in events.iterrows()]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
