"""Padding of short clips (issue 13): each mode on arrays whose result is known by hand,
and training and evaluation presenting a short clip by the same rule."""

from pathlib import Path

import numpy as np
import pytest

from primate_monitor import clipaudio, predict, train
from primate_monitor.clipaudio import eval_windows, pad_eval, pad_train
from primate_monitor.config import PADDINGS, ConfigError, TrainConfig, load_config

ROOT = Path(__file__).parent.parent
SHORT = Path(__file__).parent / "fixtures" / "short_clips" / "short"
A = np.array([1.0, 2.0, 3.0], dtype=np.float32)


def draws(padding, n, k=200, audio=A):
    rng = np.random.default_rng(0)
    return [pad_train(audio, n, padding, rng) for _ in range(k)]


# ---- each mode by hand ---------------------------------------------------------------
def test_zeros_end_is_the_paper_in_training_and_evaluation():
    expected = [1, 2, 3, 0, 0, 0]
    assert all(out.tolist() == expected for out in draws("zeros_end", 6))
    assert pad_eval(A, 6, "zeros_end").tolist() == expected


def test_repeat_tiles_from_a_random_phase_in_training_and_phase_0_in_evaluation():
    assert pad_eval(A, 7, "repeat").tolist() == [1, 2, 3, 1, 2, 3, 1]
    seen = {tuple(out.tolist()) for out in draws("repeat", 7)}
    assert seen == {(1, 2, 3, 1, 2, 3, 1), (2, 3, 1, 2, 3, 1, 2), (3, 1, 2, 3, 1, 2, 3)}


def test_random_offset_places_the_clip_anywhere_in_zeros_and_centres_it_in_evaluation():
    seen = {tuple(out.tolist()) for out in draws("random_offset", 5)}
    assert seen == {(1, 2, 3, 0, 0), (0, 1, 2, 3, 0), (0, 0, 1, 2, 3)}
    assert pad_eval(A, 6, "random_offset").tolist() == [0, 1, 2, 3, 0, 0]  # (6 - 3) // 2 zeros before
    assert pad_eval(A, 7, "random_offset").tolist() == [0, 0, 1, 2, 3, 0, 0]


@pytest.mark.parametrize("padding", PADDINGS)
def test_a_long_clip_is_cropped_whatever_the_padding(padding):
    audio = np.arange(10, dtype=np.float32)
    for out in draws(padding, 4, audio=audio, k=50):
        start = int(out[0])
        assert out.tolist() == list(range(start, start + 4))
    assert pad_eval(audio, 4, padding).tolist() == [0, 1, 2, 3]
    assert pad_eval(audio[:4], 4, padding).tolist() == [0, 1, 2, 3]  # exact length: as is


@pytest.mark.parametrize("padding", PADDINGS)
def test_eval_windows_pads_a_short_clip_by_pad_eval_and_hops_over_a_long_one(padding):
    windows = eval_windows(A, 6, 2, padding)
    assert windows.shape == (1, 6)
    assert windows[0].tolist() == pad_eval(A, 6, padding).tolist()
    long = np.arange(7, dtype=np.float32)
    # the scan's schedule: starts 0, 2, then a last window over the tail, zero-padded (as scan)
    assert eval_windows(long, 4, 2, padding).tolist() == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 0]]


def test_unknown_padding_is_an_error():
    with pytest.raises(ValueError, match="padding must be one of"):
        pad_eval(A, 6, "mirror")
    with pytest.raises(ValueError, match="padding must be one of"):
        pad_train(A, 6, "mirror", np.random.default_rng(0))
    with pytest.raises(ConfigError, match="padding must be one of"):
        load_config(None, ["padding=mirror"])


def test_default_repeats_and_the_paper_config_pads_zeros():
    assert TrainConfig().padding == "repeat"
    assert load_config(ROOT / "configs" / "cnn10_8k.yaml").padding == "repeat"
    assert load_config(ROOT / "configs" / "cnn10_8k_paper.yaml").padding == "zeros_end"


