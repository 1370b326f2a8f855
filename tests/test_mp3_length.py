"""MP3 length by frame headers (mp3_length), and a VBR MP3 without a Xing header, which
libsndfile reads only in part: probe and scan must say so instead of losing the rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from primate_monitor.audio import probe
from primate_monitor.cli import EXIT_SOME_FAILED, main
from primate_monitor.mp3_length import frame_at, unread_seconds, walk

needs_mp3 = pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile built without MP3")


def test_frame_at_by_hand():
    # FF FB 90 64: MPEG-1 layer III, 128 kbit/s, 44.1 kHz, no padding: 144 * 128000 / 44100 = 417 bytes
    assert frame_at(b"\xff\xfb\x90\x64", 0) == (417, 1152, 44100)
    # FF FB 92 64: the same with the padding bit: 418 bytes
    assert frame_at(b"\xff\xfb\x92\x64", 0) == (418, 1152, 44100)
    # FF F3 88 C4: MPEG-2 layer III, 64 kbit/s, 16 kHz: 72 * 64000 / 16000 = 288 bytes, 576 samples
    assert frame_at(b"\xff\xf3\x88\xc4", 0) == (288, 576, 16000)
    # FF FD 10 00: MPEG-1 layer II, 32 kbit/s, 44.1 kHz: 144 * 32000 / 44100 = 104 bytes
    assert frame_at(b"\xff\xfd\x10\x00", 0) == (104, 1152, 44100)
    for bad in (b"\xff\xfb\xf0\x64", b"\xff\xfb\x00\x64", b"\xff\xfb\x9c\x64", b"\xff\xe9\x90\x64", b"\x00\xfb\x90\x64"):
        assert frame_at(bad, 0) is None  # bitrate 15 or free, rate 3, version 1, no sync


HEADERS = [b"\xff\xfb\x90\x64", b"\xff\xfb\x92\x64", b"\xff\xf3\x88\xc4", b"\xff\xfd\x10\x00"]


# junk: no sync byte, and none of the tags a file starts or ends with (ID3v2, APE), which end or skip a walk
_JUNK = st.binary(max_size=40).map(lambda b: b.replace(b"\xff", b"\x00")).filter(
    lambda b: b"APETAGEX" not in b and not b.startswith(b"ID3"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from(HEADERS), min_size=2, max_size=6), _JUNK), min_size=1, max_size=8),
       _JUNK)
def test_walk_counts_every_frame_between_junk(runs, lead):
    """Runs of frames (zero bodies) with junk before and between them: the walk finds every frame
    and counts its samples. (After junk, a header counts only when another frame follows it, as
    in any real stream, so each run holds at least two frames.)"""
    data, expected = bytearray(lead), 0
    for headers, junk in runs:
        for header in headers:
            length, samples, _ = frame_at(header, 0)
            data += header + bytes(length - 4)
            expected += samples
        data += junk
    assert walk(bytes(data))[0] == expected


def test_a_lone_header_in_junk_is_not_a_frame():
    length = frame_at(HEADERS[0], 0)[0]
    frames = (HEADERS[0] + bytes(length - 4)) * 3
    stray = b"\x01" * 50 + HEADERS[0] + b"\x02" * 600  # a header with no frame after it: a false sync
    assert walk(frames + stray + frames)[0] == 6 * 1152


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=4000))
def test_walk_never_fails_on_any_bytes(data):
    samples, rate, _ = walk(data)
    assert samples >= 0 and (rate > 0 or samples == 0)


def _vbr_mp3(path: Path, seconds: float, rate: int = 16_000) -> Path:
    """A variable-bitrate MP3: 5 s of near silence and 5 s of loud noise in turn, so that the
    bitrate of its frames varies a lot."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(0).standard_normal(t.size)
    x = np.where((t // 5) % 2 == 0, 0.001 * noise, 0.5 * noise).astype(np.float32)
    with sf.SoundFile(path, "w", rate, 1, format="MP3", subtype="MPEG_LAYER_III", bitrate_mode="VARIABLE",
                      compression_level=0.5) as f:
        f.write(x)
    return path


def _strip_xing(src: Path, dest: Path) -> Path:
    """The same MP3 without its first frame, the one holding the Xing header."""
    data = src.read_bytes()
    assert b"Xing" in data[:1000] or b"Info" in data[:1000]
    length = frame_at(data, 0)[0]
    dest.write_bytes(data[length:])
    return dest


@needs_mp3
def test_a_vbr_mp3_without_xing_header_is_flagged_not_silently_cut(tmp_path):
    whole = _vbr_mp3(tmp_path / "whole.mp3", 60.0)
    assert probe(whole).unread_seconds == 0.0  # with its Xing header libsndfile reads it all
    assert abs(probe(whole).duration_s - 60.0) < 0.2
    (tmp_path / "in").mkdir()
    bare = _strip_xing(whole, tmp_path / "in" / "bare.mp3")
    info = probe(bare)
    # the frames hold 60 s (less the one frame removed); libsndfile's estimate is far shorter
    assert info.duration_s < 50.0
    assert info.duration_s + info.unread_seconds == pytest.approx(60.0, abs=0.2)
    assert unread_seconds(bare, info.duration_s) == pytest.approx(info.unread_seconds)
    decoded = sf.read(bare)[0]
    assert len(decoded) / 16_000 == pytest.approx(info.duration_s, abs=0.1)  # what libsndfile really decodes

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["-q", "scan", str(tmp_path / "in"), "-o", str(out)])
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    failures = (out / "failures.csv").read_text()
    assert "partial,unread_tail" in failures and "bare.mp3" in failures and "FLAC" in failures
