"""The JSON Schema (draft 2020-12) of one patient of a scoring request, generated from the data contract.

The served model's MLflow signature declares every request field as ``any`` (``pipelines/pyfunc_model.py``
says why: MLflow's REST path casts values to the signature's types, and those casts change values
for this contract). This schema is where the real types live: one object per patient, its fields
those of :data:`models.serving.REQUEST_FIELDS` with each field's type, allowed values, range and
whether it may be ``null`` taken from its ``features.schema.ColumnSpec``, and ``measurements`` as a
list of measurement objects (or one object of equal-length lists). It is logged with every model
(``artifacts/request_schema.json``) and written to ``docs/request_schema.json``.

The schema describes the canonical JSON form a client should send. The data contract, which
judges every request, also takes the forms a CSV export produces (numbers and booleans written as
text, ``"yes"``/``"no"``, ``0``/``1`` for booleans, a number for a patient id), and it checks what a
schema cannot say (equal lengths in the column form, lab text, units per assay, duplicate
measurements). Conversely, whatever the schema accepts the contract accepts, field by field.
Unlike the server, which drops an unknown top-level field silently, the schema refuses one
(``additionalProperties: false``), so a client validating its requests catches a misspelt field.
"""

from __future__ import annotations

import json
from typing import Any

from features.schema import MEASUREMENT_COLUMNS, ColumnSpec
from models.serving import REQUEST_FIELDS

__all__ = ["JSON_SCHEMA_DIALECT", "REQUEST_SCHEMA_ID", "request_json_schema", "request_schema_text", "value_schema"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
REQUEST_SCHEMA_ID = "urn:car-relapse:request-patient"
_JSON_TYPES = {"str": "string", "category": "string", "float": "number", "int": "integer", "bool": "boolean",
               "text_or_number": ["number", "string"]}


def _number(value: float) -> int | float:
    """A bound as JSON writes it best: whole numbers without a fraction (``0`` rather than ``0.0``)."""
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


def value_schema(spec: ColumnSpec) -> dict[str, Any]:
    """The schema of one value of a contract column: type, allowed values, range, ``null`` if missing is allowed."""
    kind = _JSON_TYPES[spec.kind]
    types = [*(kind if isinstance(kind, list) else [kind]), *(["null"] if spec.nullable else [])]
    schema: dict[str, Any] = {"type": types[0] if len(types) == 1 else types, "description": spec.meaning}
    if spec.allowed is not None:
        schema["enum"] = [*spec.allowed, *([None] if spec.nullable else [])]
    if spec.min_value is not None:
        schema["minimum"] = _number(spec.min_value)
    if spec.max_value is not None:
        schema["maximum"] = _number(spec.max_value)
    if spec.positive:
        schema["exclusiveMinimum"] = 0
    return schema


def _measurement_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """A measurement object, and the column form (one object of lists)."""
    specs = [spec for spec in MEASUREMENT_COLUMNS if spec.name != "patient_id"]
    required = [spec.name for spec in specs if not spec.nullable]  # a key left out reads as null
    entry = {"type": "object", "description": "one result as the lab wrote it (a row of the measurements table "
                                              "without patient_id)",
             "properties": {spec.name: value_schema(spec) for spec in specs},
             "required": required, "additionalProperties": False}
    columns = {"type": "object", "description": "column form: one list per field, all of one length",
               "properties": {spec.name: {"type": "array", "items": value_schema(spec)} for spec in specs},
               "required": required, "additionalProperties": False}
    return entry, columns


def request_json_schema() -> dict[str, Any]:
    """The JSON Schema of one patient of a scoring request (module docstring).

    Returns
    -------
    dict
        A draft 2020-12 schema: an object with the fields of :data:`models.serving.REQUEST_FIELDS`
        in order, the required ones listed, no other field.
    """
    entry, columns = _measurement_schemas()
    properties: dict[str, Any] = {}
    for field in REQUEST_FIELDS:
        if field.spec is not None:
            properties[field.name] = value_schema(field.spec)
        else:
            properties[field.name] = {"description": field.meaning,
                                      "oneOf": [{"type": "array", "items": {"$ref": "#/$defs/measurement"}},
                                                {"$ref": "#/$defs/measurement_columns"}]}
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": REQUEST_SCHEMA_ID,
        "title": "car-relapse scoring request: one patient",
        "description": ("One patient of a scoring request (a record of `inputs` or `dataframe_records`), as of "
                        "`as_of_day`. Generated from the data contract (features/schema.py); the contract also "
                        "accepts numbers and booleans written as text, as in a CSV export."),
        "type": "object",
        "properties": properties,
        "required": [field.name for field in REQUEST_FIELDS if field.required],
        "additionalProperties": False,
        "$defs": {"measurement": entry, "measurement_columns": columns},
    }


def request_schema_text() -> str:
    """:func:`request_json_schema` as the file written with the model and to ``docs/request_schema.json``."""
    return json.dumps(request_json_schema(), indent=2) + "\n"
