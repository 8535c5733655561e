"""The ``evaluate`` job: every candidate vs the oracle vs the clinicians' rule, with CIs and plots.

``car-relapse evaluate --config FILE --out DIR``:

1. load the cohort the config names (simulated with its oracle, or a folder; an
   ``oracle.parquet`` in the folder is used when present), validate it and build the landmark set;
2. grouped cross-validation (by patient, or leave-one-center-out) of every candidate and the rule:
   out-of-fold cumulative incidences for every row;
3. score models, oracle and rule on the same rows (models.evaluation): per landmark, endpoint and
   horizon, with patient-bootstrap CIs and paired differences vs the rule;
4. refit the best candidate (``evaluation.selection_metric``) on all rows and explain it (SHAP);
5. write ``metrics.json`` and the plots (PNG) to DIR.

Bad input (config, cohort, contract) ends with a clear message and exit code 2.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from threadpoolctl import threadpool_limits

from features.contract import ContractError, validate_cohort
from features.landmarks import feature_columns
from features.registry import FeatureInputError
from models.base import ModelInputError
from pipelines.config import ConfigError, RunConfig, load_config
from pipelines.io import CohortIOError
from pipelines.validate import EXIT_BAD_INPUT

__all__ = [
    "EXIT_BAD_INPUT",
    "cross_validated_sources",
    "cv_splits",
    "evaluate_config",
    "evaluate_landmark_set",
    "EvaluateError",
    "evaluation_settings",
    "EvaluationRun",
    "metrics_payload",
    "prepare_landmark_set",
    "progress_bar",
    "PreparedCohort",
    "run_evaluate",
    "write_outputs",
]

ORACLE, RULE = "oracle", "rule"
_console = Console()


class EvaluateError(ValueError):
    """The evaluation cannot run on this input; the message says why."""


@dataclass
class EvaluationRun:
    """Everything the evaluate job computed (the pipeline writes it out)."""

    config: RunConfig
    landmark_set: pd.DataFrame
    predictions: dict[str, pd.DataFrame]
    result: Any
    best_model: str
    explanation: Any = None
    best_curves: Any = None
    timings_seconds: dict[str, float] = field(default_factory=dict)


def progress_bar(console: Console | None = None) -> Progress:
    """The jobs' rich progress display: description, bar, done/total, elapsed time.

    Parameters
    ----------
    console : Console, optional
        Where to draw (default: this module's stdout console).

    Returns
    -------
    rich.progress.Progress
    """
    return Progress(TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console or _console)


@dataclass(frozen=True)
class PreparedCohort:
    """A loaded cohort, its validation result and its landmark set (shared by train and evaluate)."""

    cohort: Any
    """``pipelines.train.CohortData``: the tables as read, their source names and the oracle (or None)."""
    validated: Any
    """``features.contract.validate_cohort``'s result (validated tables and quarantines)."""
    landmark_set: pd.DataFrame


def prepare_landmark_set(config: RunConfig, on_step: Callable[[], None] | None = None,
                         empty_error: type[Exception] = EvaluateError) -> PreparedCohort:
    """Load the configured cohort, validate it and build its landmark set.

    Parameters
    ----------
    config : RunConfig
        Its ``data`` section says what to load and how to treat bad rows; ``features`` how to
        build the landmark set.
    on_step : callable, optional
        Called after each of the three steps (load, validate, landmark set), for progress bars.
    empty_error : exception type
        Raised when no row survives (no patient in remission and event-free at any landmark).

    Returns
    -------
    PreparedCohort

    Raises
    ------
    pipelines.train.TrainError, ContractError, FeaturesJobError
        Bad input, as raised by the load, validation and feature steps.
    """
    from pipelines.build_features import landmark_set_from_config
    from pipelines.train import load_cohort

    step = on_step if on_step is not None else (lambda: None)
    cohort = load_cohort(config.data)
    step()
    validated = validate_cohort(cohort.infusions, cohort.measurements, cohort.outcomes,
                                on_error=config.data.on_error, source_names=cohort.source_names)
    step()
    landmark_set = landmark_set_from_config(validated.infusions, validated.measurements, validated.outcomes,
                                            config.features)
    if landmark_set.empty:
        raise empty_error("the landmark set is empty: no patient is in remission and event-free at any landmark")
    step()
    return PreparedCohort(cohort, validated, landmark_set)


def _landmark_set(config: RunConfig, progress: Progress) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Load, validate and build the landmark set; returns it with the oracle (None if unknown)."""
    from pipelines.build_features import FeaturesJobError
    from pipelines.train import TrainError

    task = progress.add_task("cohort, validation, landmark set", total=3)
    try:
        prepared = prepare_landmark_set(config, on_step=lambda: progress.advance(task))
    except (TrainError, FeaturesJobError) as exc:
        raise EvaluateError(str(exc)) from None
    return prepared.landmark_set, prepared.cohort.oracle


def cv_splits(landmark_set: pd.DataFrame, config: RunConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds of the landmark set, grouped as ``config.evaluation.group_by`` says.

    Parameters
    ----------
    landmark_set : DataFrame
    config : RunConfig

    Returns
    -------
    list of (train positions, test positions)
        Grouped by patient (``cv_folds`` folds) or one fold per held-out site.
    """
    from models.validation import grouped_splits

    return grouped_splits(landmark_set, config.evaluation.cv_folds, config.evaluation.group_by,
                          config.models.random_state)


def cross_validated_sources(landmark_set: pd.DataFrame, oracle: pd.DataFrame | None, config: RunConfig,
                            splits: Sequence[tuple[np.ndarray, np.ndarray]],
                            on_fold: Callable[[int], None] | None = None) -> dict[str, pd.DataFrame]:
    """Out-of-fold cumulative incidences of every candidate and the rule, plus the oracle's.

    Parameters
    ----------
    landmark_set : DataFrame
        Features, ``patient_id``, ``landmark_day``, ``time``, ``event``.
    oracle : DataFrame or None
        Ground-truth risks of a simulated cohort; only turned into the ``oracle`` source, never
        shown to a model.
    config : RunConfig
        Candidates, their parameters and the horizons.
    splits : sequence of (train, test) positions
        From :func:`cv_splits`.
    on_fold : callable, optional
        Called after every fold of every model (progress reporting).

    Returns
    -------
    dict
        Source name -> prediction frame indexed like ``landmark_set``.
    """
    from models.factory import BASELINE_NAME, make_model
    from models.oracle import oracle_predictions
    from models.validation import cross_validated_cif

    X, y = landmark_set[feature_columns(landmark_set)], landmark_set[["time", "event"]]
    horizons = [float(h) for h in config.evaluation.horizons_days]
    predictions = {}
    for name in [*config.models.candidates, BASELINE_NAME]:
        model = make_model(name, config.models.params.get(name), config.models.random_state)
        predictions[name] = cross_validated_cif(model, X, y, splits, horizons, on_fold=on_fold)
    if oracle is not None:
        predictions[ORACLE] = oracle_predictions(landmark_set[["patient_id", "landmark_day"]], oracle, horizons)
    return predictions


def _cross_validated_predictions(landmark_set: pd.DataFrame, oracle: pd.DataFrame | None, config: RunConfig,
                                 progress: Progress) -> dict[str, pd.DataFrame]:
    splits = cv_splits(landmark_set, config)
    n_sources = len(config.models.candidates) + 1
    task = progress.add_task(f"cross-validation ({n_sources} sources)", total=n_sources * len(splits))
    return cross_validated_sources(landmark_set, oracle, config, splits, on_fold=lambda _fold: progress.advance(task))


def evaluation_settings(config: RunConfig):
    """The :class:`models.evaluation.EvaluationSettings` of a run config (reference source: the rule).

    Parameters
    ----------
    config : RunConfig

    Returns
    -------
    models.evaluation.EvaluationSettings
    """
    from models.evaluation import EvaluationSettings

    evaluation = config.evaluation
    return EvaluationSettings(
        horizons_days=tuple(float(h) for h in evaluation.horizons_days),
        endpoints=tuple(evaluation.endpoints),
        n_bootstrap=evaluation.bootstrap,
        bootstrap_endpoints=tuple(evaluation.bootstrap_endpoints),
        reference=RULE,
        calibration_groups=evaluation.calibration_groups,
        random_state=config.models.random_state,
    )


def evaluate_landmark_set(landmark_set: pd.DataFrame, predictions: Mapping[str, pd.DataFrame], config: RunConfig):
    """Score every source on the same rows of the landmark set (models.evaluation.evaluate_sources).

    Parameters
    ----------
    landmark_set : DataFrame
        Needs ``patient_id``, ``landmark_day``, ``time``, ``event``.
    predictions : mapping
        Source name -> prediction frame indexed like ``landmark_set``.
    config : RunConfig

    Returns
    -------
    models.evaluation.EvaluationResult
    """
    from models.evaluation import evaluate_sources

    targets = landmark_set[["patient_id", "landmark_day", "time", "event"]]
    return evaluate_sources(targets, predictions, evaluation_settings(config))


def _explain_best(run: EvaluationRun, progress: Progress) -> None:
    """Refit the best candidate on every row; SHAP of its relapse risk; curves for the CIF plot."""
    from models.explain import explain_relapse_risk
    from models.factory import make_model

    config, landmark_set = run.config, run.landmark_set
    task = progress.add_task(f"refit + SHAP: {run.best_model}", total=2)
    X, y = landmark_set[feature_columns(landmark_set)], landmark_set[["time", "event"]]
    model = make_model(run.best_model, config.models.params.get(run.best_model), config.models.random_state)
    model.fit(X, y)
    progress.advance(task)
    run.explanation = explain_relapse_risk(
        model, X, horizon_days=config.evaluation.shap_horizon_days, n_background=config.evaluation.shap_background,
        max_rows=config.evaluation.shap_max_rows, random_state=config.models.random_state)
    run.best_curves = (model.predict_cif_curves(run.explanation.data), run.explanation.data.index)
    progress.advance(task)


def evaluate_config(config: RunConfig) -> EvaluationRun:
    """Run steps 1-4 of the job (see module docstring) and return what was computed."""
    from models.evaluation import best_source

    timings: dict[str, float] = {}
    with progress_bar() as progress, threadpool_limits(1, user_api="blas"):
        start = time.perf_counter()
        landmark_set, oracle = _landmark_set(config, progress)
        timings["data"] = time.perf_counter() - start
        predictions = _cross_validated_predictions(landmark_set, oracle, config, progress)
        timings["cross_validation"] = time.perf_counter() - start - sum(timings.values())
        task = progress.add_task("metrics + bootstrap", total=1)
        result = evaluate_landmark_set(landmark_set, predictions, config)
        progress.advance(task)
        timings["metrics"] = time.perf_counter() - start - sum(timings.values())
        best = best_source(result.metrics, config.models.candidates, config.evaluation.selection_metric)
        run = EvaluationRun(config, landmark_set, predictions, result, best, timings_seconds=timings)
        _explain_best(run, progress)
        timings["explain"] = time.perf_counter() - start - sum(timings.values())
    return run


def _clean(value: Any) -> Any:
    """JSON-safe value: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _results(metrics: pd.DataFrame) -> list[dict]:
    """Metrics grouped by (landmark, endpoint, horizon, metric), sources side by side."""
    records = []
    keys = ["landmark_day", "endpoint", "horizon_days", "metric"]
    for key, group in metrics.groupby(keys, sort=False, dropna=False):
        entry = {name: _clean(value) for name, value in zip(keys, key)}
        entry.update(n_rows=_clean(group["n_rows"].iloc[0]), n_events=_clean(group["n_events"].iloc[0]))
        for kind, target in (("estimate", "sources"), ("difference", "differences")):
            entry[target] = {row.source: {"value": _clean(row.value), "ci_low": _clean(row.ci_low),
                                          "ci_high": _clean(row.ci_high)}
                             for row in group[group["kind"] == kind].itertuples()}
        records.append(entry)
    return records


def _calibration(calibration: pd.DataFrame) -> list[dict]:
    records = []
    keys = ["landmark_day", "endpoint", "horizon_days", "source"]
    for key, group in calibration.groupby(keys, sort=False):
        groups = [{column: _clean(value) for column, value in row.items()}
                  for row in group[["group", "n_rows", "n_events", "predicted", "observed"]].to_dict("records")]
        records.append({**{name: _clean(value) for name, value in zip(keys, key)}, "groups": groups})
    return records


def _data_summary(landmark_set: pd.DataFrame, result) -> dict:
    counts = pd.crosstab(landmark_set["landmark_day"], landmark_set["event"])
    return {
        "n_rows": int(len(landmark_set)),
        "n_patients": int(landmark_set["patient_id"].nunique()),
        "events_by_landmark": {f"{day:g}": {event: int(n) for event, n in row.items()} for day, row in counts.iterrows()},
        "rows_scored": result.n_rows_scored,
        "rows_dropped_without_prediction": result.n_rows_dropped,
    }


def metrics_payload(run: EvaluationRun) -> dict:
    """The ``metrics.json`` document of an evaluation run."""
    from models.evaluation import summary_by_source
    from models.explain import global_importance

    summary = summary_by_source(run.result.metrics)
    payload = {
        "config": run.config.model_dump(mode="json", include={"data", "features", "models", "evaluation"}),
        "data": _data_summary(run.landmark_set, run.result),
        "best_model": run.best_model,
        "selection_metric": run.config.evaluation.selection_metric,
        "summary_relapse_all_landmarks": {source: {m: _clean(v) for m, v in row.items()}
                                          for source, row in summary.iterrows()},
        "results": _results(run.result.metrics),
        "calibration": _calibration(run.result.calibration),
        "timings_seconds": {k: round(v, 1) for k, v in run.timings_seconds.items()},
    }
    if run.explanation is not None:
        importance = global_importance(run.explanation).head(20)
        payload["shap"] = {"model": run.best_model, "output": run.explanation.output, "method": run.explanation.method,
                           "mean_abs_shap": {r.feature: _clean(r.mean_abs_shap) for r in importance.itertuples()}}
    return payload


def _headline_horizon(config: RunConfig) -> float:
    horizons = [float(h) for h in config.evaluation.horizons_days]
    return 365.0 if 365.0 in horizons else horizons[len(horizons) // 2]


def _figures(run: EvaluationRun) -> dict[str, Any]:
    from models.explain import plot_beeswarm, plot_importance_bar, plot_waterfall
    from models.plots import plot_calibration, plot_cif_curves, plot_metric_by_landmark

    horizon = _headline_horizon(run.config)
    sources = [run.best_model, ORACLE, RULE] if ORACLE in run.predictions else [run.best_model, RULE]
    figures = {
        "uno_c_by_landmark": plot_metric_by_landmark(run.result.metrics, "uno_c", horizon,
                                                     sources=[*run.config.models.candidates, *sources[1:]]),
        "calibration_relapse": plot_calibration(run.result.calibration, horizon, sources=sources),
    }
    if run.explanation is not None:
        explanation = run.explanation
        highest = int(np.argmax(explanation.values.sum(axis=1)))
        figures["shap_summary"] = plot_beeswarm(explanation, title=f"SHAP: {run.best_model}")
        figures["shap_importance"] = plot_importance_bar(explanation, title=f"SHAP importance: {run.best_model}")
        figures["shap_waterfall_highest_risk"] = plot_waterfall(explanation, highest)
        curves, index = run.best_curves
        order = np.argsort(curves.relapse[:, -1])
        picks = [int(order[int(q * (len(order) - 1))]) for q in (0.1, 0.5, 0.9)]
        figures["cif_curves"] = plot_cif_curves(curves, picks, [f"{q} risk (row {index[p]})" for q, p in
                                                                 zip(("low", "median", "high"), picks)])
    return figures


def write_outputs(run: EvaluationRun, out_dir: Path) -> list[Path]:
    """Write ``metrics.json`` and every plot (PNG) to ``out_dir``.

    Parameters
    ----------
    run : EvaluationRun
        From :func:`evaluate_config`.
    out_dir : Path
        Created when missing; existing files of the same names are overwritten.

    Returns
    -------
    list of Path
        The written files, ``metrics.json`` first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "metrics.json"]
    written[0].write_text(json.dumps(metrics_payload(run), indent=2) + "\n")
    for name, figure in _figures(run).items():
        path = out_dir / f"{name}.png"
        figure.savefig(path, dpi=110)
        written.append(path)
    return written


