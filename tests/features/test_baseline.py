"""Baseline encodings, worked by hand for three patients (one with missing values)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.baseline import baseline_features


def infusions() -> pd.DataFrame:
    return pd.DataFrame({
        "patient_id": ["hi", "lo", "na"],
        "site": ["A", "B", "A"],
        "age_years": [16.0, 3.5, np.nan],
        "sex": ["M", "F", None],
        "down_syndrome": pd.array([False, True, None], dtype="boolean"),
        "kmt2a_rearranged": pd.array([True, False, None], dtype="boolean"),
        "tp53_altered": pd.array([False, False, None], dtype="boolean"),
        "hypodiploid": pd.array([False, True, None], dtype="boolean"),
        "ph_positive": pd.array([True, False, None], dtype="boolean"),
        "prior_lines": pd.array([4, 1, None], dtype="Int64"),
        "prior_crs": pd.array([2, 1, None], dtype="Int64"),
        "prior_hsct": pd.array([True, False, None], dtype="boolean"),
        "blinatumomab": ["nonresponder", "naive", None],
        "inotuzumab_prior": pd.array([True, False, None], dtype="boolean"),
        "bm_blasts_pct": [45.0, 0.0, np.nan],
        "cns_status": ["CNS3", "CNS1", None],
        "active_non_cns_emd": pd.array([True, False, None], dtype="boolean"),
        "cd19_antigen_load_pct": [10.0, 15.0, np.nan],
        "cd19_dim_pre": pd.array([True, False, None], dtype="boolean"),
        "cd22_pct_pre": [70.0, 99.0, np.nan],
        "product": ["tisagenlecleucel", "tisagenlecleucel", None],
        "costim": ["CD28", "4-1BB", None],
        "cell_dose_per_kg": [1e6, 3.2e6, np.nan],
        "fludarabine_auc": [10.0, 13.8, np.nan],
    })


def infusions_for(patient_ids: list[str]) -> pd.DataFrame:
    """Complete infusions rows for any ids, cycling through the three patients above."""
    template = infusions()
    table = template.iloc[np.arange(len(patient_ids)) % len(template)].reset_index(drop=True)
    return table.assign(patient_id=list(patient_ids))


def test_high_risk_patient_encodings():
    row = baseline_features(infusions()).loc["hi"]
    assert row["bm_blasts_ge5_flag"] == 1.0 and row["bm_blasts_ge40_flag"] == 1.0
    assert row["bm_blasts_log10_pct"] == pytest.approx(math.log10(45.0))
    assert (row["blinatumomab_exposed"], row["blinatumomab_responder"], row["blinatumomab_nonresponder"]) == (1, 0, 1)
    assert row["fludarabine_auc_below_13p8_flag"] == 1.0 and row["fludarabine_auc_mg_h_per_l"] == 10.0
    assert row["cd19_antigen_load_below_15pct_flag"] == 1.0
    assert row["costim_cd28_flag"] == 1.0
    assert (row["cns3_flag"], row["cns2_flag"]) == (1.0, 0.0)
    assert row["prior_crs_ge2_flag"] == 1.0 and row["prior_lines_count"] == 4.0
    assert row["cell_dose_log10_per_kg"] == pytest.approx(6.0)
    assert row["kmt2a_rearranged"] == 1.0 and row["sex_male"] == 1.0


def test_low_risk_patient_thresholds_are_strict_where_published():
    row = baseline_features(infusions()).loc["lo"]
    assert row["bm_blasts_ge5_flag"] == 0.0
    assert row["bm_blasts_log10_pct"] == pytest.approx(-2.0)  # 0% floored at 0.01%
    assert row["fludarabine_auc_below_13p8_flag"] == 0.0  # 13.8 is not below 13.8
    assert row["cd19_antigen_load_below_15pct_flag"] == 0.0  # 15% is not below 15%
    assert (row["blinatumomab_exposed"], row["blinatumomab_nonresponder"]) == (0.0, 0.0)
    assert (row["cns3_flag"], row["cns2_flag"], row["costim_cd28_flag"]) == (0.0, 0.0, 0.0)
    assert row["down_syndrome"] == 1.0 and row["prior_crs_ge2_flag"] == 0.0


def test_missing_stays_missing_and_everything_is_float():
    features = baseline_features(infusions())
    assert features.dtypes.eq(np.float64).all()
    assert features.loc["na"].isna().all()
    assert features.loc[["hi", "lo"]].notna().all().all()
    assert features.index.name == "patient_id"


def test_optional_fludarabine_column_may_be_absent():
    features = baseline_features(infusions().drop(columns="fludarabine_auc"))
    assert features[["fludarabine_auc_mg_h_per_l", "fludarabine_auc_below_13p8_flag"]].isna().all().all()


def test_duplicate_patient_is_rejected():
    table = pd.concat([infusions(), infusions().iloc[[0]]])
    with pytest.raises(ValueError, match="infusions: column patient_id has duplicate ids"):
        baseline_features(table)


def test_missing_required_column_is_named():
    with pytest.raises(ValueError, match="infusions: missing required column.*cns_status"):
        baseline_features(infusions().drop(columns="cns_status"))


def test_level_flags_with_every_kind_of_missing_value():
    from features.baseline import _level_flag

    infusions = pd.DataFrame({"cns_status": pd.Series(["CNS2", None, "CNS1", np.nan, pd.NA, "CNS3"], dtype=object)})
    np.testing.assert_array_equal(_level_flag(infusions, "cns_status", ("CNS2", "CNS3")),
                                  [1.0, np.nan, 0.0, np.nan, np.nan, 1.0])
    categorical = infusions.astype({"cns_status": "category"})
    np.testing.assert_array_equal(_level_flag(categorical, "cns_status", ("CNS1",)),
                                  [0.0, np.nan, 1.0, np.nan, np.nan, 0.0])
