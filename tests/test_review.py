"""Field review: the sample review draws, the files it writes, verdicts read back, and the whole
loop on real audio (scan -> review -> verdicts from truth -> calibrate -> train --add-reviewed
-> detect --thresholds-file -> scan with the model's own thresholds)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from click.testing import CliRunner

from primate_monitor.cli import main
from primate_monitor.event_eval import is_match, read_truth
from primate_monitor.raven import read_selection_table
from primate_monitor.review import (REVIEW_HEADER, TABLE_SUFFIX, VERDICT_COLUMN, ReviewOptions, choose_detections,
                                    clip_name, read_review_tables, verdict_label)

ROOT = Path(__file__).parent.parent
RECORDINGS = ROOT / "sample_data" / "recordings"
CLIPS = ROOT / "sample_data" / "clips"
FIXTURE_RECORDING = Path(__file__).parent / "fixtures" / "recording" / "20240312_053000.wav"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli(*args):
    result = CliRunner().invoke(main, ["-q", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def events_frame(scores_by_species: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"species": sp, "peak_score": s, "recording": f"r{i % 3}.wav", "begin_s": float(i), "end_s": i + 3.0}
            for sp, scores in scores_by_species.items() for i, s in enumerate(scores)]
    return pd.DataFrame(rows)


# ---- the draw -------------------------------------------------------------------------------
def test_stratified_draw_per_bin_and_weights():
    rng = np.random.default_rng(5)
    scores = {"gibbon": list(0.5 + 0.5 * rng.random(40)), "chimpanzee": [0.55, 0.6, 0.97]}
    events = events_frame(scores)
    chosen = choose_detections(events, {"gibbon": 0.5, "chimpanzee": 0.5}, ReviewOptions(per_bin=3, bins=5))
    g = chosen[chosen["species"] == "gibbon"]
    edges = np.linspace(0.5, 1.0, 6)
    counts = np.histogram(scores["gibbon"], bins=edges)[0]
    for b in range(5):
        in_bin = g[g["bin"] == b]
        assert len(in_bin) == min(3, counts[b])
        assert ((in_bin["peak_score"] >= edges[b]) & (in_bin["peak_score"] <= edges[b + 1])).all()
        assert np.allclose(in_bin["weight"], counts[b] / min(3, counts[b]))
    # the weights stand for every detection: they add up to the species' count
    assert g["weight"].sum() == pytest.approx(40)
    assert len(chosen[chosen["species"] == "chimpanzee"]) == 3  # fewer than per_bin in every bin: all of them


def test_draw_is_seeded_and_per_species():
    rng = np.random.default_rng(1)
    events = events_frame({"gibbon": list(rng.random(60)), "titi_monkey": list(rng.random(30))})
    opts = ReviewOptions(per_bin=2, bins=3, seed=7)
    a = choose_detections(events, {"gibbon": 0.0, "titi_monkey": 0.0}, opts)
    b = choose_detections(events, {"gibbon": 0.0, "titi_monkey": 0.0}, opts)
    pd.testing.assert_frame_equal(a, b)
    c = choose_detections(events, {"gibbon": 0.0, "titi_monkey": 0.0}, ReviewOptions(per_bin=2, bins=3, seed=8))
    assert set(a["peak_score"]) != set(c["peak_score"])
    alone = choose_detections(events[events["species"] == "gibbon"], {"gibbon": 0.0}, opts)
    assert list(alone["peak_score"]) == list(a[a["species"] == "gibbon"]["peak_score"])
    everything = choose_detections(events, {"gibbon": 0.0, "titi_monkey": 0.0}, ReviewOptions(take_all=True))
    assert len(everything) == 90 and (everything["weight"] == 1).all()


def test_clip_names_sort_by_species_then_score():
    names = [clip_name(sp, s, "site/rec 1.wav", b) for sp, s, b in
             [("gibbon", 0.93, 12.0), ("gibbon", 0.5, 300.25), ("gibbon", 1.0, 0.0), ("chimpanzee", 0.7, 1.0)]]
    assert sorted(names) == [names[3], names[1], names[0], names[2]]
    assert all("/" not in n.split("/", 1)[1] and " " not in n for n in names)


def test_verdict_labels():
    known = {"gibbon", "chimpanzee", "background"}
    assert verdict_label(" Yes ", "gibbon", known, "background", "t") == "gibbon"
    assert verdict_label("n", "gibbon", known, "background", "t") == "background"
    assert verdict_label("Chimpanzee", "gibbon", known, "background", "t") == "chimpanzee"
    assert verdict_label("", "gibbon", known, "background", "t") is None
    with pytest.raises(ValueError, match=r"table\.txt, row 3.*'yse'"):
        verdict_label("yse", "gibbon", known, "background", "table.txt, row 3")


# ---- the files, on a small scan ----------------------------------------------------------------
@pytest.fixture(scope="module")
def small_review(tiny_checkpoint, tmp_path_factory):
    work = tmp_path_factory.mktemp("review")
    scan = work / "scan"
    assert cli("scan", FIXTURE_RECORDING, "-o", scan, "--model", tiny_checkpoint, "--threshold", "0.0",
               "--hop", "3").exit_code == 0
    out = work / "review"
    result = cli("review", scan, "-o", out, "--per-bin", "2", "--bins", "3", "--context", "0.5")
    assert result.exit_code == 0, result.output
    return scan, out


def test_review_writes_tables_clips_sheets(small_review):
    scan, out = small_review
    listed = pd.read_csv(out / "review.csv")
    detections = pd.read_parquet(scan / "detections.parquet")
    assert len(listed) and set(listed["species"]) <= set(detections["species"])
    tables = sorted((out / "raven").glob("*.review.selections.txt"))
    assert [t.name for t in tables] == ["20240312_053000.wav.review.selections.txt"]
    table = read_selection_table(tables[0])
    assert VERDICT_COLUMN in table.columns and (table[VERDICT_COLUMN] == "").all()
    assert len(table) == len(listed)
    assert set(table["Begin Path"]) == {str(FIXTURE_RECORDING.resolve())}
    info = sf.info(FIXTURE_RECORDING)
    for row in listed.itertuples():
        clip = out / row.clip
        expected = min(row.end_s + 0.5, info.duration) - max(row.begin_s - 0.5, 0.0)
        assert sf.info(clip).duration == pytest.approx(expected, abs=2 / info.samplerate)
        assert clip.parent.name == row.species and clip.name.startswith(f"{row.peak_score:.4f}_")
    sheets = sorted((out / "sheets").glob("*.png"))
    assert {p.name.rsplit("_", 1)[0] for p in sheets} == set(listed["species"])
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in sheets)


def test_review_tables_read_back_and_by_other_readers(small_review):
    _, out = small_review
    rows = read_review_tables([out])
    assert len(rows) == len(pd.read_csv(out / "review.csv")) and (rows["verdict"] == "").all()
    table = next((out / "raven").glob("*.txt"))
    # OpenSoundscape's BoxedAnnotations.from_raven_files reads a table with pandas.read_csv(delimiter="\t")
    # and renames the four Raven box columns; the same here, so the Verdict column must survive it
    plain = pd.read_csv(table, delimiter="\t")
    assert {"Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)", "Species", VERDICT_COLUMN} <= set(plain)
    try:
        from opensoundscape.annotations import BoxedAnnotations
    except ImportError:
        return
    boxes = BoxedAnnotations.from_raven_files([str(table)], annotation_column="Species")
    assert VERDICT_COLUMN in boxes.df.columns and len(boxes.df) == len(plain)


def test_review_never_overwrites_verdicts(small_review, tmp_path):
    import shutil

    scan, out = small_review
    copy = tmp_path / "review"
    shutil.copytree(out, copy)
    result = cli("review", scan, "-o", copy)
    assert result.exit_code == 2 and "already holds a review" in result.output
    table = next((copy / "raven").glob("*.txt"))
    lines = table.read_text().splitlines()
    lines[1] += "no"
    table.write_text("\n".join(lines) + "\n")
    result = cli("review", scan, "-o", copy, "--overwrite")
    assert result.exit_code == 2 and "holds verdicts" in result.output
    assert table.read_text().splitlines()[1].endswith("\tno")


def test_unknown_verdict_is_an_error_for_train(small_review, tmp_path):
    import shutil

    from primate_monitor.config import TrainConfig
    from primate_monitor.data import DataError, reviewed_clips

    _, out = small_review
    copy = tmp_path / "review"
    shutil.copytree(out, copy)
    table = next((copy / "raven").glob("*.txt"))
    lines = table.read_text().splitlines()
    lines[1] += "gorilla"
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"Selection 1.*'gorilla'.*not yes, no or a known class"):
        reviewed_clips([copy], {"gibbon", "chimpanzee", "titi_monkey", "background"}, TrainConfig())


# ---- hostile review tables ---------------------------------------------------------------------
def write_review_table(path: Path, rows: list[dict], sep: str = "\t", drop: tuple[str, ...] = ()) -> Path:
    """A Raven review table as ``review`` writes it (REVIEW_HEADER), a row per dict overriding
    the defaults; ``drop`` leaves columns out, ``sep`` is the delimiter."""
    header = [c for c in REVIEW_HEADER if c not in drop]
    lines = [sep.join(header)]
    for i, over in enumerate(rows, start=1):
        row = {"Selection": str(i), "View": "Spectrogram 1", "Channel": "1", "Begin Time (s)": f"{2.0 * i:.6f}",
               "End Time (s)": f"{2.0 * i + 1:.6f}", "Low Freq (Hz)": "10.0", "High Freq (Hz)": "4000.0",
               "Species": "gibbon", "Score": "0.8000", "Begin Path": "rec.wav", "File Offset (s)": f"{2.0 * i:.6f}",
               "Mean Score": "0.7000", "Sample Weight": "1.0000", "Clip": "", "Verdict": "yes"} | over
        lines.append(sep.join(row[c] for c in header))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("spoil", ["semicolons", "empty begin time", "empty file"])
def test_overwrite_refuses_a_table_it_cannot_read(small_review, tmp_path, spoil):
    import shutil

    scan, out = small_review
    copy = tmp_path / "review"
    shutil.copytree(out, copy)
    table = next((copy / "raven").glob(f"*{TABLE_SUFFIX}"))
    lines = table.read_text().splitlines()
    lines[1] += "no"  # a verdict, in a table review can no longer read
    if spoil == "semicolons":  # a spreadsheet's "save as text"
        text = "\n".join(line.replace("\t", ";") for line in lines) + "\n"
    elif spoil == "empty begin time":
        cells = lines[1].split("\t")
        cells[3] = ""
        text = "\n".join([lines[0], "\t".join(cells), *lines[2:]]) + "\n"
    else:
        text = ""
    table.write_text(text)
    result = cli("review", scan, "-o", copy, "--overwrite", "--no-sheets")
    assert result.exit_code == 2, result.output
    assert table.name in result.output and "cannot be read" in result.output and "move it" in result.output
    assert table.read_text() == text  # the person's work is still there


@pytest.mark.parametrize("spoil", ["semicolons", "empty file"])
def test_unreadable_review_table_in_a_folder_is_an_error(tmp_path, spoil):
    from primate_monitor.review import find_review_tables

    folder = tmp_path / "raven"
    good = write_review_table(folder / f"a.wav{TABLE_SUFFIX}", [{"Verdict": "yes"}, {"Verdict": "no"}])
    unfilled = write_review_table(folder / f"c.wav{TABLE_SUFFIX}", [{"Verdict": ""}])
    truth = folder / "a.selections.txt"  # a truth table beside them: not a review table, passed over
    truth.write_text("Selection\tBegin Time (s)\tEnd Time (s)\tSpecies\n1\t1.0\t2.0\tgibbon\n")
    assert find_review_tables([folder]) == [good.resolve(), unfilled.resolve()]
    bad = folder / f"b.wav{TABLE_SUFFIX}"
    if spoil == "semicolons":
        write_review_table(bad, [{"Verdict": "yes"}], sep=";")
    else:
        bad.write_bytes(b"")
    with pytest.raises(ValueError, match=r"b\.wav\.review\.selections\.txt.*no readable 'Verdict' column"):
        find_review_tables([folder])
    result = cli("calibrate", folder, "-o", tmp_path / "t.yaml", "--bootstrap", "0")
    assert result.exit_code == 2 and bad.name in result.output
    assert not (tmp_path / "t.yaml").exists()


@pytest.mark.parametrize("column,value", [("Sample Weight", "-1"), ("Sample Weight", "0"), ("Sample Weight", ""),
                                          ("Sample Weight", "inf"), ("Sample Weight", "nan"), ("Score", "1.335"),
                                          ("Score", "-0.1"), ("Score", ""), ("Score", "nan")])
def test_impossible_score_or_weight_on_a_reviewed_row_is_an_error(tmp_path, column, value):
    rows = [{"Verdict": "yes"}, {"Verdict": "no", column: value}, {"Verdict": "yes"}]
    table = write_review_table(tmp_path / f"r.wav{TABLE_SUFFIX}", rows)
    with pytest.raises(ValueError, match=rf"r\.wav\.review\.selections\.txt, Selection 2: {column} '{value}'"):
        read_review_tables([table])
    # the same value on a row nobody reviewed is not used, so it is no error
    rows[1]["Verdict"] = ""
    read = read_review_tables([write_review_table(table, rows)])
    assert list(read["verdict"]) == ["yes", "", "yes"]


def test_review_unknown_species_is_an_error(small_review, tmp_path):
    scan, _ = small_review
    model = json.loads((scan / "run.json").read_text())["model"]
    out = tmp_path / "review"
    result = cli("review", scan, "-o", out, "--species", "gibon,chimpanzee")
    assert result.exit_code == 2
    assert "'gibon'" in result.output and "'chimpanzee'" not in result.output
    listed = result.output.split("its species:", 1)[1]
    species = [c for c in model["classes"] if c != "background"]
    assert len(species) >= 2 and all(c in listed for c in species) and "background" not in listed
    assert not (out / "review.csv").exists()


def test_verdict_errors_name_the_selection_a_person_sees(tmp_path):
    from primate_monitor.calibrate import verdicts_from_tables

    # Selection 2 deleted in Raven: the bad verdict sits on the file's second data row, Selection 3
    rows = [{"Selection": "1"}, {"Selection": "3", "Verdict": "yse"}, {"Selection": "4"}]
    table = write_review_table(tmp_path / f"r.wav{TABLE_SUFFIX}", rows)
    with pytest.raises(ValueError, match=r"r\.wav\.review\.selections\.txt, Selection 3: verdict 'yse'"):
        verdicts_from_tables([table])
    assert list(read_review_tables([table])["row"]) == [1, 3, 4]
    # no Selection column: the line in the file, the header being line 1
    plain = write_review_table(tmp_path / f"p.wav{TABLE_SUFFIX}", rows, drop=("Selection",))
    with pytest.raises(ValueError, match=r"p\.wav\.review\.selections\.txt, line 3: verdict 'yse'"):
        verdicts_from_tables([plain])


# ---- the loop, end to end on real audio -----------------------------------------------------------
def fill_verdicts(review_dir: Path) -> Counter:
    """Fill each review table's Verdict from the truth tables beside the recordings: yes when the
    detection matches a call of its species, the other species' name when it matches a call of
    another species, else no. Returns the training label each verdict gives."""
    labels: Counter = Counter()
    for table in sorted((review_dir / "raven").glob("*.review.selections.txt")):
        recording = table.name[: -len(".review.selections.txt")]
        truth = read_truth(RECORDINGS / (Path(recording).stem + ".truth.selections.txt"))
        rows = read_selection_table(table)
        verdicts = []
        for r in rows.itertuples(index=False):
            det = (r[3], r[4])  # Begin Time (s), End Time (s)
            species = r.Species
            hits = [t.species for t in truth.itertuples() if is_match(det, (t.begin_s, t.end_s))]
            verdict = "yes" if species in hits else (hits[0] if hits else "no")
            verdicts.append(verdict)
            labels[species if verdict == "yes" else "background" if verdict == "no" else verdict] += 1
        lines = table.read_text().splitlines()
        table.write_text("\n".join([lines[0]] + [line + v for line, v in zip(lines[1:], verdicts)]) + "\n")
    return labels


def test_review_calibrate_retrain_detect_loop(tmp_path):
    scan = tmp_path / "scan"
    result = cli("scan", RECORDINGS, "-o", scan, "--threshold", "0.1", "--save-window-scores")  # the demo model
    assert result.exit_code == 0, result.output
    detections = pd.read_parquet(scan / "detections.parquet")

    review = tmp_path / "review"
    assert cli("review", scan, "-o", review, "--all").exit_code == 0
    labels = fill_verdicts(review)
    assert sum(labels.values()) == len(detections)  # --all: every detection is in a table
    assert labels["background"] >= 3  # at threshold 0.1 the demo model makes false detections here

    thresholds = tmp_path / "thresholds.yaml"
    result = cli("calibrate", review / "raven", "-o", thresholds, "--bootstrap", "50")
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(thresholds.read_text())
    assert set(doc["fitted"]) == set(detections["species"])
    for species, record in doc["fitted"].items():
        assert (Path(record["plot"])).is_file()
        if record["threshold"] is None:
            assert species not in doc["thresholds"] and "no threshold" in record["reason"]
            assert species in result.output  # the reason is printed
        else:
            assert doc["thresholds"][species] == record["threshold"]
            assert 0.1 <= record["threshold"] <= 1 and record["interval"][0] <= record["interval"][1]
            assert record["n"] == record["positives"] + record["negatives"] >= 10
            assert record["precision_fitted"] >= 0.9
    assert doc["thresholds"], "at least one species has enough verdicts for a threshold"

    # detect: the thresholds applied to the saved window scores, no rescan; other species keep 0.1
    redone = tmp_path / "redone"
    result = cli("detect", scan, "--thresholds-file", thresholds, "--threshold", "0.1", "-o", redone)
    assert result.exit_code == 0, result.output
    after = pd.read_parquet(redone / "detections.parquet")
    for species, group in after.groupby("species"):
        before = detections[detections["species"] == species]
        t = doc["thresholds"].get(species)
        if t is None:
            assert len(group) == len(before)
            continue
        assert (group["peak_score"] >= t).all()
        for r in group.itertuples():  # every new event lies inside an event of the scan
            inside = before[(before["recording"] == r.recording) & (before["begin_s"] <= r.begin_s)
                            & (before["end_s"] >= r.end_s)]
            assert len(inside) == 1
    run = json.loads((redone / "run.json").read_text())
    assert run["parameters"]["class_thresholds"] == doc["thresholds"]

    # retrain with the verdicts as extra training clips (a handful of iterations)
    runs = tmp_path / "run"
    result = cli("train", CLIPS, "--config", ROOT / "configs" / "cnn10_8k.yaml", "--set", "iterations=2",
                 "--set", "batch_size=2", "--set", "eval_every=2", "--set", "ema=false",
                 "--add-reviewed", review / "raven", "-o", runs)
    assert result.exit_code == 0, result.output
    summary = json.loads((runs / "best.json").read_text())["data_summary"]
    base = pd.read_csv(CLIPS / "lab" / "train.csv")["label"].value_counts()
    devel = pd.read_csv(CLIPS / "lab" / "devel.csv")["label"].value_counts()
    assert summary["train"] == {k: int(base.get(k, 0)) + labels.get(k, 0) for k in sorted(set(base.index) | set(labels))}
    assert summary["devel"] == {k: int(v) for k, v in sorted(devel.items())}  # never into devel

    # the thresholds shipped with the new model: scan uses them, a bare --threshold replaces them
    model = tmp_path / "calibrated.safetensors"
    assert cli("set-thresholds", runs / "best.safetensors", thresholds, "-o", model).exit_code == 0
    one = RECORDINGS / "CAM02_20240312_180000.wav"
    assert cli("scan", one, "-o", tmp_path / "s1", "--model", model).exit_code == 0
    params = json.loads((tmp_path / "s1" / "run.json").read_text())["parameters"]
    assert params["class_thresholds"] == doc["thresholds"] and params["threshold"] == 0.5
    assert cli("scan", one, "-o", tmp_path / "s2", "--model", model, "--threshold", "0.3").exit_code == 0
    params = json.loads((tmp_path / "s2" / "run.json").read_text())["parameters"]
    assert params["class_thresholds"] == {} and params["threshold"] == 0.3
