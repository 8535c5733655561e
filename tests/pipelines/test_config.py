"""Tests of pipelines.config: the run config and the checks across its sections."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pipelines.config import ConfigError, RunConfig, check_config, load_config


def _config(**sections) -> RunConfig:
    return RunConfig.model_validate(sections)


# --- cross-section checks ------------------------------------------------------------------------------------------
def test_default_config_passes_the_cross_section_checks():
    check_config(RunConfig())


def test_cross_section_problems_are_all_listed():
    config = _config(
        evaluation={"selection_metric": "accuracy", "horizons_days": [182, 730]},
        registry={"thresholds": {"uno_c": 0.6, "f1": 0.5}},
        models={"candidates": ["xgb_cox", "deep_net"], "params": {"svm": {}}},
        features={"builders": ["baseline", "no_such_builder"]},
    )
    with pytest.raises(ConfigError) as error:
        check_config(config)
    message = str(error.value)
    for expected in (
        "evaluation.selection_metric: 'accuracy'",
        "registry.risk_group_horizon_days: 365 is not one of evaluation.horizons_days",
        "evaluation.shap_horizon_days: 365 is not one of",
        "unknown metric 'f1'",
        "models.candidates: unknown ['deep_net']",
        "models.params: no candidate named ['svm']",
        "no_such_builder",
    ):
        assert expected in message


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
