"""Tests of features.contract_fast: accept-only, and then exactly the full path's result.

The full path is ``validate_cohort`` with the fast path switched off (``clean_small_cohort``
patched to defer); the fast path is ``validate_cohort`` as shipped, with a counter proving that
the fast path itself produced the result.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import features.contract as contract
from features.contract import ContractError, ValidatedCohort, validate_cohort
from features.contract_fast import MAX_INFUSION_ROWS, clean_small_cohort, clean_small_columns
from features.labtext import exact_plain_number, normalise_clean_lab_value, normalise_lab_values
from features.schema import (
    ASSAYS,
    INFUSION_COLUMNS,
    MEASUREMENT_COLUMNS,
    RAW_UNITS,
    UNIT_CONVERSIONS,
    optional_columns,
)
from pipelines.simulate import simulate_cohort

BASELINE_FIELDS = [spec.name for spec in INFUSION_COLUMNS]
MEASUREMENT_FIELDS = [spec.name for spec in MEASUREMENT_COLUMNS if spec.name != "patient_id"]
PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the two paths ----------------------------------------------------------------------------------
def _full_path(infusions: pd.DataFrame, measurements: pd.DataFrame, **options) -> ValidatedCohort:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(contract, "clean_small_cohort", lambda *tables: None)
        return validate_cohort(infusions, measurements, None, **options)


def _fast_path(infusions: pd.DataFrame, measurements: pd.DataFrame, **options) -> tuple[ValidatedCohort, bool]:
    """``validate_cohort`` as shipped, and whether the fast path made its result."""
    accepted = []

    def counting(*tables):
        result = clean_small_cohort(*tables)
        accepted.append(result is not None)
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(contract, "clean_small_cohort", counting)
        result = validate_cohort(infusions, measurements, None, **options)
    return result, accepted == [True]


def _cell_types(frame: pd.DataFrame) -> dict[str, list[type]]:
    """Python types of the cells of object columns (None and NaN are both 'missing' to pandas)."""
    return {name: [type(v) for v in frame[name].tolist()] for name in frame.columns if frame[name].dtype == object}


def _zero_signs(frame: pd.DataFrame) -> dict[str, list[bool]]:
    """Sign bits of float columns (``assert_frame_equal`` takes -0.0 for 0.0)."""
    return {name: np.signbit(frame[name].to_numpy()).tolist() for name in frame.columns if frame[name].dtype == float}


def _assert_identical(fast: ValidatedCohort, full: ValidatedCohort) -> None:
    for name in ("infusions", "measurements"):
        pd.testing.assert_frame_equal(getattr(fast, name), getattr(full, name), check_exact=True)
        assert _cell_types(getattr(fast, name)) == _cell_types(getattr(full, name)), name
        assert _zero_signs(getattr(fast, name)) == _zero_signs(getattr(full, name)), name
    assert fast.outcomes is None and full.outcomes is None
    assert fast.report.to_dict() == full.report.to_dict()
    assert fast.quarantined.keys() == full.quarantined.keys()
    for name, frame in full.quarantined.items():
        pd.testing.assert_frame_equal(fast.quarantined[name], frame, check_exact=True)


# --- inputs: simulated patients in the shapes that reach the contract ---------------------------------
@lru_cache(maxsize=1)
def _cohort() -> tuple[pd.DataFrame, pd.DataFrame]:
    cohort = simulate_cohort(120, 20261121)
    return cohort.infusions, cohort.measurements


def _patients(n_patients: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``n_patients`` simulated patients as the simulator makes them (rows keep their index)."""
    infusions, measurements = _cohort()
    ids = infusions["patient_id"].sample(n_patients, random_state=seed)
    chosen = infusions[infusions["patient_id"].isin(ids)]
    return chosen.copy(), measurements[measurements["patient_id"].isin(ids)].copy()


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _number_if_plain(text: Any) -> Any:
    """A lab text that is a plain number, as a JSON number (``"0.198"`` -> 0.198)."""
    return float(text) if isinstance(text, str) and re.fullmatch(r"[0-9.eE+-]+", text) else text


