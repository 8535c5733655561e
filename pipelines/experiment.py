"""The steps ``car-relapse train`` and ``car-relapse evaluate`` share.

1. :func:`load_cohort`: the cohort the config names (the embedded synthetic cohort, simulated
   with its oracle, or a folder in the data contract, with an ``oracle.parquet`` when present);
2. :func:`prepare_landmark_set`: validate it (the data contract) and build the landmark set;
3. :func:`cross_validate`: grouped cross-validation of every candidate and the clinicians' rule
   (out-of-fold cumulative incidences; nested for recalibrated candidates, whose base model is
   then scored too), the oracle's risks for the same rows, and the metrics of every source side
   by side (``models.evaluation``);
4. :func:`summarise_metrics` and :func:`select_winner`: the named figures selection and the gate
   read, and the winner (best ``evaluation.selection_metric`` among the candidates within
   ``evaluation.selection_bounds``); :func:`calibration_figures`, the calibration plots both jobs
   write;
5. :func:`refit` and :func:`explain`: the chosen candidate refitted on every row, and the SHAP
   explanation of its relapse risk.

Both jobs draw the same progress bars (:func:`progress_bar`) and raise :class:`CohortError` when the
configured cohort cannot be used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from features.contract import ValidatedCohort, validate_cohort
from features.landmarks import feature_columns
from pipelines.config import DataConfig, RunConfig, selection_thresholds

__all__ = [
    "ORACLE",
    "RULE",
    "calibration_by_cause_figure",
    "calibration_figures",
    "CohortData",
    "CohortError",
    "PreparedCohort",
    "cross_validate",
    "cross_validated_sources",
    "cv_splits",
    "dataset_hash",
    "evaluate_landmark_set",
    "evaluation_settings",
    "explain",
    "incidence_figure",
    "load_cohort",
    "n_fits",
    "prepare_landmark_set",
    "progress_bar",
    "refit",
    "select_winner",
    "summarise_metrics",
]

ORACLE, RULE = "oracle", "rule"


class CohortError(ValueError):
    """The configured cohort cannot be used (no outcomes to train on, no row in any landmark set)."""


@dataclass(frozen=True)
class CohortData:
    """Raw cohort tables, where they came from, and the oracle when known (evaluation only).

    ``folder`` is the cohort folder the tables were read from (None: simulated or in memory).
    """

    infusions: pd.DataFrame
    measurements: pd.DataFrame
    outcomes: pd.DataFrame
    source_names: dict[str, str]
    description: str
    oracle: pd.DataFrame | None = None
    folder: Path | None = None


@dataclass(frozen=True)
class PreparedCohort:
    """A loaded cohort, its validation result and its landmark set."""

    cohort: CohortData
    validated: ValidatedCohort
    landmark_set: pd.DataFrame

    @property
    def columns(self) -> list[str]:
        """The model inputs of the landmark set (``features.landmarks.feature_columns``)."""
        return feature_columns(self.landmark_set)


def progress_bar(console: Console | None = None) -> Progress:
    """The jobs' rich progress display: description, bar, done/total, elapsed time.

    Parameters
    ----------
    console : Console, optional
        Where to draw (default: a console on stdout).

    Returns
    -------
    rich.progress.Progress
    """
    return Progress(TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console or Console())


# --- cohort ---------------------------------------------------------------------------------------
def load_cohort(data: DataConfig) -> CohortData:
    """The cohort the config names: simulated (with its oracle) or read from a folder.

    Parameters
    ----------
    data : DataConfig

    Returns
    -------
    CohortData

    Raises
    ------
    CohortError
        A folder without an ``outcomes`` table (training and evaluation need outcomes).
    pipelines.io.CohortIOError
        A folder that cannot be read.
    """
    if data.source == "synthetic":
        from pipelines.simulate import simulate_cohort

        synthetic = data.synthetic
        cohort = simulate_cohort(synthetic.n_patients, synthetic.seed, with_oracle=synthetic.with_oracle)
        names = {table: table for table in ("infusions", "measurements", "outcomes")}
        description = f"synthetic (n_patients={synthetic.n_patients}, seed={synthetic.seed})"
        return CohortData(cohort.infusions, cohort.measurements, cohort.outcomes, names, description, cohort.oracle)
    from pipelines.io import read_cohort_folder, read_table

    if data.input_dir is None:
        raise CohortError("data.input_dir: required when data.source is 'folder'")
    files = read_cohort_folder(data.input_dir)
    if "outcomes" not in files.tables:
        raise CohortError(f"{data.input_dir}: training needs an outcomes table (outcomes.csv or outcomes.parquet)")
    oracle_file = Path(data.input_dir) / "oracle.parquet"
    oracle = read_table(oracle_file) if oracle_file.is_file() else None
    tables = files.tables
    return CohortData(tables["infusions"], tables["measurements"], tables["outcomes"], files.source_names,
                      f"folder {data.input_dir}", oracle, Path(data.input_dir))


def _canonical_csv(frame: pd.DataFrame, keys: Sequence[str]) -> bytes:
    ordered = frame.reindex(columns=sorted(frame.columns))
    ordered = ordered.sort_values([k for k in keys if k in ordered.columns], kind="stable")
    return ordered.to_csv(index=False, lineterminator="\n", na_rep="").encode()


def dataset_hash(infusions: pd.DataFrame, measurements: pd.DataFrame, outcomes: pd.DataFrame) -> str:
    """sha256 of the validated tables in a canonical form (sorted columns and rows, CSV text).

    Row order and column order in the input files do not change the hash; any value does.

    Parameters
    ----------
    infusions, measurements, outcomes : DataFrame
        The validated tables.

    Returns
    -------
    str
        64 hex digits.
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


