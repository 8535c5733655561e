r"""Calibration of predicted cumulative incidence at a horizon, with competing risks.

- :func:`calibration_table`: rows grouped by decile of the predicted incidence; per group the
  mean prediction and the observed incidence, estimated by Aalen-Johansen within the group (so
  censoring and competing events are handled).
- :func:`calibration_slope`: logistic recalibration on the complementary log-log scale,

  .. math::  \operatorname{cloglog} P(T \le t, \text{endpoint}) = a + b \operatorname{cloglog} \hat F(t),

  fitted by IPCW-weighted maximum likelihood over the rows whose status at t is known (weights
  of :mod:`models.metrics`). :math:`b = 1` is perfect; :math:`b < 1` means predictions too
  extreme (overfitting), :math:`b > 1` too timid. The cloglog scale makes it the natural slope
  for proportional-hazards-type predictions, and it uses every row, not ten group means.
- :func:`decile_slope`: the simpler alternative, weighted least squares of observed on predicted
  group incidence across the deciles (weights = group sizes); reported alongside.
- :func:`observed_expected_ratio`: Aalen-Johansen incidence over the mean predicted incidence
  (calibration in the large).
- :func:`cloglog_recalibration`: the intercept and slope (a, b) of the same model, optionally
  shrunk towards a prior (penalised likelihood); what :mod:`models.recalibration` maps
  predictions with.

All but the last accept bootstrap ``multiplicities`` (B, n) like the metrics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.metrics import COMPETING, ENDPOINT, Outcome, known_status_weights
from models.nonparametric import aalen_johansen

__all__ = [
    "calibration_slope",
    "calibration_table",
    "cloglog",
    "cloglog_recalibration",
    "decile_slope",
    "observed_expected_ratio",
    "observed_incidence",
]

_CLIP = 1e-4
"""Predictions are clipped to [1e-4, 1 - 1e-4] before the cloglog transform: below 1e-4 nothing
distinguishes them, and exact zeros (e.g. a Monte Carlo oracle) would otherwise dominate the fit."""


def cloglog(p: np.ndarray) -> np.ndarray:
    """Complementary log-log of probabilities clipped to [1e-4, 1 - 1e-4] (the scale of the fits here)."""
    p = np.clip(p, _CLIP, 1.0 - _CLIP)
    return np.log(-np.log1p(-p))


def _cloglog_log_likelihood(eta: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    risk = np.exp(np.clip(eta, -30.0, 30.0))
    log_mu = np.log(np.maximum(-np.expm1(-risk), 1e-300))
    return float(np.sum(w * (y * log_mu - (1.0 - y) * risk)))


def _fit_cloglog(x: np.ndarray, y: np.ndarray, w: np.ndarray, prior_mean: tuple[float, float] = (0.0, 1.0),
                 prior_precision: tuple[float, float] = (0.0, 0.0), iterations: int = 100,
                 centre: np.ndarray | float = 0.0) -> tuple[float, float]:
    """Weighted binomial maximum likelihood of ``cloglog P(y) = centre + a + b (x - centre)``,
    penalised by ``precision / 2 * (beta - prior_mean)**2`` (a normal prior; zero precision = plain
    ML), by Newton steps halved until the objective improves, starting from the prior mean. Returns
    (a, b); (NaN, NaN) when the information matrix is singular."""
    centre = np.broadcast_to(np.asarray(centre, dtype=float), x.shape)
    design = np.column_stack([np.ones_like(x), x - centre])
    mean, precision = np.asarray(prior_mean, dtype=float), np.asarray(prior_precision, dtype=float)

    def objective(beta: np.ndarray) -> float:
        return _cloglog_log_likelihood(design @ beta + centre, y, w) - 0.5 * float(precision @ (beta - mean) ** 2)

    beta = mean.copy()
    current = objective(beta)
    for _ in range(iterations):
        eta = np.clip(design @ beta + centre, -30.0, 30.0)
        mu = np.clip(-np.expm1(-np.exp(eta)), 1e-12, 1.0 - 1e-12)
        dmu = np.exp(eta - np.exp(eta))
        score = design.T @ (w * (y - mu) * dmu / (mu * (1 - mu))) - precision * (beta - mean)
        information = (design * (w * dmu**2 / (mu * (1 - mu)))[:, None]).T @ design + np.diag(precision)
        try:
            step = np.linalg.solve(information, score)
        except np.linalg.LinAlgError:
            return np.nan, np.nan
        for _ in range(40):
            candidate = objective(beta + step)
            if candidate >= current - 1e-12:
                break
            step = step / 2.0
        beta, improvement, current = beta + step, candidate - current, candidate
        if np.max(np.abs(step)) < 1e-8 or abs(improvement) < 1e-10:
            break
    return float(beta[0]), float(beta[1])


def _known_rows(outcome: Outcome, cif: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows whose status at t is known: their cloglog prediction, endpoint indicator and IPCW weight,
    and the mask selecting them."""
    weight, case, _ = known_status_weights(outcome, t)
    known = weight > 0
    return cloglog(np.asarray(cif, dtype=float))[known], case[known].astype(float), weight[known], known


