r"""Decision curves of consolidative HSCT: is acting on a risk estimate worth it?

The policy scored is "consolidate (send to HSCT) a patient in remission at landmark *s* when the
predicted relapse risk by horizon *h* exceeds the threshold probability *p*" (or, for a fixed
policy such as the clinicians' rule, "consolidate every patient it flags"). For threshold *p* its
net benefit, in true positives per patient net of false positives weighted by the odds of *p*, is

.. math::

    \mathrm{NB}(p) = P(\text{flagged}) \Big[ F(h \mid \text{flagged})
        - \big(1 - F(h \mid \text{flagged})\big) \frac{p}{1 - p} \Big]

with :math:`F(h \mid \text{flagged})` the observed cumulative incidence of relapse by *h* among the
flagged patients, an Aalen-Johansen estimate in which **death and HSCT stay competing events**
(a patient transplanted or dead before relapsing did not relapse by *h*; a censored one counts
through the at-risk sets). Treat-all flags everyone; treat-none has net benefit 0.

All sources (models, the oracle, the rule, treat-all) are scored on the same rows and the same
patient-bootstrap resamples (``models.bootstrap``), so their intervals and the paired differences
to the reference source are comparable. The bootstrap multiplies each row by its patient's draw
count; one vectorised Aalen-Johansen pass covers every threshold and resample at once.

Plots are matplotlib Figures; nothing is written here (pipelines save them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from models.base import COMPETING_CAUSES, RELAPSE_EVENTS, ModelInputError, relapse_column
from models.bootstrap import PatientBootstrap, percentile_interval
from models.evaluation import common_rows  # the rows every source predicts: the metrics' rule, shared

__all__ = [
    "DEFAULT_THRESHOLDS",
    "TREAT_ALL",
    "TREAT_NONE",
    "DECISION_COLUMNS",
    "decision_curves",
    "net_benefit",
    "net_benefit_at",
    "plot_decision_curves",
    "relapse_incidence_by_threshold",
]

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.05, 0.6001, 0.01), 2))
"""Threshold probabilities 5%, 6%, ..., 60% (clinical opinion spans about 10-50%)."""
TREAT_ALL, TREAT_NONE = "treat_all", "treat_none"
DECISION_COLUMNS = ("landmark_day", "horizon_days", "threshold", "source", "kind", "net_benefit", "ci_low",
                    "ci_high", "flagged_share", "n_rows", "n_events")
"""Columns of the :func:`decision_curves` table."""
_RELAPSE, _COMPETING = 1, 2


def _status(events: np.ndarray) -> np.ndarray:
    """0 censored (``none``), 1 relapse of any phenotype, 2 death or HSCT (competing)."""
    events = np.asarray(events, dtype=object)
    known = set(RELAPSE_EVENTS) | set(COMPETING_CAUSES) | {"none"}
    unknown = sorted({str(e) for e in events} - known)
    if unknown:
        raise ModelInputError(f"decision curves: unknown event value(s) {unknown[:5]}")
    return np.select([np.isin(events, RELAPSE_EVENTS), np.isin(events, COMPETING_CAUSES)], [_RELAPSE, _COMPETING], 0)


def _counts_by_threshold(resample_offsets: np.ndarray, cell: np.ndarray, multiplicities: np.ndarray,
                         n_cells: int, n_levels: int) -> np.ndarray:
    """Summed weights per (resample, cell, threshold) of the rows flagged at each threshold.

    ``cell`` indexes (time or nothing, level) of each row; a row of level L is flagged at the
    thresholds k < L, so the count at threshold k is the sum over levels above k.
    """
    flat = (resample_offsets[:, None] + cell[None, :]).ravel()
    counts = np.bincount(flat, weights=multiplicities.ravel(), minlength=resample_offsets.size * n_cells * (n_levels + 1))
    counts = counts.astype(float, copy=False).reshape(resample_offsets.size, n_cells, n_levels + 1)
    above = np.cumsum(counts[:, :, ::-1], axis=2)[:, :, ::-1]
    return above[:, :, 1:]


def relapse_incidence_by_threshold(time: np.ndarray, status: np.ndarray, horizon_days: float, level: np.ndarray,
                                   n_thresholds: int, multiplicities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Aalen-Johansen relapse incidence by ``horizon_days`` among the flagged, and their share.

    Parameters
    ----------
    time : ndarray of float, shape (n,)
        Days from the landmark to the first event or censoring.
    status : ndarray of int, shape (n,)
        0 censored, 1 relapse, 2 competing event (death, HSCT).
    horizon_days : float
    level : ndarray of int, shape (n,)
        A row is flagged at the thresholds k < ``level`` (0 = never, ``n_thresholds`` = always).
    n_thresholds : int
    multiplicities : ndarray, shape (m, n)
        Case weights per resample (row 0 all ones for the point estimate).

    Returns
    -------
    incidence : ndarray, shape (m, n_thresholds)
        F(h | flagged); for each resample and threshold equal to
        ``models.nonparametric.aalen_johansen(time, status, [h], weights=w * flagged)`` (0 when
        nobody is flagged).
    share : ndarray, shape (m, n_thresholds)
        P(flagged), weighted by the multiplicities.
    """
    time, status, level = np.asarray(time, dtype=float), np.asarray(status, dtype=int), np.asarray(level, dtype=int)
    multiplicities = np.atleast_2d(np.asarray(multiplicities, dtype=float))
    n_resamples, n_levels = multiplicities.shape[0], int(n_thresholds)
    flagged = _counts_by_threshold(np.arange(n_resamples) * (n_levels + 1), level, multiplicities, 1, n_levels)[:, 0]
    share = flagged / multiplicities.sum(axis=1, keepdims=True)
    within = time <= horizon_days
    unique_times, time_index = np.unique(time[within], return_inverse=True)
    if unique_times.size == 0:
        return np.zeros_like(share), share
    cell = time_index * (n_levels + 1) + level[within]
    offsets = np.arange(n_resamples) * unique_times.size * (n_levels + 1)

    def counts(mask: np.ndarray) -> np.ndarray:
        return _counts_by_threshold(offsets, cell[mask], multiplicities[:, within][:, mask], unique_times.size, n_levels)

    leaving = counts(np.ones(cell.size, dtype=bool))
    ended, relapsed = counts(status[within] > 0), counts(status[within] == _RELAPSE)
    at_risk = flagged[:, None, :] - np.cumsum(leaving, axis=1) + leaving
    positive = at_risk > 1e-9
    hazard_all = np.divide(ended, at_risk, out=np.zeros_like(ended), where=positive)
    hazard_relapse = np.divide(relapsed, at_risk, out=np.zeros_like(relapsed), where=positive)
    survival_before = np.cumprod(np.concatenate([np.ones_like(hazard_all[:, :1]), 1.0 - hazard_all[:, :-1]], axis=1),
                                 axis=1)
    return (survival_before * hazard_relapse).sum(axis=1), share


