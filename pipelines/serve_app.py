"""The served ASGI app: MLflow's scoring app behind a guard that keeps bad requests 4xx and errors safe.

:func:`scoring_app` loads the model with ``mlflow.pyfunc.load_model`` and builds MLflow's own scoring
app with ``mlflow.pyfunc.scoring_server.init`` (what ``mlflow models serve`` runs), then wraps it in
:class:`RequestGuard`, a plain ASGI middleware that, for ``POST /invocations``:

- refuses a body over the byte limit (``Content-Length`` or counted while reading) and a request with
  more patients than the patient limit: HTTP 413 naming the limit;
- refuses what is not JSON before MLflow parses it: a missing or other ``Content-Type`` (415; MLflow
  answered 500 to a missing one), a body that is not UTF-8 JSON, a number too long for Python, JSON
  nested deeper than :data:`MAX_JSON_DEPTH` (MLflow hit ``RecursionError``: 500), a body that is not
  an object with exactly one of MLflow's input keys (400);
- rewrites every error answer of the app into ``{"error_code": ..., "message": ...}``: no
  ``stack_trace`` and no echo of the request. MLflow prefixes the model's message with
  ``Failed to predict data '<the whole request>'`` and its schema errors with the data too; only the
  model's own message (which names request position and field), MLflow's list of missing inputs or a
  fixed explanation reach the client;
- answers an exception that escapes the app itself (400 for input that breaks MLflow's parser, 500
  otherwise) instead of letting it reach uvicorn, which would close the keep-alive connection after
  its 500 without ``Connection: close``, so that the client's next request was reset.

It also fills in the body of ``POST /invocations`` in the app's OpenAPI document (``/openapi.json``,
which MLflow leaves empty) from the JSON Schema the model carries (``artifacts/request_schema.json``,
``models.request_schema``): the body formats, each patient record with its types, allowed values and
ranges (:func:`openapi_with_request_schema`). It changes the document only, not how requests are parsed.

The app is only ever built in a server process: this module imports neither ``features`` nor
``models`` (the model loads its own logged copies).
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_JSON_DEPTH",
    "INPUT_KEYS",
    "RequestLimits",
    "RequestRefused",
    "read_request_json",
    "check_depth",
    "count_patients",
    "safe_error_message",
    "RequestGuard",
    "openapi_with_request_schema",
    "scoring_app",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_JSON_DEPTH = 32
"""Deepest JSON nesting accepted. A valid request nests 4 levels (body, patients, a patient's
measurements, one measurement); MLflow's parser recursed into 'JSON bombs' of a few thousand
levels until ``RecursionError`` (HTTP 500)."""

INPUT_KEYS = ("inputs", "dataframe_records", "dataframe_split", "instances")
"""MLflow's JSON input formats (``mlflow.pyfunc.scoring_server.SUPPORTED_FORMATS``): exactly one per request."""

_FORMATS_HINT = ("send one JSON object with exactly one of the keys " + ", ".join(INPUT_KEYS)
                 + ', e.g. {"inputs": [one object per patient]} (formats in docs/usage.md)')
_logger = logging.getLogger("uvicorn.error")


@dataclass(frozen=True)
class RequestLimits:
    """What one request to ``/invocations`` may hold.

    Attributes
    ----------
    max_bytes : int
        Largest request body, bytes.
    max_patients : int
        Most patients (records, or rows of ``dataframe_split``) in one request.
    """

    max_bytes: int
    max_patients: int


class RequestRefused(Exception):
    """A request answered by the guard itself: HTTP status, MLflow error code and message."""

    def __init__(self, status: int, error_code: str, message: str):
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def _too_deep(value: Any, limit: int) -> bool:
    """True when lists / objects nest deeper than ``limit`` (level by level: no recursion on hostile
    input; about 8 ms for 1,000 patients)."""
    level, depth = [value], 1
    while level:
        if depth > limit:
            return True
        below = []
        for item in level:
            for child in (item.values() if type(item) is dict else item):
                if type(child) is dict or type(child) is list:
                    below.append(child)
        level, depth = below, depth + 1
    return False


