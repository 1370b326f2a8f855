"""The log-mel front end against librosa, the reference the paper's recipe is written in."""

from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from primate_monitor.frontend import FrontEndConfig, LogMel

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def clean_clip() -> tuple[np.ndarray, int]:
    y, sr = sf.read(FIXTURES / "clean_clip.wav", dtype="float32")
    assert sr == 16000 and y.ndim == 1 and len(y) == 3 * sr
    return y, sr


def librosa_logmel(y: np.ndarray, sr: int) -> np.ndarray:
    """(frames, 64) reference log-mel, computed in float64 throughout."""
    mel = librosa.feature.melspectrogram(
        y=y.astype(np.float64), sr=sr, n_fft=1024, hop_length=320, win_length=1024, window="hann",
        center=True, pad_mode="reflect", power=2.0, n_mels=64, fmin=10, fmax=sr / 2, dtype=np.float64,
    )
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).T


@pytest.mark.parametrize("sr", [8000, 16000, 22050, 32000, 48000])
def test_mel_basis_is_librosa_slaney_exactly(sr):
    """frontend.mel_filters is a numpy port of librosa's (to keep numba out of a scan)."""
    frontend = LogMel(FrontEndConfig(sample_rate=sr))
    expected = librosa.filters.mel(sr=sr, n_fft=1024, n_mels=64, fmin=10, fmax=sr / 2)
    got = frontend.mel_basis.numpy()
    assert got.shape == (64, 513)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


def test_logmel_matches_librosa_on_real_clip(clean_clip):
    y, sr = clean_clip
    frontend = LogMel(FrontEndConfig(sample_rate=sr))
    got = frontend(torch.from_numpy(y)[None])[0, 0].numpy()
    ref = librosa_logmel(y, sr)
    # librosa's centre=True gives n // hop + 1 frames; the module keeps the first n // hop
    assert ref.shape == (len(y) // 320 + 1, 64)
    assert got.shape == (len(y) // 320, 64) == (150, 64)
    ref = ref[: got.shape[0]]
    # the clip must exercise a wide dynamic range, or the comparison proves little
    assert ref.max() - ref.min() > 50
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3)
    # and the quietest bins (where float32 STFT error would show first) are within tolerance too
    quiet = ref < np.percentile(ref, 5)
    assert np.abs(got[quiet] - ref[quiet]).max() < 1e-3


def test_silence_is_floored_at_minus_100_db():
    frontend = LogMel(FrontEndConfig(sample_rate=16000))
    out = frontend(torch.zeros(1, 16000))
    assert torch.all(out == -100.0)


@pytest.mark.parametrize("sample_rate, frames", [(16000, 150), (8000, 75)])
def test_frame_counts_for_three_seconds(sample_rate, frames):
    config = FrontEndConfig(sample_rate=sample_rate)
    assert config.frames(3 * sample_rate) == frames
    out = LogMel(config)(torch.randn(2, 3 * sample_rate))
    assert out.shape == (2, 1, frames, 64)


def test_8k_matches_librosa(clean_clip):
    y16, _ = clean_clip
    y = librosa.resample(y16, orig_sr=16000, target_sr=8000).astype(np.float32)
    got = LogMel(FrontEndConfig(sample_rate=8000))(torch.from_numpy(y)[None])[0, 0].numpy()
    ref = librosa_logmel(y, 8000)[:75]
    assert got.shape == (75, 64)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-3)


def test_batch_shape_and_examples_are_independent(clean_clip):
    y, sr = clean_clip
    frontend = LogMel(FrontEndConfig(sample_rate=sr))
    batch = torch.stack([torch.from_numpy(y), torch.from_numpy(y[::-1].copy()), torch.zeros(len(y))])
    out = frontend(batch)
    assert out.shape == (3, 1, 150, 64)
    assert out.dtype == torch.float32
    single = frontend(batch[:1])
    torch.testing.assert_close(out[:1], single, rtol=0, atol=1e-4)


def test_double_input_is_computed_in_float32():
    """The module casts to float32 on purpose (see forward); a double input still works."""
    frontend = LogMel(FrontEndConfig(sample_rate=16000))
    x = torch.randn(1, 16000, dtype=torch.float64)
    out = frontend(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, frontend(x.float()))
