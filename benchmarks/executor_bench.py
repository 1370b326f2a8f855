"""Scan executors side by side on the same hour of real audio: × real time and peak RSS per process.

    python benchmarks/executor_bench.py --scratch /tmp/pm-exec-bench               # serial vs local:2
    python benchmarks/executor_bench.py --scratch /tmp/pm-exec-bench --files 1 --piece-hours 0.25

The audio is the sample recordings (real calls in real forest backgrounds) tiled to one hour
at 48 kHz, as ``--files`` files (default 4 of 15 min, so two workers each get whole files;
``--files 1 --piece-hours H`` measures one long file cut into pieces). The model is a freshly
initialised CNN10 at 16 kHz (speed does not depend on the weights). Each run is the real CLI
(``primate-monitor scan``) in a child process; a sampler polls the RSS of that process and
of every process it starts (Dask scheduler, nannies, workers) every 0.2 s, so each gets its
own peak. Runs alternate and are repeated (``--repeats``), because the machine may be shared:
compare ratios within one run of this script, not numbers across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_bench import make_audio, make_model  # noqa: E402


def role(proc) -> str:
    """A short name for a process of the run, from its command line."""
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - gone meanwhile
        return "?"
    if "spawn_main" in cmd or "multiprocessing" in cmd:
        return "worker"
    if "primate-monitor" in cmd or "primate_monitor" in cmd:
        return "client"
    return "other"


def run(args: list[str], env: dict[str, str]) -> dict:
    """Run the CLI; wall time and the peak RSS (MB) of each process in its tree."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, tuple[str, float]] = {}
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                break
            for p in procs:
                try:
                    rss = p.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                name, best = peaks.get(p.pid, (role(p), 0.0))
                peaks[p.pid] = (name, max(best, rss))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{output}")
    by_role: dict[str, list[float]] = {}
    for name, mb in peaks.values():
        by_role.setdefault(name, []).append(round(mb))
    return {"wall_s": round(wall, 1), "peak_rss_mb": {k: sorted(v, reverse=True) for k, v in by_role.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/pm-exec-bench"))
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--piece-hours", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--hop", type=float, default=1.0)
    args = parser.parse_args()
    scratch = args.scratch
    folder = scratch / f"audio_{args.files}x{args.hours / args.files:g}h"
    for i in range(args.files):
        make_audio(folder / f"part{i:02d}.wav", args.hours / args.files, 48000)
    ckpt = make_model(scratch / "cnn10_16k.safetensors")
    exe = shutil.which("primate-monitor") or sys.exit("primate-monitor is not on PATH (pip install -e .)")
    common = [exe, "scan", str(folder), "--model", str(ckpt), "--hop", str(args.hop), "--device", "cpu", "-q"]
    pieces = ["--piece-hours", str(args.piece_hours)] if args.piece_hours else []
    setups = {
        "serial, 2 torch threads": ([], {"OMP_NUM_THREADS": "2"}),
        "dask local:2, 1 torch thread each": (["--cluster", "local:2", *pieces], {}),
    }
    results: dict[str, list[dict]] = {name: [] for name in setups}
    for _ in range(args.repeats):
        for name, (extra, env) in setups.items():
            out = scratch / "out"
            shutil.rmtree(out, ignore_errors=True)
            result = run([*common, "-o", str(out), *extra], os.environ | env)
            result["x_real_time"] = round(args.hours * 3600 / result["wall_s"], 1)
            results[name].append(result)
            print(name, json.dumps(result), flush=True)
    print(json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
                      "cpus": os.cpu_count(), "hours": args.hours, "files": args.files,
                      "piece_hours": args.piece_hours, "hop": args.hop, "results": results}, indent=2))


if __name__ == "__main__":
    main()
