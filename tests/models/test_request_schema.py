"""Tests of models.request_schema: the JSON Schema of one patient of a request, its docs copy, and its
agreement with the data contract that judges the requests."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from features.schema import INFUSION_COLUMNS
from models.request_schema import request_json_schema, request_schema_text
from models.serving import ERROR_COLUMN, EXAMPLE_PATIENT, REQUEST_FIELDS, score_requests
from pipelines.request_schema import REGENERATE_COMMAND, main
from tests.models.test_serving import _request, bundle  # noqa: F401  (shared fitted-bundle fixture)

ROOT = Path(__file__).resolve().parents[2]
USAGE = ROOT / "docs" / "usage.md"
VALIDATOR = jsonschema.Draft202012Validator(request_json_schema())


def _errors(record) -> list[str]:
    return [error.message for error in VALIDATOR.iter_errors(record)]


def test_the_schema_is_a_valid_draft_2020_12_schema_of_every_request_field():
    schema = request_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert list(schema["properties"]) == [field.name for field in REQUEST_FIELDS]
    assert schema["required"] == [field.name for field in REQUEST_FIELDS if field.required]
    assert schema["properties"]["prior_lines"]["type"] == ["integer", "null"]
    assert schema["properties"]["as_of_day"] == {"type": "number", "description": REQUEST_FIELDS[-2].meaning,
                                                 "minimum": 0, "maximum": 7300}
    assert schema["properties"]["cns_status"]["enum"] == ["CNS1", "CNS2", "CNS3", None]


def test_docs_copy_is_in_step_with_the_contract(tmp_path):
    assert (ROOT / "docs" / "request_schema.json").read_text() == request_schema_text(), (
        f"docs/request_schema.json is out of date with the data contract: run `{REGENERATE_COMMAND}` and commit it")
    assert main([str(tmp_path / "schema.json")]) == 0
    assert json.loads((tmp_path / "schema.json").read_text()) == request_json_schema()


# --- the documented requests validate -------------------------------------------------------------------
def _usage_section(title: str) -> str:
    return USAGE.read_text().split(title, 1)[1]


def _documented_record() -> dict:
    """The JSON record of docs/usage.md, "Input: one record per patient"."""
    block = _usage_section("### Input: one record per patient").split("```json\n", 1)[1].split("```", 1)[0]
    return json.loads(block)


def _documented_curl_body() -> dict:
    """The body of the curl example of docs/usage.md, "Request formats"."""
    section = _usage_section("### Request formats").split("```bash\n", 1)[1].split("```", 1)[0]
    return json.loads(section.split("-d '", 1)[1].rsplit("'", 1)[0])


def _documented_column_form() -> dict:
    """The measurements in column form quoted in docs/usage.md."""
    section = _usage_section("`measurements` may also be sent in column form")
    return json.loads(section.split("`", 2)[1])


def test_the_example_patient_and_the_documented_requests_validate():
    assert _errors(EXAMPLE_PATIENT) == []
    assert _errors(_documented_record()) == []
    (patient,) = _documented_curl_body()["inputs"]
    assert _errors(patient) == []
    assert _errors({**EXAMPLE_PATIENT, "measurements": _documented_column_form()}) == []


# --- the schema agrees with the contract --------------------------------------------------------------------
def _patient(**changes) -> dict:
    return {**copy.deepcopy(EXAMPLE_PATIENT), **changes}


def _measurements(**changes) -> list[dict]:
    return [{**EXAMPLE_PATIENT["measurements"][1], **changes}]


ACCEPTED = {
    "an integer written 2.0": _patient(prior_lines=2.0),
    "nulls where missing is allowed": _patient(site=None, fludarabine_auc=None, down_syndrome=None, sex=None),
    "optional fields left out": {k: v for k, v in EXAMPLE_PATIENT.items() if k not in ("site", "fludarabine_auc")},
    "range bounds": _patient(age_years=40, bm_blasts_pct=0, as_of_day=7300, cell_dose_per_kg=1e4),
    "no measurements": _patient(measurements=[]),
    "a measurement without unit or limit": _patient(measurements=[{"day": -365, "specimen": "PB", "assay": "flow_mrd",
                                                                   "value": "NEG"}]),
}
REFUSED = {  # name -> (record, the field the contract names)
    "2.5 for an integer": (_patient(prior_lines=2.5), "prior_lines"),
    "a number out of range": (_patient(age_years=41), "age_years"),
    "an as-of day beyond 20 years": (_patient(as_of_day=7301), "as_of_day"),
    "a missing as-of day": (_patient(as_of_day=None), "as_of_day"),
    "a value not allowed": (_patient(costim="CD3"), "costim"),
    "text for a number": (_patient(cd22_pct_pre="ninety"), "cd22_pct_pre"),
    "a list for a boolean": (_patient(cd19_dim_pre=[True]), "cd19_dim_pre"),
    "an unknown assay": (_patient(measurements=_measurements(assay="pet_scan")), "measurements[0].assay"),
    "a boolean lab value": (_patient(measurements=_measurements(value=True)), "measurements[0].value"),
    "a zero detection limit": (_patient(measurements=_measurements(detection_limit=0)),
                               "measurements[0].detection_limit"),
    "an unknown measurement field": (_patient(measurements=_measurements(comment="x")), "measurements"),
    "a measurement more than a year before infusion": (_patient(measurements=_measurements(day=-366)), "measurements[0].day"),
}


def test_what_the_schema_accepts_the_contract_scores(bundle):  # noqa: F811
    for name, record in ACCEPTED.items():
        assert _errors(record) == [], name
    records = [{**record, "patient_id": f"P{k}"} for k, record in enumerate(ACCEPTED.values())]
    answer = score_requests(bundle, [_request(*records)])[0]
    assert [row[ERROR_COLUMN] for row in answer] == [None] * len(records)


def test_what_the_schema_refuses_the_contract_refuses_by_name(bundle):  # noqa: F811
    good = {**EXAMPLE_PATIENT, "patient_id": "GOOD"}
    for name, (record, _) in REFUSED.items():
        assert _errors(record), name
    records = [{**record, "patient_id": f"P{k}"} for k, (record, _) in enumerate(REFUSED.values())]
    answer = score_requests(bundle, [_request(good, *records)])[0]
    assert answer[0][ERROR_COLUMN] is None
    for (name, (_, field)), row in zip(REFUSED.items(), answer[1:]):
        assert row[ERROR_COLUMN] is not None and row[ERROR_COLUMN].startswith(field), (name, row[ERROR_COLUMN])


def test_unknown_and_missing_top_level_fields_are_refused():
    """The server drops an unknown field silently and refuses a missing required one; the schema says both."""
    assert any("fludarabine_AUC" in message for message in _errors(_patient(fludarabine_AUC=15.0)))
    required = [spec.name for spec in INFUSION_COLUMNS if spec.required]
    for name in (*required, "as_of_day", "measurements"):
        record = {k: v for k, v in EXAMPLE_PATIENT.items() if k != name}
        assert any(f"'{name}' is a required property" in message for message in _errors(record)), name


@pytest.mark.parametrize("name", ["sex", "blinatumomab", "cns_status", "costim"])
def test_allowed_values_are_the_contracts(name):
    spec = next(spec for spec in INFUSION_COLUMNS if spec.name == name)
    assert request_json_schema()["properties"][name]["enum"] == [*spec.allowed, None]
