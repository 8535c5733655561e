"""The registered model: a thin MLflow pyfunc around ``models.serving``.

MLflow logs this file as *model code* (models-from-code): on load it runs the file, which ends with
``mlflow.models.set_model(CarRelapseModel())``. ``load_context`` unpickles the fitted
:class:`models.serving.ScoringBundle`; ``predict`` hands the request frame (one row per patient) to
a :class:`models.serving.MicroBatcher` around :func:`models.serving.score_requests` (requests
arriving together are scored in one call).

One bad patient never loses the others: ``predict`` scores the good patients and answers each bad
one with an error record (``patient_id`` kept, scores null, ``error`` naming each field and its
problem, never the patient's values). When no patient of the call can be scored, or with
``params={"on_error": "fail"}`` when any cannot, it raises MLflow's "invalid parameter value"
error, which the scoring server answers with HTTP 400 naming the request positions and fields (and
keeps serving). ``params={"on_error": "records"}`` never refuses a call for its patients: every
patient gets scores or an error record, as batch callers need (``pipelines.spark``: a Spark batch
whose patients are all bad must not fail the job).

The input signature (:func:`input_schema`) is a column schema built from
:data:`models.serving.REQUEST_FIELDS`, so the scoring server accepts every documented JSON format
(``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``). Nothing can be truncated or
re-typed on the way: every field is declared ``any`` (see :func:`input_schema` for the MLflow casts
this avoids) and typed by the data contract, which refuses a 2.5 for an integer field, a word for a
number or an unknown assay by name (HTTP 400). A missing required field is refused by MLflow (400).
The real types, allowed values and ranges of one patient's request are a JSON Schema
(``models.request_schema``) logged with every model as ``artifacts/request_schema.json``.
Unknown top-level fields are dropped by MLflow's schema enforcement before the model sees them
(documented in docs/usage.md).

This file must import nothing from ``pipelines``: the model ships only ``features/`` and
``models/`` as code, so it loads on a machine where this project is not installed.
"""

from __future__ import annotations

import tempfile
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import cloudpickle
import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import AnyType, ColSpec, DataType, ParamSchema, ParamSpec, Schema

from features.contract import ON_ERROR_MODES
from models.request_schema import request_schema_text
from models.serving import (
    ERROR_COLUMN,
    EXAMPLE_PATIENT,
    REQUEST_FIELDS,
    SERVING_LINGER_S,
    MicroBatcher,
    ScoringBundle,
    ScoringInputError,
    refusal,
    score_request,
    score_requests,
)

__all__ = [
    "BUNDLE_ARTIFACT",
    "REQUEST_SCHEMA_ARTIFACT",
    "EVERY_PATIENT",
    "PREDICT_ON_ERROR_MODES",
    "CarRelapseModel",
    "save_bundle",
    "load_bundle",
    "input_schema",
    "output_schema",
    "params_schema",
    "request_field_metadata",
    "model_signature",
    "pip_requirements",
    "log_scoring_model",
]

BUNDLE_ARTIFACT = "scoring_bundle"
REQUEST_SCHEMA_ARTIFACT = "request_schema"
"""Artifact key of the request's JSON Schema: ``artifacts/request_schema.json`` in the model folder."""
EVERY_PATIENT = "records"
"""``on_error`` of batch callers: every patient answered (scores or an error record), no call refused."""
PREDICT_ON_ERROR_MODES = (*ON_ERROR_MODES, EVERY_PATIENT)
_SHIPPED_PACKAGES = ("features", "models")
# what the shipped code (features/, models/) and this file import; keep in step with their imports
_REQUIRED_DISTRIBUTIONS = (
    "mlflow",
    "cloudpickle",
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "scikit-learn",
    "scikit-survival",
    "xgboost-cpu",
    "shap",
    "pandera",
    "pydantic",
    "matplotlib",
    "rich",
)


def save_bundle(bundle: ScoringBundle, path: Path) -> Path:
    """Pickle a scoring bundle (cloudpickle) to ``path``."""
    path = Path(path)
    with open(path, "wb") as handle:
        cloudpickle.dump(bundle, handle)
    return path


def load_bundle(path: Path | str) -> ScoringBundle:
    """Unpickle a scoring bundle written by :func:`save_bundle`."""
    with open(path, "rb") as handle:
        return cloudpickle.load(handle)


def input_schema() -> Schema:
    """The served input schema: one column per request field, each of type ``any``.

    MLflow's own casts are lossy for this contract, so the values reach the model as sent and the
    data contract types them (as for batch scoring): the REST path casts 2.5 to 2 for an integer
    column, ``null`` to the text ``'None'`` for a string column, and ``"no"`` (or ``null``) to
    ``True``/``False`` for a boolean column. The declared names and required flags are still
    enforced by MLflow (a missing required field is a 400); each field's contract type is in the
    model's metadata (:func:`request_field_metadata`).
    """
    return Schema([ColSpec(AnyType(), field.name, required=field.required) for field in REQUEST_FIELDS])


def request_field_metadata() -> list[dict[str, Any]]:
    """Name, contract type, required flag and meaning of each request field, in order (model metadata)."""
    return [{"name": field.name, "type": field.kind, "required": field.required, "meaning": field.meaning}
            for field in REQUEST_FIELDS]


