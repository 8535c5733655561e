"""Conditioning of the Monte Carlo oracle on the past (pipelines.simulation.oracle)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.simulation.arrays import take_rows
from pipelines.simulation.course import decision_view, draw_course, draw_latent_patients, run_course
from pipelines.simulation.events import EVENT_DEATH, EVENT_HSCT, EVENT_RELAPSE
from pipelines.simulation.oracle import RELAPSE, conditional_draws, in_risk_set, oracle_table, true_incidence
from pipelines.simulation.params import SimulationParams


def _realised(n: int = 3000, seed: int = 0):
    params = SimulationParams()
    rng = np.random.default_rng(seed)
    latent = draw_latent_patients(n, rng, params)
    draws = draw_course(latent, rng, params)
    return params, latent, draws, run_course(latent, draws, params)


def test_conditional_draws_keep_the_past_and_redraw_the_future():
    params, latent, draws, _ = _realised()
    view_latent, view_draws = decision_view(latent, draws, params)
    s = 91.0
    fresh = conditional_draws(view_latent, view_draws, s, np.random.default_rng(5), params)
    lost = draws.car_loss_day <= s
    np.testing.assert_array_equal(fresh.car_loss_day[lost], draws.car_loss_day[lost])
    assert np.all(fresh.car_loss_day[~lost] > s)
    redrawn = ~lost & np.isfinite(draws.car_loss_day)
    assert not np.array_equal(fresh.car_loss_day[redrawn], draws.car_loss_day[redrawn])
    escaped = draws.escape_day <= s
    np.testing.assert_array_equal(fresh.escape_day[escaped], draws.escape_day[escaped])
    assert np.all(fresh.escape_day[~escaped] > s)
    assert np.all(fresh.death_day > s)
    past = view_latent.schedule.day <= s
    np.testing.assert_array_equal(fresh.noise.bm_ngs[past], view_draws.noise.bm_ngs[past])
    assert not np.array_equal(fresh.noise.bm_ngs[~past], view_draws.noise.bm_ngs[~past])


def test_replicates_reproduce_the_past_events_exactly():
    """Every replicate of a patient in the risk set is still event-free at the landmark."""
    params, latent, draws, outcome = _realised(800, seed=1)
    s = 182.0
    at_risk = np.flatnonzero(outcome.responder & (outcome.first.day > s))
    rows = np.repeat(at_risk, 20)
    view_latent, view_draws = decision_view(take_rows(latent, rows), take_rows(draws, rows), params)
    fresh = conditional_draws(view_latent, view_draws, s, np.random.default_rng(2), params)
    replicate = run_course(view_latent, fresh, params)
    assert np.all(replicate.responder)
    assert np.all(replicate.first.day > s)


def test_more_replicates_shrink_monte_carlo_noise():
    params, latent, draws, outcome = _realised(300, seed=3)
    patients = np.flatnonzero(outcome.responder)[:100]
    estimates = [true_incidence(latent, draws, outcome, 0.0, (365.0,), replicates, np.random.default_rng(seed),
                                params, patients=patients).cif[patients, 0, :3].sum(axis=1)
                 for replicates, seed in ((16, 1), (16, 2), (256, 3), (256, 4))]
    spread_few = np.nanmean(np.abs(estimates[0] - estimates[1]))
    spread_many = np.nanmean(np.abs(estimates[2] - estimates[3]))
    assert spread_many < 0.5 * spread_few


def _counted_incidence(latent, draws, patients, s, horizon, replicates, rng, params):
    """Reference: sample the whole future (death and HSCT decisions too) and count first events."""
    rows = np.repeat(patients, replicates)
    view_latent, view_draws = decision_view(take_rows(latent, rows), take_rows(draws, rows), params)
    replicate = run_course(view_latent, conditional_draws(view_latent, view_draws, s, rng, params), params)
    within = replicate.first.day <= s + horizon
    cause = np.select([within & (replicate.first.event == EVENT_RELAPSE), within & (replicate.first.event == EVENT_DEATH),
                       within & (replicate.first.event == EVENT_HSCT)],
                      [replicate.relapse.phenotype, 3, 4], 5)
    group = np.repeat(np.arange(patients.size), replicates)
    kept = replicate.responder
    counts = np.stack([np.bincount(group[kept & (cause == c)], minlength=patients.size) for c in range(6)], axis=1)
    return counts / np.bincount(group[kept], minlength=patients.size)[:, None], kept.reshape(-1, replicates).mean(1)


@pytest.mark.parametrize("s", [0.0, 91.0])
def test_integrating_out_death_and_hsct_keeps_the_expectation(s):
    """The oracle's conditional expectation agrees with counting sampled first events."""
    params, latent, draws, outcome = _realised(600, seed=4)
    patients = np.flatnonzero(in_risk_set(outcome, s))[:150]
    horizon = 365.0
    oracle = true_incidence(latent, draws, outcome, s, (horizon,), 400, np.random.default_rng(7), params,
                            patients=patients)
    counted, responded = _counted_incidence(latent, draws, patients, s, horizon, 1500, np.random.default_rng(8),
                                            params)
    cif = oracle.cif[patients, 0, :]
    counted_se = np.sqrt(counted * (1 - counted) / 1500)
    for c in range(6):
        difference = cif[:, c].mean() - counted[:, c].mean()
        se = np.sqrt(np.mean(oracle.mcse[patients, 0, c] ** 2) + np.mean(counted_se[:, c] ** 2)) / np.sqrt(150)
        assert abs(difference) < 4 * se + 1e-4, (c, difference, se)
    z = (cif - counted) / np.sqrt(oracle.mcse[patients, 0, :6] ** 2 + counted_se ** 2 + 1e-12)
    assert np.mean(np.abs(z) > 4) < 0.01
    np.testing.assert_allclose(oracle.p_response[patients].mean(), responded.mean(), atol=0.01)


def test_monte_carlo_standard_errors_match_the_spread_between_runs():
    params, latent, draws, outcome = _realised(800, seed=5)
    s = 28.0
    runs = [true_incidence(latent, draws, outcome, s, (182.0, 365.0), 64, np.random.default_rng(seed), params)
            for seed in (1, 2)]
    at_risk = runs[0].in_risk_set
    relapse = [run.cif[at_risk][..., :3].sum(axis=2) for run in runs]
    mcse = [run.mcse[at_risk][..., RELAPSE] for run in runs]
    spread = np.sqrt(np.mean((relapse[0] - relapse[1]) ** 2))
    predicted = np.sqrt(np.mean(mcse[0] ** 2 + mcse[1] ** 2))
    assert 0.8 < spread / predicted < 1.25
    assert runs[0].replicates == 64
    table = oracle_table(np.arange(800).astype(str), runs[:1])
    assert {"mcse_cif_relapse", "mcse_cif_CD19_pos", "mcse_event_free", "mc_replicates"} <= set(table.columns)
    assert table.loc[table["in_risk_set"], "mcse_cif_relapse"].notna().all()
