"""Tests of features.contract: one case per kind of bad input, in fail and in quarantine mode."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from features.coercion import typed_columns
from features.contract import (
    MAX_ERROR_LINES,
    OUTCOME_RULES,
    ContractError,
    TableReport,
    display_row,
    frame_columns,
    validate_cohort,
)
from features.schema import (
    COLUMNS_BY_TABLE,
    INFUSIONS_SCHEMA,
    MAX_VALUE_BY_CANONICAL_UNIT,
    NORMALISED_MEASUREMENTS_SCHEMA,
    OUTCOMES_SCHEMA,
    SCHEMA_BY_TABLE,
    columns_markdown,
)
from tests import conftest

CSV_SOURCES = {table: f"{table}.csv" for table in ("infusions", "measurements", "outcomes")}


def _validate(raw, on_error="fail", sources=CSV_SOURCES, outcomes=True, as_of_day_column=None):
    return validate_cohort(
        raw["infusions"], raw["measurements"], raw["outcomes"] if outcomes else None,
        on_error=on_error, source_names=sources, as_of_day_column=as_of_day_column,
    )


def _set(table: str, position: int, column: str, value) -> Callable[[dict], None]:
    def mutate(raw: dict) -> None:
        raw[table].loc[position, column] = value

    return mutate


def _append_copy(table: str, position: int) -> Callable[[dict], None]:
    def mutate(raw: dict) -> None:
        raw[table] = pd.concat([raw[table], raw[table].iloc[[position]]], ignore_index=True)

    return mutate


def _relapse_for_p3(raw: dict) -> None:
    raw["outcomes"].loc[2, ["event", "event_day", "relapse_phenotype", "relapse_site"]] = [
        "relapse", "50", "CD19_pos", "medullary"
    ]


@dataclass(frozen=True)
class BadInput:
    """A mutation of the good cohort and what the contract must say about it."""

    name: str
    mutate: Callable[[dict], None]
    table: str
    csv_rows: tuple[int, ...]  # CSV line numbers of the offending rows (header = line 1)
    column: str
    reason_key: str
    fragment: str
    quarantined: dict  # rows quarantined per table, including the patient's other rows


BAD_INPUTS = [
    BadInput("unparseable value", _set("measurements", 2, "value", "1.2E-05 approx"), "measurements", (4,),
             "value", "unparseable value: value", "cannot parse lab value '1.2E-05 approx'",
             {"infusions": 0, "measurements": 1, "outcomes": 0}),
    BadInput("MRD above 100%", _set("measurements", 1, "value", "150%"), "measurements", (3,),
             "value", "impossible value: value", "above the possible maximum 1 fraction",
             {"infusions": 0, "measurements": 1, "outcomes": 0}),
    BadInput("unknown assay", _set("measurements", 6, "assay", "flow_mdr"), "measurements", (8,),
             "assay", "value not allowed: assay", "'flow_mdr' not one of flow_mrd",
             {"infusions": 0, "measurements": 1, "outcomes": 0}),
    BadInput("unknown specimen", _set("measurements", 6, "specimen", "LN"), "measurements", (8,),
             "specimen", "value not allowed: specimen", "'LN' not one of BM, PB, CSF",
             {"infusions": 0, "measurements": 1, "outcomes": 0}),
    BadInput("unknown unit", _set("measurements", 7, "unit", "pct"), "measurements", (9,),
             "unit", "value not allowed: unit", "'pct' not one of fraction, percent",
             {"infusions": 0, "measurements": 1, "outcomes": 0}),
    BadInput("unit of another assay", _set("measurements", 3, "unit", "fraction"), "measurements", (5,),
             "unit", "unit not valid for assay: unit", "unit 'fraction' is not a unit of assay b_cell_count",
             {"infusions": 0, "measurements": 1, "outcomes": 0}),
    BadInput("duplicate patient id", _append_copy("infusions", 1), "infusions", (3, 5),
             "patient_id", "duplicate patient_id: patient_id", "patient_id 'P2' appears 2 times",
             {"infusions": 2, "measurements": 3, "outcomes": 1}),
    BadInput("measurement for unknown patient", _set("measurements", 9, "patient_id", "P9"), "measurements", (11,),
             "patient_id", "unknown patient: patient_id", "patient_id 'P9' has no row in infusions",
             {"infusions": 0, "measurements": 1, "outcomes": 0}),
    BadInput("measurement after last follow-up", _set("measurements", 9, "day", "75"), "measurements", (11,),
             "day", "measurement after last follow-up: day", "day 75 is after last_followup_day 60",
             {"infusions": 0, "measurements": 1, "outcomes": 0}),
    BadInput("relapse before response", _set("outcomes", 0, "event_day", "20"), "outcomes", (2,),
             "event_day", "relapse before response: event_day", "relapse on day 20 precedes the response",
             {"infusions": 1, "measurements": 6, "outcomes": 1}),
    BadInput("relapse in NR patient", _relapse_for_p3, "outcomes", (4,),
             "event", "relapse in NR patient: event", "relapse recorded for a patient with response NR",
             {"infusions": 1, "measurements": 1, "outcomes": 1}),
    BadInput("negative event day", _set("outcomes", 2, "event_day", "-3"), "outcomes", (4,),
             "event_day", "value out of range: event_day", "-3.0 must be in [0, 7300]",
             {"infusions": 1, "measurements": 1, "outcomes": 1}),
    BadInput("wrong type in a numeric column", _set("infusions", 1, "age_years", "seven"), "infusions", (3,),
             "age_years", "wrong type: age_years", "'seven' is not a number",
             {"infusions": 1, "measurements": 3, "outcomes": 1}),
    BadInput("phenotype without relapse", _set("outcomes", 1, "relapse_phenotype", "CD19_pos"), "outcomes", (3,),
             "relapse_phenotype", "phenotype without relapse: relapse_phenotype",
             "relapse_phenotype 'CD19_pos' given but event is 'none'",
             {"infusions": 1, "measurements": 3, "outcomes": 1}),
    BadInput("site without relapse", _set("outcomes", 1, "relapse_site", "medullary"), "outcomes", (3,),
             "relapse_site", "site without relapse: relapse_site", "relapse_site 'medullary' given but event is 'none'",
             {"infusions": 1, "measurements": 3, "outcomes": 1}),
    BadInput("event day without event", _set("outcomes", 1, "event_day", "100"), "outcomes", (3,),
             "event_day", "event day without event: event_day", "event_day 100 given but event is 'none'",
             {"infusions": 1, "measurements": 3, "outcomes": 1}),
    BadInput("missing event day", _set("outcomes", 2, "event_day", None), "outcomes", (4,),
             "event_day", "missing event day: event_day", "event 'death' has no event_day",
             {"infusions": 1, "measurements": 1, "outcomes": 1}),
    BadInput("event after last follow-up", _set("outcomes", 0, "event_day", "350"), "outcomes", (2,),
             "event_day", "event after last follow-up: event_day", "event_day 350 is after last_followup_day 300",
             {"infusions": 1, "measurements": 6, "outcomes": 1}),
    BadInput("response after last follow-up", _set("outcomes", 2, "response_day", "70"), "outcomes", (4,),
             "response_day", "response after last follow-up: response_day",
             "response_day 70 is after last_followup_day 60", {"infusions": 1, "measurements": 1, "outcomes": 1}),
    BadInput("missing event", _set("outcomes", 1, "event", None), "outcomes", (3,),
             "event", "missing value: event", "value is missing", {"infusions": 1, "measurements": 3, "outcomes": 1}),
    BadInput("duplicate outcome row", _append_copy("outcomes", 1), "outcomes", (3, 5),
             "patient_id", "duplicate patient_id: patient_id", "patient_id 'P2' appears 2 times",
             {"infusions": 1, "measurements": 3, "outcomes": 2}),
    BadInput("outcome for unknown patient", _set("outcomes", 2, "patient_id", "P9"), "outcomes", (4,),
             "patient_id", "unknown patient: patient_id", "patient_id 'P9' has no row in infusions",
             {"infusions": 1, "measurements": 1, "outcomes": 1}),  # and P3 has no outcome row any more
    BadInput("missing patient id", _set("infusions", 2, "patient_id", None), "infusions", (4,),
             "patient_id", "missing value: patient_id", "value is missing",
             {"infusions": 1, "measurements": 1, "outcomes": 1}),  # P3's rows: unknown patient
    BadInput("value out of range", _set("infusions", 2, "age_years", "45"), "infusions", (4,),
             "age_years", "value out of range: age_years", "45.0 must be in [0, 40]",
             {"infusions": 1, "measurements": 1, "outcomes": 1}),
    BadInput("wrong type in a boolean column", _set("infusions", 0, "prior_hsct", "maybe"), "infusions", (2,),
             "prior_hsct", "wrong type: prior_hsct", "'maybe' is not a boolean (true/false)",
             {"infusions": 1, "measurements": 6, "outcomes": 1}),
    BadInput("missing measurement day", _set("measurements", 6, "day", None), "measurements", (8,),
             "day", "missing value: day", "value is missing", {"infusions": 0, "measurements": 1, "outcomes": 0}),
    BadInput("infinite measurement day", _set("measurements", 6, "day", "inf"), "measurements", (8,),
             "day", "wrong type: day", "'inf' is not a number", {"infusions": 0, "measurements": 1, "outcomes": 0}),
    BadInput("missing lab value", _set("measurements", 7, "value", None), "measurements", (9,),
             "value", "missing value: value", "value is missing", {"infusions": 0, "measurements": 1, "outcomes": 0}),
    BadInput("number without unit", _set("measurements", 3, "unit", None), "measurements", (5,),
             "unit", "missing unit: unit", "numeric result '0' needs a unit",
             {"infusions": 0, "measurements": 1, "outcomes": 0}),
    BadInput("percent contradicts the unit column", _set("measurements", 4, "unit", "cells/uL"), "measurements", (6,),
             "unit", "unit conflict: unit", "'%' in '2%' contradicts unit 'cells/uL'",
             {"infusions": 0, "measurements": 1, "outcomes": 0}),
    BadInput("detection limit not positive", _set("measurements", 5, "detection_limit", "0"), "measurements", (7,),
             "detection_limit", "value out of range: detection_limit", "0.0 must be > 0",
             {"infusions": 0, "measurements": 1, "outcomes": 0}),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda case: case.name)
def test_bad_input_fails_with_file_row_column_and_reason(raw_cohort, case):
    case.mutate(raw_cohort)
    with pytest.raises(ContractError) as caught:
        _validate(raw_cohort, on_error="fail")
    for row in case.csv_rows:
        prefix = f"{case.table}.csv, row {row}, column {case.column}: "
        matching = [line for line in caught.value.lines if line.startswith(prefix)]
        assert matching, f"no line starting {prefix!r} in:\n{caught.value}"
        assert case.fragment in matching[0]
        assert prefix in str(caught.value)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda case: case.name)
def test_bad_input_is_quarantined_and_counted(raw_cohort, case):
    case.mutate(raw_cohort)
    rows_in = {name: len(frame) for name, frame in raw_cohort.items()}
    cohort = _validate(raw_cohort, on_error="quarantine")
    report = cohort.report
    assert report.tables[case.table].reasons[case.reason_key] == len(case.csv_rows)
    outputs = {"infusions": cohort.infusions, "measurements": cohort.measurements, "outcomes": cohort.outcomes}
    for name, expected in case.quarantined.items():
        table = report.tables[name]
        assert table.rows_quarantined == expected, name
        assert (table.rows_in, table.rows_out) == (rows_in[name], rows_in[name] - expected), name
        assert len(outputs[name]) == rows_in[name] - expected
        assert len(cohort.quarantined[name]) == expected
    quarantined = cohort.quarantined[case.table]
    offending = quarantined[quarantined["row"].isin(case.csv_rows)]
    assert len(offending) == len(case.csv_rows)
    assert offending["quarantine_reasons"].str.contains(case.fragment, regex=False).all()


def test_every_outcome_rule_has_a_bad_input_case():
    covered = {case.reason_key.split(":")[0] for case in BAD_INPUTS}
    assert {kind for _, kind, _, _ in OUTCOME_RULES} <= covered


def test_missing_required_column_is_an_error_in_both_modes(raw_cohort):
    raw_cohort["infusions"] = raw_cohort["infusions"].drop(columns=["costim"])
    raw_cohort["outcomes"] = raw_cohort["outcomes"].drop(columns=["last_followup_day"])
    for mode in ("fail", "quarantine"):
        with pytest.raises(ContractError) as caught:
            _validate(raw_cohort, on_error=mode)
        assert caught.value.lines == [
            "infusions.csv, column costim: required column is missing",
            "outcomes.csv, column last_followup_day: required column is missing",
        ]


def test_good_cohort_is_typed_and_normalised(raw_cohort):
    cohort = _validate(raw_cohort)
    assert list(cohort.infusions["patient_id"]) == ["P1", "P2", "P3"]
    assert cohort.infusions["age_years"].tolist() == [12.5, 7.0, 19.0]
    assert str(cohort.infusions["prior_lines"].dtype) == "Int64"
    assert str(cohort.infusions["kmt2a_rearranged"].dtype) == "boolean"
    assert cohort.infusions["kmt2a_rearranged"].tolist() == [False, True, False]
    assert np.isnan(cohort.infusions["fludarabine_auc"].iloc[2])
    assert cohort.outcomes["event_day"].iloc[0] == 200.0 and np.isnan(cohort.outcomes["event_day"].iloc[1])
    measurements = cohort.measurements
    NORMALISED_MEASUREMENTS_SCHEMA.validate(measurements)
    expected = pd.DataFrame(
        [  # value, censored, detection_limit, unit, detected_below_loq  (worked by hand)
            (0.45, False, 1e-4, "fraction", False),  # "45%" flow: 45/100, default flow limit
            (1e-4, True, 1e-4, "fraction", False),  # "<0.01%": censored at 0.01/100
            (1.2e-5, False, 1e-6, "fraction", False),  # "1.2E-05" fraction, default NGS limit
            (0.0, False, np.nan, "cells/uL", False),  # 0 B cells is a measurement, not censored
            (2.0, False, np.nan, "pct_lymphocytes", False),  # "2%" B cells -> % of lymphocytes
            (1e-6, True, 1e-6, "fraction", True),  # "detected <LOQ" with limit 1e-6
            (1e-4, True, 1e-4, "fraction", False),  # "NEG" flow: default flow limit
            (95.0, False, np.nan, "pct_blasts", False),
            (15000.0, False, np.nan, "copies/ug", False),
            (6e-4, False, 1e-4, "fraction", False),  # "0.06%"
        ],
        columns=["value", "censored", "detection_limit", "unit", "detected_below_loq"],
    )
    pd.testing.assert_frame_equal(measurements[expected.columns], expected, rtol=1e-12)
    assert measurements["day"].tolist()[:2] == [-5.0, 28.0]
    assert list(measurements["specimen"].cat.categories) == ["BM", "PB", "CSF"]


def test_good_cohort_report_counts_every_row(raw_cohort):
    report = _validate(raw_cohort).report
    assert {name: (t.rows_in, t.rows_out, t.rows_quarantined) for name, t in report.tables.items()} == {
        "infusions": (3, 3, 0), "measurements": (10, 10, 0), "outcomes": (3, 3, 0)
    }
    assert (report.patients_in, report.patients_out, report.quarantined_patients) == (3, 3, ())
    assert report.tables["measurements"].unknown_columns == ()


def test_unknown_columns_are_kept_and_reported(raw_cohort):
    raw_cohort["infusions"]["lab_batch"] = ["b1", "b2", "b3"]
    raw_cohort["measurements"] = raw_cohort["measurements"].drop(columns=["detection_limit"])
    raw_cohort["measurements"]["comment"] = "ok"
    cohort = _validate(raw_cohort)
    assert cohort.infusions["lab_batch"].tolist() == ["b1", "b2", "b3"]
    assert cohort.infusions.columns[-1] == "lab_batch"
    assert cohort.measurements["comment"].eq("ok").all()
    assert cohort.report.tables["infusions"].unknown_columns == ("lab_batch",)
    assert cohort.report.tables["measurements"].unknown_columns == ("comment",)
    assert cohort.report.tables["measurements"].absent_optional_columns == ("detection_limit",)
    # without its detection_limit column, "detected <LOQ" NGS falls back to the NGS default 1e-6
    assert cohort.measurements["detection_limit"].iloc[5] == 1e-6


def test_absent_optional_columns_stay_absent(raw_cohort):
    raw_cohort["infusions"] = raw_cohort["infusions"].drop(columns=["site", "fludarabine_auc"])
    cohort = _validate(raw_cohort)
    assert "site" not in cohort.infusions and "fludarabine_auc" not in cohort.infusions
    assert cohort.report.tables["infusions"].absent_optional_columns == ("site", "fludarabine_auc")


def test_without_outcomes_only_outcome_free_checks_run(raw_cohort):
    raw_cohort["measurements"].loc[9, "day"] = "750"  # would be after P3's last follow-up
    cohort = _validate(raw_cohort, outcomes=False)
    assert cohort.outcomes is None
    assert set(cohort.report.tables) == {"infusions", "measurements"}
    assert len(cohort.measurements) == 10


def test_patient_without_outcome_row_is_an_error(raw_cohort):
    raw_cohort["outcomes"] = raw_cohort["outcomes"].iloc[:2]
    with pytest.raises(ContractError, match=r"infusions.csv, row 4, column patient_id: patient_id 'P3' has no row"):
        _validate(raw_cohort)
    cohort = _validate(raw_cohort, on_error="quarantine")
    assert cohort.report.tables["infusions"].reasons == {"no outcome row: patient_id": 1}
    assert cohort.report.tables["measurements"].reasons == {"patient quarantined: patient_id": 1}
    assert cohort.report.quarantined_patients == ("P3",)


def test_relapse_without_phenotype_is_kept_and_noted(raw_cohort):
    raw_cohort["outcomes"].loc[0, "relapse_phenotype"] = None
    cohort = _validate(raw_cohort)
    assert len(cohort.outcomes) == 3
    assert cohort.report.notes == ("outcomes: 1 relapse(s) without relapse_phenotype (kept; the value is unknown)",)


def test_patients_who_can_never_be_at_risk_are_kept_and_noted(raw_cohort):
    raw_cohort["outcomes"].loc[1, "response_day"] = None  # P2: CR, day unknown
    raw_cohort["outcomes"].loc[2, "response"] = None  # P3: died, response never assessed
    cohort = _validate(raw_cohort)
    assert len(cohort.outcomes) == 3
    assert cohort.report.notes == (
        "outcomes: 1 patient(s) without response (kept; in no landmark risk set)",
        "outcomes: 1 patient(s) in CR/CRi without response_day (kept; in no landmark risk set after day 0)",
    )


def test_parquet_and_in_memory_rows_are_zero_based(raw_cohort):
    raw_cohort["measurements"].loc[2, "value"] = "junk"
    with pytest.raises(ContractError) as caught:
        _validate(raw_cohort, sources={"infusions": "i.parquet", "measurements": "m.parquet", "outcomes": "o.parquet"})
    assert caught.value.lines == ["m.parquet, row 2, column value: cannot parse lab value 'junk'"]
    with pytest.raises(ContractError) as caught:
        _validate(raw_cohort, sources=None)
    assert caught.value.lines == ["measurements, row 2, column value: cannot parse lab value 'junk'"]
    assert (display_row("x.CSV", 0), display_row("x.parquet", 0)) == (2, 0)


def test_typed_input_gives_the_same_cohort_as_text(raw_cohort):
    typed = {name: frame.copy() for name, frame in raw_cohort.items()}
    typed["infusions"]["age_years"] = typed["infusions"]["age_years"].astype(float)
    typed["infusions"]["down_syndrome"] = typed["infusions"]["down_syndrome"].eq("True")
    typed["infusions"]["prior_lines"] = typed["infusions"]["prior_lines"].astype(int)
    typed["measurements"]["day"] = typed["measurements"]["day"].astype(float)
    typed["measurements"]["detection_limit"] = typed["measurements"]["detection_limit"].astype(float)
    from_text, from_typed = _validate(raw_cohort), _validate(typed)
    pd.testing.assert_frame_equal(from_text.infusions, from_typed.infusions)
    pd.testing.assert_frame_equal(from_text.measurements, from_typed.measurements)


def test_infinite_number_in_a_typed_column_is_the_same_problem_as_in_text(raw_cohort):
    text = {name: frame.copy() for name, frame in raw_cohort.items()}
    text["infusions"].loc[1, "age_years"] = "inf"
    typed = {name: frame.copy() for name, frame in raw_cohort.items()}
    typed["infusions"]["age_years"] = typed["infusions"]["age_years"].astype(float)
    typed["infusions"].loc[1, "age_years"] = np.inf
    for raw in (text, typed):
        with pytest.raises(ContractError, match=r"infusions.csv, row 3, column age_years: .* is not a number"):
            _validate(raw)
    from_text, from_typed = _validate(text, on_error="quarantine"), _validate(typed, on_error="quarantine")
    assert from_text.report.tables["infusions"].reasons == from_typed.report.tables["infusions"].reasons
    pd.testing.assert_frame_equal(from_text.infusions, from_typed.infusions)


def test_error_message_is_capped_but_keeps_every_line(raw_cohort):
    many = pd.concat([raw_cohort["measurements"].iloc[[9]]] * (MAX_ERROR_LINES + 50), ignore_index=True)
    many["value"] = "??"
    raw_cohort["measurements"] = many
    with pytest.raises(ContractError) as caught:
        _validate(raw_cohort)
    assert len(caught.value.lines) == MAX_ERROR_LINES + 50
    assert "... and 50 more" in str(caught.value)
    assert str(caught.value).count("cannot parse lab value") == MAX_ERROR_LINES


def test_report_is_json_serialisable_and_renders(raw_cohort):
    raw_cohort["measurements"].loc[2, "value"] = "junk"
    report = _validate(raw_cohort, on_error="quarantine").report
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["tables"]["measurements"]["reasons"] == {"unparseable value: value": 1}
    assert as_dict["tables"]["measurements"]["examples"] == [
        "measurements.csv, row 4, column value: cannot parse lab value 'junk'"
    ]
    console = Console(record=True, width=160)
    console.print(report.render())
    text = console.export_text()
    assert "unparseable value: value" in text
    assert "measurements.csv, row 4, column value: cannot parse lab value 'junk'" in text


def test_examples_are_limited_per_reason(raw_cohort):
    raw_cohort["measurements"]["value"] = "junk"
    report = validate_cohort(
        raw_cohort["infusions"], raw_cohort["measurements"], raw_cohort["outcomes"],
        on_error="quarantine", max_examples=2,
    ).report
    assert report.tables["measurements"].reasons == {"unparseable value: value": 10}
    assert len(report.tables["measurements"].examples) == 2


def test_report_refuses_rows_that_vanish():
    with pytest.raises(RuntimeError, match="rows in"):
        TableReport(table="measurements", source="m.csv", rows_in=10, rows_out=8, rows_quarantined=1)


def test_unknown_on_error_mode_is_rejected(raw_cohort):
    with pytest.raises(ValueError, match="on_error must be one of fail, quarantine"):
        _validate(raw_cohort, on_error="ignore")


def test_infusion_cell_errors_name_value_and_rule(raw_cohort):
    infusions = raw_cohort["infusions"]
    infusions.loc[0, ["prior_lines", "cell_dose_per_kg"]] = ["-1", "0"]
    infusions.loc[1, "sex"] = "X"
    infusions.loc[2, ["prior_crs", "down_syndrome"]] = ["1.5", "maybe"]
    with pytest.raises(ContractError) as caught:
        _validate(raw_cohort)
    assert caught.value.lines == [
        "infusions.csv, row 2, column prior_lines: -1 must be in [0, 20]",
        "infusions.csv, row 2, column cell_dose_per_kg: 0.0 must be in [10000, 1e+09]",
        "infusions.csv, row 3, column sex: 'X' not one of F, M",
        "infusions.csv, row 4, column down_syndrome: 'maybe' is not a boolean (true/false)",
        "infusions.csv, row 4, column prior_crs: '1.5' is not an integer",
    ]


# --- pandera as the oracle of the core ---------------------------------------------------------------------
def _typed_frame(table: str, raw: pd.DataFrame) -> tuple[pd.DataFrame, set, set]:
    """The core's typed columns of a raw table, and the cells it flags by their declaration (not by type)."""
    typed = typed_columns(COLUMNS_BY_TABLE[table], frame_columns(table, raw), len(raw))
    flagged = {(int(row), name) for name, column in typed.items() for problem in column.problems
               if problem.kind != "wrong type" for row in problem.rows}
    wrong = {(int(row), name) for name, column in typed.items() for problem in column.problems
             if problem.kind == "wrong type" for row in problem.rows}
    return pd.DataFrame({name: column.values for name, column in typed.items()}), flagged, wrong


