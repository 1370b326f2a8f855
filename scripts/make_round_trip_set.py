#!/usr/bin/env python
"""A busier set for the review round trip: the calibration recordings plus background-only
recordings that a model trained on forest backgrounds alone has never heard.

Why: the round trip on the calibration recordings alone (docs/models/demo.md, session 6) had
too few false detections (8 in 0.48 h) to test issue 8's 5-fold cut. A user's first model,
trained on clips from one kind of site, meets birds, insects, rain and engines it never heard;
that is the issue's case (122 false detections per hour). This copies:

- ``CALIBRATION/*`` (make_demo_data's calibration recordings: devel calls placed into Sabana
  Seca day 1, and the devel forest files, with their Raven truth tables);
- every file of the given train-role background groups of make_demo_data's SPLIT (default:
  the Jura 24 h cycle and the field and noise clips), each with a header-only truth table, so
  that every detection on it counts as false.

Use it only with a model that was not trained on those groups (make_demo_data.py
--train-backgrounds forest). None of these files is in the bundled model's field set.

``--only-species a,b`` keeps only the calibration recordings whose truth holds no other species
(and those with no calls): a site where the model's other species do not live, the issue's
Bornean case. The calibration recordings place the devel calls in pairs (chimpanzee with gibbon,
howler with titi), so ``howler_monkey,titi_monkey`` gives a New World site and
``chimpanzee,gibbon`` an Old World one.

    python scripts/make_round_trip_set.py --calibration DEMO_DATA/calibration -o SET [--only-species a,b]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_demo_data as mdd  # noqa: E402

from primate_monitor.event_eval import read_truth  # noqa: E402

msd = mdd.msd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--calibration", type=Path, required=True, help="make_demo_data's OUT/calibration")
    ap.add_argument("--groups", default="temperate,noise", help="train-role background groups to add")
    ap.add_argument("--only-species", default=None,
                    help="keep only calibration recordings whose truth species are among these (comma-separated)")
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"error: {args.out} exists; give a new folder")
    args.out.mkdir(parents=True)
    allowed = set(args.only_species.split(",")) if args.only_species else None
    dropped = 0
    for table in sorted(args.calibration.glob("*.truth.selections.txt")):
        stem = table.name.removesuffix(".truth.selections.txt")
        recordings = [p for p in args.calibration.glob(f"{stem}.*") if p != table]
        if len(recordings) != 1:
            raise SystemExit(f"error: {table} has {len(recordings)} recordings beside it")
        if allowed is not None and not set(read_truth(table)["species"]) <= allowed:
            dropped += 1
            continue
        for path in (table, recordings[0]):
            shutil.copy2(path, args.out / path.name)
    if dropped:
        print(f"left out {dropped} calibration recordings with species other than {sorted(allowed)}")
    train = mdd.resolve(args.shared, "train")
    added = 0
    for group in args.groups.split(","):
        if group not in train:
            raise SystemExit(f"error: no train-role group {group!r}; groups: {sorted(train)}")
        for path in train[group]:
            if (args.out / path.name).exists():
                raise SystemExit(f"error: two files named {path.name}")
            shutil.copy2(path, args.out / path.name)
            msd.write_truth(args.out / f"{path.stem}.truth.selections.txt", [])
            added += 1
    print(f"{args.out}: the calibration recordings plus {added} background-only recordings ({args.groups})")


if __name__ == "__main__":
    main()
