import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from primate_monitor import audio
from primate_monitor.audio import (
    AudioReadError,
    audio_extensions,
    find_audio_files,
    load_audio,
    probe,
    stream_audio,
)

SR_IN = 44_100
SR_OUT = 32_000


def _tone(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 440 * t)[:, None] + 0.05 * rng.standard_normal((t.size, channels))
    return x.astype(np.float32)


@pytest.fixture
def stereo_wav(tmp_path: Path) -> Path:
    path = tmp_path / "stereo.wav"
    sf.write(path, _tone(2.5, SR_IN, channels=2), SR_IN, subtype="FLOAT")
    return path


def test_probe_reads_header_and_audiomoth_comment(tmp_path: Path) -> None:
    path = tmp_path / "20240312_053000.WAV"
    comment = "Recorded at 05:30:00 12/03/2024 (UTC) by AudioMoth 24A"
    with sf.SoundFile(path, "w", 48_000, 1, "PCM_16", format="WAV") as f:
        f.comment = comment
        f.write(np.zeros(4800, dtype=np.float32))
    info = probe(path)
    assert (info.sample_rate, info.channels, info.frames) == (48_000, 1, 4800)
    assert info.duration_s == pytest.approx(0.1)
    assert (info.format, info.subtype) == ("WAV", "PCM_16")
    assert info.comment == comment


def test_probe_without_comment_gives_none(stereo_wav: Path) -> None:
    assert probe(stereo_wav).comment is None


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("empty.wav", b"", "empty"),
        ("random.wav", bytes(range(256)) * 8, "not_audio"),
        ("clip.m4a", b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 500, "unsupported"),
    ],
)
def test_probe_classifies_unreadable_files(tmp_path: Path, name: str, content: bytes, kind: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioReadError) as err:
        probe(path)
    assert err.value.kind == kind
    assert err.value.path == str(path)
    assert name in str(err.value)


def test_probe_missing_and_no_samples(tmp_path: Path) -> None:
    with pytest.raises(AudioReadError) as err:
        probe(tmp_path / "nope.wav")
    assert err.value.kind == "missing"
    sf.write(tmp_path / "zero.wav", np.zeros((0, 1), dtype=np.float32), 8000)
    with pytest.raises(AudioReadError) as err:
        probe(tmp_path / "zero.wav")
    assert err.value.kind == "no_samples"


def test_permission_error_is_classified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # root ignores file modes, so simulate the OS refusing the open
    path = tmp_path / "locked.wav"
    path.write_bytes(b"x")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(audio, "open", refuse, raising=False)
    with pytest.raises(AudioReadError) as err:
        probe(path)
    assert err.value.kind == "permission"


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="kind"):
        AudioReadError("x.wav", "bogus", "why")


def test_load_audio_mixes_down_and_resamples(stereo_wav: Path) -> None:
    x = sf.read(stereo_wav, dtype="float32")[0]
    expected = soxr.resample(x.mean(axis=1), SR_IN, SR_OUT, quality="HQ")
    y = load_audio(stereo_wav, SR_OUT)
    assert y.dtype == np.float32 and y.ndim == 1
    assert y.shape[0] == pytest.approx(2.5 * SR_OUT, abs=1)
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_load_audio_picks_channel_and_checks_range(stereo_wav: Path) -> None:
    x = sf.read(stereo_wav, dtype="float32")[0]
    np.testing.assert_array_equal(load_audio(stereo_wav, SR_IN, channel=1), x[:, 1])
    with pytest.raises(AudioReadError, match="channel 2 out of range"):
        load_audio(stereo_wav, SR_IN, channel=2)


