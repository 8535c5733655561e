"""Tests of pipelines.serve_app: the request guard around MLflow's real scoring app, in process.

The app is MLflow's own (``scoring_server.init``) serving a tiny pyfunc whose ``predict`` raises
the two kinds of error a model raises (an MLflow "invalid parameter value" naming a field, and an
unexpected exception), driven through ASGI directly. The same cases against the real server, over
keep-alive connections, are in test_serve_e2e.py.
"""

from __future__ import annotations

import asyncio
import json

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from pipelines.serve_app import (
    MAX_JSON_DEPTH,
    RequestGuard,
    RequestLimits,
    RequestRefused,
    check_depth,
    count_patients,
    read_request_json,
    safe_error_message,
    scoring_app,
)

SECRET = "SENTINEL-SITE-4711"
"""A patient value sent with every request: it must never come back in an error."""


class _TinyModel(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):
        ages = model_input["age_years"].tolist()
        if -1.0 in ages:
            raise MlflowException.invalid_parameter_value(f"request row {ages.index(-1.0)}, field age_years: below 0")
        if -2.0 in ages:
            raise KeyError(f"unexpected failure quoting {SECRET}")
        return [{"patient_id": pid, "risk": 0.5} for pid in model_input["patient_id"]]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_model") / "model"
    signature = ModelSignature(inputs=Schema([ColSpec("string", "patient_id"), ColSpec("double", "age_years"),
                                              ColSpec("string", "site")]))
    mlflow.pyfunc.save_model(str(path), python_model=_TinyModel(), signature=signature, pip_requirements=[])
    return scoring_app(str(path), RequestLimits(max_bytes=6000, max_patients=3))


def _call(app, body: bytes, content_type: str | None = "application/json", chunks: int = 1,
          content_length: bool = True) -> tuple[int, dict, dict]:
    """POST ``body`` to /invocations through ASGI; (status, headers, JSON answer)."""
    headers = [] if content_type is None else [(b"content-type", content_type.encode())]
    if content_length:
        headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/invocations", "raw_path": b"/invocations", "root_path": "", "query_string": b"",
             "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 5001), "state": {}}
    size = -(-len(body) // chunks) if body else 1
    parts = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
    messages = [{"type": "http.request", "body": part, "more_body": i < len(parts) - 1} for i, part in enumerate(parts)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=60))
    start = sent[0]
    answer = b"".join(message.get("body", b"") for message in sent[1:])
    return start["status"], dict(start["headers"]), json.loads(answer)


def _patient(**changes) -> dict:
    return {"patient_id": "P1", "age_years": 11.5, "site": SECRET, **changes}


def _body(*patients: dict) -> bytes:
    return json.dumps({"inputs": list(patients)}).encode()


def test_a_valid_request_passes_through_unchanged(app):
    status, _, answer = _call(app, _body(_patient(), _patient(patient_id="P2")))
    assert status == 200 and answer == {"predictions": [{"patient_id": "P1", "risk": 0.5},
                                                        {"patient_id": "P2", "risk": 0.5}]}


@pytest.mark.parametrize("content_type", [None, "text/plain", "text/csv", "application/vnd.apache.parquet"])
def test_anything_but_json_is_415_naming_the_content_type(app, content_type):
    status, _, answer = _call(app, _body(_patient()), content_type=content_type)
    assert status == 415 and "Content-Type must be application/json" in answer["message"]


BAD_JSON = {
    "nested thousands of levels": (b"[" * 2500 + b"]" * 2500, f"nested deeper than {MAX_JSON_DEPTH} levels"),
    "nested just past the limit": (b'{"inputs": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}",
                                   f"nested deeper than {MAX_JSON_DEPTH} levels"),
    "a 5000-digit number": (b'{"inputs": [{"age_years": ' + b"9" * 5000 + b"}]}", "a number is too long"),
    "not JSON": (b'{"inputs": [{"patient_id": ', "not valid JSON: Expecting value (line 1, column 28)"),
    "not UTF-8": (b'{"inputs": ["\xff"]}', "not UTF-8 text (byte 13)"),
    "a list": (b"[1, 2]", "request body is a JSON list"),
    "no input key": (b'{"patients": []}', "request has 0 of the input keys"),
    "two input keys": (b'{"inputs": [], "instances": []}', "request has 2 of the input keys"),
}


@pytest.mark.parametrize("case", list(BAD_JSON))
def test_bad_json_is_400_naming_the_problem_not_the_content(app, case):
    body, expected = BAD_JSON[case]
    status, _, answer = _call(app, body)
    assert status == 400 and expected in answer["message"]


