"""Tests of features.labtext: every lab format, unit normalisation and row errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.labtext import normalise_lab_values, parse_lab_text


def _one(value, unit=None, assay="flow_mrd", limit=np.nan) -> dict:
    """Normalise a single lab result and return its row as a dict."""
    out = normalise_lab_values(
        pd.Series([value], dtype=object), pd.Series([unit], dtype=object), pd.Series([assay]),
        pd.Series([limit], dtype=float),
    )
    return out.iloc[0].to_dict()


def _assert_result(row: dict, value, censored, limit, unit, below_loq=False) -> None:
    assert row["error_kind"] is None, row["error_reason"]
    np.testing.assert_allclose([row["value"], row["detection_limit"]], [value, limit], rtol=1e-12)
    assert (row["censored"], row["unit"], row["detected_below_loq"]) == (censored, unit, below_loq)


# (value, unit, assay, row detection_limit) -> (value, censored, limit, canonical unit, detected_below_loq),
# all worked by hand.
FORMATS = {
    "less than percent": (("<0.01%", None, "flow_mrd", np.nan), (1e-4, True, 1e-4, "fraction", False)),
    "percent text": (("0.06%", None, "flow_mrd", np.nan), (6e-4, False, 1e-4, "fraction", False)),
    "percent text beats fraction unit": (("0.06%", "fraction", "pcr_mrd", np.nan), (6e-4, False, 1e-5, "fraction", False)),
    "percent unit column": (("0.5", "percent", "flow_mrd", np.nan), (5e-3, False, 1e-4, "fraction", False)),
    "scientific fraction": (("1.2E-05", "fraction", "ngs_mrd", np.nan), (1.2e-5, False, 1e-6, "fraction", False)),
    "plain float": ((3e-3, "fraction", "flow_mrd", np.nan), (3e-3, False, 1e-4, "fraction", False)),
    "NEG flow default limit": (("NEG", None, "flow_mrd", np.nan), (1e-4, True, 1e-4, "fraction", False)),
    "negative pcr default limit": (("negative", None, "pcr_mrd", np.nan), (1e-5, True, 1e-5, "fraction", False)),
    "not detected ngs default": (("Not Detected", None, "ngs_mrd", np.nan), (1e-6, True, 1e-6, "fraction", False)),
    "NEG with row limit in percent": (("NEG", "percent", "flow_mrd", 0.005), (5e-5, True, 5e-5, "fraction", False)),
    "row limit in the text's percent": (("0.06%", None, "flow_mrd", 0.005), (6e-4, False, 5e-5, "fraction", False)),
    "zero MRD is not detected": (("0", "fraction", "pcr_mrd", 2e-5), (2e-5, True, 2e-5, "fraction", False)),
    "detected <LOQ default limit": (("detected <LOQ", None, "pcr_mrd", np.nan), (1e-5, True, 1e-5, "fraction", True)),
    "detected, below quantitation": (
        ("Detected, below quantitation", "fraction", "ngs_mrd", 3e-6), (3e-6, True, 3e-6, "fraction", True)
    ),
    "detected below a stated LOQ": (("detected <0.001%", None, "ngs_mrd", np.nan), (1e-5, True, 1e-5, "fraction", True)),
    "B cells per uL": (("12", "cells/uL", "b_cell_count", np.nan), (12.0, False, np.nan, "cells/uL", False)),
    "B cells percent text": (("2.5%", None, "b_cell_count", np.nan), (2.5, False, np.nan, "pct_lymphocytes", False)),
    "B cells below a count": (("<1", "cells/uL", "b_cell_count", np.nan), (1.0, True, 1.0, "cells/uL", False)),
    "zero B cells is a measurement": (("0", "cells/uL", "b_cell_count", np.nan), (0.0, False, np.nan, "cells/uL", False)),
    "CD19 on blasts": (("87.5", "pct_blasts", "cd19_pct_blasts", np.nan), (87.5, False, np.nan, "pct_blasts", False)),
    "CD22 percent text": (("40%", None, "cd22_pct_blasts", np.nan), (40.0, False, np.nan, "pct_blasts", False)),
    "CAR copies": (("1.5e4", "copies/ug", "car_copies", np.nan), (1.5e4, False, np.nan, "copies/ug", False)),
    "CAR copies not detected, no limit": (("NEG", None, "car_copies", np.nan), (np.nan, True, np.nan, "copies/ug", False)),
    "blanks and case": (("  < 1E-4 ", "fraction", "flow_mrd", np.nan), (1e-4, True, 1e-4, "fraction", False)),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_lab_formats(name):
    (value, unit, assay, limit), expected = FORMATS[name]
    _assert_result(_one(value, unit, assay, limit), *expected)


# (value, unit, assay, row detection_limit) -> (column at fault, error kind, reason fragment)
ERRORS = {
    "unparseable text": (("0,06%", None, "flow_mrd", np.nan), ("value", "unparseable value", "cannot parse lab value '0,06%'")),
    "missing value": ((None, "fraction", "flow_mrd", np.nan), ("value", "missing value", "value is missing")),
    "infinite number": (("1e400", "fraction", "flow_mrd", np.nan), ("value", "unparseable value", "'1e400'")),
    "MRD above 100%": (("120%", None, "flow_mrd", np.nan), ("value", "impossible value", "1.2 fraction, above")),
    "MRD fraction above 1": (("1.5", "fraction", "ngs_mrd", np.nan), ("value", "impossible value", "above the possible")),
    "percent of blasts above 100": (("101", "pct_blasts", "cd19_pct_blasts", np.nan), ("value", "impossible value", "101")),
    "negative count": (("-3", "cells/uL", "b_cell_count", np.nan), ("value", "impossible value", "negative value '-3'")),
    "number without unit": (("0.06", None, "flow_mrd", np.nan), ("unit", "missing unit", "needs a unit")),
    "B cells NEG without unit": (("NEG", None, "b_cell_count", np.nan), ("unit", "missing unit", "needs a unit")),
    "unit of another assay": (("12", "fraction", "b_cell_count", np.nan), ("unit", "unit not valid for assay", "cells/uL")),
    "percent contradicts cells/uL": (("2%", "cells/uL", "b_cell_count", np.nan), ("unit", "unit conflict", "contradicts")),
    "percent CAR copies": (("5%", None, "car_copies", np.nan), ("value", "unit conflict", "not reported in percent")),
    "unknown assay": (("NEG", None, "mrd_flow", np.nan), ("assay", "unknown assay", "'mrd_flow'")),
    "zero stated limit": (("<0%", None, "flow_mrd", np.nan), ("value", "impossible value", "detection limit in '<0%'")),
    "row limit above 1": (("NEG", "fraction", "flow_mrd", 2.0), ("detection_limit", "impossible value", "must be > 0")),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_row_errors(name):
    (value, unit, assay, limit), (column, kind, fragment) = ERRORS[name]
    row = _one(value, unit, assay, limit)
    assert (row["error_column"], row["error_kind"]) == (column, kind)
    assert fragment in row["error_reason"]
    assert np.isnan(row["value"]) and row["unit"] is None


def test_limit_without_any_unit_is_an_error():
    row = _one("NEG", None, "flow_mrd", 1e-4)  # 1e-4 of what: percent or fraction?
    assert (row["error_column"], row["error_kind"]) == ("unit", "missing unit")
    assert row["error_reason"] == "detection_limit given without a unit"


def test_parse_lab_text_qualifiers():
    parsed = parse_lab_text(pd.Series(["<0.01%", "6e-4", "NEG", "detected <LOQ", None, "what", 0.5, "<=2"], dtype=object))
    assert parsed["qualifier"].tolist() == [
        "less_than", "number", "not_detected", "below_loq", "missing", "unparseable", "number", "less_than"
    ]
    np.testing.assert_allclose(parsed["number"].to_numpy()[[0, 1, 6, 7]], [0.01, 6e-4, 0.5, 2.0])
    assert parsed["percent"].tolist() == [True, False, False, False, False, False, False, False]


def test_numeric_column_parses_without_text():
    out = normalise_lab_values(
        pd.Series([1e-3, 0.0, np.nan]), pd.Series(["fraction"] * 3), pd.Series(["flow_mrd"] * 3)
    )
    assert out["value"].iloc[0] == 1e-3 and not out["censored"].iloc[0]
    assert (out["value"].iloc[1], out["censored"].iloc[1]) == (1e-4, True)  # zero MRD -> censored at the flow limit
    assert out["error_kind"].iloc[2] == "missing value"


def test_index_is_preserved():
    values = pd.Series(["0.06%", "junk"], index=[10, 42], dtype=object)
    out = normalise_lab_values(values, pd.Series([None, None], index=[10, 42]), pd.Series(["flow_mrd"] * 2, index=[10, 42]))
    assert out.index.tolist() == [10, 42]
    assert out.loc[42, "error_kind"] == "unparseable value"


@settings(max_examples=200, deadline=None)
@given(
    mantissa=st.integers(min_value=1, max_value=9999),
    exponent=st.integers(min_value=-10, max_value=-4),
    style=st.sampled_from(["percent", "fraction_e", "fraction_plain", "below_percent"]),
)
def test_round_trip_of_formatted_fractions(mantissa, exponent, style):
    fraction = mantissa * 10.0**exponent  # at most 9999e-4 < 1
    if style == "percent":
        text, unit, censored = f"{fraction * 100:.10g}%", None, False
    elif style == "fraction_e":
        text, unit, censored = f"{fraction:.6E}", "fraction", False
    elif style == "fraction_plain":
        text, unit, censored = f"{fraction:.15f}".rstrip("0"), "fraction", False
    else:
        text, unit, censored = f"<{fraction * 100:.10g} %", None, True
    row = _one(text, unit, "ngs_mrd")
    assert row["error_kind"] is None, (text, row["error_reason"])
    np.testing.assert_allclose(row["value"], fraction, rtol=1e-9)
    assert row["censored"] == censored
    if censored:
        np.testing.assert_allclose(row["detection_limit"], fraction, rtol=1e-9)


def test_column_of_only_unparseable_text():
    out = normalise_lab_values(
        pd.Series(["junk", "junk", "n/a?"], dtype=object), pd.Series([None] * 3, dtype=object),
        pd.Series(["flow_mrd"] * 3),
    )
    assert out["error_kind"].tolist() == ["unparseable value"] * 3
    assert out["error_reason"].tolist()[2] == "cannot parse lab value 'n/a?'"
