"""Aalen-Johansen and the censoring Kaplan-Meier against lifelines and scikit-survival."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import AalenJohansenFitter
from sksurv.nonparametric import CensoringDistributionEstimator, cumulative_incidence_competing_risks
from sksurv.util import Surv

from models.nonparametric import aalen_johansen, censoring_survival, event_table


def _competing_sample(n: int, seed: int, ties: bool):
    rng = np.random.default_rng(seed)
    time = rng.exponential(100.0, n)
    time = np.ceil(time / 10.0) * 10.0 if ties else time
    status = rng.choice([0, 1, 2], size=n, p=[0.3, 0.45, 0.25])
    return time, status


def test_aalen_johansen_matches_lifelines():
    # lifelines jitters tied times (with a warning), so the comparison uses distinct times;
    # ties are covered by the scikit-survival comparison below
    time, status = _competing_sample(300, 1, ties=False)
    grid = np.quantile(time, [0.1, 0.3, 0.5, 0.8, 0.95])
    ours = aalen_johansen(time, status, grid, n_causes=2)
    for cause in (1, 2):
        fitter = AalenJohansenFitter(calculate_variance=False).fit(pd.Series(time), pd.Series(status), event_of_interest=cause)
        reference = fitter.cumulative_density_.iloc[:, 0]
        expected = [reference[reference.index <= t].iloc[-1] for t in grid]
        np.testing.assert_allclose(ours[cause - 1], expected, atol=1e-10)


def test_aalen_johansen_matches_scikit_survival():
    time, status = _competing_sample(400, 2, ties=True)
    unique_times, reference = cumulative_incidence_competing_risks(status, time)
    ours = aalen_johansen(time, status, unique_times, n_causes=2)
    np.testing.assert_allclose(ours, reference[1:], atol=1e-12)


def test_aalen_johansen_without_competing_events_is_one_minus_kaplan_meier():
    time = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 8.0])
    status = np.array([1, 0, 1, 1, 0, 1])
    # KM by hand: S(1)=5/6, S(2)=5/6*4/5=4/6, S(3)=4/6*2/3=8/18, S(8)=0
    expected = 1.0 - np.array([5 / 6, 4 / 6, 8 / 18, 8 / 18, 0.0])
    np.testing.assert_allclose(aalen_johansen(time, status, [1, 2, 4, 5, 8], n_causes=1)[0], expected)


def test_aalen_johansen_weights_equal_repeated_rows():
    time, status = _competing_sample(60, 3, ties=True)
    weights = np.random.default_rng(4).integers(0, 4, size=time.size).astype(float)
    repeated = np.repeat(np.arange(time.size), weights.astype(int))
    grid = [20.0, 60.0, 150.0]
    np.testing.assert_allclose(aalen_johansen(time, status, grid, 2, weights=weights),
                               aalen_johansen(time[repeated], status[repeated], grid, 2), atol=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_censoring_survival_matches_scikit_survival(ties):
    time, status = _competing_sample(300, 5, ties)
    grid = np.unique(time)
    reference = CensoringDistributionEstimator().fit(Surv.from_arrays(status > 0, time)).predict_proba(grid)
    np.testing.assert_allclose(censoring_survival(time, status, grid), reference, atol=1e-12)


def test_censoring_survival_left_limit_excludes_the_drop_at_t():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    status = np.array([1, 0, 1, 0])
    # censorings at 2 (3 at risk) and 4 (1 at risk): G(2) = 2/3, G(4) = 0
    np.testing.assert_allclose(censoring_survival(time, status, [2.0, 4.0]), [2 / 3, 0.0])
    np.testing.assert_allclose(censoring_survival(time, status, [2.0, 4.0], left_limit=True), [1.0, 2 / 3])


def test_event_table_counts_at_risk_and_causes():
    unique_times, at_risk, counts = event_table(np.array([2.0, 1.0, 2.0, 3.0]), np.array([1, 0, 2, 1]), 2)
    np.testing.assert_array_equal(unique_times, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(at_risk, [4, 3, 1])
    np.testing.assert_array_equal(counts, [[1, 0, 0], [0, 1, 1], [0, 1, 0]])


def test_aalen_johansen_of_many_weight_vectors_at_once_equals_one_at_a_time():
    time, status = _competing_sample(300, 4, ties=True)
    weights = np.random.default_rng(3).multinomial(300, np.full(300, 1 / 300), size=4).astype(float)
    grid = np.array([20.0, 80.0, 200.0])
    together = aalen_johansen(time, status, grid, n_causes=2, weights=weights)
    assert together.shape == (4, 2, 3)
    for row, w in enumerate(weights):
        np.testing.assert_allclose(together[row], aalen_johansen(time, status, grid, n_causes=2, weights=w), rtol=1e-12)