def _as_request(infusions, measurements, *, ints_as_floats=False, values_as_numbers=False, optional=True):
    """As a JSON request reaches the contract: one record per patient, nested measurement objects.

    An absent optional field becomes an empty column (the request frame has every field).
    """
    records = [{name: _plain(value) for name, value in row.items()} for row in infusions.to_dict("records")]
    for record in records:
        if ints_as_floats:
            record.update({name: float(record[name]) for name in ("prior_lines", "prior_crs")
                           if record[name] is not None})
        if not optional:
            for name in optional_columns("infusions"):
                record.pop(name, None)
    rows = []
    for row in measurements.to_dict("records"):
        entry = {name: _plain(row[name]) for name in ["patient_id", *MEASUREMENT_FIELDS] if name in row}
        if values_as_numbers:
            entry["value"] = _number_if_plain(entry["value"])
        if not optional or entry.get("detection_limit") is None:
            entry.pop("detection_limit", None)
        rows.append(entry)
    request = pd.DataFrame(records).reindex(columns=BASELINE_FIELDS)
    return request, pd.DataFrame(rows, columns=["patient_id", *MEASUREMENT_FIELDS])


def _as_csv_text(frame: pd.DataFrame) -> pd.DataFrame:
    """As ``pipelines.io`` reads a CSV file: every cell text, empty cells NaN."""
    return pd.read_csv(io.StringIO(frame.to_csv(index=False, float_format="%.10g")), dtype=str)


def _without_optional(infusions, measurements):
    return (infusions.drop(columns=list(optional_columns("infusions"))),
            measurements.drop(columns=list(optional_columns("measurements"))))


SHAPES: dict[str, Callable] = {
    "as simulated": lambda inf, meas: (inf, meas),
    "as simulated, optional columns dropped": _without_optional,
    "CSV text": lambda inf, meas: (_as_csv_text(inf), _as_csv_text(meas)),
    "CSV text, optional columns dropped": lambda inf, meas: _without_optional(_as_csv_text(inf), _as_csv_text(meas)),
    "request, lab values as text": _as_request,
    "request, lab values as numbers, ints as floats": lambda inf, meas: _as_request(
        inf, meas, ints_as_floats=True, values_as_numbers=True),
    "request without optional fields": lambda inf, meas: _as_request(inf, meas, values_as_numbers=True, optional=False),
}


# --- equality on clean cohorts ---------------------------------------------------------------------
@pytest.mark.parametrize("n_patients", [1, 2, 5, 16])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_fast_path_accepts_clean_patients_and_equals_the_full_path(shape, n_patients):
    for seed in (n_patients, 100 + n_patients):
        infusions, measurements = SHAPES[shape](*_patients(n_patients, seed))
        fast, accepted = _fast_path(infusions, measurements)
        assert accepted, f"fast path deferred on clean {shape} patients (seed {seed})"
        _assert_identical(fast, _full_path(infusions, measurements))


def test_lab_text_variants_are_covered_by_the_clean_cohorts():
    """The simulated patients carry the lab-text forms the fast path must parse exactly."""
    values = _cohort()[1]["value"].astype(str)
    for pattern in (r"^<", r"%$", r"(?i)^neg", r"(?i)negative", r"(?i)detected", r"[eE]"):
        assert values.str.contains(pattern).any(), pattern


def test_quarantine_mode_and_csv_sources_give_the_same_report():
    infusions, measurements = _as_request(*_patients(4, 7), values_as_numbers=True)
    options = {"on_error": "quarantine", "source_names": {"infusions": "infusions.csv", "measurements": "m.csv"}}
    fast, accepted = _fast_path(infusions, measurements, **options)
    assert accepted
    _assert_identical(fast, _full_path(infusions, measurements, **options))
    assert fast.report.on_error == "quarantine" and fast.report.tables["measurements"].source == "m.csv"


def test_patient_without_measurements():
    infusions, _ = _as_request(*_patients(1, 3))
    measurements = pd.DataFrame([], columns=["patient_id", *MEASUREMENT_FIELDS])
    fast, accepted = _fast_path(infusions, measurements)
    assert accepted and len(fast.measurements) == 0
    _assert_identical(fast, _full_path(infusions, measurements))


