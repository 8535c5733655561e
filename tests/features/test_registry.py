"""The builder registry and the as-of-day feature rows used by training and scoring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import registry
from features.registry import (
    DEFAULT_BUILDERS,
    FeatureInputError,
    available_builders,
    build_feature_rows,
    get_builder,
    register_builder,
)
from tests.features.test_baseline import infusions as baseline_infusions
from tests.features.test_longitudinal import BCELL_ROWS, NGS_ROWS, measurements_of


def latest_day_seen(infusions: pd.DataFrame, measurements: pd.DataFrame, landmark_day: float) -> pd.DataFrame:
    """A builder outside the package: the latest measurement day it was given, per patient."""
    latest = measurements.groupby("patient_id", observed=True)["day"].max()
    index = pd.Index(infusions["patient_id"], name="patient_id")
    return pd.DataFrame({"latest_day_seen": latest.reindex(index).astype(float)}, index=index)


def cohort() -> tuple[pd.DataFrame, pd.DataFrame]:
    infusions = baseline_infusions()
    infusions["patient_id"] = ["P1", "B1", "X"]
    return infusions, measurements_of(NGS_ROWS + BCELL_ROWS)


def test_default_builders_are_registered():
    assert set(DEFAULT_BUILDERS) <= set(available_builders())


def test_unknown_builder_names_the_registered_ones():
    with pytest.raises(KeyError, match="unknown feature builder 'mrdd'.*baseline"):
        get_builder("mrdd")


def test_builders_only_see_rows_known_at_the_landmark():
    infusions, measurements = cohort()
    path = f"{__name__}:latest_day_seen"
    rows = build_feature_rows(infusions, measurements, 91.0, [path])
    assert rows.loc["P1", "latest_day_seen"] == 91.0  # the day-150 row is not passed
    assert rows.loc["B1", "latest_day_seen"] == 91.0  # nor the day-120 one
    assert np.isnan(rows.loc["X", "latest_day_seen"])
    unsorted = measurements.iloc[::-1]
    assert build_feature_rows(infusions, unsorted, 91.0, [path]).equals(rows)


def test_rows_cover_every_patient_with_the_landmark_first():
    infusions, measurements = cohort()
    rows = build_feature_rows(infusions, measurements, 91.0)
    assert list(rows.index) == ["P1", "B1", "X"] and rows.index.name == "patient_id"
    assert rows.columns[0] == "landmark_day" and (rows["landmark_day"] == 91.0).all()
    assert rows.dtypes.eq(np.float64).all()
    for name in DEFAULT_BUILDERS:
        own = get_builder(name)(infusions, measurements, 91.0)
        pd.testing.assert_frame_equal(rows[own.columns], own)


def test_a_registered_builder_is_one_function_plus_one_config_line(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_builder("latest_day")(latest_day_seen)
    infusions, measurements = cohort()
    rows = build_feature_rows(infusions, measurements, 28.0, ["baseline", "latest_day"])
    assert rows.loc["P1", "latest_day_seen"] == 28.0
    with pytest.raises(ValueError, match="already registered"):
        register_builder("latest_day")(cohort)


def test_builder_options_are_forwarded_and_checked():
    infusions, measurements = cohort()
    options = {"bca": {"recovery_cells_per_ul": 2.0}}
    rows = build_feature_rows(infusions, measurements, 100.0, ["bca"], options)
    assert rows.loc["B1", "bca_loss_day_upper"] == 60.0
    with pytest.raises(KeyError, match="not in use"):
        build_feature_rows(infusions, measurements, 100.0, ["mrd"], options)


def test_bad_builders_and_inputs_are_rejected():
    infusions, measurements = cohort()
    with pytest.raises(ValueError, match="duplicate columns"):
        build_feature_rows(infusions, measurements, 28.0, ["mrd", "mrd"])
    with pytest.raises(ValueError, match="non-float"):
        build_feature_rows(infusions, measurements, 28.0, [f"{__name__}:cohort_as_builder"])
    with pytest.raises(FeatureInputError, match="finite"):
        build_feature_rows(infusions, measurements, float("nan"))
    with pytest.raises(FeatureInputError, match="measurements: missing required column.*day"):
        build_feature_rows(infusions, measurements.drop(columns="day"), 28.0)


def cohort_as_builder(infusions: pd.DataFrame, measurements: pd.DataFrame, landmark_day: float) -> pd.DataFrame:
    """A faulty builder: returns a string column."""
    return pd.DataFrame({"site": infusions["site"].to_numpy()}, index=pd.Index(infusions["patient_id"]))


def test_float_frame_equals_pandas_float_construction():
    from features.registry import float_frame

    index = pd.Index(["P1", "P2", "P3"], name="patient_id")
    columns = {"b": np.array([1.5, np.nan, -2.0]), "a": np.array([True, False, True]), "c": np.array([1, 2, 3])}
    expected = pd.DataFrame(columns, index=index, dtype=float)
    pd.testing.assert_frame_equal(float_frame(columns, index), expected, check_exact=True)
