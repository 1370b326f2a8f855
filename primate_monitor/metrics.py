"""Classification metrics of the challenge: UAR (mean per-class recall) and mAP."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(true, predicted) counts."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def average_precision(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as a step function (scikit-learn's definition):
    sum over thresholds of (recall step) × precision. NaN when there is no positive."""
    is_positive = np.asarray(is_positive, dtype=bool)
    n_pos = is_positive.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    s, pos = np.asarray(scores)[order], is_positive[order]
    tp = np.cumsum(pos)
    # a threshold sits at the last of each run of tied scores
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    precision = tp[last] / (last + 1)
    recall = tp[last] / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def classification_metrics(y_true: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """UAR, mAP, accuracy and per-class recall, precision, AP and support.

    ``scores`` is (clips, classes); the prediction is its argmax. Classes without any
    true clip are left out of UAR and mAP (their recall and AP are undefined); they are
    listed under ``classes_without_support`` so that callers can warn that the average
    covers fewer classes than the model has.
    """
    y_true = np.asarray(y_true)
    y_pred = scores.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, len(classes))
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    recall = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    precision = np.where(predicted > 0, np.diag(cm) / np.maximum(predicted, 1), 0.0)
    ap = np.array([average_precision(y_true == k, scores[:, k]) for k in range(len(classes))])
    present = support > 0
    return {
        "uar": float(np.mean(recall[present])),
        "map": float(np.mean(ap[present])),
        "accuracy": float(np.trace(cm) / max(1, cm.sum())),
        "n_clips": int(len(y_true)),
        "classes_without_support": [c for k, c in enumerate(classes) if not present[k]],
        "per_class": {
            c: {
                "recall": None if np.isnan(recall[k]) else float(recall[k]),
                "precision": float(precision[k]),
                "ap": None if np.isnan(ap[k]) else float(ap[k]),
                "support": int(support[k]),
            }
            for k, c in enumerate(classes)
        },
        "confusion": cm.tolist(),
    }
