"""Tests of pipelines.pyfunc_model: what the registered model ships (requirements, bundle)."""

from __future__ import annotations

import ast
import gc
import json
import sys
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from models.serving import ERROR_COLUMN, EXAMPLE_PATIENT, REQUEST_FIELDS, score_request, tables_to_records
from pipelines.pyfunc_model import (
    BUNDLE_ARTIFACT,
    CarRelapseModel,
    input_schema,
    load_bundle,
    model_signature,
    pip_requirements,
    request_field_metadata,
    save_bundle,
)
from tests.models.test_serving import bundle  # noqa: F401  (shared fitted-bundle fixture)

_PROJECT = Path(__file__).resolve().parents[2]


def _third_party_imports(paths: list[Path]) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "features", "models"}


def test_requirements_pin_every_package_the_shipped_code_imports():
    shipped = sorted((_PROJECT / "features").glob("*.py")) + sorted((_PROJECT / "models").glob("*.py"))
    shipped.append(_PROJECT / "pipelines" / "pyfunc_model.py")
    pinned = {pin.split("==")[0].lower() for pin in pip_requirements()}
    distributions = metadata.packages_distributions()
    for module in _third_party_imports(shipped):
        assert {d.lower() for d in distributions[module]} & pinned, f"'{module}' is imported but not pinned"
    assert all("==" in pin for pin in pip_requirements())


def test_bundle_round_trip_scores_identically(bundle, tmp_path):  # noqa: F811
    loaded = load_bundle(save_bundle(bundle, tmp_path / "bundle.pkl"))
    request = pd.DataFrame([EXAMPLE_PATIENT])
    pd.testing.assert_frame_equal(score_request(loaded, request), score_request(bundle, request), check_exact=True)


def test_predict_answers_missing_values_as_none(bundle, tmp_path):  # noqa: F811
    every_factor = replace(bundle, n_top_factors=len(bundle.feature_columns))  # includes unmeasured features

    class Context:
        artifacts = {BUNDLE_ARTIFACT: str(save_bundle(every_factor, tmp_path / "bundle.pkl"))}

    model = CarRelapseModel()
    frozen_before = gc.get_freeze_count()
    model.load_context(Context())
    assert gc.get_freeze_count() == frozen_before  # only server processes freeze (pipelines.serve)
    patient = {**EXAMPLE_PATIENT, "measurements": EXAMPLE_PATIENT["measurements"][:1]}
    answer = model.predict(Context(), [patient])
    expected = score_request(every_factor, pd.DataFrame([patient]))
    assert [list(record) for record in answer] == [expected.columns.tolist() + [ERROR_COLUMN]]
    assert answer[0].pop(ERROR_COLUMN) is None
    answered = pd.DataFrame(answer).to_numpy()
    missing = expected.isna().to_numpy()
    assert missing.any()
    assert all(value is None for value in answered[missing])
    assert answered[~missing].tolist() == expected.to_numpy()[~missing].tolist()
    json.dumps(answer, allow_nan=False)  # standard JSON: no NaN left


def test_input_schema_names_every_request_field_and_leaves_typing_to_the_contract():
    declared = {column["name"]: column for column in input_schema().to_dict()}
    assert list(declared) == [field.name for field in REQUEST_FIELDS]
    for field in REQUEST_FIELDS:
        assert declared[field.name]["type"] == "any", field.name  # no lossy MLflow cast (2.5 -> 2, null -> 'None')
        assert declared[field.name]["required"] == field.required, field.name
    metadata = request_field_metadata()
    assert [entry["name"] for entry in metadata] == list(declared)
    assert metadata[[entry["name"] for entry in metadata].index("prior_lines")] == {
        "name": "prior_lines", "type": "int", "required": True, "meaning": "number of prior therapy lines"}


def test_signature_outputs_are_the_scored_columns_and_the_error(bundle):  # noqa: F811
    signature = model_signature(bundle)
    outputs = signature.outputs.input_names()
    assert outputs == score_request(bundle, pd.DataFrame([EXAMPLE_PATIENT])).columns.tolist() + [ERROR_COLUMN]
    assert not any(column.required for column in signature.outputs.inputs)  # a bad patient's scores are null
    assert signature.outputs.inputs[-1].type.name == "string"
    assert signature.params.to_dict() == [{"name": "on_error", "type": "string", "default": "quarantine",
                                           "shape": None}]


