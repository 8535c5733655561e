"""A fast, accept-only path through the data contract for a few clean patients.

Scoring a few patients (the served model gets 1-16 per call) spent almost all of
:func:`features.contract.validate_cohort`'s time in pandas and pandera overhead on tiny frames.
:func:`clean_small_cohort` checks the same declarations (``features.schema``: column kinds,
allowed values, ranges, missingness) and normalises lab values (the scalar twin in
``features.labtext``) cell by cell on plain Python lists, then builds each output frame once.

It is *accept-only*: it either proves that the tables are clean and returns exactly the frames the
full path would return (values, dtypes, column order, index), or it returns None and the full
path runs, which alone reports problems and quarantines rows. It returns None for anything it is
not certain about:

- tables over :data:`MAX_INFUSION_ROWS` / :data:`MAX_MEASUREMENT_ROWS` rows (the full path is
  vectorised and its fixed cost no longer dominates there), or without any patient;
- a column set it does not handle: a missing required column, an unknown extra column, duplicate
  or non-text column names (absent optional columns are handled);
- a column dtype other than object, numpy numbers (int / float kinds) or bool, and pandas'
  ``Int64`` / ``boolean`` for integer / boolean columns;
- a cell that does not coerce, is missing where not allowed, not allowed or out of range; a text
  number outside the plain decimal forms whose value is certain
  (:func:`features.labtext.exact_plain_number`), a negative zero, an integer beyond 2**53;
- a lab value with an error or anything unusual (:func:`features.labtext.normalise_clean_lab_value`);
- duplicate patient ids, measurements of a patient without an infusions row;
- schemas with checks this module does not replicate (decided once, at import).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from features.labtext import MAX_EXACT_INTEGER, CleanLabValue, exact_plain_number, normalise_clean_lab_value
from features.schema import COLUMNS_BY_TABLE, SCHEMA_BY_TABLE, ColumnSpec

__all__ = [
    "MAX_INFUSION_ROWS",
    "MAX_MEASUREMENT_ROWS",
    "BOOL_WORDS",
    "clean_small_cohort",
    "clean_small_columns",
]

MAX_INFUSION_ROWS = 64
"""Largest infusions table (patients) the fast path takes."""
MAX_MEASUREMENT_ROWS = 4000
"""Largest measurements table the fast path takes (about 250 rows per patient for 16 patients)."""

BOOL_WORDS: dict[str, bool] = {
    "true": True, "t": True, "yes": True, "y": True, "1": True, "1.0": True,
    "false": False, "f": False, "no": False, "n": False, "0": False, "0.0": False,
}
"""Text of a boolean cell (after stripping blanks and lower-casing) -> value; shared by both paths."""

# what each kind of column becomes (the full path's coercion); a declared dtype that differs means
# the full path would reject or fail, so the fast path never runs for that table
_OUTPUT_DTYPE_BY_KIND = {"str": "object", "float": "float64", "int": "Int64", "bool": "boolean", "text_or_number": None}
_COLUMN_CHECKS = {"is_text", "not_allowed", "out_of_range"}  # what _check_cells replicates
_NORMALISED_FRAME_CHECKS = {  # guaranteed by normalise_clean_lab_value
    "unit_matches_assay", "value_within_unit_bound", "censored_value_is_limit", "loq_is_censored",
}


class _Defer(Exception):
    """Not certain: the full path must decide."""


# --- cells ----------------------------------------------------------------------------------------
def _is_missing(value: Any) -> bool:
    return value is None or (type(value) is float and math.isnan(value))


def _text_cell(value: Any) -> Any:
    """A text cell as the full path keeps it (missing cells unchanged)."""
    if type(value) is str or _is_missing(value):
        return value
    raise _Defer


def _number_cell(value: Any) -> float:
    """A number cell as ``pd.to_numeric`` makes it (NaN when missing)."""
    kind = type(value)
    if kind is float:
        if math.isinf(value) or (value == 0 and math.copysign(1.0, value) < 0):
            raise _Defer
        return value
    if kind is int and abs(value) <= MAX_EXACT_INTEGER:
        return float(value)
    if kind is str:
        number = exact_plain_number(value)
        if number is not None:
            return number
    if value is None:
        return math.nan
    raise _Defer


def _int_cell(value: Any) -> int | None:
    number = _number_cell(value)
    if math.isnan(number):
        return None
    if not number.is_integer() or abs(number) > MAX_EXACT_INTEGER:
        raise _Defer
    return int(number)


def _bool_cell(value: Any) -> bool | None:
    if type(value) is bool:
        return value
    if _is_missing(value):
        return None
    if type(value) in (str, int, float):
        word = BOOL_WORDS.get(str(value).strip().lower())
        if word is not None:
            return word
    raise _Defer


def _raw_cell(value: Any) -> Any:
    """A lab ``value`` cell: kept as given (the lab-value step judges it)."""
    return value


# --- columns --------------------------------------------------------------------------------------
def _plain_values(series: pd.Series, kind: str) -> list:
    """The column's cells as Python objects, for the dtypes whose cells the full path reads alike."""
    dtype = series.dtype
    if dtype == np.dtype(object):
        return series.tolist()
    if isinstance(dtype, np.dtype):
        numeric = dtype.kind in "fi" and kind in ("float", "int", "text_or_number")
        empty_text = dtype.kind == "f" and kind == "str" and bool(series.isna().all())
        if numeric or empty_text or (dtype.kind == "b" and kind == "bool"):
            return series.tolist()
    elif (isinstance(dtype, pd.Int64Dtype) and kind == "int") or (
        isinstance(dtype, pd.BooleanDtype) and kind == "bool"
    ):
        return [None if value is pd.NA else value for value in series.tolist()]
    raise _Defer


