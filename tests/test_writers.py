from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from primate_monitor.fsutil import atomic_write
from primate_monitor.raven import read_selection_table
from primate_monitor.writers import (
    EVENT_COLUMNS,
    EVENT_SCHEMA,
    METADATA_KEY,
    WRITERS,
    AudacityWriter,
    CsvWriter,
    EXPORT_FORMATS,
    ParquetWriter,
    RavenWriter,
    ResultWriter,
    get_writer,
    read_parquet,
    write_parquet,
    write_raven_tables,
)

RAVEN_HEADER_LINE = ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\t"
                     "Species\tScore\tBegin Path\tFile Offset (s)")
RECORDINGS = [("A14/20200205_184848.WAV", "/data/A14/20200205_184848.WAV"),
              ("B02/20200205_184848.WAV", "/data/B02/20200205_184848.WAV"),
              ("B02/quiet.wav", "/data/B02/quiet.wav")]


def _events() -> pd.DataFrame:
    start = pd.Timestamp("2020-02-05 18:48:48", tz="UTC")
    rows = [
        ("A14/20200205_184848.WAV", 12.0, 15.0, "gorilla", 0.61, 0.58, 1),
        ("A14/20200205_184848.WAV", 3.0, 9.123456789, "chimpanzee", 0.93456, 0.8, 4),
        ("B02/20200205_184848.WAV", 0.0, 3.0, "chimpanzee", 0.7, 0.7, 1),
    ]
    df = pd.DataFrame(rows, columns=["recording", "begin_s", "end_s", "species", "peak_score", "mean_score",
                                     "n_windows"])
    df["recording_path"] = "/data/" + df["recording"]
    df["recording_start"] = pd.Series([start, start, pd.NaT], dtype="datetime64[ns, UTC]")
    df["begin_time"] = df["recording_start"] + pd.to_timedelta(df["begin_s"], unit="s")
    df["end_time"] = df["recording_start"] + pd.to_timedelta(df["end_s"], unit="s")
    df["low_freq_hz"] = 50.0
    df["high_freq_hz"] = 8000.0
    df["model"] = "cnn10-test"
    return df[list(EVENT_COLUMNS)]


def _empty() -> pd.DataFrame:
    return EVENT_SCHEMA.empty_table().to_pandas()


def test_registry() -> None:
    assert set(WRITERS) == {"raven", "csv", "audacity", "parquet", "windows"}
    assert EXPORT_FORMATS == ("audacity", "csv", "parquet", "raven")  # window scores are not an events format
    assert get_writer("raven") is RavenWriter
    assert all(issubclass(cls, ResultWriter) for cls in WRITERS.values())
    with pytest.raises(ValueError, match=r"unknown output format 'xml'.*audacity.*raven"):
        get_writer("xml")


def test_raven_tables_per_recording(tmp_path: Path) -> None:
    paths = write_raven_tables(_events(), RECORDINGS, tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "A14/20200205_184848.WAV.selections.txt", "B02/20200205_184848.WAV.selections.txt",
        "B02/quiet.wav.selections.txt"]
    lines = paths[0].read_text().split("\n")
    assert lines[0] == RAVEN_HEADER_LINE
    assert lines[1] == ("1\tSpectrogram 1\t1\t3.000000\t9.123457\t50.0\t8000.0\tchimpanzee\t0.9346\t"
                        "/data/A14/20200205_184848.WAV\t3.000000")
    assert lines[2].startswith("2\tSpectrogram 1\t1\t12.000000\t15.000000\t")
    assert lines[3:] == [""]  # ends with one \n
    # a recording with no events gets a header-only table
    assert paths[2].read_text() == RAVEN_HEADER_LINE + "\n"
    assert not list(tmp_path.rglob(".*.tmp"))


def test_raven_round_trip(tmp_path: Path) -> None:
    events = _events()
    path = write_raven_tables(events, RECORDINGS, tmp_path)[0]
    table = read_selection_table(path)
    assert table["Selection"].tolist() == ["1", "2"]
    assert table["Species"].tolist() == ["chimpanzee", "gorilla"]
    np.testing.assert_allclose(table["Begin Time (s)"], [3.0, 12.0])
    np.testing.assert_allclose(table["End Time (s)"], [9.123457, 15.0], atol=1e-6)
    assert table["Begin Path"].tolist() == ["/data/A14/20200205_184848.WAV"] * 2
    empty = read_selection_table(write_raven_tables(events, RECORDINGS, tmp_path)[2])
    assert len(empty) == 0 and "Species" in empty.columns


