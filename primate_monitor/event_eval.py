"""Event-level precision and recall of detections against Raven truth tables.

Matching rule: a detection and a truth selection match when they have the same species,
overlap in time, and either their intersection-over-union is at least 0.3, or the
detection holds the selection's centre and is at most ``SLACK_S`` (6 s) longer than it.
The slack is what 3 s windows add at most (one window's worth on each side of a call),
so a short call detected by a few overlapping windows still matches, while an event that
runs over a whole recording does not. Pairs are matched one-to-one, greedily in
order of decreasing IoU, so each truth selection is matched at most once and a second
detection of the same call counts as a false positive.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .raven import check_times, read_selection_table, table_lines as _lines

logger = logging.getLogger(__name__)

MIN_IOU = 0.3
SLACK_S = 6.0  # seconds a centre-holding detection may exceed the truth selection


def _iou(b1: float, e1: float, b2: float, e2: float) -> float:
    inter = max(0.0, min(e1, e2) - max(b1, b2))
    union = max(e1, e2) - min(b1, b2)
    return inter / union if union > 0 else 0.0


def is_match(det: tuple[float, float], truth: tuple[float, float]) -> bool:
    """The matching rule above, for one detection and one truth selection of the same species."""
    (db, de), (tb, te) = det, truth
    if min(de, te) <= max(db, tb):
        return False
    centre = (tb + te) / 2
    holds_centre = db <= centre <= de and (de - db) <= (te - tb) + SLACK_S
    return holds_centre or _iou(db, de, tb, te) >= MIN_IOU


def match_events(detections: pd.DataFrame, truth: pd.DataFrame) -> list[tuple[int, int]]:
    """(detection row, truth row) pairs for one recording; both frames have begin_s, end_s, species."""
    candidates = []
    for i, d in enumerate(detections.itertuples(index=False)):
        for j, t in enumerate(truth.itertuples(index=False)):
            if d.species == t.species and is_match((d.begin_s, d.end_s), (t.begin_s, t.end_s)):
                candidates.append((_iou(d.begin_s, d.end_s, t.begin_s, t.end_s), i, j))
    used_d, used_t, pairs = set(), set(), []
    for _, i, j in sorted(candidates, key=lambda c: (-c[0], c[1], c[2])):
        if i not in used_d and j not in used_t:
            used_d.add(i)
            used_t.add(j)
            pairs.append((i, j))
    return pairs


def read_truth(path: str | Path, label_column: str = "Species") -> pd.DataFrame:
    """A Raven truth table as begin_s, end_s, species.

    A selection that ends before it begins, starts before 0 or has no species cannot be matched
    to anything: once it silently scored as a missed call (reversed times gave every F1 0, an
    empty species became a species ""), so it is now an error naming the table and its lines."""
    table = read_selection_table(path)
    if label_column not in table.columns:
        raise ValueError(f"{path}: no label column {label_column!r}; columns are {list(table.columns)}")
    check_times(table, path)
    species = table[label_column].astype(str).str.strip()
    if (species == "").any():
        raise ValueError(f"{path}: empty {label_column!r} on line(s) {_lines(species == '', table)}; every truth "
                         "selection needs a species (a recording with no calls is a table with no rows)")
    return pd.DataFrame({"begin_s": table["Begin Time (s)"], "end_s": table["End Time (s)"], "species": species})


def _truth_recording(table: Path, recordings: list[str]) -> str | None:
    """The recording a truth table belongs to: the one whose file stem, followed by ".", starts
    the table's name (``rec.wav`` ← ``rec.truth.selections.txt``). Several recordings with that
    stem (``a/rec.wav`` and ``b/rec.flac``) are ambiguous: an error, never a silent choice."""
    hits = [r for r in recordings if table.name.startswith(Path(r).stem + ".")]
    if not hits:
        return None
    longest = max(len(Path(r).stem) for r in hits)
    best = [r for r in hits if len(Path(r).stem) == longest]
    if len(best) > 1:
        raise ValueError(f"{table}: ambiguous, its name matches the scanned recordings {best}; "
                         "rename the table after one of them")
    return best[0]


def find_truth_tables(paths: list[str | Path]) -> list[Path]:
    """Truth tables given as files, or folders searched for ``*.selections.txt``; a missing path
    or no table at all is an error (there would be nothing to score against)."""
    paths = [Path(p) for p in paths]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such truth table or folder: {', '.join(map(str, missing))}")
    tables = [t for p in paths for t in (sorted(p.rglob("*.selections.txt")) if p.is_dir() else [p])]
    if not tables:
        raise ValueError(f"no truth tables (*.selections.txt) found in {', '.join(map(str, paths))}; "
                         "nothing to score against")
    return tables


def truth_by_recording(truth_tables: list[Path], names: list[str]) -> dict[str, Path]:
    """Each truth table's recording among ``names`` (see _truth_recording); a table that matches
    none, or two tables for one recording, is an error naming them."""
    matched: dict[str, Path] = {}
    for table in truth_tables:
        rec = _truth_recording(table, names)
        if rec is None:
            raise ValueError(f"{table}: no scanned recording matches this truth table's name")
        if rec in matched:
            raise ValueError(f"two truth tables for recording {rec}: {matched[rec]} and {table}; keep one")
        matched[rec] = table
    return matched


def evaluate_events(detections: pd.DataFrame, truth_tables: list[Path], label_column: str = "Species",
                    recordings: pd.DataFrame | None = None, classes: list[str] | None = None) -> dict[str, Any]:
    """Per-class and macro precision, recall and F1 over every recording with a truth table.

    ``recordings`` (the scan's recordings.csv: recording, duration_s) lets a recording with a
    truth table but no detections count, for its missed calls, and gives the hours of audio
    for false detections per hour. Without it only recordings with detections can be matched.
    ``classes`` (the scan model's, ``writers.model_species``) turns a truth species the model
    does not have into a warning.
    The macro average is over every species in the truth or the detections: a species detected
    where the truth has none counts with precision 0, not left out.
    """
    names = sorted(set(detections["recording"]) | (set(recordings["recording"]) if recordings is not None else set()))
    counts: dict[str, np.ndarray] = {}  # species -> [true positives, detections, truths]
    matched_tables = truth_by_recording(truth_tables, names)
    for rec, table in matched_tables.items():
        truth = read_truth(table, label_column)
        foreign = sorted(set(truth["species"]) - set(classes)) if classes is not None else []
        if foreign:  # "Gibbon" or "gibbón" for gibbon: every such call would count as missed
            logger.warning("%s: species %s are not classes of the scan's model (%s); their calls count as missed",
                           table, foreign, ", ".join(classes))
        dets = detections[detections["recording"] == rec].reset_index(drop=True)
        pairs = match_events(dets, truth)
        for species in set(truth["species"]) | set(dets["species"]):
            c = counts.setdefault(species, np.zeros(3, dtype=np.int64))
            c += [sum(dets.at[i, "species"] == species for i, _ in pairs),
                  int((dets["species"] == species).sum()), int((truth["species"] == species).sum())]
    hours = float("nan")
    if recordings is not None:
        durations = dict(zip(recordings["recording"], recordings["duration_s"].astype(float)))
        hours = sum(durations.get(rec, 0.0) for rec in matched_tables) / 3600
    per_class = {}
    for species, (tp, n_det, n_truth) in sorted(counts.items()):
        p = tp / n_det if n_det else float("nan")
        r = tp / n_truth if n_truth else float("nan")
        f1 = 2 * tp / (n_det + n_truth) if n_det + n_truth else float("nan")
        per_class[species] = {"precision": p, "recall": r, "f1": f1, "true_positives": int(tp),
                              "detections": int(n_det), "truth": int(n_truth),
                              "false_per_hour": (n_det - tp) / hours if hours > 0 else float("nan")}
    scored = list(per_class.values())
    macro = {k: float(np.nanmean([v[k] for v in scored])) if scored and not all(np.isnan(v[k]) for v in scored)
             else float("nan") for k in ("precision", "recall", "f1")}
    return {"rule": f"same species, overlapping, and IoU >= {MIN_IOU} or (detection holds the truth centre and is at most "
                    f"{SLACK_S:g} s longer); one-to-one, greedy by IoU",
            "recordings": sorted(matched_tables), "audio_hours": hours, "per_class": per_class, "macro": macro}
