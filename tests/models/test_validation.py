"""Grouped cross-validation: no patient (or site) on both sides; every row predicted out of fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.base import ModelInputError, cif_columns
from models.factory import make_model
from models.validation import cross_validated_cif, grouped_splits


@pytest.fixture(scope="module")
def stacked(known_cohort):
    """Two landmark rows per patient, sites A-C."""
    n = len(known_cohort.X) // 2
    frame = pd.concat([known_cohort.X, known_cohort.y], axis=1).iloc[: 2 * n]
    frame.insert(0, "patient_id", np.repeat(known_cohort.patient_id[:n], 2))
    frame.insert(1, "site", np.array(["A", "B", "C"])[np.arange(2 * n) // 2 % 3])
    return frame


def test_patient_folds_keep_each_patient_on_one_side(stacked):
    splits = grouped_splits(stacked, n_splits=5, group_by="patient", random_state=0)
    assert len(splits) == 5
    patients = stacked["patient_id"].to_numpy()
    for train, test in splits:
        assert not set(patients[train]) & set(patients[test])
    assert np.array_equal(np.sort(np.concatenate([test for _, test in splits])), np.arange(len(stacked)))


def test_site_folds_leave_one_center_out(stacked):
    splits = grouped_splits(stacked, group_by="site")
    sites = stacked["site"].to_numpy()
    assert sorted(set(sites[test]).pop() for _, test in splits) == ["A", "B", "C"]
    for train, test in splits:
        assert len(set(sites[test])) == 1 and set(sites[test]).isdisjoint(sites[train])


def test_bad_grouping_requests_are_clear_errors(stacked):
    with pytest.raises(ModelInputError, match="site"):
        grouped_splits(stacked.drop(columns=["site"]), group_by="site")
    with pytest.raises(ModelInputError, match="group_by"):
        grouped_splits(stacked, group_by="center")
    with pytest.raises(ModelInputError, match="patients for 5 folds"):
        grouped_splits(stacked.iloc[:6], n_splits=5)


def test_every_row_is_predicted_by_a_model_that_did_not_see_its_patient(stacked):
    features = ["x0", "x1", "x2", "noise", "landmark_day"]
    splits = grouped_splits(stacked, n_splits=3, random_state=1)
    seen = []
    predictions = cross_validated_cif(make_model("xgb_cox"), stacked[features], stacked[["time", "event"]], splits,
                                      [365.0], on_fold=seen.append)
    assert seen == [0, 1, 2]
    assert list(predictions.columns) == cif_columns([365.0])
    assert predictions.notna().all().all()
    train, test = splits[0]
    refit = make_model("xgb_cox").fit(stacked[features].iloc[train], stacked[["time", "event"]].iloc[train])
    np.testing.assert_allclose(predictions.iloc[test], refit.predict_cif(stacked[features].iloc[test], [365.0]))
