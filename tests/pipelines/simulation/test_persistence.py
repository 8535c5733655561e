"""CAR persistence times and B-cell recovery (pipelines.simulation.persistence)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.simulation.covariates import draw_covariates
from pipelines.simulation.params import PersistenceParams, SimulationParams
from pipelines.simulation.persistence import (
    PersistenceLatent,
    b_cells_per_ul,
    draw_persistence,
    sample_persistence_day,
)


def _latent(n: int, log_hr: np.ndarray | float = 0.0, failure: bool = False, long: bool = False) -> PersistenceLatent:
    return PersistenceLatent(
        primary_failure=np.full(n, failure), primary_failure_day=np.full(n, 12.0), long_persistence=np.full(n, long),
        log_hazard_ratio=np.broadcast_to(np.asarray(log_hr, dtype=float), (n,)).copy(),
        b_cells_max_per_ul=np.full(n, 300.0), lymphocytes_per_ul=np.full(n, 1200.0), car_peak_log10=np.full(n, 4.5),
    )


def test_weibull_median_and_hazard_ratio_are_recovered():
    p = PersistenceParams()
    rng = np.random.default_rng(0)
    n = 40000
    reference = sample_persistence_day(_latent(n), rng, p)
    expected_median = p.weibull_scale_days * np.log(2.0) ** (1.0 / p.weibull_shape)
    assert np.median(reference) == pytest.approx(expected_median, rel=0.03)
    faster = sample_persistence_day(_latent(n, np.log(3.0)), rng, p)
    # under proportional hazards, S_faster(t) = S_reference(t) ** 3
    t = np.median(reference)
    assert (faster > t).mean() == pytest.approx(0.5 ** 3, abs=0.01)


def test_conditional_draw_is_the_tail_of_the_same_distribution():
    p = PersistenceParams()
    rng = np.random.default_rng(1)
    n = 60000
    unconditional = sample_persistence_day(_latent(n), rng, p)
    conditional = sample_persistence_day(_latent(n), rng, p, after_day=150.0)
    assert conditional.min() > 150.0
    tail = unconditional[unconditional > 150.0]
    assert np.median(conditional) == pytest.approx(np.median(tail), rel=0.03)


def test_failures_and_long_persisters_keep_their_latent_times():
    p = PersistenceParams()
    rng = np.random.default_rng(2)
    assert np.all(sample_persistence_day(_latent(10, failure=True), rng, p) == 12.0)
    assert np.all(np.isinf(sample_persistence_day(_latent(10, long=True), rng, p)))


def test_b_cells_stay_aplastic_under_the_car_and_recover_after():
    p = PersistenceParams()
    latent = _latent(3)
    car_loss_day = np.array([100.0, 100.0, np.inf])
    days = np.array([[50.0, 105.0, 200.0]] * 3)
    cells = b_cells_per_ul(days, car_loss_day, latent, p)
    assert np.all(cells[:, 0] < 1.0) and np.all(cells[2] < 1.0)
    assert cells[0, 1] < 1.0
    assert cells[0, 2] > 100.0


@pytest.mark.parametrize("risky, safe", [
    ({"cd19_antigen_load_pct": 5.0}, {"cd19_antigen_load_pct": 40.0}),
    ({"flu_auc": 10.0}, {"flu_auc": 20.0}),
    ({"cd28": True}, {"cd28": False}),
])
def test_persistence_is_shorter_with_low_antigen_load_low_fludarabine_and_cd28(risky, safe):
    """The same patients, with one covariate set to its risky level or to its safe level."""
    params = SimulationParams()
    cov = draw_covariates(20000, np.random.default_rng(3), params.covariates, params.sites)

    def persistence(values: dict) -> tuple[PersistenceLatent, np.ndarray]:
        fixed = dataclasses.replace(cov, **{name: np.full(cov.n, value) for name, value in values.items()})
        latent = draw_persistence(fixed, np.random.default_rng(4), params.persistence)
        return latent, sample_persistence_day(latent, np.random.default_rng(5), params.persistence)

    risky_latent, risky_days = persistence(risky)
    safe_latent, safe_days = persistence(safe)
    assert np.median(risky_days) < 0.75 * np.median(safe_days)
    assert risky_latent.primary_failure.mean() >= safe_latent.primary_failure.mean()
