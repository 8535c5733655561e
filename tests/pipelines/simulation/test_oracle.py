"""Conditioning of the Monte Carlo oracle on the past (pipelines.simulation.oracle)."""

from __future__ import annotations

import numpy as np

from pipelines.simulation.arrays import take_rows
from pipelines.simulation.course import decision_view, draw_course, draw_latent_patients, run_course
from pipelines.simulation.oracle import conditional_draws, true_incidence
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
