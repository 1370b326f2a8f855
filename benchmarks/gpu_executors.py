"""Issue 10's GPU row: the real `primate-monitor scan` (serial executor) on one GPU, with several
decoding workers feeding it; × real time and the scan process's peak RSS.

    python benchmarks/gpu_executors.py --scratch /tmp/pm-gpu-exec [--workers 1,4,16] [--device cuda]

The audio and model are gpu_bench.py's (16 × 225 s of the sample recordings at 48 kHz,
CNN10-16k with random weights). Each run is a child process of the CLI, started with the package
on PYTHONPATH as gpu_check.sh does; its peak RSS is read from the kernel (``ru_maxrss`` of the
child), so no extra package is needed on a bare GPU machine. Prints one JSON line per run and a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/pm-gpu-exec"))
    ap.add_argument("--workers", default="1,4,16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--file-seconds", type=float, default=225.0)
    args = ap.parse_args()
    import torch

    paths = gpu_bench.make_files(args.scratch / "audio48k", args.files, args.file_seconds)
    ckpt = args.scratch / "cnn10_16k.safetensors"
    if not ckpt.is_file():
        gpu_bench.make_model(ckpt, torch.device("cpu"))
    audio_s = args.files * args.file_seconds
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        row = gpu_bench.cli_scan(paths[0].parent, ckpt, args.scratch / f"out_{workers}", args.device, workers)
        row |= {"seconds": round(row["seconds"], 2), "x_real_time": round(audio_s / row["seconds"]),
                "peak_rss_mb": round(row["peak_rss_mb"])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"\n`primate-monitor scan` (serial executor, --device {args.device}) on {gpu}, {os.cpu_count()} CPU cores; "
          f"{args.files} x {args.file_seconds:g} s of 48 kHz audio ({audio_s / 3600:.2f} h), CNN10-16k, hop 1 s, "
          "process start-up and writing included\n")
    print("| decode workers | seconds | × real time | peak RSS (MB) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['seconds']} | {r['x_real_time']:,} | {r['peak_rss_mb']}"
              f"{'' if r['peak_is_this_run'] else ' (≤, an earlier run was higher)'} |")


if __name__ == "__main__":
    main()
