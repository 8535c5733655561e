"""Tests of the calibration analyses on hand-made data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxTimeVaryingFitter

from features.contract import validate_cohort
from pipelines import calibration_targets as analyses
from pipelines.calibration_targets import (
    CalibrationData,
    CalibrationDataError,
    build_patient_frame,
    endpoint_times,
    fit_counting_process_cox,
)


def _patients(end_day, first_event, **columns) -> pd.DataFrame:
    """A minimal patient frame: responders unless ``nonresponse`` is given."""
    n = len(end_day)
    frame = pd.DataFrame({
        "end_day": np.asarray(end_day, dtype=float),
        "first_event": np.asarray(first_event, dtype=object),
        "nonresponse": np.zeros(n, dtype=bool),
        "responder": np.ones(n, dtype=bool),
        "relapse_phenotype": np.where(np.asarray(first_event) == "relapse", "CD19_pos", None),
    })
    for name, values in columns.items():
        frame[name] = values
    return frame


def _exponential_cohort(n: int, log_hr: float, seed: int) -> pd.DataFrame:
    """Relapse hazard 1/300 per day, times exp(log_hr) with x = 1; uniform censoring over 3 years."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, n).astype(float)
    relapse = rng.exponential(300.0 / np.exp(log_hr * x))
    censor = rng.uniform(0.0, 1095.0, n)
    event = np.where(relapse <= censor, "relapse", "none")
    return _patients(np.minimum(relapse, censor), event, x=x)


# --- patient frame --------------------------------------------------------------------------------------
def contract_infusions(patient_ids, **overrides) -> pd.DataFrame:
    """Infusions with every required column of the data contract (a plain low-burden child)."""
    frame = pd.DataFrame({
        "patient_id": list(patient_ids), "age_years": 10.0, "sex": "F", "down_syndrome": False,
        "kmt2a_rearranged": False, "tp53_altered": False, "hypodiploid": False, "ph_positive": False,
        "prior_lines": 2, "prior_crs": 1, "prior_hsct": False, "blinatumomab": "naive", "inotuzumab_prior": False,
        "bm_blasts_pct": 1.0, "cns_status": "CNS1", "active_non_cns_emd": False, "cd19_antigen_load_pct": 30.0,
        "cd19_dim_pre": False, "cd22_pct_pre": 90.0, "product": "tisagenlecleucel", "costim": "4-1BB",
        "cell_dose_per_kg": 2e6, "fludarabine_auc": 15.0,
    })
    for name, values in overrides.items():
        frame[name] = values
    return frame


def contract_outcomes(patient_ids, events, event_days, last_days) -> pd.DataFrame:
    """Outcomes of responders (CR on day 28); relapses are CD19-positive and medullary."""
    relapse = np.asarray(events) == "relapse"
    return pd.DataFrame({"patient_id": list(patient_ids), "response": "CR", "response_day": 28.0, "event": events,
                         "event_day": event_days, "last_followup_day": last_days,
                         "relapse_phenotype": np.where(relapse, "CD19_pos", None),
                         "relapse_site": np.where(relapse, "medullary", None)})


def test_patient_frame_derives_bca_loss_ngs_landmarks_and_pb_bm_discordance():
    ids = ["A", "B"]
    rows = [
        ("A", 28.0, "PB", "b_cell_count", "<1", "cells/uL"),
        ("A", 91.0, "PB", "b_cell_count", "0.4%", None),          # aplastic (< 1% of lymphocytes)
        ("A", 182.0, "PB", "b_cell_count", "35", "cells/uL"),     # recovered (>= 10 cells/uL)
        ("A", 28.0, "BM", "ngs_mrd", "detected <LOQ", "fraction"),
        ("A", 91.0, "BM", "ngs_mrd", "NEG", "fraction"),
        ("A", 91.0, "BM", "flow_mrd", "<0.01%", None),
        ("A", 92.0, "PB", "flow_mrd", "0.05%", None),             # PB positive while BM < 0.01%
        ("B", 28.0, "PB", "b_cell_count", "2.5", "pct_lymphocytes"),
        ("B", 28.0, "BM", "ngs_mrd", "<1E-06", "fraction"),
        ("B", 28.0, "BM", "flow_mrd", "0.2%", None),
        ("B", 28.0, "PB", "flow_mrd", "0.01%", None),
    ]
    measurements = pd.DataFrame(rows, columns=["patient_id", "day", "specimen", "assay", "value", "unit"])
    outcomes = contract_outcomes(ids, ["none", "relapse"], [np.nan, 60.0], [400.0, 60.0])
    cohort = validate_cohort(contract_infusions(ids), measurements, outcomes)
    frame = build_patient_frame(cohort.infusions, cohort.outcomes, cohort.measurements).set_index("patient_id")
    assert frame.loc["A", "bca_loss_day"] == 182.0 and frame.loc["B", "bca_loss_day"] == 28.0
    assert frame.loc["A", "bca_first_test_aplastic"] == 1.0 and frame.loc["B", "bca_first_test_aplastic"] == 0.0
    assert frame.loc["A", "ngs_bm_detectable_d28"] == 1.0 and frame.loc["A", "ngs_bm_detectable_m3"] == 0.0
    assert frame.loc["B", "ngs_bm_detectable_d28"] == 0.0 and math.isnan(frame.loc["B", "ngs_bm_detectable_m3"])
    assert frame.loc["A", "pb_pos_bm_below_0_01pct"] == 1.0 and frame.loc["B", "pb_pos_bm_below_0_01pct"] == 0.0
    assert frame.loc["B", "end_day"] == 60.0 and frame.loc["A", "end_day"] == 400.0


