"""Tests of pipelines.train that need no full training run (that is test_serve_e2e.py)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer

from pipelines.config import RunConfig
from pipelines.experiment import CohortData
from pipelines.train import (
    TrainSummary,
    _log_metrics,
    _where_to_look,
    cohort_dataset,
    flatten_config,
    mlflow_client_commands,
    report_without_patient_details,
    run_train,
    source_git_commit,
    summarise_metrics,
    without_training_rows,
)


def _config(**sections) -> RunConfig:
    return RunConfig.model_validate(sections)


# --- config ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("models:\n  candidatez: [xgb_cox]\n", "models.candidatez: Extra inputs are not permitted"),
        ("evaluation:\n  cv_folds: 1\n", "evaluation.cv_folds: Input should be greater than or equal to 2"),
        ("registry:\n  risk_group_cutoffs: [0.4, 0.2]\n", "registry.risk_group_cutoffs"),
        ("data: [1, 2\n", "not valid YAML"),
        ("evaluation:\n  selection_metric: f1\n", "evaluation.selection_metric: 'f1'"),
    ],
)
def test_bad_config_exits_2_naming_the_key(tmp_path, capsys, yaml_text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(typer.Exit) as stop:
        run_train(path)
    assert stop.value.exit_code == 2
    assert expected in capsys.readouterr().out


def test_missing_config_file_exits_2(tmp_path, capsys):
    with pytest.raises(typer.Exit) as stop:
        run_train(tmp_path / "nope.yaml")
    assert stop.value.exit_code == 2
    assert "config file not found" in capsys.readouterr().out


def test_flattened_config_params():
    flat = flatten_config(_config(models={"params": {"xgb_cox": {"n_estimators": 50}}}))
    assert flat["models.params.xgb_cox.n_estimators"] == "50"
    assert flat["features.landmark_days"] == "[0.0, 28.0, 91.0, 182.0]"
    assert flat["data.synthetic.n_patients"] == "5000"
    assert flat["tracking.tracking_uri"] == "None"


# --- metrics and logging helpers --------------------------------------------------------------------
def _metrics_frame() -> pd.DataFrame:
    rows = []
    for source, c_values, brier in (("xgb_cox", (0.70, 0.74), 0.20), ("rsf", (0.72, 0.78), 0.18)):
        for horizon, value in zip((182.0, 365.0), c_values):
            rows.append(("all", "relapse", horizon, "uno_c", source, "estimate", value))
            rows.append(("all", "relapse", horizon, "brier", source, "estimate", brier))
            rows.append((28.0, "relapse", horizon, "uno_c", source, "estimate", 0.5))
            rows.append(("all", "relapse_CD19_neg", horizon, "uno_c", source, "estimate", 0.9))
    rows.append(("all", "relapse", 365.0, "uno_c", "rsf - rule", "difference", 0.2))
    return pd.DataFrame(rows, columns=["landmark_day", "endpoint", "horizon_days", "metric", "source", "kind", "value"])


def test_summary_averages_horizons_over_all_landmarks_for_relapse():
    summary = summarise_metrics(_metrics_frame())
    assert summary["xgb_cox"]["uno_c"] == pytest.approx(0.72)
    assert summary["rsf"]["uno_c"] == pytest.approx(0.75)
    assert summary["rsf"]["brier"] == pytest.approx(0.18)
    assert "rsf - rule" not in summary


def test_report_redaction_keeps_counts_only():
    report = {"patients_in": 3, "quarantined_patients": ["P1", "P2"],
              "tables": {"measurements": {"rows_in": 9, "examples": ["measurements, row 4, column value: 'x'"]}}}
    redacted = report_without_patient_details(report)
    assert redacted["quarantined_patients"] == 2
    assert redacted["tables"]["measurements"] == {"rows_in": 9, "examples": []}
    assert report["quarantined_patients"] == ["P1", "P2"]


def test_background_rows_replaced_by_medians():
    class Fitted:
        background_ = pd.DataFrame({"a": [1.0, 2.0], "b": [5.0, np.nan]})

    features = pd.DataFrame({"a": [1.0, 2.0, 10.0], "b": [4.0, 6.0, np.nan]})
    model = without_training_rows(Fitted(), features)
    assert model.background_.to_dict("list") == {"a": [2.0], "b": [5.0]}


def test_summary_carries_named_calibration_figures():
    rows = [(landmark, endpoint, 365.0, "observed_expected", "xgb_cox", "estimate", value)
            for landmark, endpoint, value in ((0.0, "relapse", 0.9), (28.0, "relapse", 1.1), ("all", "relapse", 1.0),
                                              (28.0, "death", 0.7))]
    metrics = pd.concat([_metrics_frame(), pd.DataFrame(rows, columns=_metrics_frame().columns)], ignore_index=True)
    summary = summarise_metrics(metrics)["xgb_cox"]
    assert summary["oe/relapse/lm28/h365"] == 1.1 and summary["oe/relapse/h365"] == 1.0
    assert summary["oe/death/lm28/h365"] == 0.7
    assert summary["uno_c"] == pytest.approx(0.72)  # the headline names are kept


def test_gate_names_the_metric_cause_landmark_and_horizon_that_failed():
    from pipelines.config import gate_thresholds
    from pipelines.registry import evaluate_gate

    config = _config(registry={"thresholds": {"uno_c": 0.6},
                               "calibration_bounds": {"observed_expected": {"relapse_CD19_neg": [0.8, 1.25]}}})
    values = {name: 1.0 for name in gate_thresholds(config)[0]} | {"uno_c": 0.8, "oe/relapse_CD19_neg/lm91/h730": 0.71}
    decision = evaluate_gate(values, *gate_thresholds(config))
    assert not decision.passed
    assert len(decision.reasons) == 1 and decision.reasons[0].startswith("oe/relapse_CD19_neg/lm91/h730 = 0.71")
    assert evaluate_gate({**values, "oe/relapse_CD19_neg/lm91/h730": 1.0}, *gate_thresholds(config)).passed


_SMALL_TRAINING = {
    "data": {"source": "synthetic", "synthetic": {"n_patients": 300, "seed": 3, "with_oracle": False}},
    "features": {"landmark_days": [0, 91]},
    "models": {"candidates": ["xgb_cox_recal"], "params": {"xgb_cox": {"n_estimators": 30}}},
    "evaluation": {"cv_folds": 3, "bootstrap": 0, "shap_max_rows": 5, "shap_background": 10},
    "registry": {"model_name": "calibrated", "thresholds": {"uno_c": 0.5}, "top_factors": 2},
}


@pytest.mark.slow
def test_training_refuses_a_miscalibrated_winner_and_registers_a_recalibrated_one(tracking_uri):
    import mlflow

    from models.serving import EXAMPLE_PATIENT
    from pipelines.train import train

    strict = _config(**{**_SMALL_TRAINING, "registry": {
        **_SMALL_TRAINING["registry"], "calibration_bounds": {"observed_expected": {"relapse": [0.999, 1.001]}}}})
    refused = train(strict, tracking_uri=tracking_uri)
    assert not refused.registered
    assert any(reason.startswith("oe/relapse/lm") and "/h" in reason for reason in refused.gate_reasons)
    accepted = train(_config(**_SMALL_TRAINING), tracking_uri=tracking_uri)
    assert accepted.registered and accepted.winner == "xgb_cox_recal"
    assert {"oe/relapse/lm91/h365", "slope/relapse/lm0/h182", "ibs/death"} <= set(accepted.winner_metrics)
    artifacts = {entry.path for entry in mlflow.MlflowClient(tracking_uri).list_artifacts(accepted.run_id, "plots")}
    assert {"plots/calibration_by_cause.png", "plots/cumulative_incidence.png"} <= artifacts
    mlflow.set_tracking_uri(tracking_uri)
    records = mlflow.pyfunc.load_model("models:/calibrated@champion").predict(pd.DataFrame([EXAMPLE_PATIENT]))
    scored = pd.DataFrame(records)
    causes = [f"cif_{cause}_365d" for cause in ("relapse_CD19_pos", "relapse_CD19_neg", "relapse_lineage_switch",
                                                 "death", "hsct")]
    assert scored[causes + ["event_free_365d"]].sum(axis=1).iloc[0] == pytest.approx(1.0)
    assert scored["estimator"].iloc[0] == "xgb_cox_recal"


def _overpredicting_model_factory(make_model):
    """``models.factory.make_model`` whose ``xgb_cox`` is deliberately worse: every relapse
    phenotype's incidence 1.5 times the fitted one (capped by the event-free probability), so the
    ranking and Uno's C are (nearly) unchanged and only the absolute risks are wrong."""
    from models.base import PHENOTYPE_CAUSES
    from models.competing import CauseSpecificHazardsModel, CIFCurves

    class Overpredicting(CauseSpecificHazardsModel):
        def predict_cif_curves(self, X):
            curves = super().predict_cif_curves(X)
            relapse = curves.relapse
            factor = np.minimum(1.5, np.divide(relapse + curves.event_free, relapse, out=np.ones_like(relapse),
                                               where=relapse > 0))
            cif = {cause: values * factor if cause in PHENOTYPE_CAUSES else values
                   for cause, values in curves.cif.items()}
            event_free = np.maximum(1.0 - np.sum(list(cif.values()), axis=0), 0.0)
            return CIFCurves(times=curves.times, cif=cif, event_free=event_free)

    def make(name, params=None, random_state=0):
        model = make_model(name, params, random_state)
        return Overpredicting(**model.get_params(deep=False)) if name == "xgb_cox" else model

    return make


