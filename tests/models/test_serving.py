"""Tests of models.serving: request types, table conversions, risk groups, scoring."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from features.contract import validate_cohort
from features.eligibility import eligibility_at
from features.landmarks import build_landmark_set, feature_columns
from features.schema import INFUSION_COLUMNS, MEASUREMENT_COLUMNS
from models.base import CAUSES, cif_column, event_free_column, relapse_column
from models.factory import make_model
from models.serving import (
    ERROR_COLUMN,
    EXAMPLE_PATIENT,
    MEASUREMENT_FIELDS,
    REQUEST_FIELDS,
    ScoringBundle,
    ScoringInputError,
    assign_risk_groups,
    request_columns,
    score_request,
    score_requests,
    score_tables,
    tables_to_records,
)
from pipelines.simulate import simulate_cohort


def _wait_until(condition, timeout_s: float = 30.0) -> None:
    """Poll ``condition`` every 10 ms; fail the test (never hang) when it is still false after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(0.01)

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


def _patient(**changes) -> dict:
    return {**EXAMPLE_PATIENT, **changes}


def _request(*patients: dict) -> pd.DataFrame:
    """A request frame as the scoring server builds it from JSON records."""
    return pd.DataFrame(list(patients or [_patient()]))


# --- requests ------------------------------------------------------------------------------------
def test_request_fields_follow_the_contract():
    fields = {f.name: f for f in REQUEST_FIELDS}
    assert list(fields) == [spec.name for spec in INFUSION_COLUMNS] + ["as_of_day", "measurements"]
    assert all(fields[spec.name].required == spec.required for spec in INFUSION_COLUMNS)
    assert fields["as_of_day"].required and fields["measurements"].required
    assert (fields["prior_lines"].kind, fields["bm_blasts_pct"].kind, fields["sex"].kind) == ("int", "float", "str")
    assert MEASUREMENT_FIELDS == tuple(spec.name for spec in MEASUREMENT_COLUMNS[1:])


def test_missing_required_field_is_named():
    request = _request().drop(columns=["cd19_antigen_load_pct"])
    with pytest.raises(ScoringInputError, match="missing field.*cd19_antigen_load_pct"):
        request_columns([request])


def test_absent_optional_field_and_null_are_missing_values():
    request = _request(_patient(bm_blasts_pct=None)).drop(columns=["fludarabine_auc"])
    parsed = request_columns([request])
    assert list(parsed.infusions) == [spec.name for spec in INFUSION_COLUMNS]
    assert parsed.infusions["bm_blasts_pct"].tolist() == [None] and parsed.infusions["fludarabine_auc"].tolist() == [None]


@pytest.mark.parametrize(
    ("measurements", "message"),
    [
        (None, "measurements: must be a list of measurement objects"),
        ("NEG", "measurements: must be a list of measurement objects"),
        ([3.0], r"measurements\[0\]: must be an object"),
        ([dict(EXAMPLE_PATIENT["measurements"][0], assay_name="x")],
         r"measurements\[0\]: unknown measurement field\(s\) assay_name"),
    ],
)
def test_measurements_must_be_a_list_of_known_objects(bundle, measurements, message):
    with pytest.raises(ScoringInputError, match=message):
        score_request(bundle, _request(_patient(measurements=measurements)))


def test_tables_and_request_round_trip(new_patients):
    infusions, measurements = new_patients
    records = tables_to_records(infusions, measurements, 91.0)
    assert len(records) == len(infusions)
    parsed = request_columns([_request(*records)])
    assert (parsed.as_of_day == 91.0).all()
    assert parsed.infusions["patient_id"].tolist() == infusions["patient_id"].tolist()
    back = pd.DataFrame(parsed.measurements)
    order = ["patient_id", "day", "specimen", "assay"]
    expected = measurements.sort_values(order, kind="stable").reset_index(drop=True)
    got = back.sort_values(order, kind="stable").reset_index(drop=True)
    assert got["value"].astype(str).tolist() == expected["value"].astype(str).tolist()
    assert np.allclose(got["day"].astype(float), expected["day"])
    assert (parsed.owner == np.repeat(np.arange(len(records)), [len(r["measurements"]) for r in records])).all()


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


