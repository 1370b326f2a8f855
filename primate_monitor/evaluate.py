"""Clip-level evaluation of a checkpoint on one split of a labelled data set.

A clip longer than the model's window is scored every ``hop`` seconds and its score for
each class is the maximum over those windows (so a call anywhere in it counts); a
shorter clip is padded to one window by the rule the model was trained with (``padding``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .checkpoint import LoadedModel
from .clipaudio import decode_clips, model_padding  # model_padding: also imported from here by embed
from .config import TrainConfig, from_dict
from .data import UNLABELLED, DataError, load_splits
from .frontend import LogMel
from .fsutil import ensure_output_dir, write_csv, write_json
from .metrics import classification_metrics
from .plots import plot_confusion
from .predict import score_clips
from .windows import hop_samples

logger = logging.getLogger(__name__)


def _data_config(model: LoadedModel, overrides: dict[str, Any]) -> TrainConfig:
    """The data settings the model was trained with, less those that name the training run."""
    saved = {k: v for k, v in model.info.config.items() if k in TrainConfig.__dataclass_fields__}
    config = from_dict(saved, source=str(model.path))
    return replace(config, **overrides)


def evaluate(
    model: LoadedModel, data_root: str | Path, split: str, out_dir: str | Path,
    hop_seconds: float = 1.0, skip_bad: bool = False, data_overrides: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Score every clip of ``split``; write predictions.csv and, when the split is labelled,
    metrics.json and confusion_matrix.csv/.png. Returns the metrics (None for an unlabelled split)."""
    info = model.info
    hop_samples(hop_seconds, info.sample_rate)  # checked before any clip is decoded
    out = ensure_output_dir(out_dir)
    config = _data_config(model, {"skip_bad": skip_bad, "cache_dir": None} | (data_overrides or {}))
    splits = load_splits(data_root, replace(config, devel_split=split))
    clips = splits.get(split, [])
    if not clips:
        raise DataError(f"{data_root}: split {split!r} is missing or empty")
    unknown = sorted({c.label for c in clips} - set(info.classes) - {UNLABELLED})
    if unknown:
        bad = next(c for c in clips if c.label in unknown)
        raise DataError(f"{bad.path}: label {bad.label!r} is not one of the model's classes {list(info.classes)}")
    good, audio, failed = decode_clips(clips, info.sample_rate, None, config.workers, skip_bad)
    if failed:
        write_csv(pd.DataFrame([(str(c.path), r) for c, r in failed], columns=["path", "reason"]), out / "skipped_clips.csv")
    device = model.device
    frontend = LogMel(info.frontend).to(device)
    clip_samples = round(info.clip_seconds * info.sample_rate)
    scores = score_clips(model.network, frontend, audio, clip_samples, round(hop_seconds * info.sample_rate), info.activation,
                         padding=model_padding(model))
    predictions = pd.DataFrame({"filename": [c.name for c in good], "label": [c.label for c in good],
                                "predicted": [info.classes[k] for k in scores.argmax(axis=1)]})
    for k, name in enumerate(info.classes):
        predictions[f"score_{name}"] = np.round(scores[:, k], 6)
    write_csv(predictions, out / "predictions.csv")
    labelled = [i for i, c in enumerate(good) if c.label != UNLABELLED]
    if not labelled:
        logger.info("split %r is unlabelled: wrote predictions only", split)
        return None
    if len(labelled) < len(good):
        logger.warning("%d clip(s) labelled %r left out of the metrics", len(good) - len(labelled), UNLABELLED)
    y_true = np.array([info.classes.index(good[i].label) for i in labelled])
    metrics = classification_metrics(y_true, scores[labelled], list(info.classes))
    if metrics["classes_without_support"]:
        logger.warning("split %r has no clip of class(es) %s: UAR and mAP are averaged over %d of %d classes",
                       split, ", ".join(metrics["classes_without_support"]),
                       len(info.classes) - len(metrics["classes_without_support"]), len(info.classes))
    metrics |= {"split": split, "checkpoint": str(model.path), "model": model.name, "hop_seconds": hop_seconds,
                "skipped": len(failed)}
    write_json(out / "metrics.json", metrics)
    cm = pd.DataFrame(metrics["confusion"], index=pd.Index(info.classes, name="true"), columns=list(info.classes))
    write_csv(cm, out / "confusion_matrix.csv", index=True)
    plot_confusion(np.array(metrics["confusion"]), list(info.classes), out / "confusion_matrix.png",
                   f"{model.name} on {split}: UAR {100 * metrics['uar']:.1f} %")
    return metrics