@pytest.mark.slow
def test_the_default_gate_refuses_a_deliberately_overpredicting_model(tracking_uri, monkeypatch):
    """The shipped gate (configs/default.yaml) on a model that ranks as well as xgb_cox but
    predicts 1.5 times its relapse incidence: not registered, and the reasons name the failing
    metric, cause, landmark and horizon (Uno's C alone would have let it through)."""
    import re
    from pathlib import Path

    import models.factory
    from pipelines.config import load_config
    from pipelines.train import train

    default = load_config(Path(__file__).parents[2] / "configs" / "default.yaml")
    small = RunConfig.model_validate({
        **default.model_dump(),
        "data": {"source": "synthetic", "synthetic": {"n_patients": 1000, "seed": 5, "with_oracle": False}},
        "features": {**default.features.model_dump(), "landmark_days": [0, 91]},
        "models": {"candidates": ["xgb_cox"], "params": {"xgb_cox": {"n_estimators": 60}}},
        "evaluation": {**default.evaluation.model_dump(), "cv_folds": 3, "bootstrap": 0, "shap_max_rows": 5,
                       "shap_background": 10},
    })
    monkeypatch.setattr(models.factory, "make_model", _overpredicting_model_factory(models.factory.make_model))
    refused = train(small, tracking_uri=tracking_uri)
    assert not refused.registered
    assert refused.winner_metrics["uno_c"] >= default.registry.thresholds["uno_c"]  # discrimination passes
    failed_oe = [reason for reason in refused.gate_reasons
                 if re.fullmatch(r"oe/relapse(_CD19_pos|_CD19_neg)?/lm(0|91)/h(182|365|730) = 0\.\d{4} \(fails >= 0\.8\)",
                                 reason)]
    assert failed_oe, refused.gate_reasons
    assert any(reason.startswith("oe/relapse/lm") for reason in failed_oe)


