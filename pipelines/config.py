"""The run configuration (pydantic), loaded from YAML.

Two levels are kept apart, as in MLflow's templates: *what the run does* (data, features,
models, evaluation, registry) and *where it runs* (``tracking``). Unknown keys are errors, so a
typo in a config never passes silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "ConfigError",
    "DataConfig",
    "FeaturesConfig",
    "ModelsConfig",
    "EvaluationConfig",
    "RegistryConfig",
    "TrackingConfig",
    "RunConfig",
    "check_config",
    "gate_thresholds",
    "load_config",
    "selection_thresholds",
]


class ConfigError(ValueError):
    """A run config that cannot be used; the message says which key and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticCohortConfig(_Strict):
    """The embedded synthetic cohort: simulated on the fly, deterministic given the seed."""

    n_patients: int = Field(5000, ge=50, description="Number of simulated patients.")
    seed: int = 20261121
    with_oracle: bool = Field(True, description="Compute the Monte Carlo oracle for evaluation.")


class DataConfig(_Strict):
    """Which cohort to use: the embedded synthetic one, or a folder in the data contract."""

    source: Literal["synthetic", "folder"] = "synthetic"
    input_dir: Path | None = Field(None, description="Cohort folder when source is 'folder'.")
    synthetic: SyntheticCohortConfig = SyntheticCohortConfig()
    on_error: Literal["fail", "quarantine"] = "quarantine"

    @field_validator("input_dir")
    @classmethod
    def _folder_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"input_dir '{value}' is not a folder")
        return value


class FeaturesConfig(_Strict):
    """Landmarks, horizon and the declared feature builders (one name per builder)."""

    landmark_days: list[float] = Field(default_factory=lambda: [0.0, 28.0, 91.0, 182.0])
    horizon_days: float = Field(730.0, gt=0)
    builders: list[str] = Field(
        default_factory=lambda: ["baseline", "mrd", "bca", "antigen", "car_copies"],
        description="Feature builders to run, by registry name (features.registry).",
    )
    hsct: Literal["competing", "censor"] = Field(
        "competing", description="Treat consolidative HSCT as a competing event or as censoring."
    )
    bca_recovery_cells_per_ul: float = Field(
        10.0, gt=0, description="PB CD19+ B cells (cells/uL) at or above which BCA is lost (B-cell recovery)."
    )
    bca_recovery_pct_lymphocytes: float = Field(
        1.0, gt=0, le=100, description="PB CD19+ B cells (% of lymphocytes) at or above which BCA is lost."
    )


class ModelsConfig(_Strict):
    """Candidate estimators (by name) and their hyper-parameters."""

    candidates: list[str] = Field(
        default_factory=lambda: ["coxnet", "rsf", "gbsa", "xgb_cox", "xgb_aft"]
    )
    params: dict[str, dict] = Field(default_factory=dict)
    random_state: int = 0


Endpoint = Literal["relapse", "relapse_CD19_pos", "relapse_CD19_neg", "relapse_lineage_switch", "death", "hsct"]
ENDPOINTS: tuple[Endpoint, ...] = ("relapse", "relapse_CD19_pos", "relapse_CD19_neg", "relapse_lineage_switch",
                                   "death", "hsct")
BoundedMetric = Literal["observed_expected", "calibration_slope"]
CalibrationBounds = dict[BoundedMetric, dict[Endpoint, tuple[float, float]]]
"""Metric -> endpoint -> (lowest, highest) acceptable value, checked at every landmark and horizon."""


def _check_bounds(value: CalibrationBounds) -> CalibrationBounds:
    for metric, by_endpoint in value.items():
        for endpoint, (low, high) in by_endpoint.items():
            if not 0 < low < high:
                raise ValueError(f"{metric}.{endpoint}: bounds must be 0 < lowest < highest, got [{low}, {high}]")
    return value


class EvaluationConfig(_Strict):
    """Cross-validation and metrics."""

    cv_folds: int = Field(5, ge=2)
    group_by: Literal["patient", "site"] = "patient"
    horizons_days: list[float] = Field(default_factory=lambda: [182.0, 365.0, 730.0])
    bootstrap: int = Field(200, ge=0)
    shap_horizon_days: float = 365.0
    shap_background: int = Field(100, ge=10)
    selection_metric: str = "uno_c"
    endpoints: list[Endpoint] = Field(
        default_factory=lambda: list(ENDPOINTS),
        description="Endpoints scored: relapse (any phenotype) and each phenotype.",
    )
    bootstrap_endpoints: list[str] = Field(
        default_factory=lambda: ["relapse"],
        description="Endpoints that get bootstrap CIs (resampling patients costs time per endpoint).",
    )
    calibration_groups: int = Field(10, ge=2, description="Quantile groups of the calibration tables (deciles).")
    shap_max_rows: int = Field(50, ge=1, description="Rows explained by the model-agnostic SHAP explainer.")
    selection_bounds: CalibrationBounds = Field(
        default_factory=dict,
        description="Candidates whose cross-validated O/E or calibration slope of a listed endpoint lies outside "
        "these bounds at any landmark and horizon are not eligible; the best selection_metric among the others "
        "wins (none eligible: the one least outside).",
    )

    @field_validator("selection_bounds")
    @classmethod
    def _selection_bounds_ordered(cls, value: CalibrationBounds) -> CalibrationBounds:
        return _check_bounds(value)


