"""The evaluate job: a sliced run on a small simulated cohort, and clean failures on bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.evaluate import EXIT_BAD_INPUT

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
  bootstrap: 40
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
        "metrics.json", "uno_c_by_landmark.png", "calibration_relapse.png", "calibration_by_cause.png",
        "cumulative_incidence.png", "shap_summary.png", "shap_importance.png", "shap_waterfall_highest_risk.png",
        "cif_curves.png", "decision_curves.csv", "decision_curves.png"])
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


def test_oracle_carries_its_monte_carlo_standard_error(evaluated):
    result, out = evaluated
    payload = json.loads((out / "metrics.json").read_text())
    errors = [entry for entry in payload["results"] if entry["metric"] == "uno_c_mcse" and entry["endpoint"] == "relapse"
              and entry["horizon_days"] == 365.0]
    assert sorted(str(entry["landmark_day"]) for entry in errors) == ["0.0", "91.0", "all"]
    for entry in errors:
        assert set(entry["sources"]) == {"oracle"}
        assert 0.0 <= entry["sources"]["oracle"]["value"] < 0.01
    assert "Monte Carlo SE of the oracle" in " ".join(result.output.split())


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
