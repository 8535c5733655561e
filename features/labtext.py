"""Parsing of lab results (numbers and lab text) into value + censored + detection limit.

Labs write results as numbers (``6e-4``, ``1.2E-05``), percentages (``0.06%``), upper bounds
(``<0.01%``), negatives (``NEG``, ``negative``, ``not detected``) and detected-but-unquantifiable
results (``detected <LOQ``, ``detected, below quantitation``). :func:`lab_results` is vectorised
over whole columns (each distinct text parsed once, numpy arrays for the rest, no pandas object
per step), so millions of rows parse in seconds and a request's few rows in well under a
millisecond; it is the one lab parser of the data contract (``features.contract``).
:func:`normalise_lab_values` is the same result as a DataFrame.

Grammar (case-insensitive, surrounding and repeated blanks ignored)::

    result      := number | less_than | not_detected | below_loq
    number      := NUM [%]                      e.g. "0.06%", "6e-4", "1.2E-05", "45"
    less_than   := ("<" | "<=" | "≤") NUM [%]   e.g. "<0.01%", "< 1e-4"
    not_detected:= "neg" | "negative" | "not detected" | "undetected" | "undetectable"
    below_loq   := ("detected" | "positive" | "pos") [","|";"] LOQ
    LOQ         := "<loq" | "<" NUM [%] | "bloq" | "not quantifiable" | "unquantifiable"
                 | "below [the] [limit of] (quantitation | quantification | loq)"
    NUM         := [+-] digits [. digits] [e [+-] digits]   (finite)

Meaning (all values end in the assay's canonical unit, see ``features.schema.UNIT_CONVERSIONS``):

- ``number``: an exact result, ``censored=False``. A zero MRD result means "not detected" and is
  treated as ``not_detected`` (a censored value is never stored as 0). A zero for the other assays
  (0 B cells/uL, 0% CD19+ blasts) is a real measurement and stays 0.
- ``less_than``: censored at the stated bound: ``value = detection_limit = NUM``.
- ``not_detected``: censored at the row's ``detection_limit`` if given, else the assay's default
  (flow 1e-4, PCR 1e-5, NGS 1e-6 as a fraction), else censored with an unknown (NaN) limit.
- ``below_loq``: a positive but unquantifiable result. Stored as ``censored=True`` with
  ``value = detection_limit`` (the stated bound, the row's limit or the assay default, as for
  ``not_detected``) and ``detected_below_loq=True`` so that features can count it as detectable.

Units: a ``%`` in the text means percent whatever the ``unit`` column says for MRD (percent and
fraction measure the same thing); for B cells it means ``pct_lymphocytes`` and for antigen
``pct_blasts`` (a ``unit`` column naming a *different* quantity, e.g. ``cells/uL``, is a conflict
and an error); for ``car_copies`` it is an error. MRD ``percent`` is divided by 100; nothing else
is converted. The ``detection_limit`` column is in the unit named by the ``unit`` column, or, when
that is empty, in the unit the text implies (``%``). A number needs a unit (the ``unit`` column or
a ``%``); a result without a number (``NEG``, ``detected <LOQ``) may omit it when the assay has a
single canonical unit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.schema import (
    DEFAULT_DETECTION_LIMIT_BY_ASSAY,
    MAX_VALUE_BY_CANONICAL_UNIT,
    MRD_ASSAYS,
    PERCENT_UNIT_BY_ASSAY,
    RAW_UNITS,
    UNIT_CONVERSIONS,
)

__all__ = [
    "QUALIFIERS",
    "PARSED_COLUMNS",
    "ERROR_COLUMNS",
    "LabResults",
    "parse_lab_text",
    "lab_results",
    "normalise_lab_values",
]

QUALIFIERS = ("number", "less_than", "not_detected", "below_loq", "missing", "unparseable")
PARSED_COLUMNS = ("value", "censored", "detection_limit", "unit", "detected_below_loq")
ERROR_COLUMNS = ("error_column", "error_kind", "error_reason", "error_detail")
_NUMBER, _LESS_THAN, _NOT_DETECTED, _BELOW_LOQ, _MISSING, _UNPARSEABLE = range(len(QUALIFIERS))

_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?"
_LAB_TEXT_RE = (
    r"^\s*(?:"
    rf"(?P<op><=|<|≤)?\s*(?P<num>{_NUM})\s*(?P<pct>%)?"
    r"|(?P<not_detected>neg|negative|not\s+detected|undetected|undetectable)"
    r"|(?P<loq>(?:detected|positive|pos)\s*[,;]?\s*"
    r"(?:<\s*loq|bloq|not\s+quantifiable|unquantifiable"
    r"|below\s+(?:the\s+)?(?:limit\s+of\s+)?(?:quantitation|quantification|loq)"
    rf"|<\s*(?P<loq_num>{_NUM})\s*(?P<loq_pct>%)?))"
    r")\s*\.?\s*$"
)
_LAB_TEXT_PATTERN = re.compile(_LAB_TEXT_RE, re.IGNORECASE)


# --- parsing: number, percent flag and qualifier of each raw value ----------------------------------------
def _parse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Number (NaN when none), ``%`` flag and qualifier code (index of :data:`QUALIFIERS`) per value.

    Lab results repeat a lot (``NEG``, ``<0.01%``, values rounded to a few digits), so each distinct
    value is parsed once and the result is broadcast back to the rows.
    """
    if values.dtype.kind in "iuf":
        number = values.astype(float)
        qualifier = np.where(np.isnan(number), _MISSING, _NUMBER)
        percent = np.zeros(len(values), dtype=bool)
    else:
        codes, distinct = pd.factorize(values.astype(object))
        parsed = _parse_distinct(np.asarray(distinct, dtype=object))
        number, percent, qualifier = (np.append(part, missing)[codes]  # code -1 (missing) -> the appended entry
                                      for part, missing in zip(parsed, (np.nan, False, _MISSING)))
    with_number = (qualifier == _NUMBER) | (qualifier == _LESS_THAN)
    qualifier = np.where(with_number & ~np.isfinite(number), _UNPARSEABLE, qualifier)
    return number, percent, qualifier


