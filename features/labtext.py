"""Parsing of lab results (numbers and lab text) into value + censored + detection limit.

Labs write results as numbers (``6e-4``, ``1.2E-05``), percentages (``0.06%``), upper bounds
(``<0.01%``), negatives (``NEG``, ``negative``, ``not detected``) and detected-but-unquantifiable
results (``detected <LOQ``, ``detected, below quantitation``). :func:`normalise_lab_values` is
vectorised over the whole column (each distinct text parsed once, numpy for the rest), so millions
of rows parse in seconds. :func:`normalise_clean_lab_value` is its scalar, accept-only twin for a
few rows (the contract's fast path): the same grammar and tables, and for a row without a problem
exactly the same numbers; for anything else it answers None and the vectorised function decides.

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

import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from features.schema import (
    DEFAULT_DETECTION_LIMIT_BY_ASSAY,
    MAX_VALUE_BY_CANONICAL_UNIT,
    MRD_ASSAYS,
    PERCENT_UNIT_BY_ASSAY,
    UNIT_CONVERSIONS,
)

__all__ = [
    "QUALIFIERS",
    "PARSED_COLUMNS",
    "ERROR_COLUMNS",
    "parse_lab_text",
    "normalise_lab_values",
    "MAX_EXACT_INTEGER",
    "CleanLabValue",
    "exact_plain_number",
    "normalise_clean_lab_value",
]

QUALIFIERS = ("number", "less_than", "not_detected", "below_loq", "missing", "unparseable")
PARSED_COLUMNS = ("value", "censored", "detection_limit", "unit", "detected_below_loq")
ERROR_COLUMNS = ("error_column", "error_kind", "error_reason")

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


def parse_lab_text(values: pd.Series) -> pd.DataFrame:
    """Parse lab results into a number, a percent flag and a qualifier, without units.

    Lab results repeat a lot (``NEG``, ``<0.01%``, values rounded to a few digits), so each
    distinct value is parsed once (numeric fast path, then one regular expression for the rest)
    and the result is broadcast back to the rows.

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
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        number = values.to_numpy(dtype=float, na_value=np.nan)
        qualifier = np.where(np.isnan(number), "missing", "number").astype(object)
        percent = np.zeros(len(values), dtype=bool)
    else:
        codes, distinct = pd.factorize(values.astype(object))
        parsed = _parse_distinct_values(pd.Series(distinct, dtype=object))
        missing_row = pd.DataFrame({"number": [np.nan], "percent": [False], "qualifier": ["missing"]})
        table = pd.concat([parsed, missing_row], ignore_index=True)  # code -1 (missing) -> last row
        number = table["number"].to_numpy()[codes]
        percent = table["percent"].to_numpy()[codes]
        qualifier = table["qualifier"].to_numpy(dtype=object)[codes]
    not_finite = np.isin(qualifier, ("number", "less_than")) & ~np.isfinite(number)
    qualifier = np.where(not_finite, "unparseable", qualifier).astype(object)
    return pd.DataFrame({"number": number, "percent": percent, "qualifier": qualifier}, index=values.index)