def prepare_landmark_set(config: RunConfig, progress: Progress | None = None,
                         cohort: CohortData | None = None) -> PreparedCohort:
    """Load the configured cohort, validate it and build its landmark set.

    Parameters
    ----------
    config : RunConfig
        Its ``data`` section says what to load and how to treat bad rows; ``features`` how to
        build the landmark set.
    progress : rich.progress.Progress, optional
        Gets a task advanced after each of the three steps (load, validate, landmark set).
    cohort : CohortData, optional
        Tables already in memory (``pipelines.api``); then ``data.source`` and ``data.input_dir``
        are not used.

    Returns
    -------
    PreparedCohort

    Raises
    ------
    CohortError
        No outcomes table, or no row survives (no patient in remission and event-free at any
        landmark).
    features.contract.ContractError, pipelines.io.CohortIOError, pipelines.build_features.FeaturesJobError
        Bad input, as raised by the load, validation and feature steps.
    """
    from pipelines.build_features import landmark_set_from_config

    task = None if progress is None else progress.add_task("cohort, validation, landmark set", total=3)

    def step() -> None:
        if progress is not None and task is not None:
            progress.advance(task)

    cohort = load_cohort(config.data) if cohort is None else cohort
    step()
    validated = validate_cohort(cohort.infusions, cohort.measurements, cohort.outcomes,
                                on_error=config.data.on_error, source_names=cohort.source_names)
    step()
    landmark_set = landmark_set_from_config(validated.infusions, validated.measurements, validated.outcomes,
                                            config.features)
    if landmark_set.empty:
        raise CohortError("the landmark set is empty: no patient is in remission and event-free at any landmark")
    step()
    return PreparedCohort(cohort, validated, landmark_set)


# --- cross-validation and evaluation --------------------------------------------------------------
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


def _model(config: RunConfig, name: str):
    """Candidate or rule ``name`` with the config's parameters (a recalibrated candidate takes its
    base's parameters plus its own ``knots_days`` / ``prior_sd`` / ``cv``)."""
    from models.factory import base_model_name, make_model

    base = base_model_name(name)
    params = {**config.models.params.get(base, {}), **config.models.params.get(name, {})} if base != name \
        else config.models.params.get(name)
    return make_model(name, params, config.models.random_state)


def n_fits(config: RunConfig, n_folds: int) -> int:
    """Model fits :func:`cross_validated_sources` makes (for a progress bar): one per fold per
    source, plus one per pair of folds for each recalibrated candidate (nested CV)."""
    from models.factory import base_model_name

    recalibrated = {name for name in config.models.candidates if base_model_name(name) != name}
    plain = {name for name in config.models.candidates if name not in recalibrated} \
        - {base_model_name(name) for name in recalibrated}
    return (len(plain) + 1 + len(recalibrated)) * n_folds + len(recalibrated) * n_folds * (n_folds - 1) // 2


