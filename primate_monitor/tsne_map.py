"""A 2-D t-SNE map of embeddings coloured by label (the paper's §5 figure).

scikit-learn's ``TSNE`` (Barnes-Hut) after a PCA to at most 50 dimensions, the usual
recipe: PCA removes noise dimensions and makes t-SNE faster. Large files are subsampled
(seeded, the same share of every label) so the map stays quick to draw and to read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .data import DataError
from .embed import read_embeddings

logger = logging.getLogger(__name__)

PCA_DIMS = 50
UNLABELLED_NAME = "(unlabelled)"


def tsne_coordinates(x: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """(n, 2) t-SNE coordinates; the perplexity is lowered for small sets (it must be < n)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(x)
    if n < 5:
        raise DataError(f"a t-SNE map needs at least 5 embeddings, got {n}")
    dims = min(PCA_DIMS, n, x.shape[1])
    reduced = PCA(n_components=dims, random_state=seed).fit_transform(x) if x.shape[1] > dims else x
    perplexity = min(perplexity, (n - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)


def _subsample(rows: pd.DataFrame, max_points: int, seed: int) -> np.ndarray:
    """Indices of at most ``max_points`` rows, the same fraction from every label."""
    if len(rows) <= max_points:
        return np.arange(len(rows))
    frac = max_points / len(rows)
    rng = np.random.default_rng(seed)
    keep = []
    for idx in rows.groupby(rows["label"].fillna(UNLABELLED_NAME)).indices.values():
        keep.append(rng.choice(idx, size=max(1, round(len(idx) * frac)), replace=False))
    return np.sort(np.concatenate(keep))


def tsne_map(embeddings: str | Path, out_png: str | Path, split: str | None = None, max_points: int = 5000,
             perplexity: float = 30.0, seed: int = 0) -> Path:
    """Draw the map of an embeddings file (rows of ``split`` only, if given) to ``out_png``.
    Colour is the label; the marker is the split (train ●, devel ×, others ▲)."""
    from .plots import plt, save_figure

    rows, x, meta = read_embeddings(embeddings)
    if split is not None:
        keep = (rows["split"] == split).to_numpy()
        if not keep.any():
            raise DataError(f"{embeddings}: no rows in split {split!r}")
        rows, x = rows[keep].reset_index(drop=True), x[keep]
    chosen = _subsample(rows, max_points, seed)
    if len(chosen) < len(rows):
        logger.info("t-SNE on %d of %d embeddings (--max-points)", len(chosen), len(rows))
    rows, x = rows.iloc[chosen].reset_index(drop=True), x[chosen]
    xy = tsne_coordinates(x, perplexity, seed)
    labels = rows["label"].fillna(UNLABELLED_NAME)
    names = sorted(set(labels) - {UNLABELLED_NAME}) + ([UNLABELLED_NAME] if (labels == UNLABELLED_NAME).any() else [])
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    markers = {"train": "o", "devel": "x"}
    fig, ax = plt.subplots(figsize=(8, 7))
    for i, name in enumerate(names):
        colour = (0.6, 0.6, 0.6, 0.6) if name == UNLABELLED_NAME else cmap(i % cmap.N)
        mine = (labels == name).to_numpy()
        first_split = min(rows.loc[mine, "split"].fillna("").unique())
        for split_name in sorted(rows["split"].fillna("").unique()):
            sel = mine & (rows["split"].fillna("") == split_name).to_numpy()
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=14, color=colour, marker=markers.get(split_name, "^"),
                           label=name if split_name == first_split else None)
    ax.legend(loc="best", fontsize=8, markerscale=1.5)
    ax.set_xticks([])
    ax.set_yticks([])
    splits = ", ".join(f"{s}: {markers.get(s, '^')}" for s in sorted(rows["split"].dropna().unique()))
    model = (meta.get("checkpoint") or {}).get("name", "?")
    ax.set_title(f"t-SNE of {len(rows)} {model} embeddings" + (f" ({splits})" if splits else ""))
    return save_figure(fig, out_png)
