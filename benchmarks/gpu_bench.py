"""GPU measurements for issue 11, run by ``benchmarks/gpu_check.sh``; each phase is its own process.

    python benchmarks/gpu_bench.py scan  --results DIR [--smoke]   # scan x real time, decode workers swept
    python benchmarks/gpu_bench.py train --results DIR [--smoke]   # training iterations/s, 60k projection
    python benchmarks/gpu_bench.py cli   --results DIR [--smoke]   # the real `scan` command on the same audio
    python benchmarks/gpu_bench.py table --results DIR             # Markdown table from DIR/*.json

scan: one hour of real 48 kHz audio, as 16 PCM16 WAV files of 225 s (the sample recordings,
real calls in real forest backgrounds, resampled to 48 kHz and tiled; files, because a
deployment's recorders write many files and each decode worker takes one file at a time).
CNN10 at 16 kHz with freshly initialised weights: speed does not depend on the weights.
Timed from the first read to the last event table, decoding and resampling included
(files were just written, so they are in the page cache), hop 1 s, fast mode, for 1, 2, 4,
8 (and 16) decode workers; then four times the files (hard links) with the most workers, the
steady state; then the same audio already decoded in memory, to show what the network side
alone reaches, with 4, 16 (the default) and 64 spans per network call and with one feeder
thread per stream; then that pass once more under torch.profiler (profile_scan.txt).

train: the recipe step (front end, SpecAugment, MixUp, bf16 forward/backward, AMSGrad, EMA)
for CNN10-16k at batch 32 on the sample clips, and one validation pass, projected to the
recipe's 60,000 iterations with 60 validations; then 20 steps under torch.profiler
(profile_train.txt).

cli: the installed `primate-monitor scan` command (a child process) on the scan phase's audio,
with 4 and 16 decode workers, then one 4-hour file (cut into 1-hour pieces on a GPU); on a GPU
it batches spans from several recordings per call (scan_batched.BatchedExecutor). A scan of one
3 s file first measures the fixed cost (process start, imports, CUDA start-up, model load,
writing), so the table gives × real time with and without it; peak RSS is the child's, from
the kernel.

Without a GPU (or with --smoke) every size shrinks so the whole script runs on a laptop CPU
in a minute or two; its figures then mean nothing. Each phase writes its JSON after every
row, so a phase stopped by its timeout still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SOURCES = sorted((REPO / "sample_data" / "recordings").glob("*.[wf][al][va]*"))
CLASSES = ("background", "chimpanzee", "gibbon", "howler_monkey", "titi_monkey")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def device_facts() -> dict:
    import torch

    facts = {"host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
             "cpus": os.cpu_count(), "cuda": torch.cuda.is_available()}
    if facts["cuda"]:
        facts |= {"gpu": torch.cuda.get_device_name(0), "cuda_runtime": torch.version.cuda}
    return facts


def save(results: Path, name: str, data: dict) -> None:
    from primate_monitor.fsutil import atomic_write

    results.mkdir(parents=True, exist_ok=True)
    with atomic_write(results / name) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---- scan -------------------------------------------------------------------------------
def make_files(folder: Path, n_files: int, seconds: float, rate: int = 48000) -> list[Path]:
    """``n_files`` PCM16 WAVs of real audio at ``rate``, each a different stretch of the tiled sample recordings."""
    import soundfile as sf

    from primate_monitor.audio import load_audio

    folder.mkdir(parents=True, exist_ok=True)
    tiled = np.concatenate([load_audio(p, rate) for p in SOURCES])
    length = int(seconds * rate)
    paths = []
    for i in range(n_files):
        path = folder / f"bench_{i:02d}_20240312_{i:06d}.wav"
        if not path.is_file() or sf.info(path).frames != length:
            audio = np.take(tiled, np.arange(i * length, (i + 1) * length), mode="wrap")  # the recordings, looped
            sf.write(path, audio, rate, subtype="PCM_16")
        paths.append(path)
    return paths


def make_model(path: Path, device) -> object:
    import torch

    from primate_monitor.checkpoint import ModelInfo, load_checkpoint, save_checkpoint
    from primate_monitor.frontend import FrontEndConfig
    from primate_monitor.models import create_model

    torch.manual_seed(0)
    info = ModelInfo("cnn10", CLASSES, "background", "sigmoid", FrontEndConfig(sample_rate=16000), 3.0)
    save_checkpoint(path, create_model("cnn10", len(CLASSES)).state_dict(), info)
    return load_checkpoint(path, device)


def timed_scan(paths: list[Path], model, config, workers: int, spans_per_call: int | None = None) -> dict:
    """Scores and event tables of every file, ``workers`` decoded at a time."""
    from primate_monitor.scanner import events_table, score_recordings

    windows = events = 0
    audio_s = 0.0
    t0 = time.perf_counter()
    for path, result in score_recordings(paths, model, config, workers=workers, spans_per_call=spans_per_call):
        if isinstance(result, Exception):
            raise result
        windows += len(result.starts_s)
        audio_s += result.duration_s
        events += len(events_table(result, model, config.events, path.name))
    sync()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "audio_s": audio_s, "xrt": audio_s / seconds, "windows": windows, "events": events}


def linked_copies(paths: list[Path], times: int) -> list[Path]:
    """``paths`` and ``times - 1`` hard links to each (a copy where links cannot be made), in a
    sibling folder: more files to scan without more bytes to write or cache."""
    import shutil

    folder = paths[0].parent.with_name(paths[0].parent.name + f"_x{times}")
    folder.mkdir(exist_ok=True)
    out = list(paths)
    for k in range(1, times):
        for p in paths:
            link = folder / f"{p.stem}_copy{k}{p.suffix}"
            if not link.is_file():
                try:
                    os.link(p, link)
                except OSError:
                    shutil.copyfile(p, link)
            out.append(link)
    return out


def decode_all(paths: list[Path], rate: int, block_seconds: float) -> list[list[np.ndarray]]:
    from primate_monitor.audio import stream_audio

    out: list[list[np.ndarray]] = [[] for _ in paths]

    def work(i: int) -> None:
        out[i] = list(stream_audio(paths[i], rate, None, block_seconds))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def timed_in_memory(blocks: list[list[np.ndarray]], model, hop: int, mode: str, spans_per_call: int | None = None,
                    feeders: int = 2) -> dict:
    """The network side alone: already decoded 16 kHz audio through score_streams, ``feeders``
    threads cutting the streams into jobs."""
    from primate_monitor.inference import make_scorer, score_streams

    scorer = make_scorer(model, hop, 32, mode, spans_per_call)
    windows = 0
    t0 = time.perf_counter()
    for _, result in score_streams(scorer, [(lambda b=b: iter(b)) for b in blocks], workers=feeders):
        if isinstance(result, BaseException):
            raise result
        windows += len(result.starts)
    sync()
    seconds = time.perf_counter() - t0
    audio_s = sum(len(x) for b in blocks for x in b) / model.info.sample_rate
    return {"seconds": seconds, "audio_s": audio_s, "xrt": audio_s / seconds, "windows": windows,
            "spans_per_call": scorer.spans_per_call}


def profiled(results: Path, name: str, work) -> None:
    """Run ``work()`` under torch.profiler and write the ops that took the most time (device time
    first where there is a GPU, then host time) to ``results/name``. Never fails the phase: the
    profile is a help for the next change, not a measurement the check depends on."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    try:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=activities) as prof:
            work()
            sync()
        averages = prof.key_averages()

        def table(key: str) -> str:
            return f"sorted by {key}:\n" + averages.table(sort_by=key, row_limit=30)

        tables = []
        for key in ("self_device_time_total", "self_cuda_time_total") if torch.cuda.is_available() else ():
            try:  # the key's name changed between torch versions; one device table is enough
                tables.append(table(key))
                break
            except Exception:  # noqa: BLE001
                continue
        tables.append(table("self_cpu_time_total"))
        results.mkdir(parents=True, exist_ok=True)
        (results / name).write_text("\n\n".join(tables) + "\n")
        log(f"profile written to {results / name}")
    except Exception as e:  # noqa: BLE001
        log(f"profiling failed ({type(e).__name__}: {e}); the measurements above stand")


