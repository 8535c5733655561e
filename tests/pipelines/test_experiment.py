"""Tests of pipelines.experiment: cohort loading, landmark set, cross-validation shared by train and evaluate."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from pipelines.config import DataConfig, RunConfig
from pipelines.experiment import (
    CohortError,
    cross_validated_sources,
    cv_splits,
    dataset_hash,
    load_cohort,
    prepare_landmark_set,
    progress_bar,
)


# --- data ---------------------------------------------------------------------------------------------
def _tables():
    infusions = pd.DataFrame({"patient_id": ["a", "b"], "age_years": [3.5, 12.0]})
    measurements = pd.DataFrame({"patient_id": ["a", "a", "b"], "day": [28.0, 0.0, 28.0],
                                 "specimen": ["BM", "PB", "BM"], "assay": ["ngs_mrd", "b_cell_count", "ngs_mrd"],
                                 "value": [1e-5, 3.0, 0.0]})
    outcomes = pd.DataFrame({"patient_id": ["a", "b"], "event": ["none", "relapse"]})
    return infusions, measurements, outcomes


def test_dataset_hash_ignores_order_but_not_values():
    infusions, measurements, outcomes = _tables()
    reference = dataset_hash(infusions, measurements, outcomes)
    shuffled = measurements.iloc[[2, 0, 1]][["value", "assay", "patient_id", "specimen", "day"]]
    assert dataset_hash(infusions.iloc[::-1], shuffled, outcomes) == reference
    changed = measurements.copy()
    changed.loc[0, "value"] = 1.1e-5
    assert dataset_hash(infusions, changed, outcomes) != reference
    assert len(reference) == 64


def test_a_folder_without_outcomes_cannot_train(tmp_path):
    infusions, measurements, _ = _tables()
    infusions.to_csv(tmp_path / "infusions.csv", index=False)
    measurements.to_csv(tmp_path / "measurements.csv", index=False)
    with pytest.raises(CohortError, match="training needs an outcomes table"):
        load_cohort(DataConfig(source="folder", input_dir=tmp_path))


@pytest.fixture(scope="module")
def small_config():
    return RunConfig.model_validate({
        "data": {"source": "synthetic", "synthetic": {"n_patients": 200, "seed": 11, "with_oracle": True}},
        "features": {"landmark_days": [0, 91]},
        "models": {"candidates": ["coxnet"]},
        "evaluation": {"cv_folds": 2, "group_by": "site"},
    })


@pytest.fixture(scope="module")
def prepared(small_config):
    with progress_bar(Console(file=io.StringIO())) as progress:
        result = prepare_landmark_set(small_config, progress)
    assert [(task.completed, task.total) for task in progress.tasks] == [(3, 3)]
    return result


def test_site_folds_hold_out_whole_centers(prepared, small_config):
    landmark_set = prepared.landmark_set
    splits = cv_splits(landmark_set, small_config)
    sites = landmark_set["site"].to_numpy()
    assert len(splits) == landmark_set["site"].nunique() >= 2
    for train, test in splits:
        assert set(sites[train]).isdisjoint(sites[test])


def test_models_never_see_the_oracle(prepared, small_config):
    landmark_set, oracle = prepared.landmark_set, prepared.cohort.oracle
    assert oracle is not None
    splits = cv_splits(landmark_set, small_config)
    with_oracle = cross_validated_sources(landmark_set, oracle, small_config, splits)
    without_oracle = cross_validated_sources(landmark_set, None, small_config, splits)
    assert set(with_oracle) == {"coxnet", "rule", "oracle"} and set(without_oracle) == {"coxnet", "rule"}
    for name in ("coxnet", "rule"):
        pd.testing.assert_frame_equal(with_oracle[name], without_oracle[name])
    # the oracle's risks are the simulator's, not a copy of a model's
    column = with_oracle["oracle"].columns[0]
    assert not np.allclose(with_oracle["oracle"][column], with_oracle["coxnet"][column], equal_nan=True)


def test_a_recalibrated_candidate_brings_its_base_model_and_is_refitted_on_its_out_of_fold_predictions(prepared):
    from models.recalibration import RecalibratedModel
    from pipelines.experiment import n_fits, refit

    config = RunConfig.model_validate({
        "data": {"source": "synthetic", "synthetic": {"n_patients": 200, "seed": 11}},
        "features": {"landmark_days": [0, 91]},
        "models": {"candidates": ["xgb_cox_recal"], "params": {"xgb_cox": {"n_estimators": 20}}},
        "evaluation": {"cv_folds": 3},
    })
    splits = cv_splits(prepared.landmark_set, config)
    fits = []
    predictions = cross_validated_sources(prepared.landmark_set, None, config, splits, on_fit=lambda: fits.append(1))
    assert list(predictions) == ["xgb_cox", "xgb_cox_recal", "rule"]
    assert len(fits) == n_fits(config, len(splits)) == 3 + 3 + 3  # pairs of folds, outer folds, the rule
    model = refit(config, prepared, "xgb_cox_recal", predictions)
    assert isinstance(model, RecalibratedModel)
    assert model.estimator_.survival_estimator.steps[-1][1].n_estimators == 20  # the base's parameters
    expected = model._recalibrator().fit(predictions["xgb_cox"], prepared.landmark_set[["time", "event"]],
                                         prepared.landmark_set["landmark_day"])
    np.testing.assert_allclose(model.recalibrator_.intercept_, expected.intercept_)
