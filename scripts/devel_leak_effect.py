#!/usr/bin/env python
"""Did the great argus leak inside the demo split change which checkpoint was kept?

Why: scripts/check_leaks.py found that the devel "other animal" recording GreatArgus_4 holds
the whole of the training file GreatArgus_1 (its 36.5-116 s). Devel clips choose the checkpoint
(the best devel UAR), so devel clips cut from that stretch are training audio inside the
choice. This script measures what that did, without a rebuild:

1. It replays ``make_demo_data.build_clips`` for the devel role with the same seeds, recording
   the source and start of every call window it draws, and checks the replay against the
   written clips (PCM16 rounding only). A window's start is where it lies in the cached
   source array it is a view of. A clip is *leaked* when it holds a window of
   GreatArgus_4 that overlaps 36.5-116 s.
2. For each training run it scores the devel clips with every set of weights the run still
   holds (``best.safetensors`` and the raw and EMA weights in ``resume.safetensors``) exactly
   as ``train.validate`` does, and reports the devel UAR on all clips, without the leaked clips,
   and without every GreatArgus_4 clip.

    python scripts/devel_leak_effect.py --shared ../shared/data --clips DEMO_DATA/clips \\
        --run R0=RUN_DIR --run R2=RUN_DIR -o leak_effect.csv

Weights a run no longer holds (earlier validations) cannot be scored; the card says what it
would take for one of them to have overtaken the kept checkpoint.
"""
from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_demo_data as mdd  # noqa: E402

from primate_monitor.checkpoint import load_checkpoint  # noqa: E402
from primate_monitor.clipaudio import decode_clips  # noqa: E402
from primate_monitor.config import TrainConfig, from_dict  # noqa: E402
from primate_monitor.data import load_splits  # noqa: E402
from primate_monitor.frontend import LogMel  # noqa: E402
from primate_monitor.metrics import classification_metrics  # noqa: E402
from primate_monitor.predict import score_clips  # noqa: E402
from primate_monitor.train_state import load_train_state  # noqa: E402

LEAK_SOURCE = "GreatArgus_4"
LEAK_SPAN_S = (36.5, 116.0)  # = GreatArgus_1 0.06-79.56 s (docs/models/demo.md, "Leak check")
PCM16_STEP = 1.0 / 32768


def devel_provenance(shared: Path, clips: Path) -> pd.DataFrame:
    """Per devel clip: does it hold GreatArgus_4 audio, and the leaked stretch of it?"""
    msd = mdd.msd
    drawn: list[tuple[str, float, float]] = []
    original = msd.random_call_window

    def recording_window(path, sr, length, rng):
        window = original(path, sr, length, rng)
        source = msd.load(path, sr)  # cached: the window is a view into this very array
        if not np.shares_memory(window, source):
            raise SystemExit(f"error: a window of {path} is not a view of its cached audio; cannot place it")
        start = (window.ctypes.data - source.ctypes.data) // source.itemsize
        drawn.append((Path(path).name, start / sr, (start + len(window)) / sr))
        return window

    msd.random_call_window = recording_window
    try:
        s_idx, role = 1, "devel"  # build_clips' order: train, devel
        files = mdd.resolve(shared, role)
        labels = [c for c in msd.CLASSES for _ in range(mdd.COUNTS[role][c])]
        np.random.default_rng([mdd.SEED, 1, s_idx]).shuffle(labels)
        rows = []
        for i, label in enumerate(labels):
            rng = np.random.default_rng([mdd.SEED, 2, s_idx, i])
            drawn.clear()
            x = (mdd.background_example(role, files, rng) if label == "background"
                 else mdd.primate_example(label, role, files, shared, rng))
            name = f"{role}_{i + 1:05d}.wav"
            written, _ = sf.read(clips / "wav" / name, dtype="float32")
            diff = float(np.abs(written - msd.limit_peak(x).astype(np.float32)).max())
            if diff > 1.5 * PCM16_STEP:
                raise SystemExit(f"error: the replay of {name} differs from the written clip by {diff:.2e}: "
                                 "the split or the data scripts changed since the clips were made")
            argus = [(b, e) for f, b, e in drawn if f.startswith(LEAK_SOURCE)]
            rows.append({"filename": name, "label": label, "argus4": bool(argus),
                         "leaked": any(b < LEAK_SPAN_S[1] and e > LEAK_SPAN_S[0] for b, e in argus),
                         "argus4_windows_s": ";".join(f"{b:.2f}-{e:.2f}" for b, e in argus)})
    finally:
        msd.random_call_window = original
    return pd.DataFrame(rows).set_index("filename")