def _pandera_failures(table: str, typed: pd.DataFrame) -> set:
    try:
        SCHEMA_BY_TABLE[table].validate(typed, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
        assert cases["index"].notna().all(), cases  # dtypes are right: every failure is a cell
        return {(int(row), column) for row, column in zip(cases["index"], cases["column"])}
    return set()


_CELL_VALUES = ["", "x", "-1", "0", "1.5", "2", "1e300", "inf", "-0.5", "45", "101", "True", "yes", "F", "Q",
                "CNS3", "naive", "4-1BB", None, "7300", "7301", "-365", "-366", "1e4", "9999", "2.0e6"]


@settings(max_examples=60, deadline=None)
@given(table=st.sampled_from(["infusions", "outcomes"]),
       edits=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 30), st.sampled_from(_CELL_VALUES)), max_size=12))
def test_the_core_flags_exactly_the_cells_pandera_flags(table, edits):
    """pandera (the schema declaration) is the oracle of the core's checks of each declaration:
    on the cells that coerce, both flag the same cells; the cells that do not are "wrong type"."""
    raw = {"infusions": conftest._infusions, "outcomes": conftest._outcomes}[table]()
    names = [name for name in raw.columns if name != "patient_id"]
    for row, column, value in edits:
        raw.loc[row, names[column % len(names)]] = value
    typed, flagged, wrong = _typed_frame(table, raw)
    assert _pandera_failures(table, typed) - {cell for cell in flagged | wrong} == set()
    expected = {cell for cell in _pandera_failures(table, typed) if cell not in wrong}
    assert flagged == expected


