"""Tests of models.serving: request types, table conversions, risk groups, scoring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from features.contract import validate_cohort
from features.landmarks import build_landmark_set, feature_columns
from features.schema import INFUSION_COLUMNS
from models.base import CAUSES, cif_column, event_free_column, relapse_column
from models.factory import make_model
from models.serving import (
    EXAMPLE_PATIENT,
    PatientRecord,
    ScoringBundle,
    ScoringInputError,
    assign_risk_groups,
    records_to_tables,
    score_records,
    score_tables,
    tables_to_records,
)
from pipelines.simulate import simulate_cohort

HORIZONS = (182.0, 365.0, 730.0)
BUILDERS = ("baseline", "mrd", "bca", "antigen", "car_copies")


@pytest.fixture(scope="module")
def bundle() -> ScoringBundle:
    cohort = simulate_cohort(300, 11)
    valid = validate_cohort(cohort.infusions, cohort.measurements, cohort.outcomes, on_error="quarantine")
    landmark_set = build_landmark_set(valid.infusions, valid.measurements, valid.outcomes, [0, 91], 730, BUILDERS)
    columns = feature_columns(landmark_set)
    model = make_model("xgb_cox", {"n_estimators": 40, "n_jobs": 1}).fit(
        landmark_set[columns], landmark_set[["time", "event"]]
    )
    return ScoringBundle(
        estimator=model, estimator_name="xgb_cox", feature_columns=tuple(columns), builders=BUILDERS,
        builder_options={}, horizons_days=HORIZONS, risk_group_horizon_days=365.0, risk_group_cutoffs=(0.15, 0.35),
        n_top_factors=3, model_name="car-relapse", model_version="7", run_id="run-1",
    )


@pytest.fixture(scope="module")
def new_patients():
    cohort = simulate_cohort(25, 99)
    return cohort.infusions, cohort.measurements


def _record(**changes) -> PatientRecord:
    return PatientRecord.model_validate({**EXAMPLE_PATIENT, **changes}, strict=True)


# --- request types ---------------------------------------------------------------------------------
def test_request_fields_follow_the_contract():
    fields = PatientRecord.model_fields
    assert set(fields) == {spec.name for spec in INFUSION_COLUMNS} | {"as_of_day", "measurements"}
    assert fields["patient_id"].is_required() and fields["as_of_day"].is_required()
    assert fields["prior_lines"].annotation == (int | None)
    assert fields["bm_blasts_pct"].annotation == (float | None)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prior_lines", 2.5, "valid integer"),
        ("age_years", "eleven", "valid number"),
        ("down_syndrome", "no", "valid boolean"),
        ("patient_id", 17, "valid string"),
        ("bm_blast_pct", 3.0, "Extra inputs are not permitted"),
    ],
)
def test_strict_request_validation_names_the_field(field, value, message):
    with pytest.raises(ValidationError) as error:
        _record(**{field: value})
    assert field in str(error.value) and message in str(error.value)


def test_integer_accepted_where_a_float_is_declared():
    assert _record(as_of_day=91, bm_blasts_pct=12).bm_blasts_pct == 12.0


def test_missing_required_baseline_field_is_named():
    payload = {k: v for k, v in EXAMPLE_PATIENT.items() if k != "cd19_antigen_load_pct"}
    record = PatientRecord.model_validate(payload, strict=True)
    with pytest.raises(ScoringInputError, match="EXAMPLE-001: missing field.*cd19_antigen_load_pct"):
        records_to_tables([record])


def test_null_is_an_explicit_missing_value():
    infusions, _, _ = records_to_tables([_record(bm_blasts_pct=None)])
    assert infusions["bm_blasts_pct"].isna().all()


def test_tables_and_records_round_trip(new_patients):
    infusions, measurements = new_patients
    records = tables_to_records(infusions, measurements, 91.0)
    assert len(records) == len(infusions)
    parsed = [PatientRecord.model_validate(r, strict=True) for r in records]
    back_infusions, back_measurements, as_of = records_to_tables(parsed)
    assert (as_of == 91.0).all()
    assert back_infusions["patient_id"].tolist() == infusions["patient_id"].tolist()
    order = ["patient_id", "day", "specimen", "assay"]
    expected = measurements.sort_values(order, kind="stable").reset_index(drop=True)
    got = back_measurements.sort_values(order, kind="stable").reset_index(drop=True)
    assert got["value"].astype(str).tolist() == expected["value"].astype(str).tolist()
    assert np.allclose(got["day"], expected["day"])


# --- risk groups -----------------------------------------------------------------------------------
def test_risk_groups_at_and_between_cutoffs():
    groups = assign_risk_groups(np.array([0.0, 0.1499, 0.15, 0.3, 0.35, 0.9]), (0.15, 0.35))
    assert groups.tolist() == ["low", "low", "intermediate", "intermediate", "high", "high"]
    assert assign_risk_groups(np.array([0.2, 0.5]), (0.3,)).tolist() == ["low", "high"]


# --- scoring ------------------------------------------------------------------------------------------
def test_score_tables_output_layout_and_sums(bundle, new_patients):
    infusions, measurements = new_patients
    scores = score_tables(bundle, infusions, measurements, 91.0).scores
    assert scores["patient_id"].tolist() == infusions["patient_id"].tolist()
    for horizon in HORIZONS:
        parts = [cif_column(cause, horizon) for cause in CAUSES] + [event_free_column(horizon)]
        assert np.allclose(scores[parts].sum(axis=1), 1.0)
        phenotypes = [cif_column(c, horizon) for c in CAUSES if c.startswith("relapse_")]
        assert np.allclose(scores[phenotypes].sum(axis=1), scores[relapse_column(horizon)])
    expected_groups = assign_risk_groups(scores[relapse_column(365.0)].to_numpy(), (0.15, 0.35))
    assert scores["risk_group"].tolist() == expected_groups.tolist()
    assert set(scores["top_factor_1"]) <= set(bundle.feature_columns)
    contributions = scores[[f"top_factor_{i}_contribution" for i in (1, 2, 3)]].abs().to_numpy()
    assert (np.diff(contributions, axis=1) <= 0).all()
    assert (scores[["model_name", "model_version", "model_run_id", "estimator"]].iloc[0].tolist()
            == ["car-relapse", "7", "run-1", "xgb_cox"])


def test_a_patient_scores_the_same_alone_and_in_a_batch(bundle, new_patients):
    infusions, measurements = new_patients
    together = score_tables(bundle, infusions, measurements, 91.0).scores
    one = infusions.iloc[[4]]
    alone = score_tables(bundle, one, measurements[measurements["patient_id"] == one["patient_id"].iloc[0]], 91.0)
    pd.testing.assert_frame_equal(alone.scores, together.iloc[[4]].reset_index(drop=True), check_exact=True)


def test_records_and_tables_give_identical_scores(bundle, new_patients):
    infusions, measurements = new_patients
    records = [PatientRecord.model_validate(r, strict=True) for r in tables_to_records(infusions, measurements, 63.0)]
    pd.testing.assert_frame_equal(
        score_records(bundle, records), score_tables(bundle, infusions, measurements, 63.0).scores, check_exact=True
    )


def test_data_after_the_as_of_day_is_not_used(bundle):
    base = _record()
    later = dict(EXAMPLE_PATIENT["measurements"][0], day=200.0, value="5%")
    with_future = _record(measurements=EXAMPLE_PATIENT["measurements"] + [later])
    pd.testing.assert_frame_equal(score_records(bundle, [base]), score_records(bundle, [with_future]))
    as_of_later = _record(as_of_day=200.0, measurements=EXAMPLE_PATIENT["measurements"] + [later])
    assert not score_records(bundle, [as_of_later])[relapse_column(365.0)].equals(
        score_records(bundle, [base])[relapse_column(365.0)]
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"measurements": [dict(EXAMPLE_PATIENT["measurements"][0], assay="flow_mdr")]}, "flow_mdr"),
        ({"measurements": [dict(EXAMPLE_PATIENT["measurements"][0], value="lots")]}, "lots"),
        ({"sex": "X"}, "sex"),
        ({"as_of_day": -3.0}, "as_of_day"),
    ],
)
def test_contract_violations_are_named(bundle, changes, message):
    with pytest.raises(ScoringInputError, match=message):
        score_records(bundle, [_record(**changes)])


def test_duplicate_patient_in_a_request(bundle):
    with pytest.raises(ScoringInputError, match="duplicate patient_id"):
        score_records(bundle, [_record(), _record()])


def test_quarantine_mode_reports_rejected_rows(bundle, new_patients):
    infusions, measurements = new_patients
    broken = measurements.copy()
    broken.loc[broken.index[0], "value"] = "lots"
    result = score_tables(bundle, infusions, broken, 91.0, on_error="quarantine")
    assert len(result.scores) == len(infusions)
    rejected = result.rejects
    assert rejected[["table", "row"]].values.tolist() == [["measurements", 0]]
    assert "lots" in rejected["reason"].iloc[0]


# --- concurrent requests ----------------------------------------------------------------------------------
def _run_concurrently(bundle, requests):
    """Send ``requests`` to one MicroBatcher: the first alone, the others while it is busy.

    Returns each request's rows (or error) and the sizes of the scoring calls made.
    """
    import threading
    from functools import partial

    from models.serving import MicroBatcher

    first_call_started, others_queued = threading.Event(), threading.Event()
    call_sizes = []

    def spy(records):
        call_sizes.append(len(records))
        if len(call_sizes) == 1:  # hold the first call until every other request is queued
            first_call_started.set()
            others_queued.wait(timeout=30)
        return partial(score_records, bundle)(records)

    batcher = MicroBatcher(spy)
    results: dict[int, object] = {}

    def call(i):
        try:
            results[i] = batcher(requests[i])
        except ScoringInputError as error:
            results[i] = error

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    threads[0].start()
    first_call_started.wait(timeout=30)
    for thread in threads[1:]:
        thread.start()
    while len(batcher._pending) < len(requests) - 1:
        threading.Event().wait(0.01)
    others_queued.set()
    for thread in threads:
        thread.join(timeout=60)
    return results, call_sizes


def test_micro_batcher_scores_waiting_requests_in_one_call(bundle):
    requests = [[_record(patient_id=f"A{i}")] for i in range(4)]
    results, call_sizes = _run_concurrently(bundle, requests)
    assert call_sizes == [1, 3]
    for i in range(4):
        assert results[i]["patient_id"].tolist() == [f"A{i}"]


def test_micro_batcher_isolates_a_bad_request(bundle):
    requests = [[_record(patient_id=f"A{i}")] for i in range(3)] + [[_record(patient_id="BAD", sex="X")]]
    results, call_sizes = _run_concurrently(bundle, requests)
    assert call_sizes == [1, 3, 1, 1, 1]  # the combined call is refused, then one call per request
    for i in range(3):
        assert results[i]["patient_id"].tolist() == [f"A{i}"]
    assert isinstance(results[3], ScoringInputError) and "sex" in str(results[3])


def test_served_factors_are_the_tree_shap_of_models_explain(bundle, new_patients):
    from models.explain import explain_relapse_risk
    from models.explain import native_tree_explanation
    from models.serving import _feature_matrix

    valid = validate_cohort(*new_patients, None, on_error="fail")
    X = _feature_matrix(bundle, valid.infusions, valid.measurements, np.full(len(valid.infusions), 91.0))
    X = X.reset_index(drop=True)
    native = native_tree_explanation(bundle.estimator, X)
    reference = explain_relapse_risk(bundle.estimator, X, max_rows=len(X), method="tree")
    assert (native.output, native.method) == (reference.output, reference.method)
    np.testing.assert_allclose(native.values, reference.values, rtol=1e-5, atol=1e-6)
    assert native.base_value == pytest.approx(reference.base_value, rel=1e-6)
    assert np.abs(native.values).max() > 0  # something is explained
