"""Hand-worked examples for the longitudinal builders (MRD, BCA, antigen, CAR copies)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.longitudinal import (
    SLOPE_LAST_TESTS,
    antigen_features,
    b_cell_trajectory_features,
    bca_features,
    car_copies_features,
    mrd_antigen_features,
    mrd_features,
    mrd_joint_features,
    mrd_trajectory_features,
)

UNIT_BY_ASSAY = {
    "flow_mrd": "fraction", "ngs_mrd": "fraction", "pcr_mrd": "fraction",
    "cd19_pct_blasts": "pct_blasts", "cd22_pct_blasts": "pct_blasts", "car_copies": "copies/ug",
}


def infusions_of(*patient_ids: str) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": list(patient_ids)})


def measurements_of(rows: list[tuple]) -> pd.DataFrame:
    """Normalised rows from (patient, day, specimen, assay, value, censored[, unit[, below_loq]])."""
    records = []
    for row in rows:
        patient, day, specimen, assay, value, censored, *rest = row
        unit = rest[0] if rest else UNIT_BY_ASSAY[assay]
        below_loq = rest[1] if len(rest) > 1 else False
        records.append({
            "patient_id": patient, "day": float(day), "specimen": specimen, "assay": assay,
            "value": value, "censored": censored, "detection_limit": value if censored else np.nan,
            "unit": unit, "detected_below_loq": below_loq,
        })
    table = pd.DataFrame.from_records(records)
    return table.astype({"specimen": "category", "assay": "category"})


# --- a patient with censored NGS-MRD ------------------------------------------------------------
NGS_ROWS = [
    ("P1", -5, "BM", "ngs_mrd", 1e-2, False),
    ("P1", 28, "BM", "ngs_mrd", 3e-5, False),
    ("P1", 60, "BM", "ngs_mrd", 2e-6, False),
    ("P1", 91, "BM", "ngs_mrd", 1e-6, True),   # "<1e-6": censored at the NGS limit
    ("P1", 150, "BM", "ngs_mrd", 4e-3, False),  # after every landmark tested below
]


def test_censored_ngs_mrd_at_day_91():
    row = mrd_features(infusions_of("P1"), measurements_of(NGS_ROWS), 91.0).loc["P1"]
    assert row["bm_ngs_mrd_log10_last"] == pytest.approx(-6.0)  # log10 of the limit
    assert row["bm_ngs_mrd_last_censored"] == 1.0
    assert row["bm_ngs_mrd_detectable_last"] == 0.0
    assert row["bm_ngs_mrd_detectable_since_infusion"] == 1.0
    assert row["bm_ngs_mrd_log10_max_since_infusion"] == pytest.approx(math.log10(3e-5))  # not the day -5 1e-2
    assert row["bm_ngs_mrd_days_since_last"] == 0.0
    assert row["bm_ngs_mrd_tests_count"] == 4.0
    # least squares over the last 3 tests (days 28, 60, 91), censored one at its limit, per 30 days
    expected = np.polyfit([28.0, 60.0, 91.0], [math.log10(3e-5), math.log10(2e-6), -6.0], 1)[0] * 30
    assert SLOPE_LAST_TESTS == 3
    assert row["bm_ngs_mrd_log10_slope_per_30d"] == pytest.approx(expected)


def test_pre_infusion_results_count_for_last_value_but_not_since_infusion():
    row = mrd_features(infusions_of("P1"), measurements_of(NGS_ROWS), 0.0).loc["P1"]
    assert row["bm_ngs_mrd_log10_last"] == pytest.approx(-2.0) and row["bm_ngs_mrd_days_since_last"] == 5.0
    assert math.isnan(row["bm_ngs_mrd_detectable_since_infusion"])  # no post-infusion test yet
    assert math.isnan(row["bm_ngs_mrd_log10_max_since_infusion"])


def test_censored_ngs_mrd_at_day_28_uses_nothing_later():
    row = mrd_features(infusions_of("P1"), measurements_of(NGS_ROWS), 28.0).loc["P1"]
    assert row["bm_ngs_mrd_log10_last"] == pytest.approx(math.log10(3e-5))
    assert row["bm_ngs_mrd_last_censored"] == 0.0
    assert row["bm_ngs_mrd_detectable_last"] == 1.0
    assert row["bm_ngs_mrd_tests_count"] == 2.0
    assert row["bm_ngs_mrd_log10_slope_per_30d"] == pytest.approx((math.log10(3e-5) + 2.0) / 33 * 30)


def test_detected_below_quantitation_is_detectable_but_censored():
    rows = [("P1", 28, "BM", "ngs_mrd", 1e-6, True, "fraction", True)]
    row = mrd_features(infusions_of("P1"), measurements_of(rows), 28.0).loc["P1"]
    assert row["bm_ngs_mrd_detectable_last"] == 1.0
    assert row["bm_ngs_mrd_last_censored"] == 1.0
    assert row["bm_ngs_mrd_log10_max_since_infusion"] == pytest.approx(-6.0)


# --- PB-positive while BM-negative ---------------------------------------------------------------
def test_pb_positive_while_bm_negative():
    rows = [
        ("P2", 28, "BM", "flow_mrd", 1e-4, True),
        ("P2", 91, "BM", "flow_mrd", 1e-4, True),
        ("P2", 91, "PB", "flow_mrd", 5e-4, False),
        ("P2", 63, "PB", "flow_mrd", 1e-4, True),
    ]
    row = mrd_features(infusions_of("P2"), measurements_of(rows), 100.0).loc["P2"]
    assert row["bm_flow_mrd_detectable_last"] == 0.0
    assert row["bm_flow_mrd_detectable_since_infusion"] == 0.0
    assert row["bm_flow_mrd_last_censored"] == 1.0
    assert row["bm_flow_mrd_log10_last"] == pytest.approx(-4.0)
    assert math.isnan(row["bm_flow_mrd_log10_max_since_infusion"])
    assert row["bm_flow_mrd_log10_slope_per_30d"] == 0.0  # both at the same limit
    assert row["pb_flow_mrd_detectable_last"] == 1.0
    assert row["pb_flow_mrd_log10_last"] == pytest.approx(math.log10(5e-4))
    assert row["pb_flow_mrd_log10_max_since_infusion"] == pytest.approx(math.log10(5e-4))
    assert row["pb_flow_mrd_log10_slope_per_30d"] == pytest.approx((math.log10(5e-4) + 4.0) / 28 * 30)
    assert row["pb_flow_mrd_days_since_last"] == 9.0
    assert row["bm_flow_mrd_tests_count"] == 2.0 and row["pb_flow_mrd_tests_count"] == 2.0


# --- no NGS clone ---------------------------------------------------------------------------------
def test_patient_without_ngs_clone_has_nan_ngs_features_and_zero_counts():
    rows = [("P3", 28, "BM", "flow_mrd", 1e-4, True), ("P4", 28, "BM", "ngs_mrd", 2e-5, False)]
    features = mrd_features(infusions_of("P3", "P4"), measurements_of(rows), 91.0)
    ngs = [c for c in features.columns if "_ngs_mrd_" in c]
    assert len(ngs) == 16
    counts = [c for c in ngs if c.endswith("_tests_count")]
    assert (features.loc["P3", counts] == 0.0).all()
    assert features.loc["P3", [c for c in ngs if c not in counts]].isna().all()
    assert features.loc["P4", "bm_ngs_mrd_tests_count"] == 1.0
    assert math.isnan(features.loc["P4", "bm_ngs_mrd_log10_slope_per_30d"])  # one test: no slope


def test_patient_without_any_measurement_gets_a_row():
    features = mrd_features(infusions_of("P1", "P9"), measurements_of(NGS_ROWS), 91.0)
    assert list(features.index) == ["P1", "P9"]
    assert features.loc["P9", "bm_ngs_mrd_tests_count"] == 0.0
    assert features.dtypes.eq(np.float64).all()


def test_last_of_three_tests_only_enters_the_slope():
    rows = [("P1", d, "PB", "pcr_mrd", v, False) for d, v in [(0, 1.0), (30, 1e-3), (60, 1e-4), (90, 1e-5)]]
    row = mrd_features(infusions_of("P1"), measurements_of(rows), 90.0).loc["P1"]
    assert row["pb_pcr_mrd_log10_slope_per_30d"] == pytest.approx(-1.0)  # the day-0 1.0 is ignored


# --- B cells recover between two visits -----------------------------------------------------------
BCELL_ROWS = [
    ("B1", -3, "PB", "b_cell_count", 200.0, False, "cells/uL"),  # before infusion: ignored
    ("B1", 28, "PB", "b_cell_count", 1.0, True, "cells/uL"),     # "<1": aplastic
    ("B1", 60, "PB", "b_cell_count", 3.0, False, "cells/uL"),    # below 10: aplastic
    ("B1", 91, "PB", "b_cell_count", 45.0, False, "cells/uL"),   # recovered
    ("B1", 120, "PB", "b_cell_count", 80.0, False, "cells/uL"),
    ("B2", 30, "PB", "b_cell_count", 0.2, False, "pct_lymphocytes"),
    ("B2", 70, "PB", "b_cell_count", 1.5, False, "pct_lymphocytes"),
]


def test_b_cells_recover_between_two_visits():
    features = bca_features(infusions_of("B1", "B2", "B3"), measurements_of(BCELL_ROWS), 100.0)
    b1 = features.loc["B1"]
    assert b1["bca_lost_by_landmark"] == 1.0
    assert b1["bca_loss_day_lower"] == 60.0 and b1["bca_loss_day_upper"] == 91.0
    assert b1["bca_loss_day_mid"] == 75.5
    assert b1["days_since_bca_loss"] == 24.5
    assert b1["bca_aplasia_observed_days"] == 60.0
    assert b1["bca_recovered_at_last_test"] == 1.0
    assert b1["bca_days_since_last_test"] == 9.0
    assert b1["bca_tests_count"] == 3.0
    b2 = features.loc["B2"]  # % of lymphocytes, recovery at >= 1%
    assert (b2["bca_loss_day_lower"], b2["bca_loss_day_upper"], b2["days_since_bca_loss"]) == (30.0, 70.0, 50.0)
    assert features.loc["B3", "bca_tests_count"] == 0.0
    assert features.loc["B3"].drop("bca_tests_count").isna().all()


def test_bca_before_recovery_is_observed():
    b1 = bca_features(infusions_of("B1"), measurements_of(BCELL_ROWS), 90.0).loc["B1"]
    assert b1["bca_lost_by_landmark"] == 0.0
    assert b1[["bca_loss_day_lower", "bca_loss_day_upper", "days_since_bca_loss"]].isna().all()
    assert b1["bca_aplasia_observed_days"] == 60.0
    assert b1["bca_recovered_at_last_test"] == 0.0
    assert b1["bca_days_since_last_test"] == 30.0


def test_bca_threshold_is_configurable():
    b1 = bca_features(infusions_of("B1"), measurements_of(BCELL_ROWS), 100.0, recovery_cells_per_ul=2.0).loc["B1"]
    assert (b1["bca_loss_day_lower"], b1["bca_loss_day_upper"]) == (28.0, 60.0)


def test_recovery_at_first_visit_has_infusion_as_lower_bound_and_unclassifiable_rows_are_left_out():
    rows = [
        ("B4", 14, "PB", "b_cell_count", 50.0, True, "cells/uL"),   # "<50": limit above threshold
        ("B4", 28, "PB", "b_cell_count", 25.0, False, "cells/uL"),
    ]
    b4 = bca_features(infusions_of("B4"), measurements_of(rows), 28.0).loc["B4"]
    assert b4["bca_tests_count"] == 1.0
    assert (b4["bca_loss_day_lower"], b4["bca_loss_day_upper"], b4["bca_aplasia_observed_days"]) == (0.0, 28.0, 0.0)


# --- antigen and CAR copies ------------------------------------------------------------------------
def test_antigen_last_and_cd19_trend_pool_specimens():
    rows = [
        ("A1", -10, "BM", "cd19_pct_blasts", 95.0, False),
        ("A1", 150, "PB", "cd19_pct_blasts", 35.0, False),
        ("A1", 150, "BM", "cd22_pct_blasts", 80.0, False),
    ]
    row = antigen_features(infusions_of("A1"), measurements_of(rows), 160.0).loc["A1"]
    assert row["cd19_pct_blasts_last"] == 35.0
    assert row["cd19_pct_blasts_slope_per_30d"] == pytest.approx(-60.0 / 160 * 30)
    assert row["cd22_pct_blasts_last"] == 80.0 and row["cd22_pct_blasts_tests_count"] == 1.0


def test_car_copies_peak_and_last():
    rows = [
        ("C1", 10, "PB", "car_copies", 5e4, False),
        ("C1", 60, "PB", "car_copies", 2e2, False),
        ("C1", 180, "PB", "car_copies", 50.0, True),
    ]
    row = car_copies_features(infusions_of("C1"), measurements_of(rows), 182.0).loc["C1"]
    assert row["pb_car_copies_log10_max_since_infusion"] == pytest.approx(math.log10(5e4))
    assert row["pb_car_copies_log10_last"] == pytest.approx(math.log10(50.0))
    assert row["pb_car_copies_last_censored"] == 1.0 and row["pb_car_copies_detectable_last"] == 0.0
    assert row["bm_car_copies_tests_count"] == 0.0


def test_row_order_does_not_change_features():
    table = measurements_of(NGS_ROWS + BCELL_ROWS)
    shuffled = table.sample(frac=1.0, random_state=3).reset_index(drop=True)
    infusions = infusions_of("P1", "B1", "B2")
    for builder in (mrd_features, bca_features):
        pd.testing.assert_frame_equal(builder(infusions, table, 91.0), builder(infusions, shuffled, 91.0))


def test_missing_column_is_named():
    table = measurements_of(NGS_ROWS).drop(columns="censored")
    with pytest.raises(ValueError, match="measurements: missing required column.*censored"):
        mrd_features(infusions_of("P1"), table, 91.0)


def test_same_day_detected_result_beats_a_higher_censored_limit():
    rows = [
        ("P6", 28, "PB", "flow_mrd", 5e-4, False),  # detected 0.05%
        ("P6", 28, "PB", "flow_mrd", 1e-3, True),   # "<0.1%" from another lab: uninformative
    ]
    for ordered in (rows, rows[::-1]):
        row = mrd_features(infusions_of("P6"), measurements_of(ordered), 28.0).loc["P6"]
        assert row["pb_flow_mrd_log10_last"] == pytest.approx(math.log10(5e-4))
        assert (row["pb_flow_mrd_detectable_last"], row["pb_flow_mrd_last_censored"]) == (1.0, 0.0)


def test_same_day_below_quantitation_beats_negative_at_the_same_limit():
    rows = [
        ("P7", 91, "BM", "ngs_mrd", 1e-6, True, "fraction", False),  # NEG
        ("P7", 91, "BM", "ngs_mrd", 1e-6, True, "fraction", True),   # detected <LOQ
    ]
    for ordered in (rows, rows[::-1]):
        row = mrd_features(infusions_of("P7"), measurements_of(ordered), 91.0).loc["P7"]
        assert (row["bm_ngs_mrd_detectable_last"], row["bm_ngs_mrd_last_censored"]) == (1.0, 1.0)


def test_censored_antigen_result_is_an_upper_bound_not_zero():
    rows = [("A2", 120, "BM", "cd19_pct_blasts", 1.0, True)]  # "<1%" CD19+ blasts: CD19-negative relapse
    row = antigen_features(infusions_of("A2"), measurements_of(rows), 120.0).loc["A2"]
    assert (row["cd19_pct_blasts_last"], row["cd19_pct_blasts_last_censored"]) == (1.0, 1.0)
    assert math.isnan(row["cd22_pct_blasts_last_censored"])


def test_same_day_results_keep_the_worst_as_last():
    rows = [
        ("P5", 28, "BM", "flow_mrd", 5e-4, False),
        ("P5", 28, "BM", "flow_mrd", np.nan, True),   # "negative", limit unknown
        ("P5", 28, "BM", "flow_mrd", 1e-4, True),
    ]
    row = mrd_features(infusions_of("P5"), measurements_of(rows), 28.0).loc["P5"]
    assert row["bm_flow_mrd_log10_last"] == pytest.approx(math.log10(5e-4))
    assert row["bm_flow_mrd_detectable_last"] == 1.0 and row["bm_flow_mrd_tests_count"] == 3.0


def test_category_codes_for_categorical_and_plain_columns():
    from features.longitudinal import _category_codes

    levels = ["BM", "PB"]
    plain = pd.Series(["PB", None, "CSF", "BM"], dtype=object)
    categorical = plain.astype(pd.CategoricalDtype(["CSF", "PB", "BM", "unused"]))
    expected = np.array([1, -1, -1, 0])
    np.testing.assert_array_equal(_category_codes(plain, levels), expected)
    np.testing.assert_array_equal(_category_codes(categorical, levels), expected)
    np.testing.assert_array_equal(_category_codes(categorical, pd.Index(levels)), expected)


def test_category_codes_are_the_same_for_small_and_large_columns():
    """Small object columns are looked up entry by entry, large ones with ``Index.get_indexer``."""
    from features.longitudinal import _SMALL_COLUMN_ROWS, _category_codes

    index = pd.Index([f"P{i}" for i in range(7)], name="patient_id")
    cells = ["P3", None, "P0", np.nan, "P6", "Q1", "p3", "P3"]
    large = pd.Series(cells * (_SMALL_COLUMN_ROWS // len(cells) + 1), dtype=object)
    assert len(large) > _SMALL_COLUMN_ROWS
    codes = _category_codes(large, index)
    expected = np.array([3, -1, 0, -1, 6, -1, -1, 3])
    np.testing.assert_array_equal(_category_codes(pd.Series(cells, dtype=object), index), expected)
    np.testing.assert_array_equal(codes, np.tile(expected, len(large) // len(cells) + 1)[: len(large)])
    assert codes.dtype == _category_codes(pd.Series(cells, dtype=object), index).dtype


@pytest.mark.parametrize(
    "column",
    [pd.Series([True, False, True]), pd.Series([True, pd.NA, False], dtype="boolean"),
     pd.Series([1.0, np.nan, 0.0])],
    ids=["numpy bool", "nullable boolean", "float"],
)
def test_flags_are_booleans_with_missing_as_false(column):
    from features.longitudinal import _flags

    flags = _flags(pd.DataFrame({"censored": column}), "censored")
    assert flags.dtype == bool
    np.testing.assert_array_equal(flags, column.fillna(False).astype(bool).to_numpy())
    np.testing.assert_array_equal(_flags(pd.DataFrame({"x": column}), "censored"), [False] * 3)


# --- trajectories and joint states -------------------------------------------------------------
TRAJECTORY_ROWS = [
    ("A", -5, "BM", "ngs_mrd", 1e-2, False),
    ("A", 28, "BM", "ngs_mrd", 1e-6, True),
    ("A", 91, "BM", "ngs_mrd", 1e-6, True),
    ("A", 182, "BM", "ngs_mrd", 1e-4, False),
    ("B", 28, "BM", "ngs_mrd", 1e-3, False),
    ("B", 91, "BM", "ngs_mrd", 1e-5, False),
]


def test_mrd_trajectory_nadir_rise_and_last_negative():
    features = mrd_trajectory_features(infusions_of("A", "B", "C"), measurements_of(TRAJECTORY_ROWS), 200.0)
    a, b, c = (features.loc[p] for p in ("A", "B", "C"))
    assert a["bm_ngs_mrd_log10_nadir_since_infusion"] == pytest.approx(-6.0)   # the limit, not zero
    assert a["bm_ngs_mrd_nadir_censored"] == 1.0
    assert a["bm_ngs_mrd_log10_rise_from_nadir"] == pytest.approx(2.0)          # -4 - (-6)
    assert a["bm_ngs_mrd_days_since_last_negative"] == pytest.approx(200.0 - 91.0)
    assert b["bm_ngs_mrd_log10_nadir_since_infusion"] == pytest.approx(-5.0)
    assert b["bm_ngs_mrd_nadir_censored"] == 0.0
    assert b["bm_ngs_mrd_log10_rise_from_nadir"] == pytest.approx(0.0)          # the last result is the nadir
    assert math.isnan(b["bm_ngs_mrd_days_since_last_negative"])                   # never negative
    assert features.loc["C"].isna().all() and math.isnan(a["pb_ngs_mrd_log10_nadir_since_infusion"])
    assert math.isnan(c["bm_ngs_mrd_nadir_censored"])
    early = mrd_trajectory_features(infusions_of("A"), measurements_of(TRAJECTORY_ROWS), 91.0).loc["A"]
    assert early["bm_ngs_mrd_log10_rise_from_nadir"] == pytest.approx(0.0)      # day 182 is not known yet
    assert early["bm_ngs_mrd_days_since_last_negative"] == pytest.approx(0.0)


JOINT_ROWS = [
    ("A", 28, "BM", "flow_mrd", 1e-2, False),
    ("A", 91, "BM", "ngs_mrd", 1e-6, True),
    ("A", 91, "BM", "flow_mrd", 1e-4, True),
    ("A", 93, "PB", "flow_mrd", 1e-4, True),
    ("B", 120, "PB", "flow_mrd", 1e-3, False),
    ("B", 180, "BM", "ngs_mrd", 1e-6, True),
    ("B", 182, "PB", "flow_mrd", 3e-4, False),
]


def test_mrd_joint_state_of_the_latest_visit():
    features = mrd_joint_features(infusions_of("A", "B", "C"), measurements_of(JOINT_ROWS), 200.0)
    a, b = features.loc["A"], features.loc["B"]
    assert a["mrd_latest_days_since"] == pytest.approx(107.0)
    assert a["mrd_latest_detectable_any"] == 0.0
    assert math.isnan(a["mrd_latest_log10_max_detectable"])
    assert a["mrd_latest_log10_negative_limit"] == pytest.approx(-6.0)   # NGS-negative: the deepest limit
    assert a["mrd_latest_pb_positive_bm_negative"] == 0.0
    assert b["mrd_latest_detectable_any"] == 1.0
    assert b["mrd_latest_log10_max_detectable"] == pytest.approx(math.log10(3e-4))   # day 120 is not the visit
    assert math.isnan(b["mrd_latest_log10_negative_limit"])
    assert b["mrd_latest_pb_positive_bm_negative"] == 1.0
    assert features.loc["C"].isna().all()


def test_b_cell_trajectory_on_one_scale_for_both_units():
    rows = [("A", 28, "PB", "b_cell_count", 1.0, True, "cells/uL"),     # "<1 cells/uL"
            ("A", 91, "PB", "b_cell_count", 2.0, False, "cells/uL"),
            ("A", 122, "PB", "b_cell_count", 5.0, False, "cells/uL"),
            ("B", 61, "PB", "b_cell_count", 0.1, True, "pct_lymphocytes"),
            ("B", 91, "PB", "b_cell_count", 3.0, False, "pct_lymphocytes")]
    features = b_cell_trajectory_features(infusions_of("A", "B", "C"), measurements_of(rows), 200.0)
    a, b = features.loc["A"], features.loc["B"]
    assert a["b_cells_log10_vs_recovery_last"] == pytest.approx(math.log10(5.0 / 10.0))   # half the threshold
    assert a["b_cells_log10_vs_recovery_max_since_infusion"] == pytest.approx(math.log10(0.5))
    days, values = np.array([28.0, 91.0, 122.0]), np.log10([0.1, 0.2, 0.5])   # the censored one at its limit
    assert a["b_cells_log10_vs_recovery_slope_per_30d"] == pytest.approx(np.polyfit(days, values, 1)[0] * 30)
    assert b["b_cells_log10_vs_recovery_last"] == pytest.approx(math.log10(3.0))            # 3% vs 1%
    assert b["b_cells_log10_vs_recovery_last_censored"] == 0.0
    assert features.loc["C"].isna().all()


def test_mrd_antigen_splits_detectable_marrow_mrd_by_cd19():
    rows = [("A", 91, "BM", "flow_mrd", 1e-3, False), ("A", 91, "BM", "cd19_pct_blasts", 20.0, False),
            ("A", 182, "BM", "flow_mrd", 1e-4, True), ("A", 182, "BM", "cd19_pct_blasts", 5.0, False),
            ("B", 91, "BM", "flow_mrd", 1e-2, False)]
    features = mrd_antigen_features(infusions_of("A", "B"), measurements_of(rows), 200.0)
    a = features.loc["A"]
    assert a["bm_cd19_negative_mrd_log10_last"] == pytest.approx(-3.0 + math.log10(0.8))
    assert a["bm_cd19_positive_mrd_log10_last"] == pytest.approx(-3.0 + math.log10(0.2))
    assert a["bm_mrd_antigen_days_since"] == pytest.approx(109.0)   # day 182: MRD censored, nothing to type
    assert features.loc["B"].isna().all()                           # no antigen result