def cross_validated_sources(landmark_set: pd.DataFrame, oracle: pd.DataFrame | None, config: RunConfig,
                            splits: Sequence[tuple[np.ndarray, np.ndarray]],
                            on_fit: Callable[[], None] | None = None) -> dict[str, pd.DataFrame]:
    """Out-of-fold cumulative incidences of every candidate and the rule, plus the oracle's.

    A recalibrated candidate (``xgb_cox_recal``) is scored by nested cross-validation
    (``models.recalibration.cross_validated_recalibrated_cif``); its base model's out-of-fold
    predictions come out of the same fits and are returned under the base name too (the
    "before" of the recalibration, and what :func:`refit` fits the final map on).

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
    on_fit : callable, optional
        Called after every model fit (progress reporting; :func:`n_fits` in all).

    Returns
    -------
    dict
        Source name -> prediction frame indexed like ``landmark_set``: the candidates (and base
        models of recalibrated ones) in config order, the rule, the oracle.
    """
    from models.factory import BASELINE_NAME, RECALIBRATED_SUFFIX, base_model_name
    from models.oracle import oracle_predictions
    from models.recalibration import cross_validated_recalibrated_cif
    from models.validation import cross_validated_cif

    X, y = landmark_set[feature_columns(landmark_set)], landmark_set[["time", "event"]]
    horizons = [float(h) for h in config.evaluation.horizons_days]
    on_fold = None if on_fit is None else (lambda _fold: on_fit())
    predictions: dict[str, pd.DataFrame] = {}
    for name in [*config.models.candidates, BASELINE_NAME]:
        base = base_model_name(name)
        if base != name:
            predictions[base], predictions[name] = cross_validated_recalibrated_cif(_model(config, name), X, y, splits,
                                                                                    horizons, on_fit=on_fit)
        elif name + RECALIBRATED_SUFFIX not in config.models.candidates:
            predictions[name] = cross_validated_cif(_model(config, name), X, y, splits, horizons, on_fold=on_fold)
    order = [*dict.fromkeys(base_model_name(name) for name in config.models.candidates), *config.models.candidates,
             BASELINE_NAME]
    predictions = {name: predictions[name] for name in dict.fromkeys(order)}
    if oracle is not None:
        predictions[ORACLE] = oracle_predictions(landmark_set[["patient_id", "landmark_day"]], oracle, horizons)
    return predictions


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


def evaluate_landmark_set(landmark_set: pd.DataFrame, predictions: dict[str, pd.DataFrame], config: RunConfig):
    """Score every source on the same rows of the landmark set (models.evaluation.evaluate_sources).

    Parameters
    ----------
    landmark_set : DataFrame
        Needs ``patient_id``, ``landmark_day``, ``time``, ``event``.
    predictions : dict
        Source name -> prediction frame indexed like ``landmark_set``.
    config : RunConfig

    Returns
    -------
    models.evaluation.EvaluationResult
    """
    from models.evaluation import evaluate_sources

    targets = landmark_set[["patient_id", "landmark_day", "time", "event"]]
    return evaluate_sources(targets, predictions, evaluation_settings(config))


def cross_validate(config: RunConfig, prepared: PreparedCohort, progress: Progress) -> tuple[dict[str, pd.DataFrame], Any]:
    """Out-of-fold predictions of every source and their metrics, with a progress bar per step.

    Parameters
    ----------
    config : RunConfig
    prepared : PreparedCohort
    progress : rich.progress.Progress

    Returns
    -------
    predictions : dict
        Source name -> out-of-fold prediction frame (:func:`cross_validated_sources`).
    evaluation : models.evaluation.EvaluationResult
        Every source scored on the same rows (:func:`evaluate_landmark_set`).
    """
    splits = cv_splits(prepared.landmark_set, config)
    n_sources = len(config.models.candidates) + 1
    task = progress.add_task(f"cross-validation ({n_sources} sources)", total=n_fits(config, len(splits)))
    predictions = cross_validated_sources(prepared.landmark_set, prepared.cohort.oracle, config, splits,
                                          on_fit=lambda: progress.advance(task))
    task = progress.add_task(f"metrics (bootstrap {config.evaluation.bootstrap})", total=1)
    evaluation = evaluate_landmark_set(prepared.landmark_set, predictions, config)
    progress.advance(task)
    return predictions, evaluation


