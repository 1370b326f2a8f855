"""Learning curves per padding: devel UAR every 100 iterations of CNN10 at 8 kHz
(configs/cnn10_8k.yaml) on a short-clip and a long-clip set (scripts/make_short_clips.py).

Why: issue 13 — short clips zero-padded to 3 s (the paper) learn nothing for hundreds of
iterations. This trains the same recipe with each ``padding`` on both sets and records
the curves, so the default can be picked by measurement, and so that a change that
costs the long clips something shows up too.

    python scripts/make_short_clips.py --shared ../shared/data --out /tmp/sc --sample-rate 8000
    python benchmarks/short_clip_curves.py --data /tmp/sc --out results/short_clip_curves \
        --iterations 600 --paddings zeros_end,repeat --seeds 0 --jobs 1

Each run is one process (``--jobs`` at a time), written to OUT/<set>_<padding>_s<seed>_<tag>/;
the curves go to OUT/curves.csv (set, padding, seed, tag, step, loss, uar_raw, seconds) and
bn0's running statistics after training to OUT/bn0.json. ``--extra TAG:key=value,...``
adds an ablation run (e.g. ``noaug:mixup=false,specaugment=false``) for each set/padding.
``--deadline`` (s) stops starting new runs after that long, so a bounded machine session
returns what it has.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def one_run(data: Path, out: Path, config: str, overrides: list[str], threads: int) -> dict:
    """Train one curve in this process; returns bn0's running statistics and the device."""
    import torch

    from primate_monitor.config import load_config
    from primate_monitor.train import Trainer

    torch.set_num_threads(threads)
    cfg = load_config(config, overrides)
    trainer = Trainer(data, out, cfg, overwrite=True)
    trainer.run(progress=False)
    bn = trainer.model.bn0.bn
    return {"device": str(trainer.device), "running_mean": bn.running_mean.cpu().tolist(),
            "running_var": bn.running_var.cpu().tolist()} | diagnose(trainer)


