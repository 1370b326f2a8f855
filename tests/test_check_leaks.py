"""scripts/check_leaks.py: the fast overlap-save search gives chunk_ncc's answers (the direct
reference), finds copies at other rates and sub-sample offsets, and survives short and silent files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).parent.parent
N = 8000  # one 1 s chunk at 8 kHz
HOP = 4000


@pytest.fixture
def leaks(monkeypatch):
    spec = importlib.util.spec_from_file_location("check_leaks", ROOT / "scripts" / "check_leaks.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "check_leaks", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


# ---- moved from tests/test_review.py ----------------------------------------------------------------
def test_leak_check_finds_shared_audio_across_sample_rates(tmp_path, monkeypatch):
    import importlib.util
    import sys

    import soxr

    spec = importlib.util.spec_from_file_location("check_leaks", ROOT / "scripts" / "check_leaks.py")
    leaks = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "check_leaks", leaks)  # dataclasses look their module up there
    spec.loader.exec_module(leaks)
    rng = np.random.default_rng(0)
    source = rng.normal(0, 0.1, 16000 * 12).astype(np.float32)  # 12 s at 16 kHz
    held = np.concatenate([rng.normal(0, 0.1, 16000 * 5), source[16000 * 2: 16000 * 6]])  # its 2-6 s at 5-9 s
    sf.write(tmp_path / "held_20200101_000000.wav", held, 16000)
    sf.write(tmp_path / "train_20200101_000000.wav", soxr.resample(source, 16000, 48000), 48000)  # another rate
    sf.write(tmp_path / "other.wav", rng.normal(0, 0.1, 16000 * 12).astype(np.float32), 16000)
    spans = leaks.shared_spans(tmp_path / "held_20200101_000000.wav", tmp_path / "train_20200101_000000.wav")
    assert len(spans) == 1
    span = spans[0]
    assert span.held_start_s == pytest.approx(5.0, abs=0.5) and span.held_end_s == pytest.approx(9.0, abs=0.5)
    assert span.train_start_s - span.held_start_s == pytest.approx(2.0 - 5.0, abs=0.01) and span.peak_ncc > 0.95
    assert leaks.shared_spans(tmp_path / "held_20200101_000000.wav", tmp_path / "other.wav") == []
    assert leaks.main(["--held-out", str(tmp_path / "held_20200101_000000.wav"),
                       "--train", str(tmp_path / "other.wav")]) == 0
    assert [p[0] for p in leaks.same_recording_pairs([tmp_path / "held_20200101_000000.wav"],
                                                     [tmp_path / "train_20200101_000000.wav"])] == ["20200101_000000"]


# ---- the fast search against the direct reference ----------------------------------------------------
def _compare(leaks, held: np.ndarray, trains: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Assert best_matches == chunk_ncc per chunk and file; return the fast (lags, nccs).

    Tolerance: the lag search runs on float32 FFTs (NCC within NCC_TOLERANCE = 2e-4 at every lag,
    else the block is redone in float64), then the chosen lag's NCC is recomputed in float64. So:
    the NCC is within 5e-8 of the Pearson correlation at the chosen lag computed here directly
    (measured ~1e-9, from float32 storage of the samples; float32 FFT values alone are ~1e-7 off),
    and that is within 1e-3 of the reference's best NCC. The lag is the reference's wherever the
    reference peak is a clear match (NCC >= 0.5; chance peaks of 1 s of noise stay near 0.05) or
    a silent window (NCC exactly 0: the first such lag); elsewhere near-ties may pick another lag.
    """
    bank = leaks.TrainBank.build(trains, [f"t{j}" for j in range(len(trains))], N)
    lags, nccs = leaks.best_matches(held, bank, HOP)
    starts = leaks.chunk_starts(held.size, N, HOP)
    assert lags.shape == nccs.shape == (len(starts), len(trains))
    for j, target in enumerate(trains):
        y = target.astype(np.float64)
        sums = (y, np.concatenate(([0.0], np.cumsum(y))), np.concatenate(([0.0], np.cumsum(y * y))))
        for i, s in enumerate(starts):
            chunk = held[s:s + N].astype(np.float64)
            ref_lag, ref_ncc = leaks.chunk_ncc(chunk, sums[0], sums[2], sums[1])
            assert (lags[i, j] == -1) == (ref_lag == -1), (i, j)
            assert nccs[i, j] == pytest.approx(ref_ncc, abs=1e-3), (i, j)
            if ref_ncc >= 0.5 or ref_ncc == 0.0:
                assert lags[i, j] == ref_lag, (i, j)
            if lags[i, j] >= 0 and nccs[i, j] != 0.0:  # not a silent window
                direct = _pearson(chunk, y[lags[i, j]:lags[i, j] + chunk.size])
                assert nccs[i, j] == pytest.approx(direct, abs=5e-8) and direct == pytest.approx(ref_ncc, abs=1e-3)
    return lags, nccs


