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

from pipelines.simulation.arrays import as_column, expit, smooth_below
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
    """The product fails to expand: the CAR is lost on ``primary_failure_day``."""
    primary_failure_day: np.ndarray
    long_persistence: np.ndarray
    """The CAR persists for years (T_p = inf)."""
    log_hazard_ratio: np.ndarray
    """Log hazard ratio of CAR loss of the others (Weibull proportional hazards)."""
    b_cells_max_per_ul: np.ndarray
    lymphocytes_per_ul: np.ndarray
    """Other (non-B) peripheral lymphocytes."""
    car_peak_log10: np.ndarray
    """Peak CAR transgene copies (log10 per ug of blood DNA)."""


def draw_persistence(cov: Covariates, rng: np.random.Generator, p: PersistenceParams) -> PersistenceLatent:
    """Draw the latent persistence parameters of each patient.

    The probability of primary failure and the hazard of later loss rise smoothly below the
    antigen-load (15%) and fludarabine-exposure (13.8 mg*h/L) thresholds and with poor T-cell
    fitness; CD28 costimulation and high marrow burden (exhaustion) raise the hazard too.

    Parameters
    ----------
    cov : Covariates
        Antigen load, fludarabine exposure, construct, T-cell fitness and burden.
    rng : numpy.random.Generator
        The latent-patient stream.
    p : PersistenceParams
        Failure logit, Weibull hazard ratios, B-cell and CAR-copy distributions.

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
        b_cells_max_per_ul=p.b_cells_max_per_ul.draw(rng, n),
        lymphocytes_per_ul=p.lymphocytes_per_ul.draw(rng, n),
        car_peak_log10=p.car_peak_log10_copies_per_ug.draw(rng, n),
    )


def sample_persistence_day(latent: PersistenceLatent, rng: np.random.Generator, p: PersistenceParams,
                           after_day: np.ndarray | float = 0.0) -> np.ndarray:
    """Draw T_p given that the CAR still persists at ``after_day``.

    Primary failures keep their (latent) failure day; long persisters get ``inf``; the others a
    Weibull proportional-hazards time ``H(t) = (t / scale)^shape * exp(lp)`` conditioned on
    ``T_p > after_day``.

    Parameters
    ----------
    latent : PersistenceLatent
        Per-patient failure flags and log hazard ratios.
    rng : numpy.random.Generator
        The course stream.
    p : PersistenceParams
        Weibull shape and scale.
    after_day : float or ndarray
        Condition on persistence at this day (the oracle's landmark).

    Returns
    -------
    ndarray
        Day of CAR loss (``inf``: persists).
    """
    n = latent.log_hazard_ratio.shape[0]
    after = np.broadcast_to(np.asarray(after_day, dtype=float), (n,))
    rate = np.exp(latent.log_hazard_ratio)
    cumulative_at_start = (after / p.weibull_scale_days) ** p.weibull_shape * rate
    total = cumulative_at_start + rng.exponential(1.0, n)
    weibull = p.weibull_scale_days * (total / rate) ** (1.0 / p.weibull_shape)
    car_loss_day = np.where(latent.long_persistence, np.inf, weibull)
    return np.where(latent.primary_failure, latent.primary_failure_day, car_loss_day)


def b_cells_per_ul(t: np.ndarray, car_loss_day: np.ndarray, latent: PersistenceLatent,
                   p: PersistenceParams) -> np.ndarray:
    """True peripheral CD19+ B cells (cells/uL) at days ``t``.

    Aplastic while the CAR persists (and for a month after lymphodepletion in any case), then a
    recovery towards the patient's own maximum over weeks, starting a lag after T_p.

    Parameters
    ----------
    t : ndarray, shape (n,) or (n, k)
        Days since infusion.
    car_loss_day : ndarray, shape (n,)
        T_p.
    latent : PersistenceLatent
        For each patient's recovered B-cell level.
    p : PersistenceParams
        Recovery lag, time constant and the aplastic level.

    Returns
    -------
    ndarray, shape of ``t``
    """
    loss_day, b_max = as_column(car_loss_day, t), as_column(latent.b_cells_max_per_ul, t)
    recovery_start = np.maximum(loss_day, p.lymphodepletion_b_recovery_day) + p.b_recovery_lag_days
    since = np.maximum(t - recovery_start, 0.0)
    recovered = b_max * -np.expm1(-since / p.b_recovery_tau_days)
    return p.b_cells_aplasia_per_ul + recovered


def car_copies_log10(t: np.ndarray, car_loss_day: np.ndarray, latent: PersistenceLatent,
                     p: PersistenceParams) -> np.ndarray:
    """True log10 CAR transgene copies per ug of blood DNA at days ``t``.

    Expansion to the patient's peak, a slow decline to a plateau, and a fast fall after T_p.

    Parameters
    ----------
    t, car_loss_day : ndarray
        Days since infusion (shape (n,) or (n, k)) and T_p (shape (n,)), as in :func:`b_cells_per_ul`.
    latent : PersistenceLatent
        For each patient's peak level.
    p : PersistenceParams
        Peak day, decline, plateau and loss rates.

    Returns
    -------
    ndarray, shape of ``t``
    """
    loss_day, peak = as_column(car_loss_day, t), as_column(latent.car_peak_log10, t)
    rising = peak - 0.25 * np.maximum(p.car_peak_day - t, 0.0)
    declining = np.maximum(peak - p.car_decline_log10_per_day * np.maximum(t - p.car_peak_day, 0.0),
                           p.car_plateau_log10)
    level = np.where(t < p.car_peak_day, rising, declining)
    return level - p.car_loss_log10_per_day * np.maximum(t - loss_day, 0.0)
