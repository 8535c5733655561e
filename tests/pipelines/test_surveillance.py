"""Tests of pipelines.surveillance: schedules on the same simulated patients, the simulator's measurements."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import typer

from pipelines.config import ConfigError
from pipelines.surveillance import (
    SURVEILLANCE_COLUMNS,
    RiskAdaptation,
    ScheduleConfig,
    SurveillanceConfig,
    SurveillanceError,
    evaluate_schedules,
    load_surveillance_config,
    observe_plan,
    plan_visits,
    predicted_risk,
    run_surveillance,
    schedule_outcomes,
    simulate_courses,
)
from tests.models.test_serving import bundle  # noqa: F401  (shared fitted-bundle fixture)

WINDOW = 730.0


def _schedule(name: str, tests_done: list[str], interval: float, **adapted) -> dict:
    schedule = {"name": name, "tests": tests_done, "interval_days": interval}
    if adapted:
        schedule["risk_adapted"] = adapted
    return schedule


FACTORIAL = [_schedule(f"{test} every {interval}", [test], interval)
             for test in ("pb_flow", "pb_ngs", "bm_flow", "bm_ngs") for interval in (30, 91)]


@pytest.fixture(scope="module")
def courses():
    return simulate_courses(2500, 20261122)


@pytest.fixture(scope="module")
def factorial(courses):
    config = SurveillanceConfig.model_validate({"window_days": WINDOW, "schedules": FACTORIAL})
    return evaluate_schedules(courses, config).set_index("schedule")


# --- visits ---------------------------------------------------------------------------------------------
def test_regular_visits_every_interval_after_the_response_assessment():
    schedule = ScheduleConfig(name="s", tests=["pb_flow", "bm_ngs"], interval_days=91)
    plan = plan_visits(schedule, np.array([28.0, 25.0]), 400.0)
    assert plan.day[0][plan.done[0]].tolist() == [119.0, 210.0, 301.0, 392.0]
    assert plan.day[1][plan.done[1]].tolist() == [116.0, 207.0, 298.0, 389.0]
    assert (plan.tests["pb_flow"] == plan.done).all() and (plan.marrow == plan.done).all()
    assert not plan.tests["pb_ngs"].any() and not plan.tests["bm_flow"].any()


def test_risk_adapted_switches_only_high_risk_patients_from_the_as_of_day():
    adaptation = RiskAdaptation(as_of_day=91, horizon_days=365, cutoff=0.3, tests=["bm_ngs"], interval_days=30)
    schedule = ScheduleConfig(name="adapted", tests=["pb_flow"], interval_days=91, risk_adapted=adaptation)
    plan = plan_visits(schedule, np.array([28.0, 28.0]), 250.0, high_risk=np.array([True, False]))
    high_days = sorted(plan.day[0][plan.done[0]])
    assert high_days == [91.0, 121.0, 151.0, 181.0, 211.0, 241.0]  # the regular day-119 visit is replaced
    assert plan.marrow[0][plan.done[0]].all()
    assert sorted(plan.day[1][plan.done[1]]) == [119.0, 210.0]
    assert not plan.marrow[1].any()
    with pytest.raises(SurveillanceError, match="needs a risk"):
        plan_visits(schedule, np.array([28.0]), 250.0)


# --- outcomes on the same patients ----------------------------------------------------------------------------
def test_every_schedule_follows_the_same_patients_and_relapses(factorial):
    assert list(factorial.reset_index().columns) == list(SURVEILLANCE_COLUMNS)
    assert factorial["patients"].nunique() == 1 and factorial["relapses"].nunique() == 1
    assert factorial["em_only_relapses"].nunique() == 1 and factorial["em_only_relapses"].iloc[0] > 0


def test_procedures_follow_the_schedule(factorial):
    assert (factorial.filter(like="pb_", axis=0)["marrow_procedures_per_patient_year"] == 0).all()
    marrow = factorial.filter(like="bm_", axis=0)
    assert (marrow["marrow_procedures_per_patient_year"] == marrow["tests_per_patient_year"]).all()


@pytest.mark.parametrize("interval", [30.0, 91.0])
def test_tests_are_counted_until_relapse_death_or_the_window(courses, interval):
    schedule = ScheduleConfig(name="s", tests=["bm_flow"], interval_days=interval)
    plan = plan_visits(schedule, courses.response_day, WINDOW)
    outcomes = schedule_outcomes(courses, plan, np.zeros(plan.day.shape, bool), WINDOW)
    responders = courses.outcome.responder
    followed = (courses.end_day(WINDOW) - courses.response_day)[responders]
    expected = np.maximum(np.ceil(followed / interval) - 1, 0)
    assert (outcomes["tests"].to_numpy() == expected).all()
    assert (outcomes["marrow_procedures"] == outcomes["tests"]).all()
    assert np.allclose(outcomes["patient_years"], followed / 365.25)


@pytest.mark.parametrize("test", ["pb_flow", "pb_ngs", "bm_flow", "bm_ngs"])
def test_monthly_catches_more_relapses_than_every_three_months(factorial, test):
    assert factorial.loc[f"{test} every 30", "caught_pct"] > factorial.loc[f"{test} every 91", "caught_pct"] + 5


@pytest.mark.parametrize("specimen", ["pb", "bm"])
def test_ngs_sees_relapse_coming_earlier_than_flow(factorial, specimen):
    for interval in (30, 91):
        ngs, flow = factorial.loc[f"{specimen}_ngs every {interval}"], factorial.loc[f"{specimen}_flow every {interval}"]
        assert ngs["median_lead_time_days"] > flow["median_lead_time_days"] + 14


def test_a_marrow_aspirate_misses_extramedullary_relapse_that_blood_catches(factorial):
    for assay in ("flow", "ngs"):
        blood, marrow = factorial.loc[f"pb_{assay} every 30"], factorial.loc[f"bm_{assay} every 30"]
        assert blood["em_only_caught_pct"] > marrow["em_only_caught_pct"] + 20


def test_per_patient_outcomes_are_consistent(courses):
    schedule = ScheduleConfig(name="s", tests=["pb_ngs"], interval_days=30)
    plan = plan_visits(schedule, courses.response_day, WINDOW)
    rng = np.random.default_rng(0)
    outcomes = schedule_outcomes(courses, plan, observe_plan(courses, plan, WINDOW, rng), WINDOW)
    assert len(outcomes) == int(courses.outcome.responder.sum())
    caught = outcomes[outcomes["caught"]]
    assert (caught["first_positive_day"] < caught["relapse_day"]).all()
    assert np.allclose(caught["lead_time_days"], caught["relapse_day"] - caught["first_positive_day"])
    assert not outcomes.loc[~outcomes["relapse"], "caught"].any()
    assert (outcomes["patient_years"] > 0).all() and (outcomes["patient_years"] <= WINDOW / 365.25).all()


# --- risk-adapted ---------------------------------------------------------------------------------------------
def _adapted_config(cutoff: float = 0.3) -> SurveillanceConfig:
    adapted = _schedule("adapted", ["pb_flow"], 91, as_of_day=91, horizon_days=365, cutoff=cutoff,
                        tests=["bm_ngs", "pb_ngs"], interval_days=30)
    return SurveillanceConfig.model_validate({"window_days": WINDOW, "schedules": [
        _schedule("regular", ["pb_flow"], 91), adapted, _schedule("intensive", ["bm_ngs", "pb_ngs"], 30)]})


def test_nobody_at_high_risk_keeps_the_regular_schedule(courses):
    table = evaluate_schedules(courses, _adapted_config(), {"adapted": np.zeros(courses.n)}).set_index("schedule")
    pd.testing.assert_series_equal(table.loc["adapted"], table.loc["regular"], check_names=False)


def test_high_risk_patients_get_more_marrow_and_earlier_detection(courses):
    risk = np.where(np.arange(courses.n) % 2 == 0, 0.9, 0.0)
    table = evaluate_schedules(courses, _adapted_config(), {"adapted": risk}).set_index("schedule")
    regular, adapted, intensive = table.loc["regular"], table.loc["adapted"], table.loc["intensive"]
    assert regular["marrow_procedures_per_patient_year"] < adapted["marrow_procedures_per_patient_year"] \
        < intensive["marrow_procedures_per_patient_year"]
    assert regular["caught_pct"] < adapted["caught_pct"] < intensive["caught_pct"]
    with pytest.raises(SurveillanceError, match="no risk was given"):
        evaluate_schedules(courses, _adapted_config())


def test_model_risk_is_scored_for_responders_event_free_at_the_as_of_day(bundle):  # noqa: F811
    small = simulate_courses(120, 3)
    adaptation = _adapted_config().schedules[1].risk_adapted
    assert adaptation is not None
    risk = predicted_risk(bundle, small, adaptation, WINDOW)
    scored = np.isfinite(risk)
    event_free = small.outcome.responder & (small.end_day(WINDOW) > 91) & (small.response_day <= 91)
    assert (scored == event_free).all() and scored.sum() > 50
    assert ((risk[scored] >= 0) & (risk[scored] <= 1)).all() and np.unique(risk[scored]).size > 10
    with pytest.raises(SurveillanceError, match="not a horizon of the model"):
        predicted_risk(bundle, small, adaptation.model_copy(update={"horizon_days": 300.0}), WINDOW)


# --- config and the command -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("schedules: []\n", "schedules"),
    ("schedules:\n  - {name: a, tests: [pb_pcr], interval_days: 30}\n", "schedules.0.tests.0"),
    ("schedules:\n  - {name: a, tests: [pb_flow], interval_days: 30}\n  - {name: a, tests: [pb_ngs], interval_days: 30}\n",
     "repeated: ['a']"),
    ("window_days: 100\nschedules:\n  - {name: a, tests: [pb_flow], interval_days: 30, risk_adapted: "
     "{as_of_day: 182, tests: [bm_ngs], interval_days: 30}}\n", "as_of_day must be before window_days"),
    ("schedules: [1, 2\n", "not valid YAML"),
])
def test_bad_config_is_named(tmp_path, yaml_text, expected):
    path = tmp_path / "s.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        load_surveillance_config(path)


def test_shipped_config_is_valid_and_has_a_risk_adapted_schedule():
    config = load_surveillance_config("configs/surveillance.yaml")
    assert any(schedule.risk_adapted is not None for schedule in config.schedules)
    assert {test for s in config.schedules for test in s.tests} == {"pb_flow", "pb_ngs", "bm_flow", "bm_ngs"}


def test_command_writes_table_and_plot(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("cohort: {n_patients: 400, seed: 9}\nschedules:\n"
                    "  - {name: PB flow monthly, tests: [pb_flow], interval_days: 30}\n"
                    "  - {name: BM NGS 3-monthly, tests: [bm_ngs], interval_days: 91}\n")
    summary = run_surveillance(path, tmp_path / "out")
    assert pd.read_csv(tmp_path / "out" / "surveillance.csv")["schedule"].tolist() == summary["schedule"].tolist()
    assert (tmp_path / "out" / "surveillance.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote surveillance.csv and surveillance.png" in capsys.readouterr().out


def test_command_without_a_risk_model_exits_2(tmp_path, tracking_uri, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(f"cohort: {{n_patients: 100}}\nrisk_model: {{tracking_uri: '{tracking_uri}'}}\nschedules:\n"
                    "  - {name: adapted, tests: [pb_flow], interval_days: 91, risk_adapted: "
                    "{tests: [bm_ngs], interval_days: 30}}\n")
    with pytest.raises(typer.Exit) as stop:
        run_surveillance(path, tmp_path / "out")
    assert stop.value.exit_code == 2
    assert "risk model" in capsys.readouterr().out and not (tmp_path / "out").exists()


def test_results_come_from_the_simulators_measurement_model():
    import dataclasses

    from pipelines.simulation.params import SimulationParams

    config = SurveillanceConfig.model_validate({"window_days": WINDOW, "schedules": [
        _schedule("flow", ["bm_flow", "pb_flow"], 30), _schedule("ngs", ["bm_ngs", "pb_ngs"], 30)]})
    default = SimulationParams()
    blind_flow = dataclasses.replace(default, observation=dataclasses.replace(default.observation, flow_limit=1.0))
    table = evaluate_schedules(simulate_courses(600, 4, blind_flow), config).set_index("schedule")
    assert table.loc["flow", "caught_pct"] == 0 and table.loc["flow", "relapse_free_with_positive_pct"] == 0
    assert table.loc["ngs", "caught_pct"] > 50


def test_cli_missing_config_is_exit_2_without_traceback(tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["surveillance", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "config file not found" in result.output and "Traceback" not in result.output
