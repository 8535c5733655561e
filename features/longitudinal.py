"""Longitudinal features at a landmark: MRD, B-cell aplasia (BCA), antigen, CAR copies.

Every builder here takes the *normalised* measurements table (docs/architecture.md) and uses
only rows with ``day <= landmark_day``. All work is vectorised over patients: rows are mapped to
integer (patient, series) groups, sorted once, and summarised with numpy segment reductions;
there is no Python loop over patients.

Conventions
-----------
- A *series* is one (specimen, assay) stream of a patient, e.g. BM NGS-MRD.
- *Detectable* means not censored below the detection limit, or reported as
  "detected, below quantitation" (``detected_below_loq``; the contract stores such a result as
  censored at its limit). An uncensored value of 0 on a log-scaled series (MRD, CAR copies) is
  treated as not detected.
- A censored result (``censored`` True) has ``value`` = its detection limit; its log10 feature is
  log10 of the limit and its ``_last_censored`` flag is 1.
- Slopes are least-squares slopes over the last :data:`SLOPE_LAST_TESTS` results with a usable
  value, in units per 30 days. Censored results enter the slope at their detection limit (the
  upper bound of the true value): a fall to undetectable therefore shows a slope no steeper than
  the true one, and a rise from undetectable one no steeper than the true rise. Fewer than two
  usable results, or all on the same day, give NaN.
- Results of one series on the same day are ordered detectable after not detectable, then by
  value, so the *last* result of a day is its worst: the highest detectable result if any, else
  the highest censored limit. A censored "<0.1%" never hides a detected 0.05% of the same day,
  and the features do not depend on the order of the rows.
- A patient without any result of a series (e.g. no trackable NGS clone) gets ``_tests_count`` 0
  and NaN for every other feature of that series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.registry import float_frame, log10_positive, patient_index, register_builder, require_columns
from features.schema import MRD_ASSAYS

__all__ = [
    "BCA_RECOVERY_CELLS_PER_UL",
    "BCA_RECOVERY_PCT_LYMPHOCYTES",
    "DAYS_PER_SLOPE_UNIT",
    "MRD_SPECIMENS",
    "MRD_VISIT_WINDOW_DAYS",
    "SLOPE_LAST_TESTS",
    "SeriesSpec",
    "antigen_features",
    "b_cell_trajectory_features",
    "bca_features",
    "car_copies_features",
    "mrd_antigen_features",
    "mrd_features",
    "mrd_joint_features",
    "mrd_trajectory_features",
    "series_features",
]

MRD_SPECIMENS = ("BM", "PB")
SLOPE_LAST_TESTS = 3
DAYS_PER_SLOPE_UNIT = 30.0
BCA_RECOVERY_CELLS_PER_UL = 10.0
"""Default: PB CD19+ B cells >= 10 cells/uL = B-cell recovery (loss of BCA)."""
BCA_RECOVERY_PCT_LYMPHOCYTES = 1.0
"""Default: PB CD19+ B cells >= 1% of lymphocytes = B-cell recovery (loss of BCA)."""

_MEASUREMENT_COLUMNS = ("patient_id", "day", "specimen", "assay", "value", "censored")
_LOG_SCALED_STATS = ("last", "max_since_infusion", "slope_per_30d")


@dataclass(frozen=True)
class SeriesSpec:
    """One measurement series summarised per patient.

    Attributes
    ----------
    prefix : str
        Column-name prefix, e.g. ``"bm_ngs_mrd"``.
    specimens : tuple of str
        Specimens pooled into the series.
    assay : str
        Assay name.
    log10 : bool
        Summarise log10 of the value (MRD fractions, CAR copies) instead of the value itself.
    """

    prefix: str
    specimens: tuple[str, ...]
    assay: str
    log10: bool


@dataclass(frozen=True)
class _Rows:
    """Selected measurement rows, sorted by (group, day, detectable, value with missing values first)."""

    group: np.ndarray
    day: np.ndarray
    value: np.ndarray
    censored: np.ndarray
    detectable: np.ndarray
    n_groups: int


_SMALL_COLUMN_ROWS = 4096
"""Up to this many rows an object column is looked up entry by entry (a dict of a few levels);
beyond, ``Index.get_indexer`` (whose hash table costs about 50 microseconds to build) is faster."""


def _positions(levels: Sequence[Any], values: list) -> np.ndarray:
    """Position of each value in ``levels`` (unique, no missing value), -1 when absent."""
    position = {level: number for number, level in enumerate(levels)}
    return np.fromiter((position.get(value, -1) for value in values), dtype=np.int64, count=len(values))


def _category_codes(column: pd.Series, levels: Sequence[str] | pd.Index) -> np.ndarray:
    """Position of each entry of ``column`` in ``levels`` (-1 when absent or missing).

    ``levels`` are unique and not missing (the specimens or assays of a series, the patient index).
    """
    if isinstance(column.dtype, pd.CategoricalDtype):
        categorical = column.array  # the Categorical itself: no Series built for codes / categories
        lookup = np.append(_positions(levels, categorical.categories.tolist()), -1)
        return lookup[categorical.codes]
    if column.dtype == object and len(column) <= _SMALL_COLUMN_ROWS:
        return _positions(levels, column.tolist())
    levels = levels if isinstance(levels, pd.Index) else pd.Index(levels)
    return levels.get_indexer(column.to_numpy())


def _flags(measurements: pd.DataFrame, column: str) -> np.ndarray:
    """Boolean column as numpy (missing or absent -> False)."""
    if column not in measurements.columns:
        return np.zeros(len(measurements), dtype=bool)
    values = measurements[column]
    if values.dtype == bool:  # plain numpy booleans: nothing missing, no conversion
        return values.to_numpy()
    return values.to_numpy(dtype=bool, na_value=False)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ratio, NaN where the denominator is 0."""
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _segments(group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last row positions of each run of equal values in a sorted group array."""
    boundary = group[1:] != group[:-1]
    return np.flatnonzero(np.r_[True, boundary]), np.flatnonzero(np.r_[boundary, True])


def _select_rows(
    measurements: pd.DataFrame, index: pd.Index, landmark_day: float, specs: Sequence[SeriesSpec]
) -> _Rows:
    """Rows of the given series known at ``landmark_day``, grouped as patient * n_series + series."""
    require_columns(measurements, _MEASUREMENT_COLUMNS, "measurements")
    specimens = sorted({s for spec in specs for s in spec.specimens})
    assays = sorted({spec.assay for spec in specs})
    table = np.full((len(specimens) + 1, len(assays) + 1), -1)  # last row/col: code -1
    for number, spec in enumerate(specs):
        for specimen in spec.specimens:
            table[specimens.index(specimen), assays.index(spec.assay)] = number
    series = table[
        _category_codes(measurements["specimen"], specimens), _category_codes(measurements["assay"], assays)
    ]
    patient = _category_codes(measurements["patient_id"], index)
    day = measurements["day"].to_numpy(dtype=float)
    keep = np.flatnonzero((series >= 0) & (patient >= 0) & (day <= landmark_day))
    group = patient[keep].astype(np.int64) * len(specs) + series[keep]
    raw = measurements["value"].to_numpy(dtype=float, na_value=np.nan)[keep]
    log_scaled = np.array([spec.log10 for spec in specs])[series[keep]]
    value = np.where(log_scaled, log10_positive(raw), raw)
    censored = _flags(measurements, "censored")[keep]
    quantified = ~censored & ~(log_scaled & ~(raw > 0))  # an uncensored 0 on a log scale is not detected
    detectable = quantified | _flags(measurements, "detected_below_loq")[keep]
    order = np.lexsort((np.where(np.isnan(value), -np.inf, value), detectable, day[keep], group))
    return _Rows(
        group[order], day[keep][order], value[order], censored[order], detectable[order],
        len(index) * len(specs),
    )


def _slope_per_30d(rows: _Rows, landmark_day: float) -> np.ndarray:
    """Least-squares slope per 30 days over each group's last usable results."""
    usable = np.isfinite(rows.value)
    group, day, value = rows.group[usable], rows.day[usable], rows.value[usable]
    slope = np.full(rows.n_groups, np.nan)
    if group.size == 0:
        return slope
    first, last = _segments(group)
    rank_from_end = np.repeat(last, last - first + 1) - np.arange(group.size)
    recent = rank_from_end < SLOPE_LAST_TESTS
    group, x, y = group[recent], day[recent] - landmark_day, value[recent]
    count = np.bincount(group, minlength=rows.n_groups).astype(float)
    mean_x = _divide(np.bincount(group, x, rows.n_groups), count)
    mean_y = _divide(np.bincount(group, y, rows.n_groups), count)
    dx, dy = x - mean_x[group], y - mean_y[group]
    sxx = np.bincount(group, dx * dx, rows.n_groups)
    sxy = np.bincount(group, dx * dy, rows.n_groups)
    slope = _divide(sxy, np.where(sxx > 1e-12, sxx, 0.0)) * DAYS_PER_SLOPE_UNIT
    return np.where(count >= 2, slope, np.nan)


def _series_statistics(rows: _Rows, landmark_day: float) -> dict[str, np.ndarray]:
    """Per-group statistics (arrays of length ``rows.n_groups``, NaN where no result)."""
    names = ("last", "last_censored", "detectable_last", "detectable_since_infusion",
             "max_since_infusion", "slope_per_30d", "days_since_last")
    stats = {name: np.full(rows.n_groups, np.nan) for name in names}
    stats["tests_count"] = np.bincount(rows.group, minlength=rows.n_groups).astype(float)
    if rows.group.size == 0:
        return stats
    first, last = _segments(rows.group)
    present = rows.group[last]
    stats["last"][present] = rows.value[last]
    stats["last_censored"][present] = rows.censored[last]
    stats["detectable_last"][present] = rows.detectable[last]
    post_infusion = rows.day > 0
    tested_after = np.logical_or.reduceat(post_infusion, first)
    detected_after = np.logical_or.reduceat(rows.detectable & post_infusion, first)
    stats["detectable_since_infusion"][present] = np.where(tested_after, detected_after, np.nan)
    detected_values = np.where(rows.detectable & post_infusion & np.isfinite(rows.value), rows.value, -np.inf)
    maximum = np.maximum.reduceat(detected_values, first)
    stats["max_since_infusion"][present] = np.where(np.isfinite(maximum), maximum, np.nan)
    stats["days_since_last"][present] = landmark_day - rows.day[last]
    stats["slope_per_30d"] = _slope_per_30d(rows, landmark_day)
    return stats


def _column_name(spec: SeriesSpec, stat: str) -> str:
    scaled = f"log10_{stat}" if spec.log10 and stat in _LOG_SCALED_STATS else stat
    return f"{spec.prefix}_{scaled}"


def series_features(
    infusions: pd.DataFrame,
    measurements: pd.DataFrame,
    landmark_day: float,
    specs: Sequence[SeriesSpec],
    stats: Sequence[str],
) -> pd.DataFrame:
    """Summaries of measurement series per patient, from rows with ``day <= landmark_day``.

    Parameters
    ----------
    infusions : DataFrame
        Defines the patients (rows, in order).
    measurements : DataFrame
        Normalised measurements.
    landmark_day : float
        Days since infusion.
    specs : sequence of SeriesSpec
        The series to summarise.
    stats : sequence of str
        Statistics to emit per series, named ``{prefix}_{stat}`` (``log10_`` prepended to
        ``last``, ``max_since_infusion`` and ``slope_per_30d`` for log-scaled series):

        - ``last``: value at the last test (for a censored one: its detection limit)
        - ``last_censored``: 1 if the last result is censored below its limit
        - ``detectable_last``: 1 if the last result is detectable
        - ``detectable_since_infusion``: 1 if any result after infusion (day > 0) is detectable
          (NaN without a post-infusion result)
        - ``max_since_infusion``: maximum among detectable results after infusion (NaN when
          none); pre-infusion burden is a baseline feature
        - ``slope_per_30d``: slope over the last tests, per 30 days (module docstring)
        - ``days_since_last``: days from the last test to the landmark
        - ``tests_count``: number of results (0 when none)

    Returns
    -------
    DataFrame
        Indexed by ``patient_id``; float columns, series-major order.
    """
    index = patient_index(infusions)
    table = _series_statistics(_select_rows(measurements, index, float(landmark_day), specs), float(landmark_day))
    columns = {}
    for number, spec in enumerate(specs):
        for stat in stats:
            columns[_column_name(spec, stat)] = table[stat].reshape(len(index), len(specs))[:, number]
    return float_frame(columns, index)


_MRD_SPECS = tuple(
    SeriesSpec(f"{specimen.lower()}_{assay}", (specimen,), assay, log10=True)
    for specimen in MRD_SPECIMENS
    for assay in MRD_ASSAYS
)
_MRD_STATS = ("last", "last_censored", "detectable_last", "detectable_since_infusion", "max_since_infusion",
              "slope_per_30d", "days_since_last", "tests_count")


@register_builder("mrd")
def mrd_features(infusions: pd.DataFrame, measurements: pd.DataFrame, landmark_day: float) -> pd.DataFrame:
    """MRD features per specimen (BM, PB) and assay (flow, NGS, PCR) at the landmark.

    Parameters
    ----------
    infusions, measurements, landmark_day
        Builder arguments (:data:`features.registry.FeatureBuilder`); the ``flow_mrd``,
        ``ngs_mrd`` and ``pcr_mrd`` rows of BM and PB with ``day <= landmark_day`` are used.

    Returns
    -------
    DataFrame
        One row per patient (index ``patient_id``). Prefix ``{bm|pb}_{flow|ngs|pcr}_mrd_`` +
        ``log10_last`` (log10 fraction of nucleated cells; detection limit when censored),
        ``last_censored``, ``detectable_last``, ``detectable_since_infusion`` (flags),
        ``log10_max_since_infusion`` (log10 fraction, among detectable results after
        infusion), ``log10_slope_per_30d`` (log10 units per 30 days over the last 3 results),
        ``days_since_last`` (days), ``tests_count`` (results). See :func:`series_features`.
    """
    return series_features(infusions, measurements, landmark_day, _MRD_SPECS, _MRD_STATS)


_ANTIGEN_SPECS = (
    SeriesSpec("cd19_pct_blasts", MRD_SPECIMENS, "cd19_pct_blasts", log10=False),
    SeriesSpec("cd22_pct_blasts", MRD_SPECIMENS, "cd22_pct_blasts", log10=False),
)


@register_builder("antigen")
def antigen_features(infusions: pd.DataFrame, measurements: pd.DataFrame, landmark_day: float) -> pd.DataFrame:
    """Antigen expression on blasts (BM and PB pooled) at the landmark.

    Parameters
    ----------
    infusions, measurements, landmark_day
        Builder arguments (:data:`features.registry.FeatureBuilder`); the ``cd19_pct_blasts``
        and ``cd22_pct_blasts`` rows with ``day <= landmark_day`` are used.

    Returns
    -------
    DataFrame
        Per patient (index ``patient_id``), ``{cd19|cd22}_pct_blasts_`` + ``last`` (% of
        blasts expressing the antigen; the bound when censored, e.g. 1 for ``<1%``),
        ``last_censored`` (flag: the last result is an upper bound), ``slope_per_30d``
        (percentage points per 30 days over the last 3 results; a falling CD19 share is the
        CD19-dim / negative trend), ``days_since_last`` (days), ``tests_count`` (results).
        Blasts are measurable only with disease, so these are mostly NaN in remission.
    """
    stats = ("last", "last_censored", "slope_per_30d", "days_since_last", "tests_count")
    return series_features(infusions, measurements, landmark_day, _ANTIGEN_SPECS, stats)


_CAR_SPECS = tuple(
    SeriesSpec(f"{specimen.lower()}_car_copies", (specimen,), "car_copies", log10=True)
    for specimen in MRD_SPECIMENS
)


@register_builder("car_copies")
def car_copies_features(infusions: pd.DataFrame, measurements: pd.DataFrame, landmark_day: float) -> pd.DataFrame:
    """CAR transgene copies per specimen (PB, BM) at the landmark, where measured.

    Parameters
    ----------
    infusions, measurements, landmark_day
        Builder arguments (:data:`features.registry.FeatureBuilder`); the ``car_copies`` rows of
        PB and BM with ``day <= landmark_day`` are used.

    Returns
    -------
    DataFrame
        For each patient (index ``patient_id``), ``{pb|bm}_car_copies_`` + ``log10_last``
        (log10 copies/ug DNA; detection limit when censored), ``last_censored``,
        ``detectable_last`` (flags), ``log10_max_since_infusion`` (log10 copies/ug, peak
        expansion so far), ``days_since_last`` (days), ``tests_count`` (results).
    """
    stats = ("last", "last_censored", "detectable_last", "max_since_infusion", "days_since_last", "tests_count")
    return series_features(infusions, measurements, landmark_day, _CAR_SPECS, stats)


def _group_reduce(ufunc: np.ufunc, codes: np.ndarray, values: np.ndarray, size: int, initial: float) -> np.ndarray:
    """Unbuffered per-group reduction (``ufunc.at``) into an array of ``size`` groups."""
    out = np.full(size, initial)
    ufunc.at(out, codes, values)
    return out


def _b_cell_rows(
    measurements: pd.DataFrame, index: pd.Index, landmark_day: float, cells_per_ul: float, pct_lymphocytes: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classified post-infusion PB B-cell results: (patient code, day, recovered flag).

    A result is *recovered* when quantified at or above the threshold of its unit, *aplastic*
    when below it (a censored or below-quantitation result whose limit is at or below the
    threshold, or whose limit is unknown, is aplastic). Results that cannot be classified
    (unknown unit, limit above the threshold, missing value) are left out.
    """
    require_columns(measurements, (*_MEASUREMENT_COLUMNS, "unit"), "measurements")
    day = measurements["day"].to_numpy(dtype=float)
    patient = _category_codes(measurements["patient_id"], index)
    keep = np.flatnonzero(
        (_category_codes(measurements["specimen"], ["PB"]) == 0)
        & (_category_codes(measurements["assay"], ["b_cell_count"]) == 0)
        & (patient >= 0) & (day > 0) & (day <= landmark_day)
    )
    threshold = np.array([cells_per_ul, pct_lymphocytes, np.nan])[
        _category_codes(measurements["unit"].iloc[keep], ["cells/uL", "pct_lymphocytes"])
    ]
    value = measurements["value"].to_numpy(dtype=float, na_value=np.nan)[keep]
    upper_bound = (_flags(measurements, "censored") | _flags(measurements, "detected_below_loq"))[keep]
    recovered = ~upper_bound & (value >= threshold)
    aplastic = np.isfinite(threshold) & np.where(upper_bound, ~(value > threshold), value < threshold)
    classified = recovered | aplastic
    return patient[keep][classified], day[keep][classified], recovered[classified]


@register_builder("bca")
def bca_features(
    infusions: pd.DataFrame,
    measurements: pd.DataFrame,
    landmark_day: float,
    *,
    recovery_cells_per_ul: float = BCA_RECOVERY_CELLS_PER_UL,
    recovery_pct_lymphocytes: float = BCA_RECOVERY_PCT_LYMPHOCYTES,
) -> pd.DataFrame:
    """B-cell aplasia (BCA) features from PB ``b_cell_count`` results with 0 < day <= landmark.

    B-cell recovery (loss of BCA) at a test = CD19+ B cells >= ``recovery_cells_per_ul``
    (unit ``cells/uL``) or >= ``recovery_pct_lymphocytes`` (unit ``pct_lymphocytes``). The day of
    loss is interval-censored between the last aplastic test before the first recovered test
    (0 = infusion when there is none) and that first recovered test.

    Returns
    -------
    DataFrame
        Indexed by ``patient_id``; columns (unit):

        - ``bca_tests_count`` (classified post-infusion B-cell results by the landmark)
        - ``bca_lost_by_landmark`` (flag: a recovered test by the landmark)
        - ``bca_loss_day_lower`` / ``bca_loss_day_upper`` / ``bca_loss_day_mid`` (days since
          infusion: interval bounds of the first recovery and their midpoint; NaN if not lost)
        - ``days_since_bca_loss`` (days from the midpoint to the landmark; NaN if not lost)
        - ``bca_aplasia_observed_days`` (days since infusion of the last aplastic test before
          the first recovery, 0 if none: aplasia observed so far)
        - ``bca_recovered_at_last_test`` (flag: status at the landmark)
        - ``bca_days_since_last_test`` (days)

        All but the count are NaN for a patient without any classified test.
    """
    index = patient_index(infusions)
    s = float(landmark_day)
    patient, day, recovered = _b_cell_rows(measurements, index, s, recovery_cells_per_ul, recovery_pct_lymphocytes)
    n = len(index)
    tests = np.bincount(patient, minlength=n).astype(float)
    first_recovery = _group_reduce(np.minimum, patient[recovered], day[recovered], n, np.inf)
    before = ~recovered & (day < first_recovery[patient])
    last_aplastic = _group_reduce(np.maximum, patient[before], day[before], n, -np.inf)
    last_test = _group_reduce(np.maximum, patient, day, n, -np.inf)
    at_last = recovered & (day == last_test[patient])
    tested, lost = tests > 0, np.isfinite(first_recovery)
    aplasia_days = np.where(tested, np.where(np.isfinite(last_aplastic), last_aplastic, 0.0), np.nan)
    lower = np.where(lost, aplasia_days, np.nan)
    upper = np.where(lost, first_recovery, np.nan)
    columns = {
        "bca_tests_count": tests,
        "bca_lost_by_landmark": np.where(tested, lost, np.nan),
        "bca_loss_day_lower": lower,
        "bca_loss_day_upper": upper,
        "bca_loss_day_mid": (lower + upper) / 2.0,
        "days_since_bca_loss": s - (lower + upper) / 2.0,
        "bca_aplasia_observed_days": aplasia_days,
        "bca_recovered_at_last_test": np.where(tested, np.bincount(patient[at_last], minlength=n) > 0, np.nan),
        "bca_days_since_last_test": np.where(tested, s - last_test, np.nan),
    }
    return float_frame(columns, index)


# --- trajectories and joint states (issue 12: kept only with a measured gain, see docs/features.md) ---
_TRAJECTORY_STATS = ("log10_nadir_since_infusion", "nadir_censored", "log10_rise_from_nadir",
                     "days_since_last_negative")


def _post_infusion(rows: _Rows) -> _Rows:
    """The rows of :class:`_Rows` with day > 0, still sorted."""
    keep = rows.day > 0
    return _Rows(rows.group[keep], rows.day[keep], rows.value[keep], rows.censored[keep], rows.detectable[keep],
                 rows.n_groups)


def _trajectory_statistics(rows: _Rows, landmark_day: float) -> dict[str, np.ndarray]:
    """Nadir, rise from it and time since the last negative result of each group (post-infusion rows)."""
    stats = {name: np.full(rows.n_groups, np.nan) for name in _TRAJECTORY_STATS}
    usable = np.isfinite(rows.value)
    group, value = rows.group[usable], rows.value[usable]
    if group.size:
        nadir = _group_reduce(np.minimum, group, value, rows.n_groups, np.inf)
        at_nadir = rows.censored[usable] & (value <= nadir[group] + 1e-12)
        present = np.isfinite(nadir)
        stats["log10_nadir_since_infusion"] = np.where(present, nadir, np.nan)
        stats["nadir_censored"] = np.where(present, np.bincount(group[at_nadir], minlength=rows.n_groups) > 0,
                                           np.nan)
        first, last = _segments(group)
        latest = np.full(rows.n_groups, np.nan)
        latest[group[last]] = value[last]
        stats["log10_rise_from_nadir"] = latest - stats["log10_nadir_since_infusion"]
    negative = ~rows.detectable
    last_negative = _group_reduce(np.maximum, rows.group[negative], rows.day[negative], rows.n_groups, -np.inf)
    stats["days_since_last_negative"] = np.where(np.isfinite(last_negative), landmark_day - last_negative, np.nan)
    return stats


@register_builder("mrd_trajectory")
def mrd_trajectory_features(infusions: pd.DataFrame, measurements: pd.DataFrame, landmark_day: float) -> pd.DataFrame:
    """MRD trajectory since infusion per specimen (BM, PB) and assay (flow, NGS, PCR).

    From results with 0 < day <= landmark; censored results enter at their detection limit (the
    upper bound of the true value), as in :func:`series_features`.

    Returns
    -------
    DataFrame
        One row per patient (index ``patient_id``). Prefix ``{bm|pb}_{flow|ngs|pcr}_mrd_`` +
        ``log10_nadir_since_infusion`` (log10 fraction: the lowest result; a detection limit
        when the nadir is censored), ``nadir_censored`` (flag: the nadir is an upper bound),
        ``log10_rise_from_nadir`` (log10 units: last result minus nadir; 0 while undetectable at
        the same limit), ``days_since_last_negative`` (days from the last undetectable result to
        the landmark; NaN when none). NaN without a post-infusion result.
    """
    index = patient_index(infusions)
    s = float(landmark_day)
    rows = _post_infusion(_select_rows(measurements, index, s, _MRD_SPECS))
    table = _trajectory_statistics(rows, s)
    columns = {f"{spec.prefix}_{stat}": table[stat].reshape(len(index), len(_MRD_SPECS))[:, number]
               for number, spec in enumerate(_MRD_SPECS) for stat in _TRAJECTORY_STATS}
    return float_frame(columns, index)


MRD_VISIT_WINDOW_DAYS = 7.0
"""Results within this many days before the latest MRD result belong to the same (latest) visit."""


def _latest_visit(rows: _Rows, n_patients: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient code, specimen (0 BM, 1 PB) and a mask of the rows of each patient's latest MRD visit."""
    patient = rows.group // len(_MRD_SPECS)
    specimen = (rows.group % len(_MRD_SPECS)) // len(MRD_ASSAYS)
    latest = _group_reduce(np.maximum, patient, rows.day, n_patients, -np.inf)
    return patient, specimen, rows.day >= latest[patient] - MRD_VISIT_WINDOW_DAYS


@register_builder("mrd_joint")
def mrd_joint_features(infusions: pd.DataFrame, measurements: pd.DataFrame, landmark_day: float) -> pd.DataFrame:
    """Joint blood / marrow MRD state at the latest visit, with the detection limits of negative results.

    The latest visit is the day of a patient's latest post-infusion MRD result (any specimen and
    assay) and the :data:`MRD_VISIT_WINDOW_DAYS` before it.

    Returns
    -------
    DataFrame
        One row per patient (index ``patient_id``):

        - ``mrd_latest_days_since`` (days from the latest MRD result to the landmark)
        - ``mrd_latest_detectable_any`` (flag: any result of the visit detectable)
        - ``mrd_latest_log10_max_detectable`` (log10 fraction: highest detectable result; NaN when none)
        - ``mrd_latest_log10_negative_limit`` (log10 fraction: when nothing is detectable, the lowest
          detection limit among the visit's results, i.e. how deep the negative state was tested;
          NaN otherwise)
        - ``mrd_latest_pb_positive_bm_negative`` (flag: blood detectable while every marrow result
          of the visit is not; NaN unless both specimens were tested)

        All NaN without a post-infusion MRD result.
    """
    index = patient_index(infusions)
    n = len(index)
    s = float(landmark_day)
    rows = _post_infusion(_select_rows(measurements, index, s, _MRD_SPECS))
    patient, specimen, visit = _latest_visit(rows, n)
    patient, specimen = patient[visit], specimen[visit]
    value, detectable = rows.value[visit], rows.detectable[visit]
    latest = _group_reduce(np.maximum, patient, rows.day[visit], n, -np.inf)
    tested = np.isfinite(latest)
    detected = np.bincount(patient[detectable], minlength=n) > 0
    highest = _group_reduce(np.maximum, patient[detectable], np.nan_to_num(value[detectable], nan=-np.inf), n, -np.inf)
    finite_limit = ~detectable & np.isfinite(value)
    deepest = _group_reduce(np.minimum, patient[finite_limit], value[finite_limit], n, np.inf)
    bm_detected, pb_detected = (np.bincount(patient[detectable & (specimen == k)], minlength=n) > 0 for k in (0, 1))
    bm_tested, pb_tested = (np.bincount(patient[specimen == k], minlength=n) > 0 for k in (0, 1))
    columns = {
        "mrd_latest_days_since": np.where(tested, s - latest, np.nan),
        "mrd_latest_detectable_any": np.where(tested, detected, np.nan),
        "mrd_latest_log10_max_detectable": np.where(np.isfinite(highest), highest, np.nan),
        "mrd_latest_log10_negative_limit": np.where(tested & ~detected & np.isfinite(deepest), deepest, np.nan),
        "mrd_latest_pb_positive_bm_negative": np.where(bm_tested & pb_tested, pb_detected & ~bm_detected, np.nan),
    }
    return float_frame(columns, index)


def _sorted_rows(group: np.ndarray, day: np.ndarray, value: np.ndarray, censored: np.ndarray,
                 detectable: np.ndarray, n_groups: int) -> _Rows:
    """:class:`_Rows` sorted as :func:`_select_rows` sorts them (group, day, detectable, value)."""
    order = np.lexsort((np.where(np.isnan(value), -np.inf, value), detectable, day, group))
    return _Rows(group[order], day[order], value[order], censored[order], detectable[order], n_groups)


@register_builder("b_cell_trajectory")
def b_cell_trajectory_features(
    infusions: pd.DataFrame,
    measurements: pd.DataFrame,
    landmark_day: float,
    *,
    recovery_cells_per_ul: float = BCA_RECOVERY_CELLS_PER_UL,
    recovery_pct_lymphocytes: float = BCA_RECOVERY_PCT_LYMPHOCYTES,
) -> pd.DataFrame:
    """Timing of B-cell recovery: PB B cells relative to the recovery threshold of their unit.

    Each post-infusion PB ``b_cell_count`` result (0 < day <= landmark) becomes log10(value /
    threshold), the threshold of its unit (as :func:`bca_features`), so centers reporting cells/uL
    and % of lymphocytes share one scale: 0 = at the threshold of loss of BCA, -1 = ten times below.
    A censored result enters at its limit (an upper bound), as in :func:`series_features`.

    Returns
    -------
    DataFrame
        One row per patient (index ``patient_id``), prefix ``b_cells_log10_vs_recovery_`` +
        ``last`` (log10 ratio at the last test), ``last_censored`` (flag), ``max_since_infusion``
        (log10 ratio, highest quantified result), ``slope_per_30d`` (log10 ratio per 30 days over
        the last 3 results: a rise below the threshold announces the loss of BCA). NaN without a
        post-infusion result.
    """
    index = patient_index(infusions)
    s = float(landmark_day)
    require_columns(measurements, (*_MEASUREMENT_COLUMNS, "unit"), "measurements")
    day = measurements["day"].to_numpy(dtype=float)
    patient = _category_codes(measurements["patient_id"], index)
    unit = _category_codes(measurements["unit"], ["cells/uL", "pct_lymphocytes"])
    keep = np.flatnonzero((_category_codes(measurements["specimen"], ["PB"]) == 0)
                          & (_category_codes(measurements["assay"], ["b_cell_count"]) == 0)
                          & (patient >= 0) & (unit >= 0) & (day > 0) & (day <= s))
    threshold = np.array([recovery_cells_per_ul, recovery_pct_lymphocytes])[unit[keep]]
    ratio = log10_positive(measurements["value"].to_numpy(dtype=float, na_value=np.nan)[keep] / threshold)
    censored = (_flags(measurements, "censored") | _flags(measurements, "detected_below_loq"))[keep]
    rows = _sorted_rows(patient[keep].astype(np.int64), day[keep], ratio, censored, ~censored, len(index))
    table = _series_statistics(rows, s)
    names = {"last": "last", "last_censored": "last_censored", "max_since_infusion": "max_since_infusion",
             "slope_per_30d": "slope_per_30d"}
    return float_frame({f"b_cells_log10_vs_recovery_{name}": table[stat] for name, stat in names.items()}, index)


_DAY_SPAN = 1_000_000.0
"""Visit key = patient code x this + day (days since infusion are far below it)."""


def _last_per_visit(patient: np.ndarray, day: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Visit keys (ascending) and the value of the last row of each visit (rows sorted by patient and day)."""
    key = patient * _DAY_SPAN + day
    last = _segments(key)[1] if key.size else np.zeros(0, dtype=np.int64)
    return key[last], value[last]


@register_builder("mrd_antigen")
def mrd_antigen_features(infusions: pd.DataFrame, measurements: pd.DataFrame, landmark_day: float) -> pd.DataFrame:
    """CD19-negative and CD19-positive parts of detectable marrow MRD (antigen of the residual blasts).

    At the last marrow visit (day <= landmark, after infusion) with both a detectable BM flow-MRD
    result and a CD19 % of blasts result: the MRD fraction times the share of blasts without /
    with CD19 (the share is floored at 1%, about the resolution of the assay).

    Returns
    -------
    DataFrame
        One row per patient (index ``patient_id``): ``bm_cd19_negative_mrd_log10_last`` and
        ``bm_cd19_positive_mrd_log10_last`` (log10 fraction of nucleated cells),
        ``bm_mrd_antigen_days_since`` (days from that visit to the landmark). NaN without such a
        visit (no detectable blasts to type).
    """
    index = patient_index(infusions)
    s = float(landmark_day)
    specs = (SeriesSpec("flow", ("BM",), "flow_mrd", log10=True),
             SeriesSpec("cd19", ("BM",), "cd19_pct_blasts", log10=False))
    rows = _post_infusion(_select_rows(measurements, index, s, specs))
    patient, series = rows.group // 2, rows.group % 2
    flow = (series == 0) & rows.detectable & np.isfinite(rows.value)
    cd19 = (series == 1) & np.isfinite(rows.value)
    mrd_key, mrd = _last_per_visit(patient[flow], rows.day[flow], rows.value[flow])  # rows sorted: last = highest
    share_key, share = _last_per_visit(patient[cd19], rows.day[cd19], rows.value[cd19])
    key, at_mrd, at_share = np.intersect1d(mrd_key, share_key, assume_unique=True, return_indices=True)
    code = np.floor(key / _DAY_SPAN).astype(np.int64)
    last = _segments(code)[1] if code.size else np.zeros(0, dtype=np.int64)  # keys ascend: each patient's last visit
    code, day, log_mrd = code[last], key[last] - code[last] * _DAY_SPAN, mrd[at_mrd][last]
    cd19_share = np.clip(share[at_share][last] / 100.0, 0.01, 0.99)
    n = len(index)
    out = {name: np.full(n, np.nan) for name in ("bm_cd19_negative_mrd_log10_last", "bm_cd19_positive_mrd_log10_last",
                                                 "bm_mrd_antigen_days_since")}
    out["bm_cd19_negative_mrd_log10_last"][code] = log_mrd + np.log10(1.0 - cd19_share)
    out["bm_cd19_positive_mrd_log10_last"][code] = log_mrd + np.log10(cd19_share)
    out["bm_mrd_antigen_days_since"][code] = s - day
    return float_frame(out, index)
