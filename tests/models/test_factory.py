"""Models by config name."""

from __future__ import annotations

import pytest
from sklearn.pipeline import Pipeline

from models.base import ModelInputError
from models.competing import CauseSpecificHazardsModel
from models.factory import BASELINE_NAME, MODEL_NAMES, default_params, make_model, make_survival_estimator
from models.rule import ClinicianRule


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_candidates_are_cause_specific_models_around_their_pipeline(name):
    model = make_model(name, {"time_resolution_days": 14.0}, random_state=3)
    assert isinstance(model, CauseSpecificHazardsModel)
    assert model.time_resolution_days == 14.0
    assert isinstance(model.survival_estimator, Pipeline)
    params = model.survival_estimator.steps[-1][1].get_params()
    for key, value in default_params(name).items():
        assert params[key] == value
    if "random_state" in params:
        assert params["random_state"] == 3


def test_params_override_defaults_and_unknown_ones_are_rejected():
    pipeline = make_survival_estimator("rsf", {"n_estimators": 7})
    assert pipeline.steps[-1][1].n_estimators == 7
    with pytest.raises(ModelInputError, match="n_trees"):
        make_model("rsf", {"n_trees": 7})
    with pytest.raises(ModelInputError, match="unknown model"):
        make_model("deepsurv")


def test_the_rule_takes_its_own_parameters():
    rule = make_model(BASELINE_NAME, {"bm_blasts_high_pct": 25.0})
    assert isinstance(rule, ClinicianRule) and rule.bm_blasts_high_pct == 25.0
    with pytest.raises(ModelInputError, match="rule"):
        make_model(BASELINE_NAME, {"alpha": 1.0})


def test_coxnet_scales_and_xgboost_does_not_impute():
    assert [name for name, _ in make_survival_estimator("coxnet").steps] == ["impute", "scale", "model"]
    assert [name for name, _ in make_survival_estimator("xgb_cox").steps] == ["model"]


def test_a_recalibrated_candidate_wraps_its_base_and_splits_the_parameters():
    from models.factory import CANDIDATE_NAMES, base_model_name
    from models.recalibration import RecalibratedModel

    model = make_model("xgb_aft_recal", {"n_estimators": 11, "prior_sd": (1.0, 0.5), "cv": 4,
                                         "time_resolution_days": 14.0}, random_state=2)
    assert isinstance(model, RecalibratedModel) and model.prior_sd == (1.0, 0.5) and model.cv == 4
    assert model.random_state == 2
    assert model.estimator.time_resolution_days == 14.0
    assert model.estimator.survival_estimator.steps[-1][1].n_estimators == 11
    assert base_model_name("xgb_aft_recal") == "xgb_aft" and base_model_name("rule") == "rule"
    assert set(MODEL_NAMES) < set(CANDIDATE_NAMES) and "rule_recal" not in CANDIDATE_NAMES
    with pytest.raises(ModelInputError, match="unknown model"):
        make_model("rule_recal")
