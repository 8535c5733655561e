"""``car-relapse train --config configs/default.yaml``: train, evaluate, track, register (gated).

Steps (each shown with a progress bar):

1. load and check the run config (exit code 2 with every offending key on a bad config);
2. load the cohort the config names (the embedded synthetic cohort, simulated with its oracle, or
   a folder in the data contract), validate it (the data report), build the stacked landmark set;
3. cross-validate every candidate and the clinicians' rule with folds grouped by patient (or
   site), and score them side by side with the oracle where it is known (models.evaluation);
4. pick the winner by the configured metric, refit it on all rows, explain it (SHAP);
5. log everything to MLflow (config as params, every metric per landmark / endpoint / horizon /
   source, data report, plots, feature list, dataset hash; no patient rows unless
   ``registry.log_patient_rows``), log the pyfunc model, and register it only if it passes the
   configured thresholds; under a lock, compare it with the champion (``pipelines.champion_gate``)
   and move the ``champion`` / ``previous`` aliases only if it is not worse, on the same data
   (or with ``--promote``);
6. print where to look: run id, model version, the ``mlflow ui`` line and the serve command.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import Progress
from rich.text import Text
from threadpoolctl import threadpool_limits

from features.contract import ContractError
from features.landmarks import feature_columns
from models.base import ModelInputError
from models.evaluation import HIGHER_IS_BETTER, best_source
from models.serving import ScoringBundle
from pipelines.config import ConfigError, DataConfig, RunConfig, load_config
from pipelines.tracking import (
    TrackingError,
    TrackingTarget,
    mlflow_ui_command,
    quiet_mlflow,
    setup_tracking,
    start_tracked_run,
    store_error_reason,
)

__all__ = [
    "EXIT_BAD_CONFIG",
    "EXIT_FAILED",
    "LOWER_IS_BETTER",
    "SELECTION_METRICS",
    "TrainError",
    "CohortData",
    "TrainSummary",
    "check_config",
    "load_cohort",
    "dataset_hash",
    "flatten_config",
    "metric_key",
    "summarise_metrics",
    "train",
    "run_train",
    "without_training_rows",
    "report_without_patient_details",
]

EXIT_BAD_CONFIG = 2
EXIT_FAILED = 1
LOWER_IS_BETTER = frozenset({"brier", "ibs"})
SELECTION_METRICS = tuple(sorted(HIGHER_IS_BETTER | LOWER_IS_BETTER | {"calibration_slope"}))
RULE = "rule"
ORACLE = "oracle"
_console = Console(soft_wrap=True, highlight=False)


class TrainError(RuntimeError):
    """Training cannot go on; the message says what and why."""


@dataclass(frozen=True)
class CohortData:
    """Raw cohort tables, where they came from, and the oracle when known (evaluation only)."""

    infusions: pd.DataFrame
    measurements: pd.DataFrame
    outcomes: pd.DataFrame
    source_names: dict[str, str]
    description: str
    oracle: pd.DataFrame | None = None


@dataclass(frozen=True)
class TrainSummary:
    """Where a training run went."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    winner: str
    winner_metrics: dict[str, float]
    registered: bool
    model_name: str
    model_version: str | None
    previous_champion: str | None
    gate_reasons: tuple[str, ...]
    model_uri: str
    promoted: bool = False
    champion_comparison: tuple[str, ...] = ()
    champion_reasons: tuple[str, ...] = ()


