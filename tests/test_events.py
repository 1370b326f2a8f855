import time

import numpy as np
import pandas as pd
import pytest

from primate_monitor.events import (
    EVENT_DTYPES,
    EventOptions,
    detect_events,
    empty_events,
    parse_thresholds,
    validate_options,
)

CLASSES = ("background", "chimpanzee", "gorilla")
REJECT = "background"


def _scores(chimp: list[float], gorilla: list[float] | None = None) -> np.ndarray:
    gorilla = gorilla if gorilla is not None else [0.0] * len(chimp)
    bg = [0.0] * len(chimp)
    return np.array([bg, chimp, gorilla], dtype=np.float32).T


def _detect(scores: np.ndarray, hop: float = 1.0, window: float = 3.0, duration: float | None = None,
            **options: object) -> pd.DataFrame:
    starts = np.arange(scores.shape[0]) * hop
    duration = duration if duration is not None else starts[-1] + window
    return detect_events(starts, window, duration, scores, CLASSES, REJECT, EventOptions(**options))


def test_overlapping_windows_merge_into_one_event() -> None:
    ev = _detect(_scores([0.1, 0.8, 0.9, 0.6, 0.2, 0.1]))
    assert len(ev) == 1
    row = ev.iloc[0]
    assert row.species == "chimpanzee"
    assert (row.begin_s, row.end_s) == (1.0, 6.0)  # start of window 1 .. end of window 3
    assert row.peak_score == pytest.approx(0.9)
    assert row.mean_score == pytest.approx((0.8 + 0.9 + 0.6) / 3)
    assert row.n_windows == 3


def test_columns_and_dtypes() -> None:
    ev = _detect(_scores([0.9, 0.0, 0.0, 0.0, 0.0, 0.9], [0.0, 0.0, 0.7, 0.0, 0.0, 0.0]), hop=3.0)
    assert list(ev.columns) == list(EVENT_DTYPES)
    assert {c: str(t) for c, t in ev.dtypes.items()} == EVENT_DTYPES
    empty = _detect(_scores([0.1, 0.2]))
    assert len(empty) == 0 and list(empty.columns) == list(EVENT_DTYPES)
    assert {c: str(t) for c, t in empty.dtypes.items()} == EVENT_DTYPES
    pd.testing.assert_frame_equal(empty, empty_events())


def test_gap_merging_with_non_overlapping_windows() -> None:
    # 3 s windows, 3 s hop: detections at 0 and 3 s (touching), then 12 s (6 s after the 6 s end)
    chimp = [0.9, 0.9, 0.0, 0.0, 0.9]
    ev = _detect(_scores(chimp), hop=3.0)
    assert ev[["begin_s", "end_s", "n_windows"]].values.tolist() == [[0.0, 6.0, 2], [12.0, 15.0, 1]]
    ev = _detect(_scores(chimp), hop=3.0, max_gap_s=6.0)  # 12 - 6 = 6 <= 6 merges
    assert ev[["begin_s", "end_s", "n_windows"]].values.tolist() == [[0.0, 15.0, 3]]
    ev = _detect(_scores(chimp), hop=3.0, max_gap_s=5.99)
    assert len(ev) == 2


def test_touching_windows_merge_despite_float_error() -> None:
    starts = np.arange(3) * 0.1  # 0.1 + 0.1 != 0.2 exactly
    scores = _scores([0.9, 0.9, 0.9])
    ev = detect_events(starts, 0.1, 0.3, scores, CLASSES, REJECT, EventOptions())
    assert len(ev) == 1 and ev.n_windows[0] == 3


def test_end_clipped_to_duration() -> None:
    ev = _detect(_scores([0.0, 0.0, 0.9]), duration=3.5)  # last window starts at 2 s, is partial
    assert ev.end_s.tolist() == [3.5]


def test_several_species_in_one_window_sorted_by_begin_then_species() -> None:
    ev = _detect(_scores([0.0, 0.9, 0.0, 0.0, 0.0, 0.0], [0.0, 0.9, 0.0, 0.0, 0.0, 0.8]), hop=3.0)
    assert ev[["species", "begin_s"]].values.tolist() == [["chimpanzee", 3.0], ["gorilla", 3.0], ["gorilla", 15.0]]


def test_reject_class_never_reported() -> None:
    scores = np.ones((4, 3), dtype=np.float32)
    ev = _detect(scores)
    assert set(ev.species) == {"chimpanzee", "gorilla"}


