"""The oracle as a prediction source: long table -> predict_cif layout, joined on patient and landmark."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.base import ModelInputError, cif_column, cif_columns, event_free_column
from models.oracle import ORACLE_CAUSE_COLUMNS, oracle_predictions


def _oracle() -> pd.DataFrame:
    rows = []
    for patient, landmark, horizon, base in [("P1", 0.0, 182.0, 0.1), ("P1", 0.0, 365.0, 0.2),
                                             ("P1", 28.0, 182.0, 0.05), ("P1", 28.0, 365.0, 0.15),
                                             ("P2", 0.0, 182.0, 0.3), ("P2", 0.0, 365.0, 0.4)]:
        values = {"cif_CD19_pos": base, "cif_CD19_neg": base / 2, "cif_lineage_switch": 0.0,
                  "cif_death": 0.01, "cif_hsct": 0.02}
        rows.append({"patient_id": patient, "landmark_day": landmark, "horizon_days": horizon, "in_risk_set": True,
                     **values, "event_free": 1.0 - sum(values.values())})
    return pd.DataFrame(rows)


def test_rows_are_joined_on_patient_and_landmark():
    keys = pd.DataFrame({"patient_id": ["P2", "P1", "P3"], "landmark_day": [0.0, 28.0, 0.0]}, index=[10, 11, 12])
    predictions = oracle_predictions(keys, _oracle(), [182.0, 365.0])
    assert list(predictions.columns) == cif_columns([182.0, 365.0])
    assert predictions.index.tolist() == [10, 11, 12]
    assert predictions.loc[10, cif_column("relapse_CD19_pos", 365)] == pytest.approx(0.4)
    assert predictions.loc[11, cif_column("relapse", 182)] == pytest.approx(0.05 + 0.025)
    assert predictions.loc[11, event_free_column(365)] == pytest.approx(1 - 0.15 - 0.075 - 0.03)
    assert predictions.loc[12].isna().all()  # P3 is not in the oracle


def test_missing_horizon_and_bad_sums_are_errors():
    keys = pd.DataFrame({"patient_id": ["P1"], "landmark_day": [0.0]})
    with pytest.raises(ModelInputError, match="horizon 730"):
        oracle_predictions(keys, _oracle(), [730.0])
    broken = _oracle()
    broken.loc[2, "cif_death"] = 0.5
    with pytest.raises(ModelInputError, match="row 2.*sum to 1"):
        oracle_predictions(keys, broken, [182.0])
    with pytest.raises(ModelInputError, match="missing column"):
        oracle_predictions(keys, _oracle().drop(columns=["event_free"]), [182.0])


def test_every_oracle_cause_is_mapped():
    assert sorted(ORACLE_CAUSE_COLUMNS.values()) == sorted(
        ["relapse_CD19_pos", "relapse_CD19_neg", "relapse_lineage_switch", "death", "hsct"])
    assert np.isnan(oracle_predictions(pd.DataFrame({"patient_id": ["P9"], "landmark_day": [0.0]}), _oracle(),
                                       [182.0]).to_numpy()).all()
