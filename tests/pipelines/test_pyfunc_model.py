"""Tests of pipelines.pyfunc_model: what the registered model ships (requirements, bundle)."""

from __future__ import annotations

import ast
import gc
import json
import sys
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import pandas as pd

from models.serving import EXAMPLE_PATIENT, REQUEST_FIELDS, score_request
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
    assert [list(record) for record in answer] == [expected.columns.tolist()]
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


def test_signature_outputs_are_the_scored_columns(bundle):  # noqa: F811
    outputs = model_signature(bundle).outputs.input_names()
    assert outputs == score_request(bundle, pd.DataFrame([EXAMPLE_PATIENT])).columns.tolist()
