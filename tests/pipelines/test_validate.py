"""Tests of pipelines.validate and the ``car-relapse validate`` command."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from features.contract import ContractError
from pipelines.cli import app
from pipelines.io import CohortIOError, write_cohort_folder
from pipelines.validate import load_and_validate

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, ["validate", *args])


@pytest.fixture
def good_folder(raw_cohort, tmp_path):
    write_cohort_folder(tmp_path / "good", **raw_cohort, file_format="csv")
    return tmp_path / "good"


@pytest.fixture
def bad_folder(raw_cohort, tmp_path):
    raw_cohort["measurements"].loc[2, "value"] = "1.2E-05 approx"
    raw_cohort["outcomes"].loc[0, "event_day"] = "20"  # relapse before the day-28 response
    write_cohort_folder(tmp_path / "bad", **raw_cohort, file_format="parquet")
    return tmp_path / "bad"


def test_good_folder_prints_the_report(good_folder, tmp_path):
    report = tmp_path / "out" / "report.json"
    result = _invoke("--input", str(good_folder), "--report", str(report))
    assert result.exit_code == 0, result.output
    assert "Data report (on_error=fail)" in result.stdout
    assert "measurements.csv" in result.stdout and "patients: 3 in, 3 out, 0 quarantined" in result.stdout
    written = json.loads(report.read_text())
    assert written["status"] == "ok"
    assert written["tables"]["measurements"]["rows_out"] == 10


def test_bad_folder_exits_2_with_the_problems_and_no_traceback(bad_folder, tmp_path):
    report = tmp_path / "failed.json"
    result = _invoke("--input", str(bad_folder), "--report", str(report))
    assert result.exit_code == 2
    assert "measurements.parquet, row 2, column value: cannot parse lab value '1.2E-05 approx'" in result.stderr
    assert "outcomes.parquet, row 0, column event_day: relapse on day 20 precedes" in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert json.loads(report.read_text())["status"] == "failed"


def test_bad_folder_in_quarantine_mode_reports_the_counts(bad_folder):
    result = _invoke("--input", str(bad_folder), "--on-error", "quarantine")
    assert result.exit_code == 0, result.output
    assert "unparseable value: value" in result.stdout
    assert "relapse before response: event_day" in result.stdout
    assert "patients: 3 in, 2 out, 1 quarantined" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("--input", "{tmp}/nowhere"), "error: cohort folder not found"),
        (("--input", "{tmp}", "--on-error", "ignore"), "--on-error must be one of fail, quarantine"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path, args, message):
    result = _invoke(*(arg.format(tmp=tmp_path) for arg in args))
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_report_that_cannot_be_written_exits_2_with_a_message(good_folder, bad_folder, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()  # a folder where the report file should go
    for folder, first_line in ((good_folder, "cannot write the data report"), (bad_folder, "cannot parse lab value")):
        result = _invoke("--input", str(folder), "--report", str(occupied))
        assert result.exit_code == 2
        assert first_line in result.stderr and "cannot write the data report" in result.stderr
        assert "Traceback" not in result.output


def test_missing_table_exits_2(raw_cohort, tmp_path):
    write_cohort_folder(tmp_path, raw_cohort["infusions"], raw_cohort["measurements"], file_format="csv")
    (tmp_path / "measurements.csv").unlink()
    result = _invoke("--input", str(tmp_path))
    assert result.exit_code == 2
    assert "missing table 'measurements'" in result.stderr


def test_load_and_validate_returns_the_cohort_or_raises(good_folder, bad_folder, tmp_path):
    cohort = load_and_validate(good_folder, "fail")
    assert len(cohort.infusions) == 3 and len(cohort.measurements) == 10
    with pytest.raises(ContractError):
        load_and_validate(bad_folder, "fail")
    assert len(load_and_validate(bad_folder, "quarantine").infusions) == 2
    with pytest.raises(CohortIOError):
        load_and_validate(tmp_path / "nowhere")


def test_report_file_is_private(good_folder, bad_folder, tmp_path):
    import stat

    for folder in (good_folder, bad_folder):
        report = tmp_path / f"{folder.name}.json"
        _invoke("--input", str(folder), "--report", str(report))
        assert stat.S_IMODE(report.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda folder: (folder / "measurements.csv").write_text("patient_id;day;value\nP1;28;NEG\n"),
         "looks semicolon-delimited; car-relapse reads comma-delimited CSV (delimiter ',')"),
        (lambda folder: (folder / "infusions.csv").write_text(
            (folder / "infusions.csv").read_text().replace("site", "age_years", 1)),
         "column name(s) 'age_years' appear more than once"),
        (lambda folder: ((folder / "outcomes.csv").unlink(), (folder / "outcomes.csv").mkdir()),
         "outcomes.csv: is a folder, not a table file"),
    ],
)
def test_files_that_cannot_be_tables_exit_2_with_one_line(good_folder, damage, message):
    damage(good_folder)
    result = _invoke("--input", str(good_folder))
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