def test_duplicate_patient_ids_are_rejected_with_table_and_row():
    outcomes = contract_outcomes(["A", "A"], ["none", "none"], [np.nan, np.nan], [10.0, 10.0])
    with pytest.raises(CalibrationDataError, match=r"outcomes, row 1, column 'patient_id'"):
        build_patient_frame(contract_infusions(["A", "B"]), outcomes, pd.DataFrame(
            columns=["patient_id", "day", "specimen", "assay", "value", "censored", "unit"]))


# --- endpoints ------------------------------------------------------------------------------------------
def test_efs_counts_no_response_at_day_zero_and_censors_hsct():
    patients = _patients([0.0, 50.0, 80.0, 120.0, 300.0], ["none", "relapse", "death", "hsct", "none"])
    patients.loc[0, ["nonresponse", "responder"]] = [True, False]
    time, event = endpoint_times(patients, "efs")
    np.testing.assert_array_equal(time, [0.0, 50.0, 80.0, 120.0, 300.0])
    assert event.tolist() == [True, True, True, False, False]


def test_cause_specific_relapse_censors_other_phenotypes():
    patients = _patients([10.0, 20.0], ["relapse", "relapse"])
    patients["relapse_phenotype"] = ["CD19_pos", "CD19_neg"]
    assert endpoint_times(patients, "relapse_CD19_neg")[1].tolist() == [False, True]
    assert endpoint_times(patients, "relapse")[1].tolist() == [True, True]


# --- estimators -----------------------------------------------------------------------------------------
def test_share_is_the_hand_counted_percentage():
    data = CalibrationData(_patients([1.0] * 8, ["relapse"] * 3 + ["none"] * 5, x=[1, 1, 1, 1, 0, 0, 0, 0]),
                           has_ground_truth=False)
    result = analyses.Share("x == 1", "first_event == 'relapse'").compute(data)
    assert result.value == pytest.approx(75.0) and result.n == 4


def test_kaplan_meier_matches_hand_computation():
    # times 1, 2(censored), 3, 4: S(3.5) = (3/4) * (1/2) = 0.375
    data = CalibrationData(_patients([1.0, 2.0, 3.0, 4.0], ["relapse", "none", "relapse", "relapse"]), False)
    assert analyses.KaplanMeierAt("relapse", "all", 3.5).compute(data).value == pytest.approx(37.5)
    assert analyses.KaplanMeierAt("relapse", "all", 3.5, risk=True).compute(data).value == pytest.approx(62.5)
    assert analyses.KaplanMeierMedian("relapse", "all").compute(data).value == pytest.approx(3.0)


def test_kaplan_meier_recovers_an_exponential_survival():
    data = CalibrationData(_exponential_cohort(20000, 0.0, seed=1), False)
    value = analyses.KaplanMeierAt("relapse", "all", 200.0).compute(data).value
    assert value == pytest.approx(100 * math.exp(-200 / 300), abs=1.5)


