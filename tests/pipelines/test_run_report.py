"""Tests of pipelines.run_report: the HTML run report and the model card of a training run."""

from __future__ import annotations

import dataclasses
import re

import pandas as pd
import pytest

from pipelines.decisions import run_decision_curves
from pipelines.experiment import dataset_hash, explain, refit
from pipelines.run_report import (
    MAX_DESCRIPTION_CHARS,
    MODEL_CARD_ARTIFACT,
    RUN_REPORT_ARTIFACT,
    RunOutcome,
    log_run_report,
    metric_table,
    model_card,
    run_report_html,
)
from tests.pipelines.html_checks import browser_check, parse_self_contained
from tests.pipelines.test_decisions import small_run  # noqa: F401  (shared small cross-validated run)

OUTCOME = RunOutcome("run123", "xgb_cox", True, "car-relapse", "4")


@pytest.fixture(scope="module")
def decisions(small_run):  # noqa: F811
    config, prepared, predictions, _ = small_run
    return run_decision_curves(config, prepared.landmark_set, predictions)


@pytest.fixture(scope="module")
def explanation(small_run):  # noqa: F811
    config, prepared, _, _ = small_run
    return explain(config, refit(config, prepared, "xgb_cox"), prepared)


def _with_new_rows(evaluation):
    """The evaluation plus a metric and an endpoint it did not have (as a later evaluation may add)."""
    metrics = evaluation.metrics
    new_metric = metrics[metrics["metric"] == "brier"].assign(metric="net_reclassification")
    calibration = evaluation.calibration
    new_endpoint = calibration[calibration["endpoint"] == "relapse"].assign(endpoint="death")
    return dataclasses.replace(evaluation, metrics=pd.concat([metrics, new_metric], ignore_index=True),
                               calibration=pd.concat([calibration, new_endpoint], ignore_index=True))


def test_model_card_says_use_caveat_fingerprint_performance_and_limits(small_run, decisions):  # noqa: F811
    config, prepared, _, evaluation = small_run
    card = model_card(config, prepared, _with_new_rows(evaluation), decisions, OUTCOME)
    validated = prepared.validated
    assert dataset_hash(validated.infusions, validated.measurements, validated.outcomes) in card
    for words in ("**Intended use.**", "**Landmark 0 caveat.**", "among patients who reach remission",
                  "**Performance against the clinicians' rule**", "xgb_cox - rule [95% CI]", "**Known limits.**",
                  "Trained on a simulated cohort", "Net benefit"):
        assert words in card, words
    relapse = evaluation.metrics[evaluation.metrics["endpoint"] == "relapse"]
    for metric in [*relapse["metric"].unique(), "net_reclassification"]:
        assert f"| {metric} |" in card, metric
    assert "oracle" not in card.split("**Performance")[1].split("Net benefit")[0]  # no oracle in this run
    assert len(card) <= MAX_DESCRIPTION_CHARS


def test_metric_table_lists_whatever_the_evaluation_has(small_run):  # noqa: F811
    _, _, _, evaluation = small_run
    table = metric_table(_with_new_rows(evaluation).metrics, ["xgb_cox", "rule", "oracle"])
    assert list(table.columns) == ["endpoint", "horizon", "metric", "xgb_cox", "rule"]
    assert "net_reclassification" in set(table["metric"])
    assert set(table["endpoint"]) == set(evaluation.metrics["endpoint"])


def test_run_report_is_self_contained_and_shows_every_section(small_run, decisions, explanation, tmp_path):  # noqa: F811
    config, prepared, _, evaluation = small_run
    page = run_report_html(config, prepared, _with_new_rows(evaluation), decisions, explanation, OUTCOME)
    parsed = parse_self_contained(page)
    for words in ("Data report", "Candidates vs clinicians' rule", "Calibration per cause and horizon",
                  "HSCT decision curves", "What drives the model (SHAP)", "Model card", "registered: car-relapse version 4",
                  "net_reclassification"):
        assert words in parsed["text"], words
    endpoints = set(evaluation.calibration["endpoint"]) | {"death"}
    calibration_images = [i for i in parsed["images"] if str(i.get("alt", "")).startswith("calibration ")]
    assert {i["alt"].removeprefix("calibration ") for i in calibration_images} == endpoints
    assert len(calibration_images) == len(endpoints)
    assert [i["alt"] for i in parsed["images"]].count("observed/expected by cause") == 1
    without_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"P\d{6}", without_images), "a patient id in the run report"
    path = tmp_path / "run_report.html"
    path.write_text(page)
    seen = browser_check(path)
    if seen is None:
        pytest.skip("browser part skipped: no Chromium installed (the HTML was checked by parsing)")
    assert seen["decoded"] == seen["images"] == len(parsed["images"]) and seen["fetched"] == []


@pytest.mark.parametrize(("promoted", "expected", "absent"),
                         [(True, "champion", "not promoted"), (False, "not promoted: the champion stays", None)])
def test_run_report_says_whether_the_version_became_champion_and_why(small_run, decisions, explanation,  # noqa: F811
                                                                     promoted, expected, absent):
    config, prepared, _, evaluation = small_run
    reason = "uno_c 0.801 is worse than the champion's 0.812 by more than 0.005"
    outcome = dataclasses.replace(OUTCOME, promoted=promoted, champion_reasons=(reason,))
    text = parse_self_contained(run_report_html(config, prepared, evaluation, decisions, explanation, outcome))["text"]
    assert expected in text and f"Against the champion: {reason}" in text
    if absent is not None:
        assert absent not in text


def test_logged_report_and_card_and_the_version_description(small_run, decisions, explanation, tracking_uri):  # noqa: F811
    import mlflow
    from mlflow.tracking import MlflowClient

    config, prepared, _, evaluation = small_run
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri, tracking_uri)
    with mlflow.start_run() as run:
        client.create_registered_model("car-relapse")
        version = client.create_model_version("car-relapse", f"runs:/{run.info.run_id}/model", run.info.run_id).version
        outcome = dataclasses.replace(OUTCOME, run_id=run.info.run_id, model_version=str(version))
        location = log_run_report(config, prepared, evaluation, decisions, explanation, outcome)
    assert location.endswith(RUN_REPORT_ARTIFACT)
    card = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{MODEL_CARD_ARTIFACT}")
    assert client.get_model_version("car-relapse", str(version)).description == card
    assert "<h1>Training run" in mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{RUN_REPORT_ARTIFACT}")


def test_unregistered_run_still_gets_report_and_card(small_run, decisions, tracking_uri):  # noqa: F811
    import mlflow

    config, prepared, _, evaluation = small_run
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run() as run:
        log_run_report(config, prepared, evaluation, decisions, None,
                       RunOutcome(run.info.run_id, "xgb_cox", False, "car-relapse", None, ("uno_c 0.6 fails >= 0.9",)))
    page = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{RUN_REPORT_ARTIFACT}")
    assert "not registered" in page and "uno_c 0.6 fails &gt;= 0.9" in page and "No explanation" in page