def test_patients_at_different_as_of_days_score_as_they_do_at_one_day(bundle, new_patients):
    """One call with two as-of days (features built per day) equals one call per day (all at once)."""
    infusions, measurements = new_patients
    ids = infusions["patient_id"].astype(str)
    days = pd.Series(np.where(np.arange(len(ids)) % 2, 28.0, 182.0), index=ids.to_numpy())
    mixed = score_tables(bundle, infusions, measurements, days).scores
    for day in (28.0, 182.0):
        chosen = (days == day).to_numpy()
        own = measurements[measurements["patient_id"].astype(str).isin(ids[chosen])]
        alone = score_tables(bundle, infusions.loc[chosen], own, day).scores
        pd.testing.assert_frame_equal(mixed.loc[chosen].reset_index(drop=True), alone, check_exact=True)


def test_a_bad_or_missing_per_patient_day_rejects_that_patient_only(bundle, new_patients):
    infusions, measurements = new_patients
    ids = infusions["patient_id"].astype(str)
    days = pd.Series(91.0, index=ids.to_numpy(), dtype=object)
    days.iloc[1] = -4.0
    days = days.drop(ids.iloc[2])  # no day for this patient
    result = score_tables(bundle, infusions, measurements, days, on_error="quarantine")
    assert result.scores["patient_id"].tolist() == ids.drop(index=[1, 2]).tolist()
    rejected = result.rejects[result.rejects["table"] == "infusions"]
    assert rejected[["row", "patient_id"]].values.tolist() == [[1, ids.iloc[1]], [2, ids.iloc[2]]]
    assert rejected["reason"].tolist() == ["as-of day: -4.0 must be in [0, 7300]", "as-of day: value is missing"]
    assert set(result.rejects.loc[result.rejects["table"] == "measurements", "patient_id"]) <= set(ids.iloc[1:3])
    with pytest.raises(ScoringInputError, match=r"infusions, row 1, column as_of_day: as-of day: -4.0 must be"):
        score_tables(bundle, infusions, measurements, days)
    with pytest.raises(ScoringInputError, match="given twice"):
        score_tables(bundle, infusions, measurements, pd.concat([days, days.iloc[:1]]))


def test_outcomes_add_each_patients_eligibility_at_its_day(bundle):
    cohort = simulate_cohort(40, 17)
    ids = cohort.infusions["patient_id"].astype(str)
    days = pd.Series(np.where(np.arange(len(ids)) % 2, 28.0, 182.0), index=ids.to_numpy())
    plain = score_tables(bundle, cohort.infusions, cohort.measurements, days).scores
    scored = score_tables(bundle, cohort.infusions, cohort.measurements, days, outcomes=cohort.outcomes).scores
    assert list(scored.columns[:4]) == ["patient_id", "as_of_day", "eligible", "eligibility_reason"]
    expected = eligibility_at(cohort.outcomes, ids, days.to_numpy())
    assert scored["eligible"].tolist() == expected["eligible"].tolist()
    assert scored["eligibility_reason"].tolist() == expected["eligibility_reason"].tolist()
    assert {"yes", "no"} <= set(scored["eligible"])
    pd.testing.assert_frame_equal(scored.drop(columns=["eligible", "eligibility_reason"]), plain, check_exact=True)


def test_requests_and_tables_give_identical_scores(bundle, new_patients):
    infusions, measurements = new_patients
    request = _request(*tables_to_records(infusions, measurements, 63.0))
    pd.testing.assert_frame_equal(
        score_request(bundle, request), score_tables(bundle, infusions, measurements, 63.0).scores, check_exact=True
    )


def test_data_after_the_as_of_day_is_not_used(bundle):
    base = _request()
    later = dict(EXAMPLE_PATIENT["measurements"][0], day=200.0, value="5%")
    with_future = _request(_patient(measurements=EXAMPLE_PATIENT["measurements"] + [later]))
    pd.testing.assert_frame_equal(score_request(bundle, base), score_request(bundle, with_future))
    as_of_later = _request(_patient(as_of_day=200.0, measurements=EXAMPLE_PATIENT["measurements"] + [later]))
    assert not score_request(bundle, as_of_later)[relapse_column(365.0)].equals(
        score_request(bundle, base)[relapse_column(365.0)]
    )


