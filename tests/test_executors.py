"""The executor seam under ``scan``: serial, local processes and a real Dask LocalCluster (2 worker
processes on loopback) give the same outputs; faults (a killed worker, a broken file, an
interrupted client) lose and duplicate nothing; a long recording split into pieces scores as
the unsplit one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import pickle
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from primate_monitor.audio import AudioReadError
from primate_monitor.checkpoint import load_checkpoint
from primate_monitor.scan_execute import merge_pieces, plan_pieces, scan_one, score_piece
from primate_monitor.scan_plan import Recording
from primate_monitor.scan_run import ScanRun, scan
from primate_monitor.scan_state import ScanState
from primate_monitor.scanner import ScanConfig
from primate_monitor.writers import read_parquet

distributed = pytest.importorskip("distributed")

CONFIG = ScanConfig(hop_seconds=1.0, mode="fast")
N_GOOD = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tone_noise(seconds: float, sr: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.05 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * (400 + 50 * seed) * t) * (np.sin(t) > 0.3)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Six 30 s files (8 kHz, one at 16 kHz and one at 44.1 kHz: resampled), a text file named
    .wav and an empty .wav: the broken ones must end in failures.csv whatever runs them."""
    folder = tmp_path_factory.mktemp("corpus") / "in"
    folder.mkdir()
    for i in range(N_GOOD):
        sr = {3: 16000, 5: 44100}.get(i, 8000)
        sf.write(folder / f"site{i % 2}_{i:02d}.wav", tone_noise(30.0, sr, i), sr, subtype="PCM_16")
    (folder / "broken.wav").write_bytes(b"this is not audio" * 100)
    (folder / "empty.wav").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def client():
    """One LocalCluster for the module: 2 worker processes, 1 thread each, loopback, no dashboard."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, env={"OMP_NUM_THREADS": "1"})
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def outputs(out: Path) -> tuple:
    """Everything a user compares: Parquet rows, Raven tables (bytes), recordings.csv, failures.csv."""
    events = read_parquet(out / "detections.parquet")
    events.attrs = {}
    tables = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "raven").rglob("*.txt"))}
    return events, tables, (out / "recordings.csv").read_bytes(), (out / "failures.csv").read_bytes()


def assert_same(out: Path, reference: Path) -> None:
    ours, theirs = outputs(out), outputs(reference)
    pd.testing.assert_frame_equal(ours[0], theirs[0], check_exact=True)
    assert ours[1] == theirs[1]
    assert ours[2:] == theirs[2:]


@pytest.fixture(scope="module")
def serial_out(corpus, tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "out"
    summary = scan([corpus], out, CONFIG, tiny_checkpoint, "cpu", save_window_scores=True, progress=False)
    assert summary.files == N_GOOD + 2 and summary.scanned == N_GOOD and summary.failed == 2
    assert summary.events > 0  # the comparison must be about something
    return out


def test_audio_read_error_pickles():
    """A broken file's error crosses process borders intact (kind, path and message)."""
    error = pickle.loads(pickle.dumps(AudioReadError("/data/x.wav", "corrupt", "decode error at frame 9")))
    assert (type(error), error.kind, error.path, str(error)) == (AudioReadError, "corrupt", "/data/x.wav",
                                                                 "/data/x.wav: decode error at frame 9")


def test_scan_config_pickles():
    from primate_monitor.events import EventOptions

    config = ScanConfig(events=EventOptions(threshold=0.4, class_thresholds={"gibbon": 0.7}, classes=("gibbon",)))
    assert pickle.loads(pickle.dumps(config)) == config


def test_dask_equals_serial(corpus, tiny_checkpoint, client, serial_out, tmp_path):
    out = tmp_path / "dask"
    summary = scan([corpus], out, CONFIG, tiny_checkpoint, "cpu", save_window_scores=True, progress=False,
                   cluster=client)
    assert (summary.scanned, summary.failed) == (N_GOOD, 2)
    assert_same(out, serial_out)
    failures = pd.read_csv(out / "failures.csv")
    assert set(failures["recording"]) == {"broken.wav", "empty.wav"}
    windows, reference = pd.read_parquet(out / "windows.parquet"), pd.read_parquet(serial_out / "windows.parquet")
    pd.testing.assert_frame_equal(windows, reference, check_exact=True)


def test_processes_equal_serial(corpus, tiny_checkpoint, serial_out, tmp_path):
    out = tmp_path / "processes"
    scan([corpus], out, CONFIG, tiny_checkpoint, "cpu", workers=2, save_window_scores=True, progress=False,
         executor="processes")
    assert_same(out, serial_out)