def read_request_json(body: bytes) -> dict:
    """The request body as a JSON object with one input key, or :class:`RequestRefused` (400) saying why not.

    The messages name the problem and its place, never the body's content. The nesting depth is
    checked apart (:func:`check_depth`), after the cheaper patient count.
    """
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        raise RequestRefused(400, "BAD_REQUEST", f"request body is not valid JSON: {exc.msg} "
                                                 f"(line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise RequestRefused(400, "BAD_REQUEST", f"request body is not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise RequestRefused(400, "BAD_REQUEST", f"request JSON is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:  # e.g. an integer of more than 4300 digits (sys.get_int_max_str_digits)
        raise RequestRefused(400, "BAD_REQUEST", "request body is not valid JSON: a number is too long") from None
    if not isinstance(payload, dict):
        raise RequestRefused(400, "BAD_REQUEST", f"request body is a JSON {type(payload).__name__}; {_FORMATS_HINT}")
    keys = [key for key in INPUT_KEYS if key in payload]
    if len(keys) != 1:
        raise RequestRefused(400, "BAD_REQUEST", f"request has {len(keys)} of the input keys; {_FORMATS_HINT}")
    return payload


def check_depth(payload: dict) -> None:
    """:class:`RequestRefused` (400) when the JSON nests deeper than :data:`MAX_JSON_DEPTH`."""
    if _too_deep(payload, MAX_JSON_DEPTH):
        raise RequestRefused(400, "BAD_REQUEST", f"request JSON is nested deeper than {MAX_JSON_DEPTH} levels")


def count_patients(payload: dict) -> int:
    """Patients in a request of one of MLflow's formats: records, rows of ``dataframe_split``, or
    the longest column of column-form ``inputs`` / ``instances``; 1 for anything else (MLflow then
    judges the shape)."""
    (key,) = [key for key in INPUT_KEYS if key in payload]
    data = payload[key]
    if key == "dataframe_split" and isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, list):
        return len(data)
    if isinstance(data, dict):
        return max((len(column) for column in data.values() if isinstance(column, list)), default=1)
    return 1


_PREDICT_PREFIX, _PREDICT_SEPARATOR = "Failed to predict data '", "'. \nError: "
_SCHEMA_PREFIX, _SCHEMA_SEPARATOR = "Failed to enforce schema of data '", "'. Error: "
_MISSING_INPUTS = "Model is missing inputs"
_UNEXPECTED_MODEL_ERROR = "Encountered an unexpected error while evaluating the model"


def safe_error_message(message: str) -> str:
    """What of an MLflow error message may reach the client: no request content, no stack trace.

    - ``Failed to predict data '<request>'. \\nError: <model message>``: the model's message
      (everything up to the *last* separator goes, so a separator inside the request cannot leave
      a part of it), which names request position and field;
    - within it, MLflow's ``Failed to enforce schema of data '<request>' ... Error: <detail>``: the
      missing inputs MLflow lists (field names), else a fixed explanation;
    - MLflow's fixed message for an exception inside the model: kept;
    - anything else (MLflow's parser, which quotes the data it could not convert): a fixed
      explanation of the formats.
    """
    if message.startswith(_PREDICT_PREFIX) and _PREDICT_SEPARATOR in message:
        message = message[message.rindex(_PREDICT_SEPARATOR) + len(_PREDICT_SEPARATOR):]
        if not message.startswith(_SCHEMA_PREFIX):
            return message
        detail = message[message.rindex(_SCHEMA_SEPARATOR) + len(_SCHEMA_SEPARATOR):] \
            if _SCHEMA_SEPARATOR in message else ""
        if detail.startswith(_MISSING_INPUTS):
            return detail
        return "the request does not match the model's input fields: one object per patient with the fields " \
               "of docs/usage.md"
    if message.startswith(_UNEXPECTED_MODEL_ERROR):
        return message
    return f"the request could not be read as model input; {_FORMATS_HINT}"


def _safe_body(status: int, body: bytes) -> dict[str, str]:
    """The client's error body for an error answer of the app (JSON from MlflowException, or text)."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        return {"error_code": str(answer.get("error_code", "BAD_REQUEST")),
                "message": safe_error_message(answer["message"])}
    text = body.decode("utf-8", "replace").strip()  # fixed texts: MLflow's 415 / 504 answers, starlette's 404 / 405
    if status >= 500:
        return {"error_code": "INTERNAL_ERROR", "message": text if status == 504 else "internal server error"}
    return {"error_code": "BAD_REQUEST", "message": text}


async def _answer(send: Send, status: int, body: dict[str, str]) -> None:
    content = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]})
    await send({"type": "http.response.body", "body": content})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class RequestGuard:
    """ASGI middleware around MLflow's scoring app (see the module docstring).

    Parameters
    ----------
    app : ASGI app
        MLflow's scoring app.
    limits : RequestLimits
    """

    def __init__(self, app: ASGIApp, limits: RequestLimits):
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/invocations" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._checked_body(scope, receive)
        except RequestRefused as refused:
            await _answer(send, refused.status, {"error_code": refused.error_code, "message": refused.message})
            return
        await self._call_app(scope, body, receive, send)

    async def _checked_body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body, after the content type, size, JSON and patient-count checks."""
        content_type = _header(scope, b"content-type")
        if content_type is None or content_type.split(b";")[0].strip().lower() != b"application/json":
            shown = "none" if content_type is None else repr(content_type.decode("latin-1")[:100])
            raise RequestRefused(415, "BAD_REQUEST", f"Content-Type must be application/json (got {shown}); CSV and "
                                                     "Parquet bodies cannot carry a patient's measurements")
        limit = self.limits.max_bytes
        too_large = RequestRefused(413, "REQUEST_LIMIT_EXCEEDED", f"request body is larger than the server's limit "
                                                                  f"of {limit} bytes (--max-request-bytes)")
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                raise RequestRefused(400, "BAD_REQUEST", "request body incomplete")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        payload = read_request_json(body)
        patients = count_patients(payload)
        if patients > self.limits.max_patients:
            raise RequestRefused(413, "REQUEST_LIMIT_EXCEEDED", f"request holds {patients} patients, more than the "
                                                                f"server's limit of {self.limits.max_patients} per "
                                                                "request (--max-patients); send them in several requests")
        check_depth(payload)
        return body

    async def _call_app(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """Run the app on the checked body; pass successes through, make error answers safe."""
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: only a disconnect can come
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        error: dict[str, Any] = {}
        answering = []

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                error["status"], error["body"] = message["status"], b""
            elif "status" not in error:
                answering.append(True)
                await send(message)
            elif message["type"] == "http.response.body":
                error["body"] += message.get("body", b"")

        try:
            await self.app(scope, replay, guarded_send)
        except Exception as exc:
            if answering:  # a successful answer is under way: nothing else can be sent
                raise
            await _answer_exception(send, exc)
            return
        if "status" in error:
            await _answer(send, error["status"], _safe_body(error["status"], error["body"]))


async def _answer_exception(send: Send, exc: Exception) -> None:
    """Answer an exception that escaped MLflow's app (it already sent uvicorn a 500 and re-raised), so
    that uvicorn keeps the connection. RecursionError: input nested too deep for MLflow's parser (400);
    anything else is the server's fault (500), logged with its traceback but not its message, which
    may quote the request."""
    status = 400 if isinstance(exc, RecursionError) else 500
    _logger.error("%s while answering a request (HTTP %d); traceback without the message:\n%s",
                  type(exc).__name__, status, "".join(traceback.format_tb(exc.__traceback__)))
    if status == 400:
        await _answer(send, 400, {"error_code": "BAD_REQUEST", "message": "request JSON is nested too deeply"})
    else:
        await _answer(send, 500, {"error_code": "INTERNAL_ERROR", "message": "internal server error (logged by the server)"})


_REQUEST_SCHEMA_FILE = os.path.join("artifacts", "request_schema.json")
_COMPONENT_PREFIX = "CarRelapse"  # names of the OpenAPI components


def _component_refs(schema, names: dict[str, str]):
    """``schema`` with ``#/$defs/x`` references pointing at the OpenAPI components ``names[x]``."""
    if isinstance(schema, dict):
        return {key: (f"#/components/schemas/{names[value.removeprefix('#/$defs/')]}"
                      if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/")
                      else _component_refs(value, names)) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_component_refs(item, names) for item in schema]
    return schema


def openapi_with_request_schema(openapi: dict, request_schema: dict) -> dict:
    """The app's OpenAPI document with the request body of ``POST /invocations`` described.

    Parameters
    ----------
    openapi : dict
        The document FastAPI generates for MLflow's scoring app (OpenAPI 3.1).
    request_schema : dict
        The model's JSON Schema of one patient (``models.request_schema.request_json_schema``).

    Returns
    -------
    dict
        A copy whose components hold the patient and measurement schemas and whose
        ``/invocations`` POST has a JSON request body: ``inputs`` or ``dataframe_records`` (patient
        records), ``dataframe_split``, ``instances``, and ``params.on_error``.
    """
    names = {name: f"{_COMPONENT_PREFIX}{''.join(part.title() for part in name.split('_'))}"
             for name in request_schema.get("$defs", {})}
    patient = {key: value for key, value in request_schema.items() if key not in ("$schema", "$id", "$defs")}
    components = {f"{_COMPONENT_PREFIX}Patient": _component_refs(patient, names),
                  **{names[name]: _component_refs(value, names) for name, value in request_schema.get("$defs", {}).items()}}
    records = {"type": "array", "items": {"$ref": f"#/components/schemas/{_COMPONENT_PREFIX}Patient"}}
    body = {"type": "object", "minProperties": 1, "properties": {
        "inputs": records, "dataframe_records": records,
        "dataframe_split": {"type": "object", "description": "columns and rows of patient records"},
        "instances": {"type": "array", "description": "patient records, measurements in column form"},
        "params": {"type": "object", "properties": {"on_error": {"enum": ["quarantine", "fail"]}}},
    }}
    document = json.loads(json.dumps(openapi))
    document.setdefault("components", {}).setdefault("schemas", {}).update(components)
    post = document.setdefault("paths", {}).setdefault("/invocations", {}).setdefault("post", {})
    post["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return document


def _describe_invocations(app, model_path: str) -> None:
    """Fill in the app's OpenAPI document from the model's request schema (models logged without one: unchanged)."""
    schema_file = os.path.join(model_path, _REQUEST_SCHEMA_FILE)
    if os.path.isfile(schema_file):
        with open(schema_file, encoding="utf-8") as handle:
            app.openapi_schema = openapi_with_request_schema(app.openapi(), json.load(handle))




def scoring_app(model_path: str, limits: RequestLimits) -> RequestGuard:
    """Load the model and build the guarded scoring app (MLflow's app, as ``mlflow models serve``).

    Parameters
    ----------
    model_path : str
        Local folder of the model (MLflow format).
    limits : RequestLimits

    Returns
    -------
    RequestGuard
    """
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    app = scoring_server.init(mlflow.pyfunc.load_model(model_path))
    _describe_invocations(app, model_path)
    return RequestGuard(app, limits)
