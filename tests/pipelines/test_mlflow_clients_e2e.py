"""End to end, as a user with their own cohort: ``configs/own_cohort.yaml`` on a folder of CSV tables,
``car-relapse train --tracking-uri`` run from another folder, then the plain ``mlflow`` commands
exactly as docs/usage.md and the training's printed lines give them; and what the run stores
(the cohort as an MLflow dataset, the git commit, a few summary metrics, no patient rows).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from models.serving import EXAMPLE_PATIENT
from pipelines import cli
from pipelines.api import score_frames
from pipelines.io import write_cohort_folder
from pipelines.simulate import simulate_cohort
from pipelines.train import source_git_commit

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
USAGE = ROOT / "docs" / "usage.md"
MODEL = "car-relapse"  # the documented commands name the default model
PATIENT_ID = re.compile(r"P\d{6}")


@pytest.fixture(scope="module")
def project(empty_mlflow_db, tmp_path_factory) -> Path:
    """A project folder as docs/usage.md lays it out: configs/own_cohort.yaml (made quick),
    data/my_cohort/ (simulated, CSV), mlruns/mlflow.db (a fresh store)."""
    root = tmp_path_factory.mktemp("project")
    cohort = simulate_cohort(300, 20261121)
    write_cohort_folder(root / "data" / "my_cohort", cohort.infusions, cohort.measurements, cohort.outcomes,
                        file_format="csv")
    (root / "mlruns").mkdir()
    shutil.copy(empty_mlflow_db, root / "mlruns" / "mlflow.db")
    config = yaml.safe_load((ROOT / "configs" / "own_cohort.yaml").read_text())
    config["features"]["landmark_days"] = [0, 91]
    config["models"].update(candidates=["xgb_cox"], params={"xgb_cox": {"n_estimators": 30}})
    config["evaluation"].update(cv_folds=2, bootstrap=0, endpoints=["relapse"], shap_max_rows=10, selection_bounds={})
    config["registry"].update(model_name=MODEL, thresholds={"uno_c": 0.5}, calibration_bounds={}, top_factors=2)
    (root / "configs").mkdir()
    (root / "configs" / "own_cohort.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture(scope="module")
def trained(project, tmp_path_factory) -> tuple[str, str]:
    """``car-relapse train --config <project>/configs/own_cohort.yaml --tracking-uri ...`` from another
    folder: the store's URI and what the command printed."""
    uri = f"sqlite:///{project}/mlruns/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.chdir(tmp_path_factory.mktemp("elsewhere"))  # data.input_dir is relative to the config file
        result = CliRunner().invoke(cli.app, ["train", "--config", str(project / "configs" / "own_cohort.yaml"),
                                              "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert f"registered:  {MODEL} version 1" in result.output
    return uri, result.output


def _documented_commands() -> list[str]:
    """The shell lines of the fenced block in docs/usage.md's "The registered model" section."""
    section = USAGE.read_text().split("## The registered model", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def _printed_mlflow_commands(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip().startswith("MLFLOW_TRACKING_URI=")]


def test_printed_mlflow_commands_are_the_documented_ones_with_the_store(trained):
    uri, output = trained
    export, *commands = _documented_commands()
    assert export == "export MLFLOW_TRACKING_URI=sqlite:///$PWD/mlruns/mlflow.db"
    assert [line.split(" ", 1)[0] for line in commands] == ["mlflow"] * 3
    assert _printed_mlflow_commands(output) == [f"MLFLOW_TRACKING_URI={shlex.quote(uri)} {line}" for line in commands]


def test_documented_mlflow_predict_works_from_the_project_folder(trained, project):
    """The documented lines (less the blocking ``serve``) run as written, from the project folder:
    the model's example request is fetched and scored, as batch scoring scores it."""
    lines = [line for line in _documented_commands() if " models serve " not in line]
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = json.loads(done.stdout[done.stdout.index('{"predictions"'):])["predictions"]
    assert [row["patient_id"] for row in predictions] == [EXAMPLE_PATIENT["patient_id"]]
    assert predictions[0]["model_name"] == MODEL and predictions[0]["model_version"] == "1"
    patient = {key: value for key, value in EXAMPLE_PATIENT.items() if key not in ("measurements", "as_of_day")}
    infusions = pd.DataFrame([patient])
    measurements = pd.DataFrame(EXAMPLE_PATIENT["measurements"]).assign(patient_id=EXAMPLE_PATIENT["patient_id"])
    expected = score_frames(f"models:/{MODEL}@champion", infusions, measurements, float(EXAMPLE_PATIENT["as_of_day"]),
                            tracking_uri=trained[0]).scores.iloc[0]
    for column in ("cif_relapse_182d", "cif_relapse_365d", "cif_relapse_730d", "event_free_365d"):
        assert predictions[0][column] == pytest.approx(float(expected[column]), rel=1e-12), column
    assert (project / "serving_input_example.json").is_file()
    assert not (project / "mlflow.db").exists(), "the mlflow CLI used the project's store, not ./mlflow.db"


def _records(example: dict) -> list[dict]:
    """Patient records of a serving input example, whatever JSON format MLflow wrote it in."""
    if "dataframe_split" in example:
        split = example["dataframe_split"]
        return [dict(zip(split["columns"], row)) for row in split["data"]]
    return list(example.get("inputs") or example["dataframe_records"])


def test_the_registered_model_carries_the_request_schema_its_example_validates(trained, tmp_path):
    import jsonschema
    from mlflow.artifacts import download_artifacts

    from models.request_schema import request_schema_text

    uri, _ = trained
    folder = Path(download_artifacts(artifact_uri=f"models:/{MODEL}@champion", dst_path=str(tmp_path),
                                     tracking_uri=uri))
    schema_file = folder / "artifacts" / "request_schema.json"
    assert schema_file.read_text() == request_schema_text()
    records = _records(json.loads((folder / "serving_input_example.json").read_text()))
    assert [record["patient_id"] for record in records] == [EXAMPLE_PATIENT["patient_id"]]
    jsonschema.Draft202012Validator(json.loads(schema_file.read_text())).validate(records[0])


def test_the_run_holds_the_cohort_dataset_the_commit_and_a_few_summary_metrics(trained, project):
    uri, _ = trained
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("my-cohort").experiment_id])[0]
    (dataset_input,) = run.inputs.dataset_inputs
    dataset, input_tags = dataset_input.dataset, {tag.key: tag.value for tag in dataset_input.tags}
    assert dataset.name == "cohort" and dataset.source_type == "local"
    assert json.loads(dataset.source)["uri"] == str((project / "data" / "my_cohort").resolve())
    assert dataset.digest == run.data.tags["data.sha256"][:16]
    assert input_tags["data.sha256"] == run.data.tags["data.sha256"]
    assert input_tags["mlflow.data.context"] == "training" and input_tags["data.patients"] == "300"
    commit = source_git_commit()
    if commit is not None:
        assert run.data.tags["mlflow.source.git.commit"] == commit[0]
        assert run.data.tags["git.dirty"] == str(commit[1]).lower()
    names = set(run.data.metrics)
    assert {"winner/uno_c", "summary/xgb_cox/uno_c", "summary/rule/uno_c"} <= names
    assert all(name.startswith(("summary/", "winner/")) for name in names) and len(names) <= 30
    grid = pd.read_csv(client.download_artifacts(run.info.run_id, "evaluation/metrics.csv"))
    assert len(grid) > 3 * len(names)
    assert {("xgb_cox", "relapse", "91.0", 365.0, "uno_c")} <= set(
        zip(grid["source"], grid["endpoint"], grid["landmark_day"].astype(str), grid["horizon_days"], grid["metric"]))


def test_no_patient_rows_land_in_the_store(trained, project):
    """Every text cell of every table of the SQLite store (runs, params, tags, datasets, inputs,
    registry) and every text artifact: no patient id of the cohort."""
    with sqlite3.connect(project / "mlruns" / "mlflow.db") as db:
        tables = [name for (name,) in db.execute("select name from sqlite_master where type = 'table'")]
        assert {"datasets", "inputs", "input_tags"} <= set(tables)
        cells = [str(value) for table in tables for row in db.execute(f'select * from "{table}"') for value in row]
    assert any("my_cohort" in cell for cell in cells), "the dataset's source is stored"
    assert not [cell for cell in cells if PATIENT_ID.search(cell)]
    for path in (project / "mlruns" / "artifacts").rglob("*"):
        if path.is_file() and path.suffix in {".json", ".csv", ".yaml", ".txt", ".yml"}:
            assert not PATIENT_ID.search(path.read_text()), f"patient id in artifact {path}"