def test_fast_search_gives_the_direct_answers_on_noise_and_copies(leaks):
    rng = np.random.default_rng(7)
    long = rng.normal(0, 0.3, 20 * N)  # 20 s: three blocks, lags on both sides of a block edge
    held = rng.normal(0, 0.05, 7 * N)
    held[N:3 * N] = long[57000:57000 + 2 * N]  # a copy across the first block edge (57537 new lags a block)
    held[4 * N:5 * N + 3000] = long[145000:145000 + N + 3000] * 0.2 + rng.normal(0, 0.002, N + 3000)  # near the end
    held[5 * N + 4000:6 * N + 4000] = 0.0  # a silent chunk
    # steps of 80 dB (past the float32 error bound: those blocks run in float64) and of 50 dB
    # (within it: float32), each with a copy in its quiet part
    loud_quiet = np.concatenate([rng.normal(0, 1.0, 6 * N), rng.normal(0, 1e-4, 6 * N)])
    loud_quiet[8 * N:9 * N + 2000] = held[N:2 * N + 2000] * 1e-3
    step50 = np.concatenate([rng.normal(0, 1.0, 6 * N), rng.normal(0, 3e-3, 6 * N)])
    step50[8 * N:9 * N + 2000] = held[N:2 * N + 2000] * 1e-2
    trains = [rng.normal(0, 0.1, 3 * N), long, rng.normal(0, 0.1, N // 2), np.zeros(16 * N), loud_quiet,
              rng.normal(0, 0.1, N), step50]
    bank = leaks.TrainBank.build(trains, [str(j) for j in range(len(trains))], N)
    assert bank.exact.any() and not bank.exact.all()  # float64 and float32 blocks both exercised
    assert bank.empty.any()  # a block of silent windows only (the 16 s silent file also ends in a live one)
    lags, nccs = _compare(leaks, held.astype(np.float32), [t.astype(np.float32) for t in trains])
    starts = leaks.chunk_starts(held.size, N, HOP)
    copied = [i for i, s in enumerate(starts) if N <= s <= 2 * N]
    assert all(nccs[i, 1] > 0.99 and lags[i, 1] == 57000 + starts[i] - N for i in copied)
    assert all(nccs[i, j] > 0.99 and lags[i, j] == 8 * N + starts[i] - N
               for i in copied if starts[i] <= N + 2000 for j in (4, 6))
    assert max(nccs[starts.index(4 * N), 1], nccs[starts.index(4 * N + HOP), 1]) > 0.99
    assert (lags[:, 2] == -1).all() and (nccs[:, 2] == 0).all()  # shorter than a chunk
    silent = starts.index(5 * N + 4000)
    assert (lags[silent, :] == -1).all()  # silent held-out chunk
    assert (nccs[:, 3] == 0).all() and (np.delete(lags[:, 3], silent) == 0).all()  # silent file: NCC 0, first lag


def test_short_held_out_uses_the_direct_answer(leaks):
    rng = np.random.default_rng(3)
    train = rng.normal(0, 0.1, 4 * N).astype(np.float32)
    _compare(leaks, train[N:N + 3000].copy(), [train, np.zeros(N, np.float32)])
    _compare(leaks, np.zeros(0, np.float32), [train])


def test_sub_sample_offset_copy_at_another_rate_is_found(tmp_path, leaks):
    import soxr
    from scipy.signal import butter, sosfilt

    rng = np.random.default_rng(11)
    # a call-like sound (energy below 800 Hz) at 48 kHz; the held-out copy starts 3 samples
    # (0.5 sample at 8 kHz, the worst sub-sample offset) into its second second
    source = sosfilt(butter(6, 800, fs=48000, output="sos"), rng.normal(0, 1, 48000 * 6)).astype(np.float32)
    held = source[48000 + 3: 48000 * 4]
    train = np.concatenate([rng.normal(0, 0.01, 48000 * 2).astype(np.float32), source])
    sf.write(tmp_path / "held.wav", held, 48000)
    sf.write(tmp_path / "train.flac", soxr.resample(train, 48000, 44100), 44100)
    sf.write(tmp_path / "other.wav", np.roll(source, 48000 * 3), 48000)
    spans = leaks.shared_spans(tmp_path / "held.wav", tmp_path / "train.flac")
    assert len(spans) == 1 and spans[0].peak_ncc > 0.95
    assert spans[0].held_start_s == 0.0 and spans[0].held_end_s == pytest.approx(3.0, abs=0.01)
    assert spans[0].train_start_s - spans[0].held_start_s == pytest.approx(3 + 3 / 48000, abs=1 / 8000)
    assert leaks.main(["--held-out", str(tmp_path / "held.wav"), "--train", str(tmp_path / "train.flac"),
                       str(tmp_path / "other.wav"), "-q"]) == 1


def test_short_and_silent_files_do_not_crash(tmp_path, leaks):
    rng = np.random.default_rng(5)
    sf.write(tmp_path / "short.wav", rng.normal(0, 0.1, 3000).astype(np.float32), 8000)
    sf.write(tmp_path / "silent.wav", np.zeros(3 * 16000, np.float32), 16000)
    sf.write(tmp_path / "noise.wav", rng.normal(0, 0.1, 5 * 8000).astype(np.float32), 8000)
    names = ["short.wav", "silent.wav", "noise.wav"]
    for held in names:
        for train in names:
            if held != train:
                assert leaks.shared_spans(tmp_path / held, tmp_path / train) == []
    files = [str(tmp_path / f) for f in names]
    assert leaks.main(["--held-out", *files[:2], "--train", *files[1:], "-q"]) == 0
    assert leaks.main(["--held-out", str(tmp_path / "missing.wav"), "--train", files[2], "-q"]) == 2
