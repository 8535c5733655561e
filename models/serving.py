"""Scoring: patients in the data contract, as of a day -> one output row per patient.

This is the single code path behind both ways of scoring a fitted model: the MLflow pyfunc
(``pipelines/pyfunc_model.py``, request frames with a row per patient, :func:`score_requests`) and
batch scoring of a cohort folder (``pipelines/score.py``, chunks of raw tables,
:func:`score_tables`). Both validate with the data contract, build features with the same builders
and predict with :func:`_score_columns`, so the served model and batch scoring give the same
numbers for the same patients. Nothing here reads files or touches MLflow.

Steps for a set of patients and their as-of days:

1. validate and normalise the raw tables with the data contract (``features.contract``);
2. build the feature rows each patient had at its as-of day (only data with ``day <= as_of_day``);
3. predict cumulative incidences at every horizon (relapse by phenotype, death, HSCT,
   event-free), assign the risk group from the relapse incidence at the risk-group horizon;
4. explain: the top contributing factors per patient.

A scoring server answers concurrent requests in threads; :class:`MicroBatcher` scores the
requests waiting at the same moment in one call (:func:`score_requests`: the cost of scoring a few
patients is mostly per call), each patient's numbers being independent of the batch. Clean
requests (every field present, measurements as a list of objects, values plain JSON of the declared
kinds, at most 64 patients and 4,000 measurements in the call) skip the raw tables: their cells go
to the list form of the contract's fast path (``features.contract_fast.clean_small_columns``),
which gives exactly the contract's tables or steps aside; otherwise the whole call takes the frame
route (:func:`score_request` of the stacked requests).

A request has one row per patient: the fields of :data:`REQUEST_FIELDS`, generated from the
column declarations in ``features.schema`` (the infusions row), the as-of day, and the patient's
measurements as a list of objects with the measurements table's columns. The served signature is
built from these fields (``pipelines/pyfunc_model.py``). Every value is checked here by the data
contract, so a 2.5 sent for an integer field (``prior_lines``) is refused by name, never truncated.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.contract import ContractError, validate_cohort
from features.contract_fast import clean_small_columns
from features.registry import build_feature_rows
from features.schema import INFUSION_COLUMNS, MEASUREMENT_COLUMNS
from models.base import relapse_column

__all__ = [
    "RISK_GROUPS",
    "SERVING_LINGER_S",
    "REJECT_COLUMNS",
    "ScoringInputError",
    "RequestField",
    "MEASUREMENT_FIELDS",
    "REQUEST_FIELDS",
    "ScoringBundle",
    "ScoringResult",
    "EXAMPLE_PATIENT",
    "baseline_field_names",
    "request_to_tables",
    "tables_to_records",
    "assign_risk_groups",
    "score_tables",
    "score_requests",
    "answer_records",
    "score_request",
    "MicroBatcher",
]

RISK_GROUPS = ("low", "intermediate", "high")
SERVING_LINGER_S = 0.02
"""How long the served model's :class:`MicroBatcher` waits for concurrent callers (seconds). Measured
with ``benchmarks.bench_serving`` (8 clients, 2 workers, 2 cores, 3 x 800 requests): median 53.7 ms
at 0.01 s, 42.7-45.1 ms at 0.02 s (two runs)."""
REJECT_COLUMNS = ("table", "row", "patient_id", "reason")


class ScoringInputError(ValueError):
    """Input that cannot be scored; the message names the patient, field and reason."""


# --- the request: one row per patient, its fields generated from the data contract -------------------
@dataclass(frozen=True)
class RequestField:
    """One field of a scoring request (a column of the request frame).

    Attributes
    ----------
    name : str
    kind : {"str", "float", "int", "bool", "measurements"}
        Contract type of the field; ``measurements`` is the patient's list of measurement objects.
    required : bool
        Whether the field must be present (``null`` then means an unknown value).
    meaning : str
    """

    name: str
    kind: str
    required: bool
    meaning: str


MEASUREMENT_FIELDS: tuple[str, ...] = tuple(spec.name for spec in MEASUREMENT_COLUMNS if spec.name != "patient_id")
"""Keys of one measurement object in a request (the measurements table without ``patient_id``)."""

REQUEST_FIELDS: tuple[RequestField, ...] = (
    *(RequestField(spec.name, "str" if spec.kind == "category" else spec.kind, spec.required, spec.meaning)
      for spec in INFUSION_COLUMNS),
    RequestField("as_of_day", "float", True, "prediction day, days since infusion (>= 0)"),
    RequestField("measurements", "measurements", True,
                 f"every measurement known so far, each an object with keys {', '.join(MEASUREMENT_FIELDS)} "
                 "(as in the measurements table); may be empty"),
)
"""The fields of one patient in a scoring request: the infusions row, the as-of day, the measurements."""


def baseline_field_names() -> tuple[str, ...]:
    """Infusions columns carried by a request row."""
    return tuple(spec.name for spec in INFUSION_COLUMNS)


EXAMPLE_PATIENT: dict[str, Any] = {
    "patient_id": "EXAMPLE-001",
    "site": "center_a",
    "age_years": 11.5,
    "sex": "F",
    "down_syndrome": False,
    "kmt2a_rearranged": False,
    "tp53_altered": False,
    "hypodiploid": False,
    "ph_positive": False,
    "prior_lines": 2,
    "prior_crs": 1,
    "prior_hsct": False,
    "blinatumomab": "naive",
    "inotuzumab_prior": False,
    "bm_blasts_pct": 12.0,
    "cns_status": "CNS1",
    "active_non_cns_emd": False,
    "cd19_antigen_load_pct": 35.0,
    "cd19_dim_pre": False,
    "cd22_pct_pre": 95.0,
    "product": "tisagenlecleucel",
    "costim": "4-1BB",
    "cell_dose_per_kg": 2.1e6,
    "fludarabine_auc": 15.2,
    "as_of_day": 91.0,
    "measurements": [
        {"day": 28.0, "specimen": "BM", "assay": "flow_mrd", "value": "<0.01%", "unit": None},
        {"day": 28.0, "specimen": "BM", "assay": "ngs_mrd", "value": 2.0e-6, "unit": "fraction",
         "detection_limit": 1.0e-6},
        {"day": 28.0, "specimen": "PB", "assay": "b_cell_count", "value": 0.0, "unit": "cells/uL"},
        {"day": 63.0, "specimen": "PB", "assay": "b_cell_count", "value": 1.0, "unit": "cells/uL"},
        {"day": 91.0, "specimen": "BM", "assay": "ngs_mrd", "value": "NEG", "unit": "fraction",
         "detection_limit": 1.0e-6},
        {"day": 91.0, "specimen": "PB", "assay": "b_cell_count", "value": 3.0, "unit": "cells/uL"},
    ],
}
"""A made-up patient (no real or simulated person): the model's input example and the docs' curl."""


# --- conversions between requests and contract tables ------------------------------------------------
def _entries_from_columns(patient_id: Any, columns: dict) -> list[dict[str, Any]]:
    """Measurement objects from the column form ``{"day": [...], "assay": [...], ...}``."""
    lengths = {key: len(values) if isinstance(values, (list, tuple, np.ndarray)) else None
               for key, values in columns.items()}
    if None in lengths.values() or len(set(lengths.values())) > 1:
        raise ScoringInputError(
            f"patient {patient_id}: measurements in column form must map each field to a list, all of one "
            f"length; got lengths {lengths}"
        )
    keys = list(columns)
    return [dict(zip(keys, values)) for values in zip(*(columns[key] for key in keys))]


_NUMERIC_KINDS = ("float", "int")
_NUMERIC_MEASUREMENT_FIELDS = ("day", "value", "detection_limit")  # value: a number or lab text
_NON_SCALARS = (list, tuple, dict, set, np.ndarray)


def _check_cell(patient_id: Any, field_name: str, value: Any, numeric: bool) -> None:
    """A request value must be one JSON scalar; a boolean is not a number (true would read as 1)."""
    if isinstance(value, _NON_SCALARS):
        raise ScoringInputError(f"patient {patient_id}: {field_name} must be a single value, got {value!r}")
    if numeric and isinstance(value, (bool, np.bool_)):
        raise ScoringInputError(f"patient {patient_id}: {field_name} {value!r} is not a number")


def _check_request_cells(request: pd.DataFrame) -> None:
    """Every baseline field and ``as_of_day`` of every patient holds one scalar of a possible type."""
    patient_ids = request["patient_id"].tolist()
    for spec in REQUEST_FIELDS:
        if spec.kind == "measurements" or spec.name not in request.columns:
            continue
        values = request[spec.name]
        numeric = spec.kind in _NUMERIC_KINDS
        if values.dtype == object or (numeric and values.dtype == bool):
            for patient_id, value in zip(patient_ids, values.tolist()):
                _check_cell(patient_id, spec.name, value, numeric)


def _check_measurement_keys(patient_id: Any, keys: Any) -> None:
    unknown = sorted(set(keys) - set(MEASUREMENT_FIELDS))
    if unknown:
        raise ScoringInputError(
            f"patient {patient_id}: unknown measurement field(s) {', '.join(map(str, unknown))} "
            f"(known: {', '.join(MEASUREMENT_FIELDS)})"
        )


def _measurement_entries(patient_id: Any, entries: Any) -> list[dict[str, Any]]:
    """A patient's measurement objects, checked to have known keys only.

    ``entries`` is a list of measurement objects, or one object of equal-length lists (the
    column form, which MLflow's ``instances`` format needs when patients have different numbers
    of measurements).
    """
    if isinstance(entries, dict):
        _check_measurement_keys(patient_id, entries)
        return _entries_from_columns(patient_id, entries)
    if entries is None or isinstance(entries, (str, bytes)) or not hasattr(entries, "__len__"):
        raise ScoringInputError(
            f"patient {patient_id}: measurements must be a list of measurement objects (may be empty) or an "
            f"object of equal-length lists, got {type(entries).__name__}"
        )
    for entry in entries:
        if not isinstance(entry, dict):
            raise ScoringInputError(
                f"patient {patient_id}: each measurement must be an object with keys {', '.join(MEASUREMENT_FIELDS)}"
            )
        _check_measurement_keys(patient_id, entry)
        for key, value in entry.items():
            _check_cell(patient_id, f"measurement {key}", value, key in _NUMERIC_MEASUREMENT_FIELDS)
    return list(entries)


def request_to_tables(request: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Raw ``infusions`` and ``measurements`` tables (and as-of days) from a scoring request.

    Parameters
    ----------
    request : DataFrame
        One row per patient with the fields of :data:`REQUEST_FIELDS` (as the MLflow scoring
        server hands it over; ``pd.DataFrame(records)`` for request records).

    Returns
    -------
    infusions : DataFrame
        One row per patient, every infusions column of the contract (absent optional = missing).
    measurements : DataFrame
        One row per measurement, raw as sent (``value`` keeps text or number).
    as_of_days : Series
        Float days indexed by patient_id.

    Raises
    ------
    ScoringInputError
        A required field is absent, or a patient's measurements are not a list of objects with
        known keys.
    """
    missing = [f.name for f in REQUEST_FIELDS if f.required and f.name not in request.columns]
    if missing:
        raise ScoringInputError(
            f"request is missing field(s) {', '.join(missing)} "
            "(required by the data contract; send null for an unknown value)"
        )
    request = request.reset_index(drop=True)
    _check_request_cells(request)
    infusions = request.reindex(columns=list(baseline_field_names()))
    rows = [
        {"patient_id": patient_id, **entry}
        for patient_id, entries in zip(infusions["patient_id"].tolist(), request["measurements"].tolist())
        for entry in _measurement_entries(patient_id, entries)
    ]
    measurements = pd.DataFrame(rows, columns=["patient_id", *MEASUREMENT_FIELDS])
    ids = [pid if pid is None or isinstance(pid, str) else str(pid) for pid in infusions["patient_id"].tolist()]
    days = _as_of_day_numbers(ids, request["as_of_day"].tolist())
    as_of_days = pd.Series(days, index=pd.Index(ids, name="patient_id"), name="as_of_day")  # ids as the contract types them
    return infusions, measurements, as_of_days


