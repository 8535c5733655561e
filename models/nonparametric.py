r"""Non-parametric estimators used by the clinicians' rule, calibration and the IPCW metrics.

Conventions: ``status`` is an integer array, 0 = censored, ``k`` >= 1 = event of cause ``k``.

Aalen-Johansen (cumulative incidence with competing risks):

.. math::

    \hat F_k(t) = \sum_{t_j \le t} \hat S(t_{j-1}) \frac{d_{kj}}{n_j}, \qquad
    \hat S(t) = \prod_{t_j \le t} \Big(1 - \frac{d_j}{n_j}\Big)

with :math:`d_{kj}` events of cause k at :math:`t_j`, :math:`d_j` all events, :math:`n_j` at risk.
The censoring distribution :math:`G` is the Kaplan-Meier estimate with censorings as events.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

__all__ = ["aalen_johansen", "censoring_survival", "event_table"]


def event_table(time: np.ndarray, status: np.ndarray, n_causes: int,
                weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct times, number at risk and events per cause (column 0 = censorings).

    Parameters
    ----------
    time : ndarray of float
    status : ndarray of int
        0 = censored, 1..n_causes = cause.
    n_causes : int
    weights : ndarray, shape (n,) or (B, n), optional
        Case weights (e.g. bootstrap multiplicities); counts become sums of weights. With B rows
        of weights, B tables come back at once (leading axis B).

    Returns
    -------
    unique_times : ndarray, shape (m,)
    at_risk : ndarray, shape (m,) or (B, m)
    counts : ndarray, shape (m, n_causes + 1) or (B, m, n_causes + 1)
    """
    time = np.asarray(time, dtype=float)
    status = np.asarray(status, dtype=int)
    unique_times, inverse = np.unique(time, return_inverse=True)
    weights = np.ones(time.size) if weights is None else np.asarray(weights, dtype=float)
    width = n_causes + 1
    cell = sparse.csr_array((np.ones(time.size), (np.arange(time.size), inverse * width + status)),
                            shape=(time.size, unique_times.size * width))
    counts = np.asarray(cell.T @ weights.T).T.reshape(*weights.shape[:-1], unique_times.size, width)
    leaving = counts.sum(axis=-1)
    before = np.cumsum(leaving, axis=-1) - leaving
    at_risk = weights.sum(axis=-1)[..., None] - before
    return unique_times, at_risk, counts


def _read_steps(unique_times: np.ndarray, values: np.ndarray, times: np.ndarray, start: float,
                left_limit: bool = False) -> np.ndarray:
    """Step function with jumps at ``unique_times`` read at ``times`` (value ``start`` before)."""
    index = np.searchsorted(unique_times, np.asarray(times, dtype=float), side="left" if left_limit else "right") - 1
    padded = np.concatenate([np.full(values.shape[:-1] + (1,), start), values], axis=-1)
    return padded[..., index + 1]


def aalen_johansen(time: np.ndarray, status: np.ndarray, times: np.ndarray, n_causes: int | None = None,
                   weights: np.ndarray | None = None) -> np.ndarray:
    """Aalen-Johansen cumulative incidence of each cause at ``times``.

    Parameters
    ----------
    time : ndarray of float
    status : ndarray of int
        0 = censored, 1..n_causes = cause.
    times : array-like
        Where to read the estimate.
    n_causes : int, optional
        Defaults to ``status.max()``; causes absent from the data get a zero incidence.
    weights : ndarray, shape (n,) or (B, n), optional
        Case weights (bootstrap multiplicities); B rows give B estimates in one pass.

    Returns
    -------
    ndarray, shape (n_causes, len(times)) or (B, n_causes, len(times))
        Row k-1 is the incidence of cause k.
    """
    status = np.asarray(status, dtype=int)
    n_causes = int(status.max(initial=0)) if n_causes is None else int(n_causes)
    times = np.atleast_1d(np.asarray(times, dtype=float))
    if status.size == 0:
        leading = () if weights is None else np.shape(weights)[:-1]
        return np.full((*leading, n_causes, times.size), np.nan)
    unique_times, at_risk, counts = event_table(time, status, n_causes, weights)
    hazards = np.divide(counts[..., 1:], at_risk[..., None], out=np.zeros_like(counts[..., 1:]),
                        where=at_risk[..., None] > 0)
    survival = np.cumprod(1.0 - hazards.sum(axis=-1), axis=-1)
    survival_before = np.concatenate([np.ones_like(survival[..., :1]), survival[..., :-1]], axis=-1)
    incidence = np.swapaxes(np.cumsum(survival_before[..., None] * hazards, axis=-2), -1, -2)
    return _read_steps(unique_times, incidence, times, start=0.0)


def censoring_survival(time: np.ndarray, status: np.ndarray, times: np.ndarray, left_limit: bool = False,
                       weights: np.ndarray | None = None) -> np.ndarray:
    """Kaplan-Meier estimate of the censoring survival G at ``times``.

    Censorings (``status == 0``) are the events of this estimate. At a time with both, events are
    taken to happen first: G drops by (censorings at t) / (at risk at t - events at t), as in
    scikit-survival's ``CensoringDistributionEstimator``.

    Parameters
    ----------
    time, status : ndarray
        As :func:`aalen_johansen`.
    times : array-like
        Where to read G.
    left_limit : bool
        Read :math:`G(t-)` instead of :math:`G(t)`.
    weights : ndarray, optional
        Case weights.

    Returns
    -------
    ndarray, shape (len(times),)
    """
    status = np.asarray(status, dtype=int)
    unique_times, at_risk, counts = event_table(time, (status != 0).astype(int), 1, weights)
    censored, events = counts[:, 0], counts[:, 1]
    remaining = at_risk - events
    drop = np.divide(censored, remaining, out=np.zeros_like(censored), where=censored > 0)
    survival = np.cumprod(1.0 - drop)
    return _read_steps(unique_times, survival, np.atleast_1d(times), start=1.0, left_limit=left_limit)