def scan_phase(args: argparse.Namespace) -> None:
    import torch

    from primate_monitor.devices import resolve_device
    from primate_monitor.scanner import ScanConfig

    device = resolve_device("auto")
    small = args.smoke or device.type != "cuda"
    n_files = args.files or (2 if small else 16)
    seconds = args.file_seconds or (20.0 if small else 225.0)
    sweep = [int(w) for w in args.workers.split(",")] if args.workers else ([1, 2] if small else [1, 2, 4, 8, 16])
    facts = device_facts() | {"device": str(device), "smoke": small, "files": n_files, "file_seconds": seconds,
                              "rate_hz": 48000, "model": "cnn10 16 kHz, random init", "hop_s": 1.0, "mode": "fast"}
    report = {"facts": facts, "rows": []}
    scratch = Path(args.scratch)
    t = time.perf_counter()
    paths = make_files(scratch / "audio48k", n_files, seconds)
    log(f"{n_files} x {seconds:g} s of 48 kHz audio ready in {scratch / 'audio48k'} ({time.perf_counter() - t:.1f} s)")
    model = make_model(scratch / "cnn10_16k_init.safetensors", device)
    config = ScanConfig(hop_seconds=1.0, mode="fast", precision="fp32")
    t = time.perf_counter()
    timed_scan(paths[:1], model, config, 1)  # warm-up: CUDA context, cuDNN plans, pinned allocator
    log(f"warm-up scan of one file: {time.perf_counter() - t:.1f} s")
    row = {"input": "48 kHz WAV files, decoding included, one span per trunk call (no batching)", "workers": 1} | timed_scan(
        paths, model, config, 1, spans_per_call=1)
    report["rows"].append(row)
    save(Path(args.results), "scan.json", report)
    log(f"no batching, 1 worker: {row['seconds']:.2f} s -> {row['xrt']:.0f}x real time")
    for workers in sweep:
        row = {"input": "48 kHz WAV files, decoding included", "workers": workers} | timed_scan(paths, model, config, workers)
        report["rows"].append(row)
        save(Path(args.results), "scan.json", report)
        log(f"workers {workers}: {row['seconds']:.2f} s for {row['audio_s'] / 3600:.3f} h -> {row['xrt']:.0f}x real time")
    # steady state: in one hour with as many workers as files, all decoding comes first and the
    # GPU waits; four times the files (hard links to the same ones, so the same page-cached bytes)
    # let decoding and scoring overlap as they do over a day of recordings
    many = linked_copies(paths, 4)
    workers = max(sweep)
    row = {"input": f"48 kHz WAV files, decoding included, {len(many)} files ({len(many) * seconds / 3600:.2f} h)",
           "workers": workers} | timed_scan(many, model, config, workers)
    report["rows"].append(row)
    save(Path(args.results), "scan.json", report)
    log(f"{len(many)} files, workers {workers}: {row['seconds']:.2f} s -> {row['xrt']:.0f}x real time")
    t = time.perf_counter()
    blocks = decode_all(paths, model.info.sample_rate, config.block_seconds)
    log(f"decoded to 16 kHz in memory with {n_files} threads: {time.perf_counter() - t:.1f} s")
    for mode in ("fast", "exact"):
        row = {"input": f"16 kHz audio in memory, no decoding, {mode} mode", "workers": 0} | timed_in_memory(
            blocks, model, 16000, mode)
        report["rows"].append(row)
        save(Path(args.results), "scan.json", report)
        log(f"in memory, {mode}: {row['seconds']:.2f} s -> {row['xrt']:.0f}x real time")
    # is SPANS_PER_CALL_CUDA (16) the right size; do the 2 feeder threads' job cutting limit the above?
    for spans, feeders in ((4, 2), (64, 2), (16, len(blocks))) if device.type == "cuda" else ():
        row = {"input": f"16 kHz audio in memory, no decoding, fast mode, {spans} spans per call, {feeders} feeders",
               "workers": 0} | timed_in_memory(blocks, model, 16000, "fast", spans, feeders)
        report["rows"].append(row)
        save(Path(args.results), "scan.json", report)
        log(f"in memory, fast, {spans} spans per call, {feeders} feeders: {row['seconds']:.2f} s -> {row['xrt']:.0f}x real time")
    if device.type == "cuda":
        report["facts"]["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        save(Path(args.results), "scan.json", report)
    # where the network side's time goes: the in-memory fast pass once more, under the profiler
    profiled(Path(args.results), "profile_scan.txt", lambda: timed_in_memory(blocks, model, 16000, "fast"))


# ---- the CLI -----------------------------------------------------------------------------
def cli_scan(folder: Path, checkpoint: Path, out: Path, device: str, workers: int) -> dict:
    """``primate-monitor scan folder`` in a child process: wall seconds, exit code and the peak
    RSS of the largest child so far (ru_maxrss; ``peak_is_this_run`` says whether this run set it)."""
    import resource
    import shutil
    import subprocess

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "primate_monitor", "-q", "scan", str(folder), "-o", str(out), "--model",
           str(checkpoint), "--device", device, "--workers", str(workers)]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    row = {"workers": workers, "exit": done.returncode, "seconds": seconds, "peak_rss_mb": peak_kb / 1024,
           "peak_is_this_run": peak_kb > before}
    if done.returncode:
        row["stderr"] = done.stderr[-2000:]
    return row