# --- config ---------------------------------------------------------------------------------------
def check_config(config: RunConfig) -> None:
    """Checks across sections that pydantic cannot express; raises ConfigError naming each key."""
    from features.registry import get_builder
    from models.factory import BASELINE_NAME, MODEL_NAMES

    problems = []
    horizons = [float(h) for h in config.evaluation.horizons_days]
    known_metrics = SELECTION_METRICS
    if config.evaluation.selection_metric not in known_metrics:
        problems.append(f"evaluation.selection_metric: '{config.evaluation.selection_metric}' is not one of {known_metrics}")
    if float(config.registry.risk_group_horizon_days) not in horizons:
        problems.append(f"registry.risk_group_horizon_days: {config.registry.risk_group_horizon_days:g} is not one of "
                        f"evaluation.horizons_days {horizons}")
    if float(config.evaluation.shap_horizon_days) not in horizons:
        problems.append(f"evaluation.shap_horizon_days: {config.evaluation.shap_horizon_days:g} is not one of "
                        f"evaluation.horizons_days {horizons}")
    for name in list(config.registry.thresholds) + list(config.registry.max_thresholds):
        if name not in known_metrics:
            problems.append(f"registry thresholds: unknown metric '{name}'; known: {known_metrics}")
    unknown = [name for name in config.models.candidates if name not in MODEL_NAMES]
    if unknown or not config.models.candidates:
        problems.append(f"models.candidates: unknown {unknown} or empty; known: {list(MODEL_NAMES)}")
    extra_params = sorted(set(config.models.params) - set(MODEL_NAMES) - {BASELINE_NAME})
    if extra_params:
        problems.append(f"models.params: no candidate named {extra_params}")
    if config.data.source == "folder" and config.data.input_dir is None:
        problems.append("data.input_dir: required when data.source is 'folder'")
    for name in config.features.builders:
        try:
            get_builder(name)
        except KeyError as exc:
            problems.append(f"features.builders: {exc.args[0]}")
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  {line}" for line in problems))


def flatten_config(config: RunConfig) -> dict[str, str]:
    """The config as flat MLflow params: ``section.key`` (nested keys joined by dots) -> text."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)

    walk("", config.model_dump(mode="json"))
    return flat


# --- data -----------------------------------------------------------------------------------------
def load_cohort(data: DataConfig) -> CohortData:
    """The cohort the config names: simulated (with its oracle) or read from a folder.

    Raises
    ------
    TrainError
        A folder without an ``outcomes`` table (training needs outcomes).
    """
    if data.source == "synthetic":
        from pipelines.simulate import simulate_cohort

        synthetic = data.synthetic
        cohort = simulate_cohort(synthetic.n_patients, synthetic.seed, with_oracle=synthetic.with_oracle)
        names = {table: table for table in ("infusions", "measurements", "outcomes")}
        description = f"synthetic (n_patients={synthetic.n_patients}, seed={synthetic.seed})"
        return CohortData(cohort.infusions, cohort.measurements, cohort.outcomes, names, description, cohort.oracle)
    from pipelines.io import read_cohort_folder, read_table

    if data.input_dir is None:  # check_config requires it for a folder source
        raise TrainError("data.input_dir: required when data.source is 'folder'")
    files = read_cohort_folder(data.input_dir)
    if "outcomes" not in files.tables:
        raise TrainError(f"{data.input_dir}: training needs an outcomes table (outcomes.csv or outcomes.parquet)")
    oracle_file = Path(data.input_dir) / "oracle.parquet"
    oracle = read_table(oracle_file) if oracle_file.is_file() else None
    tables = files.tables
    return CohortData(tables["infusions"], tables["measurements"], tables["outcomes"], files.source_names,
                      f"folder {data.input_dir}", oracle)


def _canonical_csv(frame: pd.DataFrame, keys: Sequence[str]) -> bytes:
    ordered = frame.reindex(columns=sorted(frame.columns))
    ordered = ordered.sort_values([k for k in keys if k in ordered.columns], kind="stable")
    return ordered.to_csv(index=False, lineterminator="\n", na_rep="").encode()


def dataset_hash(infusions: pd.DataFrame, measurements: pd.DataFrame, outcomes: pd.DataFrame) -> str:
    """sha256 of the validated tables in a canonical form (sorted columns and rows, CSV text).

    Row order and column order in the input files do not change the hash; any value does.
    """
    digest = hashlib.sha256()
    for name, frame, keys in (
        ("infusions", infusions, ["patient_id"]),
        ("measurements", measurements, ["patient_id", "day", "specimen", "assay", "value"]),
        ("outcomes", outcomes, ["patient_id"]),
    ):
        digest.update(f"[{name}]\n".encode())
        digest.update(_canonical_csv(frame, keys))
    return digest.hexdigest()


# --- evaluation -----------------------------------------------------------------------------------
# Loading, cross-validation and scoring are shared with ``car-relapse evaluate``: see
# pipelines/evaluate.py (prepare_landmark_set, cv_splits, cross_validated_sources,
# evaluate_landmark_set). Imported inside functions: evaluate.py imports load_cohort from here.


def summarise_metrics(metrics: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per source, each relapse metric over all landmarks averaged over the horizons
    (``models.evaluation.summary_by_source``): what the winner is picked by and the gate checks."""
    from models.evaluation import summary_by_source

    table = summary_by_source(metrics)
    return {str(source): {str(m): float(v) for m, v in row.items()} for source, row in table.iterrows()}


