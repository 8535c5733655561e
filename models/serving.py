"""Scoring: patients in the data contract, as of a day -> one output row per patient.

This is the single code path behind both ways of scoring a fitted model: the MLflow pyfunc
(``pipelines/pyfunc_model.py``, request frames with a row per patient, :func:`score_requests`) and
batch scoring of a cohort folder (``pipelines/score.py``, raw tables, :func:`score_tables` /
:func:`score_validated`). Both validate with the one core of the data contract
(``features.contract.check_tables``), build features with the same builders and predict with
:func:`_score_columns`, so the served model and batch scoring give the same numbers for the same
patients. Nothing here reads files or touches MLflow.

Steps for a set of patients and their as-of days:

1. validate and normalise the raw tables with the data contract (``features.contract``);
2. build the feature rows each patient had at its as-of day (only data with ``day <= as_of_day``);
3. predict cumulative incidences at every horizon (relapse by phenotype, death, HSCT,
   event-free), assign the risk group from the relapse incidence at the risk-group horizon;
4. explain: the top contributing factors per patient.

A request has one row per patient: the fields of :data:`REQUEST_FIELDS`, generated from the
column declarations in ``features.schema`` (the infusions row), the as-of day, and the patient's
measurements as a list of objects with the measurements table's columns (or one object of
equal-length lists). The request parser (:func:`request_columns`) turns the patients of one or
more requests into the contract's column arrays, so every value is checked by the data contract
(a 2.5 sent for an integer field is refused by name, never truncated). One bad patient never
loses the others: :func:`score_requests` scores the good patients and answers each bad one with an
error record (its scores null, ``error`` naming each field and problem without the patient's
values); a request whose patients are all bad is refused as a whole.

A scoring server answers concurrent requests in threads; :class:`MicroBatcher` scores the
requests waiting at the same moment in one call (the cost of scoring a few patients is mostly per
call), each patient's numbers being independent of the batch.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.coercion import TypedColumn, typed_column
from features.contract import CheckedTables, ContractError, check_tables, validate_cohort
from features.eligibility import ELIGIBILITY_COLUMNS, eligibility_at
from features.registry import build_feature_rows
from features.schema import AS_OF_DAY, INFUSION_COLUMNS, MEASUREMENT_COLUMNS, ColumnSpec
from models.base import relapse_column

__all__ = [
    "RISK_GROUPS",
    "SERVING_LINGER_S",
    "REJECT_COLUMNS",
    "ERROR_COLUMN",
    "ScoringInputError",
    "RequestField",
    "MEASUREMENT_FIELDS",
    "REQUEST_FIELDS",
    "ScoringBundle",
    "ScoringResult",
    "EXAMPLE_PATIENT",
    "baseline_field_names",
    "RequestColumns",
    "request_columns",
    "tables_to_records",
    "assign_risk_groups",
    "check_as_of_days",
    "cohort_as_of_days",
    "with_eligibility",
    "rejects_of",
    "score_tables",
    "score_validated",
    "score_requests",
    "answer_records",
    "refusal",
    "score_request",
    "MicroBatcher",
]

RISK_GROUPS = ("low", "intermediate", "high")
SERVING_LINGER_S = 0.02
"""How long the served model's :class:`MicroBatcher` waits for concurrent callers (seconds). Measured
with ``benchmarks.bench_serving`` (8 clients, 2 workers, 2 cores, 3 x 800 requests): median 53.7 ms
at 0.01 s, 42.7-45.1 ms at 0.02 s (two runs)."""
REJECT_COLUMNS = ("table", "row", "patient_id", "reason")
ERROR_COLUMN = "error"
"""Answer field of the served model: null for a scored patient; for a patient that cannot be scored,
each field at fault and its problem (``measurements[3].value: cannot parse the lab value``)."""


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
    spec : ColumnSpec or None
        The data contract's declaration of the field (allowed values, range, missingness); None
        for ``measurements``, whose entries follow ``features.schema.MEASUREMENT_COLUMNS``.
    """

    name: str
    kind: str
    required: bool
    meaning: str
    spec: ColumnSpec | None = None


MEASUREMENT_FIELDS: tuple[str, ...] = tuple(spec.name for spec in MEASUREMENT_COLUMNS if spec.name != "patient_id")
"""Keys of one measurement object in a request (the measurements table without ``patient_id``)."""