def test_batched_equals_serial(corpus, tiny_checkpoint, serial_out, tmp_path, monkeypatch):
    """The GPU executor (``batch_recordings``), run on the CPU with 3 decoder threads: network
    calls really hold spans of several recordings, the broken files fail as in a serial scan,
    and every output equals the serial scan's (scores up to float rounding)."""
    from primate_monitor.inference import FastScorer

    calls, real = [], FastScorer.score_jobs
    monkeypatch.setattr(FastScorer, "score_jobs", lambda self, jobs: (calls.append(len(jobs)), real(self, jobs))[1])
    out = tmp_path / "batched"
    summary = scan([corpus], out, CONFIG, tiny_checkpoint, "cpu", workers=3, save_window_scores=True,
                   progress=False, batch_recordings=True)
    assert (summary.scanned, summary.failed) == (N_GOOD, 2)
    assert max(calls) > 1 and len(calls) < N_GOOD  # spans of several recordings per call
    ours, theirs = outputs(out), outputs(serial_out)
    assert ours[2:] == theirs[2:]  # recordings.csv, failures.csv
    score_columns = [c for c in ours[0].columns if "score" in c]
    pd.testing.assert_frame_equal(ours[0].drop(columns=score_columns), theirs[0].drop(columns=score_columns),
                                  check_exact=True)
    np.testing.assert_allclose(ours[0][score_columns].to_numpy(float), theirs[0][score_columns].to_numpy(float),
                               atol=1e-5)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "windows.parquet"),
                                  pd.read_parquet(serial_out / "windows.parquet"), check_exact=False, atol=1e-5)


def test_dask_workers_write_parts_and_the_client_renames_them(corpus, tiny_checkpoint, client, serial_out, tmp_path,
                                                             monkeypatch):
    """Workers that see OUT write each recording's parts into OUT/.scan-state/staged and return
    only file names; the client commits them by renaming, and nothing stays staged."""
    from primate_monitor.scan_stage import StagedResult

    kinds, real_commit = [], ScanRun.commit
    monkeypatch.setattr(ScanRun, "commit", lambda self, result: (kinds.append(type(result)), real_commit(self, result)))
    out = tmp_path / "staged"
    scan([corpus], out, CONFIG, tiny_checkpoint, "cpu", save_window_scores=True, progress=False, cluster=client)
    assert kinds == [StagedResult] * (N_GOOD + 2)  # the broken files too: a record, no parts
    assert_same(out, serial_out)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "windows.parquet"),
                                  pd.read_parquet(serial_out / "windows.parquet"), check_exact=True)
    assert not any((out / ".scan-state" / "staged").iterdir())


def test_worker_without_the_output_folder_returns_its_parts(corpus, tiny_model, tmp_path):
    """No shared storage (the stage folder is not visible): the result comes back whole."""
    from primate_monitor.scan_execute import RecordingResult, staged

    rec = Recording("site0_00.wav", corpus / "site0_00.wav")
    result = scan_one(rec, tiny_model, CONFIG, True)
    back = staged(result, str(tmp_path / "not-mounted-here"))
    assert back is result and isinstance(back, RecordingResult)


def test_stale_staged_parts_are_removed_and_foreign_files_kept(corpus, tiny_checkpoint, serial_out, tmp_path):
    """Parts a killed run staged but never committed are this tool's own: the next run deletes
    them. A file in the stage folder that is not ours stays, through --overwrite too."""
    out = tmp_path / "stale"
    scan([corpus], out, CONFIG, tiny_checkpoint, "cpu", save_window_scores=True, progress=False,
         executor="processes", workers=1)
    folder = out / ".scan-state" / "staged"
    stale = folder / f"{'a' * 16}.{'0' * 32}.events.parquet"
    stale_piece = folder / f"{'b' * 16}-1.{'1' * 32}.piece.npz"
    mine = folder / "my-notes.txt"
    for p in (stale, stale_piece, mine):
        p.write_bytes(b"x")
    scan([corpus], out, CONFIG, tiny_checkpoint, "cpu", save_window_scores=True, progress=False,
         executor="processes", workers=1)  # everything done: a resume that commits nothing
    assert not stale.exists() and not stale_piece.exists() and mine.read_bytes() == b"x"
    assert_same(out, serial_out)
    scan([corpus], out, CONFIG, tiny_checkpoint, "cpu", progress=False, overwrite=True)
    assert mine.read_bytes() == b"x"