class RegistryConfig(_Strict):
    """Gated registration of the winner, and what the registered model outputs."""

    model_name: str = Field("car-relapse", min_length=1)
    thresholds: dict[str, float] = Field(
        default_factory=lambda: {"uno_c": 0.65},
        description="Minimum value of each named winner metric (higher is better) to register.",
    )
    max_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Maximum value of each named winner metric (lower is better, e.g. a Brier score).",
    )
    calibration_bounds: CalibrationBounds = Field(
        default_factory=dict,
        description="Gate on calibration: the winner's cross-validated O/E or calibration slope of a listed "
        "endpoint must lie within these bounds at every landmark and horizon (expanded into thresholds named "
        "like oe/relapse/lm28/h365).",
    )
    log_patient_rows: bool = Field(False, description="Log raw patient rows as artifacts (off by default).")
    risk_group_horizon_days: float = Field(
        365.0, gt=0, description="Horizon whose relapse incidence defines the risk group."
    )
    risk_group_cutoffs: list[float] = Field(
        default_factory=lambda: [0.15, 0.35],
        min_length=1,
        description="Increasing relapse-incidence cut-offs in (0, 1): below the first = low, "
        "at or above the last = high, between = intermediate.",
    )
    top_factors: int = Field(5, ge=0, le=20, description="Contributing factors reported per patient.")

    @field_validator("calibration_bounds")
    @classmethod
    def _gate_bounds_ordered(cls, value: CalibrationBounds) -> CalibrationBounds:
        return _check_bounds(value)

    @field_validator("risk_group_cutoffs")
    @classmethod
    def _cutoffs_increasing(cls, value: list[float]) -> list[float]:
        if any(not 0.0 < cut < 1.0 for cut in value) or sorted(set(value)) != list(value):
            raise ValueError(f"risk_group_cutoffs must be strictly increasing values in (0, 1), got {value}")
        return value


class TrackingConfig(_Strict):
    """Where the run goes; MLFLOW_TRACKING_URI overrides tracking_uri."""

    tracking_uri: str | None = None  # default: sqlite:///<project>/mlruns/mlflow.db
    experiment: str = Field("car-relapse", min_length=1)
    artifact_location: str | None = Field(
        None,
        description="Artifact root for a new experiment; default <db folder>/artifacts for SQLite, "
        "the server's choice for a tracking server.",
    )


class RunConfig(_Strict):
    """The whole run."""

    data: DataConfig = DataConfig()
    features: FeaturesConfig = FeaturesConfig()
    models: ModelsConfig = ModelsConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    registry: RegistryConfig = RegistryConfig()
    tracking: TrackingConfig = TrackingConfig()


