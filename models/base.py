"""Shared vocabulary of the models package: causes, column names, targets, the model protocol.

Every competing-risks model of this package is fitted on a landmark set (docs/architecture.md,
"Landmark set") split into features ``X`` (float DataFrame, NaN allowed) and a target ``y``
(DataFrame with ``time`` in days from the landmark, > 0, and ``event`` as a string). It answers

- ``predict_cif(X, horizons_days)``: a DataFrame with one column per cause and horizon
  (``cif_{cause}_{h}d``), the relapse total ``cif_relapse_{h}d`` and ``event_free_{h}d``; per row
  and horizon the causes plus the event-free probability sum to 1;
- ``predict(X)``: a relapse risk score (higher = riskier), used by the concordance metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

__all__ = [
    "CAUSES",
    "COMPETING_CAUSES",
    "EVENT_VALUES",
    "ModelInputError",
    "PHENOTYPE_CAUSES",
    "RELAPSE_EVENTS",
    "CompetingRisksModel",
    "check_features",
    "check_target",
    "cif_column",
    "cif_columns",
    "event_free_column",
    "horizon_label",
    "relapse_column",
]

PHENOTYPE_CAUSES: tuple[str, ...] = ("relapse_CD19_pos", "relapse_CD19_neg", "relapse_lineage_switch")
"""Relapse causes split by phenotype (the ``event`` values of a landmark set)."""
COMPETING_CAUSES: tuple[str, ...] = ("death", "hsct")
"""Events that end the relapse-free course without a relapse."""
CAUSES: tuple[str, ...] = PHENOTYPE_CAUSES + COMPETING_CAUSES
"""Every cause with its own cumulative incidence column."""
RELAPSE_EVENTS: tuple[str, ...] = PHENOTYPE_CAUSES + ("relapse_unknown",)
"""Event values that count as a relapse (``relapse_unknown``: phenotype not recorded)."""
EVENT_VALUES: tuple[str, ...] = ("none",) + RELAPSE_EVENTS + COMPETING_CAUSES
"""Every allowed ``event`` value of a target."""


class ModelInputError(ValueError):
    """Input a model cannot use; the message names the column, the row and the reason."""


def horizon_label(horizon_days: float) -> str:
    """The horizon as it appears in column names: ``365.0 -> "365"``, ``182.5 -> "182.5"``."""
    value = float(horizon_days)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def cif_column(cause: str, horizon_days: float) -> str:
    """Column name of the cumulative incidence of ``cause`` at ``horizon_days``."""
    return f"cif_{cause}_{horizon_label(horizon_days)}d"


def relapse_column(horizon_days: float) -> str:
    """Column name of the cumulative incidence of relapse (all phenotypes) at ``horizon_days``."""
    return cif_column("relapse", horizon_days)


def event_free_column(horizon_days: float) -> str:
    """Column name of the event-free probability at ``horizon_days``."""
    return f"event_free_{horizon_label(horizon_days)}d"


def cif_columns(horizons_days: Sequence[float]) -> list[str]:
    """Every column of a ``predict_cif`` frame, in order: per horizon the causes, relapse, event-free."""
    columns = []
    for horizon in horizons_days:
        columns += [cif_column(cause, horizon) for cause in CAUSES]
        columns += [relapse_column(horizon), event_free_column(horizon)]
    return columns


def check_target(y: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Validate a target frame and return its ``time`` (float) and ``event`` (str) arrays.

    Parameters
    ----------
    y : DataFrame
        Columns ``time`` (days from the landmark, finite, > 0) and ``event`` (one of
        :data:`EVENT_VALUES`).

    Returns
    -------
    time : ndarray of float
    event : ndarray of str

    Raises
    ------
    ModelInputError
        When a column is missing or a row holds a bad value; the message names the first bad row.
    """
    if not isinstance(y, pd.DataFrame):
        raise ModelInputError(f"target must be a DataFrame with columns time, event; got {type(y).__name__}")
    missing = [column for column in ("time", "event") if column not in y.columns]
    if missing:
        raise ModelInputError(f"target: missing column(s) {missing}")
    time = pd.to_numeric(y["time"], errors="coerce").to_numpy(dtype=float)
    bad_time = ~np.isfinite(time) | (time <= 0)
    if bad_time.any():
        row = y.index[np.flatnonzero(bad_time)[0]]
        raise ModelInputError(f"target: row {row!r}, column 'time': {y['time'].loc[row]!r} is not a finite number > 0")
    event = y["event"].astype(object).to_numpy()
    bad_event = ~pd.Series(event).isin(EVENT_VALUES).to_numpy()
    if bad_event.any():
        row = y.index[np.flatnonzero(bad_event)[0]]
        raise ModelInputError(
            f"target: row {row!r}, column 'event': {event[np.flatnonzero(bad_event)[0]]!r} "
            f"is not one of {list(EVENT_VALUES)}"
        )
    return time, event.astype(str)


def check_features(X: pd.DataFrame, expected: Sequence[str] | np.ndarray | None = None) -> pd.DataFrame:
    """Validate a feature frame: a DataFrame of numbers, with the ``expected`` columns when given.

    Parameters
    ----------
    X : DataFrame
        Features; NaN means missing.
    expected : sequence of str, optional
        Columns seen at fit time; ``X`` is returned with exactly these columns in this order.

    Returns
    -------
    DataFrame
        ``X`` as float, columns ordered like ``expected``: ``X`` itself (not a copy: callers
        must not modify it) when it already is exactly that, since converting costs more than
        scoring a few rows; otherwise a converted copy.

    Raises
    ------
    ModelInputError
        When ``X`` is not a DataFrame, lacks expected columns, or holds non-numeric values.
    """
    if not isinstance(X, pd.DataFrame):
        raise ModelInputError(f"features must be a pandas DataFrame with named columns; got {type(X).__name__}")
    if _is_float_frame_with(X, expected):
        return X
    if expected is not None:
        missing = [column for column in expected if column not in X.columns]
        if missing:
            raise ModelInputError(f"features: missing column(s) seen at fit time: {missing[:10]}")
        X = X.loc[:, list(expected)]
    try:
        return X.astype(float)
    except (TypeError, ValueError) as exc:
        raise ModelInputError(f"features: every column must be numeric (float, NaN = missing): {exc}") from None


def _is_float_frame_with(X: pd.DataFrame, expected: Sequence[str] | np.ndarray | None) -> bool:
    """Whether ``X`` has exactly the ``expected`` columns (in order, when given), all float64."""
    if expected is not None and not X.columns.equals(pd.Index(expected)):
        return False
    return not X.columns.has_duplicates and all(dtype == np.float64 for dtype in X.dtypes)


@runtime_checkable
class CompetingRisksModel(Protocol):
    """What every model of this package offers (docs/architecture.md, "Models")."""

    def fit(self, X: pd.DataFrame, y: pd.DataFrame) -> CompetingRisksModel:
        """Fit on features ``X`` and target ``y`` (columns ``time``, ``event``)."""

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Relapse risk score per row (higher = riskier)."""

    def predict_cif(self, X: pd.DataFrame, horizons_days: Sequence[float]) -> pd.DataFrame:
        """Cumulative incidences per cause and horizon, relapse total and event-free probability."""