def _headline_table(run: EvaluationRun):
    """Uno's C of relapse at the headline horizon per landmark: every source, and best - rule."""
    from rich.table import Table

    horizon = _headline_horizon(run.config)
    metrics = run.result.metrics
    rows = metrics[(metrics["metric"] == "uno_c") & (metrics["endpoint"] == "relapse")
                   & np.isclose(metrics["horizon_days"].astype(float), horizon)]
    shown = [*run.config.models.candidates, ORACLE, RULE, f"{run.best_model} - {RULE}"]
    table = Table(title=f"Uno's C, relapse at {horizon:g} days [95% CI]; best model: {run.best_model}")
    landmarks = list(dict.fromkeys(rows["landmark_day"]))
    table.add_column("source")
    for landmark in landmarks:
        table.add_column(landmark if isinstance(landmark, str) else f"day {landmark:g}", justify="right")
    for source in shown:
        cells = []
        for landmark in landmarks:
            row = rows[(rows["source"] == source) & (rows["landmark_day"] == landmark)]
            cells.append("" if row.empty else f"{row['value'].iloc[0]:.3f} "
                                              f"[{row['ci_low'].iloc[0]:.3f}, {row['ci_high'].iloc[0]:.3f}]")
        if any(cells):
            table.add_row(source, *cells)
    return table


_INPUT_ERRORS = (ConfigError, ContractError, CohortIOError, FeatureInputError, ModelInputError, EvaluateError)


def run_evaluate(config_path: Path, out_dir: Path) -> EvaluationRun:
    """CLI entry: evaluate the configured candidates and write metrics.json and plots to ``out_dir``.

    Parameters
    ----------
    config_path : Path
        Run config (YAML).
    out_dir : Path
        Output folder.

    Returns
    -------
    EvaluationRun

    Raises
    ------
    typer.Exit
        Code 2 after printing the reason, for bad input.
    """
    errors = Console(stderr=True)
    try:
        config = load_config(Path(config_path))
        run = evaluate_config(config)
        written = write_outputs(run, out_dir)
    except _INPUT_ERRORS as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    _console.print(_headline_table(run))
    _console.print(f"best model: {run.best_model}; wrote {len(written)} files to {out_dir}", markup=False)
    return run
