"""The feature-builder registry: name -> builder function, and the as-of-day feature rows.

A *feature builder* is a pure function

``builder(infusions, measurements, landmark_day, **options) -> DataFrame``

that returns one row per patient of ``infusions`` (indexed by ``patient_id``, same order),
with float columns only (NaN = missing, flags as 0.0/1.0), computed from measurement rows with
``day <= landmark_day`` only. Builders register themselves by name with
:func:`register_builder`; the run config lists the names to use
(``FeaturesConfig.builders``). Adding a feature builder is therefore one decorated function plus
one config line. A config entry of the form ``"package.module:function"`` names a builder outside
this package without registering it.

:func:`build_feature_rows` is what both the landmark-set builder (training) and batch scoring
(at an as-of day, without outcomes) call, so training and scoring compute features the same way.
:func:`patient_index`, :func:`require_columns` and :func:`log10_positive` are small helpers shared
by the builders.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_BUILDERS",
    "FeatureBuilder",
    "FeatureInputError",
    "float_frame",
    "available_builders",
    "build_feature_rows",
    "get_builder",
    "log10_positive",
    "patient_index",
    "register_builder",
    "require_columns",
]

FeatureBuilder = Callable[..., pd.DataFrame]
"""``(infusions, measurements, landmark_day, **options) -> DataFrame`` indexed by patient_id."""

DEFAULT_BUILDERS: tuple[str, ...] = ("baseline", "mrd", "bca", "antigen", "car_copies")
"""The trajectory builders (``mrd_trajectory``, ``mrd_joint``, ``b_cell_trajectory``, ``mrd_antigen``) are opt-in:
docs/features.md gives their measured gain and serving cost."""

_REGISTRY: dict[str, FeatureBuilder] = {}
_BUILTIN_MODULES = ("features.baseline", "features.longitudinal")


class FeatureInputError(ValueError):
    """Input tables that the feature builders cannot use; the message names table, column, reason."""


def register_builder(name: str) -> Callable[[FeatureBuilder], FeatureBuilder]:
    """Register a feature builder under ``name`` (decorator).

    Parameters
    ----------
    name : str
        Registry name used in ``FeaturesConfig.builders``.

    Returns
    -------
    callable
        Decorator returning the function unchanged.
    """

    def decorate(func: FeatureBuilder) -> FeatureBuilder:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not func:
            raise ValueError(f"feature builder '{name}' is already registered ({existing.__module__})")
        _REGISTRY[name] = func
        return func

    return decorate


def _load_builtin_builders() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def available_builders() -> tuple[str, ...]:
    """Names of every registered builder, sorted.

    Returns
    -------
    tuple of str
        Registry names, the built-in builders included.
    """
    _load_builtin_builders()
    return tuple(sorted(_REGISTRY))


def get_builder(name: str) -> FeatureBuilder:
    """Look a builder up by registry name or by ``"module:function"`` import path.

    Parameters
    ----------
    name : str
        Registry name (``"mrd"``) or import path (``"package.module:function"``).

    Returns
    -------
    callable
        The builder, see :data:`FeatureBuilder`.

    Raises
    ------
    KeyError
        Unknown name; the message lists the registered ones.
    """
    _load_builtin_builders()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise KeyError(f"feature builder '{name}' cannot be imported: {exc}") from None
    raise KeyError(f"unknown feature builder '{name}'; registered: {', '.join(available_builders())}")


def require_columns(frame: pd.DataFrame, columns: Sequence[str], table: str) -> None:
    """Raise :class:`FeatureInputError` naming the table and every missing column.

    Parameters
    ----------
    frame : DataFrame
    columns : sequence of str
        Columns the caller needs.
    table : str
        Table name used in the message (``"measurements"``).
    """
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise FeatureInputError(f"{table}: missing required column(s) {', '.join(missing)}")


def log10_positive(values: np.ndarray) -> np.ndarray:
    """log10 of the positive entries; zero, negative or missing entries give NaN (no warning).

    Parameters
    ----------
    values : ndarray of float

    Returns
    -------
    ndarray of float
        Same shape as ``values``.
    """
    out = np.full(values.shape, np.nan)
    positive = values > 0
    out[positive] = np.log10(values[positive])
    return out


def float_frame(columns: Mapping[str, np.ndarray], index: pd.Index) -> pd.DataFrame:
    """A float64 frame of named columns as one block (a builder's output).

    Same result as ``pd.DataFrame(columns, index=index, dtype=float)``, without pandas' per-column
    conversion (which dominates for the few rows of a scoring request).

    Parameters
    ----------
    columns : mapping of str to ndarray
        Equal-length 1-d arrays, in output column order.
    index : Index
        Row index (patient ids).

    Returns
    -------
    DataFrame
    """
    matrix = np.empty((len(index), len(columns)))
    for position, values in enumerate(columns.values()):
        matrix[:, position] = values
    return pd.DataFrame(matrix, index=index, columns=list(columns), copy=False)


def patient_index(infusions: pd.DataFrame) -> pd.Index:
    """The patient ids of ``infusions`` as a unique ``Index`` named ``patient_id``.

    Parameters
    ----------
    infusions : DataFrame
        One row per patient.

    Returns
    -------
    Index
        The ids in table order.

    Raises
    ------
    FeatureInputError
        When the column is missing, or an id is missing or duplicated.
    """
    require_columns(infusions, ["patient_id"], "infusions")
    index = pd.Index(infusions["patient_id"], name="patient_id")
    if index.hasnans:
        raise FeatureInputError("infusions: column patient_id has missing values")
    if not index.is_unique:
        duplicated = index[index.duplicated()].unique()[:5].tolist()
        raise FeatureInputError(f"infusions: column patient_id has duplicate ids, e.g. {duplicated}")
    return index


def _check_builder_output(name: str, frame: pd.DataFrame, index: pd.Index) -> None:
    if not frame.index.equals(index):
        raise ValueError(f"feature builder '{name}' must return one row per infusions patient, in order")
    not_float = [c for c, dtype in frame.dtypes.items() if dtype != np.float64]
    if not_float:
        raise ValueError(f"feature builder '{name}' returned non-float columns: {not_float}")


def _known_rows(measurements: pd.DataFrame, landmark_day: float) -> pd.DataFrame:
    """Rows with ``day <= landmark_day``; a row slice (no copy) when sorted by day."""
    day = measurements["day"]
    if day.is_monotonic_increasing:
        return measurements.iloc[: int(np.searchsorted(day.to_numpy(dtype=float), landmark_day, side="right"))]
    return measurements.loc[day.to_numpy(dtype=float) <= landmark_day]


def build_feature_rows(
    infusions: pd.DataFrame,
    measurements: pd.DataFrame,
    landmark_day: float,
    builders: Sequence[str] = DEFAULT_BUILDERS,
    builder_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """Features of every patient of ``infusions`` as known at ``landmark_day``.

    Only measurement rows with ``day <= landmark_day`` reach the builders. No outcome is used,
    so this is also what batch scoring calls at an as-of day.

    Parameters
    ----------
    infusions : DataFrame
        Typed infusions table (one row per patient).
    measurements : DataFrame
        Normalised measurements table (see docs/architecture.md).
    landmark_day : float
        Days since infusion; 0 = at infusion (pre-infusion data only).
    builders : sequence of str
        Registry names (or ``module:function`` paths), in output column order.
    builder_options : mapping, optional
        Keyword options per builder name, e.g. ``{"bca": {"recovery_cells_per_ul": 10.0}}``.

    Returns
    -------
    DataFrame
        Indexed by ``patient_id`` (order of ``infusions``); column ``landmark_day`` (days) first,
        then each builder's float columns.
    """
    landmark = float(landmark_day)
    if not math.isfinite(landmark):
        raise FeatureInputError(f"landmark_day must be a finite number of days, got {landmark_day!r}")
    options = dict(builder_options or {})
    unknown = sorted(set(options) - set(builders))
    if unknown:
        raise KeyError(f"builder_options given for builders not in use: {unknown}")
    index = patient_index(infusions)
    require_columns(measurements, ["patient_id", "day"], "measurements")
    known = _known_rows(measurements, landmark)
    frames = []
    for name in builders:
        frame = get_builder(name)(infusions, known, landmark, **options.get(name, {}))
        _check_builder_output(name, frame, index)
        frames.append(frame)
    return _one_block(frames, index, landmark, builders)


def _one_block(frames: list[pd.DataFrame], index: pd.Index, landmark: float, builders: Sequence[str]) -> pd.DataFrame:
    """``landmark_day`` and the builders' columns as one float block (no per-builder consolidation)."""
    columns = pd.Index(["landmark_day"]).append([frame.columns for frame in frames])
    duplicated = columns[columns.duplicated()].tolist()
    if duplicated:
        raise ValueError(f"feature builders {list(builders)} produce duplicate columns {duplicated}")
    matrix = np.empty((len(index), len(columns)))
    matrix[:, 0] = landmark
    start = 1
    for frame in frames:
        matrix[:, start : start + frame.shape[1]] = frame.to_numpy(dtype=float)
        start += frame.shape[1]
    return pd.DataFrame(matrix, index=index, columns=columns, copy=False)