def test_class_filter_thresholds_and_min_windows() -> None:
    scores = _scores([0.55, 0.55, 0.0, 0.0, 0.0, 0.0, 0.75], [0.6, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert set(_detect(scores, hop=3.0, classes=("gorilla",)).species) == {"gorilla"}
    ev = _detect(scores, hop=3.0, class_thresholds={"chimpanzee": 0.7})
    assert ev[["species", "begin_s"]].values.tolist() == [["gorilla", 0.0], ["chimpanzee", 18.0]]
    ev = _detect(scores, hop=3.0, min_windows=2)
    assert ev[["species", "n_windows"]].values.tolist() == [["chimpanzee", 2]]
    assert len(_detect(scores, hop=3.0, threshold=0.6, classes=("chimpanzee",))) == 1  # >= threshold counts


def test_threshold_one_switches_a_species_off() -> None:
    # scores saturate: exactly 1.0 (float32 or float16) must not pass a threshold of 1 ("off")
    for dtype in (np.float32, np.float16):
        scores = _scores([1.0, 0.2, 1.0], [1.0, 0.0, 0.0]).astype(dtype)
        ev = _detect(scores, hop=3.0, class_thresholds={"chimpanzee": 1.0})
        assert ev.species.tolist() == ["gorilla"]
    assert _detect(_scores([1.0, 1.0]), threshold=1.0).empty
    assert parse_thresholds(["chimpanzee=1"]) == (0.5, {"chimpanzee": 1.0})


def test_nan_scores_are_not_detections() -> None:
    ev = _detect(_scores([np.nan, 0.9, np.nan]), hop=3.0)
    assert ev.n_windows.tolist() == [1]


def test_many_windows_is_fast() -> None:
    rng = np.random.default_rng(0)
    n = 100_000
    scores = rng.random((n, 3), dtype=np.float32)
    t0 = time.perf_counter()
    ev = _detect(scores, threshold=0.9)
    assert time.perf_counter() - t0 < 2.0
    # every detected window belongs to exactly one event
    assert ev.n_windows.sum() == int((scores[:, 1:] >= 0.9).sum())
    assert (ev.end_s > ev.begin_s).all()


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="shape"):
        detect_events(np.arange(3.0), 3.0, 5.0, np.zeros((3, 2)), CLASSES, REJECT, EventOptions())
    with pytest.raises(ValueError, match="sorted"):
        detect_events(np.array([1.0, 0.0]), 3.0, 5.0, np.zeros((2, 3)), CLASSES, REJECT, EventOptions())


def test_options_validation() -> None:
    for kwargs in [{"threshold": 1.5}, {"threshold": float("nan")}, {"class_thresholds": {"chimpanzee": -0.1}},
                   {"min_windows": 0}, {"max_gap_s": -1.0}, {"classes": ()}, {"classes": "chimpanzee"}]:
        with pytest.raises(ValueError):
            EventOptions(**kwargs)  # type: ignore[arg-type]


def test_options_are_frozen_and_hashable() -> None:
    source = {"chimpanzee": 0.7}
    opts = EventOptions(class_thresholds=source, classes=["chimpanzee"])  # type: ignore[arg-type]
    source["gorilla"] = 0.1  # later changes to the caller's dict do not leak in
    assert opts.threshold_for("chimpanzee") == 0.7
    assert opts.threshold_for("gorilla") == 0.5
    assert opts.classes == ("chimpanzee",)
    with pytest.raises(TypeError):
        opts.class_thresholds["gorilla"] = 0.2  # type: ignore[index]
    hash(opts)
    assert opts == EventOptions(class_thresholds={"chimpanzee": 0.7}, classes=("chimpanzee",))
    assert EventOptions().threshold == 0.5 and EventOptions().min_windows == 1 and EventOptions().max_gap_s == 0.0


def test_validate_options_lists_valid_classes() -> None:
    with pytest.raises(ValueError, match=r"unknown species \['bonobo'\].*chimpanzee"):
        validate_options(EventOptions(classes=("bonobo",)), CLASSES, REJECT)
    with pytest.raises(ValueError, match="unknown species"):
        validate_options(EventOptions(class_thresholds={"background": 0.3}), CLASSES, REJECT)
    with pytest.raises(ValueError, match="reject class"):
        validate_options(EventOptions(), CLASSES, "noise")
    validate_options(EventOptions(classes=("gorilla",)), CLASSES, REJECT)


def test_parse_thresholds() -> None:
    assert parse_thresholds(["0.6", "chimpanzee=0.7"]) == (0.6, {"chimpanzee": 0.7})
    assert parse_thresholds([]) == (0.5, {})
    assert parse_thresholds(["gorilla = 0.2"]) == (0.5, {"gorilla": 0.2})
    for bad in (["abc"], ["chimp=x"], ["1.2"], ["=0.3"], ["0.1", "0.2"], ["a=0.1", "a=0.2"]):
        with pytest.raises(ValueError, match="bad threshold"):
            parse_thresholds(bad)
