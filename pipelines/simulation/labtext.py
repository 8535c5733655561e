"""Writing results as laboratories do: numbers, percent and scientific text, censored text.

The reverse of ``features.labtext``: a quantified result becomes a plain number in the row's unit
or, for a share of rows, lab text ("0.06%", "1.2E-05"); a result below the detection limit is
always written as censored text ("<0.01%", "NEG", "negative", "<1E-06", "<5") with the limit in
the ``detection_limit`` column, never as 0; an NGS result between the limit and the limit of
quantitation may be written "detected <LOQ" (censored at the quantitation limit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.simulation.arrays import NO_VALUE

__all__ = ["ResultRows", "format_significant", "format_results"]

_MRD_CENSORED_STYLES = ("percent", "NEG", "negative", "fraction")


@dataclass(frozen=True)
class ResultRows:
    """Formatted results: text value, unit (None = empty) and detection limit in that unit."""

    value: np.ndarray
    """What the lab writes: a number as text, ``"0.06%"``, ``"<0.01%"``, ``"NEG"``, ``"detected <LOQ"`` ..."""
    unit: np.ndarray
    """The row's unit (``fraction``, ``percent``, ``cells/uL`` ...); None when the text carries ``%``."""
    detection_limit: np.ndarray
    """In the row's unit (the quantitation limit for "detected <LOQ"); NaN when none applies."""


def format_significant(values: np.ndarray, digits: int = 3, style: str = "g") -> np.ndarray:
    """Format positive numbers with ``digits`` significant digits (vectorised via unique values).

    Parameters
    ----------
    values : ndarray of float
        Positive numbers.
    digits : int
        Significant digits.
    style : {"g", "E", "%"}
        Plain (``0.00012``), scientific (``1.2E-04``) or percent of the value (``0.012%``).

    Returns
    -------
    ndarray of str (object)
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return np.array([], dtype=object)
    scaled = values * 100.0 if style == "%" else values
    unique, inverse = np.unique(_round_significant(scaled, digits), return_inverse=True)
    if style == "E":
        text = [f"{v:.{digits - 1}E}" for v in unique.tolist()]
    else:
        text = [f"{v:.{digits}g}" + ("%" if style == "%" else "") for v in unique.tolist()]
    return np.asarray(text, dtype=object)[inverse]


def _round_significant(values: np.ndarray, digits: int) -> np.ndarray:
    magnitude = np.floor(np.log10(np.maximum(np.abs(values), 1e-300)))
    factor = 10.0 ** (digits - 1 - magnitude)
    return np.round(values * factor) / factor


def format_results(value: np.ndarray, detected: np.ndarray, limit: np.ndarray, unit: str, percent_unit: str | None,
                   text_share: np.ndarray, rng: np.random.Generator, loq: np.ndarray | None = None,
                   p_loq_text: float = 0.5) -> ResultRows:
    """Write results lab-style.

    Parameters
    ----------
    value : ndarray of float
        True-scale observed value in ``unit`` (used when detected).
    detected : ndarray of bool
        At or above the detection limit.
    limit : ndarray of float
        Detection limit in ``unit``.
    unit : str
        The canonical raw unit (``fraction``, ``cells/uL``, ``pct_lymphocytes``, ``copies/ug``, ...).
    percent_unit : str or None
        Whether a ``%`` text is possible: for MRD (``fraction``) the value times 100 is written
        with ``%`` and unit ``percent`` or empty; for ``pct_lymphocytes`` / ``pct_blasts`` the
        value itself carries the ``%``; None: no percent text.
    text_share : ndarray of float
        Per row, the probability that a quantified result is written as text.
    rng : numpy.random.Generator
        The random stream.
    loq : ndarray of float, optional
        Limit of quantitation (NGS): detected results below it are written "detected <LOQ" (censored
        at the quantitation limit) with probability ``p_loq_text``.
    p_loq_text : float
        Probability that such a result is written "detected <LOQ".

    Returns
    -------
    ResultRows
    """
    n = value.shape[0]
    out = np.empty(n, dtype=object)
    units = np.full(n, unit, dtype=object)
    limits = np.asarray(limit, dtype=float).copy()
    as_text = detected & (rng.random(n) < text_share)
    plain = detected & ~as_text
    out[plain] = format_significant(value[plain])
    _write_quantified_text(out, units, limits, value, as_text, unit, percent_unit, rng)
    _write_censored(out, units, limits, ~detected, unit, percent_unit, rng)
    if loq is not None:
        below_loq = detected & (value < loq) & (rng.random(n) < p_loq_text)
        out[below_loq] = "detected <LOQ"
        units[below_loq] = unit
        limits[below_loq] = loq[below_loq]
    return ResultRows(value=out, unit=units, detection_limit=limits)


def _write_quantified_text(out: np.ndarray, units: np.ndarray, limits: np.ndarray, value: np.ndarray,
                           rows: np.ndarray, unit: str, percent_unit: str | None, rng: np.random.Generator) -> None:
    use_percent = rows & (rng.random(rows.shape[0]) < 0.6) if percent_unit is not None else np.zeros_like(rows)
    other = rows & ~use_percent
    out[other] = format_significant(value[other], 2, "E" if unit == "fraction" else "g")
    if unit == "fraction":
        out[use_percent] = format_significant(value[use_percent], 2, "%")
        units[use_percent] = np.where(rng.random(int(use_percent.sum())) < 0.5, "percent", NO_VALUE)
        limits[use_percent] = limits[use_percent] * 100.0
    else:
        out[use_percent] = format_significant(value[use_percent] / 100.0, 3, "%")


def _write_censored(out: np.ndarray, units: np.ndarray, limits: np.ndarray, rows: np.ndarray, unit: str,
                    percent_unit: str | None, rng: np.random.Generator) -> None:
    idx = np.flatnonzero(rows)
    style = rng.integers(0, len(_MRD_CENSORED_STYLES), idx.shape[0])
    if unit != "fraction":
        style = np.where(style == 0, 3, style) if percent_unit is None else style
        style = np.where(np.isin(style, (1, 2)), 3, style)
    fraction_rows = idx[style == 3]
    out[fraction_rows] = "<" + format_significant(limits[fraction_rows], 2, "g").astype(str)
    for code, text in ((1, "NEG"), (2, "negative")):
        out[idx[style == code]] = text
    percent_rows = idx[style == 0]
    if unit == "fraction":
        out[percent_rows] = "<" + format_significant(limits[percent_rows], 2, "%").astype(str)
        units[percent_rows] = np.where(rng.random(percent_rows.shape[0]) < 0.5, "percent", NO_VALUE)
        limits[percent_rows] = limits[percent_rows] * 100.0
    else:
        out[percent_rows] = "<" + format_significant(limits[percent_rows] / 100.0, 2, "%").astype(str)