def test_validated_tables_satisfy_their_pandera_schemas(raw_cohort):
    from pipelines.simulate import simulate_cohort

    simulated = simulate_cohort(200, 3)
    for cohort in (_validate(raw_cohort, on_error="quarantine"),
                   validate_cohort(simulated.infusions, simulated.measurements, simulated.outcomes)):
        INFUSIONS_SCHEMA.validate(cohort.infusions)
        OUTCOMES_SCHEMA.validate(cohort.outcomes)
        NORMALISED_MEASUREMENTS_SCHEMA.validate(cohort.measurements)


# --- holes closed (each once passed silently or crashed what came after) -------------------------------------------
def test_every_number_has_a_finite_range_in_the_documented_table():
    for table in ("infusions", "measurements", "outcomes"):
        for spec in COLUMNS_BY_TABLE[table]:
            if spec.kind in ("float", "int"):
                assert spec.max_value is not None and np.isfinite(spec.max_value), (table, spec.name)
                assert spec.min_value is not None or spec.positive, (table, spec.name)
                assert spec.constraint_text() in columns_markdown(table)
    assert all(np.isfinite(bound) for bound in MAX_VALUE_BY_CANONICAL_UNIT.values())


@pytest.mark.parametrize(
    ("table", "column", "value", "reason"),
    [
        ("infusions", "fludarabine_auc", "1e300", "1e+300 must be in [0, 100]"),
        ("infusions", "cell_dose_per_kg", "2.1", "2.1 must be in [10000, 1e+09]"),
        ("infusions", "prior_lines", "40", "40 must be in [0, 20]"),
        ("measurements", "day", "45000", "45000.0 must be in [-365, 7300]"),
        ("measurements", "detection_limit", "1e300", "1e+300 must be <= 1e+07"),
        ("outcomes", "last_followup_day", "1e9", "1000000000.0 must be in [0, 7300]"),
        ("outcomes", "response_day", "400", "400.0 must be in [0, 365]"),
    ],
)
def test_absurd_numbers_are_refused_by_their_range(raw_cohort, table, column, value, reason):
    raw_cohort[table].loc[1, column] = value
    with pytest.raises(ContractError) as caught:
        _validate(raw_cohort)
    assert f"{table}.csv, row 3, column {column}: {reason}" in caught.value.lines


