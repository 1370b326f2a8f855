"""Window scoring over a stream (inference.score_stream): schedule, modes, batching, block size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from primate_monitor.audio import load_audio, stream_audio
from primate_monitor.inference import ExactScorer, FastScorer, make_scorer, score_stream
from primate_monitor.windows import window_starts

FIXTURES = Path(__file__).parent / "fixtures"
RECORDING = FIXTURES / "recording" / "20240312_053000.wav"  # 20 s, 8 kHz
SHORT_CLIP = FIXTURES / "clips" / "wav" / "devel_0001.wav"  # 2 s, 8 kHz
SR = 8000
WINDOW = 3 * SR


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scores_of(model, path, hop_s=1.0, mode="exact", batch_size=16, block_seconds=60.0):
    return score_stream(model, stream_audio(path, SR, None, block_seconds), round(hop_s * SR), batch_size, mode)


@pytest.fixture(scope="module")
def reference(tiny_model):
    """Scores of the 20 s recording, 60 s blocks, exact batch 16, by (mode, hop_s); computed once."""
    return {(mode, hop): scores_of(tiny_model, RECORDING, hop, mode) for mode in ("exact", "fast") for hop in (1.0, 3.0)}


def test_make_scorer_picks_the_mode(tiny_model):
    assert isinstance(make_scorer(tiny_model, SR, 4, "exact"), ExactScorer)
    assert isinstance(make_scorer(tiny_model, SR, 4, "fast"), FastScorer)
    with pytest.raises(ValueError, match="mode"):
        make_scorer(tiny_model, SR, 4, "turbo")


@pytest.mark.parametrize("hop_s", [1.0, 3.0])
def test_window_schedule_matches_window_starts(reference, hop_s):
    n = sf.info(RECORDING).frames
    expected = window_starts(n, WINDOW, round(hop_s * SR))
    assert len(expected) == {1.0: 18, 3.0: 7}[hop_s]  # 20 s: starts 0..17 s / 0..18 s (last one padded)
    exact, fast = reference["exact", hop_s], reference["fast", hop_s]
    np.testing.assert_array_equal(exact.starts, expected)
    np.testing.assert_array_equal(fast.starts, expected)  # fast rounds internally but reports the same starts
    assert exact.starts.dtype == np.int64
    for r in (exact, fast):
        assert r.scores.shape == (len(expected), 4)
        assert r.scores.dtype == np.float32
        assert np.isfinite(r.scores).all() and (r.scores >= 0).all() and (r.scores <= 1).all()


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_file_shorter_than_a_window_gives_one_window(tiny_model, mode):
    assert sf.info(SHORT_CLIP).frames < WINDOW
    r = scores_of(tiny_model, SHORT_CLIP, 1.0, mode)
    np.testing.assert_array_equal(r.starts, [0])
    assert r.scores.shape == (1, 4) and np.isfinite(r.scores).all()


def test_exact_mode_zero_pads_like_a_standalone_window(tiny_model):
    """A short file's single window is the clip zero-padded to 3 s, through front end and network."""
    audio = load_audio(SHORT_CLIP, SR)
    padded = np.zeros(WINDOW, dtype=np.float32)
    padded[: len(audio)] = audio
    from primate_monitor.frontend import LogMel
    from primate_monitor.predict import score_windows

    ref = score_windows(tiny_model.network, LogMel(tiny_model.info.frontend), torch.from_numpy(padded)[None], "sigmoid")
    r = scores_of(tiny_model, SHORT_CLIP, 1.0, "exact")
    np.testing.assert_allclose(r.scores, ref.numpy(), atol=1e-5)


def test_empty_stream_gives_no_windows(tiny_model):
    for mode in ("exact", "fast"):
        r = score_stream(tiny_model, iter([]), SR, 4, mode)
        assert r.starts.shape == (0,) and r.scores.shape == (0, 4)


def test_exact_mode_does_not_depend_on_batch_size(tiny_model, reference):
    one = scores_of(tiny_model, RECORDING, 1.0, "exact", batch_size=1)
    many = reference["exact", 1.0]  # batch 16
    np.testing.assert_array_equal(one.starts, many.starts)
    np.testing.assert_allclose(one.scores, many.scores, atol=1e-5)


def test_fast_mode_does_not_depend_on_batch_size(tiny_model, reference):
    a = scores_of(tiny_model, RECORDING, 1.0, "fast", batch_size=1)
    b = reference["fast", 1.0]  # batch 16
    np.testing.assert_array_equal(a.starts, b.starts)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


@pytest.mark.parametrize("mode,atol", [("exact", 1e-5), ("fast", 1e-4)])
def test_block_size_does_not_change_scores(tiny_model, reference, mode, atol):
    small = scores_of(tiny_model, RECORDING, 1.0, mode, block_seconds=1.3)
    large = reference[mode, 1.0]  # 60 s blocks
    np.testing.assert_array_equal(small.starts, large.starts)
    np.testing.assert_allclose(small.scores, large.scores, atol=atol)


