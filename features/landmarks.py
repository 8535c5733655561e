"""Landmark training sets: risk sets, targets, and the stacked ("supermodel") set.

Risk set at landmark s (days since infusion)
-------------------------------------------
A patient of ``infusions`` is at risk at s when all of these hold:

1. **in remission**: response is CR or CRi, and for s > 0 it was assessed by s
   (``response_day <= s``). For s <= 0 (the pre-infusion landmark) remission cannot have been
   observed yet; the landmark-0 set is **conditional on later remission**: it holds every
   infused patient whose response is CR/CRi. This is how published relapse models at infusion
   are built (relapse among responders); a landmark-0 prediction therefore reads "risk of
   relapse *if* the patient reaches remission", and must not be used to predict non-response.
   Landmark-0 *features* still use only data with day <= 0.
2. **event-free**: no event (relapse, death, HSCT) with ``event_day <= s``;
3. **still followed**: ``last_followup_day > s``.

Target
------
``time`` = days from s to the first event (or to the last follow-up when there is none),
truncated at ``horizon_days``: an event after ``s + horizon_days`` becomes ``none`` with
``time = horizon_days``. ``event`` is one of :data:`EVENT_CODES`: ``relapse_{phenotype}``
(``relapse_unknown`` when the phenotype is missing), ``death``, ``hsct`` (``hsct="competing"``)
or ``none`` (also HSCT with ``hsct="censor"``: follow-up ends at the transplant).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.registry import (
    DEFAULT_BUILDERS,
    FeatureInputError,
    build_feature_rows,
    patient_index,
    require_columns,
)
from features.schema import PHENOTYPES, REMISSION_RESPONSES

__all__ = [
    "EVENT_CODES",
    "HSCT_POLICIES",
    "ID_COLUMNS",
    "REMISSION_RESPONSES",
    "RiskSetConditions",
    "TARGET_COLUMNS",
    "build_landmark_set",
    "feature_columns",
    "landmark_targets",
    "risk_set_conditions",
    "risk_set_mask",
]

ID_COLUMNS: tuple[str, ...] = ("patient_id", "site")
"""Identifier columns that are not features. ``landmark_day`` identifies a row too, but it is
also a feature of the stacked model, so :func:`feature_columns` keeps it."""
TARGET_COLUMNS: tuple[str, ...] = ("time", "event")
EVENT_CODES: tuple[str, ...] = (
    "none",
    "relapse_CD19_pos",
    "relapse_CD19_neg",
    "relapse_lineage_switch",
    "relapse_unknown",
    "death",
    "hsct",
)
HSCT_POLICIES = ("competing", "censor")
_OUTCOME_COLUMNS = ("patient_id", "response", "response_day", "event", "event_day", "last_followup_day")


def _outcome_arrays(outcomes: pd.DataFrame, index: pd.Index) -> pd.DataFrame:
    """Outcomes aligned to the patients of ``index`` (all-NaN rows for patients without one)."""
    require_columns(outcomes, _OUTCOME_COLUMNS, "outcomes")
    ids = pd.Index(outcomes["patient_id"])
    if not ids.is_unique:
        raise FeatureInputError(f"outcomes: duplicate patient_id, e.g. {ids[ids.duplicated()][:5].tolist()}")
    aligned = outcomes.set_index("patient_id").reindex(index)
    if "relapse_phenotype" not in aligned.columns:
        aligned["relapse_phenotype"] = np.nan
    return aligned


@dataclass(frozen=True)
class RiskSetConditions:
    """The conditions of the risk set at a day (module docstring), one boolean per patient.

    Attributes
    ----------
    in_remission : ndarray of bool
        CR/CRi, assessed by the day (for a day <= 0: reached later, the landmark-0 rule).
    event_free : ndarray of bool
        No relapse, death or HSCT on or before the day.
    followed_past : ndarray of bool
        ``last_followup_day`` after the day: the patient has follow-up time beyond it (a target).
    followed_to : ndarray of bool
        ``last_followup_day`` on or after the day: the patient is known to be event-free at it.
    """

    in_remission: np.ndarray
    event_free: np.ndarray
    followed_past: np.ndarray
    followed_to: np.ndarray

    @property
    def at_risk(self) -> np.ndarray:
        """In the landmark risk set: in remission, event-free and followed past the day."""
        return self.in_remission & self.event_free & self.followed_past


def _conditions(aligned: pd.DataFrame, day: float | np.ndarray) -> RiskSetConditions:
    """Risk-set conditions over outcomes aligned to the patients (a day, or one per patient)."""
    s = np.broadcast_to(np.asarray(day, dtype=float), (len(aligned),))
    response_day = aligned["response_day"].to_numpy(dtype=float, na_value=np.nan)
    in_remission = aligned["response"].isin(REMISSION_RESPONSES).to_numpy() & ((s <= 0) | (response_day <= s))
    event_day = aligned["event_day"].to_numpy(dtype=float, na_value=np.nan)
    last = aligned["last_followup_day"].to_numpy(dtype=float, na_value=np.nan)
    return RiskSetConditions(
        in_remission=in_remission,
        event_free=(aligned["event"] == "none").to_numpy() | (event_day > s),
        followed_past=last > s,
        followed_to=last >= s,
    )


def _at_risk(aligned: pd.DataFrame, landmark_day: float) -> np.ndarray:
    """Risk-set mask over outcomes already aligned to the infused patients."""
    return _conditions(aligned, landmark_day).at_risk


def risk_set_mask(outcomes: pd.DataFrame, index: pd.Index, landmark_day: float) -> np.ndarray:
    """Which patients of ``index`` are in the risk set at ``landmark_day`` (module docstring).

    Parameters
    ----------
    outcomes : DataFrame
        Outcomes table (docs/architecture.md).
    index : Index
        Patient ids (infused patients), e.g. :func:`features.registry.patient_index`.
    landmark_day : float
        Days since infusion.

    Returns
    -------
    ndarray of bool
        Aligned with ``index``; patients without an outcome row are never at risk.
    """
    return _at_risk(_outcome_arrays(outcomes, index), landmark_day)


def risk_set_conditions(outcomes: pd.DataFrame, index: pd.Index,
                        day: float | np.ndarray) -> tuple[RiskSetConditions, pd.DataFrame]:
    """Each condition of the risk set at ``day`` (one day, or one per patient), and the outcomes behind them.

    Parameters
    ----------
    outcomes : DataFrame
        Outcomes table.
    index : Index
        Patient ids.
    day : float or ndarray of float
        Days since infusion: one for every patient, or one per patient of ``index``.

    Returns
    -------
    conditions : RiskSetConditions
        Aligned with ``index``; ``conditions.at_risk`` is :func:`risk_set_mask` for a single day.
    aligned : DataFrame
        The outcomes rows aligned to ``index`` (all missing for a patient without one), to word
        why a condition fails.
    """
    aligned = _outcome_arrays(outcomes, index)
    return _conditions(aligned, day), aligned


def _event_codes(aligned: pd.DataFrame, hsct: str) -> np.ndarray:
    """Event code per patient, before horizon truncation."""
    event = aligned["event"].to_numpy(dtype=object)
    phenotype = aligned["relapse_phenotype"]
    relapse_code = np.where(
        phenotype.isin(PHENOTYPES), "relapse_" + phenotype.astype(str), "relapse_unknown"
    )
    hsct_code = "hsct" if hsct == "competing" else "none"
    codes = np.select(
        [event == "relapse", event == "death", event == "hsct"], [relapse_code, "death", hsct_code], "none"
    )
    return codes.astype(object)


def landmark_targets(
    outcomes: pd.DataFrame,
    index: pd.Index,
    landmark_day: float,
    horizon_days: float,
    hsct: str = "competing",
) -> pd.DataFrame:
    """Targets (time from the landmark, event code) of the risk set at ``landmark_day``.

    Parameters
    ----------
    outcomes : DataFrame
        Outcomes table.
    index : Index
        Patient ids of the infused patients.
    landmark_day : float
        Days since infusion.
    horizon_days : float
        Truncation horizon (days from the landmark), > 0.
    hsct : {"competing", "censor"}
        HSCT as a competing event (``hsct``) or as censoring (``none`` at the transplant day).

    Returns
    -------
    DataFrame
        Indexed by ``patient_id`` (risk-set patients, in ``index`` order); ``time`` (days, in
        (0, horizon_days]) and ``event`` (one of :data:`EVENT_CODES`).
    """
    _check_target_options(horizon_days, hsct)
    return _targets(_outcome_arrays(outcomes, index), float(landmark_day), float(horizon_days), hsct)


def _check_target_options(horizon_days: float, hsct: str) -> None:
    if hsct not in HSCT_POLICIES:
        raise ValueError(f"hsct must be one of {HSCT_POLICIES}, got {hsct!r}")
    if not float(horizon_days) > 0:
        raise ValueError(f"horizon_days must be > 0, got {horizon_days!r}")


def _targets(aligned: pd.DataFrame, landmark_day: float, horizon_days: float, hsct: str) -> pd.DataFrame:
    """Targets from outcomes aligned to the infused patients (see :func:`landmark_targets`)."""
    aligned = aligned.loc[_at_risk(aligned, landmark_day)]
    code = _event_codes(aligned, hsct)
    end_day = np.where(
        (aligned["event"] != "none").to_numpy(),
        aligned["event_day"].to_numpy(dtype=float, na_value=np.nan),
        aligned["last_followup_day"].to_numpy(dtype=float, na_value=np.nan),
    )
    time = end_day - landmark_day
    beyond = time > horizon_days
    return pd.DataFrame(
        {"time": np.where(beyond, horizon_days, time), "event": np.where(beyond, "none", code)},
        index=aligned.index,
    )


def _prepared_measurements(measurements: pd.DataFrame, index: pd.Index) -> pd.DataFrame:
    """Measurements sorted by day with categorical keys, once for all landmarks.

    Sorting lets :func:`features.registry.build_feature_rows` take the rows known at a landmark
    as a slice; categorical keys let every builder map rows to patients cheaply. Rows without a
    day can never be known at a landmark and are left out.
    """
    require_columns(measurements, ["patient_id", "day"], "measurements")
    measurements = measurements.loc[measurements["day"].notna()].sort_values("day", kind="stable")
    converted = {"patient_id": pd.Categorical(measurements["patient_id"], categories=index)}
    for column in ("specimen", "assay", "unit"):
        if column in measurements.columns and not isinstance(measurements[column].dtype, pd.CategoricalDtype):
            converted[column] = measurements[column].astype("category")
    return measurements.assign(**converted)


def feature_columns(landmark_set: pd.DataFrame) -> list[str]:
    """Feature columns of a landmark set: every column but :data:`ID_COLUMNS` and :data:`TARGET_COLUMNS`.

    Parameters
    ----------
    landmark_set : DataFrame
        Output of :func:`build_landmark_set` (or feature rows for scoring).

    Returns
    -------
    list of str
        The model inputs, in column order; ``landmark_day`` is one of them.
    """
    excluded = set(ID_COLUMNS) | set(TARGET_COLUMNS)
    return [column for column in landmark_set.columns if column not in excluded]


def build_landmark_set(
    infusions: pd.DataFrame,
    measurements: pd.DataFrame,
    outcomes: pd.DataFrame,
    landmark_days: Sequence[float],
    horizon_days: float,
    builders: Sequence[str] = DEFAULT_BUILDERS,
    hsct: str = "competing",
    builder_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """The stacked landmark set: one row per (patient at risk, landmark).

    Parameters
    ----------
    infusions, measurements, outcomes : DataFrame
        Typed infusions, normalised measurements, outcomes (docs/architecture.md).
    landmark_days : sequence of float
        Landmarks in days since infusion (0 = pre-infusion, conditional on later remission).
    horizon_days : float
        Target truncation horizon in days from each landmark.
    builders : sequence of str
        Feature builders by registry name (``FeaturesConfig.builders``).
    hsct : {"competing", "censor"}
        Treatment of consolidative HSCT (``FeaturesConfig.hsct``).
    builder_options : mapping, optional
        Keyword options per builder, see :func:`features.registry.build_feature_rows`.

    Returns
    -------
    DataFrame
        Columns ``patient_id``, ``landmark_day``, ``site`` (when infusions has it), ``time``,
        ``event``, then the float features; rows ordered by landmark, then infusions order.
    """
    days = [float(day) for day in landmark_days]
    if not days:
        raise ValueError("landmark_days is empty")
    if len(set(days)) != len(days):
        raise ValueError(f"landmark_days has duplicates: {list(landmark_days)}")
    _check_target_options(horizon_days, hsct)
    index = patient_index(infusions)
    aligned = _outcome_arrays(outcomes, index)
    measurements = _prepared_measurements(measurements, index)
    parts = []
    for day in days:
        targets = _targets(aligned, day, float(horizon_days), hsct)
        at_risk = infusions.loc[index.isin(targets.index)]
        rows = build_feature_rows(at_risk, measurements, day, builders, builder_options)
        parts.append((at_risk, targets, rows))
    return _stack(parts)


def _stack(parts: list[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
    """Stack per-landmark (infusions at risk, targets, feature rows) into the documented layout.

    The float columns (``landmark_day``, ``time``, features) are copied once into one block;
    identifier and event columns are inserted around them.
    """
    features = parts[0][2].columns.drop("landmark_day")
    matrix = np.empty((sum(len(rows) for _, _, rows in parts), len(features) + 2))
    start = 0
    for _, targets, rows in parts:
        block = matrix[start : start + len(rows)]
        block[:, 0] = rows["landmark_day"].to_numpy()
        block[:, 1] = targets["time"].to_numpy()
        block[:, 2:] = rows.to_numpy(dtype=float)[:, 1:]  # column 0 is landmark_day
        start += len(rows)
    stacked = pd.DataFrame(matrix, columns=["landmark_day", "time", *features], copy=False)
    stacked.insert(0, "patient_id", np.concatenate([rows.index.to_numpy() for _, _, rows in parts]))
    if "site" in parts[0][0].columns:
        stacked.insert(2, "site", np.concatenate([at_risk["site"].to_numpy() for at_risk, _, _ in parts]))
    events = np.concatenate([targets["event"].to_numpy() for _, targets, _ in parts])
    stacked.insert(stacked.columns.get_loc("time") + 1, "event", events)
    return stacked
