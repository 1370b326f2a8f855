"""Training throughput: iterations/s of the full recipe step (front end, SpecAugment, MixUp,
CNN forward/backward, Adam, EMA) at batch 32, and the wall time it implies for the
paper's 60,000 iterations.

    python benchmarks/train_bench.py --config configs/cnn10_16k.yaml --data sample_data/clips --steps 20
"""

from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time

from primate_monitor.config import load_config
from primate_monitor.train import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/cnn10_16k.yaml")
    p.add_argument("--data", default="sample_data/clips")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as out:
        config = load_config(args.config, [f"device={args.device}", "ema_start=0"])
        trainer = Trainer(args.data, out, config)
        for _ in range(args.warmup):
            trainer.train_step()
        if trainer.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        rate = args.steps / (time.perf_counter() - t0)
    full_h = config.iterations / rate / 3600
    print(f"{platform.node()} {time.strftime('%Y-%m-%d %H:%M')} device={trainer.device} {config.model} "
          f"{config.sample_rate // 1000} kHz batch {config.batch_size}: {rate:.2f} it/s; "
          f"{config.iterations} iterations would take {full_h:.1f} h")


if __name__ == "__main__":
    main()
