"""Memory a scan plan holds per recording (issue 10: a million files must not need gigabytes).

    python benchmarks/plan_memory.py [--n 200000]

Builds N ``scan_plan.Recording`` objects for synthetic survey paths (no files needed) and
reports the bytes tracemalloc sees per recording.
"""
from __future__ import annotations

import argparse
import tracemalloc
from pathlib import Path

from primate_monitor.scan_plan import Recording


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    n = ap.parse_args().n
    tracemalloc.start()
    plan = [Recording(f"site{i % 50:02d}/2024{i % 12 + 1:02d}{i % 28 + 1:02d}_{i:06d}.WAV",
                      Path(f"/data/survey/site{i % 50:02d}/2024{i % 12 + 1:02d}{i % 28 + 1:02d}_{i:06d}.WAV"))
            for i in range(n)]
    used, _ = tracemalloc.get_traced_memory()
    print(f"{len(plan)} recordings: {used / n:.0f} bytes each, {used / n * 1e6 / 1e9:.2f} GB per million")


if __name__ == "__main__":
    main()