@pytest.mark.parametrize(
    ("changes", "message", "value"),
    [
        ({"measurements": [dict(EXAMPLE_PATIENT["measurements"][0], assay="flow_mdr")]},
         r"measurements\[0\]\.assay: not one of flow_mrd", "flow_mdr"),
        ({"measurements": [dict(EXAMPLE_PATIENT["measurements"][0], value="lots")]},
         r"measurements\[0\]\.value: cannot parse the lab value", "lots"),
        ({"sex": "X"}, "sex: not one of F, M", "'X'"),
        ({"as_of_day": -3.0}, r"as_of_day: must be in \[0, 7300\]", "-3"),
        ({"as_of_day": None}, "as_of_day: value is missing", "None"),
        ({"prior_lines": 2.5}, "prior_lines: not an integer", "2.5"),
        ({"age_years": "eleven"}, "age_years: not a number", "eleven"),
        ({"down_syndrome": "maybe"}, r"down_syndrome: not a boolean \(true/false\)", "maybe"),
        ({"fludarabine_auc": 1e300}, r"fludarabine_auc: must be in \[0, 100\]", "1e+300"),
        ({"cell_dose_per_kg": 2.1}, r"cell_dose_per_kg: must be in \[10000, 1e\+09\]", "2.1"),
    ],
)
def test_contract_violations_are_named_without_the_value(bundle, changes, message, value):
    with pytest.raises(ScoringInputError, match=r"patient at position 0: .*" + message) as caught:
        score_request(bundle, _request(_patient(**changes)))
    assert value not in str(caught.value)


def test_an_integer_field_accepts_whole_numbers_sent_as_floats(bundle):
    pd.testing.assert_frame_equal(score_request(bundle, _request(_patient(prior_lines=2.0))),
                                  score_request(bundle, _request()), check_exact=True)


def test_duplicate_patient_in_a_request(bundle):
    with pytest.raises(ScoringInputError, match="patient_id: duplicate patient_id"):
        score_request(bundle, _request(_patient(), _patient()))
    answer = score_requests(bundle, [_request(_patient(), _patient(), _patient(patient_id="OTHER"))])[0]
    assert [record[ERROR_COLUMN] is None for record in answer] == [False, False, True]


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
def _ids(answer: list[dict]) -> list:
    """Patient ids of one request's answer records."""
    return [record["patient_id"] for record in answer]


def _run_concurrently_on(batcher, requests, call_started, release):
    """Send ``requests`` to ``batcher``: the first alone, the others while it is busy.

    The batcher's scorer must hold its first call (set ``call_started``, then wait for
    ``release``); ``release`` is set once every other request is queued. Returns each request's
    rows (or error).
    """
    import threading

    results: dict[int, object] = {}

    def call(i):
        try:
            results[i] = batcher(requests[i])
        except Exception as error:  # each caller's own error is part of the result
            results[i] = error

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    threads[0].start()
    call_started.wait(timeout=30)
    for thread in threads[1:]:
        thread.start()
    _wait_until(lambda: len(batcher._pending) >= len(requests) - 1)
    release.set()
    for thread in threads:
        thread.join(timeout=60)
    return results


def _run_concurrently(bundle, requests):
    """Concurrent requests to a MicroBatcher around ``score_requests``: results and call sizes (patients)."""
    import threading

    from models.serving import MicroBatcher

    first_call_started, others_queued = threading.Event(), threading.Event()
    call_sizes = []

    def spy(batch):
        call_sizes.append(sum(len(request) for request in batch))
        if len(call_sizes) == 1:  # hold the first call until every other request is queued
            first_call_started.set()
            others_queued.wait(timeout=30)
        return score_requests(bundle, batch)

    results = _run_concurrently_on(MicroBatcher(spy), requests, first_call_started, others_queued)
    return results, call_sizes


def test_micro_batcher_scores_waiting_requests_in_one_call(bundle):
    requests = [_request(_patient(patient_id=f"A{i}")) for i in range(4)]
    results, call_sizes = _run_concurrently(bundle, requests)
    assert call_sizes == [1, 3]
    for i in range(4):
        assert _ids(results[i]) == [f"A{i}"]


def test_micro_batcher_isolates_a_bad_request(bundle):
    requests = [_request(_patient(patient_id=f"A{i}")) for i in range(3)] + [_request(_patient(patient_id="BAD", sex="X"))]
    results, call_sizes = _run_concurrently(bundle, requests)
    assert call_sizes == [1, 3]  # the bad request is answered with its own error by the combined call
    for i in range(3):
        assert _ids(results[i]) == [f"A{i}"]
    assert isinstance(results[3], ScoringInputError) and "sex: not one of F, M" in str(results[3])


