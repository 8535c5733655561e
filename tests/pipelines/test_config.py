"""Tests of pipelines.config: the run config and the checks across its sections."""

from __future__ import annotations

import pytest

from pipelines.config import ConfigError, RunConfig, check_config


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


def test_the_shipped_default_config_passes_the_checks():
    from pathlib import Path

    from pipelines.config import load_config

    check_config(load_config(Path(__file__).parents[2] / "configs" / "default.yaml"))