def test_a_body_over_the_byte_limit_is_413_by_its_declared_length_or_as_it_arrives(app):
    body = _body(*[_patient(patient_id="P" * 2500)] * 3)  # 3 patients, > 6000 bytes
    for content_length, chunks in ((True, 1), (False, 5)):
        status, _, answer = _call(app, body, chunks=chunks, content_length=content_length)
        assert status == 413 and answer["error_code"] == "REQUEST_LIMIT_EXCEEDED"
        assert "limit of 6000 bytes (--max-request-bytes)" in answer["message"]


@pytest.mark.parametrize("fmt", ["inputs", "dataframe_records", "dataframe_split", "instances, columns"])
def test_more_patients_than_the_limit_is_413_in_every_format(app, fmt):
    patients = [_patient(patient_id=f"P{i}") for i in range(4)]
    body = {"inputs": {"patient_id": [p["patient_id"] for p in patients]}} if fmt == "instances, columns" \
        else {"dataframe_split": {"columns": list(patients[0]), "data": [list(p.values()) for p in patients]}} \
        if fmt == "dataframe_split" else {fmt: patients}
    status, _, answer = _call(app, json.dumps(body).encode())
    assert status == 413 and "4 patients, more than the server's limit of 3 per request (--max-patients)" \
        in answer["message"]


ERRORS = {  # request -> what the answer must say
    "a missing input (MLflow's schema check)": (_body({"patient_id": "P1", "site": SECRET}),
                                                "Model is missing inputs ['age_years']"),
    "the model's own error": (_body(_patient(age_years=-1.0)), "request row 0, field age_years: below 0"),
    "an unexpected error in the model": (_body(_patient(age_years=-2.0)),
                                         "Encountered an unexpected error while evaluating the model"),
    "data MLflow's parser cannot convert": (json.dumps({"dataframe_split": {"columns": ["patient_id"],
                                                                            "data": SECRET}}).encode(),
                                            "could not be read as model input"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_error_answers_name_the_problem_without_stack_trace_or_patient_values(app, case):
    body, expected = ERRORS[case]
    status, headers, answer = _call(app, body)
    assert 400 <= status < 500 and expected in answer["message"]
    assert set(answer) == {"error_code", "message"}  # no stack_trace
    assert SECRET not in json.dumps(answer) and "Failed to predict data" not in answer["message"]
    assert headers[b"content-type"] == b"application/json"


def test_the_messages_of_mlflow_lose_the_request_they_quote():
    """Formats of mlflow.pyfunc.scoring_server / mlflow.pyfunc (3.17): what remains is the model's message."""
    quoted = f"[{{'site': \"{SECRET}'. \\nError: {SECRET}\"}}]"  # a separator inside the quoted request
    assert safe_error_message(f"Failed to predict data '{quoted}'. \nError: row 0, field x: bad") == "row 0, field x: bad"
    schema = (f"Failed to predict data '{quoted}'. \nError: Failed to enforce schema of data '{quoted}' with schema "
              "'['a': string]'. Error: Model is missing inputs ['a'].")
    assert safe_error_message(schema) == "Model is missing inputs ['a']."
    other = f"Failed to predict data '{quoted}'. \nError: Failed to enforce schema of data '{quoted}' with schema 'x'. " \
            f"Error: could not convert {SECRET}"
    assert SECRET not in safe_error_message(other)
    assert SECRET not in safe_error_message(f"Failed to convert data `{SECRET}` to type `x`")


@pytest.mark.parametrize("error, status, message", [(RecursionError, 400, "nested too deeply"),
                                                    (KeyError, 500, "internal server error")])
def test_an_exception_escaping_the_app_is_answered_and_not_raised_to_uvicorn(error, status, message):
    """Starlette's ServerErrorMiddleware sends 500 and re-raises, and uvicorn then drops the keep-alive
    connection without telling the client: the guard answers instead (400 for a RecursionError, the
    symptom of input too deep for MLflow's parser; 500 otherwise), without the exception's message."""
    from fastapi import FastAPI

    inner = FastAPI()

    @inner.post("/invocations")
    async def fail():
        raise error(SECRET)

    guard = RequestGuard(inner, RequestLimits(max_bytes=6000, max_patients=3))
    answered, _, answer = _call(guard, _body(_patient()))
    assert answered == status and message in answer["message"] and SECRET not in json.dumps(answer)


def test_read_request_json_and_count_patients():
    assert count_patients(read_request_json(_body(_patient(), _patient()))) == 2
    assert count_patients({"dataframe_split": {"columns": ["a"], "data": [[1], [2], [3]]}}) == 3
    assert count_patients({"instances": {"a": [1, 2, 3, 4], "b": 5}}) == 4
    assert count_patients({"inputs": 5}) == 1
    with pytest.raises(RequestRefused, match="nested deeper"):
        check_depth(read_request_json(b'{"inputs": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}"))
    check_depth(read_request_json(b'{"inputs": ' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"))
    check_depth({"inputs": [{"measurements": [{"day": [1.0]}]}]})