def cli_phase(args: argparse.Namespace) -> None:
    import soundfile as sf
    import torch

    cuda = torch.cuda.is_available()
    small = args.smoke or not cuda
    n_files = args.files or (2 if small else 16)
    seconds = args.file_seconds or (20.0 if small else 225.0)
    sweep = [int(w) for w in args.workers.split(",")] if args.workers else ([1, 2] if small else [4, 16])
    scratch = Path(args.scratch)
    paths = make_files(scratch / "audio48k", n_files, seconds)
    checkpoint = scratch / "cnn10_16k_init.safetensors"
    if not checkpoint.is_file():
        make_model(checkpoint, torch.device("cpu"))
    one = scratch / "one_file"
    one.mkdir(exist_ok=True)
    sf.write(one / "short.wav", sf.read(paths[0], frames=3 * 48000, dtype="int16")[0], 48000, subtype="PCM_16")
    device = "cuda" if cuda else "cpu"
    facts = device_facts() | {"smoke": small, "files": n_files, "file_seconds": seconds, "device": device}
    report: dict = {"facts": facts, "rows": []}
    fixed = cli_scan(one, checkpoint, scratch / "cli_out_short", device, 1)
    report["fixed_s"] = fixed["seconds"]
    log(f"fixed cost (one 3 s file): {fixed['seconds']:.2f} s, exit {fixed['exit']}")

    def measure(label: str, folder: Path, audio_s: float, workers: int, out: str) -> None:
        row = {"input": label} | cli_scan(folder, checkpoint, scratch / out, device, workers)
        row |= {"audio_s": audio_s, "xrt": audio_s / row["seconds"],
                "xrt_after_fixed": audio_s / max(row["seconds"] - fixed["seconds"], 1e-9)}
        report["rows"].append(row)
        save(Path(args.results), "cli.json", report)
        log(f"CLI, {label}, {workers} workers: {row['seconds']:.2f} s -> {row['xrt']:.0f}x real time "
            f"({row['xrt_after_fixed']:.0f}x after the fixed cost), peak RSS {row['peak_rss_mb']:.0f} MB, exit {row['exit']}")
        if row["exit"]:
            raise SystemExit(f"scan failed:\n{row.get('stderr', '')}")

    for workers in sweep:
        measure(f"{n_files} files", paths[0].parent, n_files * seconds, workers, f"cli_out_{workers}")
    # one long recording: on a GPU with several workers the scan cuts it into 1-hour pieces
    # (scan_run.BATCHED_PIECE_SECONDS) that the workers decode side by side
    long_s = 60.0 if small else 4 * 3600.0
    long = make_files(scratch / "long48k", 1, long_s)
    measure(f"one {long_s / 3600:g} h file", long[0].parent, long_s, max(sweep), "cli_out_long")
    if fixed["exit"]:
        raise SystemExit(f"the one-file scan failed:\n{fixed.get('stderr', '')}")


