"""End to end: train (twice, then below threshold), register, serve with MLflow's real scoring
server in a subprocess, and compare its answers with batch scoring of the same patients.

Request formats: every JSON format MLflow documents (``dataframe_split``, ``dataframe_records``,
``instances``, ``inputs``) is posted for the same patients and must answer exactly what batch scoring
wrote. ``instances`` carries each patient's measurements in column form (MLflow's parser turns
``instances`` into numpy arrays, which needs that form when patients have different numbers of
measurements; see docs/usage.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from models.serving import EXAMPLE_PATIENT, tables_to_records
from pipelines.io import write_table
from pipelines.registry import ALIAS_CHAMPION, ALIAS_PREVIOUS, alias_version
from pipelines.score import load_scoring_bundle, run_score
from pipelines.serve import mlflow_serve_command, serve_command, serve_environment
from pipelines.simulate import simulate_cohort
from pipelines.train import run_train

pytestmark = pytest.mark.e2e

MODEL = "car-relapse-e2e"
CHAMPION = f"models:/{MODEL}@champion"
AS_OF_DAY = 91.0
TINY_CONFIG = {
    "data": {"source": "synthetic", "synthetic": {"n_patients": 500, "seed": 20261121, "with_oracle": True}},
    "features": {"landmark_days": [0, 91]},
    "models": {"candidates": ["xgb_cox", "xgb_aft"],
               "params": {"xgb_cox": {"n_estimators": 80}, "xgb_aft": {"n_estimators": 80}}},
    "evaluation": {"cv_folds": 3, "bootstrap": 0, "shap_max_rows": 20},
    "registry": {"model_name": MODEL, "thresholds": {"uno_c": 0.55}, "top_factors": 3},
}


@pytest.fixture(scope="module")
def store(empty_mlflow_db, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("e2e_store")
    shutil.copy(empty_mlflow_db, folder / "mlflow.db")
    return f"sqlite:///{folder}/mlflow.db"


def _write_config(folder: Path, name: str, store: str, **registry) -> Path:
    config = {**TINY_CONFIG, "tracking": {"tracking_uri": store, "experiment": "e2e"},
              "registry": {**TINY_CONFIG["registry"], **registry}}
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trainings(store, tmp_path_factory):
    """Two trainings that pass the gate, then one that cannot (threshold 0.99)."""
    folder = tmp_path_factory.mktemp("e2e_configs")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        first = run_train(_write_config(folder, "tiny.yaml", store))
        second = run_train(_write_config(folder, "tiny.yaml", store))
        gated = run_train(_write_config(folder, "strict.yaml", store, thresholds={"uno_c": 0.99}))
    return first, second, gated


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """New patients (not in training): the CSV folder for batch scoring and the in-memory tables."""
    simulated = simulate_cohort(20, 4242)
    folder = tmp_path_factory.mktemp("e2e_cohort")
    write_table(simulated.infusions, folder / "infusions.csv")
    write_table(simulated.measurements, folder / "measurements.csv")
    return folder, simulated.infusions, simulated.measurements


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(command_of_port, store: str, log: Path):
    """Start a scoring server command (own process group) on a free localhost port; wait for /ping."""
    port = _free_port()
    with open(log, "wb") as sink:
        process = subprocess.Popen(command_of_port(port), env=serve_environment(store), start_new_session=True,
                                   stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process, log)
    except BaseException:
        _stop(process)
        raise
    return process, url


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(trainings, store, tmp_path_factory):
    """The champion served as ``car-relapse serve`` serves it (MLflow's scoring app, 2 workers)."""
    log = tmp_path_factory.mktemp("e2e_server") / "server.log"
    process, url = _start_server(lambda port: serve_command(CHAMPION, "127.0.0.1", port), store, log)
    try:
        yield url
    finally:
        _stop(process)


def _wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"scoring server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"scoring server did not answer /ping in time: {log.read_text()[-2000:]}")


def _not_json(constant: str):
    raise ValueError(f"the server answered non-standard JSON ({constant})")


def _post(url: str, body: str) -> tuple[int, dict]:
    """POST a JSON body; the answer must be standard JSON (no NaN / Infinity)."""
    request = urllib.request.Request(f"{url}/invocations", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read(), parse_constant=_not_json)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read(), parse_constant=_not_json)


