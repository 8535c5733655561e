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
