"""A recording shorter than one window is presented to the network by the model's own padding rule."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from primate_monitor.audio import load_audio
from primate_monitor.clipaudio import pad_eval
from primate_monitor.evaluate import model_padding as evaluate_padding
from primate_monitor.frontend import LogMel
from primate_monitor.inference import model_padding
from primate_monitor.predict import score_windows
from primate_monitor.scanner import ScanConfig, score_recording

FIXTURES = Path(__file__).parent / "fixtures"
SHORT_CLIP = FIXTURES / "clips" / "wav" / "devel_0001.wav"  # 2 s, 8 kHz: shorter than the 3 s window
RECORDING = FIXTURES / "recording" / "20240312_053000.wav"  # 20 s, 8 kHz


def with_padding(model, padding):
    return replace(model, info=replace(model.info, config={**model.info.config, "padding": padding}))


def standalone(model, audio, padding):
    """The clip padded as evaluation pads it, through front end and network on its own."""
    window = pad_eval(audio, round(model.info.clip_seconds * model.info.sample_rate), padding)
    with torch.no_grad():
        return score_windows(model.network.eval(), LogMel(model.info.frontend), torch.from_numpy(window)[None],
                             model.info.activation).numpy()


@pytest.mark.parametrize("padding", ["zeros_end", "repeat"])
def test_the_scan_uses_the_models_padding_rule(tiny_model, padding):
    assert model_padding(with_padding(tiny_model, padding)) == evaluate_padding(with_padding(tiny_model, padding)) == padding


def test_a_checkpoint_without_the_key_is_the_papers_zeros(tiny_model):
    bare = replace(tiny_model, info=replace(tiny_model.info, config={}))
    assert model_padding(bare) == evaluate_padding(bare) == "zeros_end"


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("padding", ["zeros_end", "repeat"])
def test_short_recording_is_one_window_padded_as_in_training(tiny_model, mode, padding):
    model = with_padding(tiny_model, padding)
    audio = load_audio(SHORT_CLIP, model.info.sample_rate)
    assert len(audio) < model.info.clip_seconds * model.info.sample_rate
    r = score_recording(SHORT_CLIP, model, ScanConfig(hop_seconds=1.0, mode=mode))
    np.testing.assert_array_equal(r.starts_s, [0.0])
    np.testing.assert_allclose(r.scores, standalone(model, audio, padding), atol=1e-5)


def test_repeat_and_zeros_present_different_audio(tiny_model):
    """So the test above can tell the two rules apart."""
    audio = load_audio(SHORT_CLIP, tiny_model.info.sample_rate)
    assert np.abs(standalone(tiny_model, audio, "repeat") - standalone(tiny_model, audio, "zeros_end")).max() > 1e-4


def test_longer_recording_keeps_its_zero_padded_last_window(tiny_model):
    """Only a recording shorter than one window is tiled: a longer one's last partial window is zero-padded
    whatever the model's padding, so its scores do not depend on the padding rule."""
    zeros = score_recording(RECORDING, with_padding(tiny_model, "zeros_end"), ScanConfig(hop_seconds=3.0, mode="exact"))
    tiled = score_recording(RECORDING, with_padding(tiny_model, "repeat"), ScanConfig(hop_seconds=3.0, mode="exact"))
    audio = load_audio(RECORDING, tiny_model.info.sample_rate)
    window = round(tiny_model.info.clip_seconds * tiny_model.info.sample_rate)
    assert int(zeros.starts_s[-1] * tiny_model.info.sample_rate) + window > len(audio)  # the last window is partial
    np.testing.assert_array_equal(zeros.scores, tiled.scores)
