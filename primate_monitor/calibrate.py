"""Per-species score thresholds from verdicts: how far to trust a model at a site.

Input: verdicts on detections, either filled-in review tables (``primate-monitor review``;
``yes``, ``no`` or the right species) or a scan plus truth tables, where a detection that
matches a truth selection (``event_eval.match_events``) is ``yes`` and any other ``no``.

Per species:

1. **Fit P(correct | score)** by logistic regression (scikit-learn) on logit(score). Scores
   crowd near 0 and 1; on the logit scale the relation is close to linear, as in BirdNET's
   review tab and Wood & Kahl (2024).
2. **The threshold** is the lowest reviewed score t at which the *fitted* precision of the
   detections scoring at or above t reaches the target (``--precision 0.9``):
   precision(t) = sum_i w_i p(s_i) [s_i >= t] / sum_i w_i [s_i >= t], p the fitted curve, w_i
   the sampling weights. Why the fitted curve and not the empirical share of ``yes`` above t:
   with the tens of verdicts a person gives per species, the empirical share jumps with every
   verdict and is not monotone in t, so the lowest t reaching it would often sit on one lucky
   verdict; the fit pools all verdicts. Why the weights: review samples each score bin
   equally, which over-represents rare scores; weighting each verdict by how many of the
   scan's detections it stands for makes precision(t) estimate the precision of the scan's
   detections above t, not of the sample. (Both figures are written; with a scan plus truth
   every detection is judged and all weights are 1.) For an increasing curve precision(t)
   only grows with t, so the lowest such t is well defined.
3. **Uncertainty**: a seeded bootstrap over verdicts (refit, new threshold) gives a 95 %
   interval; resamples in which the target cannot be reached are counted.
4. **Cost**: the share of reviewed true detections scoring below the threshold, which the
   threshold would lose.

Too few verdicts (fewer than ``min_verdicts``, or fewer than ``min_each`` correct or wrong)
give no threshold and a message saying how many more are needed: never a silent guess.

**A species none of whose verdicts is correct is switched off** (threshold 1, which
``events.passing`` never passes), when the verdicts include its k highest-scoring detections in
the review, k the fewest (at least ``min_each``) for which the one-sided 95 % upper bound on
precision with 0 correct of k, 1 - 0.05**(1/k), is below the target: at any threshold that
keeps k or more reviewed detections, precision is then below the target. Why: a species that
does not live at the site (the issue's Bornean test: titi, howler and chimpanzee made 41 of 65
false detections) can never get the correct verdicts a fit needs, so "review 3 more correct"
would be advice nobody can follow, while the evidence already rules out the target precision
at those thresholds. A species with even one correct verdict is never
switched off: a reviewer saw it detected, and losing it is a decision for the user
(``--classes``), not for a fit. ``switch_off=False`` (``--no-switch-off``) keeps the old rule.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .events import OFF_THRESHOLD
from .fsutil import atomic_write, printable

logger = logging.getLogger(__name__)

MIN_VERDICTS = 10
MIN_EACH = 3  # correct and wrong verdicts each
SCORE_EPS = 1e-4  # scores are clipped to [eps, 1 - eps] before the logit
C_LOGISTIC = 100.0  # weak L2 penalty: near the maximum-likelihood fit, yet finite when verdicts separate
METHOD = ("logistic regression of correct on logit(score); threshold = lowest reviewed score at which the fitted "
          "precision of detections at or above it (weighted by sampling weight) reaches the target")
SWITCH_OFF_METHOD = ("no verdict correct, the k highest-scoring detections in the review included: switched off "
                     "(threshold 1), since at any threshold keeping k or more of them the 95 % upper bound on precision, "
                     "1 - 0.05**(1/k), is below the target")


@dataclass(frozen=True)
class CalibrationOptions:
    """How thresholds are fitted. Validated on construction."""

    precision: float = 0.9  # target precision of detections at or above the threshold
    bootstrap: int = 1000  # bootstrap resamples for the interval (0: none)
    seed: int = 0
    min_verdicts: int = MIN_VERDICTS
    min_each: int = MIN_EACH
    switch_off: bool = True  # threshold 1 ("off") for a species with no correct verdict (module docstring)

    def __post_init__(self) -> None:
        if not 0.0 < self.precision < 1.0:
            raise ValueError(f"target precision must be between 0 and 1 (exclusive), got {self.precision}")
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap must be >= 0, got {self.bootstrap}")
        if self.min_verdicts < 2 or self.min_each < 1:
            raise ValueError("min_verdicts must be >= 2 and min_each >= 1")


# ---- verdicts -------------------------------------------------------------------------------
def verdicts_from_tables(paths: list[str | Path], classes: list[str] | None = None,
                         reject_class: str = "background") -> pd.DataFrame:
    """Verdicts from filled-in review tables: species, score, weight, correct (bool), table, row.

    ``yes`` is correct; ``no``, ``background`` (the reject class) or another species is wrong
    for the detected species. Known species names are ``classes`` plus every species the tables
    hold; anything else is an error naming the table and row (its Selection number, else its line
    in the file; a typo must not count as "no").
    Rows with an empty verdict were not reviewed and are left out (their number is logged)."""
    from .review import read_review_tables, verdict_label

    rows = read_review_tables(paths)
    known = set(classes or []) | set(rows["species"]) | {reject_class}
    labels = [verdict_label(v, s, known, reject_class, f"{printable(t)}, {r}")
              for v, s, t, r in zip(rows["verdict"], rows["species"], rows["table"], rows["row_name"])]
    rows["label"] = labels
    reviewed = rows[rows["label"].notna()].copy()
    if len(reviewed) < len(rows):
        logger.info("%d of %d rows have no verdict yet and are left out", len(rows) - len(reviewed), len(rows))
    reviewed["correct"] = reviewed["label"] == reviewed["species"]
    # per species, how many of its highest-scoring rows in the tables carry a verdict, counted
    # from the top down to the first without one (switched_off needs the top ones reviewed)
    top = {sp: int(np.argmin(np.append(g.sort_values("score", ascending=False, kind="mergesort")["label"].notna()
                                                 .to_numpy(), False)))
           for sp, g in rows.groupby("species")}
    reviewed["top_reviewed"] = reviewed["species"].map(top).astype(int)
    return reviewed.reset_index(drop=True)


def verdicts_from_truth(scan_dir: str | Path, truth: list[str | Path], label_column: str = "Species") -> pd.DataFrame:
    """Verdicts from a scan and truth tables (files, or folders of ``*.selections.txt``): each
    detection in a recording with a truth table is correct when it matches a truth selection
    (``event_eval.match_events``), else wrong. Detections in recordings without a truth table
    are left out: nobody knows whether they are right."""
    from .event_eval import find_truth_tables, match_events, read_truth, truth_by_recording
    from .scan_run import recording_pairs
    from .writers import read_parquet

    scan_dir = Path(scan_dir)
    events = read_parquet(scan_dir / "detections.parquet") if scan_dir.is_dir() else read_parquet(scan_dir)
    if scan_dir.is_file():
        scan_dir = scan_dir.parent
    names = sorted({name for name, _ in recording_pairs(events, scan_dir)} | set(events["recording"]))
    by_recording = truth_by_recording(find_truth_tables(truth), names)
    frames = []
    for rec, table in sorted(by_recording.items()):
        dets = events[events["recording"] == rec].reset_index(drop=True)
        hits = {i for i, _ in match_events(dets, read_truth(table, label_column))}
        frames.append(pd.DataFrame({"species": dets["species"].astype(str), "score": dets["peak_score"].astype(float),
                                    "weight": 1.0, "correct": [i in hits for i in range(len(dets))],
                                    "table": str(table), "row": np.arange(1, len(dets) + 1)}))
    left_out = int((~events["recording"].isin(by_recording)).sum())
    if left_out:
        logger.info("%d detection(s) in recordings without a truth table are left out", left_out)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["species", "score", "weight", "correct", "table", "row"])


# ---- the fit ------------------------------------------------------------------------------------
def _logit(scores: np.ndarray) -> np.ndarray:
    s = np.clip(np.asarray(scores, dtype=float), SCORE_EPS, 1 - SCORE_EPS)
    return np.log(s / (1 - s))


def fit_curve(scores: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of P(correct | score) = sigmoid(intercept + slope * logit(score))."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C_LOGISTIC, solver="newton-cholesky").fit(_logit(scores)[:, None], np.asarray(correct, dtype=int))
    return float(model.intercept_[0]), float(model.coef_[0, 0])


def predict(scores: np.ndarray, intercept: float, slope: float) -> np.ndarray:
    """The fitted P(correct | score)."""
    return 1.0 / (1.0 + np.exp(-(intercept + slope * _logit(scores))))


def precision_above(scores: np.ndarray, values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct scores t, weighted mean of ``values`` over verdicts scoring >= t)."""
    scores, values, weights = (np.asarray(a, dtype=float) for a in (scores, values, weights))
    order = np.argsort(-scores, kind="mergesort")  # descending: a prefix is every verdict above a score
    cum_v, cum_w = np.cumsum(values[order] * weights[order]), np.cumsum(weights[order])
    t = np.unique(scores)
    k = len(scores) - np.searchsorted(np.sort(scores), t, side="left")  # verdicts scoring >= each t
    return t, cum_v[k - 1] / cum_w[k - 1]


