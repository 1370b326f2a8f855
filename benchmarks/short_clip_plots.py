"""The figures and numbers of docs/short_clips.md, from the curves and bn0 statistics that
``benchmarks/short_clip_curves.py`` wrote, plus what can be measured without training
(CPU, seconds): the log-mel values of a zero-padded batch, where SpecAugment's stripes
fall, and what MixUp makes of two padded clips.

    python benchmarks/short_clip_plots.py --data /tmp/sc --results R1 [R2 ...] --images docs/images
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from primate_monitor.augment import specaugment  # noqa: E402
from primate_monitor.audio import load_audio  # noqa: E402
from primate_monitor.clipaudio import pad_train  # noqa: E402
from primate_monitor.frontend import FrontEndConfig, LogMel  # noqa: E402

SR, N = 8000, 24000  # cnn10_8k: 8 kHz, 3 s window
COLORS = {"zeros_end": "tab:red", "random_offset": "tab:orange", "repeat": "tab:blue", "background": "tab:gray"}


def load_results(dirs: list[Path]) -> tuple[pd.DataFrame, dict]:
    curves = pd.concat([pd.read_csv(d / "curves.csv") for d in dirs], ignore_index=True)
    bn0: dict = {}
    for d in dirs:
        bn0 |= json.loads((d / "bn0.json").read_text())
    return curves, bn0


def plot_curves(curves: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Devel UAR against iterations, mean over seeds with the min-max band."""
    std = curves[curves.tag == "std"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, data_set in zip(axes, ["short", "long"]):
        for padding, g in std[std.set == data_set].groupby("padding"):
            s = g.groupby("step").uar_raw.agg(["mean", "min", "max"])
            n = g.seed.nunique()
            ax.plot(s.index, s["mean"], color=COLORS[padding], label=f"{padding} ({n} seeds)")
            ax.fill_between(s.index, s["min"], s["max"], color=COLORS[padding], alpha=0.15)
        ax.set_title(f"{data_set} clips ({'0.15-1 s' if data_set == 'short' else '3-10 s'})")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("devel UAR")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "short_clip_curves.png", dpi=90)
    plt.close(fig)
    return std.groupby(["set", "padding", "step"]).uar_raw.agg(["mean", "min", "max"]).reset_index()


def short_train_clips(data: Path) -> list[np.ndarray]:
    files = sorted((data / "short" / "train").rglob("*.flac"))
    return [load_audio(f, SR) for f in files]


def logmels(waves: np.ndarray) -> torch.Tensor:
    return LogMel(FrontEndConfig(sample_rate=SR))(torch.from_numpy(waves.astype(np.float32)))


def batch_stats(clips: list[np.ndarray], padding: str, rng: np.random.Generator) -> dict:
    """Per-mel-bin mean and std over a 32-clip batch, as bn0 computes them in training."""
    idx = rng.choice(len(clips), 32, replace=False)
    x = logmels(np.stack([pad_train(clips[i], N, padding, rng) for i in idx]))[:, 0]  # (32, frames, mels)
    at_floor = (x <= -99.9).float().mean().item()
    return {"mean": x.mean(dim=(0, 1)).numpy(), "std": x.std(dim=(0, 1)).numpy(), "values": x.flatten().numpy(),
            "at_floor": at_floor}


def plot_bn0(clips: list[np.ndarray], bn0: dict, out: Path) -> dict:
    rng = np.random.default_rng(0)
    stats = {p: batch_stats(clips, p, rng) for p in ("zeros_end", "repeat")}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for p, s in stats.items():
        axes[0].hist(s["values"], bins=120, range=(-105, 0), color=COLORS[p], alpha=0.5,
                     label=f"{p}: {100 * s['at_floor']:.0f} % at -100 dB")
        axes[1].plot(s["mean"], color=COLORS[p], label=f"{p}: batch mean")
        axes[1].plot(s["std"], color=COLORS[p], ls="--", label=f"{p}: batch std")
    axes[0].set(title="log-mel values of one training batch", xlabel="dB", yscale="log")
    axes[0].legend(fontsize=7)
    axes[1].set(title="what bn0 normalises with (per mel bin)", xlabel="mel bin", ylabel="dB")
    axes[1].legend(fontsize=7)
    rows = []
    for p in ("zeros_end", "repeat", "random_offset"):
        runs = [v for k, v in bn0.items() if k.startswith(f"short_{p}_") and k.endswith("_std")]
        if runs:
            rows.append((p, np.mean([r["bn0_call_std"] for r in runs]), np.mean([r["bn0_call_mean"] for r in runs]),
                         np.mean([r["bn0_pad_mean"] for r in runs if r["bn0_pad_mean"] is not None] or [np.nan])))
    names = [r[0] for r in rows]
    axes[2].bar(np.arange(len(rows)) - 0.2, [r[1] for r in rows], 0.4, label="std of call frames", color="tab:green")
    axes[2].bar(np.arange(len(rows)) + 0.2, [r[2] - (0 if np.isnan(r[3]) else r[3]) for r in rows], 0.4,
                label="call mean - padding value", color="tab:purple")
    axes[2].set_xticks(range(len(rows)), names)
    axes[2].set(title="after bn0 (trained 1500 it., devel clips)")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "short_clip_bn0.png", dpi=90)
    plt.close(fig)
    return {p: {"at_floor": s["at_floor"], "mean_db": float(s["mean"].mean()), "std_db": float(s["std"].mean())}
            for p, s in stats.items()}