def interrupt_after(commits: int, monkeypatch) -> None:
    """Make ScanRun.commit raise KeyboardInterrupt (a user's Ctrl-C) once ``commits`` recordings
    are committed; ``monkeypatch.undo()`` lifts it."""
    real_commit, committed = ScanRun.commit, []

    def interrupted(self, result):
        if len(committed) == commits:
            raise KeyboardInterrupt
        committed.append(result.rec.rel)
        real_commit(self, result)

    monkeypatch.setattr(ScanRun, "commit", interrupted)


def test_executor_is_not_a_run_parameter(corpus, tiny_checkpoint, client, serial_out, tmp_path, monkeypatch):
    """A serial scan interrupted after 3 commits resumes on the Dask cluster (same parameters),
    scans only the rest, and ends equal to the uninterrupted scan."""
    out = tmp_path / "resumed"
    interrupt_after(3, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        scan([corpus], out, CONFIG, tiny_checkpoint, "cpu", save_window_scores=True, progress=False)
    monkeypatch.undo()
    state = ScanState(out)
    assert len(state.keys()) == 3
    done = sum(state.record(k)["status"] != "failed" for k in state.keys())  # failed files are tried again
    summary = scan([corpus], out, CONFIG, tiny_checkpoint, "cpu", save_window_scores=True, progress=False,
                   cluster=client)
    assert summary.skipped_done == done
    assert_same(out, serial_out)


def test_split_recording_equals_unsplit(tiny_model, tmp_path):
    """A recording cut into pieces scores exactly as the whole one, in fast and exact mode, at
    the model's rate and resampled (the resampler works in fixed segments, audio.ResampleGrid)."""
    for sr, mode in ((8000, "fast"), (8000, "exact"), (16000, "fast")):
        path = tmp_path / f"long_{sr}_{mode}.wav"
        sf.write(path, tone_noise(50.0, sr, 7), sr, subtype="PCM_16")
        rec, config = Recording(path.name, path), ScanConfig(hop_seconds=0.5, mode=mode)
        pieces = plan_pieces(rec, tiny_model, config, piece_seconds=32.0)
        assert pieces is not None and len(pieces) == 2
        start = pieces[1].first * 4000  # the second piece's first window, in samples (hop 0.5 s at 8 kHz)
        if mode == "fast":  # the trunk's context before its range, but not from the start of the file
            assert 0 < pieces[1].read_from < start
        else:  # exact windows need nothing before them
            assert pieces[1].read_from == start
        whole = scan_one(rec, tiny_model, config, save_windows=True)
        split = merge_pieces([score_piece(rec, p, tiny_model, config) for p in reversed(pieces)], tiny_model,
                             config, save_windows=True)
        a, b = whole.windows, split.windows
        np.testing.assert_array_equal(a["begin_s"], b["begin_s"])
        np.testing.assert_array_equal(a.filter(like="score_").to_numpy(), b.filter(like="score_").to_numpy())
        assert whole.events is not None and len(whole.events) > 0
        pd.testing.assert_frame_equal(split.events, whole.events, check_exact=True)
        assert {k: v for k, v in split.record.items() if k != "scan_seconds"} == \
            {k: v for k, v in whole.record.items() if k != "scan_seconds"}


def test_batched_scan_interrupted_resumes_serially(corpus, tiny_checkpoint, serial_out, tmp_path, monkeypatch):
    """A batched scan stopped after 3 commits, its decoder threads still busy, stops at once and
    keeps those 3; the same scan resumed by the serial executor scans only the rest and ends
    as the serial scan (scores within float rounding, events and tables equal)."""
    out = tmp_path / "batched-resumed"
    interrupt_after(3, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        scan([corpus], out, CONFIG, tiny_checkpoint, "cpu", workers=3, save_window_scores=True, progress=False,
             batch_recordings=True)
    monkeypatch.undo()
    state = ScanState(out)
    assert len(state.keys()) == 3
    done = sum(state.record(k)["status"] != "failed" for k in state.keys())  # failed files are tried again
    summary = scan([corpus], out, CONFIG, tiny_checkpoint, "cpu", save_window_scores=True, progress=False)
    assert summary.skipped_done == done
    ours, theirs = outputs(out), outputs(serial_out)
    assert ours[1:] == theirs[1:]
    pd.testing.assert_frame_equal(ours[0], theirs[0], check_exact=False, atol=1e-5)


def test_batched_split_recordings_equal_unsplit(tiny_checkpoint, tmp_path):
    """The GPU executor with --piece-hours: two long recordings cut into pieces, every piece a
    stream of its own decoded side by side, give the unsplit serial scan's windows and events."""
    folder = tmp_path / "long"
    folder.mkdir()
    for k, sr in enumerate((8000, 16000)):  # one at the model's rate, one resampled
        sf.write(folder / f"long_{k}.wav", tone_noise(50.0, sr, 7 + k), sr, subtype="PCM_16")
    config = ScanConfig(hop_seconds=0.5, mode="fast")
    whole, split = tmp_path / "whole", tmp_path / "split"
    scan([folder], whole, config, tiny_checkpoint, "cpu", save_window_scores=True, progress=False)
    run = ScanRun([folder], split, config, load_checkpoint(tiny_checkpoint, "cpu"), workers=3, save_window_scores=True,
                  piece_seconds=16.0, batch_recordings=True)
    assert len(run.tasks(run.recordings)) >= 6  # pieces, not whole files
    run.run(progress=False)
    ours, theirs = outputs(split), outputs(whole)
    assert ours[2:] == theirs[2:]
    assert len(theirs[0]) > 0
    score_columns = [c for c in theirs[0].columns if "score" in c]
    pd.testing.assert_frame_equal(ours[0].drop(columns=score_columns), theirs[0].drop(columns=score_columns))
    np.testing.assert_allclose(ours[0][score_columns].to_numpy(float), theirs[0][score_columns].to_numpy(float),
                               atol=1e-5)
    pd.testing.assert_frame_equal(pd.read_parquet(split / "windows.parquet"), pd.read_parquet(whole / "windows.parquet"),
                                  check_exact=False, atol=1e-5)


def test_gpu_executor_cuts_long_recordings_unless_told(corpus, tiny_model, tmp_path):
    """Batched with several decoders, recordings over an hour are cut into pieces by default (one
    long file would otherwise have one decoder); an explicit --piece-hours, one worker, or the
    plain serial executor keep the choice as given."""
    from primate_monitor.scan_run import BATCHED_PIECE_SECONDS

    def pieces(**kw) -> float | None:
        return ScanRun([corpus], tmp_path / "x", CONFIG, tiny_model, **kw).piece_seconds

    assert pieces(workers=4, batch_recordings=True) == BATCHED_PIECE_SECONDS
    assert pieces(workers=4, batch_recordings=True, piece_seconds=600.0) == 600.0
    assert pieces(workers=1, batch_recordings=True) is None
    assert pieces(workers=4) is None  # on the CPU: serial, not batched


def test_workers_default_to_several_decoders_only_when_batched(corpus, tiny_model, tmp_path):
    """--workers not given: 1 on the CPU and for the process executor; on a GPU (batched)
    GPU_DECODERS threads, at most one per CPU core, and long files are then cut into pieces."""
    from primate_monitor.scan_run import BATCHED_PIECE_SECONDS, GPU_DECODERS

    def run(**kw) -> ScanRun:
        return ScanRun([corpus], tmp_path / "x", CONFIG, tiny_model, workers=None, **kw)

    assert run().workers == 1 and run().piece_seconds is None
    batched = run(batch_recordings=True)
    assert batched.workers == min(GPU_DECODERS, os.cpu_count() or 1)
    assert batched.piece_seconds == (BATCHED_PIECE_SECONDS if batched.workers > 1 else None)
    assert run(batch_recordings=True, executor="processes").workers == 1


def test_split_on_the_cluster_equals_unsplit(tiny_checkpoint, client, tmp_path, monkeypatch):
    """--piece-hours on Dask: the pieces of one recording run on both workers, are merged by the
    client, and the outputs equal the unsplit serial scan byte for byte (no resampling here)."""
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "day.wav", tone_noise(100.0, 8000, 3), 8000, subtype="PCM_16")
    whole, split = tmp_path / "whole", tmp_path / "split"
    scan([folder], whole, CONFIG, tiny_checkpoint, "cpu", save_window_scores=True, progress=False)
    run = ScanRun([folder], split, CONFIG, load_checkpoint(tiny_checkpoint, "cpu"), save_window_scores=True,
                  cluster=client, piece_seconds=32.0)
    assert len(run.tasks(run.recordings)) == 4  # 32-window pieces, at hop 1 s, of 100 windows
    from primate_monitor.scan_execute import PieceCollector

    arrived, real_add = [], PieceCollector.add
    monkeypatch.setattr(PieceCollector, "add", lambda self, r: (arrived.append(r.staged is not None), real_add(self, r))[1])
    run.run(progress=False)
    assert arrived == [True] * 4  # each piece's scores came through the output folder, not the scheduler
    assert_same(split, whole)
    assert not any((split / ".scan-state" / "staged").iterdir())  # the pieces' staged scores were read and removed


def test_worker_killed_mid_run(corpus, tiny_checkpoint, client, serial_out, tmp_path):
    """SIGKILL one worker process once the first recording is committed: Dask reruns its task on
    the other worker (the nanny restarts the dead one) and the outputs equal the serial scan."""
    out = tmp_path / "killed"
    pids = list(client.run(os.getpid).values())
    assert len(pids) == 2
    state, killed = ScanState(out), {}

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if state.dir.is_dir() and state.keys():
                killed["done_before"] = len(state.keys())
                os.kill(pids[0], signal.SIGKILL)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    summary = scan([corpus], out, CONFIG, tiny_checkpoint, "cpu", save_window_scores=True, progress=False,
                   cluster=client)
    thread.join()
    assert 0 < killed["done_before"] < N_GOOD + 2, "the kill must land while recordings are still running"
    assert summary.scanned == N_GOOD
    assert_same(out, serial_out)
    assert not any((out / ".scan-state" / "staged").iterdir())  # no orphan of the killed attempt stays
    client.wait_for_workers(2, timeout=60)  # the nanny brought it back
    assert pids[0] not in client.run(os.getpid).values()


def test_cli_rejects_a_bad_cluster(corpus, tiny_checkpoint, tmp_path):
    """A cluster address that is none of the known forms is a usage error naming them, before
    anything is written."""
    from click.testing import CliRunner

    from primate_monitor.cli import EXIT_USAGE, main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["scan", str(corpus), "-o", str(out), "--model", str(tiny_checkpoint),
                                       "--cluster", "localhost:4"])
    assert result.exit_code == EXIT_USAGE
    assert "local:N" in result.output and "tcp://" in result.output
    assert not out.exists()
    result = CliRunner().invoke(main, ["scan", str(corpus), "-o", str(out), "--model", str(tiny_checkpoint),
                                       "--cluster", "local:2", "--executor", "processes"])
    assert result.exit_code == EXIT_USAGE and "dask" in result.output