def test_aalen_johansen_matches_hand_computation():
    # relapse at 1, death at 2, relapse at 3, censored at 4: CIF_relapse(3.5) = 1/4 + (2/4)(1/2) = 0.5
    data = CalibrationData(_patients([1.0, 2.0, 3.0, 4.0], ["relapse", "death", "relapse", "none"]), False)
    assert analyses.AalenJohansenAt("relapse", "all", 3.5).compute(data).value == pytest.approx(50.0)
    assert analyses.AalenJohansenAt("death", "all", 3.5).compute(data).value == pytest.approx(25.0)
    assert analyses.AalenJohansenAt("relapse", "all", 3.5, from_day=1.5).compute(data).value == pytest.approx(25.0)


def test_aalen_johansen_with_ties_is_deterministic_and_leaves_global_random_state():
    data = CalibrationData(_patients([1.0, 1.0, 2.0, 2.0, 5.0], ["relapse", "death", "relapse", "hsct", "none"]),
                           False)
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    first = analyses.AalenJohansenAt("relapse", "all", 3.0).compute(data).value
    assert np.random.random() == expected_next
    assert analyses.AalenJohansenAt("relapse", "all", 3.0).compute(data).value == first
    assert first == pytest.approx(100 * (1 / 5 + (3 / 5) * (1 / 3)), abs=0.01)


def test_cox_recovers_a_known_hazard_ratio():
    data = CalibrationData(_exponential_cohort(6000, math.log(2.5), seed=2), False)
    result = analyses.CoxHazardRatio("relapse", "all", ("x",), "x").compute(data)
    assert result.value == pytest.approx(2.5, rel=0.08)
    assert "95% CI" in result.note


def _kmt2a_like_patients() -> pd.DataFrame:
    """8% exposed with relapse HR 30, 20,000 patients: lifelines' default Newton step (0.95) stops at
    a wrong optimum (HR 1e-30) with a ConvergenceWarning (as for the KMT2A lineage-switch HR ~32)."""
    rng = np.random.default_rng(2)
    x = (rng.random(20000) < 0.08).astype(float)
    relapse, censor = rng.exponential(20000.0 / np.exp(math.log(30.0) * x)), rng.uniform(0.0, 1095.0, 20000)
    return _patients(np.minimum(relapse, censor), np.where(relapse <= censor, "relapse", "none"), x=x)


def test_cox_recovers_a_large_hazard_ratio_and_reports_rejected_fits(monkeypatch):
    patients = _kmt2a_like_patients()
    analysis = analyses.CoxHazardRatio("relapse", "all", ("x",), "x")
    result = analysis.compute(CalibrationData(patients, False))
    assert result.value == pytest.approx(30.0, rel=0.15) and "rejected" not in result.note
    monkeypatch.setattr(analyses, "COX_NEWTON_STEP_SIZES", (0.95, 0.5))
    result = analysis.compute(CalibrationData(patients, False))
    assert result.value == pytest.approx(30.0, rel=0.15)
    assert "fit rejected, step size 0.95: ConvergenceWarning" in result.note
    monkeypatch.setattr(analyses, "COX_NEWTON_STEP_SIZES", (0.95,))
    result = analysis.compute(CalibrationData(patients, False))
    assert math.isnan(result.value)
    assert "ConvergenceWarning" in result.note and "did not converge at any step size" in result.note


def test_cox_reports_separation_instead_of_a_number():
    patients = _exponential_cohort(500, 0.0, seed=3)
    patients.loc[patients["x"] == 0, "first_event"] = "none"   # no event at x = 0: HR infinite
    result = analyses.CoxHazardRatio("relapse", "all", ("x",), "x").compute(CalibrationData(patients, False))
    assert math.isnan(result.value) and "no event with x = 0" in result.note


def _switching_rows(n: int, seed: int) -> dict[str, np.ndarray]:
    """Counting-process rows of a covariate switching 0 -> 1 at an exponential time (HR 3 after it)."""
    rng = np.random.default_rng(seed)
    switch = rng.exponential(200.0, n)
    before = rng.exponential(300.0, n)
    time = np.where(before < switch, before, switch + rng.exponential(100.0, n))
    censor = rng.uniform(0, 900, n)
    stop_all, event_all = np.minimum(time, censor), time <= censor
    switched = switch < stop_all
    return {"id": np.concatenate([np.arange(n), np.flatnonzero(switched)]),
            "start": np.concatenate([np.zeros(n), switch[switched]]),
            "stop": np.concatenate([np.where(switched, switch, stop_all), stop_all[switched]]),
            "event": np.concatenate([event_all & ~switched, event_all[switched]]),
            "exposed": np.concatenate([np.zeros(n), np.ones(int(switched.sum()))])}