def test_counts_beyond_the_unit_bound_are_impossible_values(raw_cohort):
    raw_cohort["measurements"].loc[8, "value"] = "1e30"  # CAR copies/ug
    with pytest.raises(ContractError, match=r"row 10, column value: '1e30' gives 1e\+30 copies/ug, above the possible"):
        _validate(raw_cohort)


def _typed_raw(raw: dict) -> dict:
    """The raw cohort with numbers, as a Parquet file would hold them."""
    typed = {name: frame.copy() for name, frame in raw.items()}
    typed["infusions"]["age_years"] = typed["infusions"]["age_years"].astype(float)
    typed["measurements"]["day"] = typed["measurements"]["day"].astype(float)
    return typed


@pytest.mark.parametrize(
    ("table", "column", "values", "problem"),
    [
        ("infusions", "age_years", [True, False, True], "holds booleans (bool); expected numbers"),
        ("measurements", "value", [True] * 10, "holds booleans (bool); expected numbers or lab text"),
        ("measurements", "day", pd.to_datetime(["2024-01-01"] * 10), "holds dates or times (datetime64[ns]); "
                                                                      "expected numbers"),
        ("infusions", "prior_lines", pd.array([True, None, False], dtype="boolean"),
         "holds booleans (boolean); expected whole numbers"),
        ("infusions", "patient_id", [True, False, True], "holds booleans (bool); expected text"),
    ],
)
def test_boolean_and_date_columns_where_numbers_go_are_refused_by_name(raw_cohort, table, column, values, problem):
    """Parquet types were coerced silently: a boolean age became 1.0 years, a boolean MRD value
    100% MRD, a datetime day nanoseconds."""
    raw = _typed_raw(raw_cohort)
    raw[table][column] = values
    for mode in ("fail", "quarantine"):
        with pytest.raises(ContractError) as caught:
            _validate(raw, on_error=mode, sources=None)
        assert caught.value.lines == [f"{table}, column {column}: {problem}"]


