"""The ``features`` job: a cohort folder in, the stacked landmark training set out.

``car-relapse features --input DIR --landmarks 0,28,91,182 --horizon-days 730 --out FILE`` reads
the three tables and validates and normalises them (``pipelines.validate.load_and_validate``), builds
the landmark set (``features.landmarks``), writes it as Parquet or CSV and prints a summary (rows
and events per landmark), preceded by the data report whenever rows were quarantined or the
report has notes (nothing is dropped without a line on screen). Bad input ends with a clear
message and exit code 2, never a traceback; paths and cells are printed as plain text, never read
as rich markup. The output file gets mode 0600 (it holds patient values).

:func:`landmark_set_from_config` is the same build driven by a run config, for the training job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from features.contract import ON_ERROR_MODES, ContractError, DataReport, ValidatedCohort
from features.landmarks import EVENT_CODES, build_landmark_set
from features.registry import FeatureInputError, get_builder
from pipelines.config import FeaturesConfig
from pipelines.io import CohortIOError, write_table
from pipelines.validate import EXIT_BAD_INPUT, load_and_validate

__all__ = [
    "OUTPUT_SUFFIXES",
    "FeaturesJobError",
    "builder_options",
    "event_summary",
    "landmark_set_from_config",
    "parse_landmarks",
    "run_features",
    "write_landmark_set",
]

OUTPUT_SUFFIXES = (".parquet", ".csv")


class FeaturesJobError(ValueError):
    """Arguments of the features job that cannot be used; the message says which and why."""


def parse_landmarks(text: str) -> list[float]:
    """Landmark days from ``"0,28,91,182"``.

    Parameters
    ----------
    text : str
        Comma-separated days since infusion (blanks allowed).

    Returns
    -------
    list of float
        In the order given.

    Raises
    ------
    FeaturesJobError
        Empty list, a non-number, a negative or a repeated day.
    """
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts:
        raise FeaturesJobError("--landmarks: give at least one day, e.g. 0,28,91,182")
    try:
        days = [float(part) for part in parts]
    except ValueError:
        raise FeaturesJobError(f"--landmarks: '{text}' is not a comma-separated list of days") from None
    if any(not day >= 0 for day in days):
        raise FeaturesJobError(f"--landmarks: days must be >= 0 (0 = infusion), got '{text}'")
    if len(set(days)) != len(days):
        raise FeaturesJobError(f"--landmarks: repeated day in '{text}'")
    return days


def builder_options(config: FeaturesConfig) -> dict[str, dict[str, Any]]:
    """Keyword options of the configured builders (today: the BCA recovery thresholds).

    Parameters
    ----------
    config : FeaturesConfig

    Returns
    -------
    dict of str to dict
        Builder name -> keyword options, only for builders listed in ``config.builders``.
    """
    options = {
        "bca": {
            "recovery_cells_per_ul": config.bca_recovery_cells_per_ul,
            "recovery_pct_lymphocytes": config.bca_recovery_pct_lymphocytes,
        }
    }
    return {name: value for name, value in options.items() if name in config.builders}


def _check_builders(config: FeaturesConfig) -> None:
    for name in config.builders:
        try:
            get_builder(name)
        except KeyError as exc:
            raise FeaturesJobError(f"features.builders: {exc.args[0]}") from None


def landmark_set_from_config(
    infusions: pd.DataFrame, measurements: pd.DataFrame, outcomes: pd.DataFrame, config: FeaturesConfig
) -> pd.DataFrame:
    """The stacked landmark set of a validated cohort, as the run config declares it.

    Parameters
    ----------
    infusions, measurements, outcomes : DataFrame
        Validated tables (``ValidatedCohort.infusions`` etc.; measurements normalised).
    config : FeaturesConfig
        Landmarks, horizon, builders, HSCT policy, BCA thresholds.

    Returns
    -------
    DataFrame
        See :func:`features.landmarks.build_landmark_set`.
    """
    _check_builders(config)
    return build_landmark_set(
        infusions, measurements, outcomes, config.landmark_days, config.horizon_days,
        builders=config.builders, hsct=config.hsct, builder_options=builder_options(config),
    )


def _check_output_path(out: Path) -> None:
    if Path(out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise FeaturesJobError(f"--out: '{out}' must end in .parquet or .csv")


def write_landmark_set(landmark_set: pd.DataFrame, out: Path) -> None:
    """Write the set as Parquet or CSV by the file suffix (parent folders are created).

    Parameters
    ----------
    landmark_set : DataFrame
        Output of :func:`landmark_set_from_config`.
    out : Path
        ``.parquet`` or ``.csv`` file.

    Raises
    ------
    FeaturesJobError
        Any other suffix.
    CohortIOError
        The file cannot be written.
    """
    _check_output_path(out)
    write_table(landmark_set, Path(out))


def event_summary(landmark_set: pd.DataFrame) -> pd.DataFrame:
    """Rows per landmark and events per type within the horizon.

    Parameters
    ----------
    landmark_set : DataFrame
        With ``landmark_day`` and ``event`` columns.

    Returns
    -------
    DataFrame
        One row per landmark day; ``rows`` then one count column per event code present, in
        :data:`features.landmarks.EVENT_CODES` order.
    """
    counts = pd.crosstab(landmark_set["landmark_day"], landmark_set["event"])
    counts = counts.reindex(columns=[code for code in EVENT_CODES if code in counts.columns])
    counts.insert(0, "rows", counts.sum(axis=1))
    return counts


def _summary_table(summary: pd.DataFrame, out: Path, horizon_days: float) -> Table:
    """Landmarks as columns, row count and event types as rows (stays narrow)."""
    table = Table(title=Text(f"Landmark set -> {out} (events within {horizon_days:g} days)"))
    table.add_column("")
    for landmark in summary.index:
        table.add_column(f"day {landmark:g}", justify="right")
    for column in summary.columns:
        table.add_row(str(column), *(str(int(value)) for value in summary[column]))
    return table


def _load_cohort(input_dir: Path, on_error: str) -> ValidatedCohort:
    """Read and validate a cohort folder; a training set needs its outcomes table."""
    if on_error not in ON_ERROR_MODES:
        raise FeaturesJobError(f"--on-error must be one of {', '.join(ON_ERROR_MODES)}, got {on_error!r}")
    cohort = load_and_validate(input_dir, on_error)
    if cohort.outcomes is None:
        raise FeaturesJobError(f"{input_dir}: missing table 'outcomes' (needed for the targets of a training set)")
    return cohort


_INPUT_ERRORS = (FeaturesJobError, FeatureInputError, ContractError, CohortIOError)
"""Error types that mean bad input (not a bug): printed as a message, exit code 2."""


def _features_config(landmarks: str, horizon_days: float) -> FeaturesConfig:
    try:
        return FeaturesConfig(landmark_days=parse_landmarks(landmarks), horizon_days=horizon_days)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise FeaturesJobError(f"invalid features options: {reasons}") from None


def run_features(input_dir: Path, landmarks: str, horizon_days: float, out: Path, on_error: str = "fail") -> None:
    """Build the stacked landmark set of a cohort folder and write it to ``out``.

    Parameters
    ----------
    input_dir : Path
        Cohort folder (infusions, measurements, outcomes as CSV or Parquet).
    landmarks : str
        Comma-separated landmark days, e.g. ``"0,28,91,182"``.
    horizon_days : float
        Target truncation horizon, days from each landmark.
    out : Path
        Output file, ``.parquet`` or ``.csv``.
    on_error : {"fail", "quarantine"}
        Contract behaviour for bad rows.

    Raises
    ------
    typer.Exit
        Code 2 after printing the reason, for any bad input.
    """
    console, errors = Console(), Console(stderr=True, soft_wrap=True)
    try:
        config = _features_config(landmarks, horizon_days)
        _check_output_path(out)
        with console.status(Text(f"Reading and validating {input_dir} ...")):
            cohort = _load_cohort(input_dir, on_error)
        with console.status(Text(f"Building features at landmarks {config.landmark_days} ...")):
            landmark_set = landmark_set_from_config(cohort.infusions, cohort.measurements, cohort.outcomes, config)
        write_landmark_set(landmark_set, out)
    except _INPUT_ERRORS as exc:
        errors.print(Text(f"error: {exc}", style="bold red"), highlight=False)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    if _report_has_news(cohort.report):
        console.print(cohort.report.render())
    console.print(_summary_table(event_summary(landmark_set), Path(out), config.horizon_days))


def _report_has_news(report: DataReport) -> bool:
    """Whether the data report says anything beyond "every row kept" (quarantines or notes)."""
    return bool(report.notes) or any(table.rows_quarantined for table in report.tables.values())
