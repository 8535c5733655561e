"""Metrics: equal to scikit-survival / lifelines without competing events; hand-worked with them."""

from __future__ import annotations

import numpy as np
import pytest
from lifelines.utils import concordance_index as lifelines_concordance
from sksurv.metrics import (
    brier_score as sksurv_brier,
)
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
)
from sksurv.metrics import (
    integrated_brier_score as sksurv_ibs,
)
from sksurv.util import Surv

from models.base import ModelInputError
from models.metrics import (
    COMPETING,
    ENDPOINT,
    Outcome,
    brier_score,
    cumulative_auc,
    harrell_c,
    integrated_brier_score,
    uno_c,
)


@pytest.fixture(scope="module")
def single_event():
    """Right-censored data without competing events, continuous times, a risk that matters."""
    rng = np.random.default_rng(3)
    n = 400
    risk = rng.normal(size=n)
    event_time = rng.exponential(100.0 * np.exp(-risk))
    censor_time = rng.exponential(150.0, n)
    time = np.minimum(event_time, censor_time)
    event = event_time <= censor_time
    times = np.quantile(time, [0.3, 0.5, 0.7])
    cif = 1.0 - np.exp(-np.exp(risk)[:, None] * times[None, :] / 100.0)
    return time, event, risk, times, cif


def test_harrell_c_equals_scikit_survival_and_lifelines(single_event):
    time, event, risk, _, _ = single_event
    ours = harrell_c(Outcome(time, event.astype(int)), risk)
    assert ours == pytest.approx(concordance_index_censored(event, time, risk)[0], abs=1e-12)
    # lifelines expects a survival score (higher = longer): pass minus the risk
    assert ours == pytest.approx(lifelines_concordance(time, -risk, event), abs=1e-12)


@pytest.mark.parametrize("quantile", [None, 0.8])
def test_uno_c_equals_scikit_survival(single_event, quantile):
    time, event, risk, _, _ = single_event
    tau = None if quantile is None else float(np.quantile(time, quantile))
    y = Surv.from_arrays(event, time)
    expected = concordance_index_ipcw(y, y, risk, tau=tau)[0]
    assert uno_c(Outcome(time, event.astype(int)), risk, tau) == pytest.approx(expected, abs=1e-10)


def test_auc_brier_and_ibs_equal_scikit_survival(single_event):
    time, event, _, times, cif = single_event
    outcome, y = Outcome(time, event.astype(int)), Surv.from_arrays(event, time)
    auc = [cumulative_auc(outcome, cif[:, k], t) for k, t in enumerate(times)]
    np.testing.assert_allclose(auc, cumulative_dynamic_auc(y, y, cif, times)[0], atol=1e-10)
    brier = [brier_score(outcome, cif[:, k], t) for k, t in enumerate(times)]
    np.testing.assert_allclose(brier, sksurv_brier(y, y, 1.0 - cif, times)[1], atol=1e-12)
    assert integrated_brier_score(outcome, cif, times) == pytest.approx(sksurv_ibs(y, y, 1.0 - cif, times), abs=1e-12)


def test_competing_risk_concordance_hand_worked():
    # rows: 0 endpoint at 2, 1 competing at 1, 2 censored at 3, 3 endpoint at 4
    outcome = Outcome(np.array([2.0, 1.0, 3.0, 4.0]), np.array([ENDPOINT, COMPETING, 0, ENDPOINT]))
    risk = np.array([0.9, 0.5, 0.2, 0.6])
    # case 0 (t=2): type A vs rows 2, 3 (later); type B vs row 1 (competing at 1 <= 2): 3 pairs,
    #   concordant: 0.9 > 0.2, 0.9 > 0.6, 0.9 > 0.5 -> 3
    # case 3 (t=4): type A none later; type B vs row 1: 0.6 > 0.5 -> 1 of 1
    assert harrell_c(outcome, risk) == pytest.approx(4 / 4)
    risk_swapped = np.array([0.4, 0.5, 0.2, 0.6])
    # case 0: 0.4 > 0.2 yes, 0.4 > 0.6 no, 0.4 > 0.5 no -> 1; case 3: 0.6 > 0.5 -> 1; total 2 of 4
    assert harrell_c(outcome, risk_swapped) == pytest.approx(2 / 4)