@pytest.fixture(scope="module")
def batch_scores(trainings, store, cohort, tmp_path_factory):
    folder, _, _ = cohort
    output = tmp_path_factory.mktemp("e2e_scores") / "scores.parquet"
    summary = run_score(CHAMPION, folder, AS_OF_DAY, output, chunk_size=7, tracking_uri=store)
    assert summary.rejected_rows == 0 and summary.patients_scored == 20
    scores = pd.read_parquet(output)
    assert (scores["eligible"] == "unknown").all()  # the folder has no outcomes table
    return scores.drop(columns=["eligible", "eligibility_reason"])  # batch only: the served answer has no outcomes


# --- registry -----------------------------------------------------------------------------------------
def test_two_trainings_two_versions_and_a_gated_one(trainings, store):
    first, second, gated = trainings
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    assert (first.model_version, second.model_version) == ("1", "2")
    assert alias_version(client, MODEL, ALIAS_CHAMPION) == "2"
    assert alias_version(client, MODEL, ALIAS_PREVIOUS) == "1"
    assert not gated.registered and gated.model_version is None
    assert "uno_c" in gated.gate_reasons[0] and "fails >= 0.99" in gated.gate_reasons[0]
    assert sorted(str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")) == ["1", "2"]
    assert client.get_run(gated.run_id).data.tags["registry.registered"] == "false"
    assert client.get_logged_model(gated.model_uri.split("/")[-1]).source_run_id == gated.run_id


def test_run_logs_metrics_params_and_report(trainings, store):
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(trainings[1].run_id)
    assert run.data.params["models.candidates"] == '["xgb_cox", "xgb_aft"]'
    assert {"summary/xgb_cox/uno_c", "summary/oracle/uno_c", "summary/rule/brier", "summary/xgb_aft/auc",
            "winner/uno_c"} <= set(run.data.metrics)
    grid = pd.read_csv(client.download_artifacts(run.info.run_id, "evaluation/metrics.csv"))
    rows = set(zip(grid["source"], grid["endpoint"], grid["landmark_day"].astype(str), grid["metric"]))
    assert {("xgb_cox", "relapse", "91.0", "uno_c"), ("oracle", "relapse", "0.0", "uno_c"),
            ("rule", "relapse", "all", "brier"), ("xgb_aft", "relapse_CD19_neg", "0.0", "auc")} <= rows
    assert len(run.data.tags["data.sha256"]) == 64


def _artifact_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def test_no_patient_rows_in_artifacts(trainings, store):
    from pipelines.tracking import artifact_root_for

    root = artifact_root_for(store)
    files = _artifact_files(root)
    names = {path.name for path in files}
    assert {"data_report.json", "metrics.csv", "calibration_relapse.png", "shap_summary.png",
            "feature_list.json", "MLmodel", "scoring_bundle.pkl"} <= names
    assert not any("patient_rows" in path.parts for path in files)
    patient_id = re.compile(r"P\d{6}")
    for path in files:
        if path.suffix in {".json", ".csv", ".yaml", ".txt"}:
            assert not patient_id.search(path.read_text()), f"patient id in artifact {path}"
    bundle = load_scoring_bundle(CHAMPION, store)
    assert len(bundle.estimator.background_) == 1


# --- serving == batch -----------------------------------------------------------------------------------
def _body(fmt: str, records: list[dict]) -> dict:
    """The request body of one documented MLflow JSON format for these patient records."""
    if fmt == "dataframe_split":
        columns = list(records[0])
        return {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in records]}}
    return {fmt: records}