def diagnose(trainer) -> dict:
    """What the trained network does with the padding of the devel clips shorter than the
    window (as evaluation presents them): bn0's output on call frames and on pure-padding
    frames (frames whose whole FFT window is padding zeros), and how much of the head's
    time pooling comes from padding columns of the trunk's feature map."""
    import numpy as np
    import torch

    from primate_monitor.clipaudio import pad_eval

    cfg, model, fe = trainer.config, trainer.model, trainer.frontend
    n, hop, n_fft = trainer.clip_samples, fe.config.hop_samples, fe.config.n_fft
    short = [a for a in trainer.devel_data.audio if len(a) < n]
    if not short:
        return {}
    waves = np.stack([pad_eval(a, n, cfg.padding) for a in short]).astype(np.float32)
    # a frame k is centred on sample k*hop; it is pure padding if its window holds only zeros
    # (clips are real audio, so an exactly-zero window means padding)
    frames = fe.config.frames(n)
    nonzero = np.pad(np.abs(waves) > 0, ((0, 0), (n_fft // 2, n_fft // 2)))
    csum = np.concatenate([np.zeros((len(waves), 1)), np.cumsum(nonzero, axis=1)], axis=1)
    starts = np.arange(frames) * hop
    pad_frame = (csum[:, starts + n_fft] - csum[:, starts]) == 0  # (clips, frames)
    model.eval()
    with torch.no_grad():
        x = fe(torch.from_numpy(waves).to(trainer.device))
        z = model.bn0(x)[:, 0].float().cpu().numpy()  # (clips, frames, mels)
        fmap = model.trunk(x).float().mean(dim=3).cpu().numpy()  # (clips, channels, columns)
    stride = frames / fmap.shape[2]
    col_pad = np.stack([[pad_frame[i, int(c * stride):int(np.ceil((c + 1) * stride))].all()
                         for c in range(fmap.shape[2])] for i in range(len(waves))])
    pm = pad_frame[:, :, None].repeat(z.shape[2], axis=2)
    raw = x[:, 0].float().cpu().numpy()
    mean_share = float((fmap * col_pad[:, None, :]).sum() / max(fmap.sum(), 1e-12))
    argmax = fmap.argmax(axis=2)  # (clips, channels)
    max_in_pad = float(np.take_along_axis(col_pad, argmax, axis=1).mean())
    return {"n_short_devel": len(short), "pad_frame_fraction": float(pad_frame.mean()),
            "raw_db_call_mean": float(raw[~pm].mean()) if (~pm).any() else None,
            "raw_db_call_std": float(raw[~pm].std()) if (~pm).any() else None,
            "bn0_call_mean": float(z[~pm].mean()) if (~pm).any() else None,
            "bn0_call_std": float(z[~pm].std()) if (~pm).any() else None,
            "bn0_pad_mean": float(z[pm].mean()) if pm.any() else None,
            "bn0_pad_std": float(z[pm].std()) if pm.any() else None,
            "trunk_columns": int(fmap.shape[2]), "pad_column_fraction": float(col_pad.mean()),
            "time_mean_share_from_padding": mean_share, "time_max_in_padding": max_in_pad}


def plan(args: argparse.Namespace) -> list[tuple[str, str, int, str, list[str]]]:
    """(set, padding, seed, tag, extra overrides) in priority order: seeds outermost, so a
    deadline leaves every padding with at least its first seed."""
    extras = [("std", [])]
    for spec in args.extra:
        tag, _, kv = spec.partition(":")
        extras.append((tag, [x for x in kv.split(",") if x]))
    jobs = []
    for seed in args.seeds:
        for tag, extra in extras:
            for data_set in args.sets:
                for padding in args.paddings:
                    if tag != "std" and (seed != args.seeds[0] or data_set != args.sets[0]):
                        continue  # ablations: first seed, first set only
                    jobs.append((data_set, padding, seed, tag, extra))
    return jobs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder written by scripts/make_short_clips.py")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", default=str(REPO / "configs/cnn10_8k.yaml"))
    p.add_argument("--sets", type=lambda s: s.split(","), default=["short", "long"])
    p.add_argument("--paddings", type=lambda s: s.split(","), default=["zeros_end", "random_offset", "repeat"])
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--extra", action="append", default=[], help="TAG:key=value,... an ablation run per padding")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for every run")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each a process)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    p.add_argument("--deadline", type=float, default=float("inf"), help="start no run after this many seconds")
    p.add_argument("--worker", nargs=4, metavar=("DATA", "OUT", "CONFIG", "OVERRIDES_JSON"), help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.worker:
        data, out, config, overrides = args.worker
        result = one_run(Path(data), Path(out), config, json.loads(overrides), args.threads)
        (Path(out) / "bn0.json").write_text(json.dumps(result))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cache = args.out / "cache"

    def launch(job: tuple[str, str, int, str, list[str]]) -> None:
        data_set, padding, seed, tag, extra = job
        if time.time() - t0 > args.deadline:
            print(f"skipped (deadline): {job[:4]}", flush=True)
            return
        run_dir = args.out / f"{data_set}_{padding}_s{seed}_{tag}"
        overrides = [f"iterations={args.iterations}", f"eval_every={args.eval_every}", f"padding={padding}",
                     f"seed={seed}", f"cache_dir={cache / data_set}", *args.overrides, *extra]
        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--data", "-", "--out", "-",
               "--worker", str(args.data / data_set), str(run_dir), args.config, json.dumps(overrides)]
        start = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
        status = "ok" if proc.returncode == 0 else f"FAILED rc={proc.returncode}: {proc.stderr[-2000:]}"
        print(f"{data_set:5s} {padding:13s} seed {seed} {tag}: {time.time() - start:.0f} s {status}", flush=True)

    # decode each set once before the parallel runs share its cache
    jobs = plan(args)
    first = {}
    for job in jobs:
        first.setdefault(job[0], job)
    rest = [j for j in jobs if j not in first.values()]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(launch, first.values()))
        list(pool.map(launch, rest))

    rows, bn0 = [], {}
    for data_set, padding, seed, tag, _ in jobs:
        run_dir = args.out / f"{data_set}_{padding}_s{seed}_{tag}"
        log = run_dir / "train_log.csv"
        if not log.is_file():
            continue
        table = pd.read_csv(log)
        table.insert(0, "tag", tag)
        table.insert(0, "seed", seed)
        table.insert(0, "padding", padding)
        table.insert(0, "set", data_set)
        rows.append(table[["set", "padding", "seed", "tag", "step", "loss", "uar_raw", "seconds"]])
        if (run_dir / "bn0.json").is_file():
            bn0[run_dir.name] = json.loads((run_dir / "bn0.json").read_text())
    curves = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    curves.to_csv(args.out / "curves.csv", index=False)
    (args.out / "bn0.json").write_text(json.dumps(bn0))
    device = next(iter(bn0.values()))["device"] if bn0 else "?"
    print(f"{platform.node()} {time.strftime('%Y-%m-%d %H:%M')} device={device} total {time.time() - t0:.0f} s")
    if len(curves):
        mean = curves[curves.tag == "std"].groupby(["set", "padding", "step"])["uar_raw"].mean().unstack("step")
        print(mean.round(3).to_string())


if __name__ == "__main__":
    main()