def _fitted(score: float) -> float:
    """A reviewed score as a threshold: rounded down to 4 decimals, and below 1, which means
    "off" (events.passing): a threshold fitted at a saturated score of 1.0 must still report it."""
    return min(math.floor(score * 1e4) / 1e4, OFF_THRESHOLD - 1e-4)


def threshold_for(scores: np.ndarray, correct: np.ndarray, weights: np.ndarray, target: float) -> tuple[float | None, float, float, float]:
    """(threshold or None, intercept, slope, fitted precision at it) for one set of verdicts."""
    intercept, slope = fit_curve(scores, correct)
    if slope <= 0:
        return None, intercept, slope, float("nan")
    t, prec = precision_above(scores, predict(scores, intercept, slope), weights)
    ok = np.flatnonzero(prec >= target)
    if ok.size == 0:
        return None, intercept, slope, float(prec.max())
    return _fitted(float(t[ok[0]])), intercept, slope, float(prec[ok[0]])


def need_message(species: str, n: int, yes: int, no: int, options: CalibrationOptions) -> str | None:
    """Why there are too few verdicts for ``species`` and how many more are needed, or None."""
    more_n, more_yes, more_no = max(0, options.min_verdicts - n), max(0, options.min_each - yes), max(0, options.min_each - no)
    if not (more_n or more_yes or more_no):
        return None
    parts = [f"{more_n} more verdict(s)"] if more_n else []
    parts += [f"{more_yes} more correct ('yes')"] if more_yes else []
    parts += [f"{more_no} more wrong ('no' or another species)"] if more_no else []
    return (f"{species}: only {n} verdict(s) ({yes} correct, {no} wrong); a threshold needs at least "
            f"{options.min_verdicts} with {options.min_each} of each, so review at least " + ", ".join(parts)
            + " (review more of its detections: review --per-bin N or --all; or add truth for more recordings); "
            "no threshold written")