def test_raven_refuses_collisions_and_unlisted_recordings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="listed twice"):
        write_raven_tables(_events(), RECORDINGS + RECORDINGS[:1], tmp_path)
    with pytest.raises(ValueError, match="not in the list"):
        write_raven_tables(_events(), RECORDINGS[1:], tmp_path)


def test_raven_rejects_tabs_in_values(tmp_path: Path) -> None:
    events = _events()
    events.loc[0, "species"] = "bad\tname"
    with pytest.raises(ValueError, match="tab or newline"):
        write_raven_tables(events, RECORDINGS, tmp_path)
    assert not any(p.is_file() and "A14" in p.as_posix() for p in tmp_path.rglob("*"))


def test_audacity_labels(tmp_path: Path) -> None:
    paths = AudacityWriter().write_all(_events(), RECORDINGS, tmp_path)
    assert paths[0].name == "20200205_184848.WAV.labels.txt"
    assert paths[0].read_text() == ("3.000000\t9.123457\tchimpanzee (0.93)\n"
                                    "12.000000\t15.000000\tgorilla (0.61)\n")
    assert paths[2].read_text() == ""


def test_csv_one_flat_file(tmp_path: Path) -> None:
    [path] = CsvWriter().write_all(_events(), RECORDINGS, tmp_path)
    assert path == tmp_path / "events.csv"
    back = pd.read_csv(path)
    assert list(back.columns) == list(EVENT_COLUMNS) and len(back) == 3
    assert back["begin_time"].iloc[0].startswith("2020-02-05 18:49:00")
    CsvWriter().write(_empty(), tmp_path / "empty.csv")
    assert (tmp_path / "empty.csv").read_text().strip() == ",".join(EVENT_COLUMNS)


def test_parquet_schema_and_metadata_round_trip(tmp_path: Path) -> None:
    meta = {"threshold": 0.6, "classes": ["chimpanzee", "gorilla"], "hop_s": 1.0}
    path = write_parquet(_events(), tmp_path / "run" / "events.parquet", meta)
    schema = pq.read_schema(path)
    assert schema.remove_metadata().equals(EVENT_SCHEMA)
    assert schema.field("begin_time").type == pa.timestamp("us", tz="UTC")
    back = read_parquet(path)
    assert back.attrs[METADATA_KEY] == meta
    assert back["recording_start"].isna().tolist() == [False, False, True]
    assert back["begin_time"].iloc[1] == pd.Timestamp("2020-02-05 18:48:51", tz="UTC")
    # begin_s + 9.123456789 s rounds to whole microseconds
    assert back["end_time"].iloc[1] == pd.Timestamp("2020-02-05 18:48:57.123457", tz="UTC")
    pd.testing.assert_series_equal(back["species"], _events()["species"], check_dtype=False)
    assert back["n_windows"].dtype == "int64"


def test_parquet_empty_events(tmp_path: Path) -> None:
    path = ParquetWriter().write(_empty(), tmp_path / "empty.parquet", {"note": "empty"})
    back = read_parquet(path)
    assert len(back) == 0 and list(back.columns) == list(EVENT_COLUMNS)
    assert back.attrs[METADATA_KEY] == {"note": "empty"}


def test_parquet_missing_column(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model"):
        write_parquet(_events().drop(columns="model"), tmp_path / "x.parquet", {})
    assert list(tmp_path.iterdir()) == []


def test_read_parquet_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    with pytest.raises(ValueError, match="not an events file"):
        read_parquet(path)


class _FailingWriter(ResultWriter):
    suffix = ".txt"

    def write_events(self, events: pd.DataFrame, path: Path, meta) -> None:
        path.write_text("half")
        raise RuntimeError("disk full")


def test_atomic_write_leaves_no_temp_file_and_keeps_old_output(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("previous run")
    with pytest.raises(RuntimeError, match="disk full"):
        _FailingWriter().write(_events(), target)
    assert target.read_text() == "previous run"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_replaces(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
