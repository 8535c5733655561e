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
    assert names == {"simulate", "validate", "features", "calibrate", "evaluate", "train", "score", "serve"}


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


# --- user text is never rich markup; config errors before any data; exit codes -----------------------------------
MARKUP = "x[/bad]"  # as a path: the folder "x[" and in it "bad]"; printed, a closing tag rich cannot match


@pytest.fixture
def markup_folder(raw_cohort, tmp_path):
    """A cohort folder whose path, a column name and a cell look like rich markup."""
    from pipelines.io import write_cohort_folder

    raw_cohort["infusions"]["[/i]note"] = "[/i]"
    raw_cohort["measurements"].loc[2, "value"] = "[/i]0.1"
    folder = tmp_path / "x[" / "bad]cohort"
    write_cohort_folder(folder, **raw_cohort, file_format="csv")
    return folder


def _plain(result) -> None:
    assert "MarkupError" not in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_validate_prints_paths_columns_and_cells_as_they_are(markup_folder, tmp_path):
    result = runner.invoke(cli.app, ["validate", "--input", str(markup_folder), "--on-error", "quarantine"],
                           env={"COLUMNS": "200"})
    _plain(result)
    assert result.exit_code == 0
    assert "[/i]note" in result.stdout and "cannot parse lab value '[/i]0.1'" in result.stdout
    result = runner.invoke(cli.app, ["validate", "--input", str(tmp_path / MARKUP)])
    _plain(result)
    assert result.exit_code == 2 and f"cohort folder not found: {tmp_path / MARKUP}" in result.stderr


def test_features_prints_paths_and_cells_as_they_are(markup_folder, tmp_path):
    out = tmp_path / "x[" / "bad].parquet"
    result = runner.invoke(cli.app, ["features", "--input", str(markup_folder), "--out", str(out),
                                     "--on-error", "quarantine"])
    _plain(result)
    assert result.exit_code == 0 and MARKUP in result.stdout.replace("\n", "")
    result = runner.invoke(cli.app, ["features", "--input", str(markup_folder), "--out", str(out)])
    _plain(result)
    assert result.exit_code == 2 and "cannot parse lab value '[/i]0.1'" in result.stderr
    result = runner.invoke(cli.app, ["features", "--input", str(tmp_path / MARKUP), "--out", str(out)])
    _plain(result)
    assert result.exit_code == 2 and f"cohort folder not found: {tmp_path / MARKUP}" in result.stderr


def test_features_output_is_a_private_file(raw_cohort, tmp_path):
    import stat

    from pipelines.io import write_cohort_folder

    write_cohort_folder(tmp_path / "cohort", **raw_cohort, file_format="csv")
    out = tmp_path / "landmarks.csv"
    result = runner.invoke(cli.app, ["features", "--input", str(tmp_path / "cohort"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_train_and_evaluate_print_paths_as_they_are(command, tmp_path):
    config = tmp_path / "x[" / "bad].yaml"
    config.parent.mkdir()
    config.write_text("evaluation:\n  bootstrp: 50\n")
    extra = ["--out", str(tmp_path / "out")] if command == "evaluate" else []
    result = runner.invoke(cli.app, [command, "--config", str(config), *extra])
    _plain(result)
    assert result.exit_code == 2
    assert str(config) in result.output.replace("\n", "") and "did you mean 'bootstrap'?" in result.output


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_config_errors_exit_2_before_any_data_is_read(command, tmp_path, monkeypatch):
    """An unknown model parameter, a registry name MLflow refuses and a bootstrap too small for
    intervals are all named, with exit code 2, before the cohort is simulated or read."""
    import pipelines.experiment as experiment

    def no_data(*args, **kwargs):
        raise AssertionError("the cohort was loaded before the config was checked")

    monkeypatch.setattr(experiment, "load_cohort", no_data)
    config = tmp_path / "run.yaml"
    config.write_text("models:\n  candidates: [xgb_cox]\n  params:\n    xgb_cox: {n_trees: 3}\n"
                      "evaluation: {bootstrap: 5}\nregistry: {model_name: 'car/relapse'}\n")
    extra = ["--out", str(tmp_path / "out")] if command == "evaluate" else []
    result = runner.invoke(cli.app, [command, "--config", str(config), *extra])
    _plain(result)
    assert result.exit_code == 2
    text = result.output.replace("\n", " ")
    for key in ("models.params.xgb_cox.n_trees", "evaluation.bootstrap: 5", "registry.model_name: 'car/relapse'"):
        assert key in text
