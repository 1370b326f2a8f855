#!/usr/bin/env python
"""Judge models on the half of a round-trip set that ``round_trip.py --holdout`` did not review.

Why: after ``round_trip.py --holdout`` a user's next step is to learn from the reviewed half
(``train --add-reviewed``). Whether that helped must be judged on the other half, which no
verdict, threshold or training step touched. This scans the whole set with each model
(``scan --save-window-scores``), optionally re-detects with a thresholds file, and runs
``evaluate-events`` with the truth tables of the judged half only.

    python scripts/judge_held_out_half.py --set SET --model U1=CKPT --model U2=CKPT \\
        [--thresholds NAME=thresholds.yaml] -o WORK
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from round_trip import cli, fit_half, totals  # noqa: E402

from primate_monitor.event_eval import find_truth_tables, truth_by_recording  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", required=True, type=Path, help="recordings with their truth tables beside them")
    ap.add_argument("--model", action="append", required=True, metavar="NAME=CKPT")
    ap.add_argument("--thresholds", action="append", default=[], metavar="NAME=YAML",
                    help="also judge model NAME re-detected with these thresholds")
    ap.add_argument("-o", "--out", required=True, type=Path)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.model:
        name, _, ckpt = spec.partition("=")
        scan = args.out / f"scan_{name}"
        if not (scan / "windows.parquet").exists():
            cli("scan", str(args.set), "-o", str(scan), "--model", ckpt, "--save-window-scores")
        recordings = list(pd.read_csv(scan / "recordings.csv")["recording"])
        tables = truth_by_recording(find_truth_tables([args.set]), recordings)
        fit = fit_half([Path(r).stem for r in recordings])
        judged = [str(t) for r, t in tables.items() if Path(r).stem not in fit]
        runs = [(name, scan)]
        for tspec in args.thresholds:
            tname, _, yaml = tspec.partition("=")
            if tname == name:
                cli("detect", str(scan), "--thresholds-file", yaml, "-o", str(args.out / f"detect_{name}"))
                runs.append((f"{name} + thresholds", args.out / f"detect_{name}"))
        for label, folder in runs:
            out = args.out / f"judged_{label.replace(' ', '_').replace('+', 'plus')}.json"
            cli("evaluate-events", str(folder), *judged, "-o", str(out))
            metrics = json.loads(out.read_text())
            t = totals(metrics)
            per = {sp: f"{m['recall']:.2f} / {m['false_per_hour']:.1f}" for sp, m in metrics["per_class"].items()}
            rows.append({"model": label, "recordings judged": len(judged), "hours": round(metrics["audio_hours"], 3),
                         "recall": round(t["recall"], 3), "precision": round(t["precision"], 3),
                         "false / h": round(t["false_per_hour"], 1), **per})
    table = pd.DataFrame(rows)
    text = table.to_string(index=False)
    (args.out / "judged.txt").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
