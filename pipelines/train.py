"""``car-relapse train --config configs/default.yaml``: train, evaluate, track, register (gated).

Steps (each shown with a progress bar):

1. load and check the run config (exit code 2 with every offending key on a bad config);
2. load the cohort the config names (the embedded synthetic cohort, simulated with its oracle, or
   a folder in the data contract), validate it (the data report), build the stacked landmark set;
3. cross-validate every candidate and the clinicians' rule with folds grouped by patient (or
   site), and score them side by side with the oracle where it is known (models.evaluation);
4. pick the winner: the best ``evaluation.selection_metric`` among the candidates whose
   cross-validated calibration lies within ``evaluation.selection_bounds`` at every landmark and
   horizon; refit it on all rows, explain it (SHAP);
5. log everything to MLflow (config as params; the cohort as an MLflow dataset with its
   fingerprint and source; the git commit; the headline summary metrics per source and all the
   winner's named figures, calibration per cause, landmark and horizon included, with the whole
   metric grid per landmark / endpoint / horizon / source as the table ``evaluation/metrics.csv``;
   the selection, data report, plots, feature list; no patient rows unless
   ``registry.log_patient_rows``), log the pyfunc model, and register it only if it passes the
   configured thresholds and calibration bounds (``pipelines.config.gate_thresholds``); under a
   lock, compare it with the champion (``pipelines.champion_gate``) and move the ``champion`` /
   ``previous`` aliases only if it is not worse, on the same data (or with ``--promote``);
6. print where to look: run id, model version, the ``mlflow ui`` line, the serve and score
   commands, and the plain ``mlflow`` commands with the store's URI.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.text import Text
from threadpoolctl import threadpool_limits

from features.contract import ContractError
from models.base import ModelInputError
from models.evaluation import SELECTION_METRICS, parse_summary_key
from models.serving import ScoringBundle
from pipelines.config import ConfigError, RunConfig, check_config, gate_thresholds, load_config
from pipelines.decisions import log_decision_curves
from pipelines.experiment import (
    ORACLE,
    RULE,
    CohortData,
    CohortError,
    PreparedCohort,
    calibration_figures,
    cross_validate,
    dataset_hash,
    explain,
    prepare_landmark_set,
    progress_bar,
    refit,
    select_winner,
    summarise_metrics,
)
from pipelines.run_report import RunOutcome, log_run_report
from pipelines.tracking import (
    TrackingError,
    TrackingTarget,
    mlflow_ui_command,
    quiet_mlflow,
    setup_tracking,
    start_tracked_run,
    store_error_reason,
)
from pipelines.validate import EXIT_BAD_INPUT, EXIT_FAILED

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "TrainSummary",
    "cohort_dataset",
    "flatten_config",
    "mlflow_client_commands",
    "source_git_commit",
    "summarise_metrics",
    "train",
    "run_train",
    "without_training_rows",
    "report_without_patient_details",
]

_console = Console(soft_wrap=True, highlight=False)
SERVING_EXAMPLE_FILE = "serving_input_example.json"  # where MLflow stores a logged model's example request


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
    run_report: str | None = None


# --- config ---------------------------------------------------------------------------------------
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


# --- evaluation -----------------------------------------------------------------------------------
# Loading, cross-validation, scoring, the summary (``summarise_metrics``) and selection are shared
# with ``car-relapse evaluate``: pipelines/experiment.py.


# --- MLflow logging -------------------------------------------------------------------------------
def _over_all_landmarks(name: str) -> bool:
    """A headline metric, or a calibration figure not of one landmark (``oe/relapse/h365``)."""
    parts = parse_summary_key(name)
    return name in SELECTION_METRICS or (parts is not None and parts[2] is None)


def _log_metrics(run_id: str, summary: Mapping[str, Mapping[str, float]], winner: str) -> None:
    """The summary metrics only: ``summary/<source>/<metric>`` per source (the relapse headline
    metrics, ``uno_c``, ``ibs``, ...) and ``winner/<name>`` for the winner's headline metrics and
    its calibration per endpoint and horizon over all landmarks (``oe/relapse/h365``,
    ``slope/...``, ``ibs/death``); the per-landmark figures the gate checks are in
    ``registry/gate.json`` and the grid.

    A handful per run, so the MLflow metric list stays readable and runs compare on them; the
    whole grid (every source, endpoint, landmark, horizon, with bootstrap bounds) is the table
    artifact ``evaluation/metrics.csv`` (:func:`_log_tables`).
    """
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    entries = [(f"summary/{source}/{name}", value) for source, values in summary.items()
               for name, value in values.items() if name in SELECTION_METRICS and np.isfinite(value)]
    entries += [(f"winner/{name}", value) for name, value in summary[winner].items()
                if np.isfinite(value) and _over_all_landmarks(name)]
    stamp = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, metrics=[Metric(key, value, stamp, 0) for key, value in entries],
                             synchronous=True)


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

    decision = evaluate_gate(winner_metrics, *gate_thresholds(config))
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
def _refit(config: RunConfig, prepared: PreparedCohort, winner: str, predictions: Mapping[str, pd.DataFrame],
           progress: Progress):
    task = progress.add_task(f"refit {winner} on all rows", total=1)
    model = refit(config, prepared, winner, dict(predictions))
    progress.advance(task)
    return model


def source_git_commit(checkout: Path | None = None) -> tuple[str, bool] | None:
    """The commit the project's code is run from, and whether tracked files differ from it.

    Parameters
    ----------
    checkout : Path, optional
        Folder of the project's code (default: the folder holding the ``pipelines`` package).

    Returns
    -------
    (str, bool) or None
        The full commit hash and "has local changes"; None when the code is not run from a git
        checkout of the project (an installed package, no git, a folder inside another repository).
    """
    import subprocess

    folder = (Path(checkout) if checkout is not None else Path(__file__).resolve().parents[1]).resolve()
    if not (folder / "pyproject.toml").is_file():
        return None

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=20,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    head = git("rev-parse", "--show-toplevel", "HEAD")
    if head is None or len(head.split()) != 2 or Path(head.split()[0]).resolve() != folder:
        return None
    changes = git("status", "--porcelain", "--untracked-files=no")
    return head.split()[1], bool(changes and changes.strip())


def cohort_dataset(cohort: CohortData, fingerprint: str):
    """The cohort as an MLflow dataset: name, digest (the fingerprint's first 16 hex digits) and
    source (the cohort folder, or how it was made); metadata only, never patient rows.

    Parameters
    ----------
    cohort : CohortData
    fingerprint : str
        ``pipelines.experiment.dataset_hash`` of the validated tables.

    Returns
    -------
    mlflow.data.meta_dataset.MetaDataset
    """
    from mlflow.data import sources
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    if cohort.folder is not None:
        source = sources.LocalArtifactDatasetSource(str(Path(cohort.folder).resolve()))  # type: ignore[attr-defined]
    else:
        source = CodeDatasetSource(tags={"cohort": cohort.description})
    return MetaDataset(source, name="cohort", digest=fingerprint[:16])  # type: ignore[abstract]  # profile: None


def _log_run_inputs(config: RunConfig, prepared: PreparedCohort, config_path: Path | None) -> None:
    """The config as params; the cohort as tags and as an MLflow dataset; the code's git commit."""
    import mlflow

    validated = prepared.validated
    fingerprint = dataset_hash(validated.infusions, validated.measurements, validated.outcomes)
    mlflow.log_params(flatten_config(config))
    tags = {
        "data.source": prepared.cohort.description,
        "data.sha256": fingerprint,
        "data.patients": str(validated.report.patients_out),
        "data.landmark_rows": str(len(prepared.landmark_set)),
        "data.oracle": str(prepared.cohort.oracle is not None).lower(),
    }
    if (commit := source_git_commit()) is not None:
        tags.update({"mlflow.source.git.commit": commit[0], "git.dirty": str(commit[1]).lower()})
    mlflow.set_tags(tags)
    mlflow.log_input(cohort_dataset(prepared.cohort, fingerprint), context="training",
                     tags={"data.sha256": fingerprint, "data.patients": tags["data.patients"],
                           "data.landmark_rows": tags["data.landmark_rows"]})
    if config_path is not None:
        mlflow.log_artifact(str(config_path), "config")


def _log_evaluation(config: RunConfig, prepared: PreparedCohort, predictions, evaluation, summary, selection,
                    run_id: str) -> None:
    import mlflow

    from models.plots import plot_metric_by_landmark

    winner = selection.winner
    _log_metrics(run_id, summary, winner)
    features = {"feature_columns": prepared.columns, "builders": list(config.features.builders)}
    report = prepared.validated.report.to_dict()
    if not config.registry.log_patient_rows:
        report = report_without_patient_details(report)
    _log_tables(evaluation.metrics, evaluation.calibration, report, features)
    mlflow.log_dict({"winner": winner, "metric": config.evaluation.selection_metric,
                     "eligible": list(selection.eligible), "outside_bounds": {c: list(lines) for c, lines in
                                                                              selection.failures.items()}},
                    "evaluation/selection.json")
    for name, figure in calibration_figures(config, predictions, evaluation.metrics, evaluation.calibration,
                                            prepared.landmark_set, winner).items():
        mlflow.log_figure(figure, f"plots/{name}.png")
    horizon = float(config.registry.risk_group_horizon_days)
    others = [s for s in (RULE, ORACLE) if s in predictions]
    mlflow.log_figure(plot_metric_by_landmark(evaluation.metrics, config.evaluation.selection_metric, horizon,
                                              sources=[*config.models.candidates, *others]),
                      f"plots/{config.evaluation.selection_metric}_by_landmark.png")
    if config.registry.log_patient_rows:
        _log_patient_rows(prepared.landmark_set, prepared.validated.quarantined)


def train(config: RunConfig, config_path: Path | None = None, tracking_uri: str | None = None,
          cohort: CohortData | None = None, promote: bool = False) -> TrainSummary:
    """Run the whole training job for a validated config (see the module docstring).

    Parameters
    ----------
    config : RunConfig
    config_path : Path, optional
        Logged as an artifact when given.
    tracking_uri : str, optional
        Overrides the environment and the config.
    cohort : CohortData, optional
        Tables already in memory (``pipelines.api.train_frames``) instead of the cohort the
        config's ``data`` section names.
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
    with start_tracked_run(target) as run, progress_bar(_console) as progress, threadpool_limits(1, user_api="blas"):
        run_id = run.info.run_id
        prepared = prepare_landmark_set(config, progress, cohort)
        _log_run_inputs(config, prepared, config_path)
        predictions, evaluation = cross_validate(config, prepared, progress)
        summary = summarise_metrics(evaluation.metrics)
        selection = select_winner(config, summary)
        winner = selection.winner
        _log_evaluation(config, prepared, predictions, evaluation, summary, selection, run_id)
        decisions = log_decision_curves(config, prepared.landmark_set, predictions, winner, progress)
        model = _refit(config, prepared, winner, predictions, progress)
        explanation = _log_explanations(config, model, prepared, progress)
        if not config.registry.log_patient_rows:
            model = without_training_rows(model, prepared.landmark_set[prepared.columns])
        mlflow.set_tag("winner", winner)
        task = progress.add_task("log model, gate, register", total=1)
        registration = _log_and_register(
            config, target, run_id, lambda version: _bundle(config, model, winner, prepared.columns, version, run_id),
            summary[winner], promote, lambda uri: _champion_on_cohort(uri, config, prepared, predictions[winner]),
        )
        progress.advance(task)
        outcome = RunOutcome(run_id, winner, registration.registered, config.registry.model_name,
                             registration.version, registration.reasons, registration.promoted,
                             registration.champion_reasons)
        report = _run_report_or_warning(config, prepared, evaluation, decisions, explanation, outcome, progress)
    return TrainSummary(run_id, target.experiment_id, target.tracking_uri, winner, summary[winner],
                        registration.registered, config.registry.model_name, registration.version,
                        registration.previous, registration.reasons, registration.model_uri, registration.promoted,
                        registration.comparison, registration.champion_reasons, report)


def _run_report_or_warning(config: RunConfig, prepared: PreparedCohort, evaluation, decisions: pd.DataFrame,
                           explanation, outcome: RunOutcome, progress: Progress) -> str | None:
    """The run report's location; None, with a warning and a ``run_report_error`` tag on the run,
    when writing it fails. By then the model is logged, gated and maybe registered: a failing report
    must not turn a finished training into a traceback that hides what was registered."""
    import mlflow

    try:
        return log_run_report(config, prepared, evaluation, decisions, explanation, outcome, progress)
    except Exception as error:  # noqa: BLE001 - any failure of the report; the run itself has succeeded
        reason = f"{type(error).__name__}: {error}"
        mlflow.set_tag("run_report_error", reason[:500])
        state = f"version {outcome.model_version} of {outcome.model_name} is registered" if outcome.registered \
            else "no model version was registered"
        _console.print(f"warning: the run report could not be written ({reason}); the training finished and "
                       f"{state}", markup=False)
        return None


def _champion_on_cohort(model_uri: str, config: RunConfig, prepared: PreparedCohort, winner_predictions: pd.DataFrame):
    from pipelines.champion_gate import champion_on_cohort

    return champion_on_cohort(model_uri, prepared.cohort.infusions, prepared.cohort.measurements,
                              prepared.landmark_set, winner_predictions, config)


def _log_explanations(config: RunConfig, model, prepared: PreparedCohort, progress: Progress):
    """SHAP summary (beeswarm and mean |SHAP| bars) and global importance of the refitted winner;
    returns the explanation."""
    import mlflow

    from models.explain import global_importance, plot_beeswarm, plot_importance_bar

    task = progress.add_task("SHAP summary", total=1)
    explanation = explain(config, model, prepared)
    mlflow.log_figure(plot_beeswarm(explanation), "plots/shap_summary.png")
    mlflow.log_figure(plot_importance_bar(explanation), "plots/shap_importance.png")
    importance = global_importance(explanation)
    mlflow.log_dict({"output": explanation.output, "method": explanation.method,
                     "rows_explained": len(explanation.data),
                     "importance": importance.to_dict("records")}, "explain/global_importance.json")
    progress.advance(task)
    return explanation


# --- the command ------------------------------------------------------------------------------------
def mlflow_client_commands(tracking_uri: str, model_uri: str) -> list[str]:
    """Plain ``mlflow`` commands for a model, each carrying the store's URI (shell-quoted).

    Without ``MLFLOW_TRACKING_URI`` the mlflow CLI looks for ``models:/`` URIs in ``./mlflow.db`` (and
    creates it empty), so every line sets it. The lines serve the model, fetch its own example
    request (``serving_input_example.json``) into the current folder, and score that request.

    Parameters
    ----------
    tracking_uri : str
        Tracking and registry URI of the store holding the model.
    model_uri : str
        A registered model, e.g. ``models:/car-relapse@champion`` (the artifacts CLI reads a file of
        a model by its registry URI, not by a logged model's ``models:/m-...`` id).

    Returns
    -------
    list of str
    """
    from pipelines.serve import mlflow_serve_command

    env = f"MLFLOW_TRACKING_URI={shlex.quote(tracking_uri)}"
    serve = shlex.join(["mlflow", *mlflow_serve_command(model_uri)[3:]])  # without "<python> -m mlflow"
    model, example = shlex.quote(model_uri), shlex.quote(f"{model_uri}/{SERVING_EXAMPLE_FILE}")
    return [
        f"{env} {serve}",
        f"{env} mlflow artifacts download -u {example} -d .",
        f"{env} mlflow models predict -m {model} -i {SERVING_EXAMPLE_FILE} -t json --env-manager local",
    ]


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
        f"run report:  {summary.run_report or 'not written (see the warning above)'}",
        f"MLflow UI:   {mlflow_ui_command(summary.tracking_uri)}",
        f"serve:       car-relapse serve --model {champion_uri}{uri_option}",
        f"batch score: car-relapse score --model {champion_uri} --input <cohort folder> "
        f"--as-of-day 91 --output scores.parquet{uri_option}",
    ]
    if summary.registered:  # the plain mlflow commands, for the champion (a refused model is not for serving)
        lines.append("mlflow CLI:  (plain mlflow commands need MLFLOW_TRACKING_URI; without it they look in ./mlflow.db)")
        lines += [f"  {command}" for command in
                  mlflow_client_commands(summary.tracking_uri, f"models:/{summary.model_name}@champion")]
    if shutil.which("car-relapse") is None or shutil.which("mlflow") is None:
        activate = shlex.quote(str(Path(sys.prefix) / "bin" / "activate"))
        lines.append(f"first:       source {activate}   (puts car-relapse and mlflow on PATH)")
    return lines


def run_train(config_path: Path, tracking_uri: str | None = None, promote: bool = False) -> TrainSummary:
    """``car-relapse train``: load the config, train, print where to look.

    Exit codes: 2 for bad input (config, cohort, data contract), 1 when a step fails for another
    reason (tracking store, registry; a store that is read-only, full or unreachable included);
    never a traceback for the project's own errors.
    """
    import typer
    from mlflow.exceptions import MlflowException

    from pipelines.build_features import FeaturesJobError
    from pipelines.io import CohortIOError
    from pipelines.registry import RegistryError

    quiet_mlflow()
    try:
        config = load_config(Path(config_path))
        summary = train(config, Path(config_path), tracking_uri, promote=promote)
    except ConfigError as exc:
        _console.print(f"[red]config error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    except (CohortError, ContractError, CohortIOError, FeaturesJobError, ModelInputError) as exc:
        _console.print(f"[red]bad input:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    except (TrackingError, RegistryError) as exc:
        _console.print(f"[red]training failed:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code=EXIT_FAILED) from None
    except (MlflowException, OSError) as exc:  # the store or the artifact folder refused a write
        _console.print(Text("training failed: ", style="red")
                       + Text(f"cannot write the run to the tracking store: {store_error_reason(exc)}"))
        raise typer.Exit(code=EXIT_FAILED) from None
    for line in _where_to_look(summary):
        _console.print(line, markup=False, highlight=False, soft_wrap=True)
    return summary