@pytest.mark.parametrize(
    ("table", "column", "value", "reason"),
    [
        ("infusions", "age_years", True, "True is not a number"),
        ("infusions", "prior_crs", False, "False is not an integer"),
        ("infusions", "sex", True, "True is not text"),
        ("measurements", "value", True, "True is not a number or lab text"),
        ("measurements", "day", pd.Timestamp("2024-01-01"), "Timestamp('2024-01-01 00:00:00') is not a number"),
        ("measurements", "value", [0.1, 0.2], "[0.1, 0.2] is not a single value"),
        ("infusions", "prior_lines", 2**64, "18446744073709551616 is not an integer"),
        ("infusions", "prior_lines", 2**53 + 2, "9007199254740994 is not an integer"),
    ],
)
def test_cells_of_the_wrong_type_are_row_problems(raw_cohort, table, column, value, reason):
    raw_cohort[table][column] = raw_cohort[table][column].astype(object)
    raw_cohort[table].at[1, column] = value
    with pytest.raises(ContractError) as caught:
        _validate(raw_cohort)
    assert f"{table}.csv, row 3, column {column}: {reason}" in caught.value.lines
    cohort = _validate(raw_cohort, on_error="quarantine")
    assert cohort.report.tables[table].reasons[f"wrong type: {column}"] == 1