_CELL_BY_KIND: dict[str, Callable[[Any], Any]] = {
    "str": _text_cell,
    "float": _number_cell,
    "int": _int_cell,
    "bool": _bool_cell,
    "text_or_number": _raw_cell,
}


def _check_cells(spec: ColumnSpec, cells: list) -> None:
    """Missingness, allowed values and range of typed cells (the column's pandera checks)."""
    present = [value for value in cells if not _is_missing(value)]
    if len(present) < len(cells) and not spec.nullable:
        raise _Defer
    if spec.allowed is not None and not set(present) <= set(spec.allowed):
        raise _Defer
    if spec.kind not in ("float", "int") or not present:
        return
    low, high = spec.min_value, spec.max_value
    if (
        (spec.positive and min(present) <= 0)
        or (low is not None and min(present) < low)
        or (high is not None and max(present) > high)
    ):
        raise _Defer


def _typed_cells(table: str, names: list, values_of: Callable[[ColumnSpec], list]) -> dict[str, list]:
    """Declared column -> typed cells (str: as given; float: NaN; int / bool: None when missing).

    ``names`` are the given columns; ``values_of(spec)`` gives the cells of a given declared column.
    """
    declared = {spec.name for spec in COLUMNS_BY_TABLE[table]}
    if len(set(names)) != len(names) or not all(type(name) is str and name in declared for name in names):
        raise _Defer
    typed = {}
    for spec in COLUMNS_BY_TABLE[table]:
        if spec.name not in names:
            if spec.required:
                raise _Defer
            continue
        cell = _CELL_BY_KIND[spec.kind]
        typed[spec.name] = cells = [cell(value) for value in values_of(spec)]
        _check_cells(spec, cells)
    return typed


def _typed_columns(table: str, frame: pd.DataFrame) -> dict[str, list]:
    """:func:`_typed_cells` of a frame's columns."""
    return _typed_cells(table, list(frame.columns), lambda spec: _plain_values(frame[spec.name], spec.kind))


_NONE = type(None)
# the cell types a column list may hold, per kind: those a frame column gives back alike with
# ``tolist()`` (a bool is not read as a number, nor a number as a bool; text numbers are read)
_LIST_CELL_TYPES_BY_KIND: dict[str, tuple[type, ...]] = {
    "str": (str, _NONE),
    "float": (float, int, str, _NONE),
    "int": (float, int, str, _NONE),
    "bool": (bool, _NONE),
    "text_or_number": (str, float, int),
}


