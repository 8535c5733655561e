"""Reading and writing cohort folders and tables (CSV or Parquet, chosen by file extension).

A cohort folder holds ``infusions``, ``measurements`` and optionally ``outcomes``, each as
``<table>.csv`` or ``<table>.parquet``. Simulated cohorts also hold ``ground_truth.parquet`` and
``oracle.parquet``; :func:`read_cohort_folder` never loads those (no model may read them).

CSV files are read with every column as text (``dtype=str``), so lab text such as ``"<0.01%"``
and identifiers such as ``"007"`` survive unchanged; typing is the data contract's job
(``features.contract``). Empty cells and pandas' usual missing-value markers (``NA``, ``NaN``,
``null``, ...) are read as missing. What cannot be a table is refused with the file and the reason
before any row is read: a header with a column name twice (pandas would rename the second
``value.1``), a CSV whose header is one column holding ``;``, tab or ``|`` (another delimiter), a
Parquet column of lists or records, a folder where a table file should be.

Files that can hold patient values (tables, scores, rejects, data reports) are created readable
and writable by their owner only (mode 0600, :func:`private_file`), whatever the umask.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pandas as pd

from features.schema import TABLES

__all__ = [
    "COHORT_TABLES",
    "REQUIRED_TABLES",
    "TABLE_EXTENSIONS",
    "PRIVATE_FILE_MODE",
    "CohortIOError",
    "CohortFiles",
    "cohort_table_files",
    "private_file",
    "read_table",
    "read_cohort_folder",
    "write_table",
    "write_cohort_folder",
]

PRIVATE_FILE_MODE = 0o600
"""Mode of every file written that can hold patient values: owner read and write only."""
_OTHER_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}

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


@contextmanager
def private_file(path: Path, binary: bool = False) -> Iterator[IO[Any]]:
    """Open ``path`` for writing with mode 0600 (:data:`PRIVATE_FILE_MODE`), creating or truncating it.

    An existing file gets mode 0600 too. The parent folder must exist.

    Parameters
    ----------
    path : Path
    binary : bool
        Binary mode (Parquet) rather than text (CSV, JSON).

    Yields
    ------
    file object
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    os.fchmod(descriptor, PRIVATE_FILE_MODE)  # the mode of os.open only applies to a new file, after the umask
    handle: IO[Any] = os.fdopen(descriptor, "wb") if binary else os.fdopen(descriptor, "w", newline="", encoding="utf-8")
    with handle:
        yield handle


def _csv_header_problem(path: Path) -> str | None:
    """Why the CSV header cannot be a table's header (a name twice, another delimiter), else None."""
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    twice = [name for name, count in Counter(header).items() if count > 1]
    if twice:
        return f"column name(s) {', '.join(map(repr, twice))} appear more than once in the header; each must be unique"
    if len(header) == 1:
        for delimiter, name in _OTHER_DELIMITERS.items():
            if delimiter in header[0]:
                return (f"the header is one column ({header[0][:60]!r}): the file looks {name}-delimited; "
                        "car-relapse reads comma-delimited CSV (delimiter ',')")
    return None


def _parquet_schema_problem(path: Path) -> str | None:
    """Why the Parquet file cannot be a table (a column name twice, a column of lists or records), else None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    twice = [name for name, count in Counter(schema.names).items() if count > 1]
    if twice:
        return f"column name(s) {', '.join(map(repr, twice))} appear more than once; each must be unique"
    nested = [f"{field.name} ({field.type})" for field in schema if pa.types.is_nested(field.type)]
    if nested:
        return f"column(s) {', '.join(nested)} hold lists or records; each cell must hold one value"
    return None


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
    if path.is_dir():
        raise CohortIOError(f"{path}: is a folder, not a {suffix[1:]} file")
    if not path.is_file():
        raise CohortIOError(f"file not found: {path}")
    try:
        problem = _csv_header_problem(path) if suffix == ".csv" else _parquet_schema_problem(path)
        if problem is None:
            return pd.read_csv(path, dtype=str if as_text else None) if suffix == ".csv" else pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise CohortIOError(f"{path}: cannot read {suffix[1:]} file: {exc}") from None
    raise CohortIOError(f"{path}: {problem}")


def _find_table(folder: Path, table: str) -> Path | None:
    """The single ``<table>.csv`` / ``<table>.parquet`` in ``folder``, None if absent."""
    found = [folder / f"{table}{ext}" for ext in TABLE_EXTENSIONS if (folder / f"{table}{ext}").exists()]
    if len(found) > 1:
        names = " and ".join(p.name for p in found)
        raise CohortIOError(f"{folder}: both {names} exist; keep one file per table")
    if found and not found[0].is_file():
        raise CohortIOError(f"{found[0]}: is a folder, not a table file")
    return found[0] if found else None


def cohort_table_files(path: Path, tables: tuple[str, ...] = COHORT_TABLES) -> dict[str, Path]:
    """The table files of a cohort folder, checked without reading them.

    Parameters
    ----------
    path : Path
        Cohort folder.
    tables : tuple of str
        Tables wanted (the required ones must be there).

    Returns
    -------
    dict of str to Path
        Table -> its file, for the tables present.

    Raises
    ------
    CohortIOError
        Missing folder, missing required table, two files for one table, a folder named like a table.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CohortIOError(f"cohort folder not found: {folder}")
    files = {}
    for table in tables:
        file = _find_table(folder, table)
        if file is None:
            if table in REQUIRED_TABLES:
                raise CohortIOError(f"{folder}: missing table {table!r} (expected {table}.csv or {table}.parquet)")
            continue
        files[table] = file
    return files


def read_cohort_folder(path: Path, tables: tuple[str, ...] = COHORT_TABLES) -> CohortFiles:
    """Read the raw tables of a cohort folder (not ground truth or oracle).

    Parameters
    ----------
    path : Path
        Folder with ``infusions`` and ``measurements`` (required) and ``outcomes`` (optional),
        each ``.csv`` or ``.parquet``.
    tables : tuple of str
        Tables to read (batch scoring does not read ``outcomes``).

    Returns
    -------
    CohortFiles

    Raises
    ------
    CohortIOError
        Missing folder, missing required table, two files for one table, unreadable file.
    """
    files = cohort_table_files(path, tables)
    return CohortFiles(folder=Path(path), tables={table: read_table(file) for table, file in files.items()},
                       source_names={table: file.name for table, file in files.items()})


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
        numbers and text are stored as text (``str(float)`` round-trips exactly). The file gets
        mode 0600 (it holds patient values).

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    suffix = _extension(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with private_file(path, binary=suffix != ".csv") as handle:
            if suffix == ".csv":
                frame.to_csv(handle, index=False)
            else:
                _parquet_safe(frame).to_parquet(handle, index=False)
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