def test_counting_process_cox_equals_lifelines_time_varying_fitter():
    rows = _switching_rows(300, seed=4)
    reference = CoxTimeVaryingFitter().fit(pd.DataFrame(rows), id_col="id", start_col="start", stop_col="stop",
                                           event_col="event")
    fit = fit_counting_process_cox(rows["start"], rows["stop"], rows["event"], rows["exposed"][:, None])
    assert fit.converged and fit.rows_dropped == 0 and fit.rows_used == len(rows["stop"])
    assert fit.log_hazard_ratio[0] == pytest.approx(reference.params_["exposed"], abs=1e-6)
    assert fit.standard_error[0] == pytest.approx(reference.standard_errors_["exposed"], rel=1e-4)


def test_counting_process_cox_leaves_out_and_counts_empty_intervals():
    rows = _switching_rows(300, seed=4)
    clean = fit_counting_process_cox(rows["start"], rows["stop"], rows["event"], rows["exposed"][:, None])
    # an event at day 0 (stop == start) and a reversed interval used to turn every estimate into NaN
    start = np.concatenate([rows["start"], [0.0, 50.0]])
    stop = np.concatenate([rows["stop"], [0.0, 20.0]])
    event = np.concatenate([rows["event"], [True, True]])
    exposed = np.concatenate([rows["exposed"], [1.0, 0.0]])
    fit = fit_counting_process_cox(start, stop, event, exposed[:, None])
    assert fit.converged and fit.rows_dropped == 2 and fit.rows_used == len(rows["stop"])
    np.testing.assert_allclose(fit.log_hazard_ratio, clean.log_hazard_ratio, rtol=1e-12)


def test_counting_process_cox_says_when_it_does_not_converge():
    rows = _switching_rows(300, seed=4)
    stopped = fit_counting_process_cox(rows["start"], rows["stop"], rows["event"], rows["exposed"][:, None],
                                       max_iterations=1)
    assert not stopped.converged and stopped.iterations == 1 and np.isnan(stopped.log_hazard_ratio).all()
    constant = fit_counting_process_cox(rows["start"], rows["stop"], rows["event"], np.ones((len(rows["stop"]), 1)))
    assert not constant.converged and np.isnan(constant.standard_error).all()


def test_time_varying_cox_recovers_the_hazard_ratio_after_bca_loss():
    rng = np.random.default_rng(5)
    n = 8000
    loss = rng.uniform(30.0, 700.0, n)
    before = rng.exponential(1000.0, n)
    relapse = np.where(before < loss, before, loss + rng.exponential(1000.0 / 4.0, n))
    censor = rng.uniform(0.0, 1000.0, n)
    end = np.minimum(relapse, censor)
    patients = _patients(end, np.where(relapse <= censor, "relapse", "none"), bca_loss_day=loss)
    result = analyses.TimeVaryingCoxHazardRatio("relapse", "all", "bca_loss_day", 2000.0).compute(
        CalibrationData(patients, False))
    assert result.value == pytest.approx(4.0, rel=0.10)


def test_time_varying_cox_counts_rows_left_out_instead_of_returning_nan():
    rng = np.random.default_rng(8)
    n = 4000
    loss = rng.uniform(30.0, 700.0, n)
    relapse = rng.exponential(800.0, n)
    end = np.minimum(relapse, 1000.0)
    events = np.where(relapse <= 1000.0, "relapse", "none").astype(object)
    end[:25], events[:25] = 0.0, "relapse"   # events at day 0: empty (0, 0] intervals
    patients = _patients(end, events, bca_loss_day=loss)
    result = analyses.TimeVaryingCoxHazardRatio("relapse", "all", "bca_loss_day", 2000.0).compute(
        CalibrationData(patients, False))
    assert np.isfinite(result.value) and result.value == pytest.approx(1.0, abs=0.2)
    assert "25 rows with an empty interval (stop <= start) left out" in result.note


def test_cox_note_names_adjusters_left_out_and_rows_with_missing_covariates():
    patients = _exponential_cohort(3000, math.log(2.0), seed=10)
    patients["constant"] = 1.0
    patients.loc[:99, "x"] = np.nan
    result = analyses.CoxHazardRatio("relapse", "all", ("x", "constant"), "x").compute(CalibrationData(patients, False))
    assert result.n == 2900 and result.value == pytest.approx(2.0, rel=0.15)
    assert "adjustment left out: constant does not vary" in result.note
    assert "100 rows with a missing covariate left out" in result.note


