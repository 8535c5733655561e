"""Risk sets, targets and the stacked landmark set; leakage properties (hypothesis)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.landmarks import (
    EVENT_CODES,
    ID_COLUMNS,
    TARGET_COLUMNS,
    build_landmark_set,
    feature_columns,
    landmark_targets,
    risk_set_mask,
)
from features.registry import available_builders, build_feature_rows
from tests.features.test_baseline import infusions_for
from tests.features.test_longitudinal import measurements_of

OUTCOME_FIELDS = ("patient_id", "response", "response_day", "event", "event_day", "last_followup_day",
                  "relapse_phenotype")


def outcomes_of(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame.from_records(rows, columns=OUTCOME_FIELDS)


def targets(outcomes: pd.DataFrame, landmark: float, horizon: float = 730.0, hsct: str = "competing") -> dict:
    index = pd.Index(outcomes["patient_id"], name="patient_id")
    frame = landmark_targets(outcomes, index, landmark, horizon, hsct)
    return {pid: (row.time, row.event) for pid, row in frame.iterrows()}


# --- target construction -------------------------------------------------------------------------
EXAMPLES = outcomes_of([
    ("early", "CR", 28.0, "relapse", 100.0, 400.0, "CD19_neg"),
    ("late", "CR", 28.0, "relapse", 900.0, 1000.0, "CD19_pos"),       # beyond the horizon from 28
    ("hsct", "CRi", 30.0, "hsct", 150.0, 800.0, None),
    ("unknown", "CR", 27.0, "relapse", 300.0, 300.0, None),
    ("alive", "CR", 28.0, "none", np.nan, 500.0, None),
    ("long", "CR", 28.0, "none", np.nan, 2000.0, None),
    ("nr", "NR", 28.0, "death", 60.0, 60.0, None),
    ("lost", "CR", 28.0, "none", np.nan, 91.0, None),                  # lost to follow-up at 91
])


def test_targets_truncate_at_the_horizon():
    at_28 = targets(EXAMPLES, 28.0)
    assert at_28["early"] == (72.0, "relapse_CD19_neg")
    assert at_28["late"] == (730.0, "none")              # 872 days away: truncated
    assert at_28["alive"] == (472.0, "none")
    assert at_28["long"] == (730.0, "none")
    assert at_28["unknown"] == (272.0, "relapse_unknown")
    assert at_28["lost"] == (63.0, "none")
    assert targets(EXAMPLES, 182.0)["late"] == (718.0, "relapse_CD19_pos")  # within 730 of 182


def test_hsct_competing_or_censoring():
    assert targets(EXAMPLES, 91.0)["hsct"] == (59.0, "hsct")
    assert targets(EXAMPLES, 91.0, hsct="censor")["hsct"] == (59.0, "none")  # follow-up ends at HSCT
    assert targets(EXAMPLES, 91.0, horizon=30.0)["hsct"] == (30.0, "none")


def test_risk_sets():
    at_28 = targets(EXAMPLES, 28.0)
    assert "nr" not in at_28                    # never in remission
    assert "hsct" not in at_28                  # CRi assessed at day 30: not yet in remission at 28
    assert set(targets(EXAMPLES, 91.0)) == {"early", "late", "hsct", "unknown", "alive", "long"}
    assert "lost" not in targets(EXAMPLES, 91.0)  # last follow-up at the landmark: not followed
    assert set(targets(EXAMPLES, 400.0)) == {"late", "alive", "long"}  # early relapsed at 100, alive censored at 500
    assert "early" not in targets(EXAMPLES, 100.0)  # event on the landmark day


def test_landmark_zero_is_conditional_on_later_remission():
    at_0 = targets(EXAMPLES, 0.0)
    assert set(at_0) == set(EXAMPLES["patient_id"]) - {"nr"}
    assert at_0["early"] == (100.0, "relapse_CD19_neg")


def test_all_event_codes_are_declared():
    codes = set(landmark_targets(EXAMPLES, pd.Index(EXAMPLES["patient_id"]), 0.0, 2000.0)["event"])
    assert codes <= set(EVENT_CODES) and "hsct" in codes


def test_bad_target_options():
    with pytest.raises(ValueError, match="hsct"):
        targets(EXAMPLES, 0.0, hsct="ignore")
    with pytest.raises(ValueError, match="horizon_days"):
        targets(EXAMPLES, 0.0, horizon=0.0)
    with pytest.raises(ValueError, match="outcomes: missing required column.*event_day"):
        targets(EXAMPLES.drop(columns="event_day"), 0.0)


# --- the stacked set ------------------------------------------------------------------------------
def stacked_example() -> tuple[pd.DataFrame, pd.DataFrame]:
    infusions = infusions_for(list(EXAMPLES["patient_id"]))
    measurements = measurements_of([
        ("early", 28, "BM", "ngs_mrd", 1e-5, False),
        ("early", 91, "BM", "ngs_mrd", 1e-3, False),
        ("alive", 28, "BM", "ngs_mrd", 1e-6, True),
    ])
    return infusions, measurements


def test_stacked_set_layout_and_consistency_with_scoring_rows():
    infusions, measurements = stacked_example()
    stacked = build_landmark_set(infusions, measurements, EXAMPLES, [0, 28, 91], 730.0, ["baseline", "mrd"])
    assert list(stacked.columns[:5]) == ["patient_id", "landmark_day", "site", "time", "event"]
    assert stacked.groupby("landmark_day").size().to_dict() == {0.0: 7, 28.0: 6, 91.0: 6}
    features = feature_columns(stacked)
    assert "landmark_day" in features and not set(features) & set(ID_COLUMNS + TARGET_COLUMNS)
    assert stacked[features].dtypes.eq(np.float64).all()
    assert (stacked["time"] > 0).all()
    at_91 = stacked[stacked["landmark_day"] == 91.0].set_index("patient_id")
    scoring = build_feature_rows(infusions, measurements, 91.0, ["baseline", "mrd"]).loc[at_91.index]
    pd.testing.assert_frame_equal(at_91[features], scoring[features], check_names=False)
    assert at_91.loc["early", "bm_ngs_mrd_log10_last"] == pytest.approx(-3.0)
    assert stacked.set_index(["landmark_day", "patient_id"]).loc[(28.0, "early"), "bm_ngs_mrd_log10_last"] == pytest.approx(-5.0)


def test_duplicate_landmarks_are_rejected():
    infusions, measurements = stacked_example()
    with pytest.raises(ValueError, match="duplicates"):
        build_landmark_set(infusions, measurements, EXAMPLES, [28, 28.0], 730.0)


# --- leakage properties ----------------------------------------------------------------------------
SPECIMENS, ASSAYS = ("BM", "PB"), ("flow_mrd", "ngs_mrd", "b_cell_count", "cd19_pct_blasts", "car_copies")
UNITS = {"flow_mrd": "fraction", "ngs_mrd": "fraction", "b_cell_count": "cells/uL",
         "cd19_pct_blasts": "pct_blasts", "car_copies": "copies/ug"}
PATIENTS = ("p0", "p1", "p2", "p3")
MEASUREMENT_COLUMNS = ("patient_id", "day", "specimen", "assay", "value", "censored", "detection_limit", "unit",
                       "detected_below_loq")
LANDMARK = st.sampled_from([0.0, 28.0, 63.0, 91.0, 182.0])
DAY = st.floats(-30.0, 900.0).map(round)
EVENT_DAY = st.one_of(st.sampled_from([28, 63, 91, 182]), st.integers(1, 900))  # ties with landmarks


@st.composite
def measurement_rows(draw, days=DAY) -> list[dict]:
    rows = []
    for _ in range(draw(st.integers(0, 14))):
        assay = draw(st.sampled_from(ASSAYS))
        censored = draw(st.booleans())
        value = draw(st.sampled_from([1e-6, 1e-4, 3e-3, 0.2, 5.0, 40.0, 90.0]))
        rows.append({"patient_id": draw(st.sampled_from(PATIENTS)), "day": float(draw(days)),
                     "specimen": draw(st.sampled_from(SPECIMENS)), "assay": assay, "value": value,
                     "censored": censored, "detection_limit": value if censored else np.nan,
                     "unit": UNITS[assay], "detected_below_loq": censored and draw(st.booleans())})
    return rows


@st.composite
def outcome_row(draw, patient_id: str) -> dict:
    event = draw(st.sampled_from(["relapse", "death", "hsct", "none"]))
    event_day = np.nan if event == "none" else float(draw(EVENT_DAY))
    followup = float(draw(EVENT_DAY)) if event == "none" else event_day + draw(st.integers(0, 300))
    return {"patient_id": patient_id, "response": draw(st.sampled_from(["CR", "CRi", "NR"])),
            "response_day": float(draw(st.integers(20, 40))), "event": event, "event_day": event_day,
            "last_followup_day": followup,
            "relapse_phenotype": draw(st.sampled_from(["CD19_pos", "CD19_neg", "lineage_switch", None]))}


@st.composite
def cohorts(draw):
    infusions = infusions_for(list(PATIENTS))
    outcomes = pd.DataFrame([draw(outcome_row(pid)) for pid in PATIENTS])
    return infusions, pd.DataFrame(draw(measurement_rows()), columns=list(MEASUREMENT_COLUMNS)), outcomes


@st.composite
def future_changes(draw, outcomes: pd.DataFrame, landmark: float) -> pd.DataFrame:
    """Outcomes changed only after the landmark: events, follow-up and later responses."""
    changed = outcomes.copy()
    for i, row in changed.iterrows():
        if row["event"] == "none" or row["event_day"] > landmark:
            event = draw(st.sampled_from(["relapse", "death", "hsct", "none"]))
            changed.loc[i, "event"] = event
            changed.loc[i, "event_day"] = np.nan if event == "none" else landmark + draw(st.integers(1, 500))
            changed.loc[i, "relapse_phenotype"] = draw(st.sampled_from(["CD19_pos", "CD19_neg", None]))
        if row["last_followup_day"] > landmark:
            changed.loc[i, "last_followup_day"] = landmark + draw(st.integers(1, 900))
        if landmark > 0 and row["response_day"] > landmark:  # a response not yet assessed at s
            changed.loc[i, "response"] = draw(st.sampled_from(["CR", "CRi", "NR"]))
            changed.loc[i, "response_day"] = landmark + draw(st.integers(1, 20))
    return changed


BUILDERS = available_builders()  # every registered builder, the trajectory ones included
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(data=st.data(), cohort=cohorts(), landmark=LANDMARK)
def test_nothing_after_the_landmark_changes_a_feature_row_or_the_risk_set(data, cohort, landmark):
    infusions, measurements, outcomes = cohort
    known = measurements[measurements["day"] <= landmark]
    future = pd.DataFrame(data.draw(measurement_rows(st.integers(int(landmark) + 1, 1200))),
                          columns=list(MEASUREMENT_COLUMNS))
    changed_measurements = pd.concat([known, future], ignore_index=True)
    changed_outcomes = data.draw(future_changes(outcomes, landmark))

    before = build_feature_rows(infusions, measurements, landmark, BUILDERS)
    after = build_feature_rows(infusions, changed_measurements, landmark, BUILDERS)
    pd.testing.assert_frame_equal(before, after)

    original = build_landmark_set(infusions, measurements, outcomes, [landmark], 365.0, BUILDERS)
    changed = build_landmark_set(infusions, changed_measurements, changed_outcomes, [landmark], 365.0, BUILDERS)
    assert list(original["patient_id"]) == list(changed["patient_id"])
    columns = feature_columns(original)
    pd.testing.assert_frame_equal(original[columns], changed[columns])


@PROPERTY
@given(cohort=cohorts(), landmark=LANDMARK)
def test_no_one_with_an_event_or_lost_by_the_landmark_is_at_risk(cohort, landmark):
    infusions, _, outcomes = cohort
    at_risk = set(outcomes["patient_id"][risk_set_mask(outcomes, pd.Index(infusions["patient_id"]), landmark)])
    for row in outcomes.itertuples():
        ended = (row.event != "none" and row.event_day <= landmark) or row.last_followup_day <= landmark
        not_in_remission = row.response == "NR" or (landmark > 0 and row.response_day > landmark)
        assert (row.patient_id in at_risk) == (not ended and not not_in_remission)
    no_measurements = pd.DataFrame(columns=list(MEASUREMENT_COLUMNS))
    stacked = build_landmark_set(infusions, no_measurements, outcomes, [landmark], 365.0, ["baseline"])
    assert set(stacked["patient_id"]) == at_risk
    assert ((stacked["time"] > 0) & (stacked["time"] <= 365.0)).all()