def _parse_distinct_values(distinct: pd.Series) -> pd.DataFrame:
    """Parse distinct non-missing values: numbers directly, text with :data:`_LAB_TEXT_RE`."""
    numeric = pd.to_numeric(distinct, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    is_plain = ~np.isnan(numeric)
    parsed = pd.DataFrame(
        {"number": numeric, "percent": np.zeros(len(distinct), dtype=bool), "qualifier": "number"}
    )
    if (~is_plain).any():
        text = _parse_distinct_texts(distinct[~is_plain].astype(str))
        parsed.loc[~is_plain, ["number", "percent", "qualifier"]] = text.to_numpy(dtype=object)
    return parsed.astype({"number": float, "percent": bool, "qualifier": object})


def _parse_distinct_texts(texts: pd.Series) -> pd.DataFrame:
    """Parse distinct lab strings with :func:`_match_lab_text` (numbers by ``pd.to_numeric``)."""
    matches = [_match_lab_text(text) for text in texts]
    number_text = pd.Series([np.nan if m[1] is None else m[1] for m in matches], dtype=object)
    return pd.DataFrame(
        {
            "number": pd.to_numeric(number_text, errors="coerce").to_numpy(dtype=float, na_value=np.nan),
            "percent": np.array([m[2] for m in matches], dtype=bool),
            "qualifier": np.array([m[0] for m in matches], dtype=object),
        },
        index=texts.index,
    )


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


def normalise_lab_values(
    values: pd.Series,
    units: pd.Series,
    assays: pd.Series,
    detection_limits: pd.Series | None = None,
) -> pd.DataFrame:
    """Turn raw lab results into canonical value, censoring and detection limit, with row errors.

    Parameters
    ----------
    values : pandas.Series
        Raw ``value`` column: numbers or lab text.
    units : pandas.Series
        Raw ``unit`` column (may be missing where the text carries ``%`` or has no number).
    assays : pandas.Series
        ``assay`` column (see ``features.schema.ASSAYS``).
    detection_limits : pandas.Series, optional
        Raw ``detection_limit`` column, in the row's unit (see the module docstring).

    Returns
    -------
    pandas.DataFrame
        Same index as ``values``; columns :data:`PARSED_COLUMNS` (``value`` float in the canonical
        unit, ``censored`` bool, ``detection_limit`` float canonical or NaN, ``unit`` canonical
        str, ``detected_below_loq`` bool) and :data:`ERROR_COLUMNS` (``error_column``,
        ``error_kind``, ``error_reason``: all missing for a good row; for a bad row the column at
        fault, a short kind for counting and a readable reason). Bad rows have NaN values.
    """
    rows = _LabRows.build(values, units, assays, detection_limits)
    raw_unit = np.where(rows.percent, rows.per_assay(PERCENT_UNIT_BY_ASSAY), rows.unit_column)
    limit_unit = np.where(rows.has_unit, rows.unit_column, raw_unit)
    canonical, factor = rows.convert_units(raw_unit)
    limit_canonical, limit_factor = rows.convert_units(limit_unit)
    column_canonical, _ = rows.convert_units(rows.unit_column)

    frame = _censor(rows, factor, rows.row_limit * limit_factor)
    frame["unit"] = np.where(pd.isna(canonical), rows.per_assay(_SINGLE_CANONICAL_UNIT), canonical)
    errors = _row_errors(rows, canonical, column_canonical, limit_canonical, frame)
    bad = errors["error_kind"].notna().to_numpy()
    frame.loc[bad, ["value", "detection_limit"]] = np.nan
    frame.loc[bad, ["censored", "detected_below_loq"]] = False
    frame.loc[bad, "unit"] = None
    return pd.concat([frame, errors], axis=1)


_SINGLE_CANONICAL_UNIT = {
    name: canon.pop()
    for name, conversions in UNIT_CONVERSIONS.items()
    if len(canon := {c for c, _ in conversions.values()}) == 1
}


@dataclass(frozen=True)
class _LabRows:
    """Per-row arrays shared by the normalisation steps (the assay is factorised once)."""

    index: pd.Index
    raw: np.ndarray
    number: np.ndarray
    percent: np.ndarray
    qualifier: np.ndarray
    assay: np.ndarray
    assay_codes: np.ndarray
    assay_names: np.ndarray
    unit_column: np.ndarray
    has_unit: np.ndarray
    row_limit: np.ndarray

    @classmethod
    def build(cls, values, units, assays, detection_limits) -> _LabRows:
        """Parse ``values`` once and take the other raw columns as numpy arrays."""
        parsed = parse_lab_text(values)
        assay = assays.astype(object).to_numpy()
        assay_codes, assay_names = pd.factorize(pd.Series(assay, dtype=object))
        unit_column = units.astype(object).where(units.notna(), None).to_numpy()
        if detection_limits is None:
            row_limit = np.full(len(values), np.nan)
        else:
            row_limit = pd.to_numeric(detection_limits, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        return cls(
            index=values.index, raw=values.to_numpy(dtype=object), number=parsed["number"].to_numpy(),
            percent=parsed["percent"].to_numpy(), qualifier=parsed["qualifier"].to_numpy(), assay=assay,
            assay_codes=assay_codes, assay_names=np.asarray(assay_names, dtype=object),
            unit_column=unit_column, has_unit=~pd.isna(unit_column), row_limit=row_limit,
        )

    def per_assay(self, mapping: dict, missing: object = None) -> np.ndarray:
        """``mapping[assay]`` per row (``missing`` for an assay not in ``mapping``)."""
        table = np.array([mapping.get(name, missing) for name in self.assay_names] + [missing], dtype=object)
        return table[self.assay_codes]

    def convert_units(self, raw_unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Canonical unit (None if unknown) and factor raw -> canonical (NaN if unknown) per row."""
        unit_codes, unit_names = pd.factorize(pd.Series(raw_unit, dtype=object))
        shape = (len(self.assay_names) + 1, len(unit_names) + 1)
        canonical = np.full(shape, None, dtype=object)
        factor = np.full(shape, np.nan)
        for i, assay in enumerate(self.assay_names):
            for j, unit in enumerate(unit_names):
                canonical[i, j], factor[i, j] = _conversion(assay, unit)
        return canonical[self.assay_codes, unit_codes], factor[self.assay_codes, unit_codes]


def _conversion(assay: Any, unit: Any) -> tuple[str | None, float]:
    """Canonical unit and factor raw -> canonical of ``unit`` for ``assay`` ((None, NaN): not its unit)."""
    return UNIT_CONVERSIONS.get(assay, {}).get(unit, (None, np.nan))


def _censor(rows: _LabRows, factor: np.ndarray, row_limit: np.ndarray) -> pd.DataFrame:
    """Value, censoring and detection limit (canonical unit) from the parsed qualifiers."""
    number = rows.number * factor
    default_limit = rows.per_assay(DEFAULT_DETECTION_LIMIT_BY_ASSAY, np.nan).astype(float)
    fallback_limit = np.where(np.isnan(row_limit), default_limit, row_limit)
    is_mrd = rows.per_assay(dict.fromkeys(MRD_ASSAYS, True), False).astype(bool)
    exact = (rows.qualifier == "number") & ~(is_mrd & (rows.number == 0))
    loq = rows.qualifier == "below_loq"
    stated_bound = (rows.qualifier == "less_than") | (loq & ~np.isnan(number))
    limit = np.where(stated_bound, number, fallback_limit)
    return pd.DataFrame(
        {
            "value": np.where(exact, number, limit),
            "censored": ~exact,
            "detection_limit": limit,
            "unit": None,
            "detected_below_loq": loq,
        },
        index=rows.index,
    )


def _fmt_number(number: float) -> str:
    return f"{number:.6g}"


def _row_errors(
    rows: _LabRows,
    canonical: np.ndarray,
    column_canonical: np.ndarray,
    limit_canonical: np.ndarray,
    frame: pd.DataFrame,
) -> pd.DataFrame:
    """First error per row (rules in priority order); reasons are built for the bad rows only."""
    raw, assay, unit_column, qualifier = rows.raw, rows.assay, rows.unit_column, rows.qualifier
    known_assay = rows.per_assay(dict.fromkeys(UNIT_CONVERSIONS, True), False).astype(bool)
    has_number = ~np.isnan(rows.number)
    value = frame["value"].to_numpy()
    limit = frame["detection_limit"].to_numpy()
    unit = frame["unit"].to_numpy()
    bound = pd.Series(unit, dtype=object).map(MAX_VALUE_BY_CANONICAL_UNIT).to_numpy(dtype=float)
    stated_bound = (qualifier == "less_than") | ((qualifier == "below_loq") & has_number)
    bad_limit = (limit <= 0) | (limit > bound)
    rules = [
        (qualifier == "missing", "value", "missing value", lambda i: "value is missing"),
        (qualifier == "unparseable", "value", "unparseable value", lambda i: f"cannot parse lab value {raw[i]!r}"),
        (~known_assay, "assay", "unknown assay", lambda i: f"unknown assay {assay[i]!r}"),
        (rows.percent & pd.isna(rows.per_assay(PERCENT_UNIT_BY_ASSAY)), "value", "unit conflict",
         lambda i: f"'%' in {raw[i]!r} but assay {assay[i]} is not reported in percent"),
        (rows.has_unit & pd.isna(column_canonical), "unit", "unit not valid for assay",
         lambda i: f"unit {unit_column[i]!r} is not a unit of assay {assay[i]} "
         f"(allowed: {', '.join(UNIT_CONVERSIONS[str(assay[i])])})"),
        (rows.percent & rows.has_unit & (column_canonical != canonical), "unit", "unit conflict",
         lambda i: f"'%' in {raw[i]!r} contradicts unit {unit_column[i]!r}"),
        (pd.isna(canonical) & has_number, "unit", "missing unit",
         lambda i: f"numeric result {raw[i]!r} needs a unit (unit column or '%')"),
        (pd.isna(unit), "unit", "missing unit", lambda i: f"assay {assay[i]} needs a unit to read {raw[i]!r}"),
        (~np.isnan(rows.row_limit) & pd.isna(limit_canonical), "unit", "missing unit",
         lambda i: "detection_limit given without a unit"),
        (has_number & (rows.number < 0), "value", "impossible value", lambda i: f"negative value {raw[i]!r}"),
        (stated_bound & bad_limit, "value", "impossible value",
         lambda i: f"impossible detection limit in {raw[i]!r}"),
        (~stated_bound & bad_limit, "detection_limit", "impossible value",
         lambda i: f"impossible detection limit {_fmt_number(limit[i])} {unit[i]} "
         f"(must be > 0 and <= {_fmt_number(bound[i])})"),
        (value > bound, "value", "impossible value",
         lambda i: f"{raw[i]!r} gives {_fmt_number(value[i])} {unit[i]}, "
         f"above the possible maximum {_fmt_number(bound[i])} {unit[i]}"),
    ]
    return _first_errors(rules, rows.index)


def _first_errors(rules: list, index: pd.Index) -> pd.DataFrame:
    """Apply ``(mask, column, kind, reason_of_position)`` rules; a row keeps its first error."""
    n_rows = len(index)
    column = np.full(n_rows, None, dtype=object)
    kind = np.full(n_rows, None, dtype=object)
    reason = np.full(n_rows, None, dtype=object)
    unassigned = np.ones(n_rows, dtype=bool)
    for mask, rule_column, rule_kind, reason_of in rules:
        hit = np.flatnonzero(np.asarray(mask, dtype=bool) & unassigned)
        if not len(hit):
            continue
        column[hit] = rule_column
        kind[hit] = rule_kind
        reason[hit] = [reason_of(i) for i in hit]
        unassigned[hit] = False
    return pd.DataFrame({"error_column": column, "error_kind": kind, "error_reason": reason}, index=index)


# --- the accept-only scalar form (the contract's fast path for a few clean rows) -------------------
class CleanLabValue(NamedTuple):
    """One normalised lab result (the :data:`PARSED_COLUMNS` of a good row)."""

    value: float
    censored: bool
    detection_limit: float
    unit: str
    detected_below_loq: bool


_PLAIN_NUMBER = re.compile(r"[+-]?(?P<whole>[0-9]*)\.?(?P<decimals>[0-9]*)(?:[eE](?P<exponent>[+-]?[0-9]{1,3}))?")
_PARSER_DIGITS = 17  # pandas' parser reads at most 17 mantissa digits (leading zeros included)
MAX_EXACT_INTEGER = 2**53
"""Integers up to this size are exact doubles (and so survive a float column unchanged)."""
_EXACT_POWER_OF_TEN = 22  # 1e0 ... 1e22 are exact doubles


def exact_plain_number(text: str) -> float | None:
    """The float ``pd.to_numeric`` makes of a plain decimal text, when it is certainly that float.

    ``pd.to_numeric`` parses text with its own routine: the mantissa digits are accumulated into
    a double, then multiplied or divided once by a power of ten. When the mantissa is an exact
    integer (at most 17 digits, leading zeros included, and at most 2**53) and the power of ten
    is exact (decimal exponent at most 22 in size), that single correctly rounded operation gives
    Python's correctly rounded ``float``. Anything else is refused: other syntax (blanks, ``_``,
    non-ASCII digits, ``inf``, ``nan``), longer or more extreme numbers, and a negative zero
    (which ``pd.to_numeric`` reads as ``+0`` or ``-0`` depending on the other values).

    Parameters
    ----------
    text : str
        ``[+-]digits[.digits][e[+-]digits]`` (ASCII digits only).

    Returns
    -------
    float or None
        None: not certain (the caller must take the full path).
    """
    match = _PLAIN_NUMBER.fullmatch(text)
    if match is None:
        return None
    digits = match["whole"] + match["decimals"]
    exponent = int(match["exponent"] or 0) - len(match["decimals"])
    if (
        not digits
        or len(digits) > _PARSER_DIGITS
        or int(digits) > MAX_EXACT_INTEGER
        or abs(exponent) > _EXACT_POWER_OF_TEN
    ):
        return None
    number = float(text)
    if number == 0 and text.startswith("-"):
        return None
    return number


def _clean_parse(raw: Any) -> tuple[float, bool, str] | None:
    """Number (NaN if none), ``%`` flag and qualifier of one raw value, or None when not certain.

    The scalar form of :func:`parse_lab_text` for values without a problem: a missing,
    unparseable or non-finite value, or a type other than str / int / float, gives None.
    """
    kind = type(raw)
    if kind is str:
        qualifier, number_text, percent = _match_lab_text(raw)
        if qualifier == "unparseable":
            return None
        number = math.nan if number_text is None else exact_plain_number(number_text)
        return None if number is None else (number, percent, qualifier)
    if kind is int and abs(raw) <= MAX_EXACT_INTEGER:
        return float(raw), False, "number"
    if kind is float and math.isfinite(raw) and math.copysign(1.0, raw) > 0:
        return raw, False, "number"
    return None


def normalise_clean_lab_value(
    raw: Any, unit_column: str | None, assay: str, row_limit: float
) -> CleanLabValue | None:
    """The scalar, accept-only twin of :func:`normalise_lab_values` for one row.

    Returns exactly what :func:`normalise_lab_values` gives a row without an error, or None when
    the row has an error (any rule of ``_row_errors``) or anything this form is not sure about.
    A normalised row it returns also satisfies the normalised table's frame checks (unit of the
    assay, value within the unit's bound, censored value = limit, below-LOQ is censored).

    Parameters
    ----------
    raw : str, int or float
        The raw ``value`` cell.
    unit_column : str or None
        The raw ``unit`` cell (None when missing).
    assay : str
        The ``assay`` cell.
    row_limit : float
        The row's ``detection_limit`` (NaN when missing), in the row's unit.

    Returns
    -------
    CleanLabValue or None
    """
    parsed = _clean_parse(raw)
    if parsed is None or assay not in UNIT_CONVERSIONS:
        return None
    number, percent, qualifier = parsed
    units = _clean_units(unit_column, assay, percent, has_number=not math.isnan(number))
    if units is None or number < 0:
        return None
    unit, factor, limit_unit, limit_factor = units
    if limit_unit is None and not math.isnan(row_limit):  # a detection_limit without a unit
        return None
    return _clean_censoring(number * factor, number, qualifier, assay, unit, row_limit * limit_factor)


def _clean_units(
    unit_column: str | None, assay: str, percent: bool, has_number: bool
) -> tuple[str, float, str | None, float] | None:
    """Canonical unit and factor of the value, canonical unit and factor of the row's detection limit.

    None on a unit error (rules of ``_row_errors``: percent not allowed, unit of another assay,
    ``%`` contradicting the unit column, a number or an assay without a unit).
    """
    percent_unit = PERCENT_UNIT_BY_ASSAY.get(assay)
    if percent and percent_unit is None:
        return None
    raw_unit = percent_unit if percent else unit_column
    canonical, factor = _conversion(assay, raw_unit)
    if unit_column is not None:
        column_canonical, _ = _conversion(assay, unit_column)
        if column_canonical is None or (percent and column_canonical != canonical):
            return None
    if canonical is None and has_number:
        return None
    unit = canonical if canonical is not None else _SINGLE_CANONICAL_UNIT.get(assay)
    if unit is None:
        return None
    limit_canonical, limit_factor = _conversion(assay, unit_column if unit_column is not None else raw_unit)
    return unit, factor, limit_canonical, limit_factor


def _clean_censoring(
    number: float, raw_number: float, qualifier: str, assay: str, unit: str, row_limit: float
) -> CleanLabValue | None:
    """Value, censoring and limit in the canonical unit (as :func:`_censor`); None if impossible."""
    fallback_limit = DEFAULT_DETECTION_LIMIT_BY_ASSAY.get(assay, math.nan) if math.isnan(row_limit) else row_limit
    exact = qualifier == "number" and not (assay in MRD_ASSAYS and raw_number == 0)
    loq = qualifier == "below_loq"
    stated_bound = qualifier == "less_than" or (loq and not math.isnan(number))
    limit = number if stated_bound else fallback_limit
    value = number if exact else limit
    bound = MAX_VALUE_BY_CANONICAL_UNIT.get(unit, math.nan)
    if limit <= 0 or limit > bound or value > bound:
        return None
    return CleanLabValue(value, not exact, limit, unit, loq)