# ---- train ------------------------------------------------------------------------------
def train_phase(args: argparse.Namespace) -> None:
    import torch

    from primate_monitor.config import load_config
    from primate_monitor.train import Trainer

    cuda = torch.cuda.is_available()
    small = args.smoke or not cuda
    overrides = [f"device={'cuda' if cuda else 'cpu'}", "ema_start=0"] + (["batch_size=4"] if small else [])
    warmup, max_steps, max_seconds = (1, 3, 60.0) if small else (10, 3000, args.train_seconds)
    with tempfile.TemporaryDirectory() as out:
        config = load_config(REPO / "configs" / "cnn10_16k.yaml", overrides)
        t = time.perf_counter()
        trainer = Trainer(REPO / "sample_data" / "clips", out, config)
        log(f"trainer ready ({len(trainer.train_data.clips)} training clips) in {time.perf_counter() - t:.1f} s")
        for _ in range(warmup):
            trainer.train_step()
        sync()
        steps, t0 = 0, time.perf_counter()
        while steps < max_steps and time.perf_counter() - t0 < max_seconds:
            loss = trainer.train_step()  # the loss as a device tensor: no sync per step, as in Trainer.run
            steps += 1
        sync()
        rate = steps / (time.perf_counter() - t0)
        profiled(Path(args.results), "profile_train.txt", lambda: [trainer.train_step() for _ in range(20 if cuda else 2)])
        t = time.perf_counter()
        trainer.validate()
        sync()
        validate_s = time.perf_counter() - t
    iters = 60000
    validations = iters // 1000
    report = {"facts": device_facts() | {"smoke": small, "model": "cnn10 16 kHz", "batch": config.batch_size,
                                        "devel_clips": len(trainer.devel_data.clips)},
              "steps_timed": steps, "iterations_per_s": rate, "last_loss": float(loss), "validate_s": validate_s,
              "projected_60k_s": iters / rate, "projected_60k_with_validation_s": iters / rate + validations * validate_s}
    save(Path(args.results), "train.json", report)
    log(f"{rate:.2f} it/s at batch {config.batch_size} ({steps} steps); 60k iterations: {iters / rate / 60:.1f} min "
        f"(+ {validations} validations of {validate_s:.2f} s)")


