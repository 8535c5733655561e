"""Score several prediction sources (models, oracle, rule) side by side, with bootstrap CIs.

Input: the target rows of a landmark set (``patient_id``, ``landmark_day``, ``time``, ``event``)
and, per source, a ``predict_cif``-layout frame for the same rows (out-of-fold predictions, the
oracle, the rule). Only rows where every source has a prediction are scored, so all sources are
compared on the same rows.

Per landmark, endpoint (relapse, each phenotype, death, HSCT) and horizon: Harrell's and Uno's C,
the time-dependent AUC, the Brier score, the calibration slope (cloglog recalibration), the
decile slope and the observed/expected ratio; per landmark and endpoint the integrated Brier
score over the horizons (see models.metrics and models.calibration for the definitions). The
landmark ``"all"`` is the mean over landmarks (its CI the mean of the same resamples).

Bootstrap (resampling patients, models.bootstrap): percentile CIs of the observed/expected ratio
for every endpoint (one vectorised Aalen-Johansen pass per cell, shared by the sources), and for
the endpoints in ``bootstrap_endpoints`` of every other metric but the decile slope, with paired
differences "source - reference" and their CIs (e.g. model - rule in Uno's C; not for O/E).

:func:`calibration_summary` names the calibration figures stably for selection and the
registration gate (``oe/relapse/lm28/h365``: observed/expected of relapse at landmark 28 and
365 days); :func:`select_candidate` picks the best discriminating candidate among those whose
calibration lies within bounds (:func:`calibration_thresholds`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models.base import ModelInputError, cif_column, horizon_label, relapse_column
from models.bootstrap import PatientBootstrap, percentile_interval
from models.calibration import calibration_slope, calibration_table, decile_slope, observed_incidence
from models.metrics import (
    ENDPOINT,
    ENDPOINTS,
    Outcome,
    brier_score,
    concordance_indices,
    cumulative_auc,
    integrated_brier_score,
)

__all__ = [
    "common_rows",
    "ALL_LANDMARKS",
    "CALIBRATION_BOUND_METRICS",
    "HIGHER_IS_BETTER",
    "CLOSE_TO_ONE",
    "LOWER_IS_BETTER",
    "SELECTION_METRICS",
    "EvaluationResult",
    "EvaluationSettings",
    "Selection",
    "best_source",
    "calibration_summary",
    "calibration_thresholds",
    "endpoint_column",
    "evaluate_sources",
    "goodness",
    "is_summary_metric",
    "metric_preference",
    "parse_summary_key",
    "select_candidate",
    "summary_key",
    "summary_by_source",
]

ALL_LANDMARKS = "all"
HIGHER_IS_BETTER = frozenset({"harrell_c", "uno_c", "auc"})
"""Metrics where larger is better; for the others (Brier, IBS) smaller is, and for the calibration
slope the distance to 1 is what counts."""
CLOSE_TO_ONE = frozenset({"calibration_slope", "decile_slope", "observed_expected"})
"""Calibration metrics that are best at 1 (a perfectly calibrated model)."""
LOWER_IS_BETTER = frozenset({"brier", "ibs"})
"""Metrics where smaller is better."""
SELECTION_METRICS = tuple(sorted(HIGHER_IS_BETTER | LOWER_IS_BETTER | {"calibration_slope"}))
"""Summary metrics a run can select its winner by, or gate registration on."""


def metric_preference(metric: str) -> str | float:
    """How a summary metric is judged: ``"higher"`` or ``"lower"`` is better, or the number it is
    best close to (1.0 for the calibration slopes and the observed/expected ratio)."""
    if metric in CLOSE_TO_ONE:
        return 1.0
    return "higher" if metric in HIGHER_IS_BETTER else "lower"


def goodness(values, preference: str | float):
    """Values turned so that larger is better under ``preference`` (see :func:`metric_preference`):
    the value, its negative, or minus its distance to the preferred number."""
    values = np.asarray(values, dtype=float)
    if preference == "higher":
        return values
    if preference == "lower":
        return -values
    return -np.abs(values - float(preference))


@dataclass(frozen=True)
class EvaluationSettings:
    """What to compute.

    Attributes
    ----------
    horizons_days : tuple of float
    endpoints : tuple of str
        Subset of models.metrics.ENDPOINTS.
    n_bootstrap : int
        Patient resamples (0 = no CIs).
    bootstrap_endpoints : tuple of str
        Endpoints that get CIs (resampling costs time).
    reference : str or None
        Source the paired differences are taken against (the rule).
    calibration_groups : int
    random_state : int
    """

    horizons_days: tuple[float, ...] = (182.0, 365.0, 730.0)
    endpoints: tuple[str, ...] = ENDPOINTS
    n_bootstrap: int = 200
    bootstrap_endpoints: tuple[str, ...] = ("relapse",)
    reference: str | None = "rule"
    calibration_groups: int = 10
    random_state: int = 0


@dataclass
class EvaluationResult:
    """Tidy tables of an evaluation.

    Attributes
    ----------
    metrics : DataFrame
        One row per (landmark_day, endpoint, horizon_days, metric, source): ``value``,
        ``ci_low``, ``ci_high``, ``n_rows``, ``n_events``; differences vs the reference have
        ``source`` like ``"xgb_cox - rule"`` and ``kind == "difference"``.
    calibration : DataFrame
        Calibration tables (models.calibration.calibration_table) per landmark, endpoint,
        horizon and source.
    n_rows_scored, n_rows_dropped : int
        Rows scored, and rows left out because a source had no prediction for them.
    """

    metrics: pd.DataFrame
    calibration: pd.DataFrame
    n_rows_scored: int = 0
    n_rows_dropped: int = 0
    replicates: dict = field(default_factory=dict, repr=False)


def endpoint_column(endpoint: str, horizon_days: float) -> str:
    """Prediction column scored for an endpoint: the relapse total or a phenotype's incidence.

    Parameters
    ----------
    endpoint : str
        ``"relapse"`` or a phenotype of :data:`models.base.PHENOTYPE_CAUSES`.
    horizon_days : float
        Horizon, days since the landmark.

    Returns
    -------
    str
        Column name in the ``predict_cif`` frame.
    """
    return relapse_column(horizon_days) if endpoint == "relapse" else cif_column(endpoint, horizon_days)


def common_rows(targets: pd.DataFrame, predictions: Mapping[str, pd.DataFrame], columns: list[str]) -> np.ndarray:
    """The rows every source predicts: True where each frame of ``predictions`` has all ``columns``.

    Parameters
    ----------
    targets : DataFrame
        The evaluated rows; every prediction frame must share its index.
    predictions : mapping
        Source -> predictions indexed like ``targets``.
    columns : list of str
        Prediction columns that must be present and not missing.

    Returns
    -------
    ndarray of bool
        One flag per row of ``targets``.

    Raises
    ------
    ModelInputError
        A frame is indexed otherwise or lacks a column.
    """
    keep = np.ones(len(targets), dtype=bool)
    for source, frame in predictions.items():
        if not frame.index.equals(targets.index):
            raise ModelInputError(f"predictions of {source!r} are not indexed like the targets")
        missing = [column for column in columns if column not in frame.columns]
        if missing:
            raise ModelInputError(f"predictions of {source!r}: missing column(s) {missing[:5]}")
        keep &= frame[columns].notna().all(axis=1).to_numpy()
    return keep


def _horizon_metrics(outcome: Outcome, prediction: np.ndarray, horizon: float, multiplicities) -> dict:
    """(metric name -> value, or replicates when multiplicities are given) at one horizon."""
    return {
        **concordance_indices(outcome, prediction, horizon, multiplicities),
        "auc": cumulative_auc(outcome, prediction, horizon, multiplicities),
        "brier": brier_score(outcome, prediction, horizon, multiplicities),
        "calibration_slope": calibration_slope(outcome, prediction, horizon, multiplicities),
    }


def _with_point(multiplicities: np.ndarray | None) -> np.ndarray | None:
    """Multiplicities with a first row of ones, so one pass gives the point estimate and replicates."""
    return None if multiplicities is None else np.vstack([np.ones(multiplicities.shape[1]), multiplicities])


def _point_and_replicates(outcome, prediction, horizon, multiplicities) -> tuple[dict, dict]:
    values = _horizon_metrics(outcome, prediction, horizon, _with_point(multiplicities))
    if multiplicities is None:
        return values, {}
    return ({metric: float(value[0]) for metric, value in values.items()},
            {metric: value[1:] for metric, value in values.items()})


def _observed_expected(observed: np.ndarray | float, prediction: np.ndarray,
                       multiplicities: np.ndarray | None) -> tuple[float, np.ndarray | None]:
    """O/E point and replicates from the observed incidence (point first, then one per resample)."""
    observed = np.atleast_1d(np.asarray(observed, dtype=float))
    expected = np.array([prediction.mean()]) if multiplicities is None else np.concatenate(
        [[prediction.mean()], multiplicities @ prediction / multiplicities.sum(axis=1)])
    ratio = np.divide(observed, expected, out=np.full(expected.shape, np.nan), where=expected > 0)
    return float(ratio[0]), None if multiplicities is None else ratio[1:]


class _Collector:
    """Accumulates point estimates, bootstrap replicates and row counts keyed by
    (landmark, endpoint, horizon, metric, source)."""

    def __init__(self) -> None:
        self.points: dict[tuple, float] = {}
        self.replicates: dict[tuple, np.ndarray] = {}
        self.counts: dict[tuple, tuple[int, int]] = {}

    def add(self, key: tuple, point: float, replicates: np.ndarray | None, counts: tuple[int, int]) -> None:
        """Record a point estimate, its bootstrap replicates (or None) and (rows, events)."""
        self.points[key] = float(point)
        self.counts[key] = counts
        if replicates is not None:
            self.replicates[key] = np.asarray(replicates, dtype=float)


def _score_horizon(collector: _Collector, outcome: Outcome, predictions: Mapping[str, pd.DataFrame], key: tuple,
                   multiplicities, full_bootstrap: bool, settings: EvaluationSettings, calibration: list) -> None:
    """Every metric of every source at one (landmark, endpoint, horizon) = ``key``."""
    landmark, endpoint, horizon = key
    counts = (outcome.n, int(((outcome.status == ENDPOINT) & (outcome.time <= horizon)).sum()))
    observed = observed_incidence(outcome, horizon, _with_point(multiplicities))
    for source, frame in predictions.items():
        prediction = frame[endpoint_column(endpoint, horizon)].to_numpy(dtype=float)
        points, replicates = _point_and_replicates(outcome, prediction, horizon,
                                                   multiplicities if full_bootstrap else None)
        points["observed_expected"], replicates["observed_expected"] = _observed_expected(observed, prediction,
                                                                                          multiplicities)
        for metric, value in points.items():
            collector.add((*key, metric, source), value, replicates.get(metric), counts)
        table = calibration_table(outcome, prediction, horizon, settings.calibration_groups)
        collector.add((*key, "decile_slope", source), decile_slope(table), None, counts)
        calibration.append(table.assign(landmark_day=landmark, endpoint=endpoint, horizon_days=horizon, source=source))


def _score_landmark(collector: _Collector, targets: pd.DataFrame, predictions: Mapping[str, pd.DataFrame],
                    landmark: float, multiplicities, settings: EvaluationSettings, calibration: list) -> None:
    for endpoint in settings.endpoints:
        outcome = Outcome.from_events(targets["time"], targets["event"], endpoint)
        full_bootstrap = endpoint in settings.bootstrap_endpoints
        for horizon in settings.horizons_days:
            _score_horizon(collector, outcome, predictions, (landmark, endpoint, horizon), multiplicities,
                           full_bootstrap, settings, calibration)
        if len(settings.horizons_days) < 2:
            continue
        boot = multiplicities if full_bootstrap else None
        for source, frame in predictions.items():
            cifs = np.column_stack([frame[endpoint_column(endpoint, h)].to_numpy(dtype=float)
                                    for h in settings.horizons_days])
            ibs = integrated_brier_score(outcome, cifs, settings.horizons_days, _with_point(boot))
            ibs_point, ibs_replicates = (ibs, None) if boot is None else (ibs[0], ibs[1:])
            collector.add((landmark, endpoint, np.nan, "ibs", source), ibs_point, ibs_replicates, (outcome.n, -1))


def _finite_mean(values: np.ndarray):
    """Mean over the first axis ignoring NaN; NaN where nothing is finite (no warning)."""
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0).sum(axis=0)
    count = finite.sum(axis=0)
    return np.divide(total, count, out=np.full(np.shape(total), np.nan), where=count > 0)


def _add_landmark_means(collector: _Collector, landmarks: Sequence[float]) -> None:
    """The "all" landmark: mean over landmarks of the points and of the aligned replicates."""
    groups: dict[tuple, list[tuple]] = {}
    for key in collector.points:
        groups.setdefault(key[1:], []).append(key)
    for rest, keys in groups.items():
        if len(keys) != len(landmarks):
            continue
        point = float(_finite_mean(np.array([collector.points[key] for key in keys])))
        counts = (sum(collector.counts[key][0] for key in keys), sum(collector.counts[key][1] for key in keys))
        replicates = None
        if all(key in collector.replicates for key in keys):
            replicates = _finite_mean(np.vstack([collector.replicates[key] for key in keys]))
        collector.add((ALL_LANDMARKS, *rest), point, replicates, counts)


def _records(collector: _Collector, reference: str | None) -> list[dict]:
    records = []
    for key, point in collector.points.items():
        landmark, endpoint, horizon, metric, source = key
        low, high = percentile_interval(collector.replicates[key]) if key in collector.replicates else (np.nan, np.nan)
        base = {"landmark_day": landmark, "endpoint": endpoint, "horizon_days": horizon, "metric": metric,
                "n_rows": collector.counts[key][0], "n_events": collector.counts[key][1]}
        records.append({**base, "source": source, "kind": "estimate", "value": point, "ci_low": low, "ci_high": high})
        reference_key = (landmark, endpoint, horizon, metric, reference)
        if reference is None or source == reference or metric == "observed_expected" \
                or key not in collector.replicates or reference_key not in collector.replicates:
            continue
        difference = collector.replicates[key] - collector.replicates[reference_key]
        low, high = percentile_interval(difference)
        records.append({**base, "source": f"{source} - {reference}", "kind": "difference",
                        "value": point - collector.points[reference_key], "ci_low": low, "ci_high": high})
    return records


def evaluate_sources(targets: pd.DataFrame, predictions: Mapping[str, pd.DataFrame],
                     settings: EvaluationSettings = EvaluationSettings()) -> EvaluationResult:
    """Score every prediction source per landmark, endpoint and horizon (see module docstring).

    Parameters
    ----------
    targets : DataFrame
        ``patient_id``, ``landmark_day``, ``time``, ``event`` of the scored rows.
    predictions : mapping of str -> DataFrame
        ``predict_cif``-layout frames indexed like ``targets`` (NaN rows are dropped for all).
    settings : EvaluationSettings

    Returns
    -------
    EvaluationResult
    """
    unknown = [endpoint for endpoint in settings.endpoints if endpoint not in ENDPOINTS]
    if unknown:
        raise ModelInputError(f"unknown endpoint(s) {unknown}; known: {list(ENDPOINTS)}")
    columns = [endpoint_column(e, h) for e in settings.endpoints for h in settings.horizons_days]
    keep = common_rows(targets, predictions, columns)
    targets = targets.loc[keep]
    predictions = {source: frame.loc[keep] for source, frame in predictions.items()}
    bootstrap = PatientBootstrap(targets["patient_id"], settings.n_bootstrap, settings.random_state) \
        if settings.n_bootstrap > 0 else None
    collector, calibration = _Collector(), list[pd.DataFrame]()
    landmarks = sorted(targets["landmark_day"].astype(float).unique())
    for landmark in landmarks:
        rows = (targets["landmark_day"].astype(float) == landmark).to_numpy()
        multiplicities = None if bootstrap is None else bootstrap.multiplicities(rows)
        _score_landmark(collector, targets.loc[rows], {s: f.loc[rows] for s, f in predictions.items()},
                        landmark, multiplicities, settings, calibration)
    _add_landmark_means(collector, landmarks)
    records = _records(collector, settings.reference) + _monte_carlo_errors(targets, predictions, settings)
    metrics = pd.DataFrame.from_records(records)
    calibration_frame = pd.concat(calibration, ignore_index=True) if calibration else pd.DataFrame()
    return EvaluationResult(metrics=metrics, calibration=calibration_frame, n_rows_scored=int(keep.sum()),
                            n_rows_dropped=int((~keep).sum()), replicates=collector.replicates)


def _monte_carlo_errors(targets: pd.DataFrame, predictions: Mapping[str, pd.DataFrame],
                        settings: EvaluationSettings) -> list[dict]:
    """Monte Carlo standard errors of sources that are Monte Carlo estimates (the oracle's ``mcse_`` columns):
    ``uno_c_mcse``, ``harrell_c_mcse``, ``cif_mcse_mean`` for the endpoints in ``bootstrap_endpoints``
    (models.oracle.monte_carlo_error_records)."""
    from models.oracle import monte_carlo_error_records

    return monte_carlo_error_records(targets, predictions, settings.bootstrap_endpoints, settings.horizons_days,
                                     ALL_LANDMARKS, random_state=settings.random_state)


def summary_by_source(metrics: pd.DataFrame, endpoint: str = "relapse") -> pd.DataFrame:
    """Per source and metric, the all-landmark value averaged over the horizons.

    Parameters
    ----------
    metrics : DataFrame
        ``EvaluationResult.metrics``.
    endpoint : str
        Endpoint to summarise.

    Returns
    -------
    DataFrame
        One row per source, one column per metric.
    """
    rows = metrics[(metrics["landmark_day"].astype(str) == ALL_LANDMARKS) & (metrics["endpoint"] == endpoint)
                   & (metrics["kind"] == "estimate")]
    return rows.groupby(["source", "metric"])["value"].mean().unstack("metric")


def best_source(metrics: pd.DataFrame, candidates: Sequence[str], metric: str = "uno_c") -> str:
    """The candidate with the best summary value of ``metric`` (ties: first listed).

    Parameters
    ----------
    metrics : DataFrame
        ``EvaluationResult.metrics``.
    candidates : sequence of str
        Sources eligible (the oracle and the rule are not).
    metric : str
        Judged by :func:`metric_preference`: higher is better for metrics in
        :data:`HIGHER_IS_BETTER`, closest to 1 for those in :data:`CLOSE_TO_ONE`, lower otherwise.

    Returns
    -------
    str

    Raises
    ------
    ModelInputError
        No candidate has a finite value.
    """
    summary = summary_by_source(metrics)
    if metric not in summary.columns:
        raise ModelInputError(f"metric {metric!r} was not computed")
    values = goodness(summary[metric].reindex(list(candidates)).to_numpy(dtype=float), metric_preference(metric))
    if not np.isfinite(values).any():
        raise ModelInputError(f"no candidate has a finite {metric!r}")
    return list(candidates)[int(np.nanargmax(values))]


# --- names, bounds and selection on calibration -----------------------------------------------------
CALIBRATION_BOUND_METRICS: dict[str, str] = {"observed_expected": "oe", "calibration_slope": "slope"}
"""Metrics with bounds (selection, registration gate) -> the short name in summary keys."""
_SUMMARY_PREFIXES = (*CALIBRATION_BOUND_METRICS.values(), "ibs")


def summary_key(short: str, endpoint: str, landmark: float | str = ALL_LANDMARKS, horizon: float | None = None) -> str:
    """Stable name of one calibration figure: ``oe/relapse/lm28/h365``, ``oe/relapse/h365`` (mean over
    landmarks), ``slope/...``, ``ibs/death/lm0``, ``ibs/death``.

    Parameters
    ----------
    short : str
        ``oe``, ``slope`` or ``ibs``.
    endpoint : str
        An endpoint of :data:`models.metrics.ENDPOINTS`.
    landmark : float or "all"
        Landmark day, or ``"all"`` for the mean over landmarks (left out of the name).
    horizon : float, optional
        Horizon in days (None for the IBS).

    Returns
    -------
    str
    """
    parts = [short, endpoint]
    if str(landmark) != ALL_LANDMARKS:
        parts.append(f"lm{horizon_label(float(landmark))}")
    if horizon is not None:
        parts.append(f"h{horizon_label(horizon)}")
    return "/".join(parts)


def parse_summary_key(name: str) -> tuple[str, str, float | None, float | None] | None:
    """The parts of a :func:`summary_key` (short name, endpoint, landmark or None, horizon or None),
    or None when ``name`` does not have that shape."""
    parts = name.split("/")
    if len(parts) < 2 or parts[0] not in _SUMMARY_PREFIXES or parts[1] not in ENDPOINTS:
        return None
    rest, landmark, horizon = parts[2:], None, None
    try:
        if rest and rest[0].startswith("lm"):
            landmark, rest = float(rest[0][2:]), rest[1:]
        if rest and rest[0].startswith("h"):
            horizon, rest = float(rest[0][1:]), rest[1:]
    except ValueError:
        return None
    if rest or (horizon is None) != (parts[0] == "ibs"):
        return None
    return parts[0], parts[1], landmark, horizon


def is_summary_metric(name: str) -> bool:
    """Whether ``name`` is a selection metric or has the shape of a :func:`summary_key`."""
    return name in SELECTION_METRICS or parse_summary_key(name) is not None


def calibration_summary(metrics: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per source, O/E and calibration slope per endpoint, landmark (and their mean) and horizon,
    and the IBS per endpoint and landmark, keyed by :func:`summary_key`.

    Parameters
    ----------
    metrics : DataFrame
        ``EvaluationResult.metrics``.

    Returns
    -------
    dict
        Source -> {name: value}.
    """
    shorts = {**CALIBRATION_BOUND_METRICS, "ibs": "ibs"}
    rows = metrics[(metrics["kind"] == "estimate") & metrics["metric"].isin(list(shorts))]
    summary: dict[str, dict[str, float]] = {}
    for row in rows.itertuples():
        horizon = None if pd.isna(row.horizon_days) else float(row.horizon_days)
        name = summary_key(shorts[str(row.metric)], str(row.endpoint), row.landmark_day, horizon)
        summary.setdefault(str(row.source), {})[name] = float(row.value)
    return summary


def calibration_thresholds(bounds: Mapping[Any, Mapping[Any, Sequence[float]]], landmarks: Sequence[float],
                           horizons: Sequence[float]) -> tuple[dict[str, float], dict[str, float]]:
    """Bounds per metric and endpoint, expanded to every landmark and horizon as summary names.

    Parameters
    ----------
    bounds : mapping
        Metric (a key of :data:`CALIBRATION_BOUND_METRICS`) -> endpoint -> (lowest, highest).
    landmarks, horizons : sequence of float

    Returns
    -------
    minimums, maximums : dict
        Summary name (e.g. ``oe/relapse/lm28/h365``) -> bound; the shape of
        ``RegistryConfig.thresholds`` and ``max_thresholds``.
    """
    minimums, maximums = {}, {}
    for metric, by_endpoint in bounds.items():
        if metric not in CALIBRATION_BOUND_METRICS:
            raise ModelInputError(f"calibration bounds: unknown metric {metric!r}; known: {list(CALIBRATION_BOUND_METRICS)}")
        for endpoint, (low, high) in by_endpoint.items():
            for landmark in landmarks:
                for horizon in horizons:
                    name = summary_key(CALIBRATION_BOUND_METRICS[metric], endpoint, float(landmark), float(horizon))
                    minimums[name], maximums[name] = float(low), float(high)
    return minimums, maximums


@dataclass(frozen=True)
class Selection:
    """The chosen candidate and why.

    Attributes
    ----------
    winner : str
    eligible : tuple of str
        Candidates within every bound.
    failures : dict of str -> tuple of str
        Per candidate outside a bound, one line per failed check (``oe/relapse/lm28/h365 = 0.85
        (outside [0.9, 1.1])``).
    """

    winner: str
    eligible: tuple[str, ...]
    failures: dict[str, tuple[str, ...]]


def _violations(values: Mapping[str, float], minimums: Mapping[str, float],
                maximums: Mapping[str, float]) -> tuple[float, tuple[str, ...]]:
    """Total distance outside the bounds (|log value / bound|; infinite when not computed) and a
    line per failed check."""
    total, lines = 0.0, []
    for name in dict.fromkeys([*minimums, *maximums]):
        value = values.get(name, np.nan)
        low, high = minimums.get(name, -np.inf), maximums.get(name, np.inf)
        if np.isfinite(value) and low <= value <= high:
            continue
        bound = low if np.isfinite(value) and value < low else high
        total += abs(np.log(value / bound)) if np.isfinite(value) and value > 0 and bound > 0 else np.inf
        lines.append(f"{name} = {value:.3f} (outside [{low:g}, {high:g}])")
    return total, tuple(lines)


def select_candidate(summary: Mapping[str, Mapping[str, float]], candidates: Sequence[str], metric: str = "uno_c",
                     minimums: Mapping[str, float] | None = None,
                     maximums: Mapping[str, float] | None = None) -> Selection:
    """The best candidate by ``metric`` among those whose named figures lie within the bounds.

    When no candidate is within every bound, the one least outside them wins (smallest sum of
    |log(value / bound)| over its failed checks), ties broken by ``metric``.

    Parameters
    ----------
    summary : mapping
        Source -> {name: value}: the headline metrics (:func:`summary_by_source`) and the
        calibration figures (:func:`calibration_summary`).
    candidates : sequence of str
    metric : str
        Selection metric (see :func:`best_source` for its direction).
    minimums, maximums : mapping, optional
        Name -> bound (e.g. from :func:`calibration_thresholds`).

    Returns
    -------
    Selection

    Raises
    ------
    ModelInputError
        No candidate has a finite ``metric``.
    """
    candidates = list(candidates)
    scores = goodness(np.array([summary.get(c, {}).get(metric, np.nan) for c in candidates], dtype=float),
                      metric_preference(metric))
    if not np.isfinite(scores).any():
        raise ModelInputError(f"no candidate has a finite {metric!r}")
    checked = {c: _violations(summary.get(c, {}), minimums or {}, maximums or {}) for c in candidates}
    eligible = [c for c in candidates if not checked[c][1]]
    pool = eligible or [c for c in candidates if checked[c][0] == min(v for v, _ in checked.values())]
    ranked = [(np.nan_to_num(scores[candidates.index(c)], nan=-np.inf), -candidates.index(c), c) for c in pool]
    return Selection(winner=max(ranked)[2], eligible=tuple(eligible),
                     failures={c: lines for c, (_, lines) in checked.items() if lines})