def test_results_share_no_state():
    """Changing one result (e.g. its empty quarantine frames, built from a template) changes no other."""
    infusions, measurements = _as_request(*_patients(2, 5))
    first, _ = _fast_path(infusions, measurements)
    for frame in (first.infusions, first.measurements, *first.quarantined.values()):
        frame["scribble"] = 1
    second, accepted = _fast_path(infusions, measurements)
    assert accepted
    for frame in (second.infusions, second.measurements, *second.quarantined.values()):
        assert "scribble" not in frame.columns


def test_large_tables_take_the_full_path():
    infusions, measurements = _cohort()
    assert len(infusions) > MAX_INFUSION_ROWS
    assert clean_small_cohort(infusions, measurements) is None
    few = infusions["patient_id"].head(3)
    assert clean_small_cohort(infusions.head(3), measurements[measurements["patient_id"].isin(few)]) is not None


# --- perturbed rows: defer, or exactly the full path -----------------------------------------------
def _set_cell(table: str, column: str, value: Any) -> Callable:
    def perturb(tables: dict, position: int) -> None:
        frame = tables[table]
        if column not in frame or not len(frame):
            return
        cells = frame[column].astype(object)
        cells.iloc[position % len(frame)] = value
        frame[column] = cells

    perturb.__name__ = f"{table}.{column}={value!r}"
    return perturb


def _restructure(name: str, change: Callable[[dict], None]) -> Callable:
    def perturb(tables: dict, position: int) -> None:
        change(tables)

    perturb.__name__ = name
    return perturb


def _set_column(table: str, column: str, make: Callable[[pd.DataFrame], Any]) -> Callable:
    """Replace (or add) a whole column: ``make(frame)`` gives its new values."""
    def change(tables: dict) -> None:
        frame = tables[table]
        if column in frame or column in ("note", "lab"):
            frame[column] = make(frame)

    return _restructure(f"{table}.{column} replaced", change)


def _drop_column(table: str, column: str) -> Callable:
    return _restructure(f"no {table}.{column}", lambda t: t[table].drop(columns=column, inplace=True, errors="ignore"))


def _duplicate_patient(tables: dict, position: int) -> None:
    tables["infusions"]["patient_id"] = tables["infusions"]["patient_id"].iloc[0]


def _duplicate_infusions_row(tables: dict, position: int) -> None:
    infusions = tables["infusions"]
    tables["infusions"] = pd.concat([infusions, infusions.iloc[[position % len(infusions)]]], ignore_index=True)


def _zero_and_negative_zero(tables: dict, position: int) -> None:
    tables["infusions"]["age_years"] = pd.Series([0.0, -0.0], dtype=object)


def _lab_row(assay: str, value: Any, unit: Any, limit: float) -> Callable:
    """Rewrite one measurement row's lab columns (each lab rule needs the columns together)."""
    def perturb(tables: dict, position: int) -> None:
        frame = tables["measurements"]
        lab_columns = ("assay", "value", "unit", "detection_limit")
        if not len(frame) or any(column not in frame for column in lab_columns):
            return  # an earlier change removed the rows or a column: nothing to rewrite
        for column, cell in zip(lab_columns, (assay, value, unit, limit)):
            frame[column] = frame[column].astype(object)
            frame.iloc[position % len(frame), frame.columns.get_loc(column)] = cell

    perturb.__name__ = f"lab row {assay} {value!r} {unit!r} limit {limit!r}"
    return perturb


