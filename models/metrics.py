r"""Discrimination and accuracy metrics for one endpoint with competing events.

Every metric takes an :class:`Outcome`: time and a status per row, 0 = censored, 1 = the
endpoint (e.g. relapse), 2 = a competing event (e.g. death, HSCT, or for a phenotype endpoint
any other relapse). Choices, stated once:

- **Concordance** (Harrell's and Uno's C) is the competing-risks concordance of Wolbers et al.
  (2009, 2014): a row with the endpoint at :math:`T_i` is compared with every row still free of
  any event after :math:`T_i` (type A pairs) *and* with every row that had a competing event at
  or before :math:`T_i` (type B pairs: it will never have the endpoint, so it should rank lower).
  The risk score is the predicted cumulative incidence of the endpoint at the horizon, and only
  endpoint events before the horizon ``tau`` are cases. Harrell's version weights every pair 1;
  Uno's weights type A pairs by :math:`1/G(T_i)^2` and type B pairs by
  :math:`1/(G(T_i) G(T_j))`, with G the Kaplan-Meier censoring survival (Blanche et al. 2015).
  Without competing events these are exactly scikit-survival's ``concordance_index_censored``
  and ``concordance_index_ipcw`` (tested).
- **Time-dependent AUC** at t is the cumulative/dynamic AUC with competing risks (Blanche et al.
  2013, "definition 2"): cases had the endpoint by t (weight :math:`1/G(T_i)`); controls are
  free of any event at t (weight :math:`1/G(t^-)`) or had a competing event by t (weight
  :math:`1/G(T_j)`). Without competing events it is scikit-survival's ``cumulative_dynamic_auc``.
- **Brier score** at t is the IPCW Brier score of the endpoint's cumulative incidence (Graf et
  al. 1999; Schoop et al. 2011 for competing risks): every row whose status at t is known (an
  event of any cause by t, or still followed at t) contributes
  :math:`w_i (1\{T_i \le t, \text{endpoint}\} - \hat F_i(t))^2` with the weights above; the sum is
  divided by n. Without competing events it is scikit-survival's ``brier_score`` of
  :math:`1 - \hat F`. The integrated Brier score is its trapezoid integral over the given times
  divided by their span.

G is estimated from the evaluated rows themselves. A row censored exactly at t (administrative
truncation at the horizon) counts as known event-free at t.

Bootstrap: every metric accepts ``multiplicities``, an array (B, n) of how often each row is
drawn in each of B resamples; it then returns the B resampled values. Pairwise sums are
recomputed with the multiplicities of both members of a pair; G is kept from the full sample (a
standard simplification).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from models.base import PHENOTYPE_CAUSES, RELAPSE_EVENTS, ModelInputError
from models.nonparametric import censoring_survival

__all__ = [
    "COMPETING",
    "CENSORED",
    "ENDPOINT",
    "ENDPOINTS",
    "Outcome",
    "brier_score",
    "concordance_indices",
    "cumulative_auc",
    "harrell_c",
    "integrated_brier_score",
    "known_status_weights",
    "uno_c",
]

CENSORED, ENDPOINT, COMPETING = 0, 1, 2
ENDPOINTS: tuple[str, ...] = ("relapse",) + PHENOTYPE_CAUSES
"""Endpoints the evaluation knows: relapse (any phenotype) and each phenotype."""
_TIED_TOLERANCE = 1e-8
_MAX_BLOCK_CELLS = 2_000_000


@dataclass(frozen=True)
class Outcome:
    """Observed time and status (0 censored, 1 endpoint, 2 competing) of the evaluated rows."""

    time: np.ndarray
    status: np.ndarray

    def __post_init__(self) -> None:
        if self.time.shape != self.status.shape:
            raise ModelInputError("outcome: time and status differ in length")
        if not np.isin(self.status, (CENSORED, ENDPOINT, COMPETING)).all():
            raise ModelInputError("outcome: status must be 0 (censored), 1 (endpoint) or 2 (competing)")

    @classmethod
    def from_events(cls, time: Sequence[float] | np.ndarray, event: Sequence[str] | np.ndarray,
                    endpoint: str = "relapse") -> Outcome:
        """Build from a landmark target (``event`` strings) for one endpoint of :data:`ENDPOINTS`.

        For ``"relapse"`` every relapse (also of unknown phenotype) is the endpoint; for a
        phenotype, relapses of the other or of unknown phenotype are competing events.
        """
        if endpoint not in ENDPOINTS:
            raise ModelInputError(f"unknown endpoint {endpoint!r}; known: {list(ENDPOINTS)}")
        events = np.asarray(event, dtype=object)
        is_endpoint = np.isin(events, RELAPSE_EVENTS) if endpoint == "relapse" else events == endpoint
        status = np.where(is_endpoint, ENDPOINT, np.where(events == "none", CENSORED, COMPETING))
        return cls(np.asarray(time, dtype=float), status.astype(int))

    @property
    def n(self) -> int:
        """Number of rows."""
        return self.time.size

    def censoring(self, times: np.ndarray, left_limit: bool = False) -> np.ndarray:
        """Kaplan-Meier censoring survival G at ``times``."""
        return censoring_survival(self.time, self.status, times, left_limit=left_limit)


def _inverse(values: np.ndarray) -> np.ndarray:
    """1/values with 0 where values is 0 (rows that cannot be weighted)."""
    return np.divide(1.0, values, out=np.zeros_like(values, dtype=float), where=values > 0)


def _chunks(rows: np.ndarray, n_columns: int) -> Iterator[np.ndarray]:
    size = max(1, _MAX_BLOCK_CELLS // max(n_columns, 1))
    for start in range(0, rows.size, size):
        yield rows[start : start + size]


def _concordant(risk_rows: np.ndarray, risk: np.ndarray) -> np.ndarray:
    """1 when the row's score is higher than the column's, 0.5 for ties, else 0."""
    difference = np.subtract.outer(risk_rows, risk)
    score = (difference > _TIED_TOLERANCE).astype(float)
    score[np.abs(difference) <= _TIED_TOLERANCE] = 0.5
    return score


def _ratio(numerator: np.ndarray, denominator: np.ndarray):
    ratio = np.divide(numerator, denominator, out=np.full(np.shape(numerator), np.nan), where=denominator > 0)
    return float(ratio) if ratio.ndim == 0 else ratio


def _pairwise_ratios(blocks: Iterator[tuple[np.ndarray, np.ndarray, list[np.ndarray]]], n_weights: int,
                     multiplicities: np.ndarray | None) -> list:
    """Per weight matrix W: sum m_i m_j W_ij Q_ij / sum m_i m_j W_ij over blocks (rows, Q, [W, ...]).

    NaN when there is no pair. With multiplicities (B, n) each ratio is an array of B values.
    """
    shape = () if multiplicities is None else (multiplicities.shape[0],)
    numerators = [np.zeros(shape) for _ in range(n_weights)]
    denominators = [np.zeros(shape) for _ in range(n_weights)]
    for rows, score, weights in blocks:
        for k, weight in enumerate(weights):
            if multiplicities is None:
                numerators[k] += np.sum(weight * score)
                denominators[k] += np.sum(weight)
                continue
            row_multiplicity = multiplicities[:, rows]
            numerators[k] += np.einsum("bk,bk->b", row_multiplicity, multiplicities @ (weight * score).T)
            denominators[k] += np.einsum("bk,bk->b", row_multiplicity, multiplicities @ weight.T)
    return [_ratio(numerator, denominator) for numerator, denominator in zip(numerators, denominators)]


def _concordance_blocks(outcome: Outcome, risk: np.ndarray, tau: float | None):
    """Blocks of case rows: concordance scores and the Harrell (unit) and Uno (IPCW) pair weights."""
    time, status = outcome.time, outcome.status
    limit = np.inf if tau is None else tau
    cases = np.flatnonzero((status == ENDPOINT) & (time < limit))
    inverse_g = _inverse(outcome.censoring(time))
    competing = status == COMPETING
    for rows in _chunks(cases, outcome.n):
        t_i = time[rows][:, None]
        type_a = (time[None, :] > t_i) | ((time[None, :] == t_i) & (status[None, :] == CENSORED))
        type_b = competing[None, :] & (time[None, :] <= t_i)
        case_weight = inverse_g[rows][:, None]
        uno = case_weight * (type_a * case_weight + type_b * inverse_g[None, :])
        yield rows, _concordant(risk[rows], risk), [(type_a | type_b).astype(float), uno]


def _check_risk(outcome: Outcome, values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.shape[0] != outcome.n:
        raise ModelInputError(f"{name}: {values.shape[0]} predictions for {outcome.n} rows")
    if np.isnan(values).any():
        raise ModelInputError(f"{name}: predictions contain NaN")
    return values


def concordance_indices(outcome: Outcome, risk: np.ndarray, tau: float | None = None,
                        multiplicities: np.ndarray | None = None) -> dict:
    """Harrell's and Uno's concordance from one pass over the pairs.

    Parameters
    ----------
    outcome, risk, tau, multiplicities
        As :func:`harrell_c`.

    Returns
    -------
    dict
        ``{"harrell_c": ..., "uno_c": ...}``, floats or arrays of B values.
    """
    risk = _check_risk(outcome, risk, "concordance")
    harrell, uno = _pairwise_ratios(_concordance_blocks(outcome, risk, tau), 2, multiplicities)
    return {"harrell_c": harrell, "uno_c": uno}


def harrell_c(outcome: Outcome, risk: np.ndarray, tau: float | None = None, multiplicities: np.ndarray | None = None):
    """Harrell's concordance with competing risks (unweighted Wolbers C), cases before ``tau``.

    Parameters
    ----------
    outcome : Outcome
    risk : ndarray
        Higher = riskier (e.g. predicted cumulative incidence at the horizon).
    tau : float, optional
        Only endpoint events before tau are cases (None: all).
    multiplicities : ndarray (B, n), optional
        Bootstrap multiplicities; then an array of B values is returned.

    Returns
    -------
    float or ndarray
    """
    return concordance_indices(outcome, risk, tau, multiplicities)["harrell_c"]


def uno_c(outcome: Outcome, risk: np.ndarray, tau: float | None = None, multiplicities: np.ndarray | None = None):
    """Uno's IPCW concordance with competing risks, cases before ``tau`` (see module docstring).

    Parameters
    ----------
    outcome, risk, multiplicities
        As :func:`harrell_c`.
    tau : float, optional
        Truncation time, days since the landmark: the estimate targets the concordance of pairs
        whose case occurs before tau, which IPCW makes free of the censoring distribution.

    Returns
    -------
    float or ndarray
        NaN when no pair is comparable.
    """
    return concordance_indices(outcome, risk, tau, multiplicities)["uno_c"]


def known_status_weights(outcome: Outcome, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IPCW weights at t and the masks of cases and of event-free rows.

    Parameters
    ----------
    outcome : Outcome
    t : float
        Evaluation time, in the unit of ``outcome.time`` (days since the landmark).

    Returns
    -------
    weight : ndarray
        1/G(T_i) for rows with an event of any cause by t, 1/G(t-) for rows event-free at t, 0 for
        rows whose status at t is unknown (censored before t).
    case : ndarray of bool
        Rows with the endpoint by t.
    free_at_t : ndarray of bool
        Rows free of any event at t.
    """
    time, status = outcome.time, outcome.status
    event_by_t = (time <= t) & (status != CENSORED)
    free_at_t = (time > t) | ((time == t) & (status == CENSORED))
    weight = np.zeros(outcome.n)
    weight[event_by_t] = _inverse(outcome.censoring(time[event_by_t]))
    weight[free_at_t] = _inverse(outcome.censoring(np.array([t]), left_limit=True))[0]
    return weight, event_by_t & (status == ENDPOINT), free_at_t


