"""The ``evaluate`` job: every candidate vs the oracle vs the clinicians' rule, with CIs and plots.

``car-relapse evaluate --config FILE --out DIR``:

1. load the cohort the config names (simulated with its oracle, or a folder; an
   ``oracle.parquet`` in the folder is used when present), validate it and build the landmark set;
2. grouped cross-validation (by patient, or leave-one-center-out) of every candidate and the rule:
   out-of-fold cumulative incidences for every row;
3. score models, oracle and rule on the same rows (models.evaluation): per landmark, endpoint and
   horizon, with patient-bootstrap CIs and paired differences vs the rule;
4. pick the best candidate (``evaluation.selection_metric`` among the candidates within
   ``evaluation.selection_bounds``), refit it on all rows and explain it (SHAP);
5. write ``metrics.json`` and the plots (PNG) to DIR, including the calibration by cause,
   landmark and horizon.

Bad input (config, cohort, contract) ends with a clear message and exit code 2.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from threadpoolctl import threadpool_limits

from features.contract import ContractError
from features.registry import FeatureInputError
from models.base import ModelInputError
from pipelines.build_features import FeaturesJobError
from pipelines.config import ConfigError, RunConfig, check_config, load_config
from pipelines.decisions import write_decision_curves
from pipelines.experiment import (
    ORACLE,
    RULE,
    CohortError,
    PreparedCohort,
    calibration_figures,
    cross_validate,
    explain,
    prepare_landmark_set,
    progress_bar,
    refit,
    select_winner,
    summarise_metrics,
)
from pipelines.io import CohortIOError
from pipelines.validate import EXIT_BAD_INPUT

__all__ = [
    "EXIT_BAD_INPUT",
    "EvaluationRun",
    "evaluate_config",
    "metrics_payload",
    "run_evaluate",
    "write_outputs",
]

_console = Console()


@dataclass
class EvaluationRun:
    """Everything the evaluate job computed (the pipeline writes it out)."""

    config: RunConfig
    landmark_set: pd.DataFrame
    predictions: dict[str, pd.DataFrame]
    result: Any
    best_model: str
    selection: Any = None
    explanation: Any = None
    best_curves: Any = None
    timings_seconds: dict[str, float] = field(default_factory=dict)


def _explain_best(run: EvaluationRun, prepared: PreparedCohort, progress: Progress) -> None:
    """Refit the best candidate on every row; SHAP of its relapse risk; curves for the CIF plot."""
    task = progress.add_task(f"refit + SHAP: {run.best_model}", total=2)
    model = refit(run.config, prepared, run.best_model, run.predictions)
    progress.advance(task)
    run.explanation = explain(run.config, model, prepared)
    run.best_curves = (model.predict_cif_curves(run.explanation.data), run.explanation.data.index)
    progress.advance(task)


def evaluate_config(config: RunConfig) -> EvaluationRun:
    """Run steps 1-4 of the job (see module docstring) and return what was computed."""
    check_config(config)
    timings: dict[str, float] = {}
    with progress_bar(_console) as progress, threadpool_limits(1, user_api="blas"):
        start = time.perf_counter()
        prepared = prepare_landmark_set(config, progress)
        timings["data"] = time.perf_counter() - start
        predictions, result = cross_validate(config, prepared, progress)
        timings["cross_validation_and_metrics"] = time.perf_counter() - start - sum(timings.values())
        selection = select_winner(config, summarise_metrics(result.metrics))
        run = EvaluationRun(config, prepared.landmark_set, predictions, result, selection.winner, selection,
                            timings_seconds=timings)
        _explain_best(run, prepared, progress)
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
        "selection": None if run.selection is None else {
            "eligible": list(run.selection.eligible),
            "outside_bounds": {c: list(lines) for c, lines in run.selection.failures.items()}},
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
    from models.plots import plot_cif_curves, plot_metric_by_landmark

    horizon = _headline_horizon(run.config)
    others = [source for source in (ORACLE, RULE) if source in run.predictions]
    figures = {
        "uno_c_by_landmark": plot_metric_by_landmark(run.result.metrics, "uno_c", horizon,
                                                     sources=[*run.config.models.candidates, *others]),
        **calibration_figures(run.config, run.predictions, run.result.metrics, run.result.calibration,
                              run.landmark_set, run.best_model),
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
    """Write ``metrics.json``, every plot (PNG) and the decision curves (pipelines.decisions) to ``out_dir``.

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
    written += write_decision_curves(run.config, run.landmark_set, run.predictions, run.best_model, out_dir)
    return written


