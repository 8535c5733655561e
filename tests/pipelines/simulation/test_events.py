"""Response, relapse phenotype and site, death, HSCT and the first event (pipelines.simulation.events)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.simulation.events import (
    EVENT_DEATH,
    EVENT_HSCT,
    EVENT_NONE,
    EVENT_RELAPSE,
    SITE_COMBINED,
    SITE_EXTRAMEDULLARY,
    SITE_MEDULLARY,
    first_event,
    hsct_decision_day,
    relapse_from_crossings,
    sample_death_day,
)
from pipelines.simulation.observation import Schedule, VisitObservations
from pipelines.simulation.params import DiseaseParams, EventParams

INF = np.inf


def test_phenotype_is_the_first_clone_and_site_the_compartments():
    # columns: pos_m, neg_m, my_m, pos_e, neg_e (disease.CLONES)
    crossings = np.array([
        [200.0, INF, INF, INF, INF],      # CD19+ marrow
        [300.0, 150.0, INF, INF, INF],    # CD19- marrow
        [INF, INF, 90.0, INF, INF],       # lineage switch
        [INF, INF, INF, 120.0, INF],      # CD19+ extramedullary only
        [400.0, INF, INF, INF, 380.0],    # CD19- EM, marrow 20 days later: combined
        [INF] * 5,
    ])
    relapse = relapse_from_crossings(crossings, DiseaseParams())
    np.testing.assert_array_equal(relapse.day, [200, 150, 90, 120, 380, INF])
    np.testing.assert_array_equal(relapse.phenotype[:5], [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(relapse.site[:5], [SITE_MEDULLARY, SITE_MEDULLARY, SITE_MEDULLARY,
                                                     SITE_EXTRAMEDULLARY, SITE_COMBINED])


def test_first_event_and_non_responders():
    responder = np.array([True, True, True, False, False, True])
    response_day = np.full(6, 28.0)
    relapse = np.array([100.0, 300.0, INF, 50.0, INF, 5000.0])
    death = np.array([INF, 200.0, INF, 60.0, 10.0, INF])
    hsct = np.array([150.0, INF, 90.0, 40.0, INF, INF])
    first = first_event(responder, response_day, relapse, death, hsct, horizon_days=3650.0)
    np.testing.assert_array_equal(first.event, [EVENT_RELAPSE, EVENT_DEATH, EVENT_HSCT, EVENT_NONE, EVENT_DEATH,
                                                EVENT_NONE])
    np.testing.assert_array_equal(first.day, [100.0, 200.0, 90.0, INF, 10.0, INF])


def _schedule(days: np.ndarray) -> Schedule:
    ones = np.ones(days.shape, dtype=bool)
    return Schedule(day=days, attended=ones, bm=ones, bm_ngs=ones, pb_flow=ones, pb_ngs=ones, b_cells=ones,
                    car_copies=ones, pre_infusion_day=np.full(days.shape[0], -7.0))


def test_hsct_is_decided_from_observed_results_at_eligible_visits():
    """Thirds of the patients: detectable MRD at the day-91 visit, B-cell recovery seen then, neither."""
    p = EventParams()
    n, v = 6000, 3
    days = np.tile([28.0, 91.0, 182.0], (n, 1))
    third = n // 3
    positive, recovered = np.zeros((n, v), dtype=bool), np.zeros((n, v), dtype=bool)
    positive[:third, 1] = True
    recovered[third:2 * third, 1] = True
    observed = VisitObservations(log10={}, detected={k: positive for k in ("bm_flow", "bm_ngs", "pb_flow", "pb_ngs")})
    uniform = np.random.default_rng(0).random((n, v))
    decision = hsct_decision_day(observed, _schedule(days), recovered, np.full(n, INF), np.ones(n),
                                 np.zeros(n, dtype=bool), uniform, p)
    decided_at_91 = (decision == 91.0)[decision != 28.0]   # among those not decided at day 28
    group = np.repeat([0, 1, 2], third)[decision != 28.0]
    for g, extra in ((0, p.hsct_hazard_mrd_positive), (1, p.hsct_hazard_bca_loss), (2, 0.0)):
        expected = 1 - np.exp(-(p.hsct_hazard_base + extra))
        four_se = 4 * np.sqrt(expected * (1 - expected) / (group == g).sum())
        assert decided_at_91[group == g].mean() == pytest.approx(expected, abs=four_se), g
    prior = hsct_decision_day(observed, _schedule(days), recovered, np.full(n, INF), np.ones(n),
                              np.ones(n, dtype=bool), uniform, p)
    assert np.isfinite(prior).mean() < 0.5 * np.isfinite(decision).mean()   # lower rate after a prior HSCT
    never = hsct_decision_day(observed, _schedule(days), np.ones((n, v), dtype=bool), np.full(n, 60.0),
                              np.ones(n), np.zeros(n, dtype=bool), np.zeros((n, v)), p)
    assert np.all(never == 28.0)   # uniform 0 decides at the first eligible visit; day 91 is past eligibility


def test_death_is_mostly_late_and_conditional_draws_respect_the_landmark():
    p = EventParams()
    rng = np.random.default_rng(0)
    n = 200000
    death = sample_death_day(np.zeros(n, dtype=bool), rng, p)
    assert (death <= 90).mean() == pytest.approx(p.p_treatment_related_death, abs=0.003)
    later = sample_death_day(np.zeros(n, dtype=bool), rng, p, after_day=100.0)
    assert later.min() > 100.0
