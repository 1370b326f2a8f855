"""Resident memory of a whole `primate-monitor scan` over time, sampled every 0.25 s from
/proc (Linux): when the peak comes, and whether memory creeps with the recording's length.

    python benchmarks/rss_curve.py [--hours 2] [--model CKPT] [--scratch /tmp/pm-rss] [-- extra scan options]

The audio is scan_bench.py's: the sample recordings tiled to --hours at 48 kHz (PCM16 WAV in
--scratch, deleted afterwards). Prints the peak and the curve's running maximum at fractions of
the run. /usr/bin/time -v gives the exact peak; this gives its shape.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scan_bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/pm-rss"))
    ap.add_argument("--model", type=Path, default=None, help="default: a fresh CNN10-16k (scan_bench.make_model)")
    ap.add_argument("extra", nargs="*", help="more scan options, after --")
    args = ap.parse_args()
    model = args.model or scan_bench.make_model(args.scratch / "cnn10_16k_init.safetensors")
    audio = scan_bench.make_audio(args.scratch / f"bench_{args.hours:g}h_48k.wav", args.hours, 48000)
    out = args.scratch / "out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "primate_monitor", "-q", "scan", str(audio), "-o", str(out), "--model", str(model),
           *args.extra]
    proc = subprocess.Popen(cmd)
    t0, curve = time.time(), []
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            curve.append((time.time() - t0, int(status.split("VmRSS:")[1].split()[0]) // 1024))
        except (OSError, IndexError):
            pass
        time.sleep(0.25)
    audio.unlink()
    shutil.rmtree(out, ignore_errors=True)
    if not curve:
        raise SystemExit("no samples: the scan ended at once")
    peak = max(curve, key=lambda c: c[1])
    duration = curve[-1][0]
    print(f"peak {peak[1]} MB at {peak[0]:.0f} s of {duration:.0f} s")
    print("| part of the run | RSS now (MB) | highest so far (MB) |\n|---|---|---|")
    for frac in (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        seen = [c for c in curve if c[0] <= frac * duration]
        if seen:
            print(f"| {frac:.0%} | {seen[-1][1]} | {max(c[1] for c in seen)} |")


if __name__ == "__main__":
    main()