CELL_VALUES = {
    "infusions": {
        "patient_id": [None, 7, "P_OTHER"],
        "age_years": ["seven", 45.0, -1.0, math.inf, math.nan, True, " 12", "12.5", "1e400",
                      "0.000000000000000000000123", np.float64(12.5), -0.0, None, "٥", 12],
        "prior_lines": [2.5, "2", "2.0", -1, 1e30, True, "two", None, 3],
        "prior_hsct": ["maybe", "YES ", 1, 2, 1.0, "0.0", None, pd.NA, "nan", np.bool_(True), True],
        "sex": ["X", " F", 1, None, "M"],
        "site": [3, None, math.nan, np.str_("center_01")],
        "cell_dose_per_kg": [0.0, "-5", "2e6", 1.5e6],
        "blinatumomab": ["Naive", "responder"],
        "fludarabine_auc": [-0.5, "12", None],
    },
    "measurements": {
        "patient_id": ["P_UNKNOWN", None],
        "day": [None, "28", "inf", -7, "1_0", 28.5, "-0"],
        "specimen": ["LN", "bm", None, "CSF"],
        "assay": ["flow_mdr", "car_copies", "b_cell_count", "ngs_mrd", None],
        "value": ["1.2E-05 approx", "150%", "-3", None, math.nan, "NEG", "<0.01%", "detected <LOQ", "٥", "-0", "0", 0,
                  True, "inf", "1e400", " 5 ", "5 %", "9.999999999999999e-05", 2.0e-6, "2,5", "<-1", "detected <200%",
                  "positive, below quantitation", "0.0", "1.", ".5", "+5", "≤ 1E-4", 10**20, np.float64(0.5)],
        "unit": ["mg", None, "percent", "cells/uL", "pct_blasts", "fraction", "copies/ug", 1.0],
        "detection_limit": [0.0, -1e-4, "1e-4", None, 2.0, 150.0, math.inf, "abc"],
    },
}
LAB_ROWS = [  # (assay, value, unit, detection_limit): good rows and one row per lab rule
    ("b_cell_count", "2%", "pct_lymphocytes", math.nan),
    ("b_cell_count", "2%", "cells/uL", math.nan),
    ("flow_mrd", "0.06%", "fraction", math.nan),
    ("car_copies", "5%", None, math.nan),
    ("flow_mrd", "NEG", None, 0.01),
    ("flow_mrd", "NEG", "percent", 0.005),
    ("flow_mrd", "0", "fraction", 2e-5),
    ("flow_mrd", 0, "fraction", math.nan),
    ("b_cell_count", "0", "cells/uL", math.nan),
    ("ngs_mrd", "detected <LOQ", None, math.nan),
    ("ngs_mrd", "detected <0.001%", None, math.nan),
    ("pcr_mrd", "Detected, below quantitation", "fraction", 3e-6),
    ("pcr_mrd", "pos; bloq", None, math.nan),
    ("flow_mrd", "detected <200%", None, math.nan),
    ("cd19_pct_blasts", "101", "pct_blasts", math.nan),
    ("cd19_pct_blasts", "100", "pct_blasts", math.nan),
    ("flow_mrd", "<2", "fraction", math.nan),
    ("flow_mrd", "NEG", "fraction", 2.0),
    ("b_cell_count", "NEG", None, math.nan),
    ("b_cell_count", "NEG", "cells/uL", math.nan),
    ("car_copies", "NEG", None, math.nan),
    ("b_cell_count", "12", "fraction", math.nan),
    ("flow_mrd", "0.06", None, math.nan),
    ("cd22_pct_blasts", "40%", None, math.nan),
    ("flow_mrd", 0.5, "percent", math.nan),
    ("flow_mrd", 0.5, "percent", 0.01),
    ("ngs_mrd", 2e-6, "fraction", 1e-6),
    ("ngs_mrd", "1.2E-05", "fraction", 1e-6),
    ("flow_mrd", "  < 1E-4 ", "fraction", math.nan),
    ("flow_mrd", "≤0.01%", None, math.nan),
    ("flow_mrd", "NEG.", None, math.nan),
    ("b_cell_count", "<1", "cells/uL", 1.0),
    ("car_copies", "1.5e4", "copies/ug", math.nan),
    ("car_copies", "1e400", "copies/ug", math.nan),
]
PERTURBATIONS = [
    _set_cell(table, column, value)
    for table, columns in CELL_VALUES.items()
    for column, values in columns.items()
    for value in values
] + [_lab_row(*row) for row in LAB_ROWS] + [
    _duplicate_patient,
    _duplicate_infusions_row,
    _zero_and_negative_zero,
    _set_column("infusions", "note", lambda frame: "x"),  # unknown extra columns
    _set_column("measurements", "lab", lambda frame: "x"),
    _drop_column("measurements", "unit"),
    _drop_column("infusions", "sex"),
    _drop_column("infusions", "site"),
    _drop_column("measurements", "detection_limit"),
    _restructure("no measurements", lambda t: t.update(measurements=t["measurements"].iloc[:0])),
    _set_column("measurements", "day", lambda frame: np.arange(len(frame))),  # int64
    _set_column("infusions", "prior_lines", lambda frame: pd.array([1] * len(frame), dtype="Int64")),
    _set_column("infusions", "prior_hsct", lambda frame: np.zeros(len(frame), dtype=bool)),
    _set_column("infusions", "prior_hsct", lambda frame: 1.0),
    _set_column("infusions", "sex", lambda frame: frame["sex"].astype("string")),
    _set_column("measurements", "specimen", lambda frame: frame["specimen"].astype("category")),
    _set_column("infusions", "age_years", lambda frame: frame["age_years"].astype("Float64")),
    _restructure("duplicate column names",
                 lambda t: t.update(infusions=pd.concat([t["infusions"], t["infusions"].iloc[:, [0]]], axis=1))),
]


