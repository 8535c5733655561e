"""Calibration: slope 1 for the true incidences, < 1 for exaggerated ones; tables by Aalen-Johansen."""

from __future__ import annotations

import numpy as np
import pytest

from models.calibration import (
    calibration_slope,
    calibration_table,
    cloglog_recalibration,
    decile_slope,
    observed_expected_ratio,
    observed_incidence,
)
from models.metrics import Outcome
from models.nonparametric import aalen_johansen
from tests.models.conftest import simulate_known_cohort


@pytest.fixture(scope="module")
def cohort_and_truth():
    cohort = simulate_known_cohort(n=6000, seed=11)
    outcome = Outcome.from_events(cohort.y["time"], cohort.y["event"], "relapse")
    truth = cohort.true_cif(365.0)
    true_relapse = truth["relapse_CD19_pos"] + truth["relapse_CD19_neg"] + truth["relapse_lineage_switch"]
    return outcome, true_relapse


def test_true_incidence_is_calibrated(cohort_and_truth):
    outcome, truth = cohort_and_truth
    assert calibration_slope(outcome, truth, 365.0) == pytest.approx(1.0, abs=0.08)
    assert observed_expected_ratio(outcome, truth, 365.0) == pytest.approx(1.0, abs=0.05)


def test_exaggerated_predictions_have_slope_below_one(cohort_and_truth):
    outcome, truth = cohort_and_truth
    # doubling the spread on the cloglog scale around its mean: true slope 0.5
    cloglog = np.log(-np.log1p(-truth))
    exaggerated = -np.expm1(-np.exp(cloglog.mean() + 2.0 * (cloglog - cloglog.mean())))
    assert calibration_slope(outcome, exaggerated, 365.0) == pytest.approx(0.5, abs=0.06)


def test_uniformly_too_high_predictions_keep_slope_but_lower_observed_expected(cohort_and_truth):
    outcome, truth = cohort_and_truth
    too_high = 1.0 - (1.0 - truth) ** 2  # cloglog shifted by log 2: same slope, higher level
    assert calibration_slope(outcome, too_high, 365.0) == pytest.approx(calibration_slope(outcome, truth, 365.0))
    assert observed_expected_ratio(outcome, too_high, 365.0) < 0.8


def test_calibration_table_observed_is_aalen_johansen_within_group(cohort_and_truth):
    outcome, truth = cohort_and_truth
    table = calibration_table(outcome, truth, 365.0, n_groups=10)
    assert list(table["group"]) == list(range(1, 11))
    assert table["n_rows"].sum() == outcome.n
    assert table["predicted"].is_monotonic_increasing
    top = truth >= np.quantile(truth, 0.9)
    expected = aalen_johansen(outcome.time[top], outcome.status[top], [365.0], n_causes=2)[0, 0]
    assert table["observed"].iloc[-1] == pytest.approx(expected, abs=0.01)
    assert decile_slope(table) == pytest.approx(1.0, abs=0.15)


def test_calibration_with_two_predicted_values_gives_two_groups(cohort_and_truth):
    outcome, truth = cohort_and_truth
    binary = np.where(truth > np.median(truth), 0.5, 0.2)
    assert len(calibration_table(outcome, binary, 365.0)) == 2


def test_constant_prediction_has_no_slope(cohort_and_truth):
    outcome, _ = cohort_and_truth
    assert np.isnan(calibration_slope(outcome, np.full(outcome.n, 0.3), 365.0))


def test_bootstrap_slopes_scatter_around_the_point(cohort_and_truth):
    outcome, truth = cohort_and_truth
    multiplicities = np.random.default_rng(1).multinomial(outcome.n, np.full(outcome.n, 1 / outcome.n), size=20)
    slopes = calibration_slope(outcome, truth, 365.0, multiplicities.astype(float))
    assert slopes.shape == (20,)
    assert np.std(slopes) > 0
    assert abs(np.mean(slopes) - calibration_slope(outcome, truth, 365.0)) < 3 * np.std(slopes)