def test_duplicate_column_names_are_refused_not_renamed(raw_cohort):
    raw_cohort["measurements"] = pd.concat([raw_cohort["measurements"], raw_cohort["measurements"][["value"]]], axis=1)
    for mode in ("fail", "quarantine"):
        with pytest.raises(ContractError) as caught:
            _validate(raw_cohort, on_error=mode)
        assert caught.value.lines == ["measurements.csv, column value: appears 2 times (each column name must be unique)"]


def test_exact_duplicate_measurements_are_collapsed_and_counted(raw_cohort):
    """The same file appended twice was accepted and moved risk groups (the copies counted twice)."""
    once = _validate(raw_cohort)
    raw_cohort["measurements"] = pd.concat([raw_cohort["measurements"]] * 2, ignore_index=True)
    twice = _validate(raw_cohort)
    pd.testing.assert_frame_equal(twice.measurements, once.measurements)
    table = twice.report.tables["measurements"]
    assert (table.rows_in, table.rows_out, table.rows_quarantined, table.rows_collapsed) == (20, 10, 0, 10)
    assert "measurements: 10 exact duplicate row(s) collapsed into their first copy (same patient, day, specimen, " \
           "assay, unit and result)" in twice.report.notes
    assert twice.report.to_dict()["tables"]["measurements"]["rows_collapsed"] == 10