@pytest.mark.parametrize("padding", ["zeros_end", "random_offset", "repeat"])
def test_evaluation_window_is_one_that_training_draws(padding):
    """The deterministic evaluation window is in the support of training's random one."""
    n = 7
    assert tuple(pad_eval(A, n, padding).tolist()) in {tuple(o.tolist()) for o in draws(padding, n)}


# ---- train and evaluate use the same rule, end to end ------------------------------------
@pytest.fixture()
def spy(monkeypatch):
    """Record the padding that training batches and every evaluation window are built with."""
    calls = {"train": [], "eval": []}
    real_train, real_eval = clipaudio.pad_train, clipaudio.eval_windows

    def pad_train_spy(audio, n, padding, rng):
        calls["train"].append((len(audio) < n, padding))
        return real_train(audio, n, padding, rng)

    def eval_windows_spy(audio, n, hop, padding=clipaudio.PAPER_PADDING):
        calls["eval"].append((len(audio), n, padding))
        return real_eval(audio, n, hop, padding)

    monkeypatch.setattr(train, "pad_train", pad_train_spy)
    monkeypatch.setattr(predict, "eval_windows", eval_windows_spy)
    return calls


@pytest.mark.parametrize("padding", ["zeros_end", "repeat"])
def test_train_validation_and_evaluate_pad_short_clips_alike(tmp_path, spy, padding):
    from primate_monitor.checkpoint import load_checkpoint
    from primate_monitor.evaluate import evaluate

    config = load_config(ROOT / "configs" / "cnn10_8k.yaml", [
        "iterations=1", "eval_every=1", "batch_size=2", "clip_seconds=1", "model=cnn6", f"padding={padding}",
        f"cache_dir={tmp_path / 'cache'}", "device=cpu"])
    train.train(SHORT, tmp_path / "run", config, progress=False)
    model = load_checkpoint(tmp_path / "run" / train.BEST_NAME, "cpu")
    validation = list(spy["eval"])
    spy["eval"].clear()
    evaluate(model, SHORT, "devel", tmp_path / "eval")
    # the fixture's clips are all shorter than 1 s, so every one of them was padded
    assert spy["train"] and all(short for short, _ in spy["train"])
    assert {p for _, p in spy["train"]} == {padding}
    assert validation and {p for _, _, p in validation} == {padding}
    assert spy["eval"] and {p for _, _, p in spy["eval"]} == {padding}
    assert all(length < n for length, n, _ in spy["eval"])
    assert set(spy["eval"]) == set(validation)  # the same devel clips, padded the same way


def test_a_checkpoint_without_padding_is_evaluated_with_the_papers_zeros(tiny_model):
    """Models trained before the key existed (the bundled demo model) saw zeros_end."""
    from primate_monitor.evaluate import model_padding

    assert "padding" not in tiny_model.info.config
    assert model_padding(tiny_model) == "zeros_end"


def test_evaluate_and_exact_scan_score_a_clip_the_same_way(tiny_model):
    """One window schedule for evaluate and scan (issue 10): a clip's evaluate score is the
    maximum over the windows the exact scan scores, for a clip shorter and longer than one window."""
    from primate_monitor.frontend import LogMel
    from primate_monitor.inference import score_stream
    from primate_monitor.predict import score_clips

    info = tiny_model.info
    sr = info.sample_rate
    frontend = LogMel(info.frontend)
    rng = np.random.default_rng(3)
    for seconds in (2.0, 7.3):  # one window (padded by the model's rule), and 5 windows with a partial tail
        audio = (0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32)
        scan = score_stream(tiny_model, [audio], sr, 32, "exact")
        clip = score_clips(tiny_model.network, frontend, [audio], 3 * sr, sr, info.activation)
        assert len(scan.starts) == (1 if seconds < 3 else 6)
        np.testing.assert_allclose(clip[0], scan.scores.max(axis=0), atol=1e-5)