# ---- table ------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 3 * 3600 else f"{seconds / 3600:.1f} h"


def table_phase(args: argparse.Namespace) -> None:
    results = Path(args.results)
    lines: list[str] = []
    scan = json.loads((results / "scan.json").read_text()) if (results / "scan.json").is_file() else None
    train = json.loads((results / "train.json").read_text()) if (results / "train.json").is_file() else None
    facts = (scan or train or {}).get("facts", {})
    where = facts.get("gpu") or "CPU only"
    lines.append(f"Measured {facts.get('date', '?')} on {where}, {facts.get('cpus')} CPU cores, torch {facts.get('torch')}"
                 f"{', CUDA ' + facts['cuda_runtime'] if facts.get('cuda_runtime') else ''}"
                 f"{'; SMOKE RUN (tiny sizes, figures meaningless)' if facts.get('smoke') else ''}.")
    lines.append("")
    if scan:
        f = scan["facts"]
        lines.append(f"Scan: {f['files']} files x {f['file_seconds']:g} s of real 48 kHz audio "
                     f"({f['files'] * f['file_seconds'] / 3600:.2f} h), CNN10-16k ({f['model'].split(', ')[1]}), "
                     f"hop {f['hop_s']:g} s, {f['mode']} mode, window scores and event tables"
                     + (f"; peak GPU memory {f['peak_gpu_mb']:.0f} MB" if 'peak_gpu_mb' in f else "") + ".")
        lines.append("")
        lines.append("| input | decode workers | seconds | × real time | windows |")
        lines.append("|---|---|---|---|---|")
        for r in scan["rows"]:
            lines.append(f"| {r['input']} | {r['workers'] or '-'} | {r['seconds']:.2f} | **{r['xrt']:,.0f}** | {r['windows']} |")
        lines.append("")
    else:
        lines += ["Scan: no result (the phase failed or timed out; see the log).", ""]
    if train:
        f = train["facts"]
        lines.append("| device | model | batch | iterations/s | 60,000 iterations | with 60 validations |")
        lines.append("|---|---|---|---|---|---|")
        lines.append(f"| {where} | CNN10, 16 kHz | {f['batch']} | {train['iterations_per_s']:.1f} | "
                     f"{_duration(train['projected_60k_s'])} | {_duration(train['projected_60k_with_validation_s'])} |")
        lines.append("")
        lines.append(f"({train['steps_timed']} timed steps after warm-up; one validation over {f['devel_clips']} devel clips "
                     f"took {train['validate_s']:.2f} s.)")
    else:
        lines.append("Training: no result (the phase failed or timed out; see the log).")
    cli = json.loads((results / "cli.json").read_text()) if (results / "cli.json").is_file() else None
    if cli:
        f = cli["facts"]
        lines += ["", f"The `scan` command (device {f['device']}) on the same {f['files'] * f['file_seconds'] / 3600:.2f} h; "
                      f"fixed cost, from a scan of one 3 s file: {cli['fixed_s']:.2f} s.", "",
                  "| input | decode workers | seconds | × real time | × real time after the fixed cost | peak RSS (MB) |",
                  "|---|---|---|---|---|---|"]
        for r in cli["rows"]:
            lines.append(f"| {r['input']} | {r['workers']} | {r['seconds']:.2f} | **{r['xrt']:,.0f}** | {r['xrt_after_fixed']:,.0f} | "
                         f"{r['peak_rss_mb']:,.0f}{'' if r['peak_is_this_run'] else ' (≤: an earlier run set the peak)'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    from primate_monitor.fsutil import atomic_write

    with atomic_write(results / "gpu_table.md") as tmp:
        tmp.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["scan", "train", "cli", "table"])
    p.add_argument("--results", required=True, help="Folder for scan.json, train.json, gpu_table.md.")
    p.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(), "pm-gpu-bench"),
                   help="Where the test audio and the checkpoint go.")
    p.add_argument("--smoke", action="store_true", help="Tiny sizes, to test the script itself.")
    p.add_argument("--files", type=int, default=0, help="scan: number of files (default 16; smoke 2).")
    p.add_argument("--file-seconds", type=float, default=0.0, help="scan: seconds per file (default 225; smoke 20).")
    p.add_argument("--workers", default="", help="scan, cli: decode workers to sweep, e.g. 1,2,4,8 "
                                                 "(default scan 1,2,4,8,16; cli 4,16).")
    p.add_argument("--train-seconds", type=float, default=30.0, help="train: time the steps for at most this long.")
    args = p.parse_args()
    {"scan": scan_phase, "train": train_phase, "cli": cli_phase, "table": table_phase}[args.phase](args)


if __name__ == "__main__":
    main()