def cloglog_recalibration(outcome: Outcome, cif: np.ndarray, t: float, prior_mean: tuple[float, float] = (0.0, 1.0),
                          prior_sd: tuple[float, float] | None = None,
                          centre: np.ndarray | float = 0.0) -> tuple[float, float]:
    r"""Intercept and slope (a, b) of :math:`\operatorname{cloglog} P(\text{endpoint by } t) = c + a + b
    (\operatorname{cloglog} \hat F(t) - c)`, IPCW-weighted binomial maximum likelihood (module docstring).

    Parameters
    ----------
    outcome : Outcome
    cif : ndarray
        Predicted cumulative incidence of the endpoint at t, one value per row.
    t : float
        Horizon, days since the landmark.
    prior_mean : (float, float)
        Centre of the normal prior on (a, b) when ``prior_sd`` is given.
    prior_sd : (float, float), optional
        Standard deviations of that prior: the estimate is shrunk towards ``prior_mean`` the
        fewer events there are (penalised likelihood). None: plain maximum likelihood.
    centre : float or ndarray
        c, per row or for all: the cloglog prediction at which a is read (0: the usual
        parametrisation, a at a cumulative hazard of 1). Centred at the rows' typical prediction,
        a is the calibration-in-the-large there, so a prior on it does not move rare risks by the
        slope's lever arm.

    Returns
    -------
    (a, b) : tuple of float
        (0, 1) is perfect calibration, whatever the centre. Without a prior, NaN when no known row has the endpoint,
        when the predictions do not vary, or when the fit is singular.
    """
    x, y, w, known = _known_rows(outcome, cif, t)
    centre = np.broadcast_to(np.asarray(centre, dtype=float), known.shape)[known]
    if prior_sd is None:
        if y @ w <= 0 or x.size == 0 or np.ptp(x) < 1e-9:
            return np.nan, np.nan
        return _fit_cloglog(x, y, w, prior_mean, centre=centre)
    precision = 1.0 / np.square(np.asarray(prior_sd, dtype=float))
    return _fit_cloglog(x, y, w, prior_mean, (float(precision[0]), float(precision[1])), centre=centre)


