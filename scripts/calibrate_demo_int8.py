#!/usr/bin/env python
"""Make the bundled demo model's int8 calibration (``scan --precision int8``) from training-role
audio only (SPLIT in scripts/make_demo_data.py): every training call file, and every fourth
training background of each group, 60 s from the start of each.

Why training audio: the calibration sets activation ranges, a fitting step like any other, so it
must not see the devel or field recordings that report the model's figures.

    python scripts/calibrate_demo_int8.py --shared ../shared/data
writes primate_monitor/assets/demo_cnn10_8k.int8.safetensors (or --model/--out elsewhere).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_demo_data as mdd  # noqa: E402

from primate_monitor.bundled import default_model_path  # noqa: E402
from primate_monitor.checkpoint import load_checkpoint  # noqa: E402
from primate_monitor.quantize import calibrate  # noqa: E402

CALL_GROUPS = ("chimpanzee", "gibbon", "titi_monkey", "howler_monkey")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", type=Path, default=None, help="checkpoint (default: the bundled demo model)")
    ap.add_argument("--out", type=Path, default=None, help="default: beside the checkpoint")
    ap.add_argument("--seconds-per-file", type=float, default=60.0)
    args = ap.parse_args()
    files = mdd.resolve(args.shared, "train")
    chosen = [p for g in CALL_GROUPS for p in files[g]]
    chosen += [p for g, ps in files.items() if g not in CALL_GROUPS for p in ps[::4]]
    model = load_checkpoint(args.model or default_model_path())
    calibrate(model, chosen, args.out, args.seconds_per_file)


if __name__ == "__main__":
    main()