def load_config(path: Path) -> RunConfig:
    """Read and validate a YAML run config.

    Parameters
    ----------
    path : Path
        YAML file.

    Returns
    -------
    RunConfig

    Raises
    ------
    ConfigError
        When the file is missing, not YAML, or fails validation; the message lists every
        offending key with its reason.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: invalid config"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def _calibration_thresholds(config: RunConfig, bounds: CalibrationBounds) -> tuple[dict[str, float], dict[str, float]]:
    from models.evaluation import calibration_thresholds

    return calibration_thresholds(bounds, config.features.landmark_days, config.evaluation.horizons_days)


def selection_thresholds(config: RunConfig) -> tuple[dict[str, float], dict[str, float]]:
    """``evaluation.selection_bounds`` as (minimums, maximums) per summary name and landmark.

    Parameters
    ----------
    config : RunConfig

    Returns
    -------
    minimums, maximums : dict
        Name like ``oe/relapse/lm28/h365`` -> bound (``models.evaluation.calibration_thresholds``).
    """
    return _calibration_thresholds(config, config.evaluation.selection_bounds)


def gate_thresholds(config: RunConfig) -> tuple[dict[str, float], dict[str, float]]:
    """What the registration gate checks: ``registry.thresholds`` / ``max_thresholds`` plus
    ``registry.calibration_bounds`` expanded to every landmark and horizon.

    Parameters
    ----------
    config : RunConfig

    Returns
    -------
    minimums, maximums : dict
        Metric name -> bound; an explicit threshold wins over an expanded bound of the same name.
    """
    minimums, maximums = _calibration_thresholds(config, config.registry.calibration_bounds)
    return {**minimums, **config.registry.thresholds}, {**maximums, **config.registry.max_thresholds}


def _threshold_problems(config: RunConfig) -> list[str]:
    """Threshold names that are not metrics this run computes."""
    from models.evaluation import SELECTION_METRICS, parse_summary_key

    landmarks = {float(day) for day in config.features.landmark_days}
    horizons = {float(h) for h in config.evaluation.horizons_days}
    endpoints = set(config.evaluation.endpoints)
    problems = []
    for name in list(config.registry.thresholds) + list(config.registry.max_thresholds):
        parts = None if name in SELECTION_METRICS else parse_summary_key(name)
        if name not in SELECTION_METRICS and parts is None:
            problems.append(f"registry thresholds: unknown metric '{name}'; known: {SELECTION_METRICS} "
                            "or names like oe/relapse/lm28/h365, slope/relapse/h365, ibs/death")
        elif parts is not None and (parts[1] not in endpoints or (parts[2] is not None and parts[2] not in landmarks)
                                    or (parts[3] is not None and parts[3] not in horizons)):
            problems.append(f"registry thresholds: '{name}' names an endpoint, landmark or horizon this run does "
                            f"not evaluate (endpoints {sorted(endpoints)}, landmarks {sorted(landmarks)}, "
                            f"horizons {sorted(horizons)})")
    for key, bounds in (("evaluation.selection_bounds", config.evaluation.selection_bounds),
                        ("registry.calibration_bounds", config.registry.calibration_bounds)):
        for metric, by_endpoint in bounds.items():
            missing = sorted(set(by_endpoint) - endpoints)
            if missing:
                problems.append(f"{key}.{metric}: endpoint(s) {missing} are not in evaluation.endpoints")
    return problems


def check_config(config: RunConfig) -> None:
    """Checks across sections that pydantic cannot express, run by every job before it reads data.

    Parameters
    ----------
    config : RunConfig

    Raises
    ------
    ConfigError
        Naming each offending key and why.
    """
    from features.registry import get_builder
    from models.evaluation import SELECTION_METRICS
    from models.factory import BASELINE_NAME, CANDIDATE_NAMES, RECALIBRATION_PARAMS, base_model_name

    problems = []
    horizons = [float(h) for h in config.evaluation.horizons_days]
    if config.evaluation.selection_metric not in SELECTION_METRICS:
        problems.append(f"evaluation.selection_metric: '{config.evaluation.selection_metric}' is not one of "
                        f"{SELECTION_METRICS}")
    if float(config.registry.risk_group_horizon_days) not in horizons:
        problems.append(f"registry.risk_group_horizon_days: {config.registry.risk_group_horizon_days:g} is not one of "
                        f"evaluation.horizons_days {horizons}")
    if float(config.evaluation.shap_horizon_days) not in horizons:
        problems.append(f"evaluation.shap_horizon_days: {config.evaluation.shap_horizon_days:g} is not one of "
                        f"evaluation.horizons_days {horizons}")
    problems += _threshold_problems(config)
    unknown = [name for name in config.models.candidates if name not in CANDIDATE_NAMES]
    if unknown or not config.models.candidates:
        problems.append(f"models.candidates: unknown {unknown} or empty; known: {list(CANDIDATE_NAMES)}")
    recalibrated = [name for name in config.models.candidates if base_model_name(name) != name]
    if recalibrated and config.evaluation.group_by == "patient" and config.evaluation.cv_folds < 3:
        problems.append(f"evaluation.cv_folds: recalibrated candidates {recalibrated} need at least 3 folds "
                        "(nested cross-validation)")
    extra_params = sorted(set(config.models.params) - set(CANDIDATE_NAMES) - {BASELINE_NAME})
    if extra_params:
        problems.append(f"models.params: no candidate named {extra_params}")
    for name in set(config.models.params) & set(CANDIDATE_NAMES):
        base_keys = sorted(set(config.models.params[name]) - set(RECALIBRATION_PARAMS))
        if base_model_name(name) != name and base_keys:
            problems.append(f"models.params.{name}: only {list(RECALIBRATION_PARAMS)} here; {base_keys} belong under "
                            f"models.params.{base_model_name(name)} (shared with the base model)")
    if config.data.source == "folder" and config.data.input_dir is None:
        problems.append("data.input_dir: required when data.source is 'folder'")
    for name in config.features.builders:
        try:
            get_builder(name)
        except KeyError as exc:
            problems.append(f"features.builders: {exc.args[0]}")
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  {line}" for line in problems))
