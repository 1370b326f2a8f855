"""summarize on a synthetic scan whose effort, detection histories and diel activity are
worked out by hand below (not from the code's output).

The scan (UTC; sites are the folders A and B):

    A/20240312_050000.wav  2024-03-12 05:00  1800 s   -> 05:00-05:30
    A/20240312_060000.wav  2024-03-12 06:00  1800 s   -> 06:00-06:30  (duty cycle: 30 min gap after the first)
    A/20240314_233000.wav  2024-03-14 23:30  3600 s   -> spans midnight: 0.5 h on the 14th, 0.5 h on the 15th
    B/20240312_180000.wav  2024-03-12 18:00  7200 s   -> 18:00-20:00
    B/20240313_060000.wav  2024-03-13 06:00  3600 s   -> 06:00-07:00
    B/unknown.wav          no start time      600 s   -> left out of every table (warning)
    B/broken.wav           failed                     -> not a scanned recording

A records nothing on the 13th (NA), B nothing on the 14th and 15th (NA).

Detections (peak score): gibbon A 05:10 on the 12th (0.9); gibbon A 00:10 on the 15th
(0.6, in the recording that spans midnight); chimpanzee B 19:00 on the 12th (0.55);
chimpanzee B 06:30 on the 13th (0.95); gibbon in the untimed recording (0.99, dropped).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from primate_monitor.cli import main
from primate_monitor.scan_run import RECORDING_COLUMNS
from primate_monitor.summarize import SummaryOptions, parse_occasion, parse_utc_offset, site_of, summarize, write_summary
from primate_monitor.writers import EVENT_COLUMNS, write_parquet

CLASSES = ["background", "chimpanzee", "gibbon", "titi_monkey"]

RECORDINGS = [  # recording, start (UTC ISO or ""), duration s, status
    ("A/20240312_050000.wav", "2024-03-12T05:00:00+00:00", 1800.0, "ok"),
    ("A/20240312_060000.wav", "2024-03-12T06:00:00+00:00", 1800.0, "ok"),
    ("A/20240314_233000.wav", "2024-03-14T23:30:00+00:00", 3600.0, "ok"),
    ("B/20240312_180000.wav", "2024-03-12T18:00:00+00:00", 7200.0, "ok"),
    ("B/20240313_060000.wav", "2024-03-13T06:00:00+00:00", 3600.0, "partial"),
    ("B/unknown.wav", "", 600.0, "ok"),
    ("B/broken.wav", "", 0.0, "failed"),
]
DETECTIONS = [  # recording, begin_s, species, peak score
    ("A/20240312_050000.wav", 600.0, "gibbon", 0.9),
    ("A/20240314_233000.wav", 2400.0, "gibbon", 0.6),
    ("B/20240312_180000.wav", 3600.0, "chimpanzee", 0.55),
    ("B/20240313_060000.wav", 1800.0, "chimpanzee", 0.95),
    ("B/unknown.wav", 10.0, "gibbon", 0.99),
]


@pytest.fixture
def scan_dir(tmp_path: Path) -> Path:
    out = tmp_path / "scan"
    out.mkdir()
    rows = []
    for rec, start, duration, status in RECORDINGS:
        row = dict.fromkeys(RECORDING_COLUMNS, "")
        row |= {"recording": rec, "path": f"/data/{rec}", "status": status, "duration_s": duration,
                "recording_start": start}
        rows.append(row)
    pd.DataFrame(rows, columns=RECORDING_COLUMNS).to_csv(out / "recordings.csv", index=False)
    start_of = {rec: start for rec, start, _, _ in RECORDINGS}
    events = []
    for rec, begin, species, score in DETECTIONS:
        start = pd.Timestamp(start_of[rec]) if start_of[rec] else pd.NaT
        events.append({"recording": rec, "recording_path": f"/data/{rec}", "recording_start": start, "begin_s": begin,
                       "end_s": begin + 3.0, "begin_time": start + pd.Timedelta(seconds=begin),
                       "end_time": start + pd.Timedelta(seconds=begin + 3.0), "species": species, "peak_score": score,
                       "mean_score": score, "n_windows": 1, "low_freq_hz": 10.0, "high_freq_hz": 4000.0,
                       "model": "cnn10@000000000000"})
    frame = pd.DataFrame(events, columns=list(EVENT_COLUMNS))
    for col in ("recording_start", "begin_time", "end_time"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    write_parquet(frame, out / "detections.parquet",
                  {"classes": CLASSES, "reject_class": "background", "report_classes": None})
    return out


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_effort_per_site_and_day_by_hand(scan_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        summary = summarize(scan_dir)
    write_summary(summary, tmp_path / "sum")
    assert _lines(tmp_path / "sum" / "effort.csv") == [
        "site,date,recorded_hours,n_recordings,first_start,last_end,gap_hours",
        "A,2024-03-12,1.0,2,2024-03-12 05:00:00,2024-03-12 06:30:00,0.5",
        "A,2024-03-13,0.0,0,,,0.0",
        "A,2024-03-14,0.5,1,2024-03-14 23:30:00,2024-03-15 00:00:00,0.0",
        "A,2024-03-15,0.5,1,2024-03-15 00:00:00,2024-03-15 00:30:00,0.0",
        "B,2024-03-12,2.0,1,2024-03-12 18:00:00,2024-03-12 20:00:00,0.0",
        "B,2024-03-13,1.0,1,2024-03-13 06:00:00,2024-03-13 07:00:00,0.0",
    ]
    assert summary.info["recordings_without_start"] == 1 and summary.info["recordings_used"] == 5
    assert any("1 of 6 scanned recording(s) have no known start time" in r.getMessage() for r in caplog.records)


def test_daily_detection_history_with_na_for_days_not_recorded(scan_dir, tmp_path):
    write_summary(summarize(scan_dir), tmp_path / "sum")
    assert _lines(tmp_path / "sum" / "detection_history.csv") == [
        "species,site,2024-03-12,2024-03-13,2024-03-14,2024-03-15",
        "chimpanzee,A,0,NA,0,0",
        "chimpanzee,B,1,1,NA,NA",
        "gibbon,A,1,NA,0,1",
        "gibbon,B,0,0,NA,NA",
        "titi_monkey,A,0,NA,0,0",
        "titi_monkey,B,0,0,NA,NA",
    ]
    assert _lines(tmp_path / "sum" / "occasion_effort.csv") == [
        "site,2024-03-12,2024-03-13,2024-03-14,2024-03-15",
        "A,1.0,0.0,0.5,0.5",
        "B,2.0,1.0,0.0,0.0",
    ]


def test_min_score_and_thresholds_file_filter_detections(scan_dir, tmp_path):
    strict = summarize(scan_dir, SummaryOptions(min_score=0.7)).detection_history
    gibbon_a = strict[(strict["species"] == "gibbon") & (strict["site"] == "A")].iloc[0, 2:].tolist()
    assert gibbon_a[0] == 1 and pd.isna(gibbon_a[1]) and gibbon_a[2:] == [0, 0]  # the 0.6 call no longer counts
    chimp_b = strict[(strict["species"] == "chimpanzee") & (strict["site"] == "B")].iloc[0, 2:4].tolist()
    assert chimp_b == [0, 1]  # 0.55 < 0.7, 0.95 >= 0.7

    thresholds = tmp_path / "thresholds.yaml"
    thresholds.write_text("chimpanzee: 0.9\n")
    out = tmp_path / "sum"
    result = CliRunner().invoke(main, ["summarize", str(scan_dir), "-o", str(out), "--thresholds-file", str(thresholds)])
    assert result.exit_code == 0, result.output
    lines = _lines(out / "detection_history.csv")
    assert "chimpanzee,B,0,1,NA,NA" in lines and "gibbon,A,1,NA,0,1" in lines  # gibbon uses --min-score 0


def test_six_hour_occasions(scan_dir):
    history = summarize(scan_dir, SummaryOptions(occasion="6h")).detection_history
    assert list(history.columns[2:5]) == ["2024-03-12T00:00", "2024-03-12T06:00", "2024-03-12T12:00"]
    assert len(history.columns) == 2 + 13  # 12th 00:00 to 15th 00:00-06:00
    row = history[(history["species"] == "gibbon") & (history["site"] == "A")].iloc[0, 2:]
    cells = ["NA" if pd.isna(v) else str(v) for v in row]
    assert cells == ["1", "0", "NA", "NA", "NA", "NA", "NA", "NA", "NA", "NA", "NA", "0", "1"]
    row = history[(history["species"] == "chimpanzee") & (history["site"] == "B")].iloc[0, 2:]
    cells = ["NA" if pd.isna(v) else str(v) for v in row]
    assert cells == ["NA", "NA", "NA", "1", "NA", "1", "NA", "NA", "NA", "NA", "NA", "NA", "NA"]


def test_diel_activity_normalised_by_recorded_hours(scan_dir, tmp_path):
    summary = summarize(scan_dir)
    diel = summary.diel.set_index(["species", "hour"])
    # recorded hours per clock hour, all sites: 0 -> 0.5 (A, after midnight), 5 -> 0.5, 6 -> 0.5 + 1.0,
    # 18 -> 1.0, 19 -> 1.0, 23 -> 0.5, every other hour 0
    expected_hours = {0: 0.5, 5: 0.5, 6: 1.5, 18: 1.0, 19: 1.0, 23: 0.5}
    for hour in range(24):
        assert diel.loc[("gibbon", hour), "recorded_hours"] == pytest.approx(expected_hours.get(hour, 0.0))
    assert diel.loc[("gibbon", 5), "detections"] == 1 and diel.loc[("gibbon", 5), "detections_per_recorded_hour"] == 2.0
    assert diel.loc[("gibbon", 0), "detections_per_recorded_hour"] == 2.0
    assert diel.loc[("gibbon", 6), "detections_per_recorded_hour"] == 0.0
    assert diel.loc[("chimpanzee", 6), "detections_per_recorded_hour"] == pytest.approx(1 / 1.5, abs=1e-6)
    assert diel.loc[("chimpanzee", 19), "detections_per_recorded_hour"] == 1.0
    assert pd.isna(diel.loc[("titi_monkey", 3), "detections_per_recorded_hour"])  # nothing recorded at 03:00
    write_summary(summary, tmp_path / "sum")
    assert (tmp_path / "sum" / "diel_activity.png").stat().st_size > 0


def test_utc_offset_moves_days_and_midnight(scan_dir):
    # at UTC+7: A's recordings are at 12:00 and 13:00 on the 12th and 06:30-07:30 on the 15th (no
    # longer spanning midnight); B's at 01:00-03:00 and 13:00-14:00, both on the 13th
    effort = summarize(scan_dir, SummaryOptions(utc_offset="+07:00")).effort
    got = {(r.site, r.date): (r.recorded_hours, r.n_recordings) for r in effort.itertuples()}
    assert got == {("A", "2024-03-12"): (1.0, 2), ("A", "2024-03-13"): (0.0, 0), ("A", "2024-03-14"): (0.0, 0),
                   ("A", "2024-03-15"): (1.0, 1), ("B", "2024-03-13"): (3.0, 2)}


def test_site_rules():
    prefix = SummaryOptions(site_from="prefix")
    assert site_of("deploy1/CAM02_20240312_180000.wav", "/x/deploy1/CAM02_20240312_180000.wav", prefix) == "CAM02"
    with pytest.raises(ValueError, match="20240312_053000.WAV"):
        site_of("20240312_053000.WAV", "/x/20240312_053000.WAV", prefix)
    assert site_of("a/b/x.wav", "/data/a/b/x.wav", SummaryOptions()) == "b"
    named = SummaryOptions(site_from="regex", site_regex=r"^(?P<site>[^/]+)/")
    assert site_of("north/2024/x.wav", "/d/north/2024/x.wav", named) == "north"
    with pytest.raises(ValueError, match="does not match"):
        site_of("x.wav", "/d/x.wav", named)
    with pytest.raises(ValueError, match="needs --site-regex"):
        SummaryOptions(site_from="regex")


def test_option_parsing():
    assert parse_occasion("6h") == pd.Timedelta(hours=6) and parse_occasion("7d") == pd.Timedelta(days=7)
    for bad in ("5h", "36h", "0h", "often"):
        with pytest.raises(ValueError):
            parse_occasion(bad)
    assert parse_utc_offset("-05:00") == pd.Timedelta(hours=-5) and parse_utc_offset("+5:30") == pd.Timedelta(hours=5.5)
    with pytest.raises(ValueError):
        parse_utc_offset("+15:00")


def test_cli_bad_site_prefix_is_a_usage_error(scan_dir, tmp_path):
    result = CliRunner().invoke(main, ["summarize", str(scan_dir), "-o", str(tmp_path / "s"), "--site-from", "prefix"])
    assert result.exit_code == 2 and "no site prefix" in result.output


def test_a_threshold_of_one_switches_a_species_off(scan_dir):
    # a saturated peak score (1.0) still does not pass a threshold of 1: the species is off
    events = pd.read_parquet(scan_dir / "detections.parquet")
    events.loc[events["species"] == "chimpanzee", "peak_score"] = 1.0
    write_parquet(events, scan_dir / "detections.parquet",
                  {"classes": CLASSES, "reject_class": "background", "report_classes": None})
    history = summarize(scan_dir, SummaryOptions(thresholds={"chimpanzee": 1.0})).detection_history
    chimp = history[history["species"] == "chimpanzee"]
    assert set(chimp.iloc[:, 2:].stack().dropna().tolist()) == {0}
    gibbon_a = history[(history["species"] == "gibbon") & (history["site"] == "A")].iloc[0, 2:].tolist()
    assert gibbon_a[0] == 1  # other species keep their detections
