"""benchmarks/gpu_bench.py, the measuring half of gpu_check.sh, run on the CPU at smoke sizes.

Why: a GPU is lent for 15 minutes now and then, so the script must already work when one is.
Its training phase once failed only at the end (the loss had become a device tensor, which JSON
cannot hold), and nothing on a CPU machine ran it. This runs every phase as gpu_check.sh does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _phase(name: str, results: Path, scratch: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), name, "--smoke",
                           "--results", str(results), "--scratch", str(scratch)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_gpu_bench_phases_run_and_write_their_results(tmp_path):
    results, scratch = tmp_path / "results", tmp_path / "scratch"
    for name in ("scan", "train", "cli", "table"):
        _phase(name, results, scratch)
    scan = json.loads((results / "scan.json").read_text())
    assert scan["rows"] and all(r["seconds"] > 0 and r["xrt"] > 0 for r in scan["rows"])
    train = json.loads((results / "train.json").read_text())
    assert train["steps_timed"] >= 1 and train["iterations_per_s"] > 0
    assert isinstance(train["last_loss"], float) and train["last_loss"] > 0
    cli = json.loads((results / "cli.json").read_text())
    assert cli["fixed_s"] > 0 and [r["workers"] for r in cli["rows"]] == [1, 2, 2]  # the last: one long file
    assert all(r["exit"] == 0 and r["seconds"] > 0 and r["peak_rss_mb"] > 100 for r in cli["rows"])
    for name in ("profile_scan.txt", "profile_train.txt"):  # where the time went, for the next change
        assert "aten::" in (results / name).read_text()
    table = (results / "gpu_table.md").read_text()
    assert "iterations/s" in table and "real time" in table and "after the fixed cost" in table
