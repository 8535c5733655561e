"""Tests of pipelines.config: the run config, the checks across its sections, and "did you mean"."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.config import MIN_BOOTSTRAP, ConfigError, RunConfig, _registry_name_problem, check_config, load_config


def _config(**sections) -> RunConfig:
    return RunConfig.model_validate(sections)


def _problems(**sections) -> str:
    with pytest.raises(ConfigError) as error:
        check_config(_config(**sections))
    return str(error.value)


# --- cross-section checks ------------------------------------------------------------------------------------------
def test_default_config_passes_the_cross_section_checks():
    check_config(RunConfig())
    check_config(load_config("configs/default.yaml"))


def test_cross_section_problems_are_all_listed():
    message = _problems(
        evaluation={"selection_metric": "accuracy", "horizons_days": [182, 730]},
        registry={"thresholds": {"uno_c": 0.6, "f1": 0.5}},
        models={"candidates": ["xgb_cox", "deep_net"], "params": {"svm": {}}},
        features={"builders": ["baseline", "no_such_builder"]},
    )
    for expected in (
        "evaluation.selection_metric: 'accuracy'",
        "registry.risk_group_horizon_days: 365 is not one of evaluation.horizons_days",
        "evaluation.shap_horizon_days: 365 is not one of",
        "unknown metric 'f1'",
        "models.candidates: unknown model 'deep_net'",
        "models.params: no candidate named 'svm'",
        "no_such_builder",
    ):
        assert expected in message


def test_calibration_bounds_must_be_ordered_and_name_known_metrics():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="0 < lowest < highest"):
        _config(registry={"calibration_bounds": {"observed_expected": {"relapse": [1.2, 0.8]}}})
    with pytest.raises(ValidationError, match="observed_expected"):
        _config(evaluation={"selection_bounds": {"oe": {"relapse": [0.8, 1.2]}}})


def test_threshold_names_must_be_figures_this_run_computes():
    config = _config(
        registry={"thresholds": {"oe/relapse/lm60/h365": 0.9, "oe/relapse/lm28/h365": 0.9},
                  "max_thresholds": {"slope/death/h365": 1.2},
                  "calibration_bounds": {"observed_expected": {"hsct": [0.8, 1.25]}}},
        evaluation={"endpoints": ["relapse"], "cv_folds": 2},
        models={"candidates": ["xgb_cox_recal"], "params": {"xgb_cox_recal": {"n_estimators": 5, "cv": 3}}},
    )
    with pytest.raises(ConfigError) as error:
        check_config(config)
    message = str(error.value)
    for expected in ("'oe/relapse/lm60/h365' names an endpoint, landmark or horizon",
                     "'slope/death/h365' names an endpoint",
                     "registry.calibration_bounds.observed_expected: endpoint(s) ['hsct']",
                     "recalibrated candidates ['xgb_cox_recal'] need at least 3 folds",
                     "models.params.xgb_cox_recal: only ['knots_days', 'prior_sd', 'cv'] here; ['n_estimators']"):
        assert expected in message
    assert "oe/relapse/lm28/h365" not in message


def test_gate_thresholds_add_the_calibration_bounds_at_every_landmark_and_horizon():
    from pipelines.config import gate_thresholds, selection_thresholds

    config = _config(registry={"thresholds": {"uno_c": 0.65, "oe/relapse/lm0/h182": 0.95},
                               "calibration_bounds": {"observed_expected": {"relapse": [0.8, 1.25]}}},
                     evaluation={"selection_bounds": {"calibration_slope": {"relapse": [0.85, 1.18]}}})
    minimums, maximums = gate_thresholds(config)
    assert minimums["uno_c"] == 0.65 and minimums["oe/relapse/lm0/h182"] == 0.95  # explicit wins
    assert minimums["oe/relapse/lm182/h730"] == 0.8 and maximums["oe/relapse/lm91/h365"] == 1.25
    assert len(maximums) == 4 * 3
    low, high = selection_thresholds(config)
    assert set(low) == set(high) and low["slope/relapse/lm28/h365"] == 0.85 and len(low) == 12


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"evaluation": {"selection_metric": "uno-c"}}, "evaluation.selection_metric: 'uno-c' is not one of"),
        ({"registry": {"thresholds": {"uno_C": 0.6}}}, "registry.thresholds: unknown metric 'uno_C'"),
        ({"registry": {"champion_metrics": {"observed_expectd": 1.0}}},
         "registry.champion_metrics: unknown metric 'observed_expectd'"),
        ({"models": {"candidates": ["xgb_cx"]}}, "models.candidates: unknown model 'xgb_cx'"),
        ({"models": {"params": {"xgbcox": {}}}}, "models.params: no candidate named 'xgbcox'"),
        ({"features": {"builders": ["mrds"]}}, "features.builders: unknown feature builder 'mrds'"),
    ],
)
def test_unknown_names_come_with_the_closest_known_one(sections, expected):
    message = _problems(**sections)
    assert expected in message and "did you mean" in message


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("xgb_cox", {"n_trees": 3}, "models.params.xgb_cox.n_trees: not a parameter of 'xgb_cox'"),
        ("xgb_cox", {"learning_rte": 0.1}, "models.params.xgb_cox.learning_rte: not a parameter of 'xgb_cox'; "
                                           "did you mean 'learning_rate'?"),
        ("rsf", {"min_sample_leaf": 3}, "did you mean 'min_samples_leaf'?"),
        ("rule", {"bm_blast_high_pct": 5}, "models.params.rule.bm_blast_high_pct: not a parameter of 'rule'; "
                                           "did you mean 'bm_blasts_high_pct'?"),
        ("xgb_cox", {"lineage_switch_hazard": "xgb_pm"}, "models.params.xgb_cox: unknown model 'xgb_pm'"),
    ],
)
def test_unknown_model_parameters_are_found_before_fitting(name, params, expected):
    """``xgb_cox: {n_trees: 3}`` used to pass the config and fail deep in fitting, after the data."""
    assert expected in _problems(models={"candidates": ["xgb_cox"], "params": {name: params}})


def test_known_model_parameters_pass():
    check_config(_config(models={"candidates": ["xgb_cox", "rsf"], "params": {
        "xgb_cox": {"n_estimators": 40, "risk_horizon_days": 730.0, "lineage_switch_hazard": "xgb_pem"},
        "rsf": {"min_samples_leaf": 10},
        "rule": {"bm_blasts_high_pct": 5.0}}}))


@pytest.mark.parametrize("bootstrap", [1, 5, MIN_BOOTSTRAP - 1])
def test_bootstrap_counts_too_small_for_intervals_are_refused(bootstrap):
    assert f"evaluation.bootstrap: {bootstrap} resamples are too few" in _problems(evaluation={"bootstrap": bootstrap})


@pytest.mark.parametrize("bootstrap", [0, MIN_BOOTSTRAP, 200])
def test_no_bootstrap_or_enough_resamples_pass(bootstrap):
    check_config(_config(evaluation={"bootstrap": bootstrap}))


@pytest.mark.parametrize("name", ["car/relapse", "car:relapse", "car@relapse", " ", "..", "a//b", "./a", "a/."])
def test_registry_names_mlflow_refuses_are_refused_before_training(name):
    assert f"registry.model_name: {name!r}" in _problems(registry={"model_name": name})


NAMES = ["car-relapse", "car relapse", "CAR_relapse.v2", "car/relapse", "car:relapse", "..", ".", "a//b", "./a",
         "a/.", " ", "car@relapse", "über-modell", "x" * 200]


@pytest.mark.parametrize("name", NAMES)
def test_the_registry_name_check_agrees_with_mlflow(tracking_uri, name):
    """MLflow has no public name check: this pins that what we refuse, a real registry refuses too
    (apart from '@', which MLflow takes but a models:/<name>@alias URI could not name)."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        client.create_registered_model(name)
        accepted = True
    except MlflowException:
        accepted = False
    refused_by_us = _registry_name_problem(name) is not None
    if "@" in name:
        assert accepted and refused_by_us
    else:
        assert accepted != refused_by_us


