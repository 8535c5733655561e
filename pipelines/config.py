"""The run configuration (pydantic), loaded from YAML.

Two levels are kept apart, as in MLflow's templates: *what the run does* (data, features,
models, evaluation, registry) and *where it runs* (``tracking``). Unknown keys are errors, so a
typo in a config never passes silently: every unknown key, name or metric is named with the
closest known one ("did you mean"). :func:`check_config` finds, before any data is read, what
pydantic cannot: names across sections, model parameters the estimators do not have, registry
names MLflow would refuse, bootstrap counts too small for confidence intervals.
"""

from __future__ import annotations

import difflib
import posixpath
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from features.registry import DEFAULT_BUILDERS

__all__ = [
    "MIN_BOOTSTRAP",
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
    "load_yaml_model",
    "selection_thresholds",
]


MIN_BOOTSTRAP = 40
"""Fewest bootstrap resamples for a 95% percentile interval (and the plots' error bars): each 2.5%
tail must hold at least one resample (40 x 0.025 = 1); 0 means no intervals."""

_CONFIG_DIR_CONTEXT = "config_dir"  # validation context key: folder that relative paths start from
ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A run config that cannot be used; the message says which key and why."""


def _did_you_mean(name: Any, known: Iterable[Any]) -> str:
    """``; did you mean 'x'?`` for the closest known name (difflib), or nothing."""
    close = difflib.get_close_matches(str(name), [str(item) for item in known], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticCohortConfig(_Strict):
    """The embedded synthetic cohort: simulated on the fly, deterministic given the seed."""

    n_patients: int = Field(5000, ge=50, description="Number of simulated patients.")
    seed: int = Field(20261121, description="Random seed of the simulation (same seed, same cohort).")
    with_oracle: bool = Field(True, description="Compute the Monte Carlo oracle for evaluation.")


class DataConfig(_Strict):
    """Which cohort to use: the embedded synthetic one, or a folder in the data contract."""

    source: Literal["synthetic", "folder"] = Field(
        "synthetic", description="synthetic: the embedded simulated cohort (with its oracle); folder: your tables at input_dir."
    )
    input_dir: Path | None = Field(
        None,
        description="Cohort folder (infusions, measurements, outcomes as CSV or Parquet) when source is 'folder'; "
        "a relative path is relative to the config file's folder. An oracle.parquet there is used for evaluation only.",
    )
    synthetic: SyntheticCohortConfig = SyntheticCohortConfig()
    on_error: Literal["fail", "quarantine"] = Field(
        "quarantine", description="Rows that break the data contract: fail stops with every problem listed; "
        "quarantine sets them aside and counts them in the data report."
    )

    @field_validator("input_dir")
    @classmethod
    def _folder_exists(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """A relative ``input_dir`` is relative to the config file's folder (``load_config``), else to
        the current folder; the stored value is absolute."""
        if value is None:
            return None
        config_dir = (info.context or {}).get(_CONFIG_DIR_CONTEXT)
        base = Path(config_dir) if config_dir is not None else Path.cwd()
        resolved = (base / Path(value).expanduser()).resolve()
        if not resolved.is_dir():
            where = "the config file's folder" if config_dir is not None else "the current folder"
            raise ValueError(f"input_dir '{value}' is not a folder (resolved relative to {where}: {resolved})")
        return resolved


class FeaturesConfig(_Strict):
    """Landmarks, horizon and the declared feature builders (one name per builder)."""

    landmark_days: list[float] = Field(
        default_factory=lambda: [0.0, 28.0, 91.0, 182.0],
        description="Landmarks, days since infusion (0 = infusion): a prediction at day s uses only data known by "
        "day s, for patients in remission and event-free at s.",
    )
    horizon_days: float = Field(730.0, gt=0, description="Follow-up after each landmark is truncated at this many days.")
    builders: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BUILDERS),
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
        default_factory=lambda: ["coxnet", "rsf", "gbsa", "xgb_cox", "xgb_aft"],
        description="Estimators cross-validated against each other and the clinicians' rule (names below; "
        "<name>_recal: that estimator with each cause's incidence recalibrated on out-of-fold predictions).",
    )
    params: dict[str, dict] = Field(
        default_factory=dict,
        description="Hyper-parameters per candidate name, passed to its estimator, e.g. xgb_cox: {n_estimators: 300}.",
    )
    random_state: int = Field(0, description="Seed of the estimators, the cross-validation folds, bootstrap and SHAP.")


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

    cv_folds: int = Field(5, ge=2, description="Cross-validation folds when grouping by patient (by site: one fold per site).")
    group_by: Literal["patient", "site"] = Field(
        "patient", description="Keep every row of a patient (patient) or of a center (site: leave-one-center-out) in one fold."
    )
    horizons_days: list[float] = Field(
        default_factory=lambda: [182.0, 365.0, 730.0],
        description="Horizons, days after the landmark, at which cumulative incidence is predicted and scored.",
    )
    bootstrap: int = Field(200, ge=0, description="Bootstrap resamples of patients for confidence intervals (0 = none).")
    shap_horizon_days: float = Field(365.0, description="Horizon whose relapse risk SHAP explains (one of horizons_days).")
    shap_background: int = Field(100, ge=10, description="Background rows of the SHAP explainer.")
    selection_metric: str = Field(
        "uno_c", description="Metric that picks the winner: relapse, all landmarks, averaged over the horizons (names below)."
    )
    endpoints: list[Endpoint] = Field(
        default_factory=lambda: list(ENDPOINTS),
        description="Endpoints scored: relapse (any phenotype), each phenotype, death and HSCT.",
    )
    bootstrap_endpoints: list[str] = Field(
        default_factory=lambda: ["relapse"],
        description="Endpoints that get bootstrap CIs (resampling patients costs time per endpoint).",
    )
    calibration_groups: int = Field(10, ge=2, description="Quantile groups of the calibration tables (deciles).")
    shap_max_rows: int = Field(50, ge=1, description="Rows explained by the model-agnostic SHAP explainer.")
    selection_bounds: CalibrationBounds = Field(
        default_factory=dict,
        description="observed_expected / calibration_slope -> endpoint -> [lowest, highest]. Candidates whose "
        "cross-validated O/E or calibration slope of a listed endpoint lies outside "
        "these bounds at any landmark and horizon are not eligible; the best selection_metric among the others "
        "wins (none eligible: the one least outside).",
    )

    @field_validator("selection_bounds")
    @classmethod
    def _selection_bounds_ordered(cls, value: CalibrationBounds) -> CalibrationBounds:
        return _check_bounds(value)


class RegistryConfig(_Strict):
    """Gated registration of the winner, and what the registered model outputs."""

    model_name: str = Field(
        "car-relapse", min_length=1, description="Registered model name; the champion is models:/<model_name>@champion."
    )
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
        description="observed_expected / calibration_slope -> endpoint -> [lowest, highest]. Gate on calibration: "
        "the winner's cross-validated O/E or calibration slope of a listed "
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
    champion_metrics: dict[str, Literal["higher", "lower"] | float] = Field(
        default_factory=dict,
        description="Summary metrics compared with the champion besides evaluation.selection_metric, each with "
        "'higher' or 'lower' (is better) or the number it is best close to (e.g. observed_expected: 1.0).",
    )
    champion_tolerance: float = Field(
        0.005, ge=0,
        description="How much worse than the champion a compared metric may be (absolute, in its unit) and still "
        "count as not worse; a new version worse on any compared metric is registered but not promoted.",
    )

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

    tracking_uri: str | None = Field(
        None, description="Tracking and registry URI; default sqlite:///<project>/mlruns/mlflow.db (absolute path)."
    )
    experiment: str = Field("car-relapse", min_length=1, description="MLflow experiment of the runs (created if missing).")
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
    return load_yaml_model(path, RunConfig, "config")


def load_yaml_model(path: Path, model: type[ModelT], what: str = "config") -> ModelT:
    """Read a YAML file and validate it as the pydantic ``model`` (a run config, the surveillance
    config); a relative path in it is relative to the file's folder.

    Parameters
    ----------
    path : Path
        YAML file.
    model : type
        The pydantic model of the whole file.
    what : str
        What the file is, for the messages (``"config"``, ``"surveillance config"``).

    Returns
    -------
    An instance of ``model``.

    Raises
    ------
    ConfigError
        When the file is missing, not YAML, not a mapping, or fails validation; the message lists
        every offending key with its reason, and a "did you mean" for an unknown key.
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
        return model.model_validate(raw, context={_CONFIG_DIR_CONTEXT: path.resolve().parent})
    except ValidationError as exc:
        lines = [f"{path}: invalid {what}"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            known = _keys_at(model, err["loc"][:-1])
            hint = _did_you_mean(err["loc"][-1], known) if err["type"] == "extra_forbidden" else ""
            lines.append(f"  {where}: {err['msg']}{hint}")
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
    for key in ("thresholds", "max_thresholds"):
        for name in getattr(config.registry, key):
            parts = None if name in SELECTION_METRICS else parse_summary_key(name)
            if name not in SELECTION_METRICS and parts is None:
                problems.append(f"registry.{key}: unknown metric '{name}'; known: {SELECTION_METRICS} or names like "
                                f"oe/relapse/lm28/h365, slope/relapse/h365, ibs/death{_did_you_mean(name, SELECTION_METRICS)}")
            elif parts is not None and (parts[1] not in endpoints or (parts[2] is not None and parts[2] not in landmarks)
                                        or (parts[3] is not None and parts[3] not in horizons)):
                problems.append(f"registry.{key}: '{name}' names an endpoint, landmark or horizon this run does not "
                                f"evaluate (endpoints {sorted(endpoints)}, landmarks {sorted(landmarks)}, "
                                f"horizons {sorted(horizons)})")
    for key, bounds in (("evaluation.selection_bounds", config.evaluation.selection_bounds),
                        ("registry.calibration_bounds", config.registry.calibration_bounds)):
        for metric, by_endpoint in bounds.items():
            missing = sorted(set(by_endpoint) - endpoints)
            if missing:
                problems.append(f"{key}.{metric}: endpoint(s) {missing} are not in evaluation.endpoints")
    return problems


def _keys_at(model: type[BaseModel], location: tuple) -> list[str]:
    """The keys a section of ``model`` at ``location`` (``("evaluation",)``) may hold."""
    section: Any = model
    for key in location:
        field = getattr(section, "model_fields", {}).get(key)
        if field is None:
            return []
        section = field.annotation
    return list(getattr(section, "model_fields", {}))


def check_config(config: RunConfig) -> None:
    """Checks that pydantic cannot express, run by every job before it reads data.

    Names across sections (metrics, horizons, candidates, builders), model parameters (each
    ``models.params.<name>`` key must be a parameter of that estimator, as ``get_params`` lists
    them), the registry model name (as MLflow would accept it), the bootstrap count
    (:data:`MIN_BOOTSTRAP`). Unknown names come with the closest known one.

    Parameters
    ----------
    config : RunConfig

    Raises
    ------
    ConfigError
        Naming each offending key and why.
    """
    problems = _metric_problems(config) + _model_problems(config) + _feature_problems(config)
    if config.data.source == "folder" and config.data.input_dir is None:
        problems.append("data.input_dir: required when data.source is 'folder'")
    bootstrap = config.evaluation.bootstrap
    if 0 < bootstrap < MIN_BOOTSTRAP:
        problems.append(f"evaluation.bootstrap: {bootstrap} resamples are too few for 95% intervals and their plots; "
                        f"use 0 (no intervals) or at least {MIN_BOOTSTRAP}")
    name_problem = _registry_name_problem(config.registry.model_name)
    if name_problem is not None:
        problems.append(f"registry.model_name: {config.registry.model_name!r} {name_problem}")
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  {line}" for line in problems))


def _metric_problems(config: RunConfig) -> list[str]:
    from models.evaluation import CLOSE_TO_ONE, HIGHER_IS_BETTER, LOWER_IS_BETTER, SELECTION_METRICS

    problems = []
    metric = config.evaluation.selection_metric
    if metric not in SELECTION_METRICS:
        problems.append(f"evaluation.selection_metric: '{metric}' is not one of {SELECTION_METRICS}"
                        f"{_did_you_mean(metric, SELECTION_METRICS)}")
    compared = tuple(sorted(HIGHER_IS_BETTER | LOWER_IS_BETTER | CLOSE_TO_ONE))  # every summary metric of a run
    for name in config.registry.champion_metrics:
        if name not in compared:  # a metric no run computes would count as worse: never promoted
            problems.append(f"registry.champion_metrics: unknown metric '{name}'; known: {compared}"
                            f"{_did_you_mean(name, compared)}")
    horizons = [float(h) for h in config.evaluation.horizons_days]
    for key, value in (("registry.risk_group_horizon_days", config.registry.risk_group_horizon_days),
                       ("evaluation.shap_horizon_days", config.evaluation.shap_horizon_days)):
        if float(value) not in horizons:
            problems.append(f"{key}: {value:g} is not one of evaluation.horizons_days {horizons}")
    unknown = [name for name in config.evaluation.bootstrap_endpoints if name not in config.evaluation.endpoints]
    if unknown:
        problems.append(f"evaluation.bootstrap_endpoints: {unknown} not among evaluation.endpoints "
                        f"{config.evaluation.endpoints}{_did_you_mean(unknown[0], config.evaluation.endpoints)}")
    return problems + _threshold_problems(config)


def _model_problems(config: RunConfig) -> list[str]:
    from models.factory import BASELINE_NAME, CANDIDATE_NAMES, RECALIBRATION_PARAMS, base_model_name

    problems = []
    for name in config.models.candidates:
        if name not in CANDIDATE_NAMES:
            problems.append(f"models.candidates: unknown model '{name}'; known: {list(CANDIDATE_NAMES)}"
                            f"{_did_you_mean(name, CANDIDATE_NAMES)}")
    if not config.models.candidates:
        problems.append(f"models.candidates: empty; known: {list(CANDIDATE_NAMES)}")
    recalibrated = [name for name in config.models.candidates if base_model_name(name) != name]
    if recalibrated and config.evaluation.group_by == "patient" and config.evaluation.cv_folds < 3:
        problems.append(f"evaluation.cv_folds: recalibrated candidates {recalibrated} need at least 3 folds "
                        "(nested cross-validation)")
    for name, params in config.models.params.items():
        if name not in CANDIDATE_NAMES + (BASELINE_NAME,):
            problems.append(f"models.params: no candidate named '{name}'{_did_you_mean(name, CANDIDATE_NAMES)}")
        elif base_model_name(name) != name:
            base_keys = sorted(set(params) - set(RECALIBRATION_PARAMS))
            if base_keys:
                problems.append(f"models.params.{name}: only {list(RECALIBRATION_PARAMS)} here; {base_keys} belong "
                                f"under models.params.{base_model_name(name)} (shared with the base model)")
        else:
            problems += _parameter_problems(name, params)
    return problems


def _parameter_problems(name: str, params: dict[str, Any]) -> list[str]:
    """Keys of ``models.params.<name>`` that are no parameter of the model (found by building it, not fitting)."""
    from models.base import ModelInputError
    from models.factory import BASELINE_NAME, LINEAGE_SWITCH_PARAM, make_model, make_survival_estimator

    try:
        make_model(name, params)
    except ModelInputError as exc:
        model = make_model(name)
        known = set(model.get_params(deep=False))
        if name != BASELINE_NAME:  # a candidate: its estimator's parameters and the competing-risks wrapper's
            known = (known - {"survival_estimator", "phenotype_classifier", "lineage_switch_estimator"}) | set(
                make_survival_estimator(name)[-1].get_params(deep=False)) | {LINEAGE_SWITCH_PARAM}
        unknown = sorted(set(params) - known)
        if not unknown:
            return [f"models.params.{name}: {exc}"]
        return [f"models.params.{name}.{key}: not a parameter of '{name}'{_did_you_mean(key, known)} "
                f"(known: {', '.join(sorted(known))})" for key in unknown]
    return []


def _feature_problems(config: RunConfig) -> list[str]:
    from features.registry import available_builders, get_builder

    problems = []
    for name in config.features.builders:
        try:
            get_builder(name)
        except KeyError as exc:
            problems.append(f"features.builders: {exc.args[0]}{_did_you_mean(name, available_builders())}")
    return problems


def _registry_name_problem(name: str) -> str | None:
    """Why MLflow would refuse ``name`` as a registered model name, or why this project's
    ``models:/<name>@champion`` URIs could not name it; None when it is fine.

    MLflow has no public function to check a name before registering it (its check is private,
    ``mlflow.utils.validation._validate_model_name``), so its rules are repeated here: not blank,
    no ``/`` or ``:``, a path that stays itself when normalised. ``tests/pipelines/test_config.py``
    registers names in a real store to pin that MLflow refuses what this refuses.
    """
    if not name.strip():
        return "is blank"
    bad = sorted({character for character in name if character in "/:@"})
    if bad:
        return f"contains {', '.join(repr(c) for c in bad)} (MLflow refuses '/' and ':'; '@' would break models:/<name>@alias)"
    normalised = posixpath.normpath(name)
    if normalised != name or normalised in (".", "..") or normalised.startswith("../"):
        return "is not a plain name (MLflow refuses names that change as a path, such as '.', '..' or 'a//b')"
    return None
