"""The CLI turns the project's own errors into a message and exit code 2, never a traceback."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from pipelines import cli
from pipelines.simulate import SimulationError

runner = CliRunner()


def test_every_documented_command_is_registered():
    names = {command.name or command.callback.__name__ for command in cli.app.registered_commands}
    assert names == {"simulate", "validate", "features", "calibrate", "evaluate", "train", "score", "serve", "report",
                     "surveillance"}


def test_project_error_becomes_exit_code_2_with_message(tmp_path):
    result = runner.invoke(cli.app, ["simulate", "--patients", "5", "--out", str(tmp_path), "--format", "xlsx"])
    assert result.exit_code == 2
    assert "xlsx" in result.output
    assert "Traceback" not in result.output


def test_run_job_reraises_foreign_errors_as_bugs():
    def broken_job() -> None:
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError):
        cli._run_job(broken_job)


def test_run_job_maps_project_errors():
    def job() -> None:
        raise SimulationError("bad knob")

    with pytest.raises(typer.Exit) as info:
        cli._run_job(job)
    assert info.value.exit_code == 2