def test_block_size_does_not_change_scores_when_resampling(tiny_model, tmp_path):
    """A 16 kHz copy streams through soxr; its chunking changes samples by ~1e-6, scores by less than 1e-4."""
    import soxr

    audio, sr = sf.read(RECORDING, dtype="float32")
    path = tmp_path / "rec16k.wav"
    sf.write(path, soxr.resample(audio, sr, 16000), 16000, subtype="FLOAT")
    for mode in ("exact", "fast"):
        small = scores_of(tiny_model, path, 1.0, mode, block_seconds=1.3)
        large = scores_of(tiny_model, path, 1.0, mode, block_seconds=60.0)
        np.testing.assert_array_equal(small.starts, large.starts)
        np.testing.assert_allclose(small.scores, large.scores, atol=1e-4)


def test_long_stream_with_many_spans(tiny_model, tmp_path):
    """Longer than one fast span (32 windows) and several exact batches: the streaming buffer
    (dropping old samples, keeping left context) must give the same scores as one big block."""
    audio, _ = sf.read(RECORDING, dtype="float32")
    long = np.concatenate([audio, audio[::-1]])  # 40 s, 38 windows at hop 1 s: 32 + 6 in fast mode
    path = tmp_path / "long.wav"
    sf.write(path, long, SR, subtype="FLOAT")
    for mode, atol in (("exact", 1e-5), ("fast", 1e-4)):
        small = scores_of(tiny_model, path, 1.0, mode, batch_size=8, block_seconds=0.7)
        large = scores_of(tiny_model, path, 1.0, mode, batch_size=8, block_seconds=600.0)
        np.testing.assert_array_equal(small.starts, window_starts(len(long), WINDOW, SR))
        np.testing.assert_array_equal(small.starts, large.starts)
        np.testing.assert_allclose(small.scores, large.scores, atol=atol)


def test_fast_mode_is_close_to_exact(reference):
    """Fast mode sees real audio instead of zero padding and rounds starts to the trunk's column grid
    (16 frames = 0.64 s at 8 kHz), so its scores differ from exact mode's. Observed with the tiny
    untrained model on the 20 s recording: max |diff| 0.027, mean 0.007 (hop 1 s and 3 s). The untrained
    scores hardly vary between windows (std 0.004-0.035), so a median-threshold decision test would
    measure noise; instead: a bound at ~2x the observed max, and fast must follow exact's variation
    over time for the class whose score moves most (gibbon; correlation 0.91 / 0.99 observed)."""
    for hop in (1.0, 3.0):
        exact, fast = reference["exact", hop], reference["fast", hop]
        diff = np.abs(exact.scores - fast.scores)
        assert diff.max() < 0.06, f"hop {hop}: max |fast - exact| = {diff.max():.4f}"
        assert diff.mean() < 0.02, f"hop {hop}: mean |fast - exact| = {diff.mean():.4f}"
        gibbon = 2
        r = np.corrcoef(exact.scores[:, gibbon], fast.scores[:, gibbon])[0, 1]
        assert r > 0.75, f"hop {hop}: gibbon scores correlate only {r:.2f} between modes"


def test_auto_mode_shares_convolutions_only_when_windows_overlap(tiny_model):
    from primate_monitor.inference import resolve_mode

    assert resolve_mode(tiny_model, SR * 1, "auto") == "fast"  # 3 s windows every 1 s overlap
    assert resolve_mode(tiny_model, SR * 3, "auto") == "exact"  # back to back: nothing to share
    assert resolve_mode(tiny_model, SR * 1, "exact") == "exact"
    with pytest.raises(ValueError, match="mode must be one of"):
        resolve_mode(tiny_model, SR, "quick")


def test_fast_mode_on_a_network_without_a_fast_path_is_an_error(tmp_path):
    """WRN-28-2 pools time and frequency jointly: auto falls back to exact, explicit fast refuses."""
    from primate_monitor.checkpoint import ModelInfo, load_checkpoint, save_checkpoint
    from primate_monitor.frontend import FrontEndConfig
    from primate_monitor.inference import resolve_mode
    from primate_monitor.models import create_model

    info = ModelInfo("wrn28_2", ("background", "gibbon"), "background", "sigmoid", FrontEndConfig(sample_rate=SR), 3.0)
    path = save_checkpoint(tmp_path / "wrn.safetensors", create_model("wrn28_2", 2).state_dict(), info)
    wrn = load_checkpoint(path)
    assert resolve_mode(wrn, SR, "auto") == "exact"
    assert isinstance(make_scorer(wrn, SR, 4, "auto"), ExactScorer)
    with pytest.raises(ValueError, match="no fast path"):
        make_scorer(wrn, SR, 4, "fast")