def test_landmark_cox_uses_only_patients_in_remission_at_the_landmark():
    patients = _exponential_cohort(6000, math.log(3.0), seed=6).rename(columns={"x": "marker"})
    patients["end_day"] += 42.0  # everyone reaches the landmark ...
    patients.loc[:99, "end_day"] = 20.0  # ... except 100 with an event before it
    patients.loc[:99, "first_event"] = "relapse"
    result = analyses.LandmarkCoxHazardRatio("relapse", "marker", 42.0).compute(CalibrationData(patients, False))
    assert result.n == 5900
    assert result.value == pytest.approx(3.0, rel=0.10)


def test_landmark_cox_adjusts_for_bca_loss_by_the_landmark():
    rng = np.random.default_rng(9)
    n = 12000
    marker, lost = rng.integers(0, 2, n).astype(float), rng.integers(0, 2, n).astype(float)
    relapse = 42.0 + rng.exponential(300.0 / (3.0 ** marker * 2.0 ** lost))
    censor = 42.0 + rng.uniform(1.0, 1000.0, n)
    patients = _patients(np.minimum(relapse, censor), np.where(relapse <= censor, "relapse", "none"), marker=marker,
                         bca_loss_day=np.where(lost == 1, 30.0, np.nan), bca_first_test_day=28.0)
    patients.loc[:999, "bca_first_test_day"] = 60.0  # no B-cell test by the landmark: left out
    result = analyses.LandmarkCoxHazardRatio("relapse", "marker", 42.0, adjust_for_bca_loss=True).compute(
        CalibrationData(patients, False))
    assert result.n == n - 1000
    assert result.value == pytest.approx(3.0, rel=0.10)


def test_latent_median_counts_never_lost_as_longest():
    patients = _patients([1.0] * 5, ["none"] * 5, car_persistence_day=[10.0, 20.0, 30.0, np.inf, np.inf])
    result = analyses.LatentMedian("car_persistence_day", "all").compute(CalibrationData(patients, True))
    assert result.value == 30.0 and "40.0% never lost" in result.note


# --- tolerances -----------------------------------------------------------------------------------------
def test_hazard_ratio_tolerance_is_the_union_of_ci_and_30_percent():
    rule = analyses.HazardRatioTolerance(0.30)
    assert rule.bounds(2.5) == pytest.approx((1.75, 3.25))
    assert rule.bounds(2.5, ci=(1.2, 5.0)) == pytest.approx((1.2, 5.0))
    assert analyses.accepts(rule, 1.3, 2.5, ci=(1.2, 5.0)) and not analyses.accepts(rule, 1.3, 2.5)
    assert not analyses.accepts(rule, math.nan, 2.5)


def test_points_relative_interval_and_positive_tolerances():
    assert analyses.PointsTolerance(5.0).bounds(50.0) == (45.0, 55.0)
    assert analyses.PointsTolerance(5.0).bounds(84.5, (81.0, 88.0)) == (76.0, 93.0)
    assert analyses.RelativeTolerance(0.5).bounds(2.0, (1.0, 3.0)) == (0.5, 4.5)
    no_effect, positive = analyses.IntervalTolerance(0.77, 1.3), analyses.PositiveTolerance()
    assert analyses.accepts(no_effect, 1.29, 1.0) and not analyses.accepts(no_effect, 1.31, 1.0)
    assert analyses.accepts(positive, 0.1, 0.0) and not analyses.accepts(positive, 0.0, 0.0)


def test_tolerances_describe_their_rule_and_interval():
    assert analyses.PointsTolerance(5.0).describe(84.5, (81.0, 88.0)) == "+-5 points (76.0-93.0)"
    assert analyses.RelativeTolerance(0.5).describe(7.0) == "+-50% (3.5-10.5)"
    assert analyses.HazardRatioTolerance(0.3).describe(2.5) == "+-30% (1.75-3.25)"
    assert analyses.HazardRatioTolerance(0.3).describe(4.5, ci=(2.03, 9.97)) == "in 95% CI or +-30% (2.03-9.97)"
    assert analyses.IntervalTolerance(0.77, 1.3).describe(1.0) == "within 0.77-1.3"
    assert analyses.PositiveTolerance().describe(0.0) == "> 0"
