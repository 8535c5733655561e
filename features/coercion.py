"""Cells of the data contract: typing (coercion) and the checks of each column's declaration.

The column-level half of the contract's one core (``features.contract.check_tables`` is the
table-level half). :func:`typed_columns` takes the raw cells of declared columns (numpy or pandas
arrays of any cell types: CSV text, Parquet numbers, JSON values of a request) and returns the
typed columns with every problem, row by row:

- **types**: text, float, nullable integer, boolean and raw lab value; a cell that does not coerce
  (a word for a number, ``true`` for a number, a list for a single value, an integer beyond 2**53)
  is a "wrong type" problem;
- **declaration** (``features.schema.ColumnSpec``): missing where not allowed, value not allowed,
  value out of range (every number has a finite range).

Columns of one kind are typed together, as one flat array, so the cost is a few numpy operations
per kind of column whatever the number of rows or columns; a column is looked at on its own only
to word the problems it has. Each problem has a ``reason`` naming the value
(``'eleven' is not a number``) and a ``detail`` without it (``not a number``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.schema import BOOL_WORDS, ColumnSpec

__all__ = [
    "MAX_EXACT_INTEGER",
    "ColumnProblem",
    "TypedColumn",
    "column_type_problem",
    "typed_columns",
    "typed_column",
]

MAX_EXACT_INTEGER = 2**53
"""Integers up to this size are exact doubles; beyond it an integer cell is a "wrong type" problem."""

_MISSING, _TEXT, _NUMBER, _BOOLEAN, _NON_SCALAR, _OTHER = range(6)
_SCALAR_NUMBERS = (int, float, np.integer, np.floating)
_NON_SCALARS = (list, tuple, dict, set, frozenset, np.ndarray, pd.Series, pd.DataFrame)
_CLASS_BY_INFERRED = {"string": _TEXT, "floating": _NUMBER, "integer": _NUMBER, "mixed-integer-float": _NUMBER,
                      "boolean": _BOOLEAN, "empty": _MISSING}
_KIND_WORDS = {"str": "text", "float": "numbers", "int": "whole numbers", "bool": "booleans (true/false)",
               "text_or_number": "numbers or lab text", "category": "text"}
_TYPE_WORDS = {"str": "text", "float": "a number", "int": "an integer", "bool": "a boolean (true/false)",
               "text_or_number": "a number or lab text"}


@dataclass(frozen=True)
class ColumnProblem:
    """One kind of problem in one column: its rows, a reason per row (with the value) and a detail
    (without it)."""

    kind: str
    rows: np.ndarray
    reasons: list[str]
    detail: str


@dataclass(frozen=True)
class TypedColumn:
    """A column after coercion and the checks of its declaration.

    Attributes
    ----------
    values : array
        Typed cells: ``object`` (text, None when missing), ``float64`` (NaN), pandas ``Int64`` /
        ``boolean`` (masked) or, for the lab ``value``, the cells as given (None when missing).
    problems : list of ColumnProblem
        Coercion ("wrong type") first, then the declaration's checks in the order of
        :meth:`features.schema.ColumnSpec.checks` ("missing value", "value not allowed", "value out
        of range").
    """

    values: Any
    problems: list[ColumnProblem]


def column_type_problem(spec: ColumnSpec, dtype: Any) -> str | None:
    """Why a whole column cannot hold its declared kind, else None.

    Dates and times are refused everywhere, booleans wherever the column is not boolean (a
    Parquet ``bool`` column for ``age_years`` or the lab ``value``): a column like that is a
    column problem, not thousands of row problems.

    Parameters
    ----------
    spec : ColumnSpec
    dtype : numpy or pandas dtype, or None

    Returns
    -------
    str or None
    """
    if dtype is None or (isinstance(dtype, np.dtype) and dtype.kind in "OUSiuf"):  # judged cell by cell
        return None
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype) \
            or isinstance(dtype, pd.PeriodDtype):
        return f"holds dates or times ({dtype}); expected {_KIND_WORDS[spec.kind]}"
    if spec.kind != "bool" and pd.api.types.is_bool_dtype(dtype):
        return f"holds booleans ({dtype}); expected {_KIND_WORDS[spec.kind]}"
    return None


# --- the class of each cell ------------------------------------------------------------------------
def _class_of_type(kind: type) -> int:
    if issubclass(kind, (bool, np.bool_)):
        return _BOOLEAN
    if issubclass(kind, str):
        return _TEXT
    if issubclass(kind, _SCALAR_NUMBERS):
        return _NUMBER
    return _NON_SCALAR if issubclass(kind, _NON_SCALARS) else _OTHER


def _plain_array(values: Any) -> np.ndarray:
    """Cells as a numpy array: numeric arrays as they are, pandas' nullable numbers as floats
    (NaN for missing), anything else as objects (None or NaN for missing)."""
    if isinstance(values, np.ndarray):
        return values if values.dtype.kind in "iufb" else values.astype(object)
    dtype = getattr(values, "dtype", None)
    if isinstance(dtype, np.dtype) and dtype.kind in "iufb":
        return np.asarray(values)
    if dtype is not None and pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        return values.to_numpy(dtype=float, na_value=np.nan)
    return np.asarray(values, dtype=object)


def _cell_classes(values: np.ndarray) -> np.ndarray:
    """The class of each cell: missing, text, number, boolean, non-scalar (a list ...) or other.

    Whole-array answers come from the dtype or from ``pd.api.types.infer_dtype``; only an array
    mixing types is classified by the type of each cell (``type`` applied by numpy, each distinct
    type judged once).
    """
    kind = values.dtype.kind
    if kind in "iu":
        return np.full(len(values), _NUMBER, dtype=np.int8)
    if kind == "f":
        return np.where(np.isnan(values), _MISSING, _NUMBER).astype(np.int8)
    if kind == "b":
        return np.full(len(values), _BOOLEAN, dtype=np.int8)
    missing = pd.isna(values)
    inferred = _CLASS_BY_INFERRED.get(pd.api.types.infer_dtype(values, skipna=True))
    if inferred is not None:
        return np.where(missing, _MISSING, inferred).astype(np.int8)
    codes, types = pd.factorize(np.frompyfunc(type, 1, 1)(values))
    classes = np.array([_class_of_type(kind) for kind in types], dtype=np.int8)[codes]
    return np.where(missing, _MISSING, classes).astype(np.int8)


# --- coercion of a flat array of cells ---------------------------------------------------------------
def _to_numbers(values: np.ndarray) -> np.ndarray:
    """Text and number cells as floats (``pd.to_numeric``; NaN where a text is not a number), each
    distinct text parsed once (days and lab limits repeat)."""
    codes, distinct = pd.factorize(values)
    numbers = pd.to_numeric(np.asarray(distinct, dtype=object), errors="coerce")
    return np.append(np.asarray(numbers, dtype=float), np.nan)[codes]


def _coerce_text(raw: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    text = np.full(len(raw), None, dtype=object)
    is_text, is_number = classes == _TEXT, classes == _NUMBER
    text[is_text] = raw[is_text]
    if is_number.any():  # a number where text goes reads as in a CSV: 17 -> "17"
        text[is_number] = raw[is_number].astype(str)
    return text, ~(is_text | is_number | (classes == _MISSING))


def _coerce_float(raw: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if raw.dtype.kind in "iuf":
        numbers = raw.astype(float)
    else:
        numbers = np.full(len(raw), np.nan)
        is_number, is_text = classes == _NUMBER, classes == _TEXT
        if is_number.any():
            try:
                numbers[is_number] = raw[is_number].astype(float)
            except OverflowError:  # an integer too large for a float: not a usable number
                numbers[is_number] = _to_numbers(raw[is_number])
        if is_text.any():
            numbers[is_text] = _to_numbers(raw[is_text])
    bad = (classes != _MISSING) & ~np.isfinite(numbers)
    return (np.where(bad, np.nan, numbers) if bad.any() else numbers), bad


def _coerce_int(raw: np.ndarray, classes: np.ndarray) -> tuple[Any, np.ndarray]:
    numbers, bad = _coerce_float(raw, classes)
    # beyond 2**53 a float is no longer an exact integer (and beyond int64 it cannot be cast at all)
    with np.errstate(invalid="ignore"):
        bad |= ~np.isnan(numbers) & ((numbers != np.round(numbers)) | (np.abs(numbers) > MAX_EXACT_INTEGER))
    present = ~np.isnan(numbers) & ~bad
    return pd.arrays.IntegerArray(np.where(present, numbers, 0).astype(np.int64), ~present), bad


_BOOL_TEXTS = np.array(list(BOOL_WORDS), dtype=object)
_BOOL_VALUES = np.array(list(BOOL_WORDS.values()), dtype=bool)


def _coerce_bool(raw: np.ndarray, classes: np.ndarray) -> tuple[Any, np.ndarray]:
    values = np.zeros(len(raw), dtype=bool)
    known = classes == _BOOLEAN
    values[known] = raw[known].astype(bool)
    text = np.flatnonzero(classes == _TEXT)
    if len(text):
        words = np.char.lower(np.char.strip(raw[text].astype(str)))
        for word, value in zip(_BOOL_TEXTS, _BOOL_VALUES):  # the few words, each a vectorised comparison
            hit = words == word
            values[text[hit]], known[text[hit]] = value, True
    numbers = np.flatnonzero(classes == _NUMBER)
    if len(numbers):  # 1 and 0 (as a CSV's "1" and "0")
        as_float = raw[numbers].astype(float)
        hit = (as_float == 0) | (as_float == 1)
        values[numbers[hit]], known[numbers[hit]] = as_float[hit] == 1, True
    missing = classes == _MISSING
    return pd.arrays.BooleanArray(values, missing | ~known), ~(known | missing)


def _coerce_raw(raw: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cells = raw.astype(object)
    cells[classes == _MISSING] = None
    return cells, ~((classes == _MISSING) | (classes == _TEXT) | (classes == _NUMBER))


_COERCERS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[Any, np.ndarray]]] = {
    "str": _coerce_text,
    "float": _coerce_float,
    "int": _coerce_int,
    "bool": _coerce_bool,
    "text_or_number": _coerce_raw,
}


# --- the checks of a declaration -----------------------------------------------------------------------
def _fmt(number: float) -> str:
    return f"{number:g}"


def _range_checks(spec: ColumnSpec) -> list[tuple[Callable[[np.ndarray], np.ndarray], str]]:
    """(violation of the present values, rule text) of the column's positivity and range, in the
    order of :meth:`ColumnSpec.checks` (and with its error texts)."""
    low, high = spec.min_value, spec.max_value
    checks: list[tuple[Callable[[np.ndarray], np.ndarray], str]] = []
    if spec.positive:
        checks.append((lambda x: ~(x > 0), "must be > 0"))
    if low is not None and high is not None:
        checks.append((lambda x: ~((x >= low) & (x <= high)), f"must be in [{_fmt(low)}, {_fmt(high)}]"))
    elif low is not None:
        checks.append((lambda x: ~(x >= low), f"must be >= {_fmt(low)}"))
    elif high is not None:
        checks.append((lambda x: ~(x <= high), f"must be <= {_fmt(high)}"))
    return checks


def _wrong_types(spec: ColumnSpec, raw: np.ndarray, bad: np.ndarray, classes: np.ndarray) -> list[ColumnProblem]:
    """The "wrong type" problems of a column (a list or other non-scalar is "not a single value")."""
    word = _TYPE_WORDS[spec.kind]
    non_scalar = bad & (classes == _NON_SCALAR)
    problems = []
    for rows, template, detail in ((np.flatnonzero(bad & ~non_scalar), f"{{!r}} is not {word}", f"not {word}"),
                                   (np.flatnonzero(non_scalar), "{!r} is not a single value", "must be a single value")):
        if len(rows):
            problems.append(ColumnProblem("wrong type", rows, [template.format(cell) for cell in raw[rows].tolist()],
                                          detail))
    return problems


def _declaration_problems(spec: ColumnSpec, values: Any, missing: np.ndarray, bad: np.ndarray) -> list[ColumnProblem]:
    """Missing values where not allowed, values not allowed, values out of range (cells that did not
    coerce are not judged again)."""
    problems = []
    if not spec.nullable and (missing & ~bad).any():
        rows = np.flatnonzero(missing & ~bad)
        problems.append(ColumnProblem("missing value", rows, ["value is missing"] * len(rows), "value is missing"))
    present = ~missing & ~bad
    if spec.allowed is not None and spec.kind == "str":
        outside = present & ~_is_one_of(values, spec.allowed)
        if outside.any():
            rows, allowed = np.flatnonzero(outside), ", ".join(spec.allowed)
            problems.append(ColumnProblem("value not allowed", rows,
                                          [f"{cell!r} not one of {allowed}" for cell in values[rows].tolist()],
                                          f"not one of {allowed}"))
    if spec.kind in ("float", "int"):
        numbers = _as_floats(values)
        for violated, rule in _range_checks(spec):
            with np.errstate(invalid="ignore"):
                outside = present & violated(numbers)
            if outside.any():
                rows = np.flatnonzero(outside)
                problems.append(ColumnProblem("value out of range", rows,
                                              [f"{cell!r} {rule}" for cell in values[rows].tolist()], rule))
    return problems


def _is_one_of(values: np.ndarray, allowed: Sequence[str]) -> np.ndarray:
    inside = np.zeros(len(values), dtype=bool)
    for value in allowed:  # the few allowed values, each a vectorised comparison
        inside |= values == value
    return inside


def _as_floats(values: Any) -> np.ndarray:
    return values if isinstance(values, np.ndarray) else values.to_numpy(dtype=float, na_value=np.nan)


# --- columns of one kind together ------------------------------------------------------------------------
def _stacked(kind: str, cells: Sequence[Any], n_rows: int) -> np.ndarray:
    """The columns' cells as one flat array, row by row (numbers stay numbers when every column of
    numbers is)."""
    arrays = [_plain_array(column) for column in cells]
    if kind in ("float", "int") and all(array.dtype.kind in "iuf" for array in arrays):
        return np.column_stack([array.astype(float) for array in arrays]).reshape(-1) if arrays else np.empty(0)
    block = np.empty((n_rows, len(arrays)), dtype=object)
    for index, array in enumerate(arrays):
        block[:, index] = array
    return block.reshape(-1)


def _flagged(specs: Sequence[ColumnSpec], values: Any, missing: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Per cell (flat, row by row), whether any check of its column's declaration may fail: a cheap
    whole-block test, so that only flagged columns are looked at one by one."""
    n_columns = len(specs)
    flags = bad.copy()
    not_nullable = np.array([not spec.nullable for spec in specs])
    flags |= missing & np.tile(not_nullable, len(missing) // n_columns)
    if specs[0].kind in ("float", "int"):
        numbers = _as_floats(values).reshape(-1, n_columns)
        outside = np.zeros(numbers.shape, dtype=bool)
        for index, spec in enumerate(specs):
            for violated, _ in _range_checks(spec):
                with np.errstate(invalid="ignore"):
                    outside[:, index] |= violated(numbers[:, index])
        flags |= outside.reshape(-1) & ~missing
    return flags


def typed_columns(specs: Sequence[ColumnSpec], cells: Mapping[str, Any],
                  n_rows: int) -> dict[str, TypedColumn]:
    """Coerce columns to their declared kinds and check them against their declarations.

    Parameters
    ----------
    specs : sequence of ColumnSpec
        Declarations (``features.schema``); those not in ``cells`` are skipped.
    cells : mapping of str to array
        Column name -> raw cells (numpy or pandas arrays of ``n_rows`` cells, any types).
    n_rows : int

    Returns
    -------
    dict of str to TypedColumn
        In the order of ``specs``.
    """
    by_kind: dict[str, list[ColumnSpec]] = {}
    for spec in specs:
        if spec.name in cells:
            by_kind.setdefault(spec.kind, []).append(spec)
    typed: dict[str, TypedColumn] = {}
    for kind, group in by_kind.items():
        typed.update(_typed_kind(kind, group, [cells[spec.name] for spec in group], n_rows))
    return {spec.name: typed[spec.name] for spec in specs if spec.name in typed}


def _typed_kind(kind: str, specs: list[ColumnSpec], cells: list[Any], n_rows: int) -> dict[str, TypedColumn]:
    """Columns of one kind, typed as one flat array; each flagged column then checked on its own."""
    raw = _stacked(kind, cells, n_rows)
    classes = _cell_classes(raw)
    values, bad = _COERCERS[kind](raw, classes)
    missing = (classes == _MISSING) | bad
    n_columns = len(specs)
    flagged = np.asarray(_flagged(specs, values, missing, bad).reshape(n_rows, n_columns).any(axis=0))
    typed = {}
    for index, spec in enumerate(specs):
        column = slice(index, None, n_columns)
        problems: list[ColumnProblem] = []
        if flagged[index] or spec.allowed is not None:
            column_bad = bad[column]
            problems = (_wrong_types(spec, raw[column], column_bad, classes[column])
                        + _declaration_problems(spec, values[column], missing[column], column_bad))
        typed[spec.name] = TypedColumn(values=values[column] if n_columns > 1 else values, problems=problems)
    return typed


def typed_column(spec: ColumnSpec, cells: Any) -> TypedColumn:
    """:func:`typed_columns` of one column.

    Parameters
    ----------
    spec : ColumnSpec
    cells : array-like
        The raw cells.

    Returns
    -------
    TypedColumn
    """
    array = cells if hasattr(cells, "dtype") else np.asarray(cells, dtype=object)
    return typed_columns([spec], {spec.name: array}, len(array))[spec.name]