def _list_cells(spec: ColumnSpec, columns: Mapping[str, list], n_rows: int) -> list:
    """A column given as a list: its cells as they are, when the list has ``n_rows`` cells, each of a
    type in :data:`_LIST_CELL_TYPES_BY_KIND` for the column's kind."""
    cells = columns[spec.name]
    allowed = _LIST_CELL_TYPES_BY_KIND[spec.kind]
    if type(cells) is not list or len(cells) != n_rows or not all(type(value) in allowed for value in cells):
        raise _Defer
    return cells


def _masked(cells: list, array_type: type, dtype: type) -> Any:
    """A pandas masked array (``Int64`` / ``boolean``) of cells with None for missing."""
    mask = np.array([value is None for value in cells], dtype=bool)
    values: np.ndarray = np.array([dtype() if value is None else value for value in cells], dtype=dtype)
    return array_type(values, mask)


_ARRAY_BY_KIND: dict[str, Callable[[list], Any]] = {
    "str": lambda cells: np.array(cells, dtype=object),
    "float": lambda cells: np.array(cells, dtype=float),
    "int": lambda cells: _masked(cells, pd.arrays.IntegerArray, np.int64),
    "bool": lambda cells: _masked(cells, pd.arrays.BooleanArray, np.bool_),
}


def _infusions_frame(typed: dict[str, list]) -> pd.DataFrame:
    specs = [spec for spec in COLUMNS_BY_TABLE["infusions"] if spec.name in typed]
    columns = {spec.name: _ARRAY_BY_KIND[spec.kind](typed[spec.name]) for spec in specs}
    return pd.DataFrame(columns, index=pd.RangeIndex(len(typed["patient_id"])))


# --- measurements ---------------------------------------------------------------------------------
_TYPED_MEASUREMENT_COLUMNS = ("patient_id", "day", "specimen", "assay")  # carried over from the raw table
_CATEGORIES = {
    spec.name: pd.CategoricalDtype(list(spec.allowed or ()))
    for spec in COLUMNS_BY_TABLE["normalised_measurements"]
    if spec.kind == "category"
}


def _lab_columns(typed: dict[str, list]) -> dict[str, tuple]:
    """``CleanLabValue`` field -> cells of every row (defer on the first row with a problem)."""
    limits = typed.get("detection_limit", [math.nan] * len(typed["value"]))
    lab_values = []
    for raw, unit, assay, limit in zip(typed["value"], typed["unit"], typed["assay"], limits):
        lab_value = normalise_clean_lab_value(raw, None if _is_missing(unit) else unit, assay, limit)
        if lab_value is None:
            raise _Defer
        lab_values.append(lab_value)
    if not lab_values:
        return dict.fromkeys(CleanLabValue._fields, ())
    return dict(zip(CleanLabValue._fields, zip(*lab_values)))


def _measurements_frame(typed: dict[str, list]) -> pd.DataFrame:
    """The normalised measurements (``NORMALISED_MEASUREMENT_COLUMNS``) of clean typed rows."""
    cells_by_name = {**{name: typed[name] for name in _TYPED_MEASUREMENT_COLUMNS}, **_lab_columns(typed)}
    columns = {}
    for spec in COLUMNS_BY_TABLE["normalised_measurements"]:
        cells = list(cells_by_name[spec.name])
        _check_cells(spec, cells)
        if spec.kind == "category":
            dtype = _CATEGORIES[spec.name]
            code_of = {category: code for code, category in enumerate(dtype.categories)}
            columns[spec.name] = pd.Categorical.from_codes([code_of[value] for value in cells], dtype=dtype)
        else:
            columns[spec.name] = np.array(cells, dtype=spec.pandas_dtype)
    return pd.DataFrame(columns, index=pd.RangeIndex(len(typed["patient_id"])))


