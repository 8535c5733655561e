"""Scoring: patients in the data contract, as of a day -> one output row per patient.

This is the single code path behind both ways of scoring a fitted model: the MLflow pyfunc
(``pipelines/pyfunc_model.py``, one request of typed :class:`PatientRecord` objects) and batch
scoring of a cohort folder (``pipelines/score.py``, chunks of raw tables). Both end in
:func:`score_tables`, so the served model and batch scoring give the same numbers for the same
patients. Nothing here reads files or touches MLflow.

Steps for a set of patients and their as-of days:

1. validate and normalise the raw tables with the data contract (``features.contract``);
2. build the feature rows each patient had at its as-of day (only data with ``day <= as_of_day``);
3. predict cumulative incidences at every horizon (relapse by phenotype, death, HSCT,
   event-free), assign the risk group from the relapse incidence at the risk-group horizon;
4. explain: the top contributing factors per patient.

The request types (:class:`PatientRecord`, :class:`MeasurementRecord`) are generated from the
column declarations in ``features.schema``, so the served signature follows the data contract:
every numeric field is a float (or an integer where the contract declares an integer, which then
rejects 2.5 instead of truncating it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, create_model

from features.schema import INFUSION_COLUMNS, MEASUREMENT_COLUMNS, ColumnSpec

__all__ = [
    "RISK_GROUPS",
    "ID_OUTPUT_COLUMNS",
    "ScoringInputError",
    "MeasurementRecord",
    "PatientRecord",
    "ScoringBundle",
    "ScoringResult",
    "EXAMPLE_PATIENT",
    "baseline_field_names",
    "records_to_tables",
    "tables_to_records",
    "assign_risk_groups",
    "score_tables",
    "score_records",
]

RISK_GROUPS = ("low", "intermediate", "high")
ID_OUTPUT_COLUMNS = ("patient_id", "as_of_day")


class ScoringInputError(ValueError):
    """Input that cannot be scored; the message names the patient, field and reason."""


# --- request types, generated from the data contract ---------------------------------------------
_PYTHON_TYPE_BY_KIND: dict[str, Any] = {
    "str": str,
    "category": str,
    "float": float,
    "int": int,
    "bool": bool,
    "text_or_number": Union[str, float],
}


def _field(spec: ColumnSpec) -> tuple[Any, Any]:
    """(annotation, FieldInfo) of one contract column as a request field."""
    python_type = _PYTHON_TYPE_BY_KIND[spec.kind]
    if spec.nullable or not spec.required:
        return Optional[python_type], Field(None, description=spec.meaning)
    return python_type, Field(..., description=spec.meaning)


_STRICT_RECORD = ConfigDict(extra="forbid")

MeasurementRecord = create_model(
    "MeasurementRecord",
    __config__=_STRICT_RECORD,
    __doc__="One measurement result, as the lab wrote it (see the measurements table).",
    **{spec.name: _field(spec) for spec in MEASUREMENT_COLUMNS if spec.name != "patient_id"},
)

PatientRecord = create_model(
    "PatientRecord",
    __config__=_STRICT_RECORD,
    __doc__=(
        "One patient to score: the infusions row (baseline fields), the day the prediction is "
        "made (as_of_day, days since infusion) and every measurement known so far. A baseline "
        "field whose column is required by the contract must be present (null = missing value)."
    ),
    as_of_day=(float, Field(..., description="prediction day, days since infusion (>= 0)")),
    measurements=(list[MeasurementRecord], Field(..., description="measurements (may be empty)")),
    **{spec.name: _field(spec) for spec in INFUSION_COLUMNS},
)


def baseline_field_names(required_only: bool = False) -> tuple[str, ...]:
    """Infusions columns carried by a :class:`PatientRecord` (optionally only required ones)."""
    return tuple(spec.name for spec in INFUSION_COLUMNS if spec.required or not required_only)


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


# --- conversions between request records and contract tables ---------------------------------------
def _check_required_fields(record: BaseModel) -> None:
    missing = [name for name in baseline_field_names(required_only=True) if name not in record.model_fields_set]
    if missing:
        raise ScoringInputError(
            f"patient {record.patient_id}: missing field(s) {', '.join(missing)} "
            "(required by the data contract; send null for an unknown value)"
        )


def records_to_tables(records: Sequence[BaseModel]) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Raw ``infusions`` and ``measurements`` tables (and as-of days) from request records.

    Parameters
    ----------
    records : sequence of PatientRecord

    Returns
    -------
    infusions : DataFrame
        One row per patient, every infusions column of the contract (missing = None).
    measurements : DataFrame
        One row per measurement, raw as sent (``value`` keeps text or number).
    as_of_days : Series
        Float days indexed by patient_id.

    Raises
    ------
    ScoringInputError
        A required baseline field is absent.
    """
    for record in records:
        _check_required_fields(record)
    baseline = list(baseline_field_names())
    infusions = pd.DataFrame([{name: getattr(r, name) for name in baseline} for r in records], columns=baseline)
    measurement_columns = ["patient_id"] + [spec.name for spec in MEASUREMENT_COLUMNS if spec.name != "patient_id"]
    rows = [
        {"patient_id": r.patient_id, **m.model_dump()} for r in records for m in r.measurements
    ]
    measurements = pd.DataFrame(rows, columns=measurement_columns)
    as_of_days = pd.Series(
        [float(r.as_of_day) for r in records], index=pd.Index([r.patient_id for r in records], name="patient_id"),
        name="as_of_day",
    )
    return infusions, measurements, as_of_days


def _plain(value: Any) -> Any:
    """A JSON-ready Python scalar (NaN / NA -> None, numpy scalars -> Python)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def tables_to_records(
    infusions: pd.DataFrame, measurements: pd.DataFrame, as_of_day: float
) -> list[dict[str, Any]]:
    """Request records (plain dicts, JSON-ready) for every patient of raw contract tables.

    The inverse of :func:`records_to_tables`: used to build requests for the served model from
    a cohort folder (tests, benchmarks, the docs' examples).
    """
    baseline = [c for c in baseline_field_names() if c in infusions.columns]
    measurement_columns = [s.name for s in MEASUREMENT_COLUMNS if s.name != "patient_id" and s.name in measurements]
    by_patient = {pid: rows for pid, rows in measurements.groupby("patient_id", sort=False)}
    records = []
    for row in infusions[baseline].itertuples(index=False):
        record = {name: _plain(value) for name, value in zip(baseline, row)}
        rows = by_patient.get(record["patient_id"], measurements.iloc[:0])
        record["as_of_day"] = float(as_of_day)
        record["measurements"] = [
            {name: _plain(value) for name, value in zip(measurement_columns, m)}
            for m in rows[measurement_columns].itertuples(index=False)
        ]
        records.append(record)
    return records