# --- the YAML file ----------------------------------------------------------------------------------------------------
def test_unknown_yaml_keys_are_named_with_the_closest_known_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("evaluation:\n  bootstrp: 50\nregistry:\n  model_nme: x\nmodels:\n  candidate: [rsf]\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "evaluation.bootstrp: Extra inputs are not permitted; did you mean 'bootstrap'?" in message
    assert "registry.model_nme: Extra inputs are not permitted; did you mean 'model_name'?" in message
    assert "models.candidate: Extra inputs are not permitted; did you mean 'candidates'?" in message


# --- data.input_dir: relative to the config file's folder ----------------------------------------------------------
def _folder_config(folder, input_dir: str):
    path = folder / "run.yaml"
    path.write_text(f"data:\n  source: folder\n  input_dir: {input_dir}\n")
    return path


def test_relative_input_dir_is_resolved_from_the_config_files_folder(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "cohort").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the command runs from another folder
    config = load_config(_folder_config(tmp_path / "configs", "../cohort"))
    assert config.data.input_dir == (tmp_path / "cohort").resolve()


def test_missing_input_dir_names_the_resolved_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    with pytest.raises(ConfigError) as error:
        load_config(_folder_config(tmp_path / "configs", "my_cohort"))
    message = str(error.value)
    assert "data.input_dir" in message
    assert "relative to the config file's folder" in message
    assert str((tmp_path / "configs" / "my_cohort").resolve()) in message


def test_absolute_input_dir_is_kept_and_code_built_configs_resolve_from_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "cohort").mkdir()
    assert load_config(_folder_config(tmp_path, str(tmp_path / "cohort"))).data.input_dir == tmp_path / "cohort"
    monkeypatch.chdir(tmp_path)
    assert _config(data={"source": "folder", "input_dir": "cohort"}).data.input_dir == (tmp_path / "cohort").resolve()


# --- configs/own_cohort.yaml -----------------------------------------------------------------------------------------
OWN_COHORT = Path(__file__).resolve().parents[2] / "configs" / "own_cohort.yaml"


def test_own_cohort_config_loads_and_passes_the_checks_once_its_folder_exists(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "data" / "my_cohort").mkdir(parents=True)
    copy = tmp_path / "configs" / "own_cohort.yaml"
    shutil.copy(OWN_COHORT, copy)
    config = load_config(copy)
    check_config(config)
    assert config.data.source == "folder"
    assert config.data.input_dir == (tmp_path / "data" / "my_cohort").resolve()
    assert config.registry.model_name != RunConfig().registry.model_name, "own cohorts get a champion of their own"


def _keys_with_comments(text: str) -> list[tuple[str, bool]]:
    """Every YAML key line of the file, and whether a comment line sits right above it or on it."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z_]+):", line)
        if match is None:
            continue
        commented = "#" in line or (i > 0 and lines[i - 1].strip().startswith("#"))
        found.append((match.group(2), commented))
    return found


def test_own_cohort_config_explains_every_key_it_sets():
    keys = _keys_with_comments(OWN_COHORT.read_text())
    sections = set(RunConfig.model_fields)
    unexplained = [key for key, commented in keys if not commented and key not in sections]
    assert len(keys) > 15
    assert not unexplained, f"keys of configs/own_cohort.yaml without a comment: {unexplained}"