def precision_upper_bound(n_wrong: int) -> float:
    """One-sided 95 % upper confidence bound on P(correct) when none of ``n_wrong`` verdicts is
    correct: the p at which seeing no correct verdict in n has probability 0.05 (exact binomial,
    (1 - p)**n = 0.05; about 3/n, the "rule of three")."""
    return 1.0 - 0.05 ** (1.0 / n_wrong)


def wrong_needed(options: CalibrationOptions) -> int:
    """How many of a species' highest-scoring detections must all be wrong to switch it off: the
    fewest k >= ``min_each`` whose bound, precision_upper_bound(k), is below the target."""
    k = options.min_each
    while precision_upper_bound(k) >= options.precision:
        k += 1
    return k


def switched_off(species: str, scores: np.ndarray, yes: int, top_reviewed: int,
                 options: CalibrationOptions) -> dict[str, Any] | None:
    """The record of a species switched off (threshold 1), or None when the rule does not apply.

    The rule: no verdict is correct, and the verdicts include the species' k highest-scoring
    detections in the review (``top_reviewed`` >= k = ``wrong_needed``). Then every threshold
    that keeps k or more of the reviewed detections keeps only wrong ones, so its precision is
    below precision_upper_bound(k) (95 %), under the target. Why the highest-scoring ones: wrong
    verdicts on low scores alone say nothing about the detections a higher threshold would keep
    (a reviewer who filled in only a table's first rows, sorted by score, saw those)."""
    k = wrong_needed(options)
    if not options.switch_off or yes or top_reviewed < k:
        return None
    bound = precision_upper_bound(k)
    n = len(scores)
    return {"method": SWITCH_OFF_METHOD, "threshold": OFF_THRESHOLD, "switched_off": True,
            "precision_upper_95": round(bound, 4), "highest_reviewed": int(top_reviewed),
            "reason": f"{species}: none of {n} verdicts is correct, its {top_reviewed} highest-scoring detections in the "
                      f"review included (scores {scores.min():.2f}-{scores.max():.2f}): at any threshold that keeps {k} "
                      f"or more of them its precision is below {bound:.2f} (95 % upper bound), under the target "
                      f"{options.precision}: switched off (threshold 1, never reported). If it does occur at this "
                      "site, review more of its detections, or delete its line under 'thresholds:'"}


