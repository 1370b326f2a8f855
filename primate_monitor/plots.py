"""Pictures people would rather see than read: confusion matrices and detection timelines."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
# Titles and labels are file names and species names: a "$" in them is text, not TeX math
# (math parsing of "a$b" raises and would stop every plot of a scan).
matplotlib.rcParams["text.parse_math"] = False
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import matplotlib.patches  # noqa: E402

from .fsutil import atomic_write  # noqa: E402

logger = logging.getLogger(__name__)


def row_normalised(cm: np.ndarray) -> np.ndarray:
    """Percent of each true class's clips given each predicted label (the paper's Fig. 1)."""
    cm = np.asarray(cm, dtype=float)
    return 100.0 * cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)


IMAGE_FORMATS = {"png": "png", "pdf": "pdf", "svg": "svg", "jpg": "jpg", "jpeg": "jpg"}


def image_format(path: str | Path) -> str:
    """The image format a figure path asks for, by its suffix (none: PNG). Why: the figure is
    written to a temporary name and renamed, so matplotlib cannot guess the format from the
    name, and ``-o timeline.jpg`` must not get PNG bytes under a .jpg name."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"{path}: cannot write a .{suffix} image; name it .png, .pdf, .svg or .jpg")
    return IMAGE_FORMATS[suffix]


def save_figure(fig: "plt.Figure", path: str | Path) -> Path:
    """Write ``fig`` atomically in the format its name asks for (``image_format``)."""
    path = Path(path)
    fmt = image_format(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight")
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


SPECTROGRAM_MAX_HZ = 8000  # plotted band; primate calls of interest sit below this
MAX_COLUMNS = 6000  # spectrogram columns per figure, so hours-long files stay drawable


def _spectrogram(path: str | Path) -> tuple[np.ndarray, float, float]:
    """(dB, seconds per column, top Hz) of a whole recording, coarse enough to draw."""
    import librosa

    from .audio import load_audio, probe

    info = probe(path)
    sr = min(info.sample_rate, 2 * SPECTROGRAM_MAX_HZ)
    audio = load_audio(path, sr)
    hop = max(256, int(np.ceil(len(audio) / MAX_COLUMNS / 256)) * 256)
    spec = np.abs(librosa.stft(audio, n_fft=1024, hop_length=hop)) ** 2
    return librosa.power_to_db(spec, ref=np.max, top_db=80.0), hop / sr, sr / 2


def plot_detections(recording: str | Path, events: pd.DataFrame, path: str | Path,
                    truth: pd.DataFrame | None = None, title: str = "") -> Path:
    """Spectrogram of a recording with one lane per species below it: detections as solid
    bars labelled with their peak score, truth selections (if given) as hatched bars."""
    db, col_s, top_hz = _spectrogram(recording)
    duration = db.shape[1] * col_s
    species = sorted(set(events["species"]) | (set(truth["species"]) if truth is not None else set()))
    fig, (ax, lanes) = plt.subplots(2, 1, figsize=(14, 4.5 + 0.4 * max(1, len(species))), sharex=True,
                                    gridspec_kw={"height_ratios": [3, max(1, len(species)) * 0.5 + 0.3]})
    ax.imshow(db, origin="lower", aspect="auto", extent=(0, duration, 0, top_hz), cmap="magma")
    ax.set_ylabel("Hz")
    ax.set_title(title or Path(recording).name)
    colours = plt.get_cmap("tab10")
    for i, name in enumerate(species):
        colour = colours(i % 10)
        if truth is not None:
            rows = truth[truth["species"] == name]
            lanes.broken_barh(list(zip(rows["begin_s"], rows["end_s"] - rows["begin_s"])), (i - 0.45, 0.4),
                              facecolors="none", edgecolors=colour, hatch="///")
        rows = events[events["species"] == name]
        lanes.broken_barh(list(zip(rows["begin_s"], rows["end_s"] - rows["begin_s"])), (i + 0.05, 0.4), facecolors=colour)
        for b, e, score in zip(rows["begin_s"], rows["end_s"], rows["peak_score"]):
            ax.add_patch(matplotlib.patches.Rectangle((b, 0), e - b, top_hz * 0.98, fill=False, edgecolor=colour, lw=1.5))
            # one label row per species, so labels of overlapping detections of two species do not collide
            ax.text(b, top_hz * (0.92 - 0.08 * (i % 4)), f"{name} {score:.2f}", color="white", fontsize=8,
                    backgroundcolor=(0, 0, 0, 0.4))
    lanes.set_yticks(range(len(species)), species)
    lanes.set_ylim(-0.6, max(1, len(species)) - 0.4)
    lanes.set_xlabel("time (s)" + ("   hatched: truth, solid: detections" if truth is not None else ""))
    return save_figure(fig, path)


def plot_diel_activity(events: pd.DataFrame, path: str | Path) -> Path | None:
    """Detections per hour of day (UTC) per species; None when no event has a known time."""
    timed = events.dropna(subset=["begin_time"])
    if timed.empty:
        return None
    hours = pd.to_datetime(timed["begin_time"], utc=True).dt.hour
    counts = pd.crosstab(hours, timed["species"]).reindex(range(24), fill_value=0)
    fig, ax = plt.subplots(figsize=(10, 4))
    counts.plot(kind="bar", stacked=True, ax=ax, width=0.85)
    ax.set_xlabel("hour of day (UTC)")
    ax.set_ylabel("detections")
    ax.set_title("diel activity")
    return save_figure(fig, path)


def plot_scan(out: str | Path) -> list[Path]:
    """OUT/plots/<recording>.png for every scanned recording, plus diel_activity.png."""
    from .scan_run import scanned_files
    from .writers import read_parquet

    from .audio import AudioReadError
    from .fsutil import safe_relative
    from .scan_state import ScanState

    out = Path(out)
    events = read_parquet(out / "detections.parquet")
    state = ScanState(out)
    rows = scanned_files(out)
    targets = [out / "plots" / f"{safe_relative(rel)}.png" for rel, _ in rows]
    diel_path = out / "plots" / "diel_activity.png"
    if state.exists():  # named before they are drawn, so that --overwrite may delete them (and nothing else)
        state.add_outputs(targets + [diel_path])
    written = []
    for (rel, path), target in zip(rows, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            written.append(plot_detections(path, events[events["recording"] == rel], target, title=rel))
        except (AudioReadError, OSError) as e:  # moved or changed since the scan: the other plots still get drawn
            logger.warning("no plot for %s: %s", rel, e)
    diel = plot_diel_activity(events, diel_path)
    return written + ([diel] if diel else [])