def test_competing_events_count_as_controls_in_auc():
    outcome = Outcome(np.array([1.0, 2.0, 5.0]), np.array([ENDPOINT, COMPETING, 0]))
    # at t=3 row 0 is a case; row 1 (competing by t) and row 2 (event-free at t) are controls
    assert cumulative_auc(outcome, np.array([0.5, 0.9, 0.1]), 3.0) == pytest.approx(0.5)
    assert cumulative_auc(outcome, np.array([0.5, 0.4, 0.1]), 3.0) == pytest.approx(1.0)


def test_brier_counts_competing_rows_as_zero_outcomes():
    outcome = Outcome(np.array([1.0, 2.0, 5.0]), np.array([ENDPOINT, COMPETING, 0]))
    cif = np.array([0.8, 0.3, 0.1])
    # no censoring before t=3 so every weight is 1: ((1-0.8)^2 + 0.3^2 + 0.1^2) / 3
    assert brier_score(outcome, cif, 3.0) == pytest.approx((0.04 + 0.09 + 0.01) / 3)


def test_bootstrap_multiplicities_equal_explicit_resampling(single_event):
    time, event, risk, times, cif = single_event
    outcome = Outcome(time, event.astype(int))
    multiplicities = np.random.default_rng(0).multinomial(time.size, np.full(time.size, 1 / time.size), size=3)
    multiplicities = multiplicities.astype(float)
    for b, counts in enumerate(multiplicities):
        rows = np.repeat(np.arange(time.size), counts.astype(int))
        resampled = Outcome(time[rows], event[rows].astype(int))
        assert harrell_c(outcome, risk, None, multiplicities)[b] == pytest.approx(harrell_c(resampled, risk[rows]))
        # the censoring weights are kept from the full sample (documented), hence the tolerance
        assert brier_score(outcome, cif[:, 1], times[1], multiplicities)[b] == pytest.approx(
            brier_score(Outcome(time[rows], event[rows].astype(int)), cif[rows, 1], times[1]), rel=0.05)


def test_outcome_from_events_maps_endpoints():
    events = ["relapse_CD19_pos", "relapse_unknown", "death", "none", "relapse_CD19_neg"]
    relapse = Outcome.from_events([1, 2, 3, 4, 5], events, "relapse")
    np.testing.assert_array_equal(relapse.status, [1, 1, 2, 0, 1])
    negative = Outcome.from_events([1, 2, 3, 4, 5], events, "relapse_CD19_neg")
    np.testing.assert_array_equal(negative.status, [2, 2, 2, 0, 1])
    with pytest.raises(ModelInputError, match="unknown endpoint"):
        Outcome.from_events([1], ["none"], "relapse_any")


def test_predictions_with_nan_are_rejected(single_event):
    time, event, risk, _, _ = single_event
    risk = risk.copy()
    risk[3] = np.nan
    with pytest.raises(ModelInputError, match="NaN"):
        uno_c(Outcome(time, event.astype(int)), risk)


def test_no_comparable_pair_gives_nan_not_an_error():
    outcome = Outcome(np.array([5.0, 6.0, 7.0]), np.array([0, COMPETING, 0]))
    assert np.isnan(harrell_c(outcome, np.array([0.1, 0.2, 0.3])))
    assert np.isnan(uno_c(outcome, np.array([0.1, 0.2, 0.3]), tau=4.0))
    assert np.isnan(cumulative_auc(outcome, np.array([0.1, 0.2, 0.3]), 6.5))


def test_death_and_hsct_endpoints_count_every_other_event_as_competing():
    events = ["death", "hsct", "relapse_CD19_pos", "relapse_unknown", "none"]
    death = Outcome.from_events([1.0] * 5, events, "death")
    hsct = Outcome.from_events([1.0] * 5, events, "hsct")
    assert list(death.status) == [1, 2, 2, 2, 0]
    assert list(hsct.status) == [2, 1, 2, 2, 0]