def calibrate_species(species: str, verdicts: pd.DataFrame, options: CalibrationOptions) -> dict[str, Any]:
    """The fitted record of one species (see the module docstring); ``threshold`` is None, with a
    ``reason``, when there are too few verdicts or the target cannot be reached, and 1 (``off``,
    with a ``reason``) when no verdict is correct and that rules the target out."""
    s = verdicts["score"].to_numpy(float)
    y = verdicts["correct"].to_numpy(bool)
    w = verdicts["weight"].to_numpy(float)
    n, yes = len(y), int(y.sum())
    record: dict[str, Any] = {"n": n, "positives": yes, "negatives": n - yes, "method": METHOD,
                              "target_precision": options.precision}
    top = int(verdicts["top_reviewed"].iloc[0]) if "top_reviewed" in verdicts.columns else n
    off = switched_off(species, s, yes, top, options)
    if off:
        return record | off
    reason = need_message(species, n, yes, n - yes, options)
    if reason:
        if options.switch_off and not yes:
            reason += (f"; if it does not occur at this site, fill in the verdicts of its {wrong_needed(options)} "
                       "highest-scoring detections: if all are wrong, it is switched off")
        return record | {"threshold": None, "reason": reason}
    t, intercept, slope, fitted_prec = threshold_for(s, y, w, options.precision)
    record |= {"intercept": round(intercept, 6), "slope_logit": round(slope, 6)}
    if t is None:
        why = ("scores do not rise with correctness (fitted slope <= 0)" if slope <= 0 else
               f"even the top-scored detections reach only a fitted precision of {fitted_prec:.3f}")
        return record | {"threshold": None, "reason": f"{species}: target precision {options.precision} not reachable: "
                                                      f"{why}; no threshold written"}
    keep = s >= t
    empirical = float(np.sum(w * y * keep) / np.sum(w * keep))
    record |= {"threshold": t, "precision_fitted": round(fitted_prec, 4), "precision_empirical": round(empirical, 4),
               "lost_true_reviewed": round(float(np.sum(y & ~keep) / yes), 4),
               "lost_true_estimated": round(float(np.sum(w * y * ~keep) / np.sum(w * y)), 4)}
    if options.bootstrap:
        rng = np.random.default_rng([options.seed, zlib.crc32(species.encode())])
        found, unreachable = [], 0
        for _ in range(options.bootstrap):
            idx = rng.integers(0, n, n)
            if not y[idx].any():  # all wrong: no threshold reaches the target
                unreachable += 1
                continue
            if y[idx].all():  # all correct: no curve to fit; every threshold reaches the target
                found.append(_fitted(float(s[idx].min())))
                continue
            tb = threshold_for(s[idx], y[idx], w[idx], options.precision)[0]
            if tb is None:
                unreachable += 1
            else:
                found.append(tb)
        lo, hi = (np.percentile(found, [2.5, 97.5]) if found else (float("nan"), float("nan")))
        record["interval"] = [round(float(lo), 4), round(float(hi), 4)]
        record["bootstrap"] = {"resamples": options.bootstrap, "seed": options.seed, "unreachable": unreachable}
        if unreachable > 0.025 * options.bootstrap:
            logger.warning("%s: in %d of %d bootstrap resamples the target precision is not reachable: the threshold "
                           "is uncertain; review more detections", species, unreachable, options.bootstrap)
    return record