@lru_cache(maxsize=1)
def _base_request() -> tuple[pd.DataFrame, pd.DataFrame]:
    return _as_request(*_patients(2, 11), values_as_numbers=True)


def _assert_defers_or_equals(infusions: pd.DataFrame, measurements: pd.DataFrame) -> str:
    """The fast path returns None, or (the full path accepting) exactly the full path's result.

    Returns what happened, for hypothesis' statistics.
    """
    fast_tables = clean_small_cohort(infusions, measurements)
    fast_verdict = "fast path deferred" if fast_tables is None else "fast path accepted"
    try:
        full = _full_path(infusions, measurements)
    except ContractError:
        assert fast_tables is None, "fast path accepted what the full path rejects"
        return f"{fast_verdict}, full path: ContractError"
    except Exception as error:  # the full path fails on it (not a contract verdict): never accept either
        assert fast_tables is None
        return f"{fast_verdict}, full path: {type(error).__name__}"
    if fast_tables is not None:
        fast, accepted = _fast_path(infusions, measurements)
        assert accepted
        _assert_identical(fast, full)
    return f"{fast_verdict}, full path accepted"


def _perturbed(changes: list[tuple[Callable, int]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    infusions, measurements = _base_request()
    tables = {"infusions": infusions.copy(), "measurements": measurements.copy()}
    for perturb, position in changes:
        perturb(tables, position)
    return tables["infusions"], tables["measurements"]


@pytest.mark.parametrize("perturb", PERTURBATIONS, ids=lambda perturb: perturb.__name__)
def test_each_perturbation_defers_or_equals_the_full_path(perturb):
    _assert_defers_or_equals(*_perturbed([(perturb, 1)]))


# --- column lists (clean_small_columns): defer, or exactly the full path of their frames ---------------
def _column_lists(frame: pd.DataFrame, plain: bool) -> dict[str, list]:
    """A frame's columns as lists: its cells as ``tolist`` gives them, or as JSON values (``plain``)."""
    return {name: [_plain(value) for value in cells] if plain else cells
            for name, cells in ((name, frame[name].tolist()) for name in frame.columns)}


def _assert_columns_defer_or_equal(infusions: pd.DataFrame, measurements: pd.DataFrame, plain: bool) -> str:
    """``clean_small_columns`` returns None, or exactly the full path's frames for the lists as frames."""
    lists = _column_lists(infusions, plain), _column_lists(measurements, plain)
    fast = clean_small_columns(*lists)
    verdict = "deferred" if fast is None else "accepted"
    try:
        full = _full_path(pd.DataFrame(lists[0]), pd.DataFrame(lists[1], columns=list(lists[1])))
    except Exception as error:  # a contract verdict or a failure: never accepted by the fast path
        assert fast is None, f"accepted what the full path refuses: {error}"
        return f"{verdict}, full path: {type(error).__name__}"
    if fast is not None:
        for frame, name in zip(fast, ("infusions", "measurements")):
            pd.testing.assert_frame_equal(frame, getattr(full, name), check_exact=True)
            assert _cell_types(frame) == _cell_types(getattr(full, name)), name
            assert _zero_signs(frame) == _zero_signs(getattr(full, name)), name
    return f"{verdict}, full path accepted"


@pytest.mark.parametrize("n_patients", [1, 5, 16])
@pytest.mark.parametrize("shape", [name for name in SHAPES if name.startswith("request")])
def test_column_lists_of_clean_requests_are_accepted_and_equal_the_full_path(shape, n_patients):
    infusions, measurements = SHAPES[shape](*_patients(n_patients, n_patients))
    if shape == "request without optional fields":  # absent from the request: absent from the lists
        infusions = infusions.drop(columns=list(optional_columns("infusions")))
    assert _assert_columns_defer_or_equal(infusions, measurements, plain=True) == "accepted, full path accepted"


@pytest.mark.parametrize("shape", list(SHAPES))
def test_column_lists_of_any_shape_defer_or_equal_the_full_path(shape):
    _assert_columns_defer_or_equal(*SHAPES[shape](*_patients(3, 5)), plain=False)


@pytest.mark.parametrize("plain", [True, False], ids=["JSON values", "tolist cells"])
@pytest.mark.parametrize("perturb", PERTURBATIONS, ids=lambda perturb: perturb.__name__)
def test_each_perturbation_of_column_lists_defers_or_equals_the_full_path(perturb, plain):
    infusions, measurements = _perturbed([(perturb, 1)])
    if infusions.columns.has_duplicates:
        pytest.skip("a mapping cannot hold duplicate column names")
    _assert_columns_defer_or_equal(infusions, measurements, plain)


def test_column_lists_of_unequal_length_or_not_lists_defer():
    infusions, measurements = (_column_lists(frame, plain=True) for frame in _base_request())
    assert clean_small_columns(infusions, measurements) is not None
    assert clean_small_columns({**infusions, "age_years": infusions["age_years"][:1]}, measurements) is None
    assert clean_small_columns({**infusions, "age_years": tuple(infusions["age_years"])}, measurements) is None
    assert clean_small_columns(infusions, {**measurements, "day": measurements["day"] + [1.0]}) is None
    assert clean_small_columns({**infusions, "patient_id": []}, measurements) is None


def test_changes_that_remove_rows_or_columns_combine_with_later_ones():
    """Found by the property test below: a lab-row change after the rows or a column are gone."""
    removing = [p for p in PERTURBATIONS if p.__name__ in ("no measurements", "no measurements.detection_limit")]
    lab_row = next(p for p in PERTURBATIONS if p.__name__.startswith("lab row"))
    assert len(removing) == 2
    for first in removing:
        _assert_defers_or_equals(*_perturbed([(first, 0), (lab_row, 0)]))


@PROPERTY
@given(changes=st.lists(st.tuples(st.sampled_from(PERTURBATIONS), st.integers(0, 1000)), min_size=1, max_size=3))
def test_perturbed_rows_defer_or_equal_the_full_path(changes):
    event(_assert_defers_or_equals(*_perturbed(changes)))


@PROPERTY
@given(changes=st.lists(st.tuples(st.sampled_from(PERTURBATIONS), st.integers(0, 1000)), min_size=1, max_size=3))
def test_perturbed_column_lists_defer_or_equal_the_full_path(changes):
    infusions, measurements = _perturbed(changes)
    if not infusions.columns.has_duplicates:
        event(_assert_columns_defer_or_equal(infusions, measurements, plain=True))


NUMBER_TEXT = st.one_of(
    st.from_regex(r"[+-]?[0-9]{0,19}\.?[0-9]{0,19}([eE][+-]?[0-9]{1,4})?", fullmatch=True),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=0, max_value=1e6).map(lambda x: f"{x:.{len(repr(x)) % 17 + 1}g}"),
)


@PROPERTY
@given(text=NUMBER_TEXT, column=st.sampled_from(["b_cell_count value", "age_years", "prior_crs", "detection_limit"]))
def test_text_numbers_defer_or_equal_the_full_path(text, column):
    infusions, measurements = (frame.copy() for frame in _base_request())
    if column == "b_cell_count value":
        measurements.loc[0, ["assay", "specimen", "value", "unit"]] = ["b_cell_count", "PB", text, "cells/uL"]
    elif column == "detection_limit":
        measurements.loc[0, ["assay", "value", "unit", "detection_limit"]] = ["car_copies", "NEG", "copies/ug", text]
    else:
        infusions[column] = infusions[column].astype(object)
        infusions.loc[0, column] = text
    event(_assert_defers_or_equals(infusions, measurements))


LAB_TEXT = st.one_of(
    st.sampled_from(["NEG", "negative", "Not Detected", "undetectable", "detected <LOQ", "Detected, below quantitation",
                     "pos; bloq", "positive <0.01%", "detected < 1e-4", "<0.01%", "≤ 1E-4", "<=5", "  < 1E-4 .",
                     "0.06%", "1.2E-05", "45", "0", "-0", "-3", "1e400", "abc", "", "%", "<", "detected"]),
    st.from_regex(r"(<|<=|≤)? ?[+-]?[0-9]{0,4}\.?[0-9]{0,4}(e-?[0-9]{1,2})? ?%?", fullmatch=True),
    NUMBER_TEXT,
    st.floats(min_value=-1, max_value=1e6),
    st.integers(min_value=-5, max_value=10**6),
    st.none(),
)


@st.composite
def _lab_cells(draw) -> tuple:
    """(value, unit, assay, detection_limit); the unit is mostly one of the assay's units."""
    assay = draw(st.sampled_from(ASSAYS))
    unit = draw(st.one_of(st.sampled_from([*UNIT_CONVERSIONS[assay], None]), st.sampled_from([*RAW_UNITS, None])))
    limit = draw(st.one_of(st.just(math.nan), st.floats(min_value=-1, max_value=200, allow_nan=False)))
    return draw(LAB_TEXT), unit, assay, limit


@settings(max_examples=200, deadline=None)
@given(cells=_lab_cells())
def test_clean_lab_value_defers_or_equals_normalise_lab_values(cells):
    raw, unit, assay, limit = cells
    row = normalise_lab_values(
        pd.Series([raw], dtype=object), pd.Series([unit], dtype=object), pd.Series([assay]), pd.Series([limit]),
    ).iloc[0]
    clean = normalise_clean_lab_value(raw, unit, assay, limit)
    event(f"vectorised: {row['error_kind'] or 'good row'}; scalar: {'deferred' if clean is None else 'accepted'}")
    if row["error_kind"] is not None:
        assert clean is None, (raw, unit, assay, limit, row["error_reason"])
    elif clean is not None:
        expected = (row["value"], row["censored"], row["detection_limit"], row["unit"], row["detected_below_loq"])
        assert _bits(clean) == _bits(expected), (raw, unit, assay, limit)


def _bits(values: tuple) -> list:
    """Values compared exactly: floats by their bits (NaN equal to NaN, -0.0 unequal to 0.0)."""
    return [np.float64(v).tobytes() if isinstance(v, float) else v for v in values]


@settings(max_examples=400, deadline=None)
@given(text=NUMBER_TEXT)
def test_exact_plain_number_is_what_pandas_parses(text):
    number = exact_plain_number(text)
    if number is None:
        return
    alone = pd.to_numeric(pd.Series([text], dtype=object), errors="coerce").to_numpy(dtype=float)[0]
    mixed = pd.to_numeric(pd.Series(["0.5", text, "NEG"], dtype=object), errors="coerce").to_numpy(dtype=float)[1]
    for parsed in (alone, mixed):
        assert parsed == number and math.copysign(1.0, parsed) == math.copysign(1.0, number), (text, parsed, number)


def test_huge_integer_is_a_contract_error_not_a_crash():
    """Beyond 2**53 a float is no exact integer (and beyond int64 pandas cannot cast it at all)."""
    infusions, measurements = (frame.copy() for frame in _base_request())
    infusions["prior_crs"] = infusions["prior_crs"].astype(object)
    infusions.loc[0, "prior_crs"] = "1e30"
    assert clean_small_cohort(infusions, measurements) is None
    with pytest.raises(ContractError, match="column prior_crs: '1e30' is not an integer"):
        validate_cohort(infusions, measurements, None)


@pytest.mark.parametrize(
    "text, expected",
    [("0.198", 0.198), ("1e+02", 100.0), ("1.2E-05", 1.2e-05), ("+.5", 0.5), ("5.", 5.0), ("00012", 12.0),
     ("0.1234567890123456", 0.1234567890123456), ("-3", -3.0)],
)
def test_exact_plain_number_accepts_plain_decimals(text, expected):
    assert exact_plain_number(text) == expected


@pytest.mark.parametrize(
    "text",
    [" 5", "5 ", "1_000", "٥", "inf", "nan", "-0", "-0.0e3", "0.000000000000000000000123", "9.999999999999999e-05",
     "1e23", "1e-23", "1e0001", "", ".", "e5", "0x10"],
)
def test_exact_plain_number_refuses_what_it_cannot_be_sure_of(text):
    assert exact_plain_number(text) is None
