"""The simulator's oracle as a prediction source, in the layout of ``predict_cif``.

The oracle (docs/architecture.md, "oracle") gives, for each patient, landmark and horizon, the
true cumulative incidences given the latent state. Joined to the rows of a landmark set on
(patient_id, landmark_day) it becomes one more column set next to the models' and the rule's
predictions, so the same metrics score all three. Only the evaluation pipeline reads it; no
model ever sees it.

The oracle is a Monte Carlo estimate. When its table carries the standard errors (``mcse_*``
columns), the prediction frame carries them too (``mcse_<cif column>``), and
:func:`monte_carlo_error_records` turns them into the Monte Carlo standard error of its
concordance: the spread of Harrell's and Uno's C when every incidence is perturbed by its own
standard error (independent normal noise; replicates are independent between patients).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from models.base import CAUSES, ModelInputError, cif_column, event_free_column, relapse_column
from models.evaluation import endpoint_column
from models.metrics import ENDPOINT, Outcome, concordance_indices

__all__ = [
    "ORACLE_CAUSE_COLUMNS",
    "MCSE_PREFIX",
    "MCSE_DRAWS",
    "mcse_column",
    "oracle_predictions",
    "concordance_mcse",
    "monte_carlo_error_records",
]

ORACLE_CAUSE_COLUMNS: dict[str, str] = {
    "cif_CD19_pos": "relapse_CD19_pos",
    "cif_CD19_neg": "relapse_CD19_neg",
    "cif_lineage_switch": "relapse_lineage_switch",
    "cif_death": "death",
    "cif_hsct": "hsct",
}
_KEYS = ["patient_id", "landmark_day"]
_SUM_TOLERANCE = 1e-6
MCSE_PREFIX = "mcse_"
MCSE_DRAWS = 4
"""Perturbed copies of the incidences behind the Monte Carlo standard error of a concordance."""


def mcse_column(column: str) -> str:
    """Column of the Monte Carlo standard error of a prediction column (``cif_relapse_365d`` -> ``mcse_cif_relapse_365d``)."""
    return f"{MCSE_PREFIX}{column}"


def _check_oracle(oracle: pd.DataFrame) -> None:
    required = _KEYS + ["horizon_days", "event_free", *ORACLE_CAUSE_COLUMNS]
    missing = [column for column in required if column not in oracle.columns]
    if missing:
        raise ModelInputError(f"oracle: missing column(s) {missing}")
    values = oracle[[*ORACLE_CAUSE_COLUMNS, "event_free"]]
    complete = values.notna().all(axis=1).to_numpy()
    off = np.abs(values.to_numpy()[complete].sum(axis=1) - 1.0) > _SUM_TOLERANCE
    if off.any():
        row = oracle.index[np.flatnonzero(complete)[np.flatnonzero(off)[0]]]
        raise ModelInputError(f"oracle: row {row!r}: cause incidences and event_free do not sum to 1")


def oracle_predictions(keys: pd.DataFrame, oracle: pd.DataFrame, horizons_days: Sequence[float]) -> pd.DataFrame:
    """The oracle's incidences for the rows of ``keys``, as ``predict_cif`` would return them.

    Parameters
    ----------
    keys : DataFrame
        Columns ``patient_id`` and ``landmark_day`` (e.g. a landmark set).
    oracle : DataFrame
        The long oracle table.
    horizons_days : sequence of float
        Horizons to return; each must be in the oracle's ``horizon_days``.

    Returns
    -------
    DataFrame
        Indexed like ``keys``; columns of :func:`models.base.cif_columns`, then (when the oracle
        table has its Monte Carlo standard errors) ``mcse_<column>`` for each of them. Rows the
        oracle does not cover (not in its latent risk set) are NaN.

    Raises
    ------
    ModelInputError
        Missing columns, a horizon the oracle lacks, or incidences that do not sum to 1.
    """
    _check_oracle(oracle)
    available = set(np.round(oracle["horizon_days"].astype(float), 6))
    columns, errors = {}, {}
    left = keys[_KEYS].assign(landmark_day=keys["landmark_day"].astype(float), patient_id=keys["patient_id"].astype(str))
    for horizon in horizons_days:
        if round(float(horizon), 6) not in available:
            raise ModelInputError(f"oracle: no rows for horizon {horizon} days (has {sorted(available)})")
        part = oracle.loc[np.isclose(oracle["horizon_days"].astype(float), float(horizon))]
        part = part.assign(landmark_day=part["landmark_day"].astype(float), patient_id=part["patient_id"].astype(str))
        if part.duplicated(_KEYS).any():
            raise ModelInputError(f"oracle: duplicate (patient_id, landmark_day) rows at horizon {horizon}")
        joined = left.merge(part, on=_KEYS, how="left", validate="many_to_one")
        sources = {cif_column(cause, horizon): source for source, cause in ORACLE_CAUSE_COLUMNS.items()}
        sources |= {relapse_column(horizon): "cif_relapse", event_free_column(horizon): "event_free"}
        for source, cause in ORACLE_CAUSE_COLUMNS.items():
            columns[cif_column(cause, horizon)] = joined[source].to_numpy(dtype=float)
        columns[relapse_column(horizon)] = sum(columns[cif_column(cause, horizon)] for cause in CAUSES[:3])
        columns[event_free_column(horizon)] = joined["event_free"].to_numpy(dtype=float)
        errors.update({mcse_column(column): joined[mcse_column(source)].to_numpy(dtype=float)
                       for column, source in sources.items() if mcse_column(source) in joined.columns})
    return pd.DataFrame(columns | errors, index=keys.index)


def concordance_mcse(outcome: Outcome, prediction: np.ndarray, prediction_mcse: np.ndarray, tau: float,
                     draws: int = MCSE_DRAWS, random_state: int = 0) -> dict[str, float]:
    """Monte Carlo standard error of Harrell's and Uno's C of a Monte Carlo prediction.

    The standard deviation of the concordance over ``draws`` copies of the prediction, each
    incidence perturbed by independent normal noise with its own standard error.

    Parameters
    ----------
    outcome : Outcome
        The scored rows.
    prediction, prediction_mcse : ndarray
        Incidence of the endpoint at ``tau`` and its Monte Carlo standard error, per row.
    tau : float
        Horizon (days from the landmark).
    draws : int
        Perturbed copies (>= 2).
    random_state : int

    Returns
    -------
    dict
        ``{"harrell_c": ..., "uno_c": ...}``.
    """
    rng = np.random.default_rng(random_state)
    values = [concordance_indices(outcome, prediction + prediction_mcse * rng.standard_normal(prediction.shape), tau)
              for _ in range(draws)]
    return {name: float(np.std([value[name] for value in values], ddof=1)) for name in ("harrell_c", "uno_c")}


def _landmark_records(targets: pd.DataFrame, prediction: pd.DataFrame, landmark: float, endpoints: Sequence[str],
                      horizons_days: Sequence[float], draws: int, random_state: int) -> list[dict]:
    records = []
    for endpoint in endpoints:
        outcome = Outcome.from_events(targets["time"], targets["event"], endpoint)
        for horizon in horizons_days:
            column = endpoint_column(endpoint, horizon)
            if mcse_column(column) not in prediction.columns:
                continue
            errors = prediction[mcse_column(column)].to_numpy(dtype=float)
            values = concordance_mcse(outcome, prediction[column].to_numpy(dtype=float), np.nan_to_num(errors),
                                      horizon, draws, random_state)
            values["cif_mcse_mean"] = float(np.nanmean(errors))
            events = int(((outcome.status == ENDPOINT) & (outcome.time <= horizon)).sum())
            records += [{"landmark_day": landmark, "endpoint": endpoint, "horizon_days": horizon,
                         "metric": f"{name}_mcse" if name != "cif_mcse_mean" else name, "value": value,
                         "n_rows": outcome.n, "n_events": events} for name, value in values.items()]
    return records


def monte_carlo_error_records(targets: pd.DataFrame, predictions: Mapping[str, pd.DataFrame],
                              endpoints: Sequence[str], horizons_days: Sequence[float], all_landmarks: str,
                              draws: int = MCSE_DRAWS, random_state: int = 0) -> list[dict]:
    """Metric records of the Monte Carlo error of every source that carries ``mcse_`` columns.

    Per landmark, endpoint and horizon: ``uno_c_mcse`` and ``harrell_c_mcse``
    (:func:`concordance_mcse`) and ``cif_mcse_mean`` (mean standard error of the endpoint's
    incidence); for the landmark ``all_landmarks`` the standard error of the mean over landmarks
    (root sum of squares / number of landmarks: independent Monte Carlo per landmark).

    Parameters
    ----------
    targets : DataFrame
        ``patient_id``, ``landmark_day``, ``time``, ``event`` of the scored rows.
    predictions : mapping of str -> DataFrame
        Prediction frames indexed like ``targets``.
    endpoints, horizons_days : sequence
        What to score.
    all_landmarks : str
        Label of the mean over landmarks (``models.evaluation.ALL_LANDMARKS``).
    draws, random_state : int
        See :func:`concordance_mcse`.

    Returns
    -------
    list of dict
        In the layout of ``EvaluationResult.metrics`` (``kind == "estimate"``, no CI).
    """
    records = []
    landmarks = sorted(targets["landmark_day"].astype(float).unique())
    for source, frame in predictions.items():
        if not any(str(column).startswith(MCSE_PREFIX) for column in frame.columns):
            continue
        per_landmark = []
        for landmark in landmarks:
            rows = (targets["landmark_day"].astype(float) == landmark).to_numpy()
            per_landmark += _landmark_records(targets.loc[rows], frame.loc[rows], landmark, endpoints,
                                              horizons_days, draws, random_state)
        records += [{**record, "source": source} for record in per_landmark]
        records += [{**record, "source": source} for record in _mean_over_landmarks(per_landmark, all_landmarks)]
    return [{**record, "kind": "estimate", "ci_low": np.nan, "ci_high": np.nan} for record in records]


def _mean_over_landmarks(records: list[dict], all_landmarks: str) -> list[dict]:
    """Standard error of the mean over landmarks of each (endpoint, horizon, metric)."""
    frame = pd.DataFrame(records)
    if frame.empty:
        return []
    grouped = frame.groupby(["endpoint", "horizon_days", "metric"], sort=False)
    summary = grouped.agg(squares=("value", lambda v: float(np.sqrt(np.sum(np.square(v))))),
                          mean=("value", "mean"), landmarks=("value", "size"), n_rows=("n_rows", "sum"),
                          n_events=("n_events", "sum")).reset_index()
    value = np.where(summary["metric"] == "cif_mcse_mean", summary["mean"], summary["squares"] / summary["landmarks"])
    return [{"landmark_day": all_landmarks, "endpoint": row.endpoint, "horizon_days": row.horizon_days,
             "metric": row.metric, "value": float(v), "n_rows": int(row.n_rows), "n_events": int(row.n_events)}
            for row, v in zip(summary.itertuples(), value)]