# --- MLflow logging -------------------------------------------------------------------------------
def _label(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"


def metric_key(row: Mapping[str, Any], suffix: str = "") -> str:
    """MLflow key of one evaluation metric: ``cv/<source>/<endpoint>/lm<day|all>[/h<days>]/<metric>``."""
    source = str(row["source"]).replace(" - ", "_vs_")
    landmark = "all" if str(row["landmark_day"]) == "all" else _label(row["landmark_day"])
    horizon = "" if pd.isna(row["horizon_days"]) else f"/h{_label(row['horizon_days'])}"
    return f"cv/{source}/{row['endpoint']}/lm{landmark}{horizon}/{row['metric']}{suffix}"


def _metric_entries(metrics: pd.DataFrame) -> Iterator[tuple[str, float]]:
    for row in metrics.to_dict("records"):
        for column, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
            if np.isfinite(row[column]):
                yield metric_key(row, suffix), float(row[column])


def _log_metrics(run_id: str, metrics: pd.DataFrame, summary: Mapping[str, Mapping[str, float]], winner: str) -> None:
    """Every evaluation metric, the per-source summaries and the winner's, in batches."""
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    entries = list(_metric_entries(metrics))
    entries += [(f"summary/{source}/{name}", value) for source, values in summary.items()
                for name, value in values.items() if np.isfinite(value)]
    entries += [(f"winner/{name}", value) for name, value in summary[winner].items() if np.isfinite(value)]
    stamp = int(time.time() * 1000)
    client = MlflowClient()
    batch = [Metric(key, value, stamp, 0) for key, value in entries]
    for start in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[start:start + 1000], synchronous=True)


def _log_tables(metrics: pd.DataFrame, calibration: pd.DataFrame, report: dict, features: dict) -> None:
    """Aggregated tables only: metrics, calibration groups, data report, feature list."""
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        metrics_path, calibration_path = Path(folder) / "metrics.csv", Path(folder) / "calibration.csv"
        metrics.to_csv(metrics_path, index=False)
        calibration.to_csv(calibration_path, index=False)
        mlflow.log_artifact(str(metrics_path), "evaluation")
        mlflow.log_artifact(str(calibration_path), "evaluation")
    mlflow.log_dict(report, "data/data_report.json")
    mlflow.log_dict(features, "features/feature_list.json")


def report_without_patient_details(report: dict) -> dict:
    """The data report with counts only: no patient ids and no example lines quoting row values."""
    redacted = {**report, "quarantined_patients": len(report.get("quarantined_patients", []))}
    redacted["tables"] = {name: {**table, "examples": []} for name, table in report.get("tables", {}).items()}
    return redacted


def _log_patient_rows(landmark_set: pd.DataFrame, quarantined: Mapping[str, pd.DataFrame]) -> None:
    """Only when ``registry.log_patient_rows``: the landmark set and the quarantined raw rows."""
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "landmark_set.parquet"
        landmark_set.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), "patient_rows")
        for table, rows in quarantined.items():
            if len(rows):
                rows_path = Path(folder) / f"quarantined_{table}.csv"
                rows.to_csv(rows_path, index=False)
                mlflow.log_artifact(str(rows_path), "patient_rows")