def test_served_factors_are_the_tree_shap_of_models_explain(bundle, new_patients):
    from models.explain import explain_relapse_risk, native_tree_explanation
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


def test_a_numeric_patient_id_is_typed_as_text_like_in_a_csv(bundle):
    scores = score_request(bundle, _request(_patient(patient_id=17)))
    assert scores["patient_id"].tolist() == ["17"]
    expected = score_request(bundle, _request(_patient(patient_id="17")))
    pd.testing.assert_frame_equal(scores, expected, check_exact=True)


def test_measurements_in_column_form_score_like_the_list_form(bundle, new_patients):
    infusions, measurements = new_patients
    as_records = _request(*tables_to_records(infusions, measurements, 91.0))
    as_columns = _request(*tables_to_records(infusions, measurements, 91.0, measurement_form="columns"))
    assert isinstance(as_columns["measurements"].iloc[0], dict)
    pd.testing.assert_frame_equal(score_request(bundle, as_columns), score_request(bundle, as_records), check_exact=True)


def test_column_form_needs_lists_of_one_length(bundle):
    ragged = {"day": [28.0, 91.0], "specimen": ["BM"], "assay": ["ngs_mrd", "ngs_mrd"], "value": ["NEG", "NEG"]}
    with pytest.raises(ScoringInputError, match="measurements: in column form, each field must be a list, all of one"):
        score_request(bundle, _request(_patient(measurements=ragged)))


def _echo_batcher(linger_s: float):
    """A MicroBatcher whose scorer echoes patient ids, records its call sizes and holds its first
    call until released (see :func:`_run_concurrently_on`)."""
    import threading

    from models.serving import MicroBatcher

    sizes, first_call_started, release = [], threading.Event(), threading.Event()

    def echo(batch):
        sizes.append(sum(len(request) for request in batch))
        if len(sizes) == 1:
            first_call_started.set()
            release.wait(timeout=30)
        return [[{"patient_id": value} for value in request["patient_id"].tolist()] for request in batch]

    return MicroBatcher(echo, linger_s=linger_s), sizes, first_call_started, release


def _call_in_threads(batcher, requests, stagger_s: float = 0.0) -> dict:
    import threading
    import time

    results = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher(requests[i]))) for i in range(len(requests))]
    for thread in threads:
        thread.start()
        time.sleep(stagger_s)
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_micro_batcher_lingers_for_the_callers_active_around_the_last_call():
    """F0 is scored alone while F1 queues: two callers were active, so F1 then waits for a second
    caller (a client coming back) instead of being scored alone."""
    import threading
    import time

    batcher, sizes, started, release = _echo_batcher(linger_s=30.0)
    results = {}

    def call(name):
        results[name] = _ids(batcher(_request(_patient(patient_id=name))))

    threads = {name: threading.Thread(target=call, args=(name,)) for name in ("F0", "F1", "F2")}
    threads["F0"].start()
    started.wait(timeout=30)
    threads["F1"].start()
    _wait_until(lambda: len(batcher._pending) >= 1)
    release.set()
    time.sleep(0.2)
    threads["F2"].start()
    for thread in threads.values():
        thread.join(timeout=60)
    assert sizes == [1, 2]
    assert results == {"F0": ["F0"], "F1": ["F1"], "F2": ["F2"]}


def test_micro_batcher_lingers_again_for_as_many_as_last_time():
    import time

    batcher, sizes, started, release = _echo_batcher(linger_s=30.0)
    release.set()
    pair = [_request(_patient(patient_id=f"P{i}")) for i in range(2)]
    batcher._active_callers = 2  # as after a call that scored two callers with nobody queued
    start = time.perf_counter()
    results = _call_in_threads(batcher, pair, stagger_s=0.2)  # the second arrives 0.2 s after the first
    assert sizes == [2]  # the first waited for it instead of scoring alone
    assert time.perf_counter() - start < 10.0  # and was woken by its arrival, not by the 30 s limit
    assert [_ids(results[i]) for i in range(2)] == [["P0"], ["P1"]]
    assert batcher._active_callers == 2


def test_micro_batcher_stops_waiting_when_clients_leave():
    import time

    batcher, sizes, _, release = _echo_batcher(linger_s=0.3)
    release.set()
    batcher._active_callers = 4
    start = time.perf_counter()
    batcher(_request(_patient(patient_id="alone-1")))  # waits in vain, at most linger_s
    waited = time.perf_counter() - start
    start = time.perf_counter()
    batcher(_request(_patient(patient_id="alone-2")))  # now expects one caller: no wait
    assert sizes == [1, 1] and 0.25 < waited < 5.0 and time.perf_counter() - start < 0.2