REQUEST_FIELDS: tuple[RequestField, ...] = (
    *(RequestField(spec.name, "str" if spec.kind == "category" else spec.kind, spec.required, spec.meaning, spec)
      for spec in INFUSION_COLUMNS),
    RequestField(AS_OF_DAY.name, AS_OF_DAY.kind, True, AS_OF_DAY.meaning, AS_OF_DAY),
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


# --- the request parser: requests -> the contract's column arrays --------------------------------------
_FIELD_NAMES = tuple(spec.name for spec in REQUEST_FIELDS)
_REQUIRED_FIELDS = tuple(spec.name for spec in REQUEST_FIELDS if spec.required)
_MEASUREMENT_KEYS = frozenset(MEASUREMENT_FIELDS)
_SEQUENCES = (list, tuple, np.ndarray)
_MEASUREMENTS_SHAPE = ("must be a list of measurement objects (may be empty) or an object of equal-length lists")


@dataclass(frozen=True)
class RequestColumns:
    """The patients of one or more requests as the data contract's column arrays.

    Attributes
    ----------
    infusions : dict of str to numpy.ndarray
        Every infusions column (object arrays, cells as sent; an absent optional field is None).
    as_of_day : numpy.ndarray
        The as-of day cells, as sent.
    measurements : dict of str to numpy.ndarray
        ``patient_id`` (the patient's cell) and every measurement field, one row per measurement.
    owner, entry : numpy.ndarray of int
        Per measurement row: the patient's position and the row's index in that patient's list.
    problems : dict of int to list of str
        Patient position -> problems of the request's shape (``measurements: must be a list ...``);
        such a patient contributes no measurement rows.
    """

    infusions: dict[str, np.ndarray]
    as_of_day: np.ndarray
    measurements: dict[str, np.ndarray]
    owner: np.ndarray
    entry: np.ndarray
    problems: dict[int, list[str]]

    @property
    def n_patients(self) -> int:
        return len(self.as_of_day)


def _check_request(request: pd.DataFrame) -> None:
    """Raise :class:`ScoringInputError` when a required field is absent or there is no patient."""
    missing = [name for name in _REQUIRED_FIELDS if name not in request.columns]
    if missing:
        raise ScoringInputError(f"request is missing field(s) {', '.join(missing)} "
                                "(required by the data contract; send null for an unknown value)")
    if not len(request):
        raise ScoringInputError("no patients in the request")


def _field_matrix(request: pd.DataFrame) -> np.ndarray:
    """The request's cells as objects, one column per field of :data:`REQUEST_FIELDS` (None when absent)."""
    _check_request(request)
    names = list(request.columns)
    position = {name: index for index, name in enumerate(names)}
    cells = np.concatenate([request.to_numpy(dtype=object), np.full((len(request), 1), None, dtype=object)], axis=1)
    return cells[:, [position.get(name, len(names)) for name in _FIELD_NAMES]]


def _unknown_keys(keys: Any) -> str | None:
    unknown = sorted(map(str, set(keys) - _MEASUREMENT_KEYS))
    return None if not unknown else (f"unknown measurement field(s) {', '.join(unknown)} "
                                     f"(known: {', '.join(MEASUREMENT_FIELDS)})")


def _patient_measurements(cell: Any) -> tuple[dict[str, Sequence], int] | str:
    """One patient's measurements as columns (field -> cells) and their number, or the shape problem."""
    if isinstance(cell, dict):  # column form: one object of equal-length lists
        if (unknown := _unknown_keys(cell)) is not None:
            return f"measurements: {unknown}"
        lengths = [len(value) if isinstance(value, _SEQUENCES) else -1 for value in cell.values()]
        if min(lengths, default=0) < 0 or len(set(lengths)) > 1:
            return "measurements: in column form, each field must be a list, all of one length"
        count = lengths[0] if lengths else 0
        return {name: cell[name] if name in cell else [None] * count for name in MEASUREMENT_FIELDS}, count
    if not isinstance(cell, _SEQUENCES):
        return f"measurements: {_MEASUREMENTS_SHAPE}"
    for index, entry in enumerate(cell):  # the list form: each entry an object with known keys
        if not isinstance(entry, dict):
            return f"measurements[{index}]: must be an object with keys {', '.join(MEASUREMENT_FIELDS)}"
        if (unknown := _unknown_keys(entry)) is not None:
            return f"measurements[{index}]: {unknown}"
    return {name: [entry.get(name) for entry in cell] for name in MEASUREMENT_FIELDS}, len(cell)


def request_columns(requests: Sequence[pd.DataFrame]) -> RequestColumns:
    """Parse requests (one row per patient each) into the data contract's column arrays.

    Parameters
    ----------
    requests : sequence of pandas.DataFrame
        Request frames as the MLflow scoring server hands them over (``pd.DataFrame(records)``
        for request records); their patients are stacked in order.

    Returns
    -------
    RequestColumns

    Raises
    ------
    ScoringInputError
        A request lacks a required field or has no patient.
    """
    fields = np.concatenate([_field_matrix(request) for request in requests])
    column = {name: fields[:, index] for index, name in enumerate(_FIELD_NAMES)}
    measurements: dict[str, list] = {name: [] for name in MEASUREMENT_FIELDS}
    counts, problems = np.zeros(len(fields), dtype=np.int64), {}
    for patient, cell in enumerate(column["measurements"]):
        found = _patient_measurements(cell)
        if isinstance(found, str):
            problems[patient] = [found]
            continue
        cells, counts[patient] = found
        for name in MEASUREMENT_FIELDS:
            measurements[name].extend(cells[name])
    owner = np.repeat(np.arange(len(fields)), counts)
    starts = np.cumsum(counts) - counts
    return RequestColumns(
        infusions={name: column[name] for name in baseline_field_names()},
        as_of_day=column["as_of_day"],
        measurements={"patient_id": column["patient_id"][owner],
                      **{name: _objects(measurements[name]) for name in MEASUREMENT_FIELDS}},
        owner=owner,
        entry=np.arange(len(owner)) - starts[owner],
        problems=problems,
    )


def _objects(cells: list) -> np.ndarray:
    """A list of cells as a 1-D object array (a cell that is itself a list stays one cell)."""
    return np.fromiter(cells, dtype=object, count=len(cells))


def _plain(value: Any) -> Any:
    """A JSON-ready Python scalar (NaN / NA -> None, numpy scalars -> Python)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def tables_to_records(
    infusions: pd.DataFrame, measurements: pd.DataFrame, as_of_day: float, measurement_form: str = "records"
) -> list[dict[str, Any]]:
    """Request records (plain dicts, JSON-ready) for every patient of raw contract tables.

    The inverse of :func:`request_columns`: used to build requests for the served model from
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


def check_as_of_days(days: Any) -> np.ndarray:
    """As-of days as floats, each checked by the contract's declaration (``features.schema.AS_OF_DAY``).

    Parameters
    ----------
    days : array-like
        One as-of day per patient (numbers or text).

    Returns
    -------
    numpy.ndarray of float

    Raises
    ------
    ScoringInputError
        A day that is missing, not a number or out of range (the first is named).
    """
    column = typed_column(AS_OF_DAY, np.asarray(days, dtype=object))
    if column.problems:
        raise ScoringInputError(f"as_of_day: {column.problems[0].reasons[0]}")
    return np.asarray(column.values, dtype=float)


def _with_as_of_column(infusions: pd.DataFrame, as_of_day: float | pd.Series) -> tuple[pd.DataFrame, str | None]:
    """Infusions and the name of their as-of day column for the data contract to check.

    One day needs no column (:func:`cohort_as_of_days` checks it: a bad one is a usage error, not a
    patient's); a Series indexed by ``patient_id`` becomes the column ``as_of_day`` (a patient
    absent from it has a missing as-of day, which the contract names).
    """
    if not isinstance(as_of_day, pd.Series):
        return infusions, None
    days = pd.Series(as_of_day.to_numpy(dtype=object), index=as_of_day.index.astype(str))
    if not days.index.is_unique:
        raise ScoringInputError(f"as_of_day: patient_id(s) given twice, e.g. {days.index[days.index.duplicated()][:3].tolist()}")
    if AS_OF_DAY.name in infusions.columns:
        raise ScoringInputError(f"as_of_day: infusions already has a column {AS_OF_DAY.name!r}; give the as-of days "
                                "in that column or in the Series, not both")
    cells = days.reindex(infusions["patient_id"].astype(str).to_numpy()).to_numpy(dtype=object)
    return infusions.assign(**{AS_OF_DAY.name: cells}), AS_OF_DAY.name


def cohort_as_of_days(infusions: pd.DataFrame, as_of_day: float | None = None,
                      as_of_day_column: str | None = None) -> np.ndarray:
    """The as-of day of each patient of a validated cohort: one day for all, or the checked column.

    Parameters
    ----------
    infusions : DataFrame
        ``ValidatedCohort.infusions``; with ``as_of_day_column`` validated with that column
        (``features.contract.validate_cohort(..., as_of_day_column=...)``), so every value is checked.
    as_of_day : float, optional
        The day of every patient (checked here).
    as_of_day_column : str, optional
        The infusions column holding each patient's day (exactly one of the two is given).

    Returns
    -------
    ndarray of float
    """
    if (as_of_day is None) == (as_of_day_column is None):
        raise ValueError("give exactly one of as_of_day and as_of_day_column")
    if as_of_day_column is not None:
        return infusions[as_of_day_column].to_numpy(dtype=float)
    return np.full(len(infusions), check_as_of_days([as_of_day])[0])


def with_eligibility(scores: pd.DataFrame, outcomes: pd.DataFrame | None) -> pd.DataFrame:
    """Scores with ``eligible`` and ``eligibility_reason`` after ``as_of_day`` (``features.eligibility``).

    Parameters
    ----------
    scores : DataFrame
        Output of :func:`score_validated` (``patient_id``, ``as_of_day``, ...).
    outcomes : DataFrame or None
        Validated outcomes of the same cohort; None: every patient ``unknown`` ("no outcomes table").

    Returns
    -------
    DataFrame
    """
    judged = eligibility_at(outcomes, scores["patient_id"], scores["as_of_day"].to_numpy(dtype=float))
    at = scores.columns.get_loc("as_of_day") + 1
    scores = scores.copy()
    for offset, column in enumerate(ELIGIBILITY_COLUMNS):
        scores.insert(at + offset, column, judged[column].to_numpy(dtype=object))
    return scores


def rejects_of(quarantined: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One reject line per quarantined row of validated tables (``ValidatedCohort.quarantined``).

    Returns
    -------
    DataFrame
        :data:`REJECT_COLUMNS`: table, row (as the contract numbers it), patient_id, reason.
    """
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


def score_validated(bundle: ScoringBundle, infusions: pd.DataFrame, measurements: pd.DataFrame,
                    as_of: np.ndarray) -> pd.DataFrame:
    """Scores of validated tables (``ValidatedCohort.infusions`` / ``.measurements``), one row per patient.

    Parameters
    ----------
    bundle : ScoringBundle
    infusions, measurements : DataFrame
        Typed infusions and normalised measurements of the data contract (any number of patients).
    as_of : ndarray of float
        As-of day of each patient (see :func:`check_as_of_days`).

    Returns
    -------
    DataFrame
        See :func:`score_tables`.
    """
    if not len(infusions):
        return _no_scores(bundle)
    return pd.DataFrame(_score_columns(bundle, infusions, measurements, as_of))


def score_tables(
    bundle: ScoringBundle,
    infusions: pd.DataFrame,
    measurements: pd.DataFrame,
    as_of_day: float | pd.Series,
    on_error: str = "fail",
    outcomes: pd.DataFrame | None = None,
) -> ScoringResult:
    """Score patients given as raw contract tables, each as of its day.

    Parameters
    ----------
    bundle : ScoringBundle
    infusions, measurements : DataFrame
        Raw tables in the data contract (as read from files).
    as_of_day : float or Series
        Day of the prediction (days since infusion, in [0, 7300]), for all patients or per
        patient_id (a Series: each day is checked by the data contract like a column of the
        patient's infusions row; a bad or missing one is a contract violation of the patient).
        Only measurements with ``day <= as_of_day`` are used.
    on_error : {"fail", "quarantine"}
        ``fail``: any contract violation raises :class:`ScoringInputError` naming it;
        ``quarantine``: offending rows (and patients) are left out and listed in the rejects.
    outcomes : DataFrame, optional
        Raw outcomes table: validated with the others, and each patient's eligibility at its
        as-of day added (:func:`with_eligibility`).

    Returns
    -------
    ScoringResult
        Scores with columns ``patient_id``, ``as_of_day`` (with ``outcomes``: then ``eligible``
        and ``eligibility_reason``), per horizon h ``cif_{cause}_{h}d``
        for each relapse phenotype, death and HSCT, ``cif_relapse_{h}d`` and
        ``event_free_{h}d``, then ``risk_group``, ``top_factor_{i}`` / ``_value`` /
        ``_contribution``, ``model_name``, ``model_version``, ``model_run_id``, ``estimator``.

    Raises
    ------
    ScoringInputError
        Input that cannot be scored (in ``fail`` mode, or a bad as-of day).
    """
    infusions, column = _with_as_of_column(infusions, as_of_day)
    try:
        cohort = validate_cohort(infusions, measurements, outcomes, on_error=on_error, as_of_day_column=column)
    except ContractError as exc:
        raise ScoringInputError(str(exc)) from None
    as_of = cohort_as_of_days(cohort.infusions, None if column else float(as_of_day), column)
    scores = score_validated(bundle, cohort.infusions.drop(columns=column or []), cohort.measurements, as_of)
    if outcomes is not None:
        scores = with_eligibility(scores, cohort.outcomes)
    return ScoringResult(scores=scores, rejects=rejects_of(cohort.quarantined))


# --- the served model: the patients of several requests in one call --------------------------------------
@dataclass(frozen=True)
class _ScoredPatients:
    """Scores of the patients that could be scored, and the problems of the others."""

    columns: dict[str, np.ndarray] | None
    errors: list[str | None]
    patient_ids: np.ndarray


def _patient_errors(parsed: RequestColumns, checked: CheckedTables, as_of: TypedColumn) -> list[str | None]:
    """Each patient's problems as ``field: problem`` (no patient value), None for a patient without any."""
    messages = [list(parsed.problems.get(patient, ())) for patient in range(parsed.n_patients)]
    for problem in as_of.problems:
        for row in problem.rows.tolist():
            messages[row].append(f"{AS_OF_DAY.name}: {problem.detail}")
    problems = checked.problems
    if not len(problems) and not parsed.problems and not as_of.problems:  # the usual case
        return [None] * parsed.n_patients
    for table, position, column, detail in problems[["table", "position", "column", "detail"]].itertuples(index=False):
        if table == "infusions":
            messages[position].append(f"{column}: {detail}")
        elif column != "patient_id":  # a measurement's patient_id is the patient's own, judged on its row
            messages[parsed.owner[position]].append(f"measurements[{parsed.entry[position]}].{column}: {detail}")
    return ["; ".join(dict.fromkeys(found)) if found else None for found in messages]


def _shared_patient_ids(checked: CheckedTables, request_of: np.ndarray) -> bool:
    """Whether a patient id appears in more than one of the requests (not a duplicate within one)."""
    problems = checked.problems
    if not len(problems):
        return False
    duplicated = problems.loc[(problems["table"] == "infusions") & (problems["kind"] == "duplicate patient_id"),
                              "position"].to_numpy(dtype=np.int64)
    if not len(duplicated):
        return False
    owners = pd.DataFrame({"id": checked.typed["infusions"]["patient_id"][duplicated],
                           "request": request_of[duplicated]})
    return bool(owners.groupby("id")["request"].nunique().gt(1).any())


def _score_patients(bundle: ScoringBundle, parsed: RequestColumns, request_of: np.ndarray) -> _ScoredPatients | None:
    """Check every patient with the data contract and score those without a problem.

    None when a patient id appears in two of the requests: requests are then scored one by one
    (each patient must be one row of the feature builders).
    """
    checked = check_tables({"infusions": parsed.infusions, "measurements": parsed.measurements},
                           {"infusions": parsed.n_patients, "measurements": len(parsed.owner)},
                           {"infusions": "request", "measurements": "request"})
    if _shared_patient_ids(checked, request_of):
        return None
    as_of = typed_column(AS_OF_DAY, parsed.as_of_day)
    errors = _patient_errors(parsed, checked, as_of)
    scored = np.array([error is None for error in errors], dtype=bool)
    columns = None
    if scored.any():
        keep = scored[parsed.owner] & ~checked.collapsed
        columns = _score_columns(bundle, checked.typed_frame("infusions", scored), checked.measurements_frame(keep),
                                 np.asarray(as_of.values, dtype=float)[scored])
    return _ScoredPatients(columns, errors, checked.typed["infusions"]["patient_id"])


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


def _patient_records(scored: _ScoredPatients) -> list[dict[str, Any]]:
    """One record per patient in order: its scores and ``error`` None, or ``patient_id``, the scores
    null and ``error`` naming the problems."""
    good = iter(answer_records(scored.columns)) if scored.columns is not None else iter(())
    blank = dict.fromkeys(scored.columns or ("patient_id",))
    records = []
    for patient, error in enumerate(scored.errors):
        if error is None:
            records.append({**next(good), ERROR_COLUMN: None})
        else:
            records.append({**blank, "patient_id": scored.patient_ids[patient], ERROR_COLUMN: error})
    return records


def refusal(records: Sequence[Mapping[str, Any]]) -> ScoringInputError:
    """The error of a request with patients that cannot be scored: their positions in the request and
    their problems (field and problem, never a patient value).

    Parameters
    ----------
    records : sequence of dict
        A request's answer records (see :func:`score_requests`).

    Returns
    -------
    ScoringInputError
    """
    bad = [(position, record[ERROR_COLUMN]) for position, record in enumerate(records) if record[ERROR_COLUMN]]
    head = ("no patient of the request can be scored" if len(bad) == len(records)
            else f"{len(bad)} of {len(records)} patient(s) of the request cannot be scored")
    shown = " | ".join(f"patient at position {position}: {error}" for position, error in bad[:20])
    return ScoringInputError(f"{head}: {shown}" + (f" | ... and {len(bad) - 20} more" if len(bad) > 20 else ""))


def score_requests(bundle: ScoringBundle, requests: Sequence[pd.DataFrame], refuse_unscorable: bool = True) -> list[Any]:
    """Score several requests in one call: for each request, one answer record per patient, in order.

    A patient that cannot be scored is answered with an error record (``patient_id`` as typed,
    scores null, :data:`ERROR_COLUMN` naming each field and problem); the others are scored as if
    alone. A request is answered with a :class:`ScoringInputError` instead of records when it lacks
    a required field, has no patient, or (with ``refuse_unscorable``) none of its patients can be
    scored (:func:`refusal`).

    Parameters
    ----------
    bundle : ScoringBundle
    requests : sequence of DataFrame
        Request frames (one row per patient).
    refuse_unscorable : bool
        Refuse a request none of whose patients can be scored (an HTTP client gets a 400). False
        answers it with its error records, as batch callers need (a Spark batch of bad patients).

    Returns
    -------
    list
        Per request: a list of records (each with :data:`ERROR_COLUMN`), or a ScoringInputError.
    """
    answers: list[Any] = [None] * len(requests)
    valid = []
    for index, request in enumerate(requests):
        try:
            _check_request(request)
            valid.append(index)
        except ScoringInputError as error:  # alone, each request gets its own answer or error
            answers[index] = error
    if not valid:
        return answers
    lengths = [len(requests[index]) for index in valid]
    scored = _score_patients(bundle, request_columns([requests[index] for index in valid]),
                             np.repeat(np.arange(len(valid)), lengths))
    if scored is None:  # a patient in two of the requests: each request on its own
        for index in valid:
            answers[index] = score_requests(bundle, [requests[index]], refuse_unscorable)[0]
        return answers
    records, start = _patient_records(scored), 0
    for index, length in zip(valid, lengths):
        own = records[start:start + length]
        scorable = not refuse_unscorable or any(record[ERROR_COLUMN] is None for record in own)
        answers[index] = own if scorable else refusal(own)
        start += length
    return answers


def score_request(bundle: ScoringBundle, request: pd.DataFrame) -> pd.DataFrame:
    """Score a request strictly: every patient scored (one output row each, in order), or an error.

    Raises
    ------
    ScoringInputError
        A missing required field, a duplicate patient, or any contract violation, named by the
        patient's position in the request and the field (see :func:`refusal`).
    """
    parsed = request_columns([request])
    scored = _score_patients(bundle, parsed, np.zeros(parsed.n_patients, dtype=np.int64))
    assert scored is not None  # one request: no patient id can be in two requests
    if scored.columns is None or any(error is not None for error in scored.errors):
        raise refusal(_patient_records(scored))
    return pd.DataFrame(scored.columns)


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

    def finish_with(self, answer: Any) -> None:
        """Finish with the scorer's answer to this request, which may be the request's own error."""
        if isinstance(answer, BaseException):
            self.finish(error=answer)
        else:
            self.finish(answer=answer)

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.answer


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
            except Exception:  # a failure of the combined call (a bug): each request alone below, with its own error
                pass
            else:
                for job, answer in zip(batch, answers):
                    job.finish_with(answer)
                return
        for job in batch:
            try:
                job.finish_with(self._score([job.request])[0])
            except Exception as error:
                job.finish(error=error)
