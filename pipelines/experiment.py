"""The steps ``car-relapse train`` and ``car-relapse evaluate`` share.

1. :func:`load_cohort`: the cohort the config names (the embedded synthetic cohort, simulated
   with its oracle, or a folder in the data contract, with an ``oracle.parquet`` when present);
2. :func:`prepare_landmark_set`: validate it (the data contract) and build the landmark set;
3. :func:`cross_validate`: grouped cross-validation of every candidate and the clinicians' rule
   (out-of-fold cumulative incidences), the oracle's risks for the same rows, and the metrics
   of every source side by side (``models.evaluation``);
4. :func:`refit` and :func:`explain`: the chosen candidate refitted on every row, and the SHAP
   explanation of its relapse risk.

Both jobs draw the same progress bars (:func:`progress_bar`) and raise :class:`CohortError` when the
configured cohort cannot be used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from features.contract import ValidatedCohort, validate_cohort
from features.landmarks import feature_columns
from pipelines.config import DataConfig, RunConfig

__all__ = [
    "ORACLE",
    "RULE",
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
    "load_cohort",
    "prepare_landmark_set",
    "progress_bar",
    "refit",
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
    task = progress.add_task(f"cross-validation ({n_sources} sources)", total=n_sources * len(splits))
    predictions = cross_validated_sources(prepared.landmark_set, prepared.cohort.oracle, config, splits,
                                          on_fold=lambda _fold: progress.advance(task))
    task = progress.add_task(f"metrics (bootstrap {config.evaluation.bootstrap})", total=1)
    evaluation = evaluate_landmark_set(prepared.landmark_set, predictions, config)
    progress.advance(task)
    return predictions, evaluation


# --- the chosen candidate -------------------------------------------------------------------------
def refit(config: RunConfig, prepared: PreparedCohort, name: str):
    """Candidate ``name`` (with the config's parameters) fitted on every row of the landmark set.

    Parameters
    ----------
    config : RunConfig
    prepared : PreparedCohort
    name : str
        A name of ``models.factory.MODEL_NAMES``.

    Returns
    -------
    The fitted model.
    """
    from models.factory import make_model

    model = make_model(name, config.models.params.get(name), config.models.random_state)
    model.fit(prepared.landmark_set[prepared.columns], prepared.landmark_set[["time", "event"]])
    return model


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
