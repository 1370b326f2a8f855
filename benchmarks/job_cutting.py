"""Seconds a decoder thread spends cutting one hour of 16 kHz audio into scorer jobs, this tree
against another revision, side by side.

    python benchmarks/job_cutting.py --against REV [--rounds 3]

Why: on a GPU each decoder thread decodes, resamples and then cuts its recording into jobs
(``StreamScorer.jobs``: spans for fast mode, stacks of windows for exact mode), and the GPU can
go no faster than the decoders feed it. Cutting is pure host work, so it is measured here on
the CPU with no network call: one hour of noise in 15 s blocks, CNN10-16k's geometry, hop 1 s,
best of 3 passes per process. ``REV`` is checked out into a temporary git worktree; the two
trees run alternately, each in a fresh process, ``--rounds`` times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CODE = r'''
import time, tempfile, numpy as np, torch
from pathlib import Path
from primate_monitor.checkpoint import ModelInfo, load_checkpoint, save_checkpoint
from primate_monitor.frontend import FrontEndConfig
from primate_monitor.models import create_model
from primate_monitor.inference import make_scorer
torch.set_num_threads(1)
with tempfile.TemporaryDirectory() as d:
    info = ModelInfo("cnn10", ("background", "a", "b", "c", "d"), "background", "sigmoid",
                     FrontEndConfig(sample_rate=16000), 3.0)
    path = Path(d) / "m.safetensors"
    save_checkpoint(path, create_model("cnn10", 5).state_dict(), info)
    model = load_checkpoint(path, "cpu")
rng = np.random.default_rng(0)
blocks = [(0.1 * rng.standard_normal(16000 * 15)).astype(np.float32) for _ in range(240)]
row = []
for mode in ("fast", "exact"):
    scorer = make_scorer(model, 16000, 32, mode, 16, "fp32")
    best = 1e9
    for _ in range(3):
        t = time.perf_counter()
        jobs = list(scorer.jobs(iter(blocks)))
        best = min(best, time.perf_counter() - t)
    row.append(f"{best:.3f}")
print(" ".join(row))
'''


def run(tree: Path) -> tuple[float, float]:
    env = {"PYTHONPATH": str(tree), "PATH": os.environ.get("PATH", "/usr/bin"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CODE], cwd=tree, capture_output=True, text=True, env=env, check=True)
    fast, exact = done.stdout.split()
    return float(fast), float(exact)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="git revision to compare with, e.g. HEAD~1")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(other), args.against], check=True)
        try:
            print("| round | tree | fast (s per hour) | exact (s per hour) |\n|---|---|---|---|")
            for k in range(args.rounds):
                for name, tree in ((args.against, other), ("this tree", REPO)):
                    fast, exact = run(tree)
                    print(f"| {k + 1} | {name} | {fast:.3f} | {exact:.3f} |", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(other)], check=False)


if __name__ == "__main__":
    main()
