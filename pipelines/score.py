"""``car-relapse score``: batch scoring of a cohort folder with a registered model.

The model is loaded through MLflow (``models:/car-relapse@champion`` by default) exactly as the
scoring server loads it, and patients are scored with the same ``models.serving.score_tables``
the served model uses, so batch and served answers are the same numbers. Patients are scored in
chunks (a progress bar shows them); every rejected row or patient is written to a rejects file
beside the output (``<output stem>.rejects.csv``) and counted on screen, never dropped silently.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from models.serving import REJECT_COLUMNS, ScoringBundle, ScoringInputError, score_tables
from pipelines.io import CohortIOError, read_cohort_folder
from pipelines.tracking import TrackingError, init_store, quiet_mlflow, resolve_tracking_uri
from pipelines.validate import EXIT_BAD_INPUT, EXIT_FAILED

__all__ = ["OUTPUT_SUFFIXES", "ScoreError", "ScoreSummary", "load_scoring_bundle", "rejects_path", "score_cohort",
           "run_score"]

OUTPUT_SUFFIXES = (".csv", ".parquet")
_console = Console(soft_wrap=True, highlight=False)


class ScoreError(RuntimeError):
    """Batch scoring cannot run (bad output path, model not found, unreadable cohort)."""


@dataclass(frozen=True)
class ScoreSummary:
    """What a batch scoring run did."""

    output: Path
    rejects: Path
    patients_in: int
    patients_scored: int
    rejected_rows: int
    rejected_patients: int
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
        When the URI does not resolve or is not a car-relapse model.
    TrackingError
        When the tracking store cannot be used.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(tracking_uri)
    init_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as exc:
        raise ScoreError(f"cannot load model '{model_uri}' from {uri}: {exc}") from None
    bundle = getattr(model.unwrap_python_model(), "_bundle", None)
    if bundle is None:
        raise ScoreError(f"'{model_uri}' is not a car-relapse scoring model")
    return bundle


def _patient_chunks(infusions: pd.DataFrame, measurements: pd.DataFrame,
                    chunk_size: int) -> Iterator[tuple[pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]]:
    """Per chunk of patients: infusions rows, their measurements, and both sets of row positions.

    ``infusions`` has unique, present patient ids and every measurement belongs to one of them.
    """
    owner = pd.Index(infusions["patient_id"]).get_indexer(measurements["patient_id"])
    order = np.argsort(owner, kind="stable")
    starts = np.arange(0, len(infusions), chunk_size)
    bounds = np.searchsorted(owner[order], np.append(starts, len(infusions)))
    for i, start in enumerate(starts.tolist()):
        rows = np.arange(start, min(start + chunk_size, len(infusions)))
        measurement_rows = np.sort(order[bounds[i]:bounds[i + 1]])
        yield infusions.iloc[rows], measurements.iloc[measurement_rows], rows, measurement_rows


def _pre_rejects(infusions: pd.DataFrame, measurements: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Rows no chunk can judge alone: missing or duplicate patient ids, measurements of unknown patients.

    Returns the rejects and boolean masks of the infusions and measurements rows to keep.
    """
    ids = infusions["patient_id"]
    missing = ids.isna().to_numpy()
    duplicate = (ids.duplicated(keep=False) & ids.notna()).to_numpy()
    keep_infusions = ~(missing | duplicate)
    keep_measurements = measurements["patient_id"].isin(ids[keep_infusions]).to_numpy()
    lines = [
        ("infusions", missing, ids, "missing patient_id (patient not scored)"),
        ("infusions", duplicate, ids, "duplicate patient_id in infusions (patient not scored)"),
        ("measurements", ~keep_measurements, measurements["patient_id"],
         "patient_id missing, not in infusions, or duplicated there"),
    ]
    rejects = pd.concat(
        [pd.DataFrame({"table": table, "row": np.flatnonzero(mask), "patient_id": column[mask].to_numpy(),
                       "reason": reason}, columns=list(REJECT_COLUMNS)) for table, mask, column, reason in lines],
        ignore_index=True,
    )
    return rejects, keep_infusions, keep_measurements


def _remap_rows(rejects: pd.DataFrame, positions: dict[str, np.ndarray], sources: dict[str, str]) -> pd.DataFrame:
    """Chunk-relative reject rows -> row numbers of the source files (CSV line or position)."""
    from features.contract import display_row

    rejects = rejects.copy()
    rows = [display_row(sources.get(table, table), positions[table][int(row)])
            for table, row in zip(rejects["table"], rejects["row"])]
    rejects["row"] = np.asarray(rows, dtype=np.int64)
    return rejects