def _day_number(value: Any) -> float | None:
    """``value`` as a float number of days, when it reads as one that is finite and >= 0; else None."""
    try:
        day = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return day if math.isfinite(day) and day >= 0 else None


def _as_of_day_numbers(patient_ids: list, values: list) -> np.ndarray:
    """``as_of_day`` of each patient as a float; anything but a finite number >= 0 is named."""
    days = np.empty(len(values))
    for position, (patient_id, value) in enumerate(zip(patient_ids, values)):
        day = _day_number(value)
        if day is None:
            raise ScoringInputError(f"patient {patient_id}: as_of_day {value!r} must be a finite number of days >= 0")
        days[position] = day
    return days


def _plain(value: Any) -> Any:
    """A JSON-ready Python scalar (NaN / NA -> None, numpy scalars -> Python)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def tables_to_records(
    infusions: pd.DataFrame, measurements: pd.DataFrame, as_of_day: float, measurement_form: str = "records"
) -> list[dict[str, Any]]:
    """Request records (plain dicts, JSON-ready) for every patient of raw contract tables.

    The inverse of :func:`request_to_tables`: used to build requests for the served model from
    a cohort folder (tests, benchmarks, the docs' examples).

    Parameters
    ----------
    infusions, measurements : DataFrame
        Raw contract tables.
    as_of_day : float
    measurement_form : {"records", "columns"}
        Each patient's measurements as a list of objects, or as one object of equal-length lists.
    """
    if measurement_form not in ("records", "columns"):
        raise ValueError(f"measurement_form must be 'records' or 'columns', got {measurement_form!r}")
    baseline = [c for c in baseline_field_names() if c in infusions.columns]
    measurement_columns = [name for name in MEASUREMENT_FIELDS if name in measurements]
    by_patient = {pid: rows for pid, rows in measurements.groupby("patient_id", sort=False)}
    records = []
    for row in infusions[baseline].itertuples(index=False):
        record = {name: _plain(value) for name, value in zip(baseline, row)}
        rows = by_patient.get(record["patient_id"], measurements.iloc[:0])[measurement_columns]
        record["as_of_day"] = float(as_of_day)
        entries = [{name: _plain(value) for name, value in zip(measurement_columns, m)}
                   for m in rows.itertuples(index=False)]
        record["measurements"] = entries if measurement_form == "records" else {
            name: [entry[name] for entry in entries] for name in measurement_columns
        }
        records.append(record)
    return records


# --- the fitted bundle and scoring ------------------------------------------------------------------
@dataclass(frozen=True)
class ScoringBundle:
    """Everything needed to score: the fitted model and how its inputs and outputs are made.

    Attributes
    ----------
    estimator : CompetingRisksModel
        Fitted on the stacked landmark set (``landmark_day`` is one of its features).
    estimator_name : str
        Candidate name (``xgb_cox``, ``rsf``, ...).
    feature_columns : tuple of str
        Columns of ``X`` at fit time, in order.
    builders : tuple of str
        Feature builders (``features.registry``) that make those columns.
    builder_options : dict
        Keyword options per builder, as at training (e.g. the BCA recovery thresholds).
    horizons_days : tuple of float
        Prediction horizons, days from the as-of day.
    risk_group_horizon_days : float
        Horizon (one of ``horizons_days``) whose relapse incidence sets the risk group.
    risk_group_cutoffs : tuple of float
        Increasing cut-offs of that incidence: low < first <= intermediate < last <= high.
    n_top_factors : int
        Contributing factors reported per patient (0 = none).
    explain_horizon_days : float
        Horizon of the explained relapse incidence (permutation SHAP; tree SHAP explains the
        relapse hazard, see ``models.explain``).
    model_name, model_version, run_id : str, optional
        Registered model name and version, and the training run (None when unregistered).
    """

    estimator: Any
    estimator_name: str
    feature_columns: tuple[str, ...]
    builders: tuple[str, ...]
    builder_options: dict[str, dict[str, Any]]
    horizons_days: tuple[float, ...]
    risk_group_horizon_days: float
    risk_group_cutoffs: tuple[float, ...]
    n_top_factors: int = 5
    explain_horizon_days: float = 365.0
    model_name: str | None = None
    model_version: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class ScoringResult:
    """Scores of the accepted patients and every rejected row or patient.

    Attributes
    ----------
    scores : DataFrame
        One row per scored patient (see :func:`score_tables`).
    rejects : DataFrame
        Columns ``table``, ``row``, ``patient_id``, ``reason``: one line per rejected input row
        (``row`` = 0-based position in the given table); a rejected patient has its rows listed.
    """

    scores: pd.DataFrame
    rejects: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(REJECT_COLUMNS)))



def _as_of_days(patient_ids: pd.Series, as_of_day: float | pd.Series) -> np.ndarray:
    """As-of day per patient (scalar broadcast, or a Series indexed by patient_id)."""
    if isinstance(as_of_day, pd.Series):
        days = as_of_day.reindex(patient_ids.to_numpy()).to_numpy(dtype=float)
    else:
        days = np.full(len(patient_ids), float(as_of_day))
    bad = ~np.isfinite(days) | (days < 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ScoringInputError(
            f"patient {patient_ids.iloc[first]}: as_of_day {days[first]!r} must be a finite number of days >= 0"
        )
    return days


def _rejects_from_quarantine(quarantined: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One reject line per quarantined row of the validated tables."""
    frames = [
        pd.DataFrame({
            "table": table,
            "row": rows["row"].to_numpy(dtype=np.int64),
            "patient_id": rows["patient_id"].astype(object).to_numpy() if "patient_id" in rows else None,
            "reason": rows["quarantine_reasons"].astype(str).to_numpy(),
        })
        for table, rows in quarantined.items()
        if len(rows)
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(REJECT_COLUMNS))


def _validate(infusions: pd.DataFrame, measurements: pd.DataFrame, on_error: str):
    """Typed infusions, normalised measurements and the quarantined rows per table (data contract)."""
    try:
        cohort = validate_cohort(infusions, measurements, None, on_error=on_error)
    except ContractError as exc:
        raise ScoringInputError(str(exc)) from None
    return cohort.infusions, cohort.measurements, cohort.quarantined


def _feature_matrix(bundle: ScoringBundle, infusions: pd.DataFrame, measurements: pd.DataFrame,
                    as_of: np.ndarray) -> pd.DataFrame:
    """Feature rows (bundle's columns, infusions order), each at the patient's as-of day.

    Patients sharing an as-of day are built together; with a single day (the usual case) that is
    every patient at once, in order, with no selection or re-ordering.
    """
    measurements = measurements.sort_values("day", kind="stable")
    days = np.unique(as_of)
    if days.size == 1:
        rows = build_feature_rows(infusions, measurements, float(days[0]), bundle.builders, bundle.builder_options)
    else:
        parts = []
        for day in days:
            patients = infusions.loc[as_of == day]
            known = measurements.loc[measurements["patient_id"].isin(patients["patient_id"])]
            parts.append(build_feature_rows(patients, known, float(day), bundle.builders, bundle.builder_options))
        rows = pd.concat(parts).reindex(pd.Index(infusions["patient_id"], name="patient_id"))
    if rows.columns.equals(pd.Index(bundle.feature_columns)):
        return rows
    missing = [column for column in bundle.feature_columns if column not in rows.columns]
    if missing:
        raise ValueError(f"feature builders {list(bundle.builders)} no longer make column(s) {missing[:10]}")
    return rows.loc[:, list(bundle.feature_columns)]


def assign_risk_groups(relapse_incidence: np.ndarray, cutoffs: Sequence[float]) -> np.ndarray:
    """Risk group per patient from the relapse incidence at the risk-group horizon.

    Parameters
    ----------
    relapse_incidence : ndarray of float
    cutoffs : sequence of float
        Increasing cut-offs; one cut-off gives low / high, two give low / intermediate / high.

    Returns
    -------
    ndarray of str
    """
    n_cutoffs = len(cutoffs)
    middle = ("intermediate",) if n_cutoffs == 2 else tuple(f"intermediate_{i}" for i in range(1, n_cutoffs))
    labels = np.asarray(("low",) + middle + ("high",), dtype=object)
    return labels[np.searchsorted(np.asarray(cutoffs, dtype=float), relapse_incidence, side="right")]


def _top_factor_columns(bundle: ScoringBundle, X: pd.DataFrame) -> dict[str, np.ndarray]:
    """``top_factor_{i}`` (feature), ``_value``, ``_contribution`` (i = 1..k) and what they explain."""
    if bundle.n_top_factors == 0:
        return {}
    from models.explain import explain_relapse_risk, native_tree_explanation, top_factor_arrays  # shap: seconds

    explanation = native_tree_explanation(bundle.estimator, X)
    if explanation is None:
        explanation = explain_relapse_risk(bundle.estimator, X, horizon_days=bundle.explain_horizon_days,
                                           max_rows=len(X))
    if explanation.values.shape[0] != len(X):
        raise ValueError("models.explain did not explain every row")
    names, values, contributions = top_factor_arrays(explanation, bundle.n_top_factors)
    columns: dict[str, np.ndarray] = {}
    for rank in range(names.shape[1]):
        columns[f"top_factor_{rank + 1}"] = names[:, rank]
        columns[f"top_factor_{rank + 1}_value"] = values[:, rank]
        columns[f"top_factor_{rank + 1}_contribution"] = contributions[:, rank].astype(float)  # XGBoost: float32
    columns["top_factor_output"] = np.full(len(X), explanation.output, dtype=object)
    return columns


def _model_identity(bundle: ScoringBundle, n_rows: int) -> dict[str, np.ndarray]:
    identity = {
        "model_name": bundle.model_name,
        "model_version": bundle.model_version,
        "model_run_id": bundle.run_id,
        "estimator": bundle.estimator_name,
    }
    return {column: np.full(n_rows, value, dtype=object) for column, value in identity.items()}


def _no_scores(bundle: ScoringBundle) -> pd.DataFrame:
    """The output frame with no patient (every one quarantined): the example patient's scores without
    their row, so the columns and their types are those of any other output."""
    return score_request(bundle, pd.DataFrame([EXAMPLE_PATIENT])).iloc[:0].reset_index(drop=True)


def _score_columns(bundle: ScoringBundle, infusions: pd.DataFrame, measurements: pd.DataFrame,
                   as_of: np.ndarray) -> dict[str, np.ndarray]:
    """Output columns (name -> one value per patient) for validated tables with at least one patient."""
    X = _feature_matrix(bundle, infusions, measurements, as_of)
    cif = bundle.estimator.predict_cif(X, list(bundle.horizons_days))
    relapse = cif[relapse_column(bundle.risk_group_horizon_days)].to_numpy(dtype=float)
    return {
        "patient_id": infusions["patient_id"].astype(str).to_numpy(),
        "as_of_day": as_of,
        **dict(zip(cif.columns, cif.to_numpy(dtype=float).T)),
        "risk_group": assign_risk_groups(relapse, bundle.risk_group_cutoffs),
        **_top_factor_columns(bundle, X),
        **_model_identity(bundle, len(X)),
    }


def _score_valid(bundle: ScoringBundle, infusions: pd.DataFrame, measurements: pd.DataFrame,
                 as_of: np.ndarray) -> pd.DataFrame:
    """Output frame for validated tables (see :func:`score_tables`)."""
    if not len(infusions):
        return _no_scores(bundle)
    return pd.DataFrame(_score_columns(bundle, infusions, measurements, as_of))


def score_tables(
    bundle: ScoringBundle,
    infusions: pd.DataFrame,
    measurements: pd.DataFrame,
    as_of_day: float | pd.Series,
    on_error: str = "fail",
) -> ScoringResult:
    """Score patients given as raw contract tables, each as of its day.

    Parameters
    ----------
    bundle : ScoringBundle
    infusions, measurements : DataFrame
        Raw tables in the data contract (as read from files, or built from request records).
    as_of_day : float or Series
        Day of the prediction (days since infusion, >= 0), for all patients or per patient_id.
        Only measurements with ``day <= as_of_day`` are used.
    on_error : {"fail", "quarantine"}
        ``fail``: any contract violation raises :class:`ScoringInputError` naming it;
        ``quarantine``: offending rows (and patients) are left out and listed in the rejects.

    Returns
    -------
    ScoringResult
        Scores with columns ``patient_id``, ``as_of_day``, per horizon h ``cif_{cause}_{h}d``
        for each relapse phenotype, death and HSCT, ``cif_relapse_{h}d`` and
        ``event_free_{h}d``, then ``risk_group``, ``top_factor_{i}`` / ``_value`` /
        ``_contribution``, ``model_name``, ``model_version``, ``model_run_id``, ``estimator``.

    Raises
    ------
    ScoringInputError
        Input that cannot be scored (in ``fail`` mode, or a bad as-of day).
    """
    scores, quarantined = _scores_and_quarantine(bundle, infusions, measurements, as_of_day, on_error)
    return ScoringResult(scores=scores, rejects=_rejects_from_quarantine(quarantined))


def _scores_and_quarantine(bundle: ScoringBundle, infusions: pd.DataFrame, measurements: pd.DataFrame,
                           as_of_day: float | pd.Series, on_error: str) -> tuple[pd.DataFrame, dict]:
    """Scores of the valid patients and the quarantined rows per table (see :func:`score_tables`)."""
    infusions_valid, measurements_valid, quarantined = _validate(infusions, measurements, on_error)
    as_of = _as_of_days(infusions_valid["patient_id"].astype(str), as_of_day)
    return _score_valid(bundle, infusions_valid, measurements_valid, as_of), quarantined


def score_request(bundle: ScoringBundle, request: pd.DataFrame) -> pd.DataFrame:
    """Score a request (one row per patient, see :func:`request_to_tables`): one output row per patient, in order.

    Raises
    ------
    ScoringInputError
        A missing required field, a duplicate patient, or any contract violation, named.
    """
    if not len(request):
        raise ScoringInputError("no patients in the request")
    infusions, measurements, as_of_days = request_to_tables(request)
    if as_of_days.index.has_duplicates:
        duplicated = as_of_days.index[as_of_days.index.duplicated()].unique().tolist()[:5]
        raise ScoringInputError(f"duplicate patient_id in the request: {duplicated}")
    return _scores_and_quarantine(bundle, infusions, measurements, as_of_days, on_error="fail")[0]


# --- the served model: several requests in one call, answered as records ---------------------------------
_FIELD_NAMES = frozenset(spec.name for spec in REQUEST_FIELDS)
_MEASUREMENT_KEYS = frozenset(MEASUREMENT_FIELDS)


def _finite_day(value: Any) -> float | None:
    """A JSON number >= 0 as a float, else None (a boolean or a text is not a number here)."""
    return _day_number(value) if type(value) in (float, int) else None


def _request_columns(requests: Sequence[pd.DataFrame]) -> tuple[dict, dict, np.ndarray] | None:
    """Raw infusions and measurements of the requests as column lists, and the as-of days.

    None unless every request has every field, its measurements are lists of objects with known
    keys only, and its as-of days are numbers >= 0 (anything else takes the frame route, which
    names the problem). A key absent from a measurement object reads as None.
    """
    baseline = baseline_field_names()
    infusions: dict[str, list] = {name: [] for name in baseline}
    measurements: dict[str, list] = {name: [] for name in ("patient_id", *MEASUREMENT_FIELDS)}
    as_of: list[float] = []
    for request in requests:
        names = request.columns.tolist()
        if len(names) != len(_FIELD_NAMES) or set(names) != _FIELD_NAMES:
            return None
        position = {name: index for index, name in enumerate(names)}
        rows = request.to_numpy(dtype=object).tolist()
        for name in baseline:
            index = position[name]
            infusions[name].extend(row[index] for row in rows)
        id_at, day_at, entries_at = position["patient_id"], position["as_of_day"], position["measurements"]
        for row in rows:
            day, entries = _finite_day(row[day_at]), row[entries_at]
            if day is None or type(entries) is not list:
                return None
            as_of.append(day)
            for entry in entries:
                if type(entry) is not dict or not entry.keys() <= _MEASUREMENT_KEYS:
                    return None
                measurements["patient_id"].append(row[id_at])
                for name in MEASUREMENT_FIELDS:
                    measurements[name].append(entry.get(name))
    return infusions, measurements, np.asarray(as_of, dtype=float)


def _direct_tables(requests: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray] | None:
    """Validated tables and as-of days of certainly clean requests, built from their cells without raw
    frames (:func:`features.contract_fast.clean_small_columns`); None when the frame route must decide."""
    columns = _request_columns(requests)
    if columns is None:
        return None
    clean = clean_small_columns(columns[0], columns[1])
    return None if clean is None else (clean[0], clean[1], columns[2])


def answer_records(columns: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Output columns as answered: one JSON-ready record per patient, missing -> None (JSON null, not NaN).

    A list of plain records rather than a DataFrame: MLflow's DataFrame-to-JSON step costs about
    2 ms per request, ten times this. Values are those of ``DataFrame(columns).astype(object)``.
    """
    names = list(columns)
    cells = [np.asarray(columns[name]).tolist() for name in names]
    return [
        {name: None if value is None or (isinstance(value, float) and math.isnan(value)) else value
         for name, value in zip(names, row)}
        for row in zip(*cells)
    ]


def score_requests(bundle: ScoringBundle, requests: Sequence[pd.DataFrame]) -> list[list[dict[str, Any]]]:
    """Score several requests in one call: for each request, one answer record per patient, in order.

    Each record is the request's row of :func:`score_request` (the patients of one call are scored
    independently), as :func:`answer_records` gives it. Certainly clean requests are validated
    straight from their cells (:func:`_direct_tables`); any other goes the frame route
    (:func:`score_request` of the stacked requests), which alone names problems.

    Raises
    ------
    ScoringInputError
        As :func:`score_request`, for the stacked requests.
    """
    if not all(len(request) for request in requests):  # alone, each request gets its own answer or error
        raise ScoringInputError("no patients in the request")
    direct = _direct_tables(requests)
    if direct is not None:
        columns = _score_columns(bundle, *direct)
    else:
        scores = score_request(bundle, requests[0] if len(requests) == 1 else _concat_requests(list(requests)))
        columns = {name: scores[name].to_numpy() for name in scores.columns}
    records = answer_records(columns)
    answers, start = [], 0
    for request in requests:
        answers.append(records[start:start + len(request)])
        start += len(request)
    return answers


# --- concurrent requests ---------------------------------------------------------------------------------
class _Job:
    """One caller's request and, once scored, its answer or its error."""

    def __init__(self, request: Any):
        self.request = request
        self.finished = False
        self.answer: Any = None
        self.error: BaseException | None = None

    def finish(self, answer: Any = None, error: BaseException | None = None) -> None:
        self.answer, self.error, self.finished = answer, error, True

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.answer


_TEXT_FIELDS = tuple(spec.name for spec in REQUEST_FIELDS if spec.kind == "str")


def _concat_requests(requests: list[pd.DataFrame]) -> pd.DataFrame:
    """Requests stacked into one frame without changing what any text field reads as.

    ``pd.concat`` of an integer column with a float one turns 17 into 17.0, and a patient id (or
    any text field) sent as the number 17 would then read "17.0": an answer would depend on who
    else was in the batch. Numbers in number fields mean the same either way (the contract types
    them); a text field whose dtype differs between requests keeps the values as sent.
    """
    stacked = pd.concat(requests, ignore_index=True)
    for column in _TEXT_FIELDS:
        kinds = {str(request[column].dtype) for request in requests if column in request.columns}
        if len(kinds) > 1:
            stacked[column] = pd.Series(
                [value for request in requests
                 for value in (request[column].tolist() if column in request.columns else [None] * len(request))],
                dtype=object,
            )
    return stacked


class MicroBatcher:
    """Score concurrent callers together: one call for every request waiting at that moment.

    A scoring server runs requests in threads; most of the cost of scoring a few patients is
    per call (validation, model overheads), not per patient. The first caller to find the scorer
    idle scores everything queued so far in one call and hands each caller its own rows; callers
    arriving meanwhile wait and the next of them scores the next batch. Each patient's numbers do
    not depend on who else is in the batch (as batch scoring in chunks assumes). If a combined
    batch fails for any reason (one request's bad input, the same patient in two requests), each
    request is scored on its own, so every caller gets its own answer or its own error.

    Under concurrency the caller about to score waits up to ``linger_s`` for as many callers as
    were active around the previous call (those it scored plus those that queued while it ran):
    their requests are still being parsed in other threads, and one call for all of them costs
    far less than two. Counting the callers that queued during a call keeps k clients in one call
    each round, where waiting only for as many as the last call held locked them into two calls
    (2 + 2 for 4 clients). A lone caller never waits; when clients leave, one call waits in vain
    (at most ``linger_s``) and the next ones wait for fewer.

    Parameters
    ----------
    score : callable
        ``score(requests) -> answers``: one answer per request of the list, in order (e.g.
        ``functools.partial(score_requests, bundle)``).
    linger_s : float
        Longest wait for the other callers, seconds (0 = never wait).
    """

    def __init__(self, score: Callable[[list], list], linger_s: float = 0.0):
        self._score = score
        lock = threading.Lock()
        self._condition = threading.Condition(lock)  # waiting callers: a call finished
        self._enough_callers = threading.Condition(lock)  # the lingering caller: enough requests queued
        self._pending: list[_Job] = []
        self._busy = False
        self._linger_s = linger_s
        self._active_callers = 0
        self._lingering_for = 0  # callers the lingering caller waits for (0: nobody lingers)

    def __call__(self, request: Any) -> Any:
        """The answer to ``request`` (possibly scored together with other callers' requests)."""
        job = _Job(request)
        with self._condition:
            self._pending.append(job)
            if self._lingering_for and len(self._pending) >= self._lingering_for:
                self._enough_callers.notify()
            while self._busy and not job.finished:
                self._condition.wait()
            if job.finished:
                return job.outcome()
            self._busy = True
            self._linger()
            batch, self._pending = self._pending, []
        try:
            self._run(batch)
        finally:
            with self._condition:
                for unanswered in batch:  # only if scoring was interrupted (not by an Exception)
                    if not unanswered.finished:
                        unanswered.finish(error=RuntimeError("scoring was interrupted"))
                self._busy = False
                self._active_callers = len(batch) + len(self._pending)
                self._condition.notify_all()
        return job.outcome()

    def _linger(self) -> None:
        """Under concurrency (several callers around the last call), wait up to ``linger_s`` for that
        many callers before scoring; called holding the lock, which the wait releases."""
        expected = self._active_callers
        if not self._linger_s or expected < 2 or len(self._pending) >= expected:
            return
        self._lingering_for = expected
        try:
            self._enough_callers.wait_for(lambda: len(self._pending) >= expected, timeout=self._linger_s)
        finally:
            self._lingering_for = 0

    def _run(self, batch: list[_Job]) -> None:
        if len(batch) > 1:
            try:
                answers = list(self._score([job.request for job in batch]))
                if len(answers) != len(batch):
                    raise ValueError(f"{len(answers)} answers to {len(batch)} requests")
            except Exception:  # one request's problem (or a bug): each request alone below, with its own error
                pass
            else:
                for job, answer in zip(batch, answers):
                    job.finish(answer=answer)
                return
        for job in batch:
            try:
                job.finish(answer=self._score([job.request])[0])
            except Exception as error:
                job.finish(error=error)
