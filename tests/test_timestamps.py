from datetime import datetime, timezone
from pathlib import Path

import pytest

from primate_monitor.timestamps import recording_start, start_from_comment, start_from_filename

UTC = timezone.utc


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("20240312_053000.WAV", datetime(2024, 3, 12, 5, 30, 0, tzinfo=UTC)),
        ("SMM04321_20240312_053000.wav", datetime(2024, 3, 12, 5, 30, 0, tzinfo=UTC)),
        ("PUMA_2014-02-07_074500.wav", datetime(2014, 2, 7, 7, 45, 0, tzinfo=UTC)),
        ("20191220_170820_22.08.wav", datetime(2019, 12, 20, 17, 8, 20, tzinfo=UTC)),
        ("A14/20200205_184848.WAV", datetime(2020, 2, 5, 18, 48, 48, tzinfo=UTC)),
        ("20200101_000000_copy_20200205_184848.wav", datetime(2020, 2, 5, 18, 48, 48, tzinfo=UTC)),  # last wins
        ("S1_20240312_053000_UTC.flac", datetime(2024, 3, 12, 5, 30, 0, tzinfo=UTC)),
    ],
)
def test_start_from_filename(name: str, expected: datetime) -> None:
    got = start_from_filename(name)
    assert got == expected and got.tzinfo is not None and got.utcoffset().total_seconds() == 0


@pytest.mark.parametrize(
    "name",
    [
        "20241312_053000.WAV",  # month 13
        "20240431_053000.WAV",  # 31 April
        "20240312_253000.WAV",  # hour 25
        "recording.wav",
        "120240312_053000.wav",  # glued to another digit
        "2024031_053000.wav",
        "HARPIA_2014-02-04_061500_EST.wav",  # local time zone: we do not guess its offset
    ],
)
def test_start_from_filename_rejects(name: str) -> None:
    assert start_from_filename(name) is None


@pytest.mark.parametrize(
    ("comment", "expected"),
    [
        ("Recorded at 05:30:00 12/03/2024 (UTC) by AudioMoth 24A", datetime(2024, 3, 12, 5, 30, tzinfo=UTC)),
        ("Recorded at 05:30:00 12/03/2024 (UTC+1) by AudioMoth 24A", datetime(2024, 3, 12, 4, 30, tzinfo=UTC)),
        ("Recorded at 05:30:00 12/03/2024 (UTC-5) by AudioMoth", datetime(2024, 3, 12, 10, 30, tzinfo=UTC)),
        ("Recorded at 05:30:00 12/03/2024 (UTC+5:30) by AudioMoth", datetime(2024, 3, 12, 0, 0, tzinfo=UTC)),
        ("Recorded at 05:30:00 12/03/2024 (UTC+10) by AudioMoth", datetime(2024, 3, 11, 19, 30, tzinfo=UTC)),
    ],
)
def test_start_from_comment(comment: str, expected: datetime) -> None:
    assert start_from_comment(comment) == expected


@pytest.mark.parametrize(
    "comment",
    [None, "", "made by hand", "Recorded at 05:30:00 32/03/2024 (UTC) by AudioMoth",
     "Recorded at 05:30:00 12/03/2024 (UTC+15) by AudioMoth", "Recorded at 05:30:00 12/03/2024 (CET)"],
)
def test_start_from_comment_unknown(comment: str | None) -> None:
    assert start_from_comment(comment) is None


def test_recording_start_prefers_comment() -> None:
    comment = "Recorded at 05:30:00 12/03/2024 (UTC+1) by AudioMoth 24A"
    path = Path("site/20240312_053000.WAV")
    assert recording_start(path, comment) == datetime(2024, 3, 12, 4, 30, tzinfo=UTC)
    assert recording_start(path, None) == datetime(2024, 3, 12, 5, 30, tzinfo=UTC)
    assert recording_start("site/clip.wav", "no date here") is None