def test_a_lone_caller_does_not_linger():
    import time

    batcher, sizes, _, release = _echo_batcher(linger_s=30.0)
    release.set()
    start = time.perf_counter()
    for i in range(3):
        batcher(_request(_patient(patient_id=f"L{i}")))
    assert sizes == [1, 1, 1] and time.perf_counter() - start < 5.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"age_years": [11.5, 12.0]}, r"age_years: must be a single value"),
        ({"site": {"name": "x"}}, r"site: must be a single value"),
        ({"age_years": True}, r"age_years: not a number"),
        ({"prior_lines": True}, r"prior_lines: not an integer"),
        ({"product": True}, r"product: not text"),
        ({"as_of_day": True}, r"as_of_day: not a number"),
        ({"as_of_day": "ninety"}, r"as_of_day: not a number"),
        ({"measurements": [dict(EXAMPLE_PATIENT["measurements"][0], value=True)]},
         r"measurements\[0\]\.value: not a number or lab text"),
        ({"measurements": [dict(EXAMPLE_PATIENT["measurements"][0], value={"x": 1})]},
         r"measurements\[0\]\.value: must be a single value"),
        ({"measurements": [dict(EXAMPLE_PATIENT["measurements"][0], day=True)]}, r"measurements\[0\]\.day: not a number"),
    ],
)
def test_values_that_would_be_misread_are_refused_by_name(bundle, changes, message):
    with pytest.raises(ScoringInputError, match=message):
        score_request(bundle, _request(_patient(**changes)))


def test_a_boolean_is_still_a_boolean_where_the_contract_wants_one(bundle):
    scores = score_request(bundle, _request(_patient(down_syndrome=True)))
    assert len(scores) == 1


def test_micro_batcher_isolates_any_failure_of_a_combined_call():
    import threading

    from models.serving import MicroBatcher

    started, release, sizes = threading.Event(), threading.Event(), []

    def fragile(batch):
        sizes.append(sum(len(request) for request in batch))
        if len(sizes) == 1:
            started.set()
            release.wait(timeout=30)
        if any("BROKEN" in request["patient_id"].tolist() for request in batch):
            raise RuntimeError("not a contract problem")
        return [[{"patient_id": value} for value in request["patient_id"].tolist()] for request in batch]

    requests = [_request(_patient(patient_id=f"G{i}")) for i in range(3)] + [_request(_patient(patient_id="BROKEN"))]
    results = _run_concurrently_on(MicroBatcher(fragile), requests, started, release)
    assert sizes == [1, 3, 1, 1, 1]
    assert [_ids(results[i]) for i in range(3)] == [["G0"], ["G1"], ["G2"]]
    assert isinstance(results[3], RuntimeError)


def test_an_answer_does_not_depend_on_the_other_requests_in_the_batch(bundle):
    """A patient id sent as the number 17 reads "17" whatever the other requests of the call hold."""
    answers = score_requests(bundle, [_request(_patient(patient_id=17)), _request(_patient(patient_id=2.5))])
    assert [_ids(answer) for answer in answers] == [["17"], ["2.5"]]
    assert answers[0] == score_requests(bundle, [_request(_patient(patient_id=17))])[0]


def test_tables_with_every_patient_quarantined_give_no_scores_and_every_reject(bundle, new_patients):
    infusions, measurements = new_patients
    three = infusions.iloc[:3]
    own = measurements[measurements["patient_id"].isin(three["patient_id"])]
    scored = score_tables(bundle, three, own, 91.0).scores
    result = score_tables(bundle, three.assign(sex="Q"), own, 91.0, on_error="quarantine")
    assert len(result.scores) == 0
    assert list(result.scores.columns) == list(scored.columns)
    pd.testing.assert_series_equal(result.scores.dtypes, scored.dtypes)
    assert (result.rejects["table"] == "infusions").sum() == 3


# --- several requests in one call (the served model) ---------------------------------------------------
def _expected_answer(bundle, request: pd.DataFrame) -> list[dict]:
    """``score_request`` of this request alone, as answer records (``error`` null)."""
    from models.serving import answer_records

    scores = score_request(bundle, request)
    return [{**record, ERROR_COLUMN: None}
            for record in answer_records({name: scores[name].to_numpy() for name in scores.columns})]