FORMATS = {  # name -> (JSON key, measurement form)
    "inputs": ("inputs", "records"),
    "inputs, measurements as columns": ("inputs", "columns"),
    "dataframe_split": ("dataframe_split", "records"),
    "dataframe_records": ("dataframe_records", "records"),
    "instances": ("instances", "columns"),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_served_answers_equal_batch_scoring_in_every_request_format(server, batch_scores, cohort, trainings, fmt):
    _, infusions, measurements = cohort
    key, form = FORMATS[fmt]
    records = tables_to_records(infusions, measurements, AS_OF_DAY, measurement_form=form)
    status, body = _post(server, json.dumps(_body(key, records)))
    assert status == 200, body
    served = pd.DataFrame(body["predictions"])
    assert served.pop("error").isna().all()
    pd.testing.assert_frame_equal(served, batch_scores, check_exact=True, check_dtype=False)
    assert (served["model_version"] == "2").all() and (served["model_run_id"] == trainings[1].run_id).all()


def test_single_patient_request_equals_its_batch_row(server, batch_scores, cohort):
    _, infusions, measurements = cohort
    records = tables_to_records(infusions.iloc[[5]], measurements, AS_OF_DAY)
    status, body = _post(server, json.dumps({"inputs": records}))
    assert status == 200
    expected = batch_scores.iloc[[5]].reset_index(drop=True)
    served = pd.DataFrame(body["predictions"])
    assert served.pop("error").isna().all()
    pd.testing.assert_frame_equal(served, expected, check_exact=True, check_dtype=False)


def test_a_bad_patient_gets_an_error_record_and_the_others_their_scores(server, batch_scores, cohort):
    _, infusions, measurements = cohort
    records = tables_to_records(infusions.iloc[[4, 5, 6]], measurements, AS_OF_DAY)
    records[1]["prior_lines"] = 2.5
    status, body = _post(server, json.dumps({"inputs": records}))
    assert status == 200, body
    served = pd.DataFrame(body["predictions"])
    assert served["error"].tolist() == [None, "prior_lines: not an integer", None]
    assert served.drop(columns=["patient_id", "error"]).iloc[1].isna().all()
    expected = batch_scores.iloc[[4, 6]].reset_index(drop=True)
    pd.testing.assert_frame_equal(served.drop(index=1).drop(columns="error").reset_index(drop=True), expected,
                                  check_exact=True, check_dtype=False)
    status, answer = _post(server, json.dumps({"inputs": records, "params": {"on_error": "fail"}}))
    assert status == 400 and "patient at position 1: prior_lines: not an integer" in answer["message"]


def _without(field: str) -> dict:
    return {key: value for key, value in EXAMPLE_PATIENT.items() if key != field}


def _split_body(patient: dict) -> str:
    return json.dumps(_body("dataframe_split", [patient]))


BAD_REQUESTS = {
    "missing field": (json.dumps({"inputs": [_without("bm_blasts_pct")]}), ["bm_blasts_pct", "missing"]),
    "missing field, records format": (json.dumps({"dataframe_records": [_without("as_of_day")]}),
                                      ["as_of_day", "missing"]),
    "wrong type": (json.dumps({"inputs": [{**EXAMPLE_PATIENT, "age_years": "eleven"}]}),
                   ["patient at position 0: age_years: not a number"]),
    "unknown assay": (json.dumps({"inputs": [{**EXAMPLE_PATIENT, "measurements": [
        {**EXAMPLE_PATIENT["measurements"][0], "assay": "flow_mdr"}]}]}), ["measurements[0].assay: not one of"]),
    "unknown measurement field": (json.dumps({"inputs": [{**EXAMPLE_PATIENT, "measurements": [
        {**EXAMPLE_PATIENT["measurements"][0], "assay_name": "flow_mrd"}]}]}), ["assay_name", "unknown measurement"]),
    "measurements not a list": (json.dumps({"inputs": [{**EXAMPLE_PATIENT, "measurements": "NEG"}]}),
                                ["measurements: must be a list"]),
    "malformed JSON": ('{"inputs": [{"patient_id": "x",', ["valid JSON"]),
    "a list for a number": (json.dumps({"inputs": [{**EXAMPLE_PATIENT, "age_years": [11, 12]}]}),
                            ["age_years", "must be a single value"]),
    "true for a number": (json.dumps({"dataframe_records": [{**EXAMPLE_PATIENT, "bm_blasts_pct": True}]}),
                          ["bm_blasts_pct: not a number"]),
    "2.5 for an integer": (json.dumps({"inputs": [{**EXAMPLE_PATIENT, "prior_lines": 2.5}]}),
                           ["prior_lines: not an integer"]),
    "2.5 for an integer, split format": (_split_body({**EXAMPLE_PATIENT, "prior_crs": 2.5}),
                                         ["prior_crs: not an integer"]),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_400_naming_the_problem_and_the_server_keeps_serving(server, case):
    body, expected = BAD_REQUESTS[case]
    status, answer = _post(server, body)
    assert 400 <= status < 500
    for text in expected:
        assert text in answer["message"]
    status, answer = _post(server, json.dumps({"inputs": [EXAMPLE_PATIENT]}))
    assert status == 200 and answer["predictions"][0]["patient_id"] == "EXAMPLE-001"


def test_plain_mlflow_models_serve_gives_the_same_answer(server, trainings, store, tmp_path_factory):
    """The documented ``mlflow models serve -m models:/...@champion --env-manager local`` works too."""
    log = tmp_path_factory.mktemp("e2e_mlflow_server") / "server.log"
    process, url = _start_server(lambda port: mlflow_serve_command(CHAMPION, "127.0.0.1", port), store, log)
    try:
        body = json.dumps({"dataframe_records": [EXAMPLE_PATIENT]})
        assert _post(url, body) == _post(server, body)
        assert _post(url, body)[0] == 200
    finally:
        _stop(process)


def test_openapi_describes_the_request_body_with_the_models_schema(server):
    from models.request_schema import request_json_schema

    with urllib.request.urlopen(f"{server}/openapi.json", timeout=30) as response:
        document = json.loads(response.read())
    body = document["paths"]["/invocations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["inputs"]["items"] == {"$ref": "#/components/schemas/CarRelapsePatient"}
    patient = document["components"]["schemas"]["CarRelapsePatient"]
    assert patient["properties"]["prior_lines"] == request_json_schema()["properties"]["prior_lines"]
    assert patient["required"] == request_json_schema()["required"]


def test_the_registered_model_documents_its_request_fields(trainings, store):
    import mlflow

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store)
        info = mlflow.models.get_model_info(CHAMPION)
    fields = {entry["name"]: entry for entry in info.metadata["request_fields"]}
    assert fields["prior_lines"] == {"name": "prior_lines", "type": "int", "required": True,
                                     "meaning": "number of prior therapy lines"}
    assert [column["name"] for column in info.signature.inputs.to_dict()] == list(fields)
    assert {column["type"] for column in info.signature.inputs.to_dict()} == {"any"}
    assert "cif_relapse_365d" in info.signature.outputs.input_names()


# --- decisions and reports of a training run (pipelines.decisions, run_report, report) ----------------------------
def test_training_logs_decision_curves_run_report_and_model_card(trainings, store):
    from pipelines.run_report import MODEL_CARD_ARTIFACT, RUN_REPORT_ARTIFACT
    from tests.pipelines.html_checks import parse_self_contained

    first, second, gated = trainings
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    for summary in trainings:
        paths = {a.path for folder in ("evaluation", "plots", "report")
                 for a in client.list_artifacts(summary.run_id, folder)}
        assert {"evaluation/decision_curves.csv", "plots/decision_curves.png", RUN_REPORT_ARTIFACT,
                MODEL_CARD_ARTIFACT} <= paths
        assert summary.run_report is not None and Path(summary.run_report).is_file()
        page = Path(summary.run_report).read_text()
        parse_self_contained(page)
        assert not re.search(r"P\d{6}", re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page))
    card = Path(second.run_report).with_name("model_card.md").read_text()
    assert client.get_model_version(MODEL, second.model_version).description == card
    assert "sha256" in card and client.get_run(second.run_id).data.tags["data.sha256"] in card
    decisions = pd.read_csv(Path(second.run_report).parents[1] / "evaluation" / "decision_curves.csv")
    assert {"xgb_cox", "xgb_aft", "rule", "oracle", "treat_all", "treat_none"} <= set(decisions["source"])
    assert "not registered" in Path(gated.run_report).read_text()


def test_patient_report_from_the_registered_champion(trainings, store, cohort, tmp_path):
    from pipelines.report import run_patient_report
    from tests.pipelines.html_checks import parse_self_contained

    folder = cohort[0]
    patient = str(cohort[1]["patient_id"].iloc[0])
    written = run_patient_report(CHAMPION, folder, AS_OF_DAY, tmp_path / "report.html", patient, store)
    parsed = parse_self_contained(written[0].read_text())
    assert f"Patient {patient}" in parsed["text"] and "Model card of the registered version" in parsed["text"]
    assert "unknown" in parsed["text"]  # no outcomes table in the scoring folder: eligibility unknown