@pytest.fixture(scope="module")
def saved_model(bundle, tmp_path_factory):  # noqa: F811
    """The pyfunc saved as ``log_scoring_model`` logs it (model code, bundle, signature), loaded back."""
    from pathlib import Path

    from pipelines.pyfunc_model import save_bundle

    folder = tmp_path_factory.mktemp("pyfunc")
    project = Path(__file__).resolve().parents[2]
    mlflow.pyfunc.save_model(
        path=str(folder / "model"), python_model=str(project / "pipelines" / "pyfunc_model.py"),
        artifacts={BUNDLE_ARTIFACT: str(save_bundle(bundle, folder / "bundle.pkl"))},
        code_paths=[str(project / "features"), str(project / "models")], signature=model_signature(bundle),
    )
    return mlflow.pyfunc.load_model(str(folder / "model"))


def test_one_bad_patient_in_a_frame_of_many_gets_an_error_record(saved_model, bundle):  # noqa: F811
    """As Python callers (and a Spark batch) call it: a DataFrame of many patients, one of them bad."""
    from pipelines.simulate import simulate_cohort

    cohort = simulate_cohort(12, 5)
    records = tables_to_records(cohort.infusions, cohort.measurements, 91.0)
    records[4]["age_years"] = "eleven"
    answer = pd.DataFrame(saved_model.predict(pd.DataFrame(records)))
    assert answer["patient_id"].tolist() == [record["patient_id"] for record in records]
    assert answer[ERROR_COLUMN].isna().sum() == 11 and answer.loc[4, ERROR_COLUMN] == "age_years: not a number"
    assert answer.drop(columns=["patient_id", ERROR_COLUMN]).iloc[4].isna().all()
    good = [record for position, record in enumerate(records) if position != 4]
    expected = score_request(bundle, pd.DataFrame(good))
    pd.testing.assert_frame_equal(answer.drop(index=4).drop(columns=[ERROR_COLUMN]).reset_index(drop=True),
                                  expected, check_dtype=False, check_exact=True)


def test_on_error_fail_and_a_call_without_any_good_patient_raise_a_400(saved_model):
    good, bad = dict(EXAMPLE_PATIENT), {**EXAMPLE_PATIENT, "patient_id": "B", "prior_lines": 2.5}
    with pytest.raises(MlflowException) as caught:
        saved_model.predict(pd.DataFrame([good, bad]), params={"on_error": "fail"})
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "patient at position 1: prior_lines: not an integer" in caught.value.message
    assert "2.5" not in caught.value.message
    with pytest.raises(MlflowException, match="no patient of the request can be scored: patient at position 0"):
        saved_model.predict(pd.DataFrame([bad]))
    with pytest.raises(MlflowException, match="params.on_error must be one of fail, quarantine, records"):
        saved_model.predict(pd.DataFrame([good]), params={"on_error": "ignore"})
    assert saved_model.predict(pd.DataFrame([good]), params={"on_error": "fail"})[0][ERROR_COLUMN] is None


def test_on_error_records_answers_a_call_without_any_good_patient(saved_model):
    """Batch callers (a Spark batch): every patient answered, with every answer field, none refused."""
    good = dict(EXAMPLE_PATIENT)
    bad = [{**good, "patient_id": "B", "prior_lines": 2.5}, {**good, "patient_id": "C", "measurements": None}]
    answer = saved_model.predict(pd.DataFrame(bad), params={"on_error": "records"})
    fields = list(saved_model.predict(pd.DataFrame([good]))[0])
    assert [list(record) for record in answer] == [fields, fields]
    assert [record[ERROR_COLUMN] for record in answer] == [
        "prior_lines: not an integer",
        "measurements: must be a list of measurement objects (may be empty) or an object of equal-length lists"]
    assert all(value is None for record in answer for name, value in record.items() if name not in ("patient_id", ERROR_COLUMN))
    mixed = saved_model.predict(pd.DataFrame([good, bad[0]]), params={"on_error": "records"})
    assert mixed == saved_model.predict(pd.DataFrame([good, bad[0]]))  # with a good patient: as quarantine