def net_benefit(flagged_share: np.ndarray, incidence_flagged: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Net benefit ``P(flagged) [F - (1 - F) p / (1 - p)]`` (0 when nobody is flagged).

    Parameters
    ----------
    flagged_share : ndarray
        P(flagged).
    incidence_flagged : ndarray
        F(h | flagged), the relapse incidence among the flagged.
    threshold : ndarray
        Threshold probability p in (0, 1); broadcast against the others.

    Returns
    -------
    ndarray
    """
    threshold = np.asarray(threshold, dtype=float)
    if np.any((threshold <= 0) | (threshold >= 1)):
        raise ModelInputError("decision curves: thresholds must lie strictly between 0 and 1")
    odds = threshold / (1.0 - threshold)
    value = flagged_share * (incidence_flagged - (1.0 - incidence_flagged) * odds)
    return np.where(flagged_share > 0, value, 0.0)


def _fixed_levels(fixed_policies: Mapping[str, np.ndarray], keep: np.ndarray, n_thresholds: int) -> dict:
    """Levels of the fixed policies and treat-all on the kept rows (flagged at every threshold or none)."""
    levels = {}
    for name, flags in fixed_policies.items():
        flags = np.asarray(flags, dtype=bool)
        if flags.shape != keep.shape:
            raise ModelInputError(f"decision curves: policy {name!r} has {flags.size} flags for {keep.size} rows")
        levels[name] = np.where(flags[keep], n_thresholds, 0)
    levels[TREAT_ALL] = np.full(int(keep.sum()), n_thresholds)
    return levels


def _net_benefit_of_policy(time: np.ndarray, status: np.ndarray, horizon: float, level: np.ndarray,
                           thresholds: np.ndarray, multiplicities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Net benefit and flagged share, each (resamples, thresholds), of one policy."""
    incidence, share = relapse_incidence_by_threshold(time, status, horizon, level, thresholds.size, multiplicities)
    return net_benefit(share, incidence, thresholds[None, :]), share


def _records(point_and_replicates: dict[str, tuple[np.ndarray, np.ndarray]], thresholds: np.ndarray,
             base: dict, reference: str | None) -> list[dict]:
    """Table rows of one (landmark, horizon): estimates, then differences to the reference."""
    records = []
    for source, (values, share) in point_and_replicates.items():
        for k, threshold in enumerate(thresholds):
            low, high = percentile_interval(values[1:, k]) if values.shape[0] > 1 else (np.nan, np.nan)
            records.append({**base, "threshold": float(threshold), "source": source, "kind": "estimate",
                            "net_benefit": float(values[0, k]), "ci_low": low, "ci_high": high,
                            "flagged_share": float(share[0, k])})
    if reference is None or reference not in point_and_replicates:
        return records
    reference_values = point_and_replicates[reference][0]
    for source, (values, _share) in point_and_replicates.items():
        if source in (reference, TREAT_ALL, TREAT_NONE):
            continue
        difference = values - reference_values
        for k, threshold in enumerate(thresholds):
            low, high = percentile_interval(difference[1:, k]) if values.shape[0] > 1 else (np.nan, np.nan)
            records.append({**base, "threshold": float(threshold), "source": f"{source} - {reference}",
                            "kind": "difference", "net_benefit": float(difference[0, k]), "ci_low": low,
                            "ci_high": high, "flagged_share": np.nan})
    return records


def decision_curves(targets: pd.DataFrame, predictions: Mapping[str, pd.DataFrame],
                    horizons_days: Sequence[float], fixed_policies: Mapping[str, np.ndarray] | None = None,
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS, n_bootstrap: int = 200,
                    reference: str | None = None, random_state: int = 0) -> pd.DataFrame:
    """Net benefit of every policy per landmark, horizon and threshold, with patient-bootstrap CIs.

    Parameters
    ----------
    targets : DataFrame
        ``patient_id``, ``landmark_day``, ``time``, ``event`` of the landmark-set rows.
    predictions : mapping of str -> DataFrame
        Per source, a ``predict_cif``-layout frame indexed like ``targets`` (out-of-fold
        predictions, the oracle); the policy flags a row when ``cif_relapse_{h}d`` > threshold.
        Rows where any source lacks a prediction are left out for every source.
    horizons_days : sequence of float
        Horizons h of the predicted and the observed relapse incidence.
    fixed_policies : mapping of str -> ndarray of bool, optional
        Policies that flag the same rows at every threshold (e.g. the rule's high-risk group).
    thresholds : sequence of float
        Threshold probabilities, each in (0, 1).
    n_bootstrap : int
        Patient resamples (0 = no CIs).
    reference : str, optional
        Source the paired differences are taken against (e.g. ``"rule"``).
    random_state : int

    Returns
    -------
    DataFrame
        Columns :data:`DECISION_COLUMNS`; sources are the predictions, the fixed policies,
        :data:`TREAT_ALL` and :data:`TREAT_NONE`; ``kind`` is ``estimate`` or ``difference``
        (``source`` then reads ``"xgb_cox - rule"``).
    """
    thresholds_array = np.asarray(thresholds, dtype=float)
    if thresholds_array.ndim != 1 or thresholds_array.size == 0 or np.any(np.diff(thresholds_array) <= 0) \
            or thresholds_array[0] <= 0 or thresholds_array[-1] >= 1:
        raise ModelInputError("decision curves: thresholds must be an increasing sequence strictly between 0 and 1")
    keep = common_rows(targets, predictions, [relapse_column(h) for h in horizons_days])
    fixed_levels = _fixed_levels(fixed_policies or {}, keep, thresholds_array.size)
    targets = targets.loc[keep]
    risks = {name: frame.loc[keep] for name, frame in predictions.items()}
    time, status = targets["time"].to_numpy(dtype=float), _status(targets["event"].to_numpy())
    bootstrap = PatientBootstrap(targets["patient_id"], n_bootstrap, random_state) if n_bootstrap > 0 else None
    landmarks = targets["landmark_day"].astype(float).to_numpy()
    records: list[dict] = []
    for landmark in np.unique(landmarks):
        rows = landmarks == landmark
        multiplicities = np.ones((1, int(rows.sum())))
        if bootstrap is not None:
            multiplicities = np.vstack([multiplicities, bootstrap.multiplicities(rows)])
        for horizon in horizons_days:
            levels = {name: np.searchsorted(thresholds_array, frame[relapse_column(horizon)].to_numpy(float)[rows])
                      for name, frame in risks.items()}
            levels.update({name: level[rows] for name, level in fixed_levels.items()})
            scored = {name: _net_benefit_of_policy(time[rows], status[rows], float(horizon), level, thresholds_array,
                                                   multiplicities) for name, level in levels.items()}
            scored[TREAT_NONE] = (np.zeros((multiplicities.shape[0], thresholds_array.size)),) * 2
            n_events = int(((status[rows] == _RELAPSE) & (time[rows] <= horizon)).sum())
            base = {"landmark_day": float(landmark), "horizon_days": float(horizon), "n_rows": int(rows.sum()),
                    "n_events": n_events}
            records += _records(scored, thresholds_array, base, reference)
    return pd.DataFrame.from_records(records, columns=list(DECISION_COLUMNS))


def net_benefit_at(table: pd.DataFrame, landmark_day: float, horizon_days: float, threshold: float) -> pd.DataFrame:
    """The estimates of every source at one landmark, horizon and threshold (one row per source).

    Parameters
    ----------
    table : DataFrame
        From :func:`decision_curves`.
    landmark_day, horizon_days, threshold : float

    Returns
    -------
    DataFrame
        ``source``, ``net_benefit``, ``ci_low``, ``ci_high``, ``flagged_share``, indexed by source.
    """
    rows = table[(table["kind"] == "estimate") & np.isclose(table["landmark_day"], landmark_day)
                 & np.isclose(table["horizon_days"], horizon_days) & np.isclose(table["threshold"], threshold)]
    return rows.set_index("source")[["net_benefit", "ci_low", "ci_high", "flagged_share"]]


_REFERENCE_STYLES: dict[str, dict[str, Any]] = {
    TREAT_ALL: dict(color="grey", linestyle="--"),
    TREAT_NONE: dict(color="black", linewidth=0.8),
}


def plot_decision_curves(table: pd.DataFrame, horizon_days: float, sources: Sequence[str] | None = None,
                         bands: Sequence[str] = (), title: str = "") -> Figure:
    """Net benefit against the threshold probability, one panel per landmark.

    Parameters
    ----------
    table : DataFrame
        From :func:`decision_curves`.
    horizon_days : float
        Horizon drawn.
    sources : sequence of str, optional
        Policies drawn as lines, in order (default: every estimate source); treat-all (dashed
        grey) and treat-none (black) are always drawn.
    bands : sequence of str
        Sources drawn with their bootstrap 95% CI as a shaded band.
    title : str
    """
    rows = table[(table["kind"] == "estimate") & np.isclose(table["horizon_days"].astype(float), horizon_days)]
    if rows.empty:
        raise ModelInputError(f"decision curves: no rows at horizon {horizon_days:g} days")
    shown = [s for s in (sources if sources is not None else dict.fromkeys(rows["source"]))
             if s not in _REFERENCE_STYLES]
    landmarks = sorted(rows["landmark_day"].unique())
    figure = Figure(figsize=(3.6 * len(landmarks) + 1.6, 4.0), layout="constrained")
    panels = np.atleast_1d(figure.subplots(1, len(landmarks), sharey=True))
    top = float(np.nanmax(rows.loc[rows["source"].isin(shown), "net_benefit"], initial=0.05))
    for axes, landmark in zip(panels, landmarks):
        here = rows[rows["landmark_day"] == landmark]
        for source in [*shown, TREAT_ALL, TREAT_NONE]:
            part = here[here["source"] == source].sort_values("threshold")
            if part.empty:
                continue
            line = axes.plot(part["threshold"], part["net_benefit"], label=source.replace("_", " "),
                             **_REFERENCE_STYLES.get(source, {}))[0]
            if source in bands:
                axes.fill_between(part["threshold"], part["ci_low"], part["ci_high"], color=line.get_color(),
                                  alpha=0.15, linewidth=0)
        axes.set_ylim(-0.05, top * 1.15 + 0.01)
        axes.set_title(f"landmark day {landmark:g} (n={int(here['n_rows'].iloc[0])})")
        axes.set_xlabel("threshold probability of relapse")
        axes.grid(alpha=0.3)
    panels[0].set_ylabel(f"net benefit (relapse by {horizon_days:g} days)")
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, fontsize="small", loc="outside right upper")
    figure.suptitle(title or "HSCT decision curves: consolidate if predicted relapse risk > threshold")
    return figure