def _prediction_and_weights(outcome: Outcome, prediction: np.ndarray, t: float,
                            name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked prediction, IPCW weights at t and the case mask (see :func:`known_status_weights`)."""
    prediction = _check_risk(outcome, prediction, name)
    weight, case, _ = known_status_weights(outcome, t)
    return prediction, weight, case


def cumulative_auc(outcome: Outcome, risk: np.ndarray, t: float, multiplicities: np.ndarray | None = None):
    """Cumulative/dynamic AUC at t with competing risks (see module docstring).

    Parameters
    ----------
    risk : ndarray
        Higher = riskier (e.g. predicted cumulative incidence at t), one value per row.
    outcome, t, multiplicities
        As :func:`brier_score`.

    Returns
    -------
    float or ndarray
        NaN when there is no case or no control at t.
    """
    risk, weight, case = _prediction_and_weights(outcome, risk, t, "cumulative_auc")
    control_weight = np.where(case, 0.0, weight)
    cases = np.flatnonzero(case)

    def blocks():
        """Case rows in chunks: concordance scores against every row, case x control weights."""
        for rows in _chunks(cases, outcome.n):
            yield rows, _concordant(risk[rows], risk), [weight[rows][:, None] * control_weight[None, :]]

    return _pairwise_ratios(blocks(), 1, multiplicities)[0]


def _weighted_mean(terms: np.ndarray, multiplicities: np.ndarray | None):
    if multiplicities is None:
        return float(np.mean(terms))
    return multiplicities @ terms / multiplicities.sum(axis=1)


def brier_score(outcome: Outcome, cif: np.ndarray, t: float, multiplicities: np.ndarray | None = None):
    """IPCW Brier score at t of the predicted cumulative incidence of the endpoint.

    Parameters
    ----------
    outcome : Outcome
        Observed time (days since the landmark) and status of each row.
    cif : ndarray
        Predicted cumulative incidence of the endpoint at t, per row.
    t : float
        Evaluation time, in the unit of ``outcome.time`` (days since the landmark).
    multiplicities : ndarray (B, n), optional
        Bootstrap multiplicities; then an array of B resampled scores is returned.

    Returns
    -------
    float or ndarray
    """
    cif, weight, case = _prediction_and_weights(outcome, cif, t, "brier_score")
    return _weighted_mean(weight * np.square(case - cif), multiplicities)


def integrated_brier_score(outcome: Outcome, cifs: np.ndarray, times: Sequence[float],
                           multiplicities: np.ndarray | None = None):
    """Trapezoid integral of :func:`brier_score` over ``times``, divided by their span.

    Parameters
    ----------
    outcome : Outcome
    cifs : ndarray (n, len(times))
        Predicted cumulative incidence of the endpoint at each time.
    times : sequence of float
        At least two increasing times.
    multiplicities : ndarray (B, n), optional

    Returns
    -------
    float or ndarray
    """
    grid = np.asarray(times, dtype=float)
    if grid.size < 2 or np.any(np.diff(grid) <= 0):
        raise ModelInputError("integrated_brier_score: needs at least two increasing times")
    scores = np.array([brier_score(outcome, cifs[:, k], t, multiplicities) for k, t in enumerate(grid)])
    return np.trapezoid(scores, grid, axis=0) / (grid[-1] - grid[0])
