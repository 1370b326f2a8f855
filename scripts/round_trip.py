#!/usr/bin/env python
"""The review -> calibrate -> detect round trip, run as a user would, with verdicts filled in
from truth tables instead of by ear.

Why: issue 8 asks that a user who scans, reviews, calibrates at ``--precision 0.9`` and
re-detects with the thresholds gets at least 5x fewer false detections per hour while keeping
event recall >= 0.8. This script measures exactly that on recordings with Raven truth tables,
through the installed command line (``python -m primate_monitor``), so what it reports is
what a user would see:

1. ``scan RECORDINGS --save-window-scores`` (default threshold unless --scan-threshold);
2. ``review`` (the default stratified draw, or --all);
3. every review row gets the verdict a person with the truth would write: ``yes`` when it
   matches a truth selection of its species (event_eval's rule), the truth's species when it
   matches a selection of another species by the same rule, else ``no``;
4. ``calibrate REVIEW --precision P``;
5. ``detect SCAN --thresholds-file`` into a new folder;
6. ``evaluate-events`` before and after, on the same recordings (the user's round trip).

With --holdout, verdicts are filled in only for a seeded random half of the recordings, the
thresholds are fitted on those, and the figures are reported on the others: thresholds judged
on recordings they were not fitted on.

    python scripts/round_trip.py --model CKPT --recordings DIR --truth DIR -o WORK [--all]

Writes WORK/summary.md (Markdown tables) and WORK/summary.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from primate_monitor.event_eval import find_truth_tables, is_match, read_truth, truth_by_recording
from primate_monitor.fsutil import atomic_write, write_json
from primate_monitor.raven import read_selection_table
from primate_monitor.review import VERDICT_COLUMN


def cli(*args: str) -> None:
    """Run one primate-monitor command; a failure stops the round trip with its output."""
    cmd = [sys.executable, "-m", "primate_monitor", "-q", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")


def verdict(begin: float, end: float, species: str, truth: pd.DataFrame) -> str:
    """What a reviewer holding the truth writes for one detection."""
    hits = [t for t in truth.itertuples(index=False) if is_match((begin, end), (t.begin_s, t.end_s))]
    if any(t.species == species for t in hits):
        return "yes"
    return hits[0].species if hits else "no"


def fill_verdicts(review_dir: Path, truth_tables: dict[str, Path], only: set[str] | None = None
                  ) -> tuple[dict[str, int], list[Path]]:
    """Write a verdict into every row of every review table (atomically, as Raven would save);
    ``truth_tables`` maps a recording's stem to its truth table. With ``only``, just the tables of
    recordings with those stems (the others stay unreviewed). Returns the verdict counts and the
    tables filled in."""
    counts: dict[str, int] = {}
    filled: list[Path] = []
    for path in sorted((review_dir / "raven").rglob("*.selections.txt")):
        table = read_selection_table(path)
        recording = Path(str(table["Begin Path"].iloc[0]).strip())
        if only is not None and recording.stem not in only:
            continue
        table_path = truth_tables.get(recording.stem)
        truth = read_truth(table_path) if table_path else pd.DataFrame(columns=["begin_s", "end_s", "species"])
        lines = path.read_text(encoding="utf-8").splitlines()
        header = lines[0].split("\t")
        col = header.index(VERDICT_COLUMN)
        out = [lines[0]]
        for line, row in zip(lines[1:], table.itertuples(index=False)):
            cells = line.split("\t")
            v = verdict(float(row[table.columns.get_loc("Begin Time (s)")]),
                        float(row[table.columns.get_loc("End Time (s)")]),
                        str(row[table.columns.get_loc("Species")]).strip(), truth)
            cells[col] = v
            counts[v] = counts.get(v, 0) + 1
            out.append("\t".join(cells))
        with atomic_write(path) as tmp:
            tmp.write_text("\n".join(out) + "\n", encoding="utf-8")
        filled.append(path)
    return counts, filled


def fit_half(stems: list[str]) -> set[str]:
    """The recordings (file stems) whose verdicts are filled in with --holdout: a seeded random
    half. Why random: the calibration recordings cycle species by file, so every other file
    would split them by species. Importable, so that a later check can judge the same other half."""
    stems = sorted(stems)
    return set(np.random.default_rng(0).permutation(stems)[: len(stems) // 2])


def evaluate(detections: Path, truth: list[Path], out: Path) -> dict:
    cli("evaluate-events", str(detections), *map(str, truth), "-o", str(out))
    return json.loads(out.read_text())


def totals(metrics: dict) -> dict[str, float]:
    """All-species event figures: recall over every truth call, false detections per hour."""
    hours = metrics["audio_hours"]
    pc = metrics["per_class"].values()
    tp, det, truth = (sum(v[k] for v in pc) for k in ("true_positives", "detections", "truth"))
    return {"recall": tp / truth if truth else float("nan"), "precision": tp / det if det else float("nan"),
            "false_per_hour": (det - tp) / hours, "detections": det, "true_positives": tp, "truth": truth}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--recordings", required=True, type=Path)
    ap.add_argument("--truth", required=True, type=Path)
    ap.add_argument("-o", "--out", required=True, type=Path)
    ap.add_argument("--precision", type=float, default=0.9)
    ap.add_argument("--all", action="store_true", help="review every detection (default: review's stratified draw)")
    ap.add_argument("--scan-threshold", type=float, default=None)
    ap.add_argument("--holdout", action="store_true",
                    help="fit on a random half of the recordings, report on the rest (see the module docstring)")
    args = ap.parse_args()

    work = args.out
    work.mkdir(parents=True, exist_ok=True)
    tables = find_truth_tables([args.truth])
    scan = work / "scan"
    if not (scan / "windows.parquet").exists():
        extra = ["--threshold", str(args.scan_threshold)] if args.scan_threshold is not None else []
        cli("scan", str(args.recordings), "-o", str(scan), "--model", args.model, "--save-window-scores", *extra)
    # evaluate-events' own matching of tables to recordings (an ambiguous or stray table is an error)
    recordings = list(pd.read_csv(scan / "recordings.csv")["recording"])
    truth = {Path(rec).stem: table for rec, table in truth_by_recording(tables, recordings).items()}
    stems = sorted(Path(r).stem for r in recordings)
    fit = fit_half(stems) if args.holdout else set(stems)
    judge = [table for stem, table in truth.items() if not args.holdout or stem not in fit]

    review = work / "review"
    cli("review", str(scan), "-o", str(review), "--no-sheets", "--overwrite", *(["--all"] if args.all else []))
    counts, filled = fill_verdicts(review, truth, fit if args.holdout else None)
    thresholds = work / "thresholds.yaml"
    # with --holdout, calibrate sees only the reviewed half's tables, as if the user had reviewed
    # those recordings alone (the judged half's rows would otherwise stand as unreviewed rows)
    reviewed = [str(t) for t in filled] if args.holdout else [str(review / "raven")]
    cli("calibrate", *reviewed, "-o", str(thresholds), "--precision", str(args.precision),
        "--plots", str(work / "calibration"))
    cli("detect", str(scan), "--thresholds-file", str(thresholds), "-o", str(work / "detect"))
    before = evaluate(scan, judge, work / "before.json")
    after = evaluate(work / "detect", judge, work / "after.json")
    b, a = totals(before), totals(after)
    hours = before["audio_hours"]
    summary = {"model": args.model, "recordings": str(args.recordings), "audio_hours": hours,
               "holdout": f"fit on {len(fit)} recordings, judged on {len(judge)} others" if args.holdout else None,
               "review": "all" if args.all else "stratified (review defaults)", "verdicts": counts,
               "precision_target": args.precision, "before": b, "after": a,
               "false_per_hour_cut": b["false_per_hour"] / a["false_per_hour"] if a["false_per_hour"] else float("inf"),
               "per_class_before": before["per_class"], "per_class_after": after["per_class"],
               "thresholds": thresholds.read_text()}
    write_json(work / "summary.json", summary)
    lines = [f"Round trip: {args.model} on {args.recordings} ({hours:.2f} h judged"
             f"{'; ' + summary['holdout'] if args.holdout else ''}, review "
             f"{summary['review']}, verdicts {counts}, calibrate --precision {args.precision})", "",
             "| | detections | true | truth calls | recall | precision | false / h |", "|---|---|---|---|---|---|---|"]
    for name, t in (("scan (threshold 0.5)", b), ("detect --thresholds-file", a)):
        lines.append(f"| {name} | {t['detections']} | {t['true_positives']} | {t['truth']} | {t['recall']:.3f} | "
                     f"{t['precision']:.3f} | {t['false_per_hour']:.1f} |")
    lines += ["", f"False detections per hour cut {summary['false_per_hour_cut']:.2f}-fold.", "",
              "| species | recall before | after | false / h before | after |", "|---|---|---|---|---|"]
    for sp in sorted(set(before["per_class"]) | set(after["per_class"])):
        pb, pa = before["per_class"].get(sp, {}), after["per_class"].get(sp, {})
        lines.append(f"| {sp} | {pb.get('recall', float('nan')):.3f} | {pa.get('recall', float('nan')):.3f} | "
                     f"{pb.get('false_per_hour', float('nan')):.1f} | {pa.get('false_per_hour', float('nan')):.1f} |")
    text = "\n".join(lines) + "\n"
    with atomic_write(work / "summary.md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
