"""Models by name, as the run config names them (``ModelsConfig.candidates``).

===========  ====================================================================================
name         single-outcome survival estimator inside :class:`CauseSpecificHazardsModel`
===========  ====================================================================================
``coxnet``   median imputation (+ missingness flags), scaling, elastic-net Cox
             (``sksurv CoxnetSurvivalAnalysis``, one fixed penalty, Breslow baseline)
``rsf``      median imputation (+ flags), random survival forest (``sksurv``; small and subsampled)
``gbsa``     median imputation (+ flags), gradient-boosted Cox trees (``sksurv``
             ``GradientBoostingSurvivalAnalysis`` with the O(n log n) loss of models.survival)
``xgb_cox``  XGBoost ``survival:cox`` + Breslow baseline; missing values handled by XGBoost
``xgb_aft``  XGBoost ``survival:aft`` (log-normal); missing values handled by XGBoost
``rule``     the clinicians' rule (models.rule.ClinicianRule), the baseline
===========  ====================================================================================

Every candidate name with the suffix ``_recal`` (e.g. ``xgb_cox_recal``) is that candidate inside
:class:`models.recalibration.RecalibratedModel`: its cumulative incidences recalibrated per cause,
horizon and landmark on out-of-fold predictions.

The defaults are chosen to fit the whole candidate set with 5-fold cross-validation on about
15,000 landmark rows within minutes on two cores (benchmarks/bench_models.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sksurv.ensemble import RandomSurvivalForest
from sksurv.linear_model import CoxnetSurvivalAnalysis

from models.base import ModelInputError
from models.competing import CauseSpecificHazardsModel
from models.recalibration import RecalibratedModel
from models.rule import ClinicianRule
from models.survival import (
    FastGradientBoostingSurvivalAnalysis,
    XGBAFTSurvival,
    XGBCoxSurvival,
    XGBPiecewiseSurvival,
)

__all__ = [
    "BASELINE_NAME",
    "CANDIDATE_NAMES",
    "LINEAGE_SWITCH_PARAM",
    "MODEL_NAMES",
    "RECALIBRATED_SUFFIX",
    "RECALIBRATION_PARAMS",
    "base_model_name",
    "default_params",
    "make_model",
    "make_survival_estimator",
]

MODEL_NAMES: tuple[str, ...] = ("coxnet", "rsf", "gbsa", "xgb_cox", "xgb_aft", "xgb_pem")
"""Candidate estimators."""
BASELINE_NAME = "rule"
"""The clinicians' rule."""
RECALIBRATED_SUFFIX = "_recal"
"""Suffix naming the recalibrated version of a candidate (``xgb_cox_recal``)."""
CANDIDATE_NAMES: tuple[str, ...] = MODEL_NAMES + tuple(name + RECALIBRATED_SUFFIX for name in MODEL_NAMES)
"""Every name a run config may list as a candidate."""

_DEFAULTS: dict[str, dict[str, Any]] = {
    # a short warm-started path down to the penalty used (the last alpha); one alpha alone can diverge
    "coxnet": {"l1_ratio": 0.5, "alphas": [0.2, 0.1, 0.05, 0.03, 0.02, 0.01], "fit_baseline_model": True},
    "rsf": {"n_estimators": 60, "max_depth": 8, "min_samples_leaf": 30, "max_features": "sqrt",
            "max_samples": 0.15, "n_jobs": 2},
    "gbsa": {"n_estimators": 150, "learning_rate": 0.05, "max_depth": 3, "subsample": 0.5,
             "min_samples_leaf": 30, "max_features": "sqrt"},
    "xgb_cox": {"n_estimators": 300, "learning_rate": 0.03, "max_depth": 3, "min_child_weight": 10.0,
                "subsample": 0.8, "colsample_bytree": 0.8, "reg_lambda": 1.0},
    # log-normal: its hump-shaped hazard fits relapse better than Weibull (held-out calibration slope
    # about 1.0-1.15 vs 0.8-0.87 for "extreme", same C-index)
    "xgb_aft": {"distribution": "normal", "distribution_scale": 1.0, "n_estimators": 300, "learning_rate": 0.03,
                "max_depth": 3, "min_child_weight": 10.0, "subsample": 0.8, "colsample_bytree": 0.8,
                "reg_lambda": 1.0},
    "xgb_pem": {"n_estimators": 300, "learning_rate": 0.05, "max_depth": 3, "min_child_weight": 10.0,
                "subsample": 0.8, "colsample_bytree": 0.8, "reg_lambda": 1.0, "clock_column": "landmark_day"},
}
_ESTIMATORS = {
    "coxnet": CoxnetSurvivalAnalysis,
    "rsf": RandomSurvivalForest,
    "gbsa": FastGradientBoostingSurvivalAnalysis,
    "xgb_cox": XGBCoxSurvival,
    "xgb_aft": XGBAFTSurvival,
    "xgb_pem": XGBPiecewiseSurvival,
}
_COMPETING_PARAMS = ("time_resolution_days", "risk_horizon_days", "phenotype_time_knots", "background_rows")
LINEAGE_SWITCH_PARAM = "lineage_switch_hazard"
"""Candidate parameter naming the estimator (one of :data:`MODEL_NAMES`, default parameters) of a
lineage-switch hazard of its own (``CauseSpecificHazardsModel(lineage_switch_estimator=...)``);
absent or None: lineage switch is a share of the relapse hazard."""
RECALIBRATION_PARAMS = ("knots_days", "prior_sd", "cv")
"""Parameters of a ``_recal`` candidate that go to :class:`RecalibratedModel` (the rest to its base)."""
_SEEDED = ("rsf", "gbsa", "xgb_cox", "xgb_aft", "xgb_pem")


