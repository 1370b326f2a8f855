"""Scan speed and memory: our streaming scanner against the straightforward pipeline.

    python benchmarks/scan_bench.py --hours 1 --scratch /tmp/pm-bench           # speed table
    python benchmarks/scan_bench.py --long-hours 24 --scratch /tmp/pm-bench     # peak RSS on 24 h
    python benchmarks/scan_bench.py --agreement CKPT PATH...                     # fast vs exact
    python benchmarks/scan_bench.py --side-by-side --hours 0.25 --pairs 3        # ratio naive/ours
    python benchmarks/scan_bench.py --side-by-side --int8 --hours 0.1 --pairs 3  # ... and ours auto (int8)
    python benchmarks/scan_bench.py --int8-agreement CKPT PATH...                # int8 vs fp32

Each measurement runs in its own child process so that its peak RSS is its own. Test
audio is real: the sample recordings (real calls in real forest backgrounds) tiled to
the requested length and resampled to 48 kHz and 16 kHz. Speed does not depend on the
weights, so the speed runs use a freshly initialised CNN10 at 16 kHz (the paper's best
setting) saved as a checkpoint.

The baseline is the naive per-window pipeline: decode the whole file, resample it at once,
then per batch of 32 windows compute each window's librosa log-mel on its own and run the
batch through the plain PyTorch network (streaming the batches: it never holds every
window or every log-mel). Ratios are measured side by side in one process, interleaved
(``--side-by-side``: ours, naive, ours, naive, ...; median ratio), because the machine is
shared and absolute times drift with the other load on it.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "sample_data" / "recordings").glob("*.[wf][al][va]*"))


def make_audio(path: Path, hours: float, sample_rate: int) -> Path:
    """Tile the sample recordings (resampled to ``sample_rate``) into one PCM16 WAV, streaming."""
    import soundfile as sf

    from primate_monitor.audio import load_audio

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    pieces = [load_audio(p, sample_rate) for p in SOURCES]
    total = int(hours * 3600 * sample_rate)
    tmp = path.with_suffix(".tmp.wav")
    # a plain WAV cannot describe more than 4 GiB (a 24-h 48 kHz file is 8.3 GB): RF64 beyond that
    fmt = "RF64" if total * 2 > 2**32 - 2**20 else "WAV"
    with sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=1, subtype="PCM_16", format=fmt) as f:
        written, i = 0, 0
        while written < total:
            piece = pieces[i % len(pieces)][: total - written]
            f.write(piece)
            written += len(piece)
            i += 1
    tmp.rename(path)
    return path


def make_model(path: Path, sample_rate: int = 16000) -> Path:
    import torch

    from primate_monitor.checkpoint import ModelInfo, save_checkpoint
    from primate_monitor.frontend import FrontEndConfig
    from primate_monitor.models import create_model

    if not path.is_file():
        torch.manual_seed(0)
        classes = ("background", "chimpanzee", "gibbon", "howler_monkey", "titi_monkey")
        info = ModelInfo("cnn10", classes, "background", "sigmoid", FrontEndConfig(sample_rate=sample_rate), 3.0)
        save_checkpoint(path, create_model("cnn10", len(classes)).state_dict(), info)
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_ours(ckpt: str, audio: str, hop: float, mode: str, device: str, precision: str = "fp32") -> dict:
    from primate_monitor.audio import probe
    from primate_monitor.checkpoint import load_checkpoint
    from primate_monitor.devices import resolve_device
    from primate_monitor.scanner import ScanConfig, score_recording

    model = load_checkpoint(ckpt, resolve_device(device))
    t0 = time.perf_counter()
    result = score_recording(audio, model, ScanConfig(hop_seconds=hop, mode=mode, precision=precision))
    if model.network is not None and resolve_device(device).type == "cuda":
        import torch

        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "audio_s": probe(audio).duration_s, "windows": len(result.starts_s)}


def librosa_logmel(window: np.ndarray, cfg) -> np.ndarray:
    """One window's log-mel the way a naive pipeline computes it: librosa, on the CPU, in
    numpy; the same settings as our front end (frames = samples // hop, as in training)."""
    import librosa

    mel = librosa.feature.melspectrogram(y=window, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_samples,
                                         win_length=cfg.window_samples, window="hann", center=True,
                                         pad_mode="reflect", power=2.0, n_mels=cfg.n_mels, fmin=cfg.fmin_hz,
                                         fmax=cfg.upper_hz, htk=False, norm="slaney")
    db = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
    return db[:, : cfg.frames(len(window))].T.astype(np.float32)  # (frames, mels)


def run_baseline(ckpt: str, audio: str, hop: float, device: str, batch_size: int = 32) -> dict:
    """The naive per-window pipeline: decode the whole file, resample it at once, then per
    batch of 32 windows: cut them, a librosa log-mel per window, one network call.

    Fair to it: it holds the decoded file (that is what "decode all" means) but streams
    the windows, so it never keeps every overlapping window or every log-mel at once; its
    network is the plain eager PyTorch model, as a naive pipeline would run it."""
    import soundfile as sf
    import soxr
    import torch

    from primate_monitor.checkpoint import load_checkpoint
    from primate_monitor.devices import resolve_device
    from primate_monitor.windows import window_starts

    dev = resolve_device(device)
    model = load_checkpoint(ckpt, dev)
    net = model.network.eval()
    info = model.info
    sr, window = info.sample_rate, round(info.clip_seconds * info.sample_rate)
    t0 = time.perf_counter()
    data, file_sr = sf.read(audio, dtype="float32", always_2d=True)
    audio_s = len(data) / file_sr
    x = soxr.resample(data.mean(axis=1), file_sr, sr, quality="HQ").astype(np.float32)
    del data
    starts = window_starts(len(x), window, round(hop * sr))
    scores = []
    with torch.no_grad():
        for i in range(0, len(starts), batch_size):
            batch = [x[s : s + window] for s in starts[i : i + batch_size]]
            batch = [np.pad(w, (0, window - len(w))) for w in batch]
            mels = np.stack([librosa_logmel(w, info.frontend) for w in batch])[:, None]
            logits, _ = net(torch.from_numpy(mels).to(dev))
            scores.append(torch.sigmoid(logits.float()).cpu().numpy())
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "audio_s": audio_s, "windows": len(starts),
            "scores": np.concatenate(scores)}