def calibration_slope(outcome: Outcome, cif: np.ndarray, t: float, multiplicities: np.ndarray | None = None):
    """Slope b of the IPCW cloglog recalibration model at t (see module docstring).

    Parameters
    ----------
    cif : ndarray
        Predicted cumulative incidence of the endpoint at t, one value per row of ``outcome``.
    outcome, t, multiplicities
        As :func:`models.metrics.brier_score` (t is the horizon in days since the landmark);
        with multiplicities an array of B resampled slopes is returned.

    Returns
    -------
    float or ndarray
        NaN when the predictions do not vary or no row has the endpoint.
    """
    x, y, w, known = _known_rows(outcome, cif, t)
    if (x.size == 0 or np.ptp(x) < 1e-9) or y.sum() == 0:
        return np.nan if multiplicities is None else np.full(multiplicities.shape[0], np.nan)
    if multiplicities is None:
        return _fit_cloglog(x, y, w)[1]
    return np.array([_fit_cloglog(x, y, w * m[known])[1] if m[known][y > 0].sum() > 0 else np.nan
                     for m in multiplicities])


def observed_incidence(outcome: Outcome, t: float, weights: np.ndarray | None = None):
    """Aalen-Johansen cumulative incidence of the endpoint at t.

    Parameters
    ----------
    outcome : Outcome
    t : float
        Horizon, days since the landmark.
    weights : ndarray, shape (n,) or (B, n), optional
        Row weights (e.g. bootstrap multiplicities of one or of B resamples).

    Returns
    -------
    float, or ndarray of B values
    """
    incidence = aalen_johansen(outcome.time, outcome.status, np.array([t]), n_causes=COMPETING, weights=weights)
    endpoint = incidence[..., ENDPOINT - 1, 0]
    return float(endpoint) if endpoint.ndim == 0 else endpoint


def observed_expected_ratio(outcome: Outcome, cif: np.ndarray, t: float, multiplicities: np.ndarray | None = None):
    """Observed (Aalen-Johansen) over mean predicted cumulative incidence at t (calibration in the large).

    Parameters
    ----------
    outcome, cif, t, multiplicities
        As :func:`calibration_slope`; with multiplicities the B resampled ratios (observed and
        expected from the same resample) are computed in one pass.

    Returns
    -------
    float or ndarray
        NaN when the mean prediction is 0.
    """
    cif = np.asarray(cif, dtype=float)
    if multiplicities is None:
        expected = cif.mean()
        return observed_incidence(outcome, t) / expected if expected > 0 else np.nan
    expected = multiplicities @ cif / multiplicities.sum(axis=1)
    observed = observed_incidence(outcome, t, multiplicities)
    return np.divide(observed, expected, out=np.full(expected.shape, np.nan), where=expected > 0)


def calibration_table(outcome: Outcome, cif: np.ndarray, t: float, n_groups: int = 10) -> pd.DataFrame:
    """Predicted vs observed cumulative incidence at t by group (decile) of the prediction.

    Parameters
    ----------
    outcome, cif, t
        As :func:`calibration_slope`.
    n_groups : int
        Quantile groups; fewer when predictions tie (a rule with two values gives two groups).

    Returns
    -------
    DataFrame
        Columns ``group`` (1 = lowest risk), ``n_rows``, ``n_events`` (endpoint events by t),
        ``predicted`` (mean), ``observed`` (Aalen-Johansen).
    """
    cif = np.asarray(cif, dtype=float)
    groups = pd.qcut(pd.Series(cif).rank(method="dense"), q=min(n_groups, np.unique(cif).size),
                     labels=False, duplicates="drop").to_numpy()
    records = []
    for group in np.unique(groups):
        rows = groups == group
        part = Outcome(outcome.time[rows], outcome.status[rows])
        records.append({
            "group": int(group) + 1,
            "n_rows": int(rows.sum()),
            "n_events": int(((part.status == ENDPOINT) & (part.time <= t)).sum()),
            "predicted": float(cif[rows].mean()),
            "observed": observed_incidence(part, t),
        })
    return pd.DataFrame.from_records(records)


def decile_slope(table: pd.DataFrame) -> float:
    """Weighted least-squares slope of observed on predicted across the groups of a calibration table."""
    if len(table) < 2 or np.ptp(table["predicted"]) < 1e-12:
        return np.nan
    return float(np.polyfit(table["predicted"], table["observed"], deg=1, w=np.sqrt(table["n_rows"]))[0])
