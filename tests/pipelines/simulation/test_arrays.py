"""Array helpers (pipelines.simulation.arrays)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from pipelines.simulation.arrays import first_true_index, sample_decaying_hazard, smooth_below, take_rows


@dataclass(frozen=True)
class _Inner:
    value: np.ndarray


@dataclass(frozen=True)
class _Outer:
    ids: np.ndarray
    inner: _Inner
    label: str


def test_take_rows_repeats_nested_arrays_and_keeps_scalars():
    record = _Outer(ids=np.array([10, 20, 30]), inner=_Inner(np.array([[1, 2], [3, 4], [5, 6]])), label="x")
    taken = take_rows(record, np.array([2, 2, 0]))
    np.testing.assert_array_equal(taken.ids, [30, 30, 10])
    np.testing.assert_array_equal(taken.inner.value, [[5, 6], [5, 6], [1, 2]])
    assert taken.label == "x"


def test_first_true_index():
    mask = np.array([[False, True, True], [False, False, False], [True, False, False]])
    np.testing.assert_array_equal(first_true_index(mask), [1, -1, 0])


def test_smooth_below_is_one_half_at_the_threshold_and_monotone():
    values = np.array([5.0, 15.0, 45.0])
    out = smooth_below(values, 15.0, 0.1)
    assert out[1] == pytest.approx(0.5)
    assert out[0] > 0.99 and out[2] < 0.01


def test_decaying_hazard_matches_its_survival_function():
    rng = np.random.default_rng(0)
    total, tau, n = 1.5, 30.0, 100000
    times = sample_decaying_hazard(total, tau, rng, n)
    for t in (10.0, 30.0, 90.0):
        expected = np.exp(-total * (1.0 - np.exp(-t / tau)))
        assert (times > t).mean() == pytest.approx(expected, abs=0.01)
    assert np.isinf(times).mean() == pytest.approx(np.exp(-total), abs=0.01)


def test_decaying_hazard_respects_condition_and_end():
    rng = np.random.default_rng(1)
    times = sample_decaying_hazard(5.0, 30.0, rng, 20000, after_day=20.0, end_day=np.full(20000, 40.0))
    finite = times[np.isfinite(times)]
    assert finite.min() > 20.0 and finite.max() < 40.0