def _headline_table(run: EvaluationRun):
    """Uno's C of relapse at the headline horizon per landmark: every source, and best - rule."""
    from rich.table import Table

    horizon = _headline_horizon(run.config)
    metrics = run.result.metrics
    at_horizon = metrics[(metrics["endpoint"] == "relapse") & np.isclose(metrics["horizon_days"].astype(float), horizon)]
    rows = at_horizon[at_horizon["metric"] == "uno_c"]
    mcse = at_horizon[at_horizon["metric"] == "uno_c_mcse"]
    shown = [*run.config.models.candidates, ORACLE, RULE, f"{run.best_model} - {RULE}"]
    table = Table(title=f"Uno's C, relapse at {horizon:g} days [95% CI] (Monte Carlo SE of the oracle); "
                        f"best model: {run.best_model}")
    landmarks = list(dict.fromkeys(rows["landmark_day"]))
    table.add_column("source")
    for landmark in landmarks:
        table.add_column(landmark if isinstance(landmark, str) else f"day {landmark:g}", justify="right")
    for source in shown:
        cells = []
        for landmark in landmarks:
            row = rows[(rows["source"] == source) & (rows["landmark_day"] == landmark)]
            error = mcse[(mcse["source"] == source) & (mcse["landmark_day"] == landmark)]["value"]
            cells.append("" if row.empty else f"{row['value'].iloc[0]:.3f} "
                                              f"[{row['ci_low'].iloc[0]:.3f}, {row['ci_high'].iloc[0]:.3f}]"
                                              + ("" if error.empty else f" ({error.iloc[0]:.4f})"))
        if any(cells):
            table.add_row(source, *cells)
    return table


def _calibration_table(run: EvaluationRun):
    """Observed/expected of the best model per endpoint (rows) and landmark (columns), each cell
    the horizons in order."""
    from rich.table import Table

    metrics = run.result.metrics
    rows = metrics[(metrics["metric"] == "observed_expected") & (metrics["source"] == run.best_model)
                   & (metrics["kind"] == "estimate") & (metrics["landmark_day"].astype(str) != "all")]
    horizons = [float(h) for h in run.config.evaluation.horizons_days]
    landmarks = sorted(rows["landmark_day"].astype(float).unique())
    table = Table(title=f"Observed/expected, {run.best_model}, at {' / '.join(f'{h:g}' for h in horizons)} days")
    table.add_column("endpoint")
    for landmark in landmarks:
        table.add_column(f"day {landmark:g}", justify="right")
    for endpoint in dict.fromkeys(rows["endpoint"]):
        part = rows[rows["endpoint"] == endpoint]
        cells = []
        for landmark in landmarks:
            values = part[part["landmark_day"].astype(float) == landmark].set_index("horizon_days")["value"]
            cells.append(" ".join(f"{values.get(h, np.nan):.2f}" for h in horizons))
        table.add_row(endpoint, *cells)
    return table


_INPUT_ERRORS = (ConfigError, ContractError, CohortIOError, CohortError, FeatureInputError, FeaturesJobError,
                 ModelInputError)


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
    _console.print(_calibration_table(run))
    _console.print(f"best model: {run.best_model}; wrote {len(written)} files to {out_dir}", markup=False)
    return run
