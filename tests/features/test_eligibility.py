"""Tests of features.eligibility: the model's population at an as-of day, worded per patient."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.eligibility import ELIGIBILITY_COLUMNS, ELIGIBLE, NO_OUTCOMES, NOT_ELIGIBLE, UNKNOWN, eligibility_at
from features.landmarks import risk_set_mask
from pipelines.simulate import simulate_cohort

OUTCOMES = pd.DataFrame({
    "patient_id": ["cr", "nr", "relapsed", "late_assessment", "short", "hsct_later", "no_day", "no_response"],
    "response": ["CR", "NR", "CRi", "CR", "CR", "CR", "CR", None],
    "response_day": [28.0, 28.0, 28.0, 120.0, 28.0, 28.0, np.nan, np.nan],
    "event": ["none", "none", "relapse", "none", "none", "hsct", "none", "none"],
    "event_day": [np.nan, np.nan, 80.0, np.nan, np.nan, 200.0, np.nan, np.nan],
    "last_followup_day": [400.0, 28.0, 300.0, 400.0, 60.0, 300.0, 400.0, 400.0],
})


def test_remission_events_and_follow_up_at_one_day():
    judged = eligibility_at(OUTCOMES, [*OUTCOMES["patient_id"], "no_row"], 91.0)
    assert list(judged.columns) == list(ELIGIBILITY_COLUMNS)
    assert judged["eligible"].to_dict() == {
        "cr": ELIGIBLE, "nr": NOT_ELIGIBLE, "relapsed": NOT_ELIGIBLE, "late_assessment": NOT_ELIGIBLE,
        "short": UNKNOWN, "hsct_later": ELIGIBLE, "no_day": UNKNOWN, "no_response": UNKNOWN, "no_row": UNKNOWN}
    reasons = judged["eligibility_reason"]
    assert reasons["cr"] == "CR on day 28, event-free through day 91"
    assert reasons["relapsed"] == "relapse on day 80"
    assert reasons["nr"] == "no remission (response NR)"
    assert reasons["late_assessment"] == "remission not yet assessed by day 91 (assessed on day 120)"
    assert reasons["short"] == "follow-up ends on day 60, before day 91"
    assert reasons["no_day"] == "CR recorded without its response_day"
    assert reasons["no_response"] == "response not recorded"
    assert reasons["no_row"].startswith("no outcomes row")


def test_without_an_outcomes_table_every_patient_is_unknown():
    judged = eligibility_at(None, ["a", "b"], [10.0, 20.0])
    assert (judged["eligible"] == UNKNOWN).all() and (judged["eligibility_reason"] == NO_OUTCOMES).all()


def test_day_0_is_conditional_on_remission_like_the_landmark_0_risk_set():
    judged = eligibility_at(OUTCOMES, OUTCOMES["patient_id"].tolist(), 0.0)
    assert judged.loc["late_assessment", "eligible"] == ELIGIBLE
    assert "reach remission" in judged.loc["late_assessment", "eligibility_reason"]
    assert judged.loc["nr", "eligible"] == NOT_ELIGIBLE


def test_a_last_follow_up_on_the_day_itself_is_enough():
    judged = eligibility_at(OUTCOMES, ["short"], 60.0)
    assert judged.loc["short", "eligible"] == ELIGIBLE  # seen event-free on day 60
    assert not risk_set_mask(OUTCOMES, pd.Index(["short"]), 60.0)[0]  # the risk set also needs time after it


def test_an_event_on_the_day_itself_ends_eligibility():
    assert eligibility_at(OUTCOMES, ["relapsed"], 80.0).loc["relapsed", "eligible"] == NOT_ELIGIBLE
    assert eligibility_at(OUTCOMES, ["relapsed"], 79.0).loc["relapsed", "eligible"] == ELIGIBLE


def test_each_patient_is_judged_at_its_own_day():
    ids = OUTCOMES["patient_id"].tolist()
    days = np.array([0.0, 10.0, 50.0, 150.0, 300.0, 250.0, 5.0, 91.0])
    judged = eligibility_at(OUTCOMES, ids, days)
    one_by_one = pd.concat([eligibility_at(OUTCOMES, [pid], day) for pid, day in zip(ids, days)])
    pd.testing.assert_frame_equal(judged, one_by_one)
    assert judged.loc["relapsed", "eligible"] == ELIGIBLE and judged.loc["late_assessment", "eligible"] == ELIGIBLE
    assert judged.loc["hsct_later", "eligibility_reason"] == "hsct on day 200"


def test_patient_ids_may_be_given_as_numbers_and_keep_their_order():
    outcomes = OUTCOMES.assign(patient_id=range(len(OUTCOMES)))
    judged = eligibility_at(outcomes, [2, 0], 91.0)
    assert judged.index.tolist() == ["2", "0"] and judged["eligible"].tolist() == [NOT_ELIGIBLE, ELIGIBLE]


@pytest.mark.parametrize("day", [0.0, 28.0, 63.0, 91.0, 182.0, 365.0])
def test_eligible_patients_followed_past_the_day_are_the_landmark_risk_set(day):
    outcomes = simulate_cohort(300, 5).outcomes
    followed = outcomes[outcomes["last_followup_day"] > day]
    judged = eligibility_at(followed, followed["patient_id"].tolist(), day)
    expected = risk_set_mask(followed, pd.Index(followed["patient_id"]), day)
    assert expected.sum() > 20
    assert ((judged["eligible"] == ELIGIBLE).to_numpy() == expected).all()
