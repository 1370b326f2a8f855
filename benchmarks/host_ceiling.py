"""How fast the host side of the batched fast-mode scorer can go, with the network taken away.

    python benchmarks/host_ceiling.py [--reps 3] [--spans-per-call 16]

Why: the GPU target (issue 11, 10,000× real time) needs the CPU work around each network call
(cutting spans in the feeder threads, gathering them into one host buffer, pooling windows,
splitting the scores back per recording) to run faster than that on its own. Here CNN10-16k's
trunk and the log-mel front end are replaced by stubs that return zeros of the right shapes,
so what is timed is ``inference.score_streams`` (2 feeder threads, ``--spans-per-call`` spans
per call) on one hour of 16 kHz audio already in memory, with everything but the two stubbed
parts: on the CPU the head and pooling run here too, where on a GPU they would run on the
device. A ceiling for this machine's cores, not a GPU figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bench  # noqa: E402

from primate_monitor.inference import make_scorer, score_streams  # noqa: E402


def stubbed_scorer(model, spans_per_call: int, stub_frontend: bool):
    scorer = make_scorer(model, 16000, 32, "fast", spans_per_call, "fp32")
    channels = model.network.embedding_dim
    stride = model.network.time_stride

    def trunk(mel: torch.Tensor) -> torch.Tensor:  # (spans, 1, frames, mels) -> (spans, channels, columns, bins)
        return torch.zeros(mel.shape[0], channels, mel.shape[2] // stride, mel.shape[3] // stride)

    object.__setattr__(scorer.network, "trunk", trunk)  # an instance attribute, not a submodule
    if stub_frontend:
        cfg = model.info.frontend
        scorer.frontend = lambda w, center=True: torch.zeros(w.shape[0], 1, 1 + (w.shape[-1] - cfg.n_fft) // cfg.hop_samples,
                                                             cfg.n_mels)
    return scorer


def timed(scorer, blocks: list[list[np.ndarray]]) -> tuple[float, int]:
    t, windows = time.perf_counter(), 0
    for _, result in score_streams(scorer, [(lambda b=b: iter(b)) for b in blocks], workers=2):
        if isinstance(result, BaseException):
            raise result
        windows += len(result.starts)
    return time.perf_counter() - t, windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--spans-per-call", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model = gpu_bench.make_model(Path(tmp) / "cnn10_16k.safetensors", torch.device("cpu"))
    rng = np.random.default_rng(0)
    blocks = [[(0.1 * rng.standard_normal(16000 * 60)).astype(np.float32) for _ in range(4)] for _ in range(15)]
    audio_s = sum(len(x) for b in blocks for x in b) / 16000
    print(f"{audio_s / 3600:.2f} h of 16 kHz audio in memory, {args.spans_per_call} spans per call, 1 torch thread, "
          f"2 feeder threads, median of {args.reps}")
    print("| stubbed | seconds | × real time | windows |\n|---|---|---|---|")
    for label, stub_frontend in (("trunk", False), ("trunk and front end", True)):
        runs = [timed(stubbed_scorer(model, args.spans_per_call, stub_frontend), blocks) for _ in range(args.reps)]
        seconds = statistics.median(s for s, _ in runs)
        print(f"| {label} | {seconds:.3f} | {audio_s / seconds:,.0f} | {runs[0][1]} |", flush=True)


if __name__ == "__main__":
    main()