def test_a_failing_run_report_leaves_a_finished_registered_training_and_says_so(tracking_uri, monkeypatch, capsys):
    """The report is written after registration: if it fails, the job still ends normally with the
    version registered, a warning naming the failure, and the reason tagged on the run."""
    from mlflow.tracking import MlflowClient

    import pipelines.train
    from pipelines.train import train

    def broken_report(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pipelines.train, "log_run_report", broken_report)
    small = RunConfig.model_validate({
        "data": {"source": "synthetic", "synthetic": {"n_patients": 600, "seed": 6, "with_oracle": False}},
        "features": {"landmark_days": [0, 91]},
        "models": {"candidates": ["xgb_cox"], "params": {"xgb_cox": {"n_estimators": 40}}},
        "evaluation": {"cv_folds": 3, "bootstrap": 0, "shap_max_rows": 5, "shap_background": 10},
        "registry": {"thresholds": {"uno_c": 0.5}},
    })
    summary = train(small, tracking_uri=tracking_uri)
    assert summary.registered and summary.run_report is None
    out = capsys.readouterr().out
    assert "run report could not be written (OSError: disk full)" in out
    assert f"version {summary.model_version} of {summary.model_name} is registered" in out
    tags = MlflowClient(tracking_uri=tracking_uri).get_run(summary.run_id).data.tags
    assert tags["run_report_error"] == "OSError: disk full"
    assert any("not written" in line for line in pipelines.train._where_to_look(summary))