def default_params(name: str) -> dict[str, Any]:
    """Default hyper-parameters of the named survival estimator (a copy)."""
    _check_name(name, MODEL_NAMES)
    return {key: (list(value) if isinstance(value, list) else value) for key, value in _DEFAULTS[name].items()}


def base_model_name(name: str) -> str:
    """The candidate a (possibly recalibrated) candidate name is built on: ``xgb_cox_recal -> xgb_cox``."""
    return name.removesuffix(RECALIBRATED_SUFFIX) if name in CANDIDATE_NAMES else name


def _check_name(name: str, allowed: tuple[str, ...]) -> None:
    if name not in allowed:
        raise ModelInputError(f"unknown model {name!r}; known: {list(allowed)}")


def _imputer() -> SimpleImputer:
    return SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)


def make_survival_estimator(name: str, params: Mapping[str, Any] | None = None, random_state: int = 0) -> Pipeline:
    """The single-outcome survival pipeline of a candidate (preprocessing + estimator).

    Parameters
    ----------
    name : str
        One of :data:`MODEL_NAMES`.
    params : mapping, optional
        Estimator hyper-parameters overriding :func:`default_params`.
    random_state : int

    Returns
    -------
    Pipeline
    """
    merged = {**default_params(name), **dict(params or {})}
    if name in _SEEDED:
        merged.setdefault("random_state", random_state)
    valid = set(_ESTIMATORS[name]().get_params())
    unknown = sorted(set(merged) - valid)
    if unknown:
        raise ModelInputError(f"model {name!r}: unknown parameter(s) {unknown}; valid: {sorted(valid)}")
    estimator = _ESTIMATORS[name](**merged)
    if name == "coxnet":
        return Pipeline([("impute", _imputer()), ("scale", StandardScaler()), ("model", estimator)])
    if name in ("rsf", "gbsa"):
        return Pipeline([("impute", _imputer()), ("model", estimator)])
    return Pipeline([("model", estimator)])


def make_model(name: str, params: Mapping[str, Any] | None = None, random_state: int = 0):
    """A competing-risks model by config name.

    Parameters
    ----------
    name : str
        One of :data:`CANDIDATE_NAMES`, or :data:`BASELINE_NAME` for the clinicians' rule.
    params : mapping, optional
        Hyper-parameters (``ModelsConfig.params[name]``). For candidates, the keys
        ``time_resolution_days``, ``risk_horizon_days``, ``phenotype_time_knots``, ``background_rows`` go to
        :class:`CauseSpecificHazardsModel`, ``lineage_switch_hazard`` (:data:`LINEAGE_SWITCH_PARAM`)
        names the estimator of a lineage-switch hazard of its own, all others go to the survival
        estimator; for a ``_recal``
        name the keys ``knots_days``, ``prior_sd``, ``cv`` go to :class:`RecalibratedModel`. For
        the rule, the keys are :class:`ClinicianRule` parameters.
    random_state : int

    Returns
    -------
    CauseSpecificHazardsModel, RecalibratedModel or ClinicianRule

    Raises
    ------
    ModelInputError
        Unknown name or parameter.
    """
    params = dict(params or {})
    if name == BASELINE_NAME:
        unknown = sorted(set(params) - set(ClinicianRule().get_params()))
        if unknown:
            raise ModelInputError(f"model 'rule': unknown parameter(s) {unknown}")
        return ClinicianRule(**params)
    _check_name(name, CANDIDATE_NAMES + (BASELINE_NAME,))
    if name != base_model_name(name):
        recalibration = {key: params.pop(key) for key in RECALIBRATION_PARAMS if key in params}
        base = make_model(base_model_name(name), params, random_state)
        return RecalibratedModel(base, random_state=random_state, **recalibration)
    competing = {key: params.pop(key) for key in _COMPETING_PARAMS if key in params}
    lineage_switch = params.pop(LINEAGE_SWITCH_PARAM, None)
    if lineage_switch is not None:
        _check_name(lineage_switch, MODEL_NAMES)
        competing["lineage_switch_estimator"] = make_survival_estimator(lineage_switch, None, random_state)
    return CauseSpecificHazardsModel(make_survival_estimator(name, params, random_state), **competing)
