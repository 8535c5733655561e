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
    Relapse,
    death_cumulative_hazard,
    first_event,
    first_event_probabilities,
    hsct_decision_day,
    hsct_decision_probability,
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

    def decide(eligible_until, prior_hsct, uniform, recovered=recovered):
        probability = hsct_decision_probability(observed, _schedule(days), recovered, eligible_until, np.ones(n),
                                                prior_hsct, p)
        return hsct_decision_day(probability, days, uniform)

    decision = decide(np.full(n, INF), np.zeros(n, dtype=bool), uniform)
    decided_at_91 = (decision == 91.0)[decision != 28.0]   # among those not decided at day 28
    group = np.repeat([0, 1, 2], third)[decision != 28.0]
    for g, extra in ((0, p.hsct_hazard_mrd_positive), (1, p.hsct_hazard_bca_loss), (2, 0.0)):
        expected = 1 - np.exp(-(p.hsct_hazard_base + extra))
        four_se = 4 * np.sqrt(expected * (1 - expected) / (group == g).sum())
        assert decided_at_91[group == g].mean() == pytest.approx(expected, abs=four_se), g
    prior = decide(np.full(n, INF), np.ones(n, dtype=bool), uniform)
    assert np.isfinite(prior).mean() < 0.5 * np.isfinite(decision).mean()   # lower rate after a prior HSCT
    never = decide(np.full(n, 60.0), np.zeros(n, dtype=bool), np.zeros((n, v)), np.ones((n, v), dtype=bool))
    assert np.all(never == 28.0)   # uniform 0 decides at the first eligible visit; day 91 is past eligibility


def test_death_is_mostly_late_and_conditional_draws_respect_the_landmark():
    p = EventParams()
    rng = np.random.default_rng(0)
    n = 200000
    death = sample_death_day(np.zeros(n, dtype=bool), rng, p)
    assert (death <= 90).mean() == pytest.approx(p.p_treatment_related_death, abs=0.003)
    later = sample_death_day(np.zeros(n, dtype=bool), rng, p, after_day=100.0)
    assert later.min() > 100.0


def test_death_cumulative_hazard_is_the_survival_of_sampled_deaths():
    p = EventParams()
    n = 400000
    prior = np.arange(n) % 2 == 0
    for after in (0.0, 40.0, 200.0):
        death = sample_death_day(prior, np.random.default_rng(int(after)), p, after_day=after)
        for day in (after + 20.0, after + 150.0, after + 700.0):
            for group in (prior, ~prior):
                expected = np.exp(-death_cumulative_hazard(group[:1], np.array([day]), after, p))[0]
                observed = (death[group] > day).mean()
                assert observed == pytest.approx(expected, abs=4 * np.sqrt(expected * (1 - expected) / group.sum()))
    assert death_cumulative_hazard(np.array([False]), np.array([30.0]), 30.0, p)[0] == 0.0


def _first_events_by_sampling(relapse, probability, days, delay, prior, alive_at, end, p, n_draws, rng):
    """Monte Carlo of first_event over death and the decision uniforms (the reference)."""
    n = relapse.day.shape[0]
    rows = np.repeat(np.arange(n), n_draws)
    death = sample_death_day(prior[rows], rng, p, after_day=alive_at[rows])
    decision = hsct_decision_day(probability[rows], days[rows], rng.random((rows.size, days.shape[1])))
    first = first_event(np.ones(rows.size, dtype=bool), np.zeros(rows.size), relapse.day[rows], death,
                        decision + delay[rows], horizon_days=end)
    cause = np.where(first.event == EVENT_RELAPSE, relapse.phenotype[rows],
                     np.select([first.event == EVENT_DEATH, first.event == EVENT_HSCT], [3, 4], 5))
    return np.stack([np.bincount(rows[cause == c], minlength=n) / n_draws for c in range(6)], axis=1)


def test_first_event_probabilities_are_the_expectation_of_first_event():
    """Integrating out death and the HSCT decisions gives what sampling them gives, on average."""
    p = EventParams(late_death_per_year=0.3, p_treatment_related_death=0.1)   # make death matter
    days = np.tile([28.0, 61.0, 91.0, 182.0, 365.0], (6, 1))
    probability = np.array([[0.0, 0.2, 0.2, 0.2, 0.2], [1.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 5,
                            [0.0, 0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.3, 0.9, 0.9], [0.1] * 5])
    relapse = Relapse(day=np.array([200.0, 100.0, INF, 95.0, 400.0, 60.0]), phenotype=np.array([0, 1, 0, 2, 1, 0]),
                      site=np.zeros(6, dtype=int))
    delay, prior = np.full(6, 30.0), np.array([False, True, False, False, True, False])
    alive_at = np.array([28.0, 28.0, 91.0, 28.0, 28.0, 40.0])
    ends = np.array([182.0, 365.0, 730.0])
    expected = first_event_probabilities(relapse, probability, days, delay, prior, alive_at, ends, p)
    np.testing.assert_allclose(expected.sum(axis=2), 1.0, atol=1e-12)
    for h, end in enumerate(ends):
        sampled = _first_events_by_sampling(relapse, probability, days, delay, prior, alive_at, end, p, 40000,
                                            np.random.default_rng(h))
        np.testing.assert_allclose(expected[:, h, :], sampled, atol=0.012)
    def alive(row: int, day: float) -> float:
        return float(np.exp(-death_cumulative_hazard(prior[row:row + 1], np.array([day]), alive_at[row], p))[0])

    assert expected[1, 0, 4] == pytest.approx(alive(1, 58.0))   # decided at day 28: HSCT on day 58, before relapse
    assert expected[2, 2, 3] == pytest.approx(1.0 - alive(2, 730.0))   # neither relapse nor HSCT: only death
    assert expected[2, 2, 5] == pytest.approx(alive(2, 730.0))
