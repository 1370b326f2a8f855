import numpy as np
import pytest

from primate_monitor.windows import seconds_to_samples, window_starts


def _covered(starts: np.ndarray, window: int, n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    for s in starts:
        mask[s : s + window] = True
    return mask


def test_empty_recording_has_no_windows() -> None:
    starts = window_starts(0, 10, 5)
    assert starts.dtype == np.int64 and starts.size == 0


@pytest.mark.parametrize("n", [1, 7, 10])
def test_shorter_than_or_equal_to_one_window(n: int) -> None:
    np.testing.assert_array_equal(window_starts(n, 10, 3), [0])


def test_exact_multiple_has_no_partial_window() -> None:
    np.testing.assert_array_equal(window_starts(30, 10, 10), [0, 10, 20])
    np.testing.assert_array_equal(window_starts(30, 10, 5), [0, 5, 10, 15, 20])


@pytest.mark.parametrize(("n", "expected"), [(29, [0, 10, 20]), (31, [0, 10, 20, 30]), (21, [0, 10, 20])])
def test_off_by_one_lengths(n: int, expected: list[int]) -> None:
    # 29: the partial window at 20 covers the tail; 31: one sample past 3 full windows
    np.testing.assert_array_equal(window_starts(n, 10, 10), expected)


def test_hop_larger_than_window() -> None:
    # windows [0,10), [25,35); last start + hop = 50 is not < 45, so no partial window
    np.testing.assert_array_equal(window_starts(45, 10, 25), [0, 25])
    # 52: the tail after 35 starts at 50 < 52, a partial window
    np.testing.assert_array_equal(window_starts(52, 10, 25), [0, 25, 50])


@pytest.mark.parametrize("n", range(1, 60))
def test_every_sample_covered_when_hop_le_window(n: int) -> None:
    starts = window_starts(n, 12, 5)
    assert _covered(starts, 12, n).all()
    assert np.all(np.diff(starts) == 5)
    assert starts[-1] < n
    # no redundant window: removing the last one uncovers something (or it is the only one)
    assert starts.size == 1 or not _covered(starts[:-1], 12, n).all()


def test_three_second_windows_one_second_hop() -> None:
    sr = 32_000
    starts = window_starts(10 * sr + 1, 3 * sr, sr)
    assert starts.size == 9  # 0..7 s full, 8 s partial (covers the last sample)
    assert starts[-1] == 8 * sr


@pytest.mark.parametrize(("window", "hop"), [(0, 1), (1, 0), (-3, 1), (2.5, 1), (True, 1)])
def test_invalid_window_or_hop(window: object, hop: object) -> None:
    with pytest.raises(ValueError, match="positive int"):
        window_starts(100, window, hop)  # type: ignore[arg-type]


def test_negative_length_is_rejected() -> None:
    with pytest.raises(ValueError, match="n_samples"):
        window_starts(-1, 10, 5)


def test_seconds_to_samples_rounds_half_up() -> None:
    assert seconds_to_samples(3.0, 32_000) == 96_000
    assert seconds_to_samples(0.5, 1) == 1
    assert seconds_to_samples(2.5, 1) == 3
    assert seconds_to_samples(1 / 3, 3) == 1
    assert seconds_to_samples(0.0, 8000) == 0
    with pytest.raises(ValueError):
        seconds_to_samples(-1.0, 8000)
    with pytest.raises(ValueError):
        seconds_to_samples(float("nan"), 8000)
    with pytest.raises(ValueError):
        seconds_to_samples(1.0, 0)