def test_the_same_result_written_two_ways_is_one_measurement(raw_cohort):
    extra = raw_cohort["measurements"].iloc[[9]].assign(value="6e-4", unit="fraction")  # P3's "0.06%"
    raw_cohort["measurements"] = pd.concat([raw_cohort["measurements"], extra], ignore_index=True)
    assert _validate(raw_cohort).report.tables["measurements"].rows_collapsed == 1


def test_conflicting_duplicate_measurements_are_row_problems_on_every_copy(raw_cohort):
    conflicting = raw_cohort["measurements"].iloc[[1]].assign(value="0.5%")  # P1, day 28, BM flow: "<0.01%" before
    raw_cohort["measurements"] = pd.concat([raw_cohort["measurements"], conflicting], ignore_index=True)
    with pytest.raises(ContractError) as caught:
        _validate(raw_cohort)
    assert caught.value.lines == [
        "measurements.csv, row 3, column value: conflicts with row(s) 12 (same patient, day, specimen, assay and "
        "unit; another result)",
        "measurements.csv, row 12, column value: conflicts with row(s) 3 (same patient, day, specimen, assay and "
        "unit; another result)",
    ]
    cohort = _validate(raw_cohort, on_error="quarantine")
    table = cohort.report.tables["measurements"]
    assert table.reasons == {"conflicting duplicate: value": 2} and (table.rows_out, table.rows_collapsed) == (9, 0)


