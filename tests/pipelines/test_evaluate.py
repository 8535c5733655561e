"""The evaluate job: a sliced run on a small simulated cohort, and clean failures on bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.config import RunConfig
from pipelines.evaluate import EXIT_BAD_INPUT, cross_validated_sources, cv_splits, prepare_landmark_set

_CONFIG = """
data:
  source: synthetic
  synthetic: {n_patients: 300, seed: 5, with_oracle: true}
features:
  landmark_days: [0, 91]
models:
  candidates: [xgb_cox]
  params:
    xgb_cox: {n_estimators: 40}
evaluation:
  cv_folds: 2
  bootstrap: 10
  endpoints: [relapse, relapse_CD19_neg]
  shap_max_rows: 10
  shap_background: 10
"""


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate")
    config = folder / "config.yaml"
    config.write_text(_CONFIG)
    result = CliRunner().invoke(app, ["evaluate", "--config", str(config), "--out", str(folder / "out")])
    return result, folder / "out"


def test_run_writes_metrics_and_plots(evaluated):
    result, out = evaluated
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == sorted([
        "metrics.json", "uno_c_by_landmark.png", "calibration_relapse.png", "shap_summary.png",
        "shap_importance.png", "shap_waterfall_highest_risk.png", "cif_curves.png"])
    assert "Uno's C" in result.output and "best model: xgb_cox" in result.output


def test_metrics_put_model_oracle_and_rule_side_by_side(evaluated):
    _, out = evaluated
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["best_model"] == "xgb_cox"
    uno = [entry for entry in payload["results"] if entry["metric"] == "uno_c" and entry["endpoint"] == "relapse"
           and entry["horizon_days"] == 365.0]
    assert sorted(entry["landmark_day"] for entry in uno if entry["landmark_day"] != "all") == [0.0, 91.0]
    for entry in uno:
        assert set(entry["sources"]) == {"xgb_cox", "oracle", "rule"}
        assert set(entry["differences"]) == {"xgb_cox - rule", "oracle - rule"}
        low, value, high = (entry["sources"]["xgb_cox"][key] for key in ("ci_low", "value", "ci_high"))
        assert low <= value <= high
    phenotype = [entry for entry in payload["results"] if entry["endpoint"] == "relapse_CD19_neg"]
    assert phenotype and all(not entry["differences"] for entry in phenotype)
    assert payload["calibration"][0]["groups"]
    assert payload["shap"]["method"] == "tree"


@pytest.mark.parametrize("config_text, message", [
    ("models:\n  candidates: [xgb_cox]\nevaluation:\n  cv_folds: 1\n", "cv_folds"),
    ("data:\n  source: folder\n  input_dir: /nonexistent/cohort\n", "input_dir"),
    ("models:\n  candidates: [xgb_cox]\n  params:\n    xgb_cox: {n_trees: 3}\n"
     "data:\n  synthetic: {n_patients: 60}\nevaluation: {cv_folds: 2, bootstrap: 0}\n", "n_trees"),
])
def test_bad_input_exits_with_a_message(tmp_path, config_text, message):
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    result = CliRunner().invoke(app, ["evaluate", "--config", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == EXIT_BAD_INPUT
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def small_config():
    return RunConfig.model_validate({
        "data": {"source": "synthetic", "synthetic": {"n_patients": 200, "seed": 11, "with_oracle": True}},
        "features": {"landmark_days": [0, 91]},
        "models": {"candidates": ["coxnet"]},
        "evaluation": {"cv_folds": 2, "group_by": "site"},
    })


@pytest.fixture(scope="module")
def prepared(small_config):
    steps = []
    result = prepare_landmark_set(small_config, on_step=lambda: steps.append(1))
    assert len(steps) == 3
    return result


def test_site_folds_hold_out_whole_centers(prepared, small_config):
    landmark_set = prepared.landmark_set
    splits = cv_splits(landmark_set, small_config)
    sites = landmark_set["site"].to_numpy()
    assert len(splits) == landmark_set["site"].nunique() >= 2
    for train, test in splits:
        assert set(sites[train]).isdisjoint(sites[test])


def test_models_never_see_the_oracle(prepared, small_config):
    landmark_set, oracle = prepared.landmark_set, prepared.cohort.oracle
    assert oracle is not None
    splits = cv_splits(landmark_set, small_config)
    with_oracle = cross_validated_sources(landmark_set, oracle, small_config, splits)
    without_oracle = cross_validated_sources(landmark_set, None, small_config, splits)
    assert set(with_oracle) == {"coxnet", "rule", "oracle"} and set(without_oracle) == {"coxnet", "rule"}
    for name in ("coxnet", "rule"):
        pd.testing.assert_frame_equal(with_oracle[name], without_oracle[name])
    # the oracle's risks are the simulator's, not a copy of a model's
    column = with_oracle["oracle"].columns[0]
    assert not np.allclose(with_oracle["oracle"][column], with_oracle["coxnet"][column], equal_nan=True)
