"""Reading and writing cohort folders and tables (CSV or Parquet, chosen by file extension).

A cohort folder holds ``infusions``, ``measurements`` and optionally ``outcomes``, each as
``<table>.csv`` or ``<table>.parquet``. Simulated cohorts also hold ``ground_truth.parquet`` and
``oracle.parquet``; :func:`read_cohort_folder` never loads those (no model may read them).

CSV files are read with every column as text (``dtype=str``), so lab text such as ``"<0.01%"``
and identifiers such as ``"007"`` survive unchanged; typing is the data contract's job
(``features.contract``). Empty cells and pandas' usual missing-value markers (``NA``, ``NaN``,
``null``, ...) are read as missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.schema import TABLES

__all__ = [
    "COHORT_TABLES",
    "REQUIRED_TABLES",
    "TABLE_EXTENSIONS",
    "CohortIOError",
    "CohortFiles",
    "read_table",
    "read_cohort_folder",
    "write_table",
    "write_cohort_folder",
]

COHORT_TABLES = TABLES
REQUIRED_TABLES = ("infusions", "measurements")
TABLE_EXTENSIONS = (".csv", ".parquet")


class CohortIOError(OSError):
    """A cohort folder or table file that cannot be read or written; the message says which and why."""


@dataclass(frozen=True)
class CohortFiles:
    """The raw tables of a cohort folder and the file each came from.

    Attributes
    ----------
    folder : Path
    tables : dict of str to pandas.DataFrame
        ``infusions``, ``measurements`` and, when present, ``outcomes``.
    source_names : dict of str to str
        Table -> file name (``"measurements.csv"``), for messages and row numbering.
    """

    folder: Path
    tables: dict[str, pd.DataFrame]
    source_names: dict[str, str]


def _extension(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in TABLE_EXTENSIONS:
        raise CohortIOError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .csv or .parquet")
    return suffix


def read_table(path: Path, *, as_text: bool = True) -> pd.DataFrame:
    """Read one table from CSV or Parquet.

    Parameters
    ----------
    path : Path
        ``.csv`` or ``.parquet`` file.
    as_text : bool
        For CSV: read every column as text (default) rather than letting pandas guess types.
        Parquet keeps its stored types.

    Returns
    -------
    pandas.DataFrame
        With a 0-based RangeIndex.

    Raises
    ------
    CohortIOError
        Missing file, unsupported extension, or a file the reader rejects.
    """
    path = Path(path)
    suffix = _extension(path)
    if not path.is_file():
        raise CohortIOError(f"file not found: {path}")
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str if as_text else None)
        return pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise CohortIOError(f"{path}: cannot read {suffix[1:]} file: {exc}") from None


def _find_table(folder: Path, table: str) -> Path | None:
    """The single ``<table>.csv`` / ``<table>.parquet`` in ``folder``, None if absent."""
    found = [folder / f"{table}{ext}" for ext in TABLE_EXTENSIONS if (folder / f"{table}{ext}").is_file()]
    if len(found) > 1:
        names = " and ".join(p.name for p in found)
        raise CohortIOError(f"{folder}: both {names} exist; keep one file per table")
    return found[0] if found else None


def read_cohort_folder(path: Path) -> CohortFiles:
    """Read the raw tables of a cohort folder (not ground truth or oracle).

    Parameters
    ----------
    path : Path
        Folder with ``infusions`` and ``measurements`` (required) and ``outcomes`` (optional),
        each ``.csv`` or ``.parquet``.

    Returns
    -------
    CohortFiles

    Raises
    ------
    CohortIOError
        Missing folder, missing required table, two files for one table, unreadable file.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CohortIOError(f"cohort folder not found: {folder}")
    tables, sources = {}, {}
    for table in COHORT_TABLES:
        file = _find_table(folder, table)
        if file is None:
            if table in REQUIRED_TABLES:
                raise CohortIOError(f"{folder}: missing table {table!r} (expected {table}.csv or {table}.parquet)")
            continue
        tables[table] = read_table(file)
        sources[table] = file.name
    return CohortFiles(folder=folder, tables=tables, source_names=sources)


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns mixing numbers and text (lab ``value``) are written as text for Parquet."""
    mixed = [
        column for column in frame.columns
        if frame[column].dtype == object
        and pd.api.types.infer_dtype(frame[column], skipna=True) not in ("string", "empty", "boolean")
    ]
    if not mixed:
        return frame
    frame = frame.copy()
    for column in mixed:
        present = frame[column].notna()
        frame[column] = frame[column].astype(object)
        frame.loc[present, column] = frame.loc[present, column].astype(str)
    return frame


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Write a table as CSV or Parquet (by extension), creating the parent folder.

    Parameters
    ----------
    frame : pandas.DataFrame
    path : Path
        ``.csv`` or ``.parquet``. The index is not written. In Parquet, object columns that mix
        numbers and text are stored as text (``str(float)`` round-trips exactly).

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    suffix = _extension(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            _parquet_safe(frame).to_parquet(path, index=False)
    except OSError as exc:
        raise CohortIOError(f"{path}: cannot write: {exc}") from None
    return path


def write_cohort_folder(
    folder: Path,
    infusions: pd.DataFrame,
    measurements: pd.DataFrame,
    outcomes: pd.DataFrame | None = None,
    *,
    file_format: str = "parquet",
) -> dict[str, Path]:
    """Write the tables of a cohort folder.

    Parameters
    ----------
    folder : Path
        Created if needed.
    infusions, measurements : pandas.DataFrame
    outcomes : pandas.DataFrame, optional
        Omitted for a scoring-only cohort.
    file_format : {"parquet", "csv"}

    Returns
    -------
    dict of str to Path
        Table -> written file.

    Raises
    ------
    CohortIOError
        When the folder already holds a table file this write would not overwrite (another
        format, or an ``outcomes`` file when ``outcomes`` is None): it would be read back with
        the new tables.
    """
    if file_format not in ("parquet", "csv"):
        raise CohortIOError(f"file_format must be 'parquet' or 'csv', got {file_format!r}")
    folder = Path(folder)
    frames = {"infusions": infusions, "measurements": measurements, "outcomes": outcomes}
    targets = {table: folder / f"{table}.{file_format}" for table, frame in frames.items() if frame is not None}
    stale = [
        folder / f"{table}{ext}" for table in COHORT_TABLES for ext in TABLE_EXTENSIONS
        if (folder / f"{table}{ext}").exists() and folder / f"{table}{ext}" != targets.get(table)
    ]
    if stale:  # they would be read back together with the new tables
        names = ", ".join(p.name for p in stale)
        raise CohortIOError(f"{folder}: already holds {names} that this write would not replace; remove it first")
    return {table: write_table(frames[table], target) for table, target in targets.items()}
