"""Copy a trained checkpoint into the package as the bundled demo model, in fp16.

    python scripts/bundle_demo_model.py /work/scratch/demo_run/best.safetensors

fp16 halves the file (CNN10: ~9.9 MB instead of ~19.8 MB); weights are cast back to
float32 when loaded, and scores change by less than 1e-3 (checked below).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from primate_monitor.bundled import DEMO_MODEL_FILE
from primate_monitor.checkpoint import load_checkpoint, save_checkpoint

ASSETS = Path(__file__).resolve().parents[1] / "primate_monitor" / "assets"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    source = load_checkpoint(args.checkpoint)
    target = save_checkpoint(ASSETS / DEMO_MODEL_FILE, source.network.state_dict(), source.info, dtype=torch.float16)
    bundled = load_checkpoint(target)
    torch.manual_seed(0)
    x = torch.randn(8, 1, 75, 64) * 20 - 40  # log-mel-like input
    with torch.no_grad():
        diff = (torch.sigmoid(source.network(x)[0]) - torch.sigmoid(bundled.network(x)[0])).abs().max().item()
    logging.info("wrote %s (%.1f MB); max score change from fp16: %.2e", target, target.stat().st_size / 1e6, diff)
    if not np.isfinite(diff) or diff > 1e-2:
        raise SystemExit(f"fp16 changed scores by {diff}; not bundling")


if __name__ == "__main__":
    main()