def test_scan_starts_before_the_headers_are_summed(corpus, tiny_checkpoint, serial_out, tmp_path, monkeypatch):
    """The progress total is read from every file's header in a background thread: the first
    recording is committed while that thread is still held up (a million files on network
    storage must not hold the scan back), and the outputs are unchanged."""
    from primate_monitor import scan_run as scan_run_module

    committed, order = threading.Event(), []
    real_duration, real_commit = scan_run_module._duration_or_zero, ScanRun.commit

    def slow_duration(path):
        committed.wait(timeout=30)
        order.append("probe")
        return real_duration(path)

    def commit(self, result):
        real_commit(self, result)
        order.append("commit")
        committed.set()

    monkeypatch.setattr(scan_run_module, "_duration_or_zero", slow_duration)
    monkeypatch.setattr(ScanRun, "commit", commit)
    out = tmp_path / "out"
    scan([corpus], out, CONFIG, tiny_checkpoint, "cpu", save_window_scores=True, progress=True)
    assert order[0] == "commit"
    assert_same(out, serial_out)


CLIENT_SCRIPT = """
import sys, time
from primate_monitor import scan_run
real_commit = scan_run.ScanRun.commit
def slow_commit(self, result):  # a slow client, so that the kill lands mid-run
    real_commit(self, result)
    time.sleep(0.4)
scan_run.ScanRun.commit = slow_commit
from primate_monitor.cli import main
main(sys.argv[1:])
"""