def test_slope_stays_finite_with_many_zero_predictions():
    """A rare endpoint predicted exactly 0 for most rows (like a Monte Carlo oracle) must not make
    the recalibration fit diverge."""
    rng = np.random.default_rng(4)
    n = 4000
    truth = np.where(rng.random(n) < 0.7, 0.0, rng.uniform(0.05, 0.3, n))
    event = rng.random(n) < np.maximum(truth, 1e-5)
    outcome = Outcome(np.where(event, 100.0, 400.0), event.astype(int))
    assert calibration_slope(outcome, truth, 365.0) == pytest.approx(1.0, abs=0.25)


def _reference_cloglog_fit(outcome, cif, t):
    """The same weighted binomial likelihood maximised by a generic optimiser (scipy), no Newton."""
    from scipy.optimize import minimize

    from models.metrics import known_status_weights

    weight, case, _ = known_status_weights(outcome, t)
    known = weight > 0
    x = np.log(-np.log1p(-np.clip(cif, 1e-4, 1 - 1e-4)))[known]
    y, w = case[known].astype(float), weight[known]

    def negative(beta):
        risk = np.exp(beta[0] + beta[1] * x)
        return -np.sum(w * (y * np.log(-np.expm1(-risk)) - (1 - y) * risk))

    return minimize(negative, [0.0, 1.0], method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12}).x


def test_recalibration_fit_equals_a_generic_optimiser_with_censoring_and_competing_events(cohort_and_truth):
    outcome, truth = cohort_and_truth
    assert (outcome.status == 2).any() and (outcome.status == 0).any()
    skewed = -np.expm1(-1.7 * (-np.log1p(-truth)) ** 0.8)
    intercept, slope = cloglog_recalibration(outcome, skewed, 365.0)
    np.testing.assert_allclose([intercept, slope], _reference_cloglog_fit(outcome, skewed, 365.0), atol=1e-4)
    assert slope == pytest.approx(calibration_slope(outcome, skewed, 365.0))


def test_recalibration_prior_shrinks_towards_its_mean_when_events_are_few():
    rng = np.random.default_rng(5)
    n = 400
    predicted = rng.uniform(0.01, 0.05, n)
    event = rng.random(n) < predicted / 2.0  # truth: half the predicted risk, a handful of events
    outcome = Outcome(np.where(event, 100.0, 400.0), event.astype(int))
    # slope held at 1 by a tight prior: the intercept alone, nearly free vs shrunk towards 0
    free = cloglog_recalibration(outcome, predicted, 365.0, prior_sd=(100.0, 1e-4))[0]
    shrunk = cloglog_recalibration(outcome, predicted, 365.0, prior_sd=(0.2, 1e-4))[0]
    assert event.sum() < 30
    assert free == pytest.approx(np.log(event.sum() / predicted.sum()), abs=0.05)  # log(observed / expected)
    assert free < shrunk < 0.0  # held back by the prior
    none = Outcome(np.full(n, 400.0), np.zeros(n, dtype=int))
    assert np.isnan(cloglog_recalibration(none, predicted, 365.0)[0])
    assert cloglog_recalibration(none, predicted, 365.0, prior_mean=(0.3, 1.0), prior_sd=(0.5, 0.25))[0] < 0.3


def test_bootstrap_observed_expected_equals_one_resample_at_a_time(cohort_and_truth):
    outcome, truth = cohort_and_truth
    multiplicities = np.random.default_rng(2).multinomial(outcome.n, np.full(outcome.n, 1 / outcome.n),
                                                          size=5).astype(float)
    ratios = observed_expected_ratio(outcome, truth, 365.0, multiplicities)
    one_at_a_time = [observed_incidence(outcome, 365.0, m) / (m @ truth / m.sum()) for m in multiplicities]
    np.testing.assert_allclose(ratios, one_at_a_time, rtol=1e-12)