def test_only_summary_metrics_are_logged_the_grid_stays_a_table(tracking_uri):
    import mlflow
    from mlflow.tracking import MlflowClient

    summary = summarise_metrics(_metrics_frame())
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run() as run:
            _log_metrics(run.info.run_id, summary, "rsf")
    finally:
        mlflow.set_tracking_uri(previous)
    logged = MlflowClient(tracking_uri=tracking_uri).get_run(run.info.run_id).data.metrics
    assert set(logged) == {"summary/xgb_cox/uno_c", "summary/xgb_cox/brier", "summary/rsf/uno_c", "summary/rsf/brier",
                           "winner/uno_c", "winner/brier"}
    assert logged["winner/uno_c"] == pytest.approx(0.75) == logged["summary/rsf/uno_c"]


# --- provenance: git commit, cohort dataset ------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_git_commit_of_the_checkout():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20,
                          check=True).stdout.strip()
    commit, dirty = source_git_commit()
    assert commit == head and len(commit) == 40
    assert isinstance(dirty, bool)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_no_git_commit_outside_a_checkout_of_the_project(tmp_path):
    assert source_git_commit(tmp_path) is None  # no pyproject.toml: not the project
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    assert source_git_commit(tmp_path) is None  # not a git repository
    outer = tmp_path / "outer"
    (outer / "project").mkdir(parents=True)
    (outer / "project" / "pyproject.toml").write_text("[project]\n")
    subprocess.run(["git", "init", "-q", str(outer)], check=True, timeout=20)
    subprocess.run(["git", "-C", str(outer), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True, timeout=20)
    assert source_git_commit(outer / "project") is None  # inside someone else's repository
    assert source_git_commit(outer) is None  # that repository has no pyproject.toml


def _cohort(raw_cohort, folder=None, description="synthetic (n_patients=3, seed=1)") -> CohortData:
    return CohortData(raw_cohort["infusions"], raw_cohort["measurements"], raw_cohort["outcomes"],
                      {name: name for name in raw_cohort}, description, folder=folder)


def test_cohort_dataset_carries_source_and_fingerprint_not_rows(raw_cohort, tmp_path):
    fingerprint = "ab" * 32
    from_folder = cohort_dataset(_cohort(raw_cohort, folder=tmp_path), fingerprint).to_dict()
    assert from_folder["name"] == "cohort" and from_folder["digest"] == fingerprint[:16]
    assert from_folder["source_type"] == "local" and str(tmp_path.resolve()) in from_folder["source"]
    simulated = cohort_dataset(_cohort(raw_cohort), fingerprint).to_dict()
    assert simulated["source_type"] == "code" and "n_patients=3" in simulated["source"]
    for stored in (from_folder, simulated):
        text = str(stored)
        assert not any(patient in text for patient in ("P1", "P2", "P3")), "no patient ids in a dataset"


# --- the plain MLflow commands printed after training ----------------------------------------------------
def test_mlflow_client_commands_carry_the_store_uri_shell_quoted():
    uri = "sqlite:////tmp/my store/mlflow.db"
    serve, download, predict = mlflow_client_commands(uri, "models:/car-relapse@champion")
    for line in (serve, download, predict):
        words = shlex.split(line)
        assert words[0] == f"MLFLOW_TRACKING_URI={uri}" and words[1] == "mlflow"
    assert shlex.split(serve)[2:5] == ["models", "serve", "-m"] and "--env-manager" in serve
    assert shlex.split(download)[2:] == ["artifacts", "download", "-u",
                                         "models:/car-relapse@champion/serving_input_example.json", "-d", "."]
    assert shlex.split(predict)[2:] == ["models", "predict", "-m", "models:/car-relapse@champion", "-i",
                                        "serving_input_example.json", "-t", "json", "--env-manager", "local"]


def _summary(registered: bool) -> TrainSummary:
    return TrainSummary(run_id="r1", experiment_id="1", tracking_uri="sqlite:////data/my store/mlflow.db",
                        winner="xgb_cox", winner_metrics={"uno_c": 0.7}, registered=registered, model_name="m",
                        model_version="3" if registered else None, previous_champion=None,
                        gate_reasons=() if registered else ("uno_c 0.5 fails >= 0.65",),
                        model_uri="models:/m-123")


def test_printed_lines_give_the_mlflow_commands_of_the_champion_only():
    printed = _where_to_look(_summary(registered=True))
    commands = [line.strip() for line in printed if line.strip().startswith("MLFLOW_TRACKING_URI=")]
    assert commands == mlflow_client_commands("sqlite:////data/my store/mlflow.db", "models:/m@champion")
    assert not any("MLFLOW_TRACKING_URI=" in line for line in _where_to_look(_summary(registered=False)))
