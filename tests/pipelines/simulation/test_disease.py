"""Closed-form burdens and crossings of the clonal model (pipelines.simulation.disease)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.simulation.disease import CLONES, ClonalCourse, DiseaseLatent, clonal_course, sample_escape
from pipelines.simulation.params import DiseaseParams

THRESHOLD_M, THRESHOLD_E = np.log10(0.05), -2.0


def course_with(n: int, **fields) -> ClonalCourse:
    """A clonal course of ``n`` patients without any disease, no CAR kill and a CAR never lost,
    except for the given fields (of :class:`DiseaseLatent` or :class:`ClonalCourse`, arrays of length n)."""
    none, zeros = np.full(n, -np.inf), np.zeros(n)
    latent = dict(
        pos_marrow_log10_day0=none, pos_em_log10_day0=none, em_kill_factor=np.ones(n),
        expansion_kill_log10_per_day=zeros, maintenance_kill_log10_per_day=zeros,
        pos_regrowth_log10_per_day=np.full(n, 0.03), neg_growth_log10_per_day=zeros,
        myeloid_growth_log10_per_day=zeros, neg_marrow_log10_day0=none, myeloid_marrow_log10_day0=none,
        neg_em_log10_day0=none, escape_total_hazard=zeros, p_escape_myeloid=zeros,
        patchy_marrow=np.zeros(n, dtype=bool), lymphodepletion_log10_kill=zeros,
    )
    course = dict(car_loss_day=np.full(n, np.inf), escape_day=np.full(n, np.inf),
                  escape_myeloid=np.zeros(n, dtype=bool), escape_seed_log10=-8.0, expansion_days=28.0,
                  floor_log10=-10.0)
    disease = DiseaseLatent(**{**latent, **{k: v for k, v in fields.items() if k in latent}})
    return ClonalCourse(disease=disease, **{**course, **{k: v for k, v in fields.items() if k not in latent}})


def _course(n: int = 500, seed: int = 0) -> ClonalCourse:
    """Random courses covering every branch: extinction, regrowth, persistent and escaping clones."""
    rng = np.random.default_rng(seed)

    def some(share: float, low: float, high: float) -> np.ndarray:
        return np.where(rng.random(n) < share, rng.uniform(low, high, n), -np.inf)

    return course_with(
        n, pos_marrow_log10_day0=rng.uniform(-5, -0.2, n), pos_em_log10_day0=some(0.5, -4, -1),
        em_kill_factor=rng.uniform(0.4, 1.0, n), expansion_kill_log10_per_day=rng.uniform(0.05, 0.3, n),
        maintenance_kill_log10_per_day=rng.uniform(0.0, 0.06, n),
        car_loss_day=np.where(rng.random(n) < 0.1, np.inf, rng.uniform(5, 400, n)),
        pos_regrowth_log10_per_day=rng.uniform(0.01, 0.06, n), neg_growth_log10_per_day=rng.uniform(-0.02, 0.06, n),
        myeloid_growth_log10_per_day=rng.uniform(0.03, 0.1, n), neg_marrow_log10_day0=some(0.4, -9, -2),
        myeloid_marrow_log10_day0=some(0.1, -9, -3), neg_em_log10_day0=some(0.2, -9, -3),
        escape_day=np.where(rng.random(n) < 0.4, rng.uniform(0, 150, n), np.inf), escape_myeloid=rng.random(n) < 0.3,
    )


def test_crossing_days_are_first_passages_of_the_evaluated_burden():
    course = _course()
    crossings = course.crossing_days(THRESHOLD_M, THRESHOLD_E)
    thresholds = np.array([THRESHOLD_M] * 3 + [THRESHOLD_E] * 2)
    grid = np.arange(0.0, 3000.0, 0.5)
    burden = course.log10_burden(np.broadcast_to(grid, (course.car_loss_day.shape[0], grid.shape[0])))
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
    alive = np.isfinite(course.car_loss_day) & (course.car_loss_day > 40)
    loss_day = np.where(np.isfinite(course.car_loss_day), course.car_loss_day, 1000.0)
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
    never_lost = dataclasses.replace(course, car_loss_day=np.full(course.car_loss_day.shape, np.inf))
    lost_early = dataclasses.replace(course, car_loss_day=np.full(course.car_loss_day.shape, 10.0))
    t = np.full(course.car_loss_day.shape, 300.0)
    with_car, without_car = never_lost.log10_burden(t), lost_early.log10_burden(t)
    for clone in ("neg_m", "my_m", "neg_e"):
        np.testing.assert_array_equal(with_car[clone], without_car[clone])
    assert np.isfinite(with_car["neg_m"]).sum() > 100 and np.isfinite(with_car["my_m"]).sum() > 20
    assert (without_car["pos_m"] > with_car["pos_m"]).mean() > 0.9
    day0, growth = course.disease.neg_marrow_log10_day0, course.disease.neg_growth_log10_per_day
    present = np.isfinite(day0) & np.isinf(course.escape_day)
    np.testing.assert_allclose(with_car["neg_m"][present], day0[present] + growth[present] * 300.0)


def test_escape_arises_only_while_the_car_persists():
    rng = np.random.default_rng(1)
    n = 20000
    latent = DiseaseLatent(*(np.zeros(n),) * 11, escape_total_hazard=np.full(n, 2.0),
                           p_escape_myeloid=np.full(n, 0.3), patchy_marrow=np.zeros(n, bool),
                           lymphodepletion_log10_kill=np.ones(n))
    car_loss_day = rng.uniform(1, 200, n)
    day, myeloid = sample_escape(latent, car_loss_day, rng, DiseaseParams())
    arose = np.isfinite(day)
    assert np.all(day[arose] < car_loss_day[arose])
    expected = 1.0 - np.exp(-2.0 * (1.0 - np.exp(-car_loss_day / DiseaseParams().escape_tau_days)))
    assert abs(arose.mean() - expected.mean()) < 0.02
    assert abs(myeloid.mean() - 0.3) < 0.02


def test_conditional_escape_never_precedes_the_condition():
    rng = np.random.default_rng(2)
    n = 5000
    latent = DiseaseLatent(*(np.zeros(n),) * 11, escape_total_hazard=np.full(n, 5.0), p_escape_myeloid=np.zeros(n),
                           patchy_marrow=np.zeros(n, bool), lymphodepletion_log10_kill=np.ones(n))
    day, _ = sample_escape(latent, np.full(n, np.inf), rng, DiseaseParams(), after_day=60.0)
    assert np.all(day[np.isfinite(day)] > 60.0)


def test_acquired_escape_enters_at_the_seed_level():
    p = DiseaseParams()
    n = 3
    latent = DiseaseLatent(
        pos_marrow_log10_day0=np.full(n, -1.0), pos_em_log10_day0=np.full(n, -np.inf), em_kill_factor=np.ones(n),
        expansion_kill_log10_per_day=np.full(n, 0.2), maintenance_kill_log10_per_day=np.full(n, 0.03),
        pos_regrowth_log10_per_day=np.full(n, 0.03), neg_growth_log10_per_day=np.full(n, 0.02),
        myeloid_growth_log10_per_day=np.full(n, 0.05), neg_marrow_log10_day0=np.full(n, -np.inf),
        myeloid_marrow_log10_day0=np.full(n, -np.inf), neg_em_log10_day0=np.full(n, -np.inf),
        escape_total_hazard=np.ones(n), p_escape_myeloid=np.zeros(n), patchy_marrow=np.zeros(n, bool),
        lymphodepletion_log10_kill=np.ones(n),
    )
    escape_day = np.array([10.0, 50.0, np.inf])
    course = clonal_course(latent, np.full(n, np.inf), escape_day, np.array([False, True, False]), p)
    burden = course.log10_burden(np.array([20.0, 60.0, 60.0]))
    assert burden["neg_m"][0] == pytest.approx(p.escape_seed_log10 + 0.02 * 10)
    assert burden["my_m"][1] == pytest.approx(p.escape_seed_log10 + 0.05 * 10)
    assert np.isinf(burden["neg_m"][2]) and np.isinf(burden["my_m"][2])


def test_a_declining_clone_above_threshold_never_passes_upward():
    course = course_with(2, neg_growth_log10_per_day=np.array([-0.01, 0.01]), neg_marrow_log10_day0=np.full(2, -1.0))
    crossings = course.crossing_days(THRESHOLD_M, THRESHOLD_E)
    assert np.isinf(crossings[0, 1]) and crossings[1, 1] == 0.0
