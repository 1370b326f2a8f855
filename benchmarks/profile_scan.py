"""Where a scan's time goes: decode, resample, STFT/mel, trunk, pooling+head, events, writing.

    python benchmarks/profile_scan.py --minutes 30 --scratch /tmp/pm-prof             # stage table
    py-spy record --format raw -o /tmp/pm-prof/scan.txt -- \
        python benchmarks/profile_scan.py --minutes 30 --scratch /tmp/pm-prof --no-timers  # sampled profile

The audio is real: the sample recordings, resampled to 48 kHz with soxr and looped to the
requested length (written to --scratch, not to the repository). The model is CNN10 at
16 kHz, freshly initialised (speed does not depend on the weights). The scan is the
library's ``score_recording`` followed by ``events_table`` and a Parquet write, i.e. what
``primate-monitor scan`` does per recording.

Stage times come from wrapping the functions of each stage with a wall-clock timer
(``--no-timers`` leaves them out, for py-spy). The trunk and the front end run in torch's
intra-op threads, so the wall clock of each call is the stage's cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from scan_bench import make_audio, make_model, peak_rss_mb  # noqa: E402

TIMES: dict[str, float] = defaultdict(float)


@contextmanager
def timed(stage: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        TIMES[stage] += time.perf_counter() - t0


def wrap(owner, name: str, stage: str) -> None:
    """Replace ``owner.name`` by a timed version of itself."""
    original = getattr(owner, name)

    def timed_call(*args, **kwargs):
        with timed(stage):
            return original(*args, **kwargs)

    setattr(owner, name, timed_call)


def install_timers(scorer_module, model) -> None:
    """Time each stage where it happens, without changing what runs."""
    import soundfile as sf

    from primate_monitor import audio

    class TimedResampler:
        def __init__(self, *args, **kwargs):
            self.inner = real_soxr.ResampleStream(*args, **kwargs)

        def resample_chunk(self, x, last=False):
            with timed("resample (soxr)"):
                return self.inner.resample_chunk(x, last=last)

    class SoxrShim:  # audio.soxr with a timed ResampleStream; everything else unchanged
        def __getattr__(self, item):
            return getattr(real_soxr, item)

        ResampleStream = TimedResampler

    real_soxr = audio.soxr
    audio.soxr = SoxrShim()
    wrap(sf.SoundFile, "read", "decode (libsndfile)")
    wrap(audio, "_mono", "decode (libsndfile)")
    from primate_monitor.frontend import LogMel

    wrap(LogMel, "forward", "STFT + mel")
    net = model.network
    wrap(net, "trunk", "trunk (CNN10 convs)")
    wrap(net.head, "pool_time", "pooling + head")
    wrap(net.head, "from_pooled", "pooling + head")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--scratch", default="/tmp/pm-prof")
    p.add_argument("--hop", type=float, default=1.0)
    p.add_argument("--mode", default="fast")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "int8"])
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--no-timers", action="store_true", help="Run the scan as is (for py-spy).")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    scratch = Path(args.scratch)
    audio_path = make_audio(scratch / f"prof_{args.minutes:g}min_48k.wav", args.minutes / 60, 48000)
    ckpt = make_model(scratch / "cnn10_16k_init.safetensors")

    from primate_monitor import inference
    from primate_monitor.checkpoint import load_checkpoint
    from primate_monitor.fsutil import atomic_write
    from primate_monitor.scanner import ScanConfig, events_table, score_recording

    model = load_checkpoint(ckpt, torch.device("cpu"))
    if not args.no_timers:
        install_timers(inference, model)
    config = ScanConfig(hop_seconds=args.hop, mode=args.mode, precision=args.precision)
    t0 = time.perf_counter()
    scores = score_recording(audio_path, model, config)
    with timed("events"):
        events = events_table(scores, model, config.events, audio_path.name)
    with timed("writing (Parquet)"):
        with atomic_write(scratch / "prof_events.parquet") as tmp:
            events.to_parquet(tmp)
    total = time.perf_counter() - t0
    audio_s = scores.duration_s
    print(f"# {args.minutes:g} min of 48 kHz audio, CNN10-16k, hop {args.hop:g} s, {args.mode} mode, "
          f"torch threads {torch.get_num_threads()}: {total:.1f} s, {audio_s / total:.1f}x real time, "
          f"{len(scores.starts_s)} windows, peak RSS {peak_rss_mb():.0f} MB")
    if not args.no_timers:
        print("| stage | seconds | share |")
        print("|---|---|---|")
        for stage, s in sorted(TIMES.items(), key=lambda kv: -kv[1]):
            print(f"| {stage} | {s:.2f} | {s / total:.1%} |")
        rest = total - sum(TIMES.values())
        print(f"| rest (job cutting, buffers, Python) | {rest:.2f} | {rest / total:.1%} |")


if __name__ == "__main__":
    main()
