"""The simulator's oracle as a prediction source, in the layout of ``predict_cif``.

The oracle (docs/architecture.md, "oracle") gives, for each patient, landmark and horizon, the
true cumulative incidences given the latent state. Joined to the rows of a landmark set on
(patient_id, landmark_day) it becomes one more column set next to the models' and the rule's
predictions, so the same metrics score all three. Only the evaluation pipeline reads it; no
model ever sees it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from models.base import CAUSES, ModelInputError, cif_column, event_free_column, relapse_column

__all__ = ["ORACLE_CAUSE_COLUMNS", "oracle_predictions"]

ORACLE_CAUSE_COLUMNS: dict[str, str] = {
    "cif_CD19_pos": "relapse_CD19_pos",
    "cif_CD19_neg": "relapse_CD19_neg",
    "cif_lineage_switch": "relapse_lineage_switch",
    "cif_death": "death",
    "cif_hsct": "hsct",
}
_KEYS = ["patient_id", "landmark_day"]
_SUM_TOLERANCE = 1e-6


def _check_oracle(oracle: pd.DataFrame) -> None:
    required = _KEYS + ["horizon_days", "event_free", *ORACLE_CAUSE_COLUMNS]
    missing = [column for column in required if column not in oracle.columns]
    if missing:
        raise ModelInputError(f"oracle: missing column(s) {missing}")
    values = oracle[[*ORACLE_CAUSE_COLUMNS, "event_free"]]
    complete = values.notna().all(axis=1).to_numpy()
    off = np.abs(values.to_numpy()[complete].sum(axis=1) - 1.0) > _SUM_TOLERANCE
    if off.any():
        row = oracle.index[np.flatnonzero(complete)[np.flatnonzero(off)[0]]]
        raise ModelInputError(f"oracle: row {row!r}: cause incidences and event_free do not sum to 1")


def oracle_predictions(keys: pd.DataFrame, oracle: pd.DataFrame, horizons_days: Sequence[float]) -> pd.DataFrame:
    """The oracle's incidences for the rows of ``keys``, as ``predict_cif`` would return them.

    Parameters
    ----------
    keys : DataFrame
        Columns ``patient_id`` and ``landmark_day`` (e.g. a landmark set).
    oracle : DataFrame
        The long oracle table.
    horizons_days : sequence of float
        Horizons to return; each must be in the oracle's ``horizon_days``.

    Returns
    -------
    DataFrame
        Indexed like ``keys``; columns of :func:`models.base.cif_columns`. Rows the oracle does not
        cover (not in its latent risk set) are NaN.

    Raises
    ------
    ModelInputError
        Missing columns, a horizon the oracle lacks, or incidences that do not sum to 1.
    """
    _check_oracle(oracle)
    available = set(np.round(oracle["horizon_days"].astype(float), 6))
    columns = {}
    left = keys[_KEYS].assign(landmark_day=keys["landmark_day"].astype(float), patient_id=keys["patient_id"].astype(str))
    for horizon in horizons_days:
        if round(float(horizon), 6) not in available:
            raise ModelInputError(f"oracle: no rows for horizon {horizon} days (has {sorted(available)})")
        part = oracle.loc[np.isclose(oracle["horizon_days"].astype(float), float(horizon))]
        part = part.assign(landmark_day=part["landmark_day"].astype(float), patient_id=part["patient_id"].astype(str))
        if part.duplicated(_KEYS).any():
            raise ModelInputError(f"oracle: duplicate (patient_id, landmark_day) rows at horizon {horizon}")
        joined = left.merge(part, on=_KEYS, how="left", validate="many_to_one")
        for source, cause in ORACLE_CAUSE_COLUMNS.items():
            columns[cif_column(cause, horizon)] = joined[source].to_numpy(dtype=float)
        columns[relapse_column(horizon)] = sum(columns[cif_column(cause, horizon)] for cause in CAUSES[:3])
        columns[event_free_column(horizon)] = joined["event_free"].to_numpy(dtype=float)
    return pd.DataFrame(columns, index=keys.index)
