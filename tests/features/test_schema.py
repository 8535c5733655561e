"""Tests of features.schema: declarations, pandera schemas, and docs that match the code."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest

from features.schema import (
    ASSAYS,
    CANONICAL_UNITS,
    COLUMNS_BY_TABLE,
    DEFAULT_DETECTION_LIMIT_BY_ASSAY,
    MEASUREMENTS_SCHEMA,
    NORMALISED_MEASUREMENTS_SCHEMA,
    OUTCOMES_SCHEMA,
    RAW_UNITS,
    SPECIMENS,
    UNIT_CONVERSIONS,
    columns_markdown,
    optional_columns,
    required_columns,
    units_markdown,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("table", list(COLUMNS_BY_TABLE))
def test_docs_embed_the_generated_column_table(table):
    contract = (DOCS / "data_contract.md").read_text()
    assert columns_markdown(table) in contract, (
        f"docs/data_contract.md is out of date for {table}; regenerate with "
        f"features.schema.columns_markdown({table!r})"
    )


def test_docs_embed_the_generated_units_table():
    assert units_markdown() in (DOCS / "data_contract.md").read_text(), (
        "docs/data_contract.md's units table is out of date; regenerate with features.schema.units_markdown()")


def test_docs_list_units_and_default_limits_of_every_assay():
    contract = (DOCS / "data_contract.md").read_text()
    for assay, conversions in UNIT_CONVERSIONS.items():
        row = re.search(rf"^\| `{assay}` \|.*$", contract, flags=re.MULTILINE)
        assert row, assay
        for unit, (canonical, _) in conversions.items():
            assert f"`{unit}`" in row.group(0) and f"`{canonical}`" in row.group(0)
        if assay in DEFAULT_DETECTION_LIMIT_BY_ASSAY:
            assert f"{DEFAULT_DETECTION_LIMIT_BY_ASSAY[assay]:g}" in row.group(0)


@pytest.mark.parametrize("table", ["infusions", "measurements", "outcomes"])
def test_raw_columns_are_the_ones_fixed_in_the_architecture(table):
    architecture = (DOCS / "architecture.md").read_text()
    section = architecture.split(f"### {table}")[1].split("###")[0]
    documented = set(re.findall(r"^\| ([a-z0-9_, ]+) \|", section, flags=re.MULTILINE))
    documented_names = {name.strip() for cell in documented for name in cell.split(",")} - {"column"}
    assert {spec.name for spec in COLUMNS_BY_TABLE[table]} == documented_names


def test_unit_lists_are_the_units_of_the_conversion_table():
    assert set(RAW_UNITS) == {unit for conversions in UNIT_CONVERSIONS.values() for unit in conversions}
    assert set(CANONICAL_UNITS) == {canon for conversions in UNIT_CONVERSIONS.values() for canon, _ in conversions.values()}
    assert set(UNIT_CONVERSIONS) == set(ASSAYS)


def test_required_and_optional_columns():
    assert optional_columns("infusions") == ("site", "fludarabine_auc")
    assert optional_columns("measurements") == ("detection_limit",)
    assert optional_columns("outcomes") == ()
    assert "detection_limit" not in required_columns("measurements")
    assert required_columns("measurements")[:4] == ("patient_id", "day", "specimen", "assay")


def _raw_measurements(**changes) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "patient_id": ["P1", "P2"],
            "day": [28.0, -3.0],
            "specimen": ["BM", "PB"],
            "assay": ["flow_mrd", "b_cell_count"],
            "value": ["<0.01%", 12.0],
            "unit": [None, "cells/uL"],
        }
    )
    return frame.assign(**changes)


def test_raw_measurement_schema_keeps_unknown_columns():
    validated = MEASUREMENTS_SCHEMA.validate(_raw_measurements(comment=["a", "b"]))
    assert validated["comment"].tolist() == ["a", "b"]


@pytest.mark.parametrize(
    "changes, column, check",
    [
        ({"assay": ["flow_mrd", "flowmrd"]}, "assay", "not one of"),
        ({"specimen": ["BM", "LN"]}, "specimen", "not one of"),
        ({"unit": [None, "mg"]}, "unit", "not one of"),
        ({"day": [28.0, np.nan]}, "day", "not_nullable"),
        ({"patient_id": ["P1", 7]}, "patient_id", "must be text"),
        ({"detection_limit": [0.0, np.nan]}, "detection_limit", "must be > 0"),
    ],
)
def test_raw_measurement_schema_rejects(changes, column, check):
    with pytest.raises(pa.errors.SchemaErrors) as caught:
        MEASUREMENTS_SCHEMA.validate(_raw_measurements(**changes), lazy=True)
    cases = caught.value.failure_cases
    assert ((cases["column"] == column) & cases["check"].str.startswith(check)).any(), cases


def test_outcome_days_may_not_be_negative():
    outcomes = pd.DataFrame(
        {
            "patient_id": ["P1"], "response": ["CR"], "response_day": [28.0], "event": ["death"],
            "event_day": [-1.0], "last_followup_day": [10.0], "relapse_phenotype": [None], "relapse_site": [None],
        }
    )
    with pytest.raises(pa.errors.SchemaErrors, match=r"must be in \[0, 7300\]"):
        OUTCOMES_SCHEMA.validate(outcomes, lazy=True)


def _normalised(**changes) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "patient_id": ["P1", "P1"],
            "day": [28.0, 28.0],
            "specimen": pd.Categorical(["BM", "PB"], categories=SPECIMENS),
            "assay": pd.Categorical(["flow_mrd", "b_cell_count"], categories=ASSAYS),
            "value": [1e-4, 3.0],
            "censored": [True, False],
            "detection_limit": [1e-4, np.nan],
            "unit": ["fraction", "cells/uL"],
            "detected_below_loq": [False, False],
        }
    )
    return frame.assign(**changes)


def test_normalised_schema_accepts_a_good_table():
    NORMALISED_MEASUREMENTS_SCHEMA.validate(_normalised())


@pytest.mark.parametrize(
    "changes, error",
    [
        ({"unit": ["cells/uL", "cells/uL"]}, "unit is not a canonical unit of the assay"),
        ({"value": [2e-4, 3.0]}, "censored value != detection limit"),
        ({"value": [1.5, 3.0], "censored": [False, False]}, "value above the unit's bound"),
        ({"detected_below_loq": [False, True]}, "detected_below_loq without censored"),
        ({"value": [1e-4, -1.0]}, "must be >= 0"),
    ],
)
def test_normalised_schema_rejects(changes, error):
    with pytest.raises(pa.errors.SchemaErrors) as caught:
        NORMALISED_MEASUREMENTS_SCHEMA.validate(_normalised(**changes), lazy=True)
    assert (caught.value.failure_cases["check"] == error).any()
