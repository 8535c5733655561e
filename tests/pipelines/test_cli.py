"""The CLI: one exit-code convention (0 ok, 1 failed for another reason, 2 bad input), never a traceback
for the project's own errors, shell completion, ``check-config`` and ``train --tracking-uri``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pipelines import cli
from pipelines.simulate import SimulationError
from pipelines.tracking import TrackingError

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def test_every_documented_command_is_registered():
    names = {command.name or command.callback.__name__ for command in cli.app.registered_commands}
    assert names == {"simulate", "validate", "features", "calibrate", "evaluate", "train", "check-config", "score",
                     "serve", "report", "surveillance"}


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


@pytest.mark.parametrize(("error", "code"), [(SimulationError("bad knob"), 2), (TrackingError("store locked"), 1),
                                             (PermissionError(13, "Permission denied", "docs/x.md"), 1)])
def test_run_job_maps_project_errors(error, code, capsys):
    def job() -> None:
        raise error

    with pytest.raises(typer.Exit) as info:
        cli._run_job(job)
    assert info.value.exit_code == code
    assert str(error) in capsys.readouterr().err


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




# --- every sub-command: bad input exits 2 without a traceback ----------------------------------------------------------
@pytest.fixture
def bad_input_cases(tmp_path, tracking_uri) -> dict[str, list[str]]:
    missing = str(tmp_path / "no_such_folder")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("models:\n  candidatez: [xgb_cox]\n")
    return {
        "simulate": ["simulate", "--out", str(tmp_path / "sim"), "--format", "xlsx"],
        "validate": ["validate", "--input", missing],
        "features": ["features", "--input", missing, "--out", str(tmp_path / "f.parquet")],
        "features, bad landmarks": ["features", "--input", missing, "--landmarks", "a,b", "--out", "f.parquet"],
        "calibrate": ["calibrate", "--patients", "5", "--out", str(tmp_path / "c.md")],
        "evaluate": ["evaluate", "--config", str(bad_yaml), "--out", str(tmp_path / "eval")],
        "train": ["train", "--config", str(tmp_path / "missing.yaml"), "--tracking-uri", tracking_uri],
        "train, bad config": ["train", "--config", str(bad_yaml), "--tracking-uri", tracking_uri],
        "check-config": ["check-config", "--config", str(bad_yaml)],
        "score, no such model": ["score", "--model", "models:/no-such-model@champion", "--input", missing,
                                 "--as-of-day", "91", "--output", str(tmp_path / "s.parquet"),
                                 "--tracking-uri", tracking_uri],
        "score, bad output": ["score", "--input", missing, "--as-of-day", "91", "--output", str(tmp_path / "s.xlsx"),
                              "--tracking-uri", tracking_uri],
        "serve, no such model": ["serve", "--model", "models:/no-such-model@champion", "--tracking-uri", tracking_uri],
        "report, no such folder": ["report", "--input", missing, "--as-of-day", "91", "--out", str(tmp_path / "r.html"),
                                   "--tracking-uri", tracking_uri],
        "surveillance, no such config": ["surveillance", "--config", str(tmp_path / "missing.yaml"),
                                         "--out", str(tmp_path / "surv")],
        "unknown option": ["train", "--confg", "x.yaml"],
        "missing required option": ["score", "--as-of-day", "91"],
    }


CASES = ["simulate", "validate", "features", "features, bad landmarks", "calibrate", "evaluate", "train",
         "train, bad config", "check-config", "score, no such model", "score, bad output", "serve, no such model",
         "report, no such folder", "surveillance, no such config", "unknown option", "missing required option"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_without_a_traceback(bad_input_cases, case):
    result = runner.invoke(cli.app, bad_input_cases[case])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.output.strip(), "the user is told why"


def test_every_command_has_a_bad_input_case():
    covered = {case.split(",")[0] for case in CASES}
    names = {command.name or command.callback.__name__ for command in cli.app.registered_commands}
    assert names <= covered


def test_a_store_that_cannot_be_used_exits_1(tmp_path):
    result = runner.invoke(cli.app, ["serve", "--tracking-uri", "sqlite://"])
    assert result.exit_code == 1, result.output
    assert "no database file" in result.output


# --- check-config ------------------------------------------------------------------------------------------------------
def test_check_config_ok_shows_what_the_config_resolves_to(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "configs").mkdir()
    (tmp_path / "data" / "my_cohort").mkdir(parents=True)
    config = tmp_path / "configs" / "own_cohort.yaml"
    shutil.copy(ROOT / "configs" / "own_cohort.yaml", config)
    result = runner.invoke(cli.app, ["check-config", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"OK: {config}")
    assert f"folder {(tmp_path / 'data' / 'my_cohort').resolve()}" in result.output
    assert "car-relapse-my-cohort" in result.output


def test_check_config_lists_every_problem_and_exits_2(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("data:\n  source: folder\nevaluation:\n  selection_metric: f1\n")
    result = runner.invoke(cli.app, ["check-config", "--config", str(config)])
    assert result.exit_code == 2
    assert "data.input_dir: required" in result.output and "'f1'" in result.output
    assert "OK" not in result.output


def test_check_config_accepts_the_default_config():
    result = runner.invoke(cli.app, ["check-config", "--config", str(ROOT / "configs" / "default.yaml")])
    assert result.exit_code == 0, result.output


# --- train --tracking-uri and shell completion -------------------------------------------------------------------------
def test_train_passes_tracking_uri_to_the_job(monkeypatch):
    calls = {}
    monkeypatch.setattr("pipelines.train.run_train", lambda **kwargs: calls.update(kwargs))
    result = runner.invoke(cli.app, ["train", "--config", "x.yaml", "--tracking-uri", "sqlite:////tmp/x/mlflow.db"])
    assert result.exit_code == 0, result.output
    assert calls == {"config_path": Path("x.yaml"), "tracking_uri": "sqlite:////tmp/x/mlflow.db"}


def test_shell_completion_script_and_completions(monkeypatch):
    assert "--install-completion" in runner.invoke(cli.app, ["--help"]).output
    # the shell is named rather than detected from the parent process (make, CI: no interactive shell)
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    script = runner.invoke(cli.app, ["--show-completion", "bash"])
    assert script.exit_code == 0, script.output
    assert "complete -o default -F _car_relapse_completion car-relapse" in script.output
    completed = runner.invoke(cli.app, [], env={"_CAR_RELAPSE_COMPLETE": "complete_bash",
                                                "COMP_WORDS": "car-relapse train --tr", "COMP_CWORD": "2"},
                              prog_name="car-relapse")
    assert completed.output.split() == ["--tracking-uri"]