# --- the fast path --------------------------------------------------------------------------------
def _schemas_supported() -> bool:
    """Whether every declaration and check of the schemas is one this module replicates."""
    for table in ("infusions", "measurements"):
        for spec in COLUMNS_BY_TABLE[table]:
            if spec.kind not in _OUTPUT_DTYPE_BY_KIND or spec.pandas_dtype != _OUTPUT_DTYPE_BY_KIND[spec.kind]:
                return False
    normalised = COLUMNS_BY_TABLE["normalised_measurements"]
    names = [spec.name for spec in normalised]
    if names[:4] != list(_TYPED_MEASUREMENT_COLUMNS) or set(names[4:]) != set(CleanLabValue._fields):
        return False
    for table in ("infusions", "measurements", "normalised_measurements"):
        if any({check.name for check in spec.checks()} - _COLUMN_CHECKS for spec in COLUMNS_BY_TABLE[table]):
            return False
    frame_checks = {table: {check.name for check in SCHEMA_BY_TABLE[table].checks} for table in SCHEMA_BY_TABLE}
    return (not frame_checks["infusions"] and not frame_checks["measurements"]
            and frame_checks["normalised_measurements"] == _NORMALISED_FRAME_CHECKS)


_SCHEMAS_SUPPORTED = _schemas_supported()


def clean_small_cohort(
    infusions: pd.DataFrame, measurements: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Typed infusions and normalised measurements of a small, certainly clean cohort, else None.

    Parameters
    ----------
    infusions, measurements : pandas.DataFrame
        Raw tables, as given to :func:`features.contract.validate_cohort` (no outcomes).

    Returns
    -------
    (pandas.DataFrame, pandas.DataFrame) or None
        Exactly the ``infusions`` and ``measurements`` frames of the full path's
        ``ValidatedCohort`` when every row is certainly valid (then the full path would
        quarantine nothing); None when the full path must decide.
    """
    if not (
        _SCHEMAS_SUPPORTED
        and isinstance(infusions, pd.DataFrame) and isinstance(measurements, pd.DataFrame)
        and 0 < len(infusions) <= MAX_INFUSION_ROWS and len(measurements) <= MAX_MEASUREMENT_ROWS
    ):
        return None
    try:
        typed_infusions = _typed_columns("infusions", infusions)
        typed_measurements = _typed_columns("measurements", measurements)
    except _Defer:
        return None
    return _clean_frames(typed_infusions, typed_measurements)


def clean_small_columns(
    infusions: Mapping[str, list], measurements: Mapping[str, list]
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """:func:`clean_small_cohort` for raw tables given as column lists (no DataFrame to read).

    The served model gets its patients as request records; building raw frames only to read their
    cells back cost more than checking them. Each list holds a column's cells, of the plain Python
    types a frame column gives back (text, number, boolean or None: see
    :data:`_LIST_CELL_TYPES_BY_KIND`); anything else, or lists of unequal length, gives None.

    Parameters
    ----------
    infusions, measurements : mapping of str to list
        Column name -> cells, in the declared columns of each raw table (absent optional columns
        allowed, as for frames).

    Returns
    -------
    (pandas.DataFrame, pandas.DataFrame) or None
        Exactly the frames of :func:`features.contract.validate_cohort` for
        ``pd.DataFrame(infusions)`` and ``pd.DataFrame(measurements)`` when every row is certainly
        valid; None when the full path must decide.
    """
    if not (_SCHEMAS_SUPPORTED and "patient_id" in infusions and "patient_id" in measurements):
        return None
    n_infusions, n_measurements = len(infusions["patient_id"]), len(measurements["patient_id"])
    if not (0 < n_infusions <= MAX_INFUSION_ROWS and n_measurements <= MAX_MEASUREMENT_ROWS):
        return None
    try:
        typed_infusions = _typed_cells("infusions", list(infusions),
                                       lambda spec: _list_cells(spec, infusions, n_infusions))
        typed_measurements = _typed_cells("measurements", list(measurements),
                                          lambda spec: _list_cells(spec, measurements, n_measurements))
    except _Defer:
        return None
    return _clean_frames(typed_infusions, typed_measurements)


def _clean_frames(typed_infusions: dict[str, list], typed_measurements: dict[str, list]):
    """The output frames of typed cells, or None (duplicate patients, measurements of no patient,
    a lab value the fast path is not sure of)."""
    patient_ids = typed_infusions["patient_id"]
    if len(set(patient_ids)) != len(patient_ids) or not set(typed_measurements["patient_id"]) <= set(patient_ids):
        return None
    try:
        return _infusions_frame(typed_infusions), _measurements_frame(typed_measurements)
    except _Defer:
        return None