def test_load_audio_segment(stereo_wav: Path) -> None:
    x = sf.read(stereo_wav, dtype="float32")[0][:, 0]
    seg = load_audio(stereo_wav, SR_IN, channel=0, start_s=0.5, end_s=1.0)
    np.testing.assert_array_equal(seg, x[SR_IN // 2 : SR_IN])
    assert load_audio(stereo_wav, SR_IN, start_s=2.0).size == x.size - 2 * SR_IN
    assert load_audio(stereo_wav, SR_OUT, start_s=9.0, end_s=10.0).size == 0  # past the end
    assert load_audio(stereo_wav, SR_OUT, start_s=1.0, end_s=2.0).size == SR_OUT
    with pytest.raises(ValueError, match="start_s"):
        load_audio(stereo_wav, SR_IN, start_s=2.0, end_s=1.0)


def test_non_finite_samples_become_zero_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    x = np.full(1000, 0.1, dtype=np.float32)
    x[[10, 500, 900]] = [np.nan, np.inf, -np.inf]
    path = tmp_path / "nan.wav"
    sf.write(path, x, 8000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="primate_monitor.audio"):
        y = load_audio(path, 8000)
        blocks = list(stream_audio(path, 8000, block_seconds=0.01))
    assert np.isfinite(y).all() and y[10] == 0.0 and y[500] == 0.0
    np.testing.assert_array_equal(np.concatenate(blocks), y)
    # once for load_audio, once for the stream (not once per block)
    assert sum("non-finite" in r.message for r in caplog.records) == 2


def test_stream_equals_whole_file_resampling(stereo_wav: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from primate_monitor import audio

    monkeypatch.setattr(audio, "RESAMPLE_SEGMENT_SECONDS", 0.3)  # resampled output comes one segment at a time
    whole = load_audio(stereo_wav, SR_OUT)
    blocks = list(stream_audio(stereo_wav, SR_OUT, block_seconds=0.37))
    assert len(blocks) > 5
    assert all(b.dtype == np.float32 and b.ndim == 1 and b.size > 0 for b in blocks)
    streamed = np.concatenate(blocks)
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-4)


def test_stream_block_size_exactly_divides_file(tmp_path: Path) -> None:
    path = tmp_path / "exact.wav"
    sf.write(path, _tone(1.0, 8000), 8000, subtype="FLOAT")  # 8000 frames, 4 blocks of 2000
    streamed = np.concatenate(list(stream_audio(path, 16_000, block_seconds=0.25)))
    np.testing.assert_allclose(streamed, load_audio(path, 16_000), atol=1e-4)


def test_stream_same_rate_is_identity_and_memory_bounded(stereo_wav: Path) -> None:
    blocks = list(stream_audio(stereo_wav, SR_IN, channel=0, block_seconds=0.5))
    assert max(b.size for b in blocks) == int(0.5 * SR_IN)
    x = sf.read(stereo_wav, dtype="float32")[0][:, 0]
    np.testing.assert_array_equal(np.concatenate(blocks), x)


def test_truncated_wav_reads_surviving_samples(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cut.wav"
    sf.write(path, _tone(2.0, 16_000), 16_000, subtype="PCM_16")  # 32000 frames, 44-byte header
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    surviving = (len(data) // 2 - 44) // 2
    # libsndfile trusts the file size over the header: it reports only the frames present
    assert probe(path).frames == surviving
    with caplog.at_level(logging.WARNING, logger="primate_monitor.audio"):
        y = np.concatenate(list(stream_audio(path, 16_000, block_seconds=0.3)))
    assert y.size == surviving
    assert any("truncated" in r.message and "cut.wav" in r.message for r in caplog.records)


def test_truncated_aiff_is_reported_as_truncated(tmp_path: Path) -> None:
    """An AIFF cut short was scanned as a whole file ("ok"); libsndfile's AIFF parser says
    "SSND : N (should be M)" where its WAV parser says "data : ...", and both now count."""
    path = tmp_path / "cut.aiff"
    sf.write(path, _tone(2.0, 16_000), 16_000, format="AIFF", subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    info = probe(path)
    assert info.truncated and 0 < info.frames < 32_000
    whole = tmp_path / "whole.aiff"
    sf.write(whole, _tone(1.0, 16_000), 16_000, format="AIFF", subtype="PCM_16")
    assert not probe(whole).truncated


def _cut_copy(whole: Path, fraction: float) -> Path:
    """The first ``fraction`` of ``whole``'s bytes, as a recorder that died mid-write leaves it."""
    cut = whole.with_name("cut" + whole.suffix)
    cut.write_bytes(whole.read_bytes()[: int(len(whole.read_bytes()) * fraction)])
    return cut


@pytest.mark.parametrize("subtype, suffix", [("VORBIS", ".ogg"), ("OPUS", ".opus")])
def test_an_ogg_stream_cut_short_is_truncated(tmp_path: Path, subtype: str, suffix: str) -> None:
    """A cut Ogg file was "ok": libsndfile counts the frames of the pages that are there, so
    nothing looked missing. A closed Ogg stream ends with an end-of-stream page; a cut one does
    not, and libsndfile says "Last page lacks an end-of-stream bit"."""
    if subtype not in sf.available_subtypes("OGG"):
        pytest.skip(f"this libsndfile cannot write Ogg {subtype}")
    whole = tmp_path / f"whole{suffix}"
    sf.write(whole, _tone(6.0, 16_000), 16_000, format="OGG", subtype=subtype)
    assert not probe(whole).truncated
    cut = _cut_copy(whole, 0.5)
    info = probe(cut)
    assert info.truncated and 0 < info.duration_s < 5.0
    y = np.concatenate(list(stream_audio(cut, 16_000)))  # what is there is still read
    assert abs(y.size - info.frames) <= 1


def test_an_mp3_cut_short_streams_what_is_there_then_says_truncated(tmp_path: Path) -> None:
    """A cut MP3 keeps the frame count of its Xing header, and libsndfile's decoder simply stops
    early: the scan called it complete. The stream now yields the audio that decodes, then raises
    a "truncated" AudioReadError saying where decoding stopped (the scan keeps what came before)."""
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile has no MP3")
    whole = tmp_path / "whole.mp3"
    sf.write(whole, _tone(20.0, 16_000), 16_000, format="MP3", subtype="MPEG_LAYER_III")
    assert sum(b.size for b in stream_audio(whole, 16_000)) == probe(whole).frames  # no false alarm
    cut = _cut_copy(whole, 0.5)
    got = []
    with pytest.raises(AudioReadError) as caught:
        for block in stream_audio(cut, 8_000, block_seconds=3.0):
            got.append(block)
    assert caught.value.kind == "truncated" and "cut.mp3" in str(caught.value)
    assert "of the 20.000 s the file declares" in str(caught.value)
    assert 5.0 < sum(b.size for b in got) / 8_000 < 15.0  # the first half or so, resampled, kept


def seconds_before_corrupt(path: Path, rate: int = 16_000) -> float:
    """Stream ``path`` until it raises its "corrupt" error; the seconds of audio yielded before."""
    got = []
    with pytest.raises(AudioReadError) as err:
        for x in stream_audio(path, rate):
            got.append(x)
    assert err.value.kind == "corrupt"
    return sum(len(x) for x in got) / rate


def test_a_flac_garbled_midway_keeps_what_decodes_before_it(tmp_path: Path) -> None:
    """5,000 bytes of garbage in the middle of a real FLAC: libsndfile loses sync and can no
    longer seek on that handle, so the salvage opens the file afresh and keeps the audio before
    the damage (it was 0 s: the file failed at "frame 0")."""
    source = Path(__file__).parent.parent / "sample_data" / "recordings" / "20240312_053000.flac"
    data = bytearray(source.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 5000] = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    path = tmp_path / "garbled.flac"
    path.write_bytes(bytes(data))
    kept = seconds_before_corrupt(path)
    assert 0.4 * probe(path).duration_s < kept < 0.6 * probe(path).duration_s  # up to the damage, near the middle


def test_decode_error_mid_stream_is_corrupt_and_keeps_the_audio_before_it(stereo_wav: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames from BAD on cannot be decoded (a damaged file). The block holding BAD is read again
    in SALVAGE_FRAMES steps, so the audio up to the last whole step before BAD is kept, exactly;
    then the stream stops with a "corrupt" error that names the first frame not kept."""
    from primate_monitor.audio import SALVAGE_FRAMES

    bad = int(1.2 * SR_IN)
    real_read = sf.SoundFile.read

    def damaged_read(self: sf.SoundFile, frames: int = -1, *args: object, **kwargs: object) -> np.ndarray:
        if self.tell() + frames > bad:
            raise sf.LibsndfileError(1, prefix="Error reading: ")
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", damaged_read)
    block = int(0.5 * SR_IN)
    kept_frames = (bad // block) * block + (bad % block) // SALVAGE_FRAMES * SALVAGE_FRAMES
    got = []
    with pytest.raises(AudioReadError) as err:
        for x in stream_audio(stereo_wav, SR_IN, block_seconds=0.5):  # the file's own rate: no resampling
            got.append(x)
    assert err.value.kind == "corrupt" and "stereo.wav" in str(err.value)
    assert f"decode error at frame {kept_frames} " in str(err.value)
    monkeypatch.undo()
    intact = sf.read(stereo_wav, dtype="float32")[0].mean(axis=1)
    np.testing.assert_array_equal(np.concatenate(got), intact[:kept_frames])


def test_a_flac_damaged_in_its_first_block_keeps_what_decodes(tmp_path: Path) -> None:
    """A real FLAC cut short (a recorder that died mid-write): libsndfile loses sync inside the
    first 22 s read. Before, nothing was kept, and the empty buffer stopped the whole scan with
    a ValueError; now the seconds before the damage come back, then a "corrupt" error."""
    source = Path(__file__).parent.parent / "sample_data" / "recordings" / "20240312_053000.flac"
    path = tmp_path / "cut.flac"
    path.write_bytes(source.read_bytes()[:300_000])
    seconds = seconds_before_corrupt(path)
    assert 5.0 < seconds < probe(path).duration_s  # the decodable start is kept, not the whole file


def test_stream_rejects_bad_arguments(stereo_wav: Path) -> None:
    with pytest.raises(ValueError, match="block_seconds"):
        next(stream_audio(stereo_wav, SR_OUT, block_seconds=0))
    with pytest.raises(ValueError, match="sample_rate"):
        next(stream_audio(stereo_wav, 0))


def test_audio_extensions() -> None:
    exts = audio_extensions()
    assert {"wav", "flac", "ogg", "aiff"} <= exts
    assert "raw" not in exts
    assert all(e == e.lower() and not e.startswith(".") for e in exts)
    if "MP3" in sf.available_formats():
        assert "mp3" in exts


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile built without MP3")
def test_mp3_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp3"
    sf.write(path, _tone(1.0, 48_000), 48_000, format="MP3")
    info = probe(path)
    assert info.format == "MP3" and info.sample_rate == 48_000
    assert abs(load_audio(path, 48_000).size - 48_000) < 48_000 * 0.05


def test_find_audio_files(tmp_path: Path) -> None:
    root = tmp_path / "site"
    for rel in ["b/20240101_053000.WAV", "a/20240101_053000.wav", "a/notes.txt", "x.flac",
                ".hidden/y.wav", "a/.z.wav", "c/d/e.Flac"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    loose = tmp_path / "loose.xyz"
    loose.write_bytes(b"")
    pairs = find_audio_files([root, str(loose)])
    rels = [p.relative_to(r).as_posix() for r, p in pairs]
    assert rels == ["a/20240101_053000.wav", "b/20240101_053000.WAV", "c/d/e.Flac", "x.flac", "loose.xyz"]
    assert all(r == root for r, _ in pairs[:4])
    assert pairs[4] == (tmp_path, loose)
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        find_audio_files([tmp_path / "missing_dir"])


def test_find_audio_files_is_deterministic(tmp_path: Path) -> None:
    for name in ["c.wav", "a.wav", "b.wav"]:
        (tmp_path / name).write_bytes(b"")
    first = find_audio_files([tmp_path])
    assert [p.name for _, p in first] == ["a.wav", "b.wav", "c.wav"]
    assert find_audio_files([os.fspath(tmp_path)]) == first
