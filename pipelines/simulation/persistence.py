"""CAR persistence (B-cell aplasia) and what it does to normal B cells and CAR transgene copies.

T_p, the day the CAR stops working, is a mixture: primary failure (no expansion; probability up
with low CD19 antigen load, low fludarabine exposure and poor T-cell fitness), long-term
persistence (never lost), and otherwise a Weibull time whose proportional hazard rises with
antigen load < 15%, fludarabine AUC < 13.8 mg*h/L, CD28 costimulation and poor T-cell fitness.
Normal B cells stay near zero while the CAR persists and recover over weeks after T_p.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.simulation.arrays import expit, smooth_below
from pipelines.simulation.covariates import Covariates
from pipelines.simulation.params import PersistenceParams

__all__ = [
    "PersistenceLatent",
    "draw_persistence",
    "sample_persistence_day",
    "b_cells_per_ul",
    "car_copies_log10",
]


@dataclass(frozen=True)
class PersistenceLatent:
    """Per-patient latent persistence parameters (arrays of length n)."""

    primary_failure: np.ndarray
    primary_failure_day: np.ndarray
    long_persistence: np.ndarray
    log_hazard_ratio: np.ndarray
    b_cells_max_per_ul: np.ndarray
    lymphocytes_per_ul: np.ndarray
    car_peak_log10: np.ndarray


def draw_persistence(cov: Covariates, rng: np.random.Generator, p: PersistenceParams) -> PersistenceLatent:
    """Draw the latent persistence parameters of each patient.

    Parameters
    ----------
    cov : Covariates
    rng : numpy.random.Generator
    p : PersistenceParams

    Returns
    -------
    PersistenceLatent
    """
    n = cov.n
    low_load = smooth_below(cov.cd19_antigen_load_pct, p.load_threshold_pct, p.load_smoothness_log)
    low_flu = smooth_below(cov.flu_auc, p.flu_threshold, p.flu_smoothness_log)
    failure_logit = (p.primary_failure_logit + p.primary_failure_low_load * low_load
                     + p.primary_failure_low_flu * low_flu + p.primary_failure_per_fitness * cov.tcell_fitness)
    failure = rng.random(n) < expit(failure_logit)
    log_hr = (p.log_hr_low_load * low_load + p.log_hr_low_flu * low_flu + p.log_hr_cd28 * cov.cd28
              + p.log_hr_per_fitness * cov.tcell_fitness
              + p.log_hr_per_log_burden * np.maximum(cov.burden_log10 - p.reference_burden_log10, 0.0))
    return PersistenceLatent(
        primary_failure=failure,
        primary_failure_day=rng.uniform(*p.primary_failure_days, n),
        long_persistence=(rng.random(n) < p.p_long_persistence) & ~failure,
        log_hazard_ratio=log_hr,
        b_cells_max_per_ul=p.b_cells_max_median_per_ul * np.exp(rng.normal(0.0, p.b_cells_max_log_sd, n)),
        lymphocytes_per_ul=p.alc_median_per_ul * np.exp(rng.normal(0.0, p.alc_log_sd, n)),
        car_peak_log10=rng.normal(p.car_peak_log10_mean, p.car_peak_log10_sd, n),
    )


def sample_persistence_day(latent: PersistenceLatent, rng: np.random.Generator, p: PersistenceParams,
                           after_day: np.ndarray | float = 0.0) -> np.ndarray:
    """Draw T_p given that the CAR still persists at ``after_day``.

    Primary failures keep their (latent) failure day; long persisters get ``inf``; the others a
    Weibull proportional-hazards time ``H(t) = (t / scale)^shape * exp(lp)`` conditioned on
    ``T_p > after_day``.

    Returns
    -------
    ndarray
        Day of CAR loss.
    """
    n = latent.log_hazard_ratio.shape[0]
    after = np.broadcast_to(np.asarray(after_day, dtype=float), (n,))
    rate = np.exp(latent.log_hazard_ratio)
    cumulative_at_start = (after / p.weibull_scale_days) ** p.weibull_shape * rate
    total = cumulative_at_start + rng.exponential(1.0, n)
    weibull = p.weibull_scale_days * (total / rate) ** (1.0 / p.weibull_shape)
    tp = np.where(latent.long_persistence, np.inf, weibull)
    return np.where(latent.primary_failure, latent.primary_failure_day, tp)


def b_cells_per_ul(t: np.ndarray, tp: np.ndarray, latent: PersistenceLatent, p: PersistenceParams) -> np.ndarray:
    """True peripheral CD19+ B cells (cells/uL) at days ``t`` (shape (n,) or (n, k))."""
    two_d = np.ndim(t) == 2
    tp_c = tp[:, None] if two_d else tp
    b_max = latent.b_cells_max_per_ul[:, None] if two_d else latent.b_cells_max_per_ul
    recovery_start = np.maximum(tp_c, p.lymphodepletion_b_recovery_day) + p.b_recovery_lag_days
    since = np.maximum(t - recovery_start, 0.0)
    recovered = b_max * -np.expm1(-since / p.b_recovery_tau_days)
    return p.b_cells_aplasia_per_ul + recovered


def car_copies_log10(t: np.ndarray, tp: np.ndarray, latent: PersistenceLatent, p: PersistenceParams) -> np.ndarray:
    """True log10 CAR transgene copies per ug of blood DNA at days ``t``."""
    two_d = np.ndim(t) == 2
    tp_c = tp[:, None] if two_d else tp
    peak = latent.car_peak_log10[:, None] if two_d else latent.car_peak_log10
    rising = peak - 0.25 * np.maximum(p.car_peak_day - t, 0.0)
    declining = np.maximum(peak - p.car_decline_log10_per_day * np.maximum(t - p.car_peak_day, 0.0),
                           p.car_plateau_log10)
    level = np.where(t < p.car_peak_day, rising, declining)
    return level - p.car_loss_log10_per_day * np.maximum(t - tp_c, 0.0)