# --- plots (aggregates only) ----------------------------------------------------------------------
def _figure_grid(n_panels: int):
    from matplotlib.figure import Figure

    n_cols = min(n_panels, 4)
    n_rows = -(-n_panels // n_cols)
    figure = Figure(figsize=(4.2 * n_cols, 4.0 * n_rows))
    axes = np.atleast_1d(figure.subplots(n_rows, n_cols, squeeze=False)).ravel()
    for axis in axes[n_panels:]:
        axis.set_visible(False)
    return figure, list(axes[:n_panels])


def incidence_figure(landmark_set: pd.DataFrame, predicted: pd.DataFrame, horizons_days: Sequence[float]):
    """Observed (Aalen-Johansen) cumulative incidence per cause (lines) vs the mean out-of-fold
    prediction (markers), one panel per landmark: calibration in the large, over time."""
    from models.base import CAUSES, cif_column
    from models.nonparametric import aalen_johansen

    codes = {cause: k + 1 for k, cause in enumerate(CAUSES)}
    landmarks = sorted(landmark_set["landmark_day"].unique())
    figure, axes = _figure_grid(len(landmarks))
    grid = np.linspace(0, max(horizons_days), 100)
    for axis, landmark in zip(axes, landmarks):
        rows = (landmark_set["landmark_day"] == landmark).to_numpy()
        status = landmark_set.loc[rows, "event"].map(codes).fillna(0).astype(int).to_numpy()
        observed = aalen_johansen(landmark_set.loc[rows, "time"].to_numpy(float), status, grid, len(CAUSES))
        for k, cause in enumerate(CAUSES):
            line = axis.plot(grid, observed[k], label=cause)[0]
            means = [predicted.loc[rows, cif_column(cause, h)].mean() for h in horizons_days]
            axis.plot(horizons_days, means, marker="o", linestyle="none", color=line.get_color())
        axis.set(title=f"landmark day {_label(landmark)} (n={int(rows.sum())})", xlabel="days from landmark",
                 ylabel="cumulative incidence")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    return figure


# --- the winner: bundle, gate, registration -------------------------------------------------------
def _bundle(config: RunConfig, estimator, winner: str, columns: Sequence[str], version: str | None,
            run_id: str) -> ScoringBundle:
    from pipelines.build_features import builder_options

    return ScoringBundle(
        estimator=estimator,
        estimator_name=winner,
        feature_columns=tuple(columns),
        builders=tuple(config.features.builders),
        builder_options=builder_options(config.features),
        horizons_days=tuple(float(h) for h in config.evaluation.horizons_days),
        risk_group_horizon_days=float(config.registry.risk_group_horizon_days),
        risk_group_cutoffs=tuple(float(c) for c in config.registry.risk_group_cutoffs),
        n_top_factors=config.registry.top_factors,
        explain_horizon_days=float(config.evaluation.shap_horizon_days),
        model_name=config.registry.model_name if version is not None else None,
        model_version=version,
        run_id=run_id,
    )


def without_training_rows(model, features: pd.DataFrame):
    """Replace the model's SHAP background (a sample of training rows) by one row of medians.

    The fitted model is pickled into the registered artifact; unless ``registry.log_patient_rows``
    allows it, it must not carry patient-level rows. Explanations then measure each feature's
    contribution against the median training patient.
    """
    if getattr(model, "background_", None) is not None:
        model.background_ = features.median().to_frame().T.reset_index(drop=True)
    return model


def _log_bundle(bundle: ScoringBundle):
    from pipelines.pyfunc_model import log_scoring_model

    return log_scoring_model(bundle)


@dataclass(frozen=True)
class _Registration:
    registered: bool
    version: str | None
    previous: str | None
    reasons: tuple[str, ...]
    model_uri: str
    promoted: bool = False
    comparison: tuple[str, ...] = ()
    champion_reasons: tuple[str, ...] = ()


def _log_and_register(config: RunConfig, target: TrackingTarget, run_id: str, make_bundle,
                      winner_metrics: Mapping[str, float], promote: bool, evaluate_champion) -> _Registration:
    """Log the pyfunc; register it only if it passes the thresholds, and promote it only if it is not
    worse than the champion on the same data, or ``promote`` (compared and registered under the lock)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines.champion_gate import compare_with_champion, comparison_preferences
    from pipelines.registry import evaluate_gate, next_version, promotion, register_and_promote, repair_interrupted_promotions

    decision = evaluate_gate(winner_metrics, config.registry.thresholds, config.registry.max_thresholds)
    gate: dict[str, Any] = {"passed": decision.passed, "checks": list(decision.checks)}
    mlflow.set_tag("registry.gate", "passed" if decision.passed else "failed")
    if not decision.passed:
        mlflow.log_dict(gate, "registry/gate.json")
        info = _log_bundle(make_bundle(None))
        mlflow.set_tag("registry.registered", "false")
        return _Registration(False, None, None, decision.reasons, info.model_uri)
    client = MlflowClient()
    name = config.registry.model_name
    with promotion(target.promotion_lock_path):
        repaired = repair_interrupted_promotions(client, name)
        comparison = compare_with_champion(
            client, name, client.get_run(run_id).data.tags.get("data.sha256", ""), winner_metrics,
            comparison_preferences(config.evaluation.selection_metric, config.registry.champion_metrics),
            config.registry.champion_tolerance, evaluate_champion)
        version = next_version(client, name)
        info = _log_bundle(make_bundle(version))
        promoted = register_and_promote(client, name, info.model_uri, run_id, expected_version=version,
                                        promote=comparison.promote or promote)
    forced = promote and not comparison.promote
    mlflow.log_dict({**gate, "champion": comparison.to_dict(), "promoted": promoted.promoted, "forced_by_promote": forced,
                     "repaired_promotions": repaired}, "registry/gate.json")
    mlflow.set_tags({"registry.registered": "true", "registry.version": promoted.version,
                     "registry.promoted": str(promoted.promoted).lower()})
    lines = (*(f"repaired:    {line}" for line in repaired), *comparison.lines())
    return _Registration(True, promoted.version, promoted.previous_champion, (), info.model_uri, promoted.promoted,
                         lines, comparison.reasons)


# --- orchestration ----------------------------------------------------------------------------------
def _progress() -> Progress:
    from pipelines.evaluate import progress_bar

    return progress_bar(console=_console)


@dataclass(frozen=True)
class _Prepared:
    cohort: CohortData
    validated: Any
    landmark_set: pd.DataFrame
    columns: list[str]


def _prepare(config: RunConfig, progress: Progress) -> _Prepared:
    """Load, validate and build the landmark set (one progress step each)."""
    from pipelines.evaluate import prepare_landmark_set

    task = progress.add_task("cohort, validation, landmark set", total=3)
    prepared = prepare_landmark_set(config, on_step=lambda: progress.advance(task), empty_error=TrainError)
    return _Prepared(prepared.cohort, prepared.validated, prepared.landmark_set,
                     feature_columns(prepared.landmark_set))


def _cross_validate(config: RunConfig, prepared: _Prepared, progress: Progress):
    """Out-of-fold predictions of every source and their metrics, with progress bars."""
    from pipelines.evaluate import cross_validated_sources, cv_splits, evaluate_landmark_set

    splits = cv_splits(prepared.landmark_set, config)
    n_sources = len(config.models.candidates) + 1
    task = progress.add_task(f"cross-validation ({n_sources} sources)", total=n_sources * len(splits))
    predictions = cross_validated_sources(prepared.landmark_set, prepared.cohort.oracle, config, splits,
                                          on_fold=lambda _fold: progress.advance(task))
    task = progress.add_task(f"metrics (bootstrap {config.evaluation.bootstrap})", total=1)
    evaluation = evaluate_landmark_set(prepared.landmark_set, predictions, config)
    progress.advance(task)
    return predictions, evaluation


def _refit(config: RunConfig, prepared: _Prepared, winner: str, progress: Progress):
    from models.factory import make_model

    task = progress.add_task(f"refit {winner} on all rows", total=1)
    model = make_model(winner, config.models.params.get(winner), config.models.random_state)
    model.fit(prepared.landmark_set[prepared.columns], prepared.landmark_set[["time", "event"]])
    progress.advance(task)
    return model


def _log_run_inputs(config: RunConfig, prepared: _Prepared, config_path: Path | None) -> None:
    import mlflow

    validated = prepared.validated
    mlflow.log_params(flatten_config(config))
    mlflow.set_tags({
        "data.source": prepared.cohort.description,
        "data.sha256": dataset_hash(validated.infusions, validated.measurements, validated.outcomes),
        "data.patients": str(validated.report.patients_out),
        "data.landmark_rows": str(len(prepared.landmark_set)),
        "data.oracle": str(prepared.cohort.oracle is not None).lower(),
    })
    if config_path is not None:
        mlflow.log_artifact(str(config_path), "config")


def _log_evaluation(config: RunConfig, prepared: _Prepared, predictions, evaluation, summary, winner: str,
                    run_id: str) -> None:
    import mlflow

    from models.plots import plot_calibration, plot_metric_by_landmark

    horizons = [float(h) for h in config.evaluation.horizons_days]
    _log_metrics(run_id, evaluation.metrics, summary, winner)
    features = {"feature_columns": prepared.columns, "builders": list(config.features.builders)}
    report = prepared.validated.report.to_dict()
    if not config.registry.log_patient_rows:
        report = report_without_patient_details(report)
    _log_tables(evaluation.metrics, evaluation.calibration, report, features)
    shown = [s for s in (winner, RULE, ORACLE) if s in predictions]
    horizon = float(config.registry.risk_group_horizon_days)
    mlflow.log_figure(plot_calibration(evaluation.calibration, horizon, sources=shown), "plots/calibration_relapse.png")
    mlflow.log_figure(plot_metric_by_landmark(evaluation.metrics, config.evaluation.selection_metric, horizon,
                                              sources=[*config.models.candidates, *shown[1:]]),
                      f"plots/{config.evaluation.selection_metric}_by_landmark.png")
    mlflow.log_figure(incidence_figure(prepared.landmark_set, predictions[winner], horizons),
                      "plots/cumulative_incidence.png")
    if config.registry.log_patient_rows:
        _log_patient_rows(prepared.landmark_set, prepared.validated.quarantined)


def train(config: RunConfig, config_path: Path | None = None, tracking_uri: str | None = None,
          promote: bool = False) -> TrainSummary:
    """Run the whole training job for a validated config (see the module docstring).

    Parameters
    ----------
    config : RunConfig
    config_path : Path, optional
        Logged as an artifact when given.
    tracking_uri : str, optional
        Overrides the environment and the config.
    promote : bool
        Promote the new version even if it is worse than the champion or trained on other data
        (it must still pass the thresholds).

    Returns
    -------
    TrainSummary
    """
    import mlflow

    from pipelines.registry import settle_interrupted_promotions

    check_config(config)
    target = setup_tracking(config.tracking.experiment, tracking_uri, config.tracking.tracking_uri,
                            config.tracking.artifact_location)
    for line in (*target.closed_stale_runs, *settle_interrupted_promotions(
            target.promotion_lock_path, config.registry.model_name, target.tracking_uri)):
        _console.print(line, markup=False)
    with start_tracked_run(target) as run, _progress() as progress, threadpool_limits(1, user_api="blas"):
        run_id = run.info.run_id
        prepared = _prepare(config, progress)
        _log_run_inputs(config, prepared, config_path)
        predictions, evaluation = _cross_validate(config, prepared, progress)
        summary = summarise_metrics(evaluation.metrics)
        winner = best_source(evaluation.metrics, config.models.candidates, config.evaluation.selection_metric)
        _log_evaluation(config, prepared, predictions, evaluation, summary, winner, run_id)
        model = _refit(config, prepared, winner, progress)
        _log_explanations(config, model, prepared, progress)
        if not config.registry.log_patient_rows:
            model = without_training_rows(model, prepared.landmark_set[prepared.columns])
        mlflow.set_tag("winner", winner)
        task = progress.add_task("log model, gate, register", total=1)
        registration = _log_and_register(
            config, target, run_id, lambda version: _bundle(config, model, winner, prepared.columns, version, run_id),
            summary[winner], promote, lambda uri: _champion_on_cohort(uri, config, prepared, predictions[winner]),
        )
        progress.advance(task)
    return TrainSummary(run_id, target.experiment_id, target.tracking_uri, winner, summary[winner],
                        registration.registered, config.registry.model_name, registration.version,
                        registration.previous, registration.reasons, registration.model_uri, registration.promoted,
                        registration.comparison, registration.champion_reasons)


def _champion_on_cohort(model_uri: str, config: RunConfig, prepared: _Prepared, winner_predictions: pd.DataFrame):
    from pipelines.champion_gate import champion_on_cohort

    return champion_on_cohort(model_uri, prepared.cohort.infusions, prepared.cohort.measurements,
                              prepared.landmark_set, winner_predictions, config)


def _log_explanations(config: RunConfig, model, prepared: _Prepared, progress: Progress) -> None:
    """SHAP summary (beeswarm and mean |SHAP| bars) and global importance of the refitted winner."""
    import mlflow

    from models.explain import explain_relapse_risk, global_importance, plot_beeswarm, plot_importance_bar

    task = progress.add_task("SHAP summary", total=1)
    explanation = explain_relapse_risk(
        model, prepared.landmark_set[prepared.columns], horizon_days=float(config.evaluation.shap_horizon_days),
        n_background=config.evaluation.shap_background, max_rows=config.evaluation.shap_max_rows,
        random_state=config.models.random_state,
    )
    mlflow.log_figure(plot_beeswarm(explanation), "plots/shap_summary.png")
    mlflow.log_figure(plot_importance_bar(explanation), "plots/shap_importance.png")
    importance = global_importance(explanation)
    mlflow.log_dict({"output": explanation.output, "method": explanation.method,
                     "rows_explained": len(explanation.data),
                     "importance": importance.to_dict("records")}, "explain/global_importance.json")
    progress.advance(task)


# --- the command ------------------------------------------------------------------------------------
def _where_to_look(summary: TrainSummary) -> list[str]:
    """The closing lines of ``train``; every path and URI in a command is shell-quoted."""
    from pipelines.tracking import default_tracking_uri

    uri_option = "" if summary.tracking_uri == default_tracking_uri() else f" --tracking-uri {shlex.quote(summary.tracking_uri)}"
    champion_uri = shlex.quote(f"models:/{summary.model_name}@champion")
    metrics = ", ".join(f"{k}={v:.3f}" for k, v in sorted(summary.winner_metrics.items()) if k in SELECTION_METRICS)
    lines = [
        f"run id:      {summary.run_id} (experiment {summary.experiment_id})",
        f"winner:      {summary.winner}  ({metrics})",
    ]
    reasons = "; ".join(summary.champion_reasons)
    if summary.registered and summary.promoted:
        previous = f", previous champion: version {summary.previous_champion}" if summary.previous_champion else ""
        forced = f" (--promote, although {reasons})" if reasons else ""
        lines.append(f"registered:  {summary.model_name} version {summary.model_version} -> alias 'champion'{previous}"
                     f"{forced}")
    elif summary.registered:
        lines.append(f"registered:  {summary.model_name} version {summary.model_version}, NOT promoted (the champion "
                     f"stays): {reasons}")
    else:
        lines.append(f"NOT registered (logged as {summary.model_uri}): " + "; ".join(summary.gate_reasons))
    lines += list(summary.champion_comparison)
    lines += [
        f"MLflow UI:   {mlflow_ui_command(summary.tracking_uri)}",
        f"serve:       car-relapse serve --model {champion_uri}{uri_option}",
        f"batch score: car-relapse score --model {champion_uri} --input <cohort folder> "
        f"--as-of-day 91 --output scores.parquet{uri_option}",
    ]
    if shutil.which("car-relapse") is None or shutil.which("mlflow") is None:
        activate = shlex.quote(str(Path(sys.prefix) / "bin" / "activate"))
        lines.append(f"first:       source {activate}   (puts car-relapse and mlflow on PATH)")
    return lines


def run_train(config_path: Path, tracking_uri: str | None = None, promote: bool = False) -> TrainSummary:
    """``car-relapse train``: load the config, train, print where to look.

    Exit codes: 2 for a bad config, 1 for bad data or a failed step (a store that is read-only,
    full or unreachable included); never a traceback for the project's own errors.
    """
    import typer
    from mlflow.exceptions import MlflowException

    from pipelines.io import CohortIOError
    from pipelines.registry import RegistryError

    quiet_mlflow()
    try:
        config = load_config(Path(config_path))
        summary = train(config, Path(config_path), tracking_uri, promote)
    except ConfigError as exc:
        _console.print(f"[red]config error:[/red] {exc}", highlight=False)
        raise typer.Exit(code=EXIT_BAD_CONFIG) from None
    except (TrainError, ContractError, CohortIOError, ModelInputError, TrackingError, RegistryError) as exc:
        _console.print(f"[red]training failed:[/red] {exc}", highlight=False)
        raise typer.Exit(code=EXIT_FAILED) from None
    except (MlflowException, OSError) as exc:  # the store or the artifact folder refused a write
        _console.print(Text("training failed: ", style="red")
                       + Text(f"cannot write the run to the tracking store: {store_error_reason(exc)}"))
        raise typer.Exit(code=EXIT_FAILED) from None
    for line in _where_to_look(summary):
        _console.print(line, highlight=False, soft_wrap=True, markup=False)
    return summary
