"""A Python API for notebooks: train and score from in-memory DataFrames.

Both functions run the jobs' own code, nothing of their own: :func:`train_frames` is
``pipelines.train.train`` (the same validation, landmark set, cross-validation, MLflow run and
gated registration as ``car-relapse train``) fed with the given tables instead of the config's
cohort; :func:`score_frames` is ``models.serving.score_tables``, which ``car-relapse score`` and
the served model also run. Errors are the project's own exceptions (a notebook gets them as
exceptions, not as exit codes): ``ConfigError``, ``ContractError``, ``CohortError``,
``ScoringInputError``, ``ScoreError``, ``TrackingError`` ...

Example (docs/usage.md, "Python API", runs this in the tests)::

    from pipelines.api import score_frames, train_frames

    summary = train_frames(infusions, measurements, outcomes, config={"models": {"candidates": ["xgb_cox"]}})
    result = score_frames(summary.model_uri, infusions, measurements, as_of_day=91)
    result.scores, result.rejects
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from features.schema import TABLES
from models.serving import ScoringBundle, ScoringResult, score_tables
from pipelines.config import RunConfig, load_config
from pipelines.experiment import CohortData
from pipelines.train import TrainSummary, train

__all__ = ["IN_MEMORY", "run_config", "score_frames", "train_frames"]

IN_MEMORY = "in-memory DataFrames"


def run_config(config: RunConfig | Mapping[str, Any] | str | Path | None = None) -> RunConfig:
    """A run config from what a notebook has at hand.

    Parameters
    ----------
    config : RunConfig, mapping, str, Path or None
        A config object; a mapping in the YAML's shape (``{"models": {"candidates": ["xgb_cox"]}}``,
        validated like a file: unknown keys are errors); a YAML file path; None for the defaults.

    Returns
    -------
    RunConfig

    Raises
    ------
    pipelines.config.ConfigError
        A YAML file that is missing or invalid.
    pydantic.ValidationError
        A mapping with unknown keys or wrong types (each named).
    """
    if config is None:
        return RunConfig()
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, (str, Path)):
        return load_config(Path(config))
    return RunConfig.model_validate(dict(config))


def train_frames(infusions: pd.DataFrame, measurements: pd.DataFrame, outcomes: pd.DataFrame,
                 config: RunConfig | Mapping[str, Any] | str | Path | None = None,
                 tracking_uri: str | None = None, promote: bool = False) -> TrainSummary:
    """Train on three tables in memory, exactly as ``car-relapse train`` trains on a folder.

    Parameters
    ----------
    infusions, measurements, outcomes : DataFrame
        The raw tables of the data contract (as read from CSV or Parquet, lab text included).
    config : RunConfig, mapping, str, Path or None
        See :func:`run_config`; its ``data`` section is not used (the tables are given).
    tracking_uri : str, optional
        Where the run goes; default ``MLFLOW_TRACKING_URI``, then ``tracking.tracking_uri``, then
        the project's ``mlruns/``.
    promote : bool
        As ``car-relapse train --promote``: make the new version champion even if the champion
        comparison says no (worse, or trained on other data); the thresholds still apply.

    Returns
    -------
    pipelines.train.TrainSummary
        Run id, winner and its summary metrics, registration outcome, and ``model_uri`` (the
        logged model, usable by :func:`score_frames` whether or not it was registered).
    """
    from pipelines.tracking import quiet_mlflow

    quiet_mlflow()
    cohort = CohortData(infusions, measurements, outcomes, source_names={table: table for table in TABLES},
                        description=IN_MEMORY)
    return train(run_config(config), tracking_uri=tracking_uri, cohort=cohort, promote=promote)


def score_frames(model: str | ScoringBundle, infusions: pd.DataFrame, measurements: pd.DataFrame,
                 as_of_day: float | pd.Series, tracking_uri: str | None = None,
                 on_error: str = "quarantine", outcomes: pd.DataFrame | None = None) -> ScoringResult:
    """Score patients given as two tables in memory, as ``car-relapse score`` and the server do.

    Parameters
    ----------
    model : str or ScoringBundle
        An MLflow model URI (``models:/car-relapse@champion``, ``TrainSummary.model_uri``) or a
        loaded scoring bundle (``pipelines.score.load_scoring_bundle``; load once, score often).
    infusions, measurements : DataFrame
        Raw tables of the data contract (``outcomes`` is not needed).
    as_of_day : float or Series
        Days since infusion, for every patient or per ``patient_id``: only measurements with
        ``day <= as_of_day`` are used. Each day of a Series is checked by the data contract (a
        number of days in [0, 7300]); a patient with a bad or missing one is rejected with the
        reason (or, with ``on_error="fail"``, the call raises).
    tracking_uri : str, optional
        Registry that resolves ``models:/`` URIs (see :func:`train_frames`).
    on_error : {"quarantine", "fail"}
        ``quarantine`` (default) scores the valid patients and lists every rejected row in
        ``rejects``; ``fail`` raises on the first contract violation, naming them all.
    outcomes : DataFrame, optional
        The outcomes table: validated with the others, and each patient's eligibility at its
        as-of day added (``eligible``, ``eligibility_reason``), as ``car-relapse score`` does.

    Returns
    -------
    models.serving.ScoringResult
        ``scores`` (one row per scored patient) and ``rejects``.
    """
    if isinstance(model, ScoringBundle):
        bundle = model
    else:
        from pipelines.score import load_scoring_bundle
        from pipelines.tracking import quiet_mlflow

        quiet_mlflow()
        bundle = load_scoring_bundle(model, tracking_uri)
    return score_tables(bundle, infusions, measurements, as_of_day, on_error=on_error, outcomes=outcomes)
