"""Resampling in fixed segments (audio.ResampleGrid): a reader that starts anywhere in a file
gets exactly the samples the whole-file reader gives there (issue 10: pieces of a long
resampled recording scored ~1e-7 apart from the unsplit scan)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings, strategies as st

from primate_monitor import audio
from primate_monitor.audio import AudioReadError, ResampleGrid, load_audio, resample_segments, stream_audio
from primate_monitor.scan_execute import read_span

RATES = [(48000, 8000), (44100, 8000), (22050, 16000), (8000, 16000), (96000, 32000), (11025, 8000)]


def whole(path, sr_out, block_seconds=60.0) -> np.ndarray:
    return np.concatenate(list(stream_audio(path, sr_out, block_seconds=block_seconds)))


@pytest.fixture()
def short_segments(monkeypatch):
    """Segments of 0.5 s so that a few seconds of audio cross many boundaries."""
    monkeypatch.setattr(audio, "RESAMPLE_SEGMENT_SECONDS", 0.5)
    monkeypatch.setattr(audio, "RESAMPLE_CONTEXT_SECONDS", 0.02)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rates=st.sampled_from(RATES), seconds=st.floats(0.05, 3.0), block=st.floats(0.01, 2.0),
       start_frac=st.floats(0.0, 1.0), length_frac=st.floats(0.0, 1.2), tail=st.booleans())
def test_any_span_equals_the_whole_file_reader(short_segments, tmp_path, rates, seconds, block, start_frac,
                                               length_frac, tail):
    sr_in, sr_out = rates
    path = tmp_path / f"x_{sr_in}.wav"
    x = np.random.default_rng(int(seconds * 1000)).normal(0, 0.1, max(1, int(seconds * sr_in))).astype(np.float32)
    sf.write(path, x, sr_in, subtype="FLOAT")
    ref = whole(path, sr_out)
    # the segments do not change the signal: whole-file soxr agrees to float rounding
    np.testing.assert_allclose(ref, load_audio(path, sr_out), atol=1e-6)
    assert np.array_equal(whole(path, sr_out, block), ref), "block size changed the samples"
    start = int(start_frac * len(ref))
    stop = None if tail else start + int(length_frac * len(ref))
    part = list(read_span(path, sr_out, None, block, start, stop))
    got = np.concatenate(part) if part else np.zeros(0, np.float32)
    assert np.array_equal(got, ref[start:stop])


def test_grid_boundaries_fall_on_whole_samples():
    for sr_in, sr_out in RATES:
        g = ResampleGrid(sr_in, sr_out)
        step_in, step_out = g.steps
        assert g.seg_in * sr_out == g.seg_out * sr_in  # one segment is the same time on both sides
        assert g.seg_in % step_in == 0 and g.seg_out % step_out == 0 and g.ctx_in % step_in == 0
        assert g.source_start(0) == 0 and g.source_start(3) == 3 * g.seg_in - g.ctx_in


def test_decode_error_keeps_the_audio_before_it(short_segments):
    """A block source that fails midway: everything read before the error comes out first."""
    g = ResampleGrid(48000, 8000)
    rng = np.random.default_rng(0)
    blocks = [rng.normal(0, 0.1, 7000).astype(np.float32) for _ in range(10)]  # 70,000 frames, > 2 segments

    def failing():
        yield from blocks
        raise AudioReadError("x.wav", "corrupt", "decode error at frame 70000")

    out = []
    with pytest.raises(AudioReadError):
        for y in resample_segments(failing(), g, 0):
            out.append(y)
    complete = np.concatenate(list(resample_segments(iter(blocks), g, 0)))
    assert np.array_equal(np.concatenate(out), complete)
    assert len(complete) == round(70000 / 6)  # soxr rounds the output length