def side_by_side(args: argparse.Namespace) -> None:
    """Ours (fast mode, the scan's default at hop 1 s) against the naive pipeline, interleaved
    A B A B ... in one process, so that both see the same load on a shared machine; the
    ratio is the median over the pairs. ``--int8`` adds ours with the scan's default precision,
    ``auto``, to each round (A B C A B C ...), after calibrating the checkpoint on the sample
    recordings; it prints what auto chose (int8 when the calibration's agreement check passed)."""
    import statistics

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    scratch = Path(args.scratch)
    ckpt = make_model(scratch / "cnn10_16k_init.safetensors")
    audio = make_audio(scratch / f"bench_{args.hours:g}h_48k.wav", args.hours, 48000)
    from primate_monitor.frontend import FrontEndConfig

    if args.int8:
        from primate_monitor.checkpoint import load_checkpoint
        from primate_monitor.int8_check import auto_precision
        from primate_monitor.quantize import calibrate

        calibrate(load_checkpoint(ckpt), SOURCES, seconds_per_file=120)  # afresh: with this code's agreement check
        chosen, why = auto_precision(load_checkpoint(ckpt, "cpu"))
        print(f"# --precision auto (the default) chooses {chosen}: {why}")
    librosa_logmel(np.zeros(48000, dtype=np.float32), FrontEndConfig(sample_rate=16000))  # warm-up: librosa's imports
    pairs, pairs8 = [], []
    print(f"# {platform.node()}, {time.strftime('%Y-%m-%d %H:%M')}, {args.hours * 60:g} min of 48 kHz audio, "
          f"CNN10-16k, hop {args.hop:g} s, torch threads {torch.get_num_threads()}")
    extra = " ours auto (s) | auto x real time | naive / ours auto |" if args.int8 else ""
    print("| pair | ours (s) | ours x real time | naive (s) | naive x real time | naive / ours |" + extra)
    print("|---|---|---|---|---|---|" + ("---|---|---|" if args.int8 else ""))
    for k in range(args.pairs):
        ours = run_ours(str(ckpt), str(audio), args.hop, "fast", args.device)
        base = run_baseline(str(ckpt), str(audio), args.hop, args.device)
        row = (f"| {k + 1} | {ours['seconds']:.1f} | {ours['audio_s'] / ours['seconds']:.1f} | {base['seconds']:.1f} | "
               f"{base['audio_s'] / base['seconds']:.1f} | {base['seconds'] / ours['seconds']:.2f}x |")
        pairs.append(base["seconds"] / ours["seconds"])
        if args.int8:
            q = run_ours(str(ckpt), str(audio), args.hop, "fast", args.device, "auto")
            pairs8.append(base["seconds"] / q["seconds"])
            row += f" {q['seconds']:.1f} | {q['audio_s'] / q['seconds']:.1f} | {pairs8[-1]:.2f}x |"
        print(row, flush=True)
    print(f"\nmedian ratio naive/ours over {len(pairs)} pairs: {statistics.median(pairs):.2f}x")
    if pairs8:
        print(f"median ratio naive/ours-auto over {len(pairs8)} pairs: {statistics.median(pairs8):.2f}x")


