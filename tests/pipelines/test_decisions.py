"""Tests of pipelines.decisions: decision curves of a run from its out-of-fold predictions."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from models.decision import TREAT_ALL, TREAT_NONE
from pipelines.config import RunConfig
from pipelines.decisions import (
    DECISION_FIGURE,
    DECISION_TABLE,
    log_decision_curves,
    rule_high_risk,
    run_decision_curves,
    write_decision_curves,
)
from pipelines.experiment import RULE, cross_validate, prepare_landmark_set, progress_bar

SMALL_RUN = {
    "data": {"synthetic": {"n_patients": 300, "seed": 5, "with_oracle": False}},
    "models": {"candidates": ["xgb_cox"], "params": {"xgb_cox": {"n_estimators": 20}}},
    "evaluation": {"cv_folds": 2, "bootstrap": 5, "shap_max_rows": 10, "shap_background": 10},
}


@pytest.fixture(scope="module")
def small_run():
    """A small cross-validated run: (config, prepared cohort, out-of-fold predictions, evaluation)."""
    config = RunConfig.model_validate(SMALL_RUN)
    with progress_bar(Console(file=io.StringIO())) as progress:
        prepared = prepare_landmark_set(config, progress)
        predictions, evaluation = cross_validate(config, prepared, progress)
    return config, prepared, predictions, evaluation


@pytest.fixture(scope="module")
def decisions(small_run):
    config, prepared, predictions, _ = small_run
    return run_decision_curves(config, prepared.landmark_set, predictions)


def test_rule_is_its_high_risk_group_at_every_threshold(small_run, decisions):
    config, prepared, _, _ = small_run
    high = rule_high_risk(config, prepared.landmark_set)
    rule = decisions[(decisions["source"] == RULE) & (decisions["kind"] == "estimate")]
    for landmark, rows in rule.groupby("landmark_day"):
        expected = high[(prepared.landmark_set["landmark_day"] == landmark).to_numpy()].mean()
        assert np.allclose(rows["flagged_share"], expected)
    assert 0 < high.mean() < 1


def test_every_candidate_landmark_horizon_and_threshold(small_run, decisions):
    config, prepared, _, _ = small_run
    assert set(decisions["source"]) == {"xgb_cox", RULE, TREAT_ALL, TREAT_NONE, f"xgb_cox - {RULE}"}
    assert set(decisions["landmark_day"]) == set(prepared.landmark_set["landmark_day"])
    assert set(decisions["horizon_days"]) == set(config.evaluation.horizons_days)
    assert np.isclose(decisions["threshold"].min(), 0.05) and np.isclose(decisions["threshold"].max(), 0.60)
    estimates = decisions[decisions["kind"] == "estimate"]
    assert (estimates["ci_low"] <= estimates["ci_high"]).all()


def test_evaluate_writes_the_table_and_the_plot(small_run, tmp_path):
    config, prepared, predictions, _ = small_run
    written = write_decision_curves(config, prepared.landmark_set, predictions, "xgb_cox", tmp_path)
    assert [path.name for path in written] == [DECISION_TABLE, DECISION_FIGURE]
    assert pd.read_csv(written[0])["source"].nunique() == 5
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_logs_the_table_and_the_plot(small_run, tracking_uri):
    import mlflow

    config, prepared, predictions, _ = small_run
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run() as run:
        log_decision_curves(config, prepared.landmark_set, predictions, "xgb_cox")
    client = mlflow.tracking.MlflowClient(tracking_uri)
    names = {f.path for f in client.list_artifacts(run.info.run_id, "evaluation")}
    names |= {f.path for f in client.list_artifacts(run.info.run_id, "plots")}
    assert {f"evaluation/{DECISION_TABLE}", f"plots/{DECISION_FIGURE}"} <= names
