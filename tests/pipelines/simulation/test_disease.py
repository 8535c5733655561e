"""Closed-form burdens and crossings of the clonal model (pipelines.simulation.disease)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.simulation.disease import CLONES, ClonalCourse, DiseaseLatent, clonal_course, sample_escape
from pipelines.simulation.params import DiseaseParams

THRESHOLD_M, THRESHOLD_E = np.log10(0.05), -2.0


def _course(n: int = 500, seed: int = 0) -> ClonalCourse:
    rng = np.random.default_rng(seed)
    return ClonalCourse(
        b0_m=rng.uniform(-5, -0.2, n), b0_e=np.where(rng.random(n) < 0.5, rng.uniform(-4, -1, n), -np.inf),
        kill_factor_e=rng.uniform(0.4, 1.0, n), k1=rng.uniform(0.05, 0.3, n), k2=rng.uniform(0.0, 0.06, n),
        tp=np.where(rng.random(n) < 0.1, np.inf, rng.uniform(5, 400, n)), growth_pos=rng.uniform(0.01, 0.06, n),
        growth_neg=rng.uniform(-0.02, 0.06, n), growth_my=rng.uniform(0.03, 0.1, n),
        neg_m=np.where(rng.random(n) < 0.4, rng.uniform(-9, -2, n), -np.inf),
        my_m=np.where(rng.random(n) < 0.1, rng.uniform(-9, -3, n), -np.inf),
        neg_e=np.where(rng.random(n) < 0.2, rng.uniform(-9, -3, n), -np.inf),
        escape_day=np.where(rng.random(n) < 0.4, rng.uniform(0, 150, n), np.inf), escape_myeloid=rng.random(n) < 0.3,
        escape_seed_log10=-8.0, expansion_days=28.0, floor_log10=-10.0,
    )


def test_crossing_days_are_first_passages_of_the_evaluated_burden():
    course = _course()
    crossings = course.crossing_days(THRESHOLD_M, THRESHOLD_E)
    thresholds = np.array([THRESHOLD_M] * 3 + [THRESHOLD_E] * 2)
    grid = np.arange(0.0, 3000.0, 0.5)
    burden = course.log10_burden(np.broadcast_to(grid, (course.tp.shape[0], grid.shape[0])))
    checked = 0
    for j, clone in enumerate(CLONES):
        above = burden[clone] >= thresholds[j]
        fell_below = np.maximum.accumulate(~above, axis=1)
        rises = above & fell_below
        first_rise = np.where(rises.any(axis=1), grid[np.argmax(rises, axis=1)], np.inf)
        never_below = above.all(axis=1)
        finite = np.isfinite(crossings[:, j]) & (crossings[:, j] > 0) & (crossings[:, j] < grid[-1])
        np.testing.assert_allclose(first_rise[finite], crossings[finite, j], atol=0.51)
        assert np.all(crossings[never_below, j] == 0.0)
        assert np.all(~rises[np.isinf(crossings[:, j])].any(axis=1))
        checked += finite.sum()
    assert checked > 200


def test_cd19_positive_clone_falls_while_the_car_persists_and_regrows_after():
    course = _course()
    alive = np.isfinite(course.tp) & (course.tp > 40)
    loss_day = np.where(np.isfinite(course.tp), course.tp, 1000.0)
    before = course.log10_burden(loss_day - 10.0)["pos_m"]
    at_loss = course.log10_burden(loss_day)["pos_m"]
    after = course.log10_burden(loss_day + 30.0)["pos_m"]
    survived = alive & np.isfinite(at_loss)
    assert np.all(at_loss[survived] <= before[survived])
    assert np.all(after[survived] > at_loss[survived])
    extinct = alive & ~np.isfinite(at_loss)
    assert extinct.any() and np.all(np.isinf(after[extinct]))


def test_cd19_negative_and_myeloid_clones_ignore_the_car():
    course = _course()
    t = np.full(course.tp.shape, 100.0)
    burden = course.log10_burden(t)
    present = np.isfinite(course.neg_m) & np.isinf(course.escape_day)
    np.testing.assert_allclose(burden["neg_m"][present], course.neg_m[present] + course.growth_neg[present] * 100.0)
    later = course.log10_burden(t + 50.0)
    np.testing.assert_allclose(later["neg_m"][present] - burden["neg_m"][present], 50.0 * course.growth_neg[present])


def test_escape_arises_only_while_the_car_persists():
    rng = np.random.default_rng(1)
    n = 20000
    latent = DiseaseLatent(*(np.zeros(n),) * 11, escape_total=np.full(n, 2.0), p_escape_myeloid=np.full(n, 0.3),
                           patchy_marrow=np.zeros(n, bool), lymphodepletion_log_kill=np.ones(n))
    tp = rng.uniform(1, 200, n)
    day, myeloid = sample_escape(latent, tp, rng, DiseaseParams())
    arose = np.isfinite(day)
    assert np.all(day[arose] < tp[arose])
    expected = 1.0 - np.exp(-2.0 * (1.0 - np.exp(-tp / DiseaseParams().escape_tau_days)))
    assert abs(arose.mean() - expected.mean()) < 0.02
    assert abs(myeloid.mean() - 0.3) < 0.02


def test_conditional_escape_never_precedes_the_condition():
    rng = np.random.default_rng(2)
    n = 5000
    latent = DiseaseLatent(*(np.zeros(n),) * 11, escape_total=np.full(n, 5.0), p_escape_myeloid=np.zeros(n),
                           patchy_marrow=np.zeros(n, bool), lymphodepletion_log_kill=np.ones(n))
    day, _ = sample_escape(latent, np.full(n, np.inf), rng, DiseaseParams(), after_day=60.0)
    assert np.all(day[np.isfinite(day)] > 60.0)


def test_acquired_escape_enters_at_the_seed_level():
    p = DiseaseParams()
    n = 3
    latent = DiseaseLatent(
        b0_m=np.full(n, -1.0), b0_e=np.full(n, -np.inf), kill_factor_e=np.ones(n),
        expansion_kill_per_day=np.full(n, 0.2), maintenance_kill_per_day=np.full(n, 0.03),
        growth_pos=np.full(n, 0.03), growth_neg=np.full(n, 0.02), growth_my=np.full(n, 0.05),
        neg_pre_m=np.full(n, -np.inf), my_pre_m=np.full(n, -np.inf), neg_pre_e=np.full(n, -np.inf),
        escape_total=np.ones(n), p_escape_myeloid=np.zeros(n), patchy_marrow=np.zeros(n, bool),
        lymphodepletion_log_kill=np.ones(n),
    )
    escape_day = np.array([10.0, 50.0, np.inf])
    course = clonal_course(latent, np.full(n, np.inf), escape_day, np.array([False, True, False]), p)
    burden = course.log10_burden(np.array([20.0, 60.0, 60.0]))
    assert burden["neg_m"][0] == pytest.approx(p.escape_seed_log10 + 0.02 * 10)
    assert burden["my_m"][1] == pytest.approx(p.escape_seed_log10 + 0.05 * 10)
    assert np.isinf(burden["neg_m"][2]) and np.isinf(burden["my_m"][2])


def test_a_declining_clone_above_threshold_never_passes_upward():
    n = 2
    course = ClonalCourse(
        b0_m=np.full(n, -np.inf), b0_e=np.full(n, -np.inf), kill_factor_e=np.ones(n), k1=np.zeros(n),
        k2=np.zeros(n), tp=np.full(n, np.inf), growth_pos=np.full(n, 0.03), growth_neg=np.array([-0.01, 0.01]),
        growth_my=np.zeros(n), neg_m=np.full(n, -1.0), my_m=np.full(n, -np.inf), neg_e=np.full(n, -np.inf),
        escape_day=np.full(n, np.inf), escape_myeloid=np.zeros(n, dtype=bool), escape_seed_log10=-8.0,
        expansion_days=28.0, floor_log10=-10.0,
    )
    crossings = course.crossing_days(THRESHOLD_M, THRESHOLD_E)
    assert np.isinf(crossings[0, 1]) and crossings[1, 1] == 0.0