def _measurement(**changes) -> dict:
    return {**EXAMPLE_PATIENT["measurements"][1], **changes}


REQUEST_VARIANTS = {  # name -> patient record changes
    "example patient": {},
    "ints for floats, float for an int": {"age_years": 11, "bm_blasts_pct": 12, "prior_lines": 2.0},
    "nulls where allowed": {"site": None, "fludarabine_auc": None, "down_syndrome": None, "prior_crs": None},
    "no measurements": {"measurements": []},
    "text numbers": {"age_years": "11.5", "prior_lines": "2"},
    "measurement without unit or limit keys": {"measurements": [{"day": 28, "specimen": "BM", "assay": "flow_mrd",
                                                                 "value": "<0.01%"}]},
    "NaN for a number": {"cd22_pct_pre": float("nan")},
    "numeric patient id": {"patient_id": 17},
    "boolean as text": {"down_syndrome": "no"},
    "number for a boolean": {"prior_hsct": 0},
    "measurements in column form": {"measurements": {"day": [28.0], "specimen": ["BM"], "assay": ["ngs_mrd"],
                                                     "value": ["NEG"], "unit": ["fraction"],
                                                     "detection_limit": [1e-6]}},
    "as-of day as text": {"as_of_day": "91"},
    "lab value that cannot be read": {"measurements": [_measurement(value="1.2E-05 approx")]},
}


@pytest.mark.parametrize("variant", list(REQUEST_VARIANTS))
def test_each_request_is_answered_as_score_request_answers_it_alone(bundle, variant):
    changes = REQUEST_VARIANTS[variant]
    request = _request(_patient(patient_id=f"V-{variant}", **changes) if "patient_id" not in changes
                       else _patient(**changes))
    try:
        expected = _expected_answer(bundle, request)
    except ScoringInputError as error:
        answer = score_requests(bundle, [request])[0]
        assert isinstance(answer, ScoringInputError) and str(answer) == str(error)
        return
    assert score_requests(bundle, [request]) == [expected]


def test_a_batch_of_requests_answers_each_as_alone(bundle, new_patients):
    records = tables_to_records(*new_patients, 91.0)
    variants = [_request(_patient(patient_id=f"V{i}", **changes))
                for i, (name, changes) in enumerate(REQUEST_VARIANTS.items()) if "patient_id" not in changes]
    requests = [_request(record) for record in records[:6]] + [_request(*records[6:9])] + variants
    alone = [score_requests(bundle, [request])[0] for request in requests]
    together = score_requests(bundle, requests)
    assert [str(a) if isinstance(a, Exception) else a for a in together] == \
        [str(a) if isinstance(a, Exception) else a for a in alone]
    assert sum(isinstance(answer, ScoringInputError) for answer in together) == 1  # the unreadable lab value
    assert all(len(answer) == len(request) for answer, request in zip(together, requests)
               if not isinstance(answer, Exception))


def test_a_bad_request_in_a_batch_gets_its_own_error_and_the_others_their_scores(bundle):
    good, bad = _request(_patient(patient_id="OK")), _request(_patient(patient_id="BAD", prior_lines=2.5))
    answers = score_requests(bundle, [good, bad])
    assert answers[0] == score_requests(bundle, [good])[0] and answers[0][0]["patient_id"] == "OK"
    assert isinstance(answers[1], ScoringInputError)
    assert str(answers[1]) == "no patient of the request can be scored: patient at position 0: prior_lines: not an integer"


def test_one_bad_patient_gets_an_error_record_and_the_others_their_scores(bundle, new_patients):
    """A request of five patients, the third with an unreadable lab value: four are scored exactly as
    alone, the third is answered with its id and the field at fault, without its value."""
    records = tables_to_records(*new_patients, 91.0)[:5]
    records[2]["measurements"][1]["value"] = "1.2E-05 approx"
    answer = score_requests(bundle, [_request(*records)])[0]
    assert [record["patient_id"] for record in answer] == [record["patient_id"] for record in records]
    for position in (0, 1, 3, 4):
        assert answer[position] == _expected_answer(bundle, _request(records[position]))[0]
    bad = answer[2]
    assert bad[ERROR_COLUMN] == "measurements[1].value: cannot parse the lab value"
    assert all(value is None for name, value in bad.items() if name not in ("patient_id", ERROR_COLUMN))
    assert list(bad) == list(answer[0])
    with pytest.raises(ScoringInputError, match=r"^1 of 5 patient\(s\) of the request cannot be scored: "
                                                r"patient at position 2: measurements\[1\]\.value"):
        score_request(bundle, _request(*records))