def child(args: argparse.Namespace) -> None:
    """Runs one measurement and prints one JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child == "baseline":
        result = run_baseline(args.ckpt, args.file, args.hop, args.device)
        result.pop("scores")
    else:
        result = run_ours(args.ckpt, args.file, args.hop, args.child, args.device)
    result |= {"peak_rss_mb": peak_rss_mb(), "xrt": result["audio_s"] / result["seconds"]}
    print(json.dumps(result))


def measure(kind: str, ckpt: Path, audio: Path, hop: float, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--ckpt", str(ckpt), "--file", str(audio), "--hop", str(hop),
           "--device", device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def speed_table(args: argparse.Namespace) -> None:
    scratch = Path(args.scratch)
    ckpt = make_model(scratch / "cnn10_16k_init.safetensors")
    kinds = ["fast", "exact", "baseline"] if not args.skip_baseline else ["fast", "exact"]
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"device {args.device}, CNN10-16k, {args.hours} h of audio per file")
    print("| audio | hop | pipeline | seconds | x real time | peak RSS (MB) | vs baseline |")
    print("|---|---|---|---|---|---|---|")
    for rate in (48000, 16000):
        audio = make_audio(scratch / f"bench_{args.hours:g}h_{rate // 1000}k.wav", args.hours, rate)
        for hop in (1.0, 3.0):
            results = {k: measure(k, ckpt, audio, hop, args.device) for k in kinds}
            base = results.get("baseline")
            for k, r in results.items():
                ratio = f"{base['seconds'] / r['seconds']:.2f}x" if base else "-"
                print(f"| {rate // 1000} kHz | {hop:g} s | {k} | {r['seconds']:.1f} | {r['xrt']:.1f} | {r['peak_rss_mb']:.0f} | {ratio} |",
                      flush=True)


def long_rss(args: argparse.Namespace) -> None:
    scratch = Path(args.scratch)
    ckpt = make_model(scratch / "cnn10_16k_init.safetensors")
    audio = make_audio(scratch / f"bench_{args.long_hours:g}h_16k.wav", args.long_hours, 16000)
    r = measure("fast", ckpt, audio, args.hop, args.device)
    print(f"| {args.long_hours:g} h, 16 kHz | {args.hop:g} s | fast | {r['seconds']:.0f} | {r['xrt']:.1f} | {r['peak_rss_mb']:.0f} |")


def species_columns(model) -> list[int]:
    """Score columns of the species (every class but the reject class)."""
    reject = model.info.classes.index(model.info.reject_class)
    return [k for k in range(len(model.info.classes)) if k != reject]


def agreement(args: argparse.Namespace) -> None:
    """Per-window decisions (score >= 0.5, per class) of fast vs exact on real recordings."""
    from primate_monitor.checkpoint import load_checkpoint
    from primate_monitor.scanner import ScanConfig, score_recording

    model = load_checkpoint(args.agreement[0])
    species = species_columns(model)
    print("| recording | hop | windows | decisions equal | windows with any species, exact / fast | max abs score diff |")
    print("|---|---|---|---|---|---|")
    totals = np.zeros(2)
    for path in args.agreement[1:]:
        for hop in (1.0, 3.0):
            exact = score_recording(path, model, ScanConfig(hop_seconds=hop, mode="exact", precision="fp32"))
            fast = score_recording(path, model, ScanConfig(hop_seconds=hop, mode="fast", precision="fp32"))
            de, df = exact.scores[:, species] >= 0.5, fast.scores[:, species] >= 0.5
            equal = (de == df).all(axis=1)
            totals += [equal.sum(), len(equal)]
            print(f"| {Path(path).name} | {hop:g} s | {len(equal)} | {equal.mean():.1%} | {de.any(axis=1).sum()} / "
                  f"{df.any(axis=1).sum()} | {np.abs(exact.scores - fast.scores).max():.3f} |", flush=True)
    print(f"\nall windows: {int(totals[0])}/{int(totals[1])} = {totals[0] / totals[1]:.2%} identical decisions")


def int8_agreement(args: argparse.Namespace) -> None:
    """int8 against fp32 on real recordings, fast mode at hop 1 s: score differences, per-window
    decisions at 0.5, and events (same species and times) at the model's thresholds."""
    from primate_monitor.checkpoint import load_checkpoint
    from primate_monitor.scanner import ScanConfig, prepare_model, scan_recording, score_recording

    model = load_checkpoint(args.int8_agreement[0])
    prepare_model(model, ScanConfig(precision="int8"))
    species = species_columns(model)
    print("| recording | windows | max abs score diff | 99th pct | decisions equal | events fp32 / int8 / same |")
    print("|---|---|---|---|---|---|")
    totals = np.zeros(4)
    for path in args.int8_agreement[1:]:
        a = score_recording(path, model, ScanConfig(precision="fp32"))
        b = score_recording(path, model, ScanConfig(precision="int8"))
        diff = np.abs(a.scores - b.scores)
        equal = ((a.scores[:, species] >= 0.5) == (b.scores[:, species] >= 0.5)).all(axis=1)
        key = ["species", "begin_s", "end_s"]
        ea = scan_recording(path, model, ScanConfig(precision="fp32"))[key]
        eb = scan_recording(path, model, ScanConfig(precision="int8"))[key]
        same = len(ea.merge(eb, on=key))
        totals += [equal.sum(), len(equal), len(ea) + len(eb), 2 * same]
        print(f"| {Path(path).name} | {len(equal)} | {diff.max():.4f} | {np.quantile(diff, 0.99):.4f} | "
              f"{equal.mean():.1%} | {len(ea)} / {len(eb)} / {same} |", flush=True)
    print(f"\nall windows: {int(totals[0])}/{int(totals[1])} = {totals[0] / totals[1]:.2%} identical decisions; "
          f"events: {int(totals[3] // 2)} identical of {int(totals[2] - totals[3] // 2)} distinct")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scratch", default="/tmp/pm-bench", help="Where test audio and the init checkpoint go.")
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--long-hours", type=float, default=None, help="Measure peak RSS on a recording this long.")
    p.add_argument("--hop", type=float, default=1.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--side-by-side", action="store_true",
                   help="Ours against the naive pipeline, interleaved in one process, on --hours of 48 kHz audio.")
    p.add_argument("--pairs", type=int, default=3, help="A/B pairs for --side-by-side.")
    p.add_argument("--agreement", nargs="+", metavar="CKPT_THEN_AUDIO", default=None)
    p.add_argument("--int8", action="store_true", help="--side-by-side: also time ours with the default --precision auto (int8 once calibrated).")
    p.add_argument("--int8-agreement", nargs="+", metavar="CKPT_THEN_AUDIO", default=None)
    p.add_argument("--child", choices=["fast", "exact", "baseline"], help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default).")
    args = p.parse_args()
    if args.child:
        child(args)
    elif args.side_by_side:
        side_by_side(args)
    elif args.agreement:
        agreement(args)
    elif args.int8_agreement:
        int8_agreement(args)
    elif args.long_hours:
        long_rss(args)
    else:
        speed_table(args)


if __name__ == "__main__":
    main()