def test_b_cell_counts_in_two_units_on_one_day_are_not_duplicates(raw_cohort):
    extra = raw_cohort["measurements"].iloc[[3]].assign(value="1%", unit=None)  # P1 day 28 PB: 0 cells/uL and 1%
    raw_cohort["measurements"] = pd.concat([raw_cohort["measurements"], extra], ignore_index=True)
    cohort = _validate(raw_cohort)
    assert len(cohort.measurements) == 11 and cohort.report.tables["measurements"].rows_collapsed == 0


# --- the as-of day column of batch scoring -----------------------------------------------------------
def test_an_as_of_day_column_is_checked_typed_and_noted(raw_cohort):
    raw_cohort["infusions"]["visit_day"] = ["91", "28.5", "0"]
    cohort = _validate(raw_cohort, as_of_day_column="visit_day")
    assert cohort.infusions["visit_day"].tolist() == [91.0, 28.5, 0.0]
    assert cohort.infusions["visit_day"].dtype == float
    assert "infusions: column visit_day read as each patient's as-of day" in cohort.report.notes


@pytest.mark.parametrize(("cell", "reason"), [
    ("-1", "as-of day: -1.0 must be in [0, 7300]"),
    ("9000", "as-of day: 9000.0 must be in [0, 7300]"),
    ("inf", "as-of day: 'inf' is not a number"),
    ("ninety", "as-of day: 'ninety' is not a number"),
    (None, "as-of day: value is missing"),
])
def test_a_bad_as_of_day_quarantines_its_patient_with_the_reason(raw_cohort, cell, reason):
    raw_cohort["infusions"]["visit_day"] = ["91", cell, "63"]
    cohort = _validate(raw_cohort, on_error="quarantine", as_of_day_column="visit_day")
    assert cohort.infusions["patient_id"].tolist() == ["P1", "P3"]
    assert "P2" not in set(cohort.measurements["patient_id"]) and cohort.report.quarantined_patients == ("P2",)
    quarantined = cohort.quarantined["infusions"]
    assert quarantined["patient_id"].tolist() == ["P2"] and quarantined["row"].tolist() == [3]
    assert quarantined["quarantine_reasons"].tolist() == [reason]
    with pytest.raises(ContractError, match=rf"infusions.csv, row 3, column visit_day: {re.escape(reason)}"):
        _validate(raw_cohort, as_of_day_column="visit_day")


@pytest.mark.parametrize("mode", ["fail", "quarantine"])
def test_an_absent_or_declared_as_of_day_column_is_an_error_in_both_modes(raw_cohort, mode):
    with pytest.raises(ContractError, match="infusions.csv, column visit_day: as-of day column is missing"):
        _validate(raw_cohort, on_error=mode, as_of_day_column="visit_day")
    with pytest.raises(ContractError, match="column age_years: is a declared column of infusions"):
        _validate(raw_cohort, on_error=mode, as_of_day_column="age_years")