def test_a_patient_in_two_requests_of_one_call_is_scored_in_each(bundle):
    """The same patient sent by two clients at the same moment is no duplicate: each request alone."""
    first, second = _request(_patient()), _request(_patient(as_of_day=28.0), _patient(patient_id="OTHER"))
    answers = score_requests(bundle, [first, second])
    assert answers == [score_requests(bundle, [first])[0], score_requests(bundle, [second])[0]]
    assert all(record[ERROR_COLUMN] is None for answer in answers for record in answer)


def test_an_exact_duplicate_measurement_is_collapsed_and_a_conflicting_one_refused(bundle):
    """The same result sent twice scores as once; the same day, specimen and assay with another value
    is an error record naming both rows, never a silent choice."""
    measurements = EXAMPLE_PATIENT["measurements"]
    once = score_request(bundle, _request(_patient()))
    twice = score_request(bundle, _request(_patient(measurements=measurements + measurements[3:4])))
    pd.testing.assert_frame_equal(once, twice, check_exact=True)
    conflicting = dict(measurements[3], value=50.0)
    answer = score_requests(bundle, [_request(_patient(measurements=measurements + [conflicting]))])[0]
    assert isinstance(answer, ScoringInputError)
    assert "measurements[3].value: another measurement of the same day, specimen, assay and unit" in str(answer)
    assert "measurements[6].value" in str(answer) and "50" not in str(answer)


def test_answer_records_turn_missing_values_into_none():
    from models.serving import answer_records

    records = answer_records({"a": np.array([1.5, np.nan]), "b": np.array(["x", None], dtype=object),
                              "c": np.array([np.float64("nan"), 2.0], dtype=object)})
    assert records == [{"a": 1.5, "b": "x", "c": None}, {"a": None, "b": None, "c": 2.0}]
    assert type(records[0]["a"]) is float



def test_an_empty_request_in_a_batch_is_refused_and_the_others_answered(bundle):
    """Alone, an empty request is an error; batched with others it must not become an empty answer."""
    from models.serving import MicroBatcher

    empty = _request(_patient()).iloc[:0]
    answers = score_requests(bundle, [_request(_patient(patient_id="E1")), empty])
    assert _ids(answers[0]) == ["E1"] and isinstance(answers[1], ScoringInputError) and "no patients" in str(answers[1])
    started, release = threading.Event(), threading.Event()

    def held(batch):
        if not started.is_set():
            started.set()
            release.wait(timeout=30)
        return score_requests(bundle, batch)

    requests = [_request(_patient(patient_id="E0")), _request(_patient(patient_id="E2")), empty]
    results = _run_concurrently_on(MicroBatcher(held), requests, started, release)
    assert _ids(results[0]) == ["E0"] and _ids(results[1]) == ["E2"]
    assert isinstance(results[2], ScoringInputError) and "no patients" in str(results[2])


def test_a_caller_whose_call_was_interrupted_gets_an_error_not_none():
    """A call ended by something other than an Exception: the other callers of its batch get an error."""
    from models.serving import MicroBatcher

    started, release, calls = threading.Event(), threading.Event(), []

    def scorer(batch):
        calls.append(len(batch))
        if len(calls) == 1:  # hold the first call while the others queue
            started.set()
            release.wait(timeout=30)
            return [[{"patient_id": "I0"}]]
        raise SystemExit("interrupted")

    batcher = MicroBatcher(scorer)
    results = {}

    def call(name):
        try:
            results[name] = batcher(_request(_patient(patient_id=name)))
        except BaseException as error:  # noqa: B036 - the point of the test
            results[name] = error

    threads = {name: threading.Thread(target=call, args=(name,)) for name in ("I0", "I1", "I2")}
    threads["I0"].start()
    started.wait(timeout=30)
    threads["I1"].start()
    threads["I2"].start()
    _wait_until(lambda: len(batcher._pending) >= 2)
    release.set()
    for thread in threads.values():
        thread.join(timeout=60)
    assert calls == [1, 2]
    errors = sorted(type(results[name]).__name__ for name in ("I1", "I2"))
    assert errors == ["RuntimeError", "SystemExit"]  # the caller that scored, and the one it scored for
    assert not batcher._busy
