"""Does torch.compile speed up the CPU trunk? One fast-mode span, compiled against eager, in one
process, interleaved (docs/benchmarks.md, "torch.compile was tried and not added").

    python benchmarks/compile_probe.py CKPT [--rounds 3] [--calls 5]

CKPT: e.g. the CNN10-16k init checkpoint that scan_bench.py writes to its scratch folder.
"""
from __future__ import annotations

import argparse
import time

import torch

from primate_monitor.checkpoint import load_checkpoint
from primate_monitor.inference import fold_batch_norms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--frames", type=int, default=32 * 100 + 150 + 128, help="a 32-window span at hop 1 s, 16 kHz")
    args = ap.parse_args()
    torch.set_num_threads(2)
    net = fold_batch_norms(load_checkpoint(args.checkpoint).network)
    x = torch.randn(1, 1, args.frames, net.bn0.bn.num_features)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        t = time.perf_counter()
        compiled = torch.compile(net.trunk, dynamic=False)
        y = compiled(x)
        print(f"compile + first call: {time.perf_counter() - t:.1f} s; max abs diff to eager "
              f"{float((y - net.trunk(x)).abs().max()):.2e}")
        for r in range(args.rounds):
            t = time.perf_counter()
            for _ in range(args.calls):
                net.trunk(x)
            eager = time.perf_counter() - t
            t = time.perf_counter()
            for _ in range(args.calls):
                compiled(x)
            comp = time.perf_counter() - t
            print(f"round {r + 1}: eager {eager:.2f} s, compiled {comp:.2f} s, eager / compiled {eager / comp:.2f}x")


if __name__ == "__main__":
    main()