def run_weights(run_dir: Path):
    """Every set of weights a run still holds: best, and the resume state's raw and EMA."""
    best = load_checkpoint(run_dir / "best.safetensors")
    yield f"kept: {best.info.metrics['weights']} @ {best.info.metrics['step']}", best.network
    tensors, meta = load_train_state(run_dir / "resume.safetensors")
    for prefix, name in (("model.", "raw"), ("ema.", "ema")):
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if state:
            network = copy.deepcopy(best.network)
            network.load_state_dict(state)
            yield f"{name} @ {meta['step']}", network


def score_run(label: str, run_dir: Path, clips: Path, prov: pd.DataFrame) -> list[dict]:
    """Devel UAR per held weights, on all devel clips and without the leaked ones."""
    first = load_checkpoint(run_dir / "best.safetensors")
    info = first.info
    config = from_dict({k: v for k, v in info.config.items() if k in TrainConfig.__dataclass_fields__},
                       source=str(run_dir))
    devel = load_splits(clips, replace(config, cache_dir=None))["devel"]
    good, audio, failed = decode_clips(devel, info.sample_rate, None, 1, False)
    if failed:
        raise SystemExit(f"error: {len(failed)} devel clip(s) failed to decode: {failed[:3]}")
    y = np.array([info.classes.index(c.label) for c in good])
    names = [c.name for c in good]
    subsets = {"all": np.ones(len(good), bool),
               "without leaked": ~prov.loc[names, "leaked"].to_numpy(bool),
               "without any GreatArgus_4": ~prov.loc[names, "argus4"].to_numpy(bool)}
    frontend = LogMel(info.frontend)
    rows = []
    for weights, network in run_weights(run_dir):
        with torch.no_grad():
            scores = score_clips(network.eval(), frontend, audio, round(info.clip_seconds * info.sample_rate),
                                 round(config.eval_hop_seconds * config.sample_rate), info.activation,
                                 padding=config.padding)
        row = {"run": label, "weights": weights}
        for subset, keep in subsets.items():
            m = classification_metrics(y[keep], scores[keep], list(info.classes))
            row[f"uar {subset} ({int(keep.sum())})"] = round(m["uar"], 4)
            row[f"background recall {subset}"] = round(m["per_class"]["background"]["recall"], 4)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--clips", type=Path, required=True, help="make_demo_data's OUT/clips (wav/, lab/)")
    ap.add_argument("--run", action="append", default=[], metavar="NAME=DIR", help="a training run folder")
    ap.add_argument("-o", "--out", type=Path, required=True, help="CSV to write")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    prov = devel_provenance(args.shared.resolve(), args.clips)
    bg = prov[prov.label == "background"]
    print(f"{len(prov)} devel clips, {len(bg)} background; {int(prov.argus4.sum())} hold {LEAK_SOURCE} audio, "
          f"{int(prov.leaked.sum())} of them its {LEAK_SPAN_S[0]}-{LEAK_SPAN_S[1]} s (training audio)")
    rows = []
    for spec in args.run:
        name, _, folder = spec.partition("=")
        rows += score_run(name, Path(folder), args.clips, prov)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False) if rows else "(no --run given)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    prov.to_csv(args.out.with_name(args.out.stem + "_provenance.csv"))


if __name__ == "__main__":
    main()