# --- selection ------------------------------------------------------------------------------------
def summarise_metrics(metrics: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per source, the named figures selection and the registration gate read.

    The relapse headline metrics over all landmarks averaged over the horizons
    (``models.evaluation.summary_by_source``: ``uno_c``, ``ibs``, ...) and the calibration figures
    (``models.evaluation.calibration_summary``: ``oe/relapse/lm28/h365``, ``slope/...``,
    ``ibs/death``, ...).

    Parameters
    ----------
    metrics : DataFrame
        ``EvaluationResult.metrics``.

    Returns
    -------
    dict
        Source -> {name: value}.
    """
    from models.evaluation import calibration_summary, summary_by_source

    table = summary_by_source(metrics)
    summary = {str(source): {str(m): float(v) for m, v in row.items()} for source, row in table.iterrows()}
    for source, values in calibration_summary(metrics).items():
        summary.setdefault(source, {}).update(values)
    return summary


def select_winner(config: RunConfig, summary: dict[str, dict[str, float]]):
    """The candidate with the best ``evaluation.selection_metric`` among those within
    ``evaluation.selection_bounds`` at every landmark and horizon (none within: the least outside).

    Parameters
    ----------
    config : RunConfig
    summary : dict
        From :func:`summarise_metrics`.

    Returns
    -------
    models.evaluation.Selection
    """
    from models.evaluation import select_candidate

    minimums, maximums = selection_thresholds(config)
    return select_candidate(summary, config.models.candidates, config.evaluation.selection_metric, minimums, maximums)


# --- calibration figures (aggregates only) ----------------------------------------------------------
def incidence_figure(landmark_set: pd.DataFrame, predicted: pd.DataFrame, horizons_days: Sequence[float]):
    """Observed (Aalen-Johansen, lines) vs mean out-of-fold predicted (markers) cumulative incidence
    per cause, one panel per landmark (``models.plots.plot_incidence_over_time``)."""
    from models.plots import plot_incidence_over_time

    return plot_incidence_over_time(landmark_set[["landmark_day", "time", "event"]], predicted, horizons_days)


def _selection_band(config: RunConfig) -> tuple[float, float] | None:
    """The relapse O/E selection bounds, shaded in the calibration-by-cause figure."""
    bounds = config.evaluation.selection_bounds.get("observed_expected", {})
    return tuple(bounds["relapse"]) if "relapse" in bounds else None  # type: ignore[return-value]


def calibration_figures(config: RunConfig, predictions: Mapping[str, pd.DataFrame], metrics: pd.DataFrame,
                        calibration: pd.DataFrame, landmark_set: pd.DataFrame, winner: str) -> dict[str, Any]:
    """The calibration figures both jobs write: relapse by risk decile, O/E by cause, landmark and
    horizon, and the cumulative incidence over time; the winner next to its base model (when it
    is recalibrated), the rule and the oracle (when known)."""
    from models.plots import plot_calibration

    horizon = float(config.registry.risk_group_horizon_days)
    horizons = [float(h) for h in config.evaluation.horizons_days]
    return {
        "calibration_relapse": plot_calibration(calibration, horizon, sources=_shown_sources(winner, predictions)),
        "calibration_by_cause": calibration_by_cause_figure(config, metrics, winner, predictions),
        "cumulative_incidence": incidence_figure(landmark_set, predictions[winner], horizons),
    }


def _shown_sources(winner: str, available: Collection[str]) -> list[str]:
    from models.factory import base_model_name

    return [s for s in dict.fromkeys((winner, base_model_name(winner), RULE, ORACLE)) if s in available]


def calibration_by_cause_figure(config: RunConfig, metrics: pd.DataFrame, winner: str, available: Collection[str]):
    """Observed/expected with CIs per cause, landmark and horizon (``models.plots.plot_calibration_by_cause``):
    the winner, its base model (when recalibrated), the rule and the oracle, those of them in
    ``available``; shaded, the relapse O/E selection bounds."""
    from models.plots import plot_calibration_by_cause

    return plot_calibration_by_cause(metrics, _shown_sources(winner, available), config.evaluation.endpoints,
                                     band=_selection_band(config))


# --- the chosen candidate -------------------------------------------------------------------------
def refit(config: RunConfig, prepared: PreparedCohort, name: str, predictions: dict[str, pd.DataFrame] | None = None):
    """Candidate ``name`` (with the config's parameters) fitted on every row of the landmark set.

    Parameters
    ----------
    config : RunConfig
    prepared : PreparedCohort
    name : str
        A name of ``models.factory.CANDIDATE_NAMES``.
    predictions : dict, optional
        Out-of-fold predictions of the cross-validation (:func:`cross_validated_sources`): a
        recalibrated candidate fits its map on its base model's (with the knots' columns), else it
        runs its own inner cross-validation grouped by patient.

    Returns
    -------
    The fitted model.
    """
    from models.base import cif_columns
    from models.factory import base_model_name

    model = _model(config, name)
    X, y = prepared.landmark_set[prepared.columns], prepared.landmark_set[["time", "event"]]
    base = base_model_name(name)
    if base == name:
        return model.fit(X, y)
    out_of_fold = (predictions or {}).get(base)
    if out_of_fold is not None and not set(cif_columns(model.knots_days)) <= set(out_of_fold.columns):
        out_of_fold = None
    return model.fit(X, y, groups=prepared.landmark_set["patient_id"].astype(str).to_numpy(), out_of_fold=out_of_fold)


def explain(config: RunConfig, model, prepared: PreparedCohort):
    """SHAP explanation of the model's relapse risk at ``evaluation.shap_horizon_days``.

    Parameters
    ----------
    config : RunConfig
        ``evaluation.shap_*`` settings and the random state.
    model : fitted model
    prepared : PreparedCohort
        The rows to explain (a sample of at most ``shap_max_rows`` for model-agnostic SHAP).

    Returns
    -------
    models.explain.Explanation
    """
    from models.explain import explain_relapse_risk

    evaluation = config.evaluation
    return explain_relapse_risk(
        model, prepared.landmark_set[prepared.columns], horizon_days=float(evaluation.shap_horizon_days),
        n_background=evaluation.shap_background, max_rows=evaluation.shap_max_rows,
        random_state=config.models.random_state,
    )
