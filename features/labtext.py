"""Parsing of lab results (numbers and lab text) into value + censored + detection limit.

Labs write results as numbers (``6e-4``, ``1.2E-05``), percentages (``0.06%``), upper bounds
(``<0.01%``), negatives (``NEG``, ``negative``, ``not detected``) and detected-but-unquantifiable
results (``detected <LOQ``, ``detected, below quantitation``). Everything here is vectorised over
the whole column (pandas string methods and numpy), so millions of rows parse in seconds.

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
from typing import Optional

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
    """Parse distinct lab strings with :data:`_LAB_TEXT_RE` (one ``str.extract`` pass)."""
    groups = texts.str.extract(_LAB_TEXT_RE, flags=re.IGNORECASE)
    is_number = groups["num"].notna()
    qualifier = np.select(
        [is_number & groups["op"].notna(), is_number, groups["not_detected"].notna(), groups["loq"].notna()],
        ["less_than", "number", "not_detected", "below_loq"],
        default="unparseable",
    ).astype(object)
    number_text = pd.Series(np.where(is_number, groups["num"], groups["loq_num"]), dtype=object)
    return pd.DataFrame(
        {
            "number": pd.to_numeric(number_text, errors="coerce").to_numpy(dtype=float, na_value=np.nan),
            "percent": (groups["pct"].notna() | groups["loq_pct"].notna()).to_numpy(),
            "qualifier": qualifier,
        },
        index=texts.index,
    )


def normalise_lab_values(
    values: pd.Series,
    units: pd.Series,
    assays: pd.Series,
    detection_limits: Optional[pd.Series] = None,
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
    def build(cls, values, units, assays, detection_limits) -> "_LabRows":
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
                canonical[i, j], factor[i, j] = UNIT_CONVERSIONS.get(assay, {}).get(unit, (None, np.nan))
        return canonical[self.assay_codes, unit_codes], factor[self.assay_codes, unit_codes]


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
         f"(allowed: {', '.join(UNIT_CONVERSIONS[assay[i]])})"),
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
