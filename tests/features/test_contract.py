"""Tests of features.contract: one case per kind of bad input, in fail and in quarantine mode."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from features.contract import (
    MAX_ERROR_LINES,
    OUTCOME_RULES,
    ContractError,
    TableReport,
    display_row,
    validate_cohort,
)
from features.schema import NORMALISED_MEASUREMENTS_SCHEMA

CSV_SOURCES = {table: f"{table}.csv" for table in ("infusions", "measurements", "outcomes")}


def _validate(raw, on_error="fail", sources=CSV_SOURCES, outcomes=True):
    return validate_cohort(
        raw["infusions"], raw["measurements"], raw["outcomes"] if outcomes else None,
        on_error=on_error, source_names=sources,
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
             "event_day", "value out of range: event_day", "-3.0 must be >= 0",
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
        "infusions.csv, row 2, column prior_lines: -1 must be >= 0",
        "infusions.csv, row 2, column cell_dose_per_kg: 0.0 must be > 0",
        "infusions.csv, row 3, column sex: 'X' not one of F, M",
        "infusions.csv, row 4, column down_syndrome: 'maybe' is not a boolean (true/false)",
        "infusions.csv, row 4, column prior_crs: '1.5' is not an integer",
    ]


# --- fast path: arrays checked directly, pandera only when something may be wrong ------------------
def _outcome_of(raw, on_error, sources=CSV_SOURCES):
    """Everything validate_cohort gives back, comparable: frames, report, quarantine, or the error lines."""
    try:
        cohort = validate_cohort(raw["infusions"], raw["measurements"], raw["outcomes"], on_error=on_error,
                                 source_names=sources)
    except ContractError as error:
        return ("error", error.lines)
    return ("cohort", cohort)


def _assert_same_outcome(fast, full):
    assert fast[0] == full[0]
    if fast[0] == "error":
        assert fast[1] == full[1]
        return
    fast, full = fast[1], full[1]
    for name in ("infusions", "measurements", "outcomes"):
        pd.testing.assert_frame_equal(getattr(fast, name), getattr(full, name))
    assert fast.report == full.report
    assert fast.quarantined.keys() == full.quarantined.keys()
    for name in full.quarantined:
        pd.testing.assert_frame_equal(fast.quarantined[name], full.quarantined[name])


def _full_path_only(monkeypatch):
    import features.contract as contract

    monkeypatch.setattr(contract, "_certainly_valid", lambda schema_name, frame: False)


@pytest.mark.parametrize("on_error", ["fail", "quarantine"])
@pytest.mark.parametrize("case", [None, *BAD_INPUTS], ids=lambda case: "good" if case is None else case.name)
def test_fast_path_gives_exactly_the_full_paths_result(raw_cohort, case, on_error, monkeypatch):
    if case is not None:
        case.mutate(raw_cohort)
    fast = _outcome_of({name: frame.copy() for name, frame in raw_cohort.items()}, on_error)
    _full_path_only(monkeypatch)
    _assert_same_outcome(fast, _outcome_of(raw_cohort, on_error))


def test_fast_path_is_taken_for_a_good_cohort_and_refused_for_each_schema_problem(raw_cohort):
    import features.contract as contract

    typed, _ = contract._coerce_table("infusions", raw_cohort["infusions"])
    assert contract._certainly_valid("infusions", typed)
    for column, value in [("age_years", 45.0), ("sex", "X"), ("patient_id", None)]:
        broken = typed.copy()
        broken[column] = broken[column].astype(object)
        broken.loc[0, column] = value
        if column == "age_years":
            broken[column] = broken[column].astype(float)
        assert not contract._certainly_valid("infusions", broken), column
        assert len(contract._schema_problems("infusions", broken)), column  # pandera agrees


def test_fast_path_checks_the_normalised_table_rules(raw_cohort):
    import features.contract as contract

    measurements = _validate(raw_cohort).measurements
    assert contract._certainly_valid("normalised_measurements", measurements)
    broken = measurements.copy()
    broken.loc[0, "detected_below_loq"], broken.loc[0, "censored"] = True, False
    assert not contract._certainly_valid("normalised_measurements", broken)
