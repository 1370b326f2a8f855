from pathlib import Path

import pytest

from primate_monitor.raven import RAVEN_COLUMNS, read_selection_table

FIXTURES = Path(__file__).parent / "fixtures" / "annotations"


def test_tab_separated_raven_table() -> None:
    table = read_selection_table(FIXTURES / "cameroon_background_annotation.txt")
    assert len(table) == 6
    assert set(RAVEN_COLUMNS) <= set(table.columns)
    assert {"Class", "Begin Path", "Notes"} <= set(table.columns)
    assert table["Begin Time (s)"].dtype == "float64"
    assert table["Begin Time (s)"].iloc[0] == pytest.approx(22.080114297)
    assert (table["End Time (s)"] > table["Begin Time (s)"]).all()
    assert set(table["Class"]) == {"Background"}
    assert table["Begin Path"].iloc[0].endswith("20200205_184848.WAV")
    assert table["Low Freq (Hz)"].iloc[0] == "0.0"  # other columns stay strings


def test_comma_separated_export_with_extra_columns() -> None:
    table = read_selection_table(FIXTURES / "cameroon_chimp_annotations.csv")
    assert len(table) == 8
    assert set(table["Species"]) == {"Chimpanzee"}
    assert table["End Time (s)"].dtype == "float64"
    assert table["Begin Time (s)"].iloc[0] == pytest.approx(648.030014173)
    assert table["Begin Path"].iloc[0] == r"D:\audio_mefou\2\chimpanze\20191220_170820.WAV"
    assert (table["Notes"] == "").all()  # empty cells are "", not NaN


def test_bom_and_padded_column_names(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffSelection\t Begin Time (s) \tEnd Time (s)\tSpecies\r\n1\t1.5\t2.5\tgorilla\r\n".encode())
    table = read_selection_table(path)
    assert list(table.columns) == ["Selection", "Begin Time (s)", "End Time (s)", "Species"]
    assert table["Begin Time (s)"].tolist() == [1.5]
    assert table["Species"].tolist() == ["gorilla"]


def test_missing_time_columns_names_file_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"  # an Audacity label track, not a selection table
    path.write_text("0.101385\t0.367520\tSP\n0.506924\t3.041545\tCRER\n")
    with pytest.raises(ValueError, match=r"labels\.txt.*Begin Time \(s\).*columns found"):
        read_selection_table(path)


def test_non_numeric_time(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("Begin Time (s)\tEnd Time (s)\nabc\t2\n")
    with pytest.raises(ValueError, match=r"bad\.txt.*Begin Time"):
        read_selection_table(path)


def test_empty_time_cell(tmp_path: Path) -> None:
    path = tmp_path / "gap.csv"
    path.write_text("Begin Time (s),End Time (s),Species\n1,2,a\n3,,b\n")
    with pytest.raises(ValueError, match=r"gap\.csv.*End Time.*line\(s\) \[3\]"):
        read_selection_table(path)


def test_errors_name_the_line_a_person_sees_after_blank_lines(tmp_path: Path) -> None:
    """A table edited by hand or saved by a spreadsheet has blank lines (or lines of tabs only);
    they are skipped, and every error names the row's line in the file, not its position + 2."""
    from primate_monitor.event_eval import read_truth
    from primate_monitor.review import read_review_tables

    path = tmp_path / "rec.truth.selections.txt"
    path.write_text("Selection\tBegin Time (s)\tEnd Time (s)\tSpecies\n"
                    "1\t1\t2\tgibbon\n\n\t\t\t\n"  # lines 2, 3 (blank), 4 (tabs only)
                    "2\t5\t4\tgibbon\n")  # line 5: reversed times
    assert len(read_selection_table(path)) == 2
    with pytest.raises(ValueError, match=r"end before its begin on line\(s\) 5$"):
        read_truth(path)
    path.write_text("Begin Time (s)\tEnd Time (s)\tSpecies\n1\t2\tgibbon\n\n3\t4\t \n")
    with pytest.raises(ValueError, match=r"empty 'Species' on line\(s\) 4;"):
        read_truth(path)
    path.write_text("Begin Time (s),End Time (s),Species\n1,2,a\n\n3,,b\n")
    with pytest.raises(ValueError, match=r"End Time.*line\(s\) \[4\]"):
        read_selection_table(path)
    review = tmp_path / "r.review.selections.txt"
    review.write_text("Begin Time (s)\tEnd Time (s)\tSpecies\tScore\tVerdict\n"
                      "1\t4\tgibbon\t0.7\tyes\n\n3\t6\tgibbon\t1.7\tno\n")
    with pytest.raises(ValueError, match=r"line 4: Score '1.7'"):
        read_review_tables([review])
