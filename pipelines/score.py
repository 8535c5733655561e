"""``car-relapse score``: batch scoring of a cohort folder with a registered model.

The model is loaded through MLflow (``models:/car-relapse@champion`` by default) exactly as the
scoring server loads it, and patients are scored with the same ``models.serving`` code the served
model uses, so batch and served answers are the same numbers. The whole cohort goes through the
data contract once (``features.contract.validate_cohort``: duplicate patients are judged across
the whole file), then patients are scored in chunks (a progress bar shows them).

As-of day: ``--as-of-day D`` scores every patient as of day D; ``--as-of-day-column COLUMN``
scores each patient as of the day in that extra column of the infusions table, which the data
contract checks like a declared column (a number of days in [0, 7300]; a missing or bad one
quarantines the patient with the reason, or fails the run with ``--on-error fail``). The output's
``as_of_day`` column holds the day each patient was scored at.

Eligibility: when the folder holds an ``outcomes`` table it is validated with the others (so a
patient without an outcomes row, or with an inconsistent one, is quarantined like any other
contract violation), and every scored patient gets ``eligible`` (``yes`` / ``no`` / ``unknown``)
and ``eligibility_reason`` at its as-of day (``features.eligibility``: in remission, event-free,
followed up to the day). Without outcomes every patient is ``unknown`` ("no outcomes table").

``--on-error quarantine`` (the default) scores every patient the contract accepts and writes every
rejected row or patient to a rejects file beside the output (``<output stem>.rejects.csv``),
counted on screen, never dropped silently; ``--on-error fail`` scores nothing when any row
breaks the contract. The arguments (input folder and its tables, output path, as-of day, mode)
are checked before the model is loaded.

Exit codes, as for every command: 0 done (with quarantined rows, if any, in the rejects file);
1 the job failed for a reason other than the input (the tracking store, a file that cannot be
written); 2 bad input (arguments, a missing model or table, a contract violation in ``fail``
mode, or no patient that could be scored). Output, rejects and nothing else are written, both
with mode 0600 (they hold patient values).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from features.contract import ON_ERROR_MODES, ContractError, validate_cohort
from models.serving import (
    ScoringBundle,
    ScoringInputError,
    check_as_of_days,
    cohort_as_of_days,
    rejects_of,
    score_validated,
    with_eligibility,
)
from pipelines.io import CohortIOError, cohort_table_files, private_file, read_cohort_folder
from pipelines.tracking import TrackingError, init_store, quiet_mlflow, resolve_tracking_uri
from pipelines.validate import EXIT_BAD_INPUT, EXIT_FAILED

__all__ = ["OUTPUT_SUFFIXES", "EXIT_FAILED", "EXIT_BAD_INPUT", "ScoreError", "ScoreSummary", "load_scoring_bundle",
           "rejects_path", "score_cohort", "run_score"]

OUTPUT_SUFFIXES = (".csv", ".parquet")
_MODEL_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND", "BAD_REQUEST")
_console = Console(soft_wrap=True, highlight=False, markup=False)
_errors = Console(stderr=True, soft_wrap=True, highlight=False, markup=False)


class ScoreError(RuntimeError):
    """Batch scoring cannot run; ``exit_code`` says whether the input (2) or the job (1) is at fault."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ScoreSummary:
    """What a batch scoring run did."""

    output: Path
    rejects: Path
    patients_in: int
    patients_scored: int
    rejected_rows: int
    rejected_patients: int
    collapsed_rows: int
    seconds: float


