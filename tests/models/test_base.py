"""models.base: feature-frame checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.base import ModelInputError, check_features


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"a": [1.0, np.nan], "b": [0.5, 2.0], "c": [3.0, 4.0]})


def test_a_float_frame_in_the_expected_order_is_returned_as_is():
    X = _frame()
    assert check_features(X, ["a", "b", "c"]) is X
    assert check_features(X) is X


@pytest.mark.parametrize(
    "X",
    [
        _frame()[["c", "a", "b"]],
        _frame().assign(b=[1, 2]),
        _frame().assign(d=[9.0, 9.0]),
        _frame().astype({"c": "float32"}),
    ],
    ids=["reordered", "integer column", "extra column", "float32 column"],
)
def test_other_frames_are_converted_to_the_expected_float_columns(X):
    checked = check_features(X, ["a", "b", "c"])
    assert checked is not X
    assert list(checked.columns) == ["a", "b", "c"]
    assert (checked.dtypes == np.float64).all()
    pd.testing.assert_frame_equal(checked, X[["a", "b", "c"]].astype(float))


def test_duplicate_columns_are_not_passed_through():
    X = pd.DataFrame(np.ones((2, 2)), columns=["a", "a"])
    assert check_features(X) is not X


def test_missing_and_non_numeric_columns_are_named():
    with pytest.raises(ModelInputError, match="'d'"):
        check_features(_frame(), ["a", "d"])
    with pytest.raises(ModelInputError, match="numeric"):
        check_features(_frame().assign(b=["x", "y"]), ["a", "b", "c"])