def output_schema(bundle: ScoringBundle) -> Schema:
    """The answer's columns: those of scoring the example patient, then ``error`` (text).

    No column is required: a patient that cannot be scored is answered with its ``patient_id``
    and ``error`` only (every score null), and a missing patient id stays null.
    """
    example_output = score_request(bundle, pd.DataFrame([EXAMPLE_PATIENT]))
    scored = infer_signature(model_output=example_output).outputs.inputs
    columns: list[Any] = [ColSpec(column.type, column.name, required=False) for column in scored]
    return Schema(columns + [ColSpec(DataType.string, ERROR_COLUMN, required=False)])


def params_schema() -> ParamSchema:
    """``on_error``: ``quarantine`` (default: error records for bad patients, a call without any good
    patient refused), ``fail`` (refuse the call when any patient is bad) or ``records`` (never refuse)."""
    return ParamSchema([ParamSpec("on_error", DataType.string, "quarantine")])


def model_signature(bundle: ScoringBundle) -> ModelSignature:
    """Input schema (:func:`input_schema`), :func:`output_schema` and :func:`params_schema`."""
    return ModelSignature(inputs=input_schema(), outputs=output_schema(bundle), params=params_schema())


class CarRelapseModel(PythonModel):
    """Relapse and phenotype risk for patients in the data contract, as of a given day."""

    def load_context(self, context) -> None:
        """Load the fitted scoring bundle shipped as an artifact and score the example patient once,
        so that the first request does not pay for lazy imports (shap takes about a second);
        concurrent requests share calls (the launcher, ``pipelines.serve``, then freezes the loaded
        objects in server processes)."""
        self._bundle = load_bundle(context.artifacts[BUNDLE_ARTIFACT])
        self._score = MicroBatcher(partial(score_requests, self._bundle), linger_s=SERVING_LINGER_S)
        example = score_requests(self._bundle, [pd.DataFrame([EXAMPLE_PATIENT])])  # warm-up: lazy imports (shap), caches
        self._answer_fields = tuple(example[0][0])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list:
        """One output record per patient, in order (see ``models.serving.score_requests``); missing
        values are None; ``error`` is None for a scored patient and names the problems of one that is not.

        ``model_input`` is the request frame MLflow built from any JSON format (one row per
        patient), or a list of patient records when called directly. ``params["on_error"]``:
        ``quarantine`` (default) answers bad patients with error records, ``fail`` refuses the call
        when any patient is bad. A call none of whose patients can be scored is refused (HTTP 400),
        except with ``records`` (batch callers: Spark), which answers every patient.
        """
        on_error = (params or {}).get("on_error") or "quarantine"
        if on_error not in PREDICT_ON_ERROR_MODES:
            raise MlflowException.invalid_parameter_value(
                f"params.on_error must be one of {', '.join(PREDICT_ON_ERROR_MODES)}, got {on_error!r}")
        request = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(list(model_input))
        try:
            records = self._score(request) if on_error != EVERY_PATIENT else self._every_patient(request)
        except ScoringInputError as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from None
        if on_error == "fail" and any(record[ERROR_COLUMN] is not None for record in records):
            raise MlflowException.invalid_parameter_value(str(refusal(records)))
        return records

    def _every_patient(self, request: pd.DataFrame) -> list:
        """Records of every patient, none refused, each with every answer field (a batch caller's call,
        e.g. one Spark batch: no micro-batching; the fields of an all-error batch are those of any other)."""
        answer = score_requests(self._bundle, [request], refuse_unscorable=False)[0]
        if isinstance(answer, ScoringInputError):  # a missing field or no patient: the call itself is wrong
            raise answer
        if all(record[ERROR_COLUMN] is not None for record in answer):
            return [{**dict.fromkeys(self._answer_fields), **record} for record in answer]
        return answer


def pip_requirements() -> list[str]:
    """Pinned requirements of the served model: the installed versions of what it imports."""
    pins = []
    for distribution in _REQUIRED_DISTRIBUTIONS:
        try:
            pins.append(f"{distribution}=={metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def log_scoring_model(bundle: ScoringBundle, name: str = "model", input_example: list | None = None):
    """Log the pyfunc (model code + bundle + request JSON Schema + shipped packages) in the active run.

    Parameters
    ----------
    bundle : ScoringBundle
        The fitted bundle; pickled (:func:`save_bundle`) as the model's artifact.
    name : str
        Name of the logged model within the run.
    input_example : list of dict, optional
        Request records; default :data:`models.serving.EXAMPLE_PATIENT` (a made-up patient, so
        no patient data is stored with the model).

    Returns
    -------
    mlflow.models.model.ModelInfo
    """
    project = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as folder:
        bundle_path = save_bundle(bundle, Path(folder) / "scoring_bundle.pkl")
        schema_path = Path(folder) / "request_schema.json"
        schema_path.write_text(request_schema_text(), encoding="utf-8")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).resolve()),
            artifacts={BUNDLE_ARTIFACT: str(bundle_path), REQUEST_SCHEMA_ARTIFACT: str(schema_path)},
            code_paths=[str(project / package) for package in _SHIPPED_PACKAGES],
            input_example=pd.DataFrame(input_example if input_example is not None else [EXAMPLE_PATIENT]),
            signature=model_signature(bundle),
            metadata={"request_fields": request_field_metadata()},
            pip_requirements=pip_requirements(),
        )


mlflow.models.set_model(CarRelapseModel())