def rejects_path(output: Path) -> Path:
    """The rejects file written beside ``output``: ``<stem>.rejects.csv``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.rejects.csv")


def load_scoring_bundle(model_uri: str, tracking_uri: str | None = None) -> ScoringBundle:
    """Load a registered pyfunc and return its scoring bundle (the served model's own object).

    Raises
    ------
    ScoreError
        Exit code 2 when the URI does not resolve to a car-relapse model, 1 when the tracking
        store cannot be used.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(tracking_uri)
    init_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        code = EXIT_BAD_INPUT if exc.error_code in _MODEL_NOT_FOUND else EXIT_FAILED
        raise ScoreError(f"cannot load model '{model_uri}' from {uri}: {exc.message}", code) from None
    except OSError as exc:
        raise ScoreError(f"cannot load model '{model_uri}' from {uri}: {exc}") from None
    except TrackingError as exc:
        raise ScoreError(f"cannot use the tracking store {uri}: {exc}", EXIT_FAILED) from None
    bundle = getattr(model.unwrap_python_model(), "_bundle", None)
    if bundle is None:
        raise ScoreError(f"'{model_uri}' is not a car-relapse scoring model")
    return bundle


def _patient_chunks(infusions: pd.DataFrame, measurements: pd.DataFrame,
                    chunk_size: int) -> Iterator[tuple[pd.DataFrame, pd.DataFrame, np.ndarray]]:
    """Per chunk of patients: their infusions rows, their measurements, and the infusions positions.

    ``infusions`` has unique patient ids and every measurement belongs to one of them (validated).
    """
    owner = pd.Index(infusions["patient_id"]).get_indexer(measurements["patient_id"])
    order = np.argsort(owner, kind="stable")
    starts = np.arange(0, len(infusions), chunk_size)
    bounds = np.searchsorted(owner[order], np.append(starts, len(infusions)))
    for i, start in enumerate(starts.tolist()):
        rows = np.arange(start, min(start + chunk_size, len(infusions)))
        measurement_rows = np.sort(order[bounds[i]:bounds[i + 1]])
        yield (infusions.iloc[rows].reset_index(drop=True), measurements.iloc[measurement_rows].reset_index(drop=True),
               rows)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("patients"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=_console, transient=False)


def score_cohort(bundle: ScoringBundle, input_dir: Path, as_of_day: float | None, chunk_size: int = 5000,
                 on_error: str = "quarantine",
                 as_of_day_column: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, int, int]:
    """Score every patient of a cohort folder that the data contract accepts, in chunks of patients.

    Parameters
    ----------
    bundle : ScoringBundle
    input_dir : Path
        Cohort folder: ``infusions``, ``measurements`` and, when present, ``outcomes`` (validated
        with the others; it gives each patient's eligibility at the as-of day).
    as_of_day : float or None
        The day of every patient, or None with ``as_of_day_column``.
    chunk_size : int
    on_error : {"quarantine", "fail"}
    as_of_day_column : str, optional
        An extra column of the infusions table holding each patient's as-of day (checked by the
        data contract: a bad or missing day quarantines the patient, or fails in ``fail`` mode).

    Returns
    -------
    scores : DataFrame
        One row per scored patient, in input order, with ``as_of_day``, ``eligible`` and
        ``eligibility_reason`` after ``patient_id``.
    rejects : DataFrame
        ``table``, ``row`` (CSV line number or 0-based Parquet position), ``patient_id``, ``reason``.
    patients_in : int
        Rows of the infusions table.
    collapsed : int
        Exact duplicate measurement rows collapsed into their first copy.

    Raises
    ------
    CohortIOError
        The folder or a table cannot be read.
    ContractError
        A column problem (also an absent as-of day column), or (``on_error="fail"``) any row problem.
    """
    files = read_cohort_folder(input_dir)
    with _console.status(Text(f"validating {len(files.tables['infusions'])} patients ...")):
        cohort = validate_cohort(files.tables["infusions"], files.tables["measurements"], files.tables.get("outcomes"),
                                 on_error=on_error, source_names=files.source_names, as_of_day_column=as_of_day_column)
    as_of = cohort_as_of_days(cohort.infusions, as_of_day, as_of_day_column)
    infusions = cohort.infusions.drop(columns=as_of_day_column or [])
    scores = []
    with _progress() as progress:
        task = progress.add_task("score", total=len(infusions))
        for chunk, chunk_measurements, rows in _patient_chunks(infusions, cohort.measurements, chunk_size):
            scores.append(score_validated(bundle, chunk, chunk_measurements, as_of[rows]))
            progress.advance(task, len(chunk))
    scored = pd.concat(scores, ignore_index=True) if scores else score_validated(bundle, infusions, cohort.measurements,
                                                                                   as_of)
    collapsed = cohort.report.tables["measurements"].rows_collapsed
    return (with_eligibility(scored, cohort.outcomes), rejects_of(cohort.quarantined), len(files.tables["infusions"]),
            collapsed)


def _check_output(output: Path) -> None:
    """The output can be written: a ``.csv`` or ``.parquet`` name in a folder that is (or can be
    made) writable, and neither it nor its rejects file a folder."""
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ScoreError(f"--output '{output}' must end in .csv or .parquet")
    for path in (output, rejects_path(output)):
        if path.is_dir():
            raise ScoreError(f"--output: '{path}' is a folder")
        if path.exists() and not os.access(path, os.W_OK):
            raise ScoreError(f"--output: '{path}' cannot be written (permission denied)")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScoreError(f"--output: cannot create the folder '{output.parent}': {exc.strerror or exc}") from None
    if not os.access(output.parent, os.W_OK | os.X_OK):
        raise ScoreError(f"--output: the folder '{output.parent}' cannot be written (permission denied)")


def _check_as_of(as_of_day: float | None, as_of_day_column: str | None) -> None:
    """Exactly one of ``--as-of-day`` (a valid day) and ``--as-of-day-column``."""
    if as_of_day is None and as_of_day_column is None:
        raise ScoreError("give --as-of-day DAY (one day for every patient) or --as-of-day-column COLUMN (a column of "
                         "the infusions table with each patient's day)")
    if as_of_day is not None and as_of_day_column is not None:
        raise ScoreError("--as-of-day and --as-of-day-column exclude each other: give one of them")
    if as_of_day is None:  # the column is the contract's to check
        return
    if not math.isfinite(as_of_day):
        raise ScoreError(f"--as-of-day: {as_of_day} is not a finite number of days")
    try:
        check_as_of_days([as_of_day])
    except ScoringInputError as exc:
        raise ScoreError(f"--as-of-day: {str(exc).removeprefix('as_of_day: ')}") from None


def _check_arguments(input_dir: Path, as_of_day: float | None, as_of_day_column: str | None, output: Path,
                     chunk_size: int, on_error: str) -> None:
    """Everything that can be checked before the model is loaded (loading takes seconds)."""
    if on_error not in ON_ERROR_MODES:
        raise ScoreError(f"--on-error must be one of {', '.join(ON_ERROR_MODES)}, got {on_error!r}")
    if chunk_size < 1:
        raise ScoreError(f"--chunk-size must be >= 1, got {chunk_size}")
    _check_as_of(as_of_day, as_of_day_column)
    cohort_table_files(input_dir)
    _check_output(output)


def _write(scores: pd.DataFrame, rejects: pd.DataFrame, output: Path) -> None:
    try:
        with private_file(output, binary=output.suffix.lower() == ".parquet") as handle:
            if output.suffix.lower() == ".csv":
                scores.to_csv(handle, index=False)
            else:
                scores.to_parquet(handle, index=False)
        with private_file(rejects_path(output)) as handle:
            rejects.to_csv(handle, index=False)
    except OSError as exc:
        raise ScoreError(f"cannot write the scores: {exc}", EXIT_FAILED) from None


def _stop(message: str, code: int) -> None:
    """Print ``error: message`` to stderr as plain text and end the command with ``code``."""
    import typer

    _errors.print(Text(f"error: {message}", style="red"))
    raise typer.Exit(code=code)


def run_score(model_uri: str, input_dir: Path, as_of_day: float | None, output: Path, chunk_size: int = 5000,
              tracking_uri: str | None = None, on_error: str = "quarantine",
              as_of_day_column: str | None = None) -> ScoreSummary:
    """Batch-score a cohort folder and write the scores and the rejects.

    Parameters
    ----------
    model_uri : str
        MLflow model URI, e.g. ``models:/car-relapse@champion``.
    input_dir : Path
        Cohort folder (``infusions`` and ``measurements``; ``outcomes`` when present gives each
        patient's eligibility at the as-of day).
    as_of_day : float or None
        Score every patient as of this day since infusion (data after it is not used); None with
        ``as_of_day_column``.
    output : Path
        ``.csv`` or ``.parquet``; the rejects go to ``<stem>.rejects.csv`` beside it.
    chunk_size : int
        Patients per chunk.
    tracking_uri : str, optional
        Registry to resolve ``models:/`` URIs in.
    on_error : {"quarantine", "fail"}
        Score the patients the contract accepts and list the rest in the rejects file, or score
        nothing when any row breaks the contract.
    as_of_day_column : str, optional
        Score each patient as of the day in this column of the infusions table instead.

    Returns
    -------
    ScoreSummary

    Raises
    ------
    typer.Exit
        Code 2 for bad input, 1 when the job fails otherwise (see the module docstring).
    """
    quiet_mlflow()
    started = time.perf_counter()
    output = Path(output)
    try:
        _check_arguments(Path(input_dir), as_of_day, as_of_day_column, output, chunk_size, on_error)
        bundle = load_scoring_bundle(model_uri, tracking_uri)
        scores, rejects, patients_in, collapsed = score_cohort(bundle, Path(input_dir), as_of_day, chunk_size, on_error,
                                                               as_of_day_column)
        _write(scores, rejects, output)
    except ScoreError as exc:
        _stop(str(exc), exc.exit_code)
    except (ScoringInputError, CohortIOError, ContractError) as exc:
        _stop(str(exc), EXIT_BAD_INPUT)
    summary = ScoreSummary(
        output=output, rejects=rejects_path(output), patients_in=patients_in, patients_scored=len(scores),
        rejected_rows=len(rejects), rejected_patients=patients_in - len(scores), collapsed_rows=collapsed,
        seconds=time.perf_counter() - started,
    )
    _print_summary(summary)
    if patients_in and not len(scores):
        _stop(f"no patient could be scored; every reason is in {summary.rejects}", EXIT_BAD_INPUT)
    return summary


def _print_summary(summary: ScoreSummary) -> None:
    _console.print(f"scored {summary.patients_scored} of {summary.patients_in} patients in {summary.seconds:.1f} s "
                   f"-> {summary.output}")
    _console.print(Text(f"rejected: {summary.rejected_rows} row(s), {summary.rejected_patients} patient(s) not scored "
                        f"-> {summary.rejects}", style="yellow" if summary.rejected_rows else "green"))
    if summary.collapsed_rows:
        _console.print(f"note: {summary.collapsed_rows} exact duplicate measurement row(s) collapsed into their first "
                       "copy (same patient, day, specimen, assay, unit and result)")