def calibrate(verdicts: pd.DataFrame, options: CalibrationOptions | None = None) -> dict[str, dict[str, Any]]:
    """Fitted records per species (sorted), as ``calibrate_species``."""
    options = options or CalibrationOptions()
    return {str(sp): calibrate_species(str(sp), rows, options)
            for sp, rows in verdicts.groupby("species", sort=True)}


# ---- outputs ------------------------------------------------------------------------------------
def write_thresholds(fitted: dict[str, dict[str, Any]], path: str | Path, source: str) -> Path:
    """thresholds.yaml: ``thresholds:`` (species -> threshold, only species that got one) and
    ``fitted:`` (how each was fitted, or why it got none). ``scan``/``detect --thresholds-file``
    read the first block."""
    import yaml

    path = Path(path)
    doc = {"thresholds": {sp: r["threshold"] for sp, r in fitted.items() if r.get("threshold") is not None},
           "fitted": fitted}
    header = (f"# primate-monitor calibrate, from {source}\n"
              "# thresholds: species -> the peak score a detection needs (scan/detect --thresholds-file);\n"
              "#   1 switches a species off (no reviewed detection of it was correct)\n"
              "# fitted: how each was found, or why a species got none\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def plot_calibration(species: str, verdicts: pd.DataFrame, record: dict[str, Any], path: str | Path,
                     n_bins: int = 8) -> Path:
    """Reviewed share correct in equal-count score bins (with ±1 binomial s.e.), the fitted curve,
    the fitted precision above each score, and the threshold with its interval."""
    from .plots import plt, save_figure

    s, y = verdicts["score"].to_numpy(float), verdicts["correct"].to_numpy(float)
    fig, ax = plt.subplots(figsize=(6, 4))
    order = np.argsort(s)
    for chunk in np.array_split(order, min(n_bins, max(1, len(s) // 3))):
        if chunk.size:
            p = y[chunk].mean()
            ax.errorbar(s[chunk].mean(), p, yerr=math.sqrt(p * (1 - p) / chunk.size), fmt="o", color="black",
                        capsize=3)
    ax.plot([], [], "o", color="black", label="share correct, binned verdicts (±1 s.e.)")
    if "slope_logit" in record:
        grid = np.linspace(max(SCORE_EPS, s.min() - 0.02), min(1 - SCORE_EPS, s.max() + 0.02), 200)
        ax.plot(grid, predict(grid, record["intercept"], record["slope_logit"]), color="C0", label="fitted P(correct | score)")
        t, prec = precision_above(s, predict(s, record["intercept"], record["slope_logit"]), verdicts["weight"].to_numpy(float))
        ax.step(t, prec, where="post", color="C1", ls="--", label="fitted precision at or above")
    if record.get("switched_off"):
        ax.axvline(OFF_THRESHOLD, color="C3", label="switched off (threshold 1)")
        ax.axhline(record["precision_upper_95"], color="C1", ls="--",
                   label=f"95 % upper bound on precision ({record['precision_upper_95']:.2f})")
    elif record.get("threshold") is not None:
        ax.axvline(record["threshold"], color="C3", label=f"threshold {record['threshold']:.3f}")
        if "interval" in record and all(np.isfinite(record["interval"])):
            ax.axvspan(*record["interval"], color="C3", alpha=0.15, label="95 % bootstrap interval")
    ax.axhline(record["target_precision"], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("detection score (peak)")
    ax.set_ylabel("P(correct)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{species}: {record['n']} verdicts, {record['positives']} correct"
                 + (" (switched off)" if record.get("switched_off") else "" if record.get("threshold") is not None
                    else " (no threshold)"))
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def calibrate_to_files(verdicts: pd.DataFrame, out_yaml: str | Path, options: CalibrationOptions | None = None,
                       plots_dir: str | Path | None = None, source: str = "") -> dict[str, dict[str, Any]]:
    """Fit every species, write thresholds.yaml and one calibration PNG per species
    (``plots_dir``, default ``<yaml folder>/calibration``); returns the fitted records."""
    from .review import _file_part

    options = options or CalibrationOptions()
    if verdicts.empty:
        raise ValueError("no verdicts: fill in the Verdict column of the review tables (yes, no or a species)")
    fitted = calibrate(verdicts, options)
    plots = Path(plots_dir) if plots_dir is not None else Path(out_yaml).parent / "calibration"
    plots.mkdir(parents=True, exist_ok=True)
    for species, record in fitted.items():
        png = plots / f"{_file_part(species)}.png"
        plot_calibration(species, verdicts[verdicts["species"] == species], record, png)
        record["plot"] = str(png)
    write_thresholds(fitted, out_yaml, source)
    return fitted


def set_thresholds(checkpoint: str | Path, thresholds: dict[str, float], dest: str | Path,
                   overwrite: bool = False) -> Path:
    """Write a copy of ``checkpoint`` whose metadata carries ``thresholds`` (safetensors + JSON
    sidecar, atomically); ``scan --model dest`` then uses them unless told otherwise.

    Why a copy: the original's thresholds (or their absence) stay available, and its sha256,
    stored with every detection it made, keeps naming the same file."""
    from dataclasses import replace

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .checkpoint import CheckpointError, ModelInfo, read_metadata, save_checkpoint

    checkpoint, dest = Path(checkpoint), Path(dest)
    if dest.suffix != ".safetensors":
        # the JSON sidecar goes to dest.with_suffix(".json"): "-o w.json" would write the weights
        # and then the sidecar over them, "-o best.calibrated" would replace best.json
        raise ValueError(f"{dest}: the new checkpoint's name must end in .safetensors "
                         f"(its metadata goes beside it as {dest.stem}.json)")
    if dest.resolve() == checkpoint.resolve():
        raise ValueError(f"{dest}: set-thresholds writes a copy; give another -o than the checkpoint itself")
    sidecar = dest.with_suffix(".json")
    if sidecar.resolve() == checkpoint.with_suffix(".json").resolve():
        raise ValueError(f"{dest}: its metadata would replace {sidecar}, the original checkpoint's; give another -o")
    existing = [str(p) for p in (dest, sidecar) if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"{' and '.join(existing)} already exist(s); pass --overwrite to replace, or give another -o")
    info = ModelInfo.from_dict(read_metadata(checkpoint), str(checkpoint))
    species = [c for c in info.classes if c != info.reject_class]
    unknown = sorted(set(thresholds) - set(species))
    if unknown:
        raise ValueError(f"thresholds for {unknown}, which are not species of {checkpoint} ({species})")
    try:
        tensors = load_file(str(checkpoint), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{checkpoint}: cannot read weights: {e}") from e
    written = save_checkpoint(dest, tensors, replace(info, thresholds=dict(thresholds)))
    from .quantize import copy_calibration

    copy_calibration(checkpoint, written)  # same weights, so the same int8 calibration (if there is one)
    return written
