"""Visit schedule and noisy results (pipelines.simulation.observation)."""

from __future__ import annotations

import numpy as np

from pipelines.simulation.disease import ClonalCourse
from pipelines.simulation.observation import (
    ObservationLatent,
    draw_schedule,
    draw_visit_noise,
    observe_b_cells,
    observe_visits,
)
from pipelines.simulation.params import SimulationParams
from tests.pipelines.simulation.test_disease import course_with


def _flat_course(n: int, marrow: float, em: float) -> ClonalCourse:
    """A CD19-negative marrow clone held at ``marrow`` (growth 0) and EM disease at ``em``."""
    return course_with(n, neg_marrow_log10_day0=np.full(n, marrow), neg_em_log10_day0=np.full(n, em))


def _observe(course: ClonalCourse, patchy: bool, seed: int = 0):
    params = SimulationParams()
    n = course.car_loss_day.shape[0]
    rng = np.random.default_rng(seed)
    schedule = draw_schedule(np.zeros(n, dtype=int), np.full(n, 28.0), rng, params.observation, params.sites)
    latent = ObservationLatent(pb_offset_log10=np.full(n, 1.5), ngs_trackable=np.ones(n, dtype=bool),
                               patchy_marrow=np.full(n, patchy))
    noise = draw_visit_noise(schedule.day.shape, rng)
    return schedule, observe_visits(course, latent, schedule, noise, params.observation)


def test_schedule_starts_at_response_and_increases():
    params = SimulationParams()
    rng = np.random.default_rng(0)
    schedule = draw_schedule(rng.integers(0, 7, 2000), np.full(2000, 26.0), rng, params.observation, params.sites)
    assert np.all(schedule.day[:, 0] == 26.0)
    assert np.all(np.diff(schedule.day, axis=1) > 0)
    assert 0.02 < 1 - schedule.attended[:, 1:].mean() < 0.2
    late = schedule.day[0] > 730
    assert schedule.bm[:, late].mean() < schedule.bm[:, ~late].mean()


def test_blood_is_below_marrow_without_em_disease():
    schedule, observed = _observe(_flat_course(3000, -3.0, -np.inf), patchy=False)
    both = ~np.isnan(observed.log10["bm_ngs"]) & ~np.isnan(observed.log10["pb_ngs"])
    difference = observed.log10["bm_ngs"][both] - observed.log10["pb_ngs"][both]
    assert 1.2 < np.median(difference) < 1.8


def test_em_disease_and_patchy_marrow_break_the_blood_marrow_link():
    _, regular = _observe(_flat_course(3000, -5.0, -np.inf), patchy=False)
    _, with_em = _observe(_flat_course(3000, -5.0, -2.5), patchy=False)
    pb_regular = np.nanmedian(regular.log10["pb_ngs"])
    pb_em = np.nanmedian(with_em.log10["pb_ngs"])
    assert pb_em > pb_regular + 1.5
    _, patchy = _observe(_flat_course(3000, -3.5, -np.inf), patchy=True)
    _, even = _observe(_flat_course(3000, -3.5, -np.inf), patchy=False)
    assert np.nanmean(~patchy.detected["bm_flow"][~np.isnan(patchy.log10["bm_flow"])]) > \
        np.nanmean(~even.detected["bm_flow"][~np.isnan(even.log10["bm_flow"])]) + 0.1


def test_b_cell_percentages_stay_below_100():
    params = SimulationParams()
    rng = np.random.default_rng(0)
    true = np.full((500, 3), 5000.0)
    value, recovered = observe_b_cells(true, np.full(500, 300.0), np.ones(500, dtype=bool),
                                       np.ones((500, 3), dtype=bool), rng.standard_normal((500, 3)),
                                       params.observation)
    assert np.all(value < 100.0) and np.all(recovered)
