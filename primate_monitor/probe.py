"""Linear probes on embeddings (the paper's §5): a linear SVM or a logistic regression on
the penultimate layer of a frozen network, saved as a full scanning checkpoint.

A probe is one linear layer on the embedding, which is exactly what the network's own
output layer is; so the probe checkpoint is the embedding checkpoint's weights with the
output layer replaced (and as many outputs as the probe has classes). ``scan --model``,
``evaluate`` and ``info`` take it like any other checkpoint, and the fast scan path works.

Scores must be in [0, 1] for thresholds, and independent per class as the sigmoid-trained
network's are (two species can call in one window). Both kinds are therefore one-vs-rest
with a per-class sigmoid, stored with ``activation: sigmoid``:

- ``logreg``: per class, a logistic regression (``class_weight='balanced'``) of that class
  against the rest; its sigmoid *is* the model's probability.
- ``svm``: per class, a ``LinearSVC`` against the rest (what LinearSVC's own one-vs-rest
  does), then Platt scaling: a 1-D logistic regression of the class on the SVM's
  *out-of-fold* decision values (``cross_val_predict``), so the calibration never sees a
  margin the SVM was fitted on. ``sigmoid(a * (w.x + b) + c)`` is again one linear layer.
  Unlike ``CalibratedClassifierCV``, the per-class probabilities are not renormalised to
  sum to one, and the result is one linear layer rather than an average of several.

Features are standardised (``StandardScaler``) before fitting, and the scaling is folded
into the layer's weights, so the checkpoint needs no extra step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from . import __version__
from .checkpoint import CheckpointError, ModelInfo, file_sha256, read_metadata, read_tensors, save_checkpoint
from .data import DataError
from .embed import read_embeddings
from .fsutil import ensure_output_dir, write_csv, write_json
from .metrics import classification_metrics
from .models import create_model

logger = logging.getLogger(__name__)

KINDS = ("logreg", "svm")
PROBE_FILE = "probe.safetensors"
PLATT_FOLDS = 5  # at most; fewer when a class has fewer training clips


@dataclass
class LinearProbe:
    """``scores = sigmoid(x @ weight.T + bias)`` on raw embeddings, one row per class."""

    classes: list[str]
    weight: np.ndarray  # (classes, dim) float32
    bias: np.ndarray  # (classes,) float32

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(n, classes) scores in [0, 1]."""
        z = np.asarray(x, dtype=np.float64) @ self.weight.T.astype(np.float64) + self.bias.astype(np.float64)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def _folds(y: np.ndarray, name: str) -> int:
    smallest = int(min(y.sum(), (~y).sum()))
    if smallest < 2:
        raise DataError(f"class {name!r} has {int(y.sum())} training embedding(s): the SVM's Platt calibration needs "
                        "at least 2 of it and 2 of the other classes (or use --kind logreg)")
    return min(PLATT_FOLDS, smallest)