def _progress() -> Progress:
    return Progress(TextColumn("[bold]scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("patients"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=_console, transient=False)


def score_cohort(bundle: ScoringBundle, input_dir: Path, as_of_day: float,
                 chunk_size: int = 5000) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Score every patient of a cohort folder, in chunks of ``chunk_size`` patients.

    Returns
    -------
    scores : DataFrame
        One row per scored patient, in input order.
    rejects : DataFrame
        ``table``, ``row`` (CSV line number or 0-based Parquet position), ``patient_id``, ``reason``.
    patients_in : int
        Rows of the infusions table.
    """
    files = read_cohort_folder(input_dir)
    infusions, measurements = files.tables["infusions"], files.tables["measurements"]
    if "patient_id" not in infusions.columns or "patient_id" not in measurements.columns:
        raise ScoringInputError(f"{input_dir}: infusions and measurements need a patient_id column")
    rejects, keep_infusions, keep_measurements = _pre_rejects(infusions, measurements)
    identity = {"infusions": np.arange(len(infusions)), "measurements": np.arange(len(measurements))}
    rejects = _remap_rows(rejects, identity, files.source_names)
    kept_inf_rows, kept_meas_rows = np.flatnonzero(keep_infusions), np.flatnonzero(keep_measurements)
    infusions, measurements = infusions.iloc[kept_inf_rows], measurements.iloc[kept_meas_rows]
    scores, all_rejects = [], [rejects]
    with _progress() as progress:
        task = progress.add_task("score", total=len(infusions))
        for chunk, chunk_measurements, inf_rows, meas_rows in _patient_chunks(infusions, measurements, chunk_size):
            result = score_tables(bundle, chunk, chunk_measurements, as_of_day, on_error="quarantine")
            positions = {"infusions": kept_inf_rows[inf_rows], "measurements": kept_meas_rows[meas_rows]}
            scores.append(result.scores)
            all_rejects.append(_remap_rows(result.rejects, positions, files.source_names))
            progress.advance(task, len(chunk))
    rejects = pd.concat([r for r in all_rejects if len(r)], ignore_index=True) if any(len(r) for r in all_rejects) \
        else pd.DataFrame(columns=list(REJECT_COLUMNS))
    scored = pd.concat(scores, ignore_index=True) if scores else pd.DataFrame()
    return scored, rejects, len(files.tables["infusions"])


def _write(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


def run_score(model_uri: str, input_dir: Path, as_of_day: float, output: Path, chunk_size: int = 5000,
              tracking_uri: str | None = None) -> ScoreSummary:
    """Batch-score a cohort folder and write the scores and the rejects.

    Parameters
    ----------
    model_uri : str
        MLflow model URI, e.g. ``models:/car-relapse@champion``.
    input_dir : Path
        Cohort folder (``infusions`` and ``measurements``; ``outcomes`` is ignored).
    as_of_day : float
        Score every patient as of this day since infusion (data after it is not used).
    output : Path
        ``.csv`` or ``.parquet``; the rejects go to ``<stem>.rejects.csv`` beside it.
    chunk_size : int
        Patients per chunk.
    tracking_uri : str, optional
        Registry to resolve ``models:/`` URIs in.

    Returns
    -------
    ScoreSummary
    """
    import typer

    quiet_mlflow()
    started = time.perf_counter()
    output = Path(output)
    try:
        if output.suffix.lower() not in OUTPUT_SUFFIXES:
            raise ScoreError(f"output '{output}' must end in .csv or .parquet")
        if chunk_size < 1:
            raise ScoreError(f"chunk_size must be >= 1, got {chunk_size}")
        bundle = load_scoring_bundle(model_uri, tracking_uri)
        scores, rejects, patients_in = score_cohort(bundle, Path(input_dir), as_of_day, chunk_size)
        _write(scores, output)
        rejects.to_csv(rejects_path(output), index=False)
    except (ScoreError, ScoringInputError, CohortIOError) as exc:
        _console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    except (TrackingError, OSError) as exc:  # the store, or an output that cannot be written
        _console.print(f"[red]scoring failed:[/red] {escape(str(exc))}")
        raise typer.Exit(code=EXIT_FAILED) from None
    summary = ScoreSummary(
        output=output, rejects=rejects_path(output), patients_in=patients_in, patients_scored=len(scores),
        rejected_rows=len(rejects), rejected_patients=patients_in - len(scores),
        seconds=time.perf_counter() - started,
    )
    _print_summary(summary)
    return summary


def _print_summary(summary: ScoreSummary) -> None:
    _console.print(
        f"scored {summary.patients_scored} of {summary.patients_in} patients in {summary.seconds:.1f} s "
        f"-> {summary.output}"
    )
    style = "yellow" if summary.rejected_rows else "green"
    _console.print(
        f"[{style}]rejected: {summary.rejected_rows} row(s), {summary.rejected_patients} patient(s) not scored "
        f"-> {summary.rejects}[/{style}]"
    )