def test_sample_buffer_matches_the_whole_stream_across_appends_and_drops():
    """Reads at any offset after any appends and drops return exactly the stream's samples."""
    from primate_monitor.inference import SampleBuffer

    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(1, 5000, 60)]
    whole = np.concatenate(blocks)
    buf, kept_from, appended = SampleBuffer(), 0, 0
    for block in blocks:
        buf.append(block)
        appended += len(block)
        assert buf.end == appended
        start = int(rng.integers(kept_from, buf.end))
        stop = int(rng.integers(start + 1, buf.end + 3000))
        expected = np.zeros(stop - start, dtype=np.float32)
        n_real = min(stop, buf.end) - start  # past what is buffered reads as zeros
        expected[:n_real] = whole[start : start + n_real]
        np.testing.assert_array_equal(buf.get(start, stop), expected)
        kept_from = int(rng.integers(kept_from, buf.end + 1))
        buf.drop_before(kept_from)
        assert buf.offset == kept_from
    np.testing.assert_array_equal(buf.get(-5, 0), whole[1:6][::-1])  # reflection, as centre padding


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_several_spans_per_network_call_give_the_same_scores(tiny_model, mode):
    """The GPU path runs several spans (fast) or batches (exact) through one network call; at hop
    0.25 s the 20 s recording makes 69 windows (3 fast spans of two lengths, 9 exact batches), so
    grouping by shape and the unfold pooling are exercised. One job per call is the CPU default."""
    blocks = lambda: stream_audio(RECORDING, SR, None, 3.0)  # noqa: E731
    one = score_stream(tiny_model, blocks(), SR // 4, 8, mode, spans_per_call=1)
    many = score_stream(tiny_model, blocks(), SR // 4, 8, mode, spans_per_call=5)
    assert len(one.starts) == 69
    np.testing.assert_array_equal(one.starts, many.starts)
    np.testing.assert_allclose(one.scores, many.scores, atol=1e-5)


def test_score_streams_batches_several_streams_and_keeps_their_order(tiny_model):
    """Three decoder threads feed one scorer: each stream's scores equal scoring it alone, results
    come back in source order, and a stream whose blocks raise yields its exception, not scores."""
    from primate_monitor.inference import score_streams

    def broken():
        yield np.zeros(SR, dtype=np.float32)
        raise OSError("disk went away")

    sources = [lambda: stream_audio(RECORDING, SR, None, 2.0), broken, lambda: stream_audio(SHORT_CLIP, SR, None, 60.0),
               lambda: iter([]), lambda: stream_audio(RECORDING, SR, None, 7.0)]
    scorer = make_scorer(tiny_model, SR, 16, "fast", spans_per_call=4)
    results = list(score_streams(scorer, sources, workers=3))
    assert [i for i, _ in results] == [0, 1, 2, 3, 4]
    assert isinstance(results[1][1], OSError)
    assert results[3][1].scores.shape == (0, 4)
    for i, path in ((0, RECORDING), (2, SHORT_CLIP), (4, RECORDING)):
        alone = scores_of(tiny_model, path, 1.0, "fast")
        np.testing.assert_array_equal(results[i][1].starts, alone.starts)
        np.testing.assert_allclose(results[i][1].scores, alone.scores, atol=1e-5)


def test_score_recordings_matches_score_recording_and_reports_bad_files(tiny_model, tmp_path):
    from primate_monitor.audio import AudioReadError
    from primate_monitor.scanner import ScanConfig, score_recording, score_recordings

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    config = ScanConfig(hop_seconds=1.0, mode="exact", batch_size=8)
    results = list(score_recordings([RECORDING, bad, SHORT_CLIP], tiny_model, config, workers=2, spans_per_call=3))
    assert [p for p, _ in results] == [RECORDING, bad, SHORT_CLIP]
    assert isinstance(results[1][1], AudioReadError) and results[1][1].kind == "not_audio"
    for (path, got) in (results[0], results[2]):
        alone = score_recording(path, tiny_model, config)
        np.testing.assert_allclose(got.starts_s, alone.starts_s)
        np.testing.assert_allclose(got.scores, alone.scores, atol=1e-5)
        assert got.duration_s == alone.duration_s and got.info == alone.info and got.error is None


def test_prepare_model_keeps_only_the_folded_copy(tiny_checkpoint):
    """A checkpoint that prepare_model loads for an fp32 CPU scan is folded once and kept folded:
    the scorer uses it as it is (no second copy), and scores equal the unfolded model's."""
    import numpy as np
    import torch

    from primate_monitor.checkpoint import load_checkpoint
    from primate_monitor.inference import cpu_inference_network, score_stream
    from primate_monitor.scanner import ScanConfig, prepare_model

    def batch_norms(network):
        return sum(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())

    folded = prepare_model(tiny_checkpoint, ScanConfig())
    unfolded = load_checkpoint(tiny_checkpoint)
    assert batch_norms(folded.network) <= 1 < batch_norms(unfolded.network)  # only bn0 (no conv before it) stays
    assert cpu_inference_network(folded.network) is folded.network
    audio = np.random.default_rng(3).normal(0, 0.1, 8000 * 20).astype(np.float32)
    for mode in ("fast", "exact"):
        a = score_stream(folded, [audio], 8000, mode=mode)
        b = score_stream(unfolded, [audio], 8000, mode=mode)
        np.testing.assert_array_equal(a.starts, b.starts)
        np.testing.assert_array_equal(a.scores, b.scores)  # the same folding, done earlier
    assert prepare_model(tiny_checkpoint, ScanConfig(precision="fp32"), "cpu").network.inference_ready