def call_frames(length: int, padding: str, offset: int, frames: int, hop: int) -> np.ndarray:
    """Frames whose centre falls inside the (first copy of the) call."""
    centres = np.arange(frames) * hop
    if padding == "repeat":
        return np.ones(frames, dtype=bool)
    return (centres >= offset) & (centres < offset + length)


def specaugment_coverage(clips: list[np.ndarray], n_batches: int = 1000) -> pd.DataFrame:
    """Per padding: mean share of a clip's call frames that SpecAugment's time stripes zero,
    and the share of batches in which at least half of the 32 calls lose all of their frames
    (for repeat: every copy of the call hit, i.e. no whole copy left unmasked)."""
    fe = FrontEndConfig(sample_rate=SR)
    frames, hop = fe.frames(N), fe.hop_samples
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    rows = []
    for padding, per_example in (("zeros_end", False), ("random_offset", False), ("repeat", False), ("zeros_end", True)):
        masked_share, half_lost = [], []
        for _ in range(n_batches):
            idx = rng.choice(len(clips), 32)
            x = torch.zeros(32, 1, frames, 1)
            hit = specaugment(x + 1, gen, 2, 16, 0, 0, per_example)[:, 0, :, 0] == 0  # (32, frames) masked
            lost = []
            for b, i in enumerate(idx):
                length = len(clips[i])
                offset = int(rng.integers(0, N - length + 1)) if padding == "random_offset" else 0
                calls = call_frames(length, padding, offset, frames, hop)
                if padding == "repeat":
                    period = max(1, int(np.ceil(length / hop)))
                    # a whole copy survives if some run of `period` frames is unmasked
                    free = np.convolve(~hit[b].numpy(), np.ones(period), mode="valid") >= period
                    lost.append(not free.any())
                    masked_share.append(hit[b].numpy().mean())
                else:
                    covered = hit[b].numpy()[calls]
                    lost.append(bool(covered.all()) if covered.size else False)
                    masked_share.append(covered.mean() if covered.size else 0.0)
            half_lost.append(np.mean(lost) >= 0.5)
        rows.append({"padding": padding + (" (per-example stripes)" if per_example else ""),
                     "call_frames_masked": float(np.mean(masked_share)), "batches_half_calls_erased": float(np.mean(half_lost))})
    return pd.DataFrame(rows)


def plot_specaugment_mixup(clips: list[np.ndarray], cover: pd.DataFrame, out: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(12, 5), gridspec_kw={"width_ratios": [1.3, 1.3, 1.3]})
    rng = np.random.default_rng(3)
    a, b = clips[5], clips[-5]
    for row, padding in enumerate(("zeros_end", "repeat")):
        waves = np.stack([pad_train(a, N, padding, rng), pad_train(b, N, padding, rng)])
        x = logmels(waves)
        z = (x - x.mean(dim=(0, 2), keepdim=True)) / x.std(dim=(0, 2), keepdim=True)  # bn0 in training mode
        mixed = 0.5 * z[0, 0] + 0.5 * z[1, 0]  # what augment.mixup does with lambda = 0.5
        for col, (img, title) in enumerate(((z[0, 0], "clip A after bn0"), (z[1, 0], "clip B after bn0"),
                                            (mixed, "MixUp of A and B, lambda 0.5"))):
            axes[row, col].imshow(img.T.numpy(), origin="lower", aspect="auto", vmin=-2, vmax=4, cmap="magma")
            axes[row, col].set_title(f"{padding}: {title}", fontsize=9)
            axes[row, col].set_xlabel("frame (40 ms)")
    fig.tight_layout()
    fig.savefig(out / "short_clip_mixup.png", dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 2.8))
    y = np.arange(len(cover))
    ax.barh(y - 0.2, cover.call_frames_masked, 0.4, label="share of a call's frames zeroed", color="tab:olive")
    ax.barh(y + 0.2, cover.batches_half_calls_erased, 0.4, label="batches with >= half the calls erased", color="tab:red")
    ax.set_yticks(y, cover.padding, fontsize=8)
    ax.set_title("SpecAugment time stripes (2 x <= 16 frames) on short clips", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "short_clip_specaugment.png", dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--results", type=Path, nargs="+", required=True)
    p.add_argument("--images", type=Path, default=Path("docs/images"))
    args = p.parse_args()
    curves, bn0 = load_results(args.results)
    table = plot_curves(curves, args.images)
    wide = table.pivot_table(index=["set", "padding"], columns="step", values="mean")
    print(wide[[c for c in wide.columns if c in (100, 200, 300, 400, 600, 800, 1000, 1500)]].round(2).to_string())
    clips = short_train_clips(args.data)
    print(json.dumps(plot_bn0(clips, bn0, args.images), indent=1))
    cover = specaugment_coverage(clips)
    print(cover.round(3).to_string())
    plot_specaugment_mixup(clips, cover, args.images)
    keys = ["pad_frame_fraction", "bn0_call_mean", "bn0_call_std", "bn0_pad_mean", "pad_column_fraction",
            "time_mean_share_from_padding", "time_max_in_padding"]
    diag = pd.DataFrame({k: {kk: v.get(kk) for kk in keys} for k, v in bn0.items() if k.endswith("_std")}).T
    diag["bn0_mean_dB"] = [np.mean(bn0[k]["running_mean"]) for k in diag.index]
    diag["bn0_std_dB"] = [np.mean(np.sqrt(bn0[k]["running_var"])) for k in diag.index]
    print(diag.astype(float).round(3).to_string())


if __name__ == "__main__":
    main()