def ok_records(state: ScanState) -> int:
    records = [state.record(k) for k in state.keys()]
    return sum(r is not None and r["status"] != "failed" for r in records)


def test_client_killed_mid_run_resumes(corpus, tiny_checkpoint, serial_out, tmp_path):
    """The scan's client process (and its LocalCluster workers) SIGKILLed after two scanned files: the
    same command resumes from what was committed, and the outputs equal the serial scan."""
    out = tmp_path / "out"
    args = [str(corpus), "-o", str(out), "--model", str(tiny_checkpoint), "--hop", "1", "--mode", "fast",
            "--save-window-scores", "--device", "cpu", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, "scan", *args, "--executor", "dask",
                             "--cluster", "local:2"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = ScanState(out)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state.dir.is_dir() and ok_records(state) >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the scan ended before it could be killed: {proc.stderr.read()!r}"
        os.killpg(proc.pid, signal.SIGKILL)  # the client and the workers it started
    finally:
        proc.wait(timeout=60)
    done = ok_records(state)  # failed files are tried again, so they do not count as resumed
    assert 2 <= done < N_GOOD
    assert not (out / "run.json").exists()  # killed before it finalised
    result = subprocess.run([sys.executable, "-m", "primate_monitor", "scan", *args], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr  # 3: the two broken files failed, as in the serial scan
    run = json.loads((out / "run.json").read_text())
    assert run["totals"]["resumed_recordings"] == done
    assert_same(out, serial_out)
