"""The ``validate`` job: read a cohort folder, apply the data contract, print the data report.

Bad input (a missing folder or table, an unreadable file, a contract violation) is printed as a
clear message and ends the command with exit code 2; no traceback reaches the user. Nothing the
user wrote (paths, column names, cells) is read as rich markup. The ``--report`` file gets mode
0600: it names patients and values.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from features.contract import ON_ERROR_MODES, ContractError, ValidatedCohort, validate_cohort
from pipelines.io import CohortIOError, private_file, read_cohort_folder

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "load_and_validate", "run_validate"]

# The exit codes of every car-relapse command: 0 ok, 1 the job failed for a reason other than its
# input (tracking store, registry, a file that cannot be written, a bug), 2 bad input (usage,
# config, data, a missing file or model).
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def load_and_validate(input_dir: Path, on_error: str = "fail") -> ValidatedCohort:
    """Read a cohort folder and validate it against the data contract.

    Parameters
    ----------
    input_dir : Path
        Cohort folder (see ``pipelines.io.read_cohort_folder``).
    on_error : {"fail", "quarantine"}

    Returns
    -------
    ValidatedCohort

    Raises
    ------
    CohortIOError
        The folder or a required table is missing or unreadable.
    ContractError
        The cohort violates the contract (any row in ``fail`` mode; a missing column always).
    ValueError
        ``on_error`` is not ``fail`` or ``quarantine``.
    """
    files = read_cohort_folder(input_dir)
    return validate_cohort(
        files.tables["infusions"],
        files.tables["measurements"],
        files.tables.get("outcomes"),
        on_error=on_error,
        source_names=files.source_names,
    )


def _write_json(payload: dict, path: Path) -> None:
    """Write ``payload`` as indented JSON, mode 0600 (it can name patients and values); a file that
    cannot be written is a :class:`CohortIOError`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with private_file(path) as handle:
            handle.write(json.dumps(payload, indent=2) + "\n")
    except OSError as exc:
        raise CohortIOError(f"{path}: cannot write the data report: {exc}") from None


def _print_error(errors: Console, message: str) -> None:
    """Print ``error: message`` to stderr as plain text (no markup, no highlighting)."""
    errors.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)


def _fail(errors: Console, message: str) -> None:
    """Print the error and end the command with exit code 2."""
    _print_error(errors, message)
    raise typer.Exit(code=EXIT_BAD_INPUT)


def run_validate(input_dir: Path, on_error: str = "fail", report_path: Path | None = None) -> ValidatedCohort:
    """Validate a cohort folder, print the data report, optionally write it as JSON.

    Parameters
    ----------
    input_dir : Path
        Cohort folder.
    on_error : {"fail", "quarantine"}
    report_path : Path, optional
        Write the report (``DataReport.to_dict()``) here as JSON. When validation fails, the file
        gets ``{"status": "failed", "problems": [...]}`` with every problem line.

    Returns
    -------
    ValidatedCohort

    Raises
    ------
    typer.Exit
        With code 2 on bad input, after printing the reason to stderr.
    """
    console, errors = Console(), Console(stderr=True)
    if on_error not in ON_ERROR_MODES:
        _fail(errors, f"--on-error must be one of {', '.join(ON_ERROR_MODES)}, got {on_error!r}")
    try:
        try:
            cohort = load_and_validate(input_dir, on_error)
        except ContractError as exc:
            _print_error(errors, str(exc))
            if report_path is not None:
                _write_json({"status": "failed", "problems": exc.lines}, Path(report_path))
            raise typer.Exit(code=EXIT_BAD_INPUT) from None
        console.print(cohort.report.render())
        if report_path is not None:
            _write_json({"status": "ok", **cohort.report.to_dict()}, Path(report_path))
            console.print(f"data report written to {report_path}", markup=False)
    except CohortIOError as exc:  # unreadable cohort, or a report file that cannot be written
        _fail(errors, str(exc))
    return cohort