def _parse_distinct(distinct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse distinct non-missing values: numbers and plain number texts by ``pd.to_numeric``, other
    texts by :data:`_LAB_TEXT_RE`; any other type (a boolean, a list) is unparseable."""
    size = len(distinct)
    kinds = [type(value) for value in distinct]
    is_text = np.fromiter((kind is str for kind in kinds), dtype=bool, count=size)
    is_number = np.fromiter((issubclass(kind, (int, float, np.integer, np.floating)) and not issubclass(kind, bool)
                             for kind in kinds), dtype=bool, count=size)
    number = np.full(size, np.nan)
    plain = is_text | is_number
    number[plain] = pd.to_numeric(distinct[plain], errors="coerce")
    qualifier = np.where(plain & ~np.isnan(number), _NUMBER, _UNPARSEABLE)
    percent = np.zeros(size, dtype=bool)
    texts = np.flatnonzero(is_text & np.isnan(number))
    if len(texts):
        matches = [_match_lab_text(text) for text in distinct[texts]]  # one regular expression per distinct text
        qualifier[texts] = [QUALIFIERS.index(match[0]) for match in matches]
        percent[texts] = [match[2] for match in matches]
        number_texts = np.array([np.nan if match[1] is None else match[1] for match in matches], dtype=object)
        number[texts] = pd.to_numeric(number_texts, errors="coerce")
    return number, percent, qualifier


def _match_lab_text(text: str) -> tuple[str, str | None, bool]:
    """Qualifier, number text (None if the result has none) and ``%`` flag of one lab string.

    The grammar of the module docstring (:data:`_LAB_TEXT_RE`); a string it does not match is
    ``unparseable``. The number stays text: callers turn it into a float.
    """
    match = _LAB_TEXT_PATTERN.search(text)
    if match is None:
        return "unparseable", None, False
    op, num, pct, not_detected, loq, loq_num, loq_pct = match.group(
        "op", "num", "pct", "not_detected", "loq", "loq_num", "loq_pct"
    )
    percent = pct is not None or loq_pct is not None
    if num is not None:
        return ("number" if op is None else "less_than"), num, percent
    if not_detected is not None:
        return "not_detected", None, percent
    return ("below_loq" if loq is not None else "unparseable"), loq_num, percent


def parse_lab_text(values: pd.Series) -> pd.DataFrame:
    """Parse lab results into a number, a percent flag and a qualifier, without units.

    Parameters
    ----------
    values : pandas.Series
        Numbers and/or lab text (see the module grammar).

    Returns
    -------
    pandas.DataFrame
        Same index as ``values``; columns ``number`` (float, NaN when the result has none),
        ``percent`` (bool: the text carried ``%``) and ``qualifier`` (one of :data:`QUALIFIERS`).
    """
    number, percent, qualifier = _parse(_array(values))
    return pd.DataFrame({"number": number, "percent": percent,
                         "qualifier": np.asarray(QUALIFIERS, dtype=object)[qualifier]}, index=values.index)


def _array(values: Any) -> np.ndarray:
    """A column as a numpy array: numbers stay numeric, anything else becomes objects."""
    array = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    return array if array.dtype.kind in "iuf" else array.astype(object)


# --- per-assay and per-unit tables, indexed by code --------------------------------------------------------
_ASSAY_NAMES = tuple(UNIT_CONVERSIONS)
_UNKNOWN_ASSAY = len(_ASSAY_NAMES)
_NO_UNIT, _OTHER_UNIT = len(RAW_UNITS), len(RAW_UNITS) + 1  # unit codes: RAW_UNITS, then "none", "other text"
_UNIT_NAMES = np.array([*RAW_UNITS, None, None], dtype=object)


def _per_assay(mapping: dict, missing: Any, dtype: Any) -> np.ndarray:
    return np.array([mapping.get(name, missing) for name in _ASSAY_NAMES] + [missing], dtype=dtype)


def _unit_code(unit: str | None) -> int:
    return _NO_UNIT if unit is None else RAW_UNITS.index(unit)


_PERCENT_UNIT = _per_assay({a: _unit_code(u) for a, u in PERCENT_UNIT_BY_ASSAY.items()}, _NO_UNIT, np.int64)
_DEFAULT_LIMIT = _per_assay(DEFAULT_DETECTION_LIMIT_BY_ASSAY, np.nan, float)
_IS_MRD = _per_assay(dict.fromkeys(MRD_ASSAYS, True), False, bool)
_KNOWN_ASSAY = _per_assay(dict.fromkeys(_ASSAY_NAMES, True), False, bool)
_SINGLE_CANONICAL = _per_assay(
    {name: _unit_code(canonical.pop()) for name, conversions in UNIT_CONVERSIONS.items()
     if len(canonical := {unit for unit, _ in conversions.values()}) == 1}, _NO_UNIT, np.int64)
_CANONICAL = np.full((len(_ASSAY_NAMES) + 1, len(_UNIT_NAMES)), _NO_UNIT, dtype=np.int64)
_FACTOR = np.full(_CANONICAL.shape, np.nan)
for _assay, _conversions in UNIT_CONVERSIONS.items():
    for _raw, (_canonical, _factor) in _conversions.items():
        _CANONICAL[_ASSAY_NAMES.index(_assay), _unit_code(_raw)] = _unit_code(_canonical)
        _FACTOR[_ASSAY_NAMES.index(_assay), _unit_code(_raw)] = _factor
_BOUND = np.array([MAX_VALUE_BY_CANONICAL_UNIT.get(name, np.nan) for name in _UNIT_NAMES[:_NO_UNIT]]
                  + [np.nan, np.nan])


def _codes(values: np.ndarray, names: tuple[str, ...], missing: int, other: int) -> np.ndarray:
    """Index of each value in ``names``; ``missing`` for a missing value, ``other`` for anything else."""
    codes = np.where(pd.isna(values), missing, other)
    for code, name in enumerate(names):  # a loop over the few names, each a vectorised comparison
        codes[values == name] = code
    return codes


# --- the lab results of whole columns -----------------------------------------------------------------------
@dataclass(frozen=True)
class LabResults:
    """Normalised lab results and row errors, one array entry per row (see :func:`lab_results`)."""

    value: np.ndarray
    censored: np.ndarray
    detection_limit: np.ndarray
    unit: np.ndarray
    detected_below_loq: np.ndarray
    bad: np.ndarray
    error_column: np.ndarray
    error_kind: np.ndarray
    error_reason: np.ndarray
    error_detail: np.ndarray


@dataclass(frozen=True)
class _LabRows:
    """Per-row arrays shared by the normalisation steps."""

    raw: np.ndarray
    assay_text: np.ndarray
    unit_text: np.ndarray
    number: np.ndarray
    percent: np.ndarray
    qualifier: np.ndarray
    assay: np.ndarray
    unit_column: np.ndarray
    row_limit: np.ndarray

    @property
    def has_unit(self) -> np.ndarray:
        return self.unit_column != _NO_UNIT


def lab_results(values: Any, units: Any, assays: Any, detection_limits: Any = None) -> LabResults:
    """Turn raw lab results into canonical value, censoring and detection limit, with row errors.

    Parameters
    ----------
    values : array-like
        Raw ``value`` cells: numbers or lab text (booleans and other types are unparseable).
    units : array-like
        Raw ``unit`` cells (may be missing where the text carries ``%`` or has no number).
    assays : array-like
        ``assay`` cells (see ``features.schema.ASSAYS``).
    detection_limits : array-like of float, optional
        The row's detection limit (NaN when none), in the row's unit (see the module docstring).

    Returns
    -------
    LabResults
        ``value`` (float, canonical unit), ``censored`` (bool), ``detection_limit`` (float, canonical
        or NaN), ``unit`` (canonical unit name), ``detected_below_loq`` (bool); ``bad`` marks rows
        with an error, which have NaN values, no unit and ``error_column`` (the column at fault),
        ``error_kind`` (a short kind for counting), ``error_reason`` (readable, with the value) and
        ``error_detail`` (the reason without the row's values); all None for a good row.
    """
    raw = _array(values)
    number, percent, qualifier = _parse(raw)
    assay_text, unit_text = np.asarray(assays, dtype=object), np.asarray(units, dtype=object)
    n_rows = len(raw)
    row_limit = np.full(n_rows, np.nan) if detection_limits is None else np.asarray(detection_limits, dtype=float)
    rows = _LabRows(raw=raw.astype(object), assay_text=assay_text, unit_text=unit_text, number=number,
                    percent=percent, qualifier=qualifier,
                    assay=_codes(assay_text, _ASSAY_NAMES, _UNKNOWN_ASSAY, _UNKNOWN_ASSAY),
                    unit_column=_codes(unit_text, RAW_UNITS, _NO_UNIT, _OTHER_UNIT), row_limit=row_limit)
    raw_unit = np.where(percent, _PERCENT_UNIT[rows.assay], rows.unit_column)
    limit_unit = np.where(rows.has_unit, rows.unit_column, raw_unit)
    canonical, factor = _CANONICAL[rows.assay, raw_unit], _FACTOR[rows.assay, raw_unit]
    limit_canonical = _CANONICAL[rows.assay, limit_unit]
    column_canonical = _CANONICAL[rows.assay, rows.unit_column]
    value, censored, limit, loq = _censor(rows, factor, row_limit * _FACTOR[rows.assay, limit_unit])
    unit = np.where(canonical == _NO_UNIT, _SINGLE_CANONICAL[rows.assay], canonical)
    errors = _row_errors(rows, canonical, column_canonical, limit_canonical, value, limit, unit)
    bad = errors[1] != None  # noqa: E711 - elementwise on an object array
    return LabResults(
        value=np.where(bad, np.nan, value), censored=censored & ~bad, detection_limit=np.where(bad, np.nan, limit),
        unit=_UNIT_NAMES[np.where(bad, _NO_UNIT, unit)], detected_below_loq=loq & ~bad, bad=bad,
        error_column=errors[0], error_kind=errors[1], error_reason=errors[2], error_detail=errors[3],
    )


def normalise_lab_values(
    values: pd.Series,
    units: pd.Series,
    assays: pd.Series,
    detection_limits: pd.Series | None = None,
) -> pd.DataFrame:
    """:func:`lab_results` of raw columns, as a DataFrame.

    Parameters
    ----------
    values, units, assays : pandas.Series
        Raw ``value``, ``unit`` and ``assay`` columns.
    detection_limits : pandas.Series, optional
        Raw ``detection_limit`` column (text or numbers; what does not read as a number is NaN).

    Returns
    -------
    pandas.DataFrame
        Same index as ``values``; columns :data:`PARSED_COLUMNS` and :data:`ERROR_COLUMNS` (all
        missing for a good row).
    """
    limits = None if detection_limits is None else pd.to_numeric(detection_limits, errors="coerce")
    results = lab_results(values, units.to_numpy(), assays.to_numpy(),
                          None if limits is None else limits.to_numpy(dtype=float, na_value=np.nan))
    return pd.DataFrame({name: getattr(results, name) for name in PARSED_COLUMNS + ERROR_COLUMNS}, index=values.index)


def _censor(rows: _LabRows, factor: np.ndarray, row_limit: np.ndarray) -> tuple[np.ndarray, ...]:
    """Value, censoring, detection limit (canonical unit) and below-LOQ flag from the qualifiers."""
    number = rows.number * factor
    fallback_limit = np.where(np.isnan(row_limit), _DEFAULT_LIMIT[rows.assay], row_limit)
    exact = (rows.qualifier == _NUMBER) & ~(_IS_MRD[rows.assay] & (rows.number == 0))
    loq = rows.qualifier == _BELOW_LOQ
    stated_bound = (rows.qualifier == _LESS_THAN) | (loq & ~np.isnan(number))
    limit = np.where(stated_bound, number, fallback_limit)
    return np.where(exact, number, limit), ~exact, limit, loq


def _fmt_number(number: float) -> str:
    return f"{number:.6g}"


def _row_errors(rows: _LabRows, canonical: np.ndarray, column_canonical: np.ndarray, limit_canonical: np.ndarray,
                value: np.ndarray, limit: np.ndarray, unit: np.ndarray) -> tuple[np.ndarray, ...]:
    """First error per row (rules in priority order); reasons are built for the bad rows only.

    Each rule: (mask, column at fault, kind, reason of row i (with its values), detail of row i (without)).
    """
    raw, assay, unit_text, qualifier = rows.raw, rows.assay_text, rows.unit_text, rows.qualifier
    has_number = ~np.isnan(rows.number)
    bound = _BOUND[unit]
    stated_bound = (qualifier == _LESS_THAN) | ((qualifier == _BELOW_LOQ) & has_number)
    bad_limit = (limit <= 0) | (limit > bound)
    names = _UNIT_NAMES

    def allowed(i: int) -> str:
        return ", ".join(UNIT_CONVERSIONS[str(assay[i])])

    def above_maximum(i: int) -> str:
        return f"above the possible maximum {_fmt_number(float(bound[i]))} {names[unit[i]]}"

    rules = [
        (qualifier == _MISSING, "value", "missing value", lambda i: "value is missing", lambda i: "value is missing"),
        (qualifier == _UNPARSEABLE, "value", "unparseable value", lambda i: f"cannot parse lab value {raw[i]!r}",
         lambda i: "cannot parse the lab value"),
        (~_KNOWN_ASSAY[rows.assay], "assay", "unknown assay", lambda i: f"unknown assay {assay[i]!r}",
         lambda i: "unknown assay"),
        (rows.percent & (_PERCENT_UNIT[rows.assay] == _NO_UNIT), "value", "unit conflict",
         lambda i: f"'%' in {raw[i]!r} but assay {assay[i]} is not reported in percent",
         lambda i: f"'%' in the value but assay {assay[i]} is not reported in percent"),
        (rows.has_unit & (column_canonical == _NO_UNIT), "unit", "unit not valid for assay",
         lambda i: f"unit {unit_text[i]!r} is not a unit of assay {assay[i]} (allowed: {allowed(i)})",
         lambda i: f"not a unit of assay {assay[i]} (allowed: {allowed(i)})"),
        (rows.percent & rows.has_unit & (column_canonical != canonical), "unit", "unit conflict",
         lambda i: f"'%' in {raw[i]!r} contradicts unit {unit_text[i]!r}",
         lambda i: "'%' in the value contradicts the unit"),
        ((canonical == _NO_UNIT) & has_number, "unit", "missing unit",
         lambda i: f"numeric result {raw[i]!r} needs a unit (unit column or '%')",
         lambda i: "a numeric result needs a unit (unit column or '%')"),
        (unit == _NO_UNIT, "unit", "missing unit", lambda i: f"assay {assay[i]} needs a unit to read {raw[i]!r}",
         lambda i: f"assay {assay[i]} needs a unit"),
        (~np.isnan(rows.row_limit) & (limit_canonical == _NO_UNIT), "unit", "missing unit",
         lambda i: "detection_limit given without a unit", lambda i: "detection_limit given without a unit"),
        (has_number & (rows.number < 0), "value", "impossible value", lambda i: f"negative value {raw[i]!r}",
         lambda i: "negative value"),
        (stated_bound & bad_limit, "value", "impossible value", lambda i: f"impossible detection limit in {raw[i]!r}",
         lambda i: "impossible detection limit in the value"),
        (~stated_bound & bad_limit, "detection_limit", "impossible value",
         lambda i: f"impossible detection limit {_fmt_number(float(limit[i]))} {names[unit[i]]} "
         f"(must be > 0 and <= {_fmt_number(float(bound[i]))})",
         lambda i: f"impossible detection limit (must be > 0 and <= {_fmt_number(float(bound[i]))} {names[unit[i]]})"),
        (value > bound, "value", "impossible value",
         lambda i: f"{raw[i]!r} gives {_fmt_number(float(value[i]))} {names[unit[i]]}, {above_maximum(i)}",
         above_maximum),
    ]
    return _first_errors(rules, len(raw))


def _first_errors(rules: list, n_rows: int) -> tuple[np.ndarray, ...]:
    """Apply the rules in order; a row keeps its first error. Column, kind, reason and detail arrays."""
    column, kind, reason, detail = (np.full(n_rows, None, dtype=object) for _ in range(4))
    if not np.logical_or.reduce([rule[0] for rule in rules], axis=0).any():  # the usual case: no error at all
        return column, kind, reason, detail
    unassigned = np.ones(n_rows, dtype=bool)
    for mask, rule_column, rule_kind, reason_of, detail_of in rules:
        hit = np.flatnonzero(np.asarray(mask, dtype=bool) & unassigned)
        if not len(hit):
            continue
        column[hit] = rule_column
        kind[hit] = rule_kind
        reason[hit] = [reason_of(i) for i in hit]
        detail[hit] = [detail_of(i) for i in hit]
        unassigned[hit] = False
    return column, kind, reason, detail
