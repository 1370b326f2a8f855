"""Pictures people would rather see than read: confusion matrices and detection timelines."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .fsutil import atomic_write  # noqa: E402


def row_normalised(cm: np.ndarray) -> np.ndarray:
    """Percent of each true class's clips given each predicted label (the paper's Fig. 1)."""
    cm = np.asarray(cm, dtype=float)
    return 100.0 * cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)


def save_figure(fig: "plt.Figure", path: str | Path) -> Path:
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_confusion(cm: np.ndarray, classes: list[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with class names on both axes and % in each cell."""
    pct = row_normalised(cm)
    size = 1.0 + 0.9 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{pct[i, j]:.1f}", ha="center", va="center", color="white" if pct[i, j] > 50 else "black")
    fig.colorbar(image, ax=ax, label="% of true class")
    ax.set_title(title or "confusion matrix (row-normalised %)")
    return save_figure(fig, path)