def fit_probe(x: np.ndarray, labels: list[str], kind: str = "logreg", c: float = 1.0, seed: int = 0) -> LinearProbe:
    """Fit a one-vs-rest linear probe on (n, dim) embeddings; classes are the sorted labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if kind not in KINDS:
        raise ValueError(f"probe kind must be one of {KINDS}, got {kind!r}")
    if not c > 0:
        raise ValueError(f"C must be positive, got {c}")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DataError(f"the training embeddings have only the class(es) {classes}; a probe needs at least two")
    labels_arr = np.asarray(labels)
    scaler = StandardScaler().fit(x)
    xs = scaler.transform(x)
    weights, biases = [], []
    for name in classes:
        y = labels_arr == name
        if kind == "logreg":
            model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(xs, y)
            w, b = model.coef_[0], float(model.intercept_[0])
        else:
            svm = LinearSVC(C=c, max_iter=20000, random_state=seed)
            cv = StratifiedKFold(_folds(y, name), shuffle=True, random_state=seed)
            margins = cross_val_predict(svm, xs, y, cv=cv, method="decision_function")
            platt = LogisticRegression(C=1e4, max_iter=1000).fit(margins[:, None], y)
            a, c0 = float(platt.coef_[0, 0]), float(platt.intercept_[0])
            if a <= 0:
                logger.warning("class %r: the SVM's out-of-fold margins do not rank it above the rest "
                               "(Platt slope %.3g); its scores will be near constant", name, a)
            svm.fit(xs, y)
            w, b = a * svm.coef_[0], a * float(svm.intercept_[0]) + c0
        weights.append(w)
        biases.append(b)
    w_std, b_std = np.array(weights), np.array(biases)
    # fold the standardisation into the layer: w.(x - mean)/scale + b
    weight = w_std / scaler.scale_
    bias = b_std - weight @ scaler.mean_
    return LinearProbe(classes, weight.astype(np.float32), bias.astype(np.float32))


def output_layer_name(network: nn.Module, num_classes: int, embedding_dim: int) -> str:
    """The state-dict prefix of the network's output layer: its one Linear from the
    embedding to the classes (``head.fc_out`` for the PANNs heads, ``fc_out`` for WRN)."""
    found = [name for name, m in network.named_modules()
             if isinstance(m, nn.Linear) and m.in_features == embedding_dim and m.out_features == num_classes]
    if len(found) != 1:
        raise CheckpointError(f"cannot tell the output layer of {type(network).__name__} "
                              f"(Linear {embedding_dim} -> {num_classes} layers: {found})")
    return found[0]


def probe_checkpoint(base_path: str | Path, probe: LinearProbe, out_path: str | Path, reject_class: str | None = None,
                     probe_meta: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                     data_summary: dict[str, Any] | None = None) -> Path:
    """Write a full checkpoint: ``base_path``'s weights (in their stored dtype) with the output
    layer replaced by the probe (float32). Its metadata is the base's, with the probe's
    classes, ``activation: sigmoid`` and ``config.probe`` describing the head."""
    base_path = Path(base_path)
    base = ModelInfo.from_dict(read_metadata(base_path), str(base_path))
    tensors = read_tensors(base_path)
    network = create_model(base.model, len(probe.classes))
    if probe.weight.shape[1] != network.embedding_dim:
        raise CheckpointError(f"{base_path}: a {base.model} embeds in {network.embedding_dim} dimensions, "
                              f"but the probe was fitted on {probe.weight.shape[1]}")
    layer = output_layer_name(network, len(probe.classes), network.embedding_dim)
    import torch

    tensors[f"{layer}.weight"] = torch.from_numpy(probe.weight.astype(np.float32))
    tensors[f"{layer}.bias"] = torch.from_numpy(probe.bias.astype(np.float32))
    expected = set(network.state_dict())
    if set(tensors) != expected:
        raise CheckpointError(f"{base_path}: weights do not match a {base.model} "
                              f"(missing {sorted(expected - set(tensors))[:3]}, extra {sorted(set(tensors) - expected)[:3]})")
    reject = reject_class or base.reject_class
    if reject not in probe.classes:
        logger.warning("reject class %r is not among the probe's classes %s: every window will be called a species",
                       reject, probe.classes)
    info = ModelInfo(model=base.model, classes=tuple(probe.classes), reject_class=reject, activation="sigmoid",
                     frontend=base.frontend, clip_seconds=base.clip_seconds,
                     config=dict(base.config) | {"probe": probe_meta or {}}, metrics=metrics or {},
                     data_summary=data_summary or {}, version=__version__)
    return save_checkpoint(out_path, tensors, info)


def _resolve_base(meta: dict[str, Any], checkpoint: str | Path | None, source: Path) -> Path:
    """The embedding checkpoint: ``checkpoint`` if given, else the path recorded in the
    embeddings file; its sha256 must match the one recorded (the trunk must be the same)."""
    recorded = meta.get("checkpoint") or {}
    path = Path(checkpoint) if checkpoint is not None else Path(recorded.get("path", ""))
    if not recorded.get("sha256"):
        raise DataError(f"{source}: embeddings file records no checkpoint (made by `primate-monitor embed`?)")
    if not path.is_file():
        raise CheckpointError(f"{path}: the checkpoint the embeddings were made with is not there; pass --checkpoint")
    digest = file_sha256(path)
    if digest != recorded["sha256"]:
        raise CheckpointError(f"{path}: sha256 {digest[:12]} is not that of the checkpoint the embeddings in {source} "
                              f"were made with ({recorded['sha256'][:12]}, {recorded.get('name')})")
    return path


def train_probe(embeddings: str | Path, out_dir: str | Path, kind: str = "logreg", c: float = 1.0,
                train_split: str = "train", devel_split: str = "devel", checkpoint: str | Path | None = None,
                reject_class: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Fit a probe on the ``train_split`` rows of an embeddings file, report it on
    ``devel_split`` like ``evaluate`` (metrics.json, predictions.csv, confusion matrix), and
    write ``out_dir/probe.safetensors``, a full scanning checkpoint. Returns a summary."""
    source = Path(embeddings)
    rows, x, meta = read_embeddings(source)
    labelled = rows["label"].notna().to_numpy()
    train = labelled & (rows["split"] == train_split).to_numpy()
    if not train.any():
        raise DataError(f"{source}: no labelled rows in split {train_split!r} (splits: {sorted(rows['split'].dropna().unique())})")
    base_path = _resolve_base(meta, checkpoint, source)
    out = ensure_output_dir(out_dir)
    probe = fit_probe(x[train], rows.loc[train, "label"].tolist(), kind, c, seed)
    summary_counts = {s: {str(k): int(v) for k, v in rows[labelled & (rows["split"] == s).to_numpy()]["label"].value_counts().sort_index().items()}
                      for s in (train_split, devel_split)}
    devel = labelled & (rows["split"] == devel_split).to_numpy()
    metrics = None
    if devel.any():
        metrics = _report(probe, rows[devel], x[devel], out, devel_split, kind)
    else:
        logger.warning("%s: no labelled rows in split %r: the probe is not evaluated", source, devel_split)
    probe_meta = {"kind": kind, "C": c, "seed": seed, "embeddings": str(source.resolve()),
                  "base_checkpoint": {k: (meta.get("checkpoint") or {}).get(k) for k in ("name", "path", "sha256")},
                  "scores": "one-vs-rest sigmoid per class" + (", Platt-calibrated on out-of-fold SVM margins" if kind == "svm" else ""),
                  "train_split": train_split, "devel_split": devel_split}
    path = probe_checkpoint(base_path, probe, out / PROBE_FILE, reject_class, probe_meta,
                            {devel_split: metrics} if metrics else {}, summary_counts)
    return {"checkpoint": path, "classes": probe.classes, "metrics": metrics, "train_rows": int(train.sum()),
            "devel_rows": int(devel.sum())}


