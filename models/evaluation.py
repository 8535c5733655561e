"""Score several prediction sources (models, oracle, rule) side by side, with bootstrap CIs.

Input: the target rows of a landmark set (``patient_id``, ``landmark_day``, ``time``, ``event``)
and, per source, a ``predict_cif``-layout frame for the same rows (out-of-fold predictions, the
oracle, the rule). Only rows where every source has a prediction are scored, so all sources are
compared on the same rows.

Per landmark, endpoint (relapse and each phenotype) and horizon: Harrell's and Uno's C, the
time-dependent AUC, the Brier score, the calibration slope (cloglog recalibration), the decile
slope and the observed/expected ratio; per landmark and endpoint the integrated Brier score over
the horizons (see models.metrics and models.calibration for the definitions). The landmark
``"all"`` is the mean over landmarks (its CI the mean of the same resamples).

Bootstrap (resampling patients, models.bootstrap) for the endpoints in ``bootstrap_endpoints``:
percentile CIs of every metric but the decile slope and O/E, and paired differences
"source - reference" with their CIs (e.g. model - rule in Uno's C).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from models.base import ModelInputError, cif_column, relapse_column
from models.bootstrap import PatientBootstrap, percentile_interval
from models.calibration import calibration_slope, calibration_table, decile_slope, observed_expected_ratio
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
    "ALL_LANDMARKS",
    "HIGHER_IS_BETTER",
    "CLOSE_TO_ONE",
    "LOWER_IS_BETTER",
    "SELECTION_METRICS",
    "EvaluationResult",
    "EvaluationSettings",
    "best_source",
    "endpoint_column",
    "evaluate_sources",
    "goodness",
    "metric_preference",
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


def _common_rows(targets: pd.DataFrame, predictions: Mapping[str, pd.DataFrame], columns: list[str]) -> np.ndarray:
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
        points, replicates = values, {}
    else:
        points = {metric: float(value[0]) for metric, value in values.items()}
        replicates = {metric: value[1:] for metric, value in values.items()}
    points["observed_expected"] = observed_expected_ratio(outcome, prediction, horizon)
    return points, replicates


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


def _score_landmark(collector: _Collector, targets: pd.DataFrame, predictions: Mapping[str, pd.DataFrame],
                    landmark: float, multiplicities, settings: EvaluationSettings, calibration: list) -> None:
    for endpoint in settings.endpoints:
        outcome = Outcome.from_events(targets["time"], targets["event"], endpoint)
        boot = multiplicities if endpoint in settings.bootstrap_endpoints else None
        for source, frame in predictions.items():
            cifs = []
            for horizon in settings.horizons_days:
                prediction = frame[endpoint_column(endpoint, horizon)].to_numpy(dtype=float)
                cifs.append(prediction)
                counts = (outcome.n, int(((outcome.status == ENDPOINT) & (outcome.time <= horizon)).sum()))
                points, replicates = _point_and_replicates(outcome, prediction, horizon, boot)
                for metric, value in points.items():
                    collector.add((landmark, endpoint, horizon, metric, source), value, replicates.get(metric), counts)
                table = calibration_table(outcome, prediction, horizon, settings.calibration_groups)
                collector.add((landmark, endpoint, horizon, "decile_slope", source), decile_slope(table), None, counts)
                calibration.append(table.assign(landmark_day=landmark, endpoint=endpoint, horizon_days=horizon,
                                                source=source))
            if len(settings.horizons_days) >= 2:
                ibs = integrated_brier_score(outcome, np.column_stack(cifs), settings.horizons_days, _with_point(boot))
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
        if reference is None or source == reference or key not in collector.replicates \
                or reference_key not in collector.replicates:
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
    keep = _common_rows(targets, predictions, columns)
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
