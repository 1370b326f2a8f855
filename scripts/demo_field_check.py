#!/usr/bin/env python
"""False detections per hour of the demo model on real background, and its detections on
real field recordings that no step of its making touched.

Why: the sample recordings say how well calls are found; they say little about how often
a model cries wolf on hours of plain forest, which is what a field team pays for in review
time. The sets follow the split of scripts/make_demo_data.py (SPLIT):

- field backgrounds: Sabana Seca, second day (27 x 60 s, tropical night chorus and day).
  Nothing about the model was chosen on them: every detection is false;
- devel backgrounds: Sabana Seca first day, the held-out Borneo/Sulawesi and Cameroon files.
  They chose the checkpoint and calibrated the thresholds, so their rate is optimistic;
- training backgrounds (seen in training and mined for hard negatives): most optimistic;
- PUMA_2014-02-07_074500.wav (Song Meter SM2, Ecuador): a titi duet runs from 49.72 s to
  the end (it is TestSample_003, which only the sample recordings use). Before it, every
  detection is false;
- agile_gibbon_hylobates_agilis.flac: agile gibbons, a species no training clip holds.

    python scripts/demo_field_check.py --shared ../shared/data [--model CKPT] [--threshold T]

Without --threshold, the scan defaults apply: the model's calibrated thresholds if it has
them, else 0.5. Prints Markdown tables for the model card.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_demo_data as mdd  # noqa: E402

from primate_monitor.audio import probe  # noqa: E402
from primate_monitor.events import EventOptions  # noqa: E402
from primate_monitor.scanner import ScanConfig, prepare_scan, scan_recording  # noqa: E402

LOG = logging.getLogger("demo_field_check")
PUMA_TITI_FROM_S = 49.72


def scan_set(paths: list[Path], model, config: ScanConfig) -> tuple[float, pd.DataFrame]:
    """Total hours scanned and all detections of a set of recordings."""
    hours, tables = 0.0, []
    for p in paths:
        hours += probe(p).duration_s / 3600.0
        tables.append(scan_recording(p, model, config))
    events = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["species"])
    return hours, events


def per_hour(name: str, hours: float, events: pd.DataFrame, classes: list[str]) -> str:
    """One Markdown table row: false detections per hour, total and by class."""
    counts = events["species"].value_counts() if len(events) else pd.Series(dtype=int)
    cells = [f"{int(counts.get(c, 0))} ({counts.get(c, 0) / hours:.1f}/h)" for c in classes]
    return (f"| {name} | {hours * 60:.1f} min | {len(events)} ({len(events) / hours:.1f}/h) | "
            + " | ".join(cells) + " |")


def detections(title: str, path: Path, events: pd.DataFrame) -> list[str]:
    lines = ["", f"{title}: {path.name} ({probe(path).duration_s:.0f} s)", "",
             "| begin s | end s | species | peak score |", "|---|---|---|---|"]
    lines += [f"| {e['begin_s']:.0f} | {e['end_s']:.0f} | {e['species']} | {e['peak_score']:.2f} |"
              for _, e in events.iterrows()]
    return lines


def main() -> None:
    """Scan every set and print Markdown tables."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled demo model)")
    ap.add_argument("--threshold", type=float, default=None,
                    help="one threshold for all species (ignores the model's calibrated ones)")
    ap.add_argument("--skip-train", action="store_true", help="leave out the training backgrounds")
    args = ap.parse_args()

    config = ScanConfig()
    if args.threshold is not None:
        config = replace(config, events=EventOptions(threshold=args.threshold), model_thresholds=False)
    model, config = prepare_scan(args.model, config)  # precision auto resolved once, logged
    classes = [c for c in model.info.classes if c != model.info.reject_class]
    field, devel, train = (mdd.resolve(args.shared, role) for role in ("field", "devel", "train"))
    sets = [("field backgrounds: Sabana Seca day 2 (untouched)", field["chorus"]),
            ("devel backgrounds: Sabana Seca day 1 (calibration)", devel["chorus"]),
            ("devel backgrounds: Borneo/Sulawesi 04, Cameroon 194104", devel["forest"])]
    if not args.skip_train:
        sets.append(("training backgrounds (seen, mined)", [p for g in mdd.SPLIT["train"] if g in
                                                           ("forest", "temperate", "noise", "other")
                                                           for p in train[g]]))
    lines = [f"model {model.name}; thresholds: "
             + (f"{args.threshold:g} for all" if args.threshold is not None else
                (", ".join(f"{k}={v:g}" for k, v in sorted(model.info.thresholds.items())) or "0.5 (none in the model)")),
             "", "| set | audio | false detections | " + " | ".join(classes) + " |",
             "|---|---|---|" + "---|" * len(classes)]
    for name, paths in sets:
        hours, events = scan_set(paths, model, config)
        lines.append(per_hour(f"{name} ({len(paths)} files)", hours, events, classes))

    puma = field["ecuador"][0]
    events = scan_recording(puma, model, config)
    before = events[events["end_s"] <= PUMA_TITI_FROM_S]
    duet = events[(events["end_s"] > PUMA_TITI_FROM_S) & (events["species"] == "titi_monkey")]
    other = events[(events["end_s"] > PUMA_TITI_FROM_S) & (events["species"] != "titi_monkey")]
    lines += ["", f"PUMA: {len(before)} false detection(s) in the {PUMA_TITI_FROM_S:.0f} s before the duet "
              f"({len(before) / PUMA_TITI_FROM_S * 3600:.0f}/h); duet found as titi: {'yes' if len(duet) else 'no'}"
              f" ({len(duet)} event(s), peak {duet['peak_score'].max() if len(duet) else float('nan'):.2f}); "
              f"{len(other)} other-species detection(s) during the duet"]
    lines += detections("PUMA detections", puma, events)
    gibbon = field["agile_gibbon"][0]
    lines += detections("Agile gibbon detections", gibbon, scan_recording(gibbon, model, config))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