def _report(probe: LinearProbe, rows: pd.DataFrame, x: np.ndarray, out: Path, split: str, kind: str) -> dict[str, Any]:
    from .plots import plot_confusion

    unknown = sorted(set(rows["label"]) - set(probe.classes))
    if unknown:
        raise DataError(f"split {split!r} has label(s) {unknown} with no training embedding; probe classes are {probe.classes}")
    scores = probe.scores(x)
    y_true = np.array([probe.classes.index(label) for label in rows["label"]])
    metrics = classification_metrics(y_true, scores, probe.classes)
    metrics |= {"split": split, "kind": kind}
    predictions = pd.DataFrame({"recording": rows["recording"].to_numpy(), "begin_s": rows["begin_s"].to_numpy(),
                                "label": rows["label"].to_numpy(),
                                "predicted": [probe.classes[k] for k in scores.argmax(axis=1)]})
    for k, name in enumerate(probe.classes):
        predictions[f"score_{name}"] = np.round(scores[:, k], 6)
    write_csv(predictions, out / "predictions.csv")
    write_json(out / "metrics.json", metrics)
    cm = pd.DataFrame(metrics["confusion"], index=pd.Index(probe.classes, name="true"), columns=probe.classes)
    write_csv(cm, out / "confusion_matrix.csv", index=True)
    plot_confusion(np.array(metrics["confusion"]), probe.classes, out / "confusion_matrix.png",
                   f"{kind} probe on {split}: UAR {100 * metrics['uar']:.1f} %")
    return metrics
