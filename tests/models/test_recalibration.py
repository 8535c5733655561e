"""Recalibration: recovers a known distortion, keeps a competing-risks model, leaks nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from models.base import CAUSES, PHENOTYPE_CAUSES, ModelInputError, cif_columns
from models.calibration import calibration_slope, observed_expected_ratio
from models.competing import CIFCurves, cif_frame
from models.evaluation import endpoint_column
from models.explain import native_tree_explanation
from models.factory import make_model
from models.metrics import Outcome
from models.recalibration import (
    RECALIBRATED_CURVES,
    CIFRecalibrator,
    RecalibratedModel,
    cross_validated_recalibrated_cif,
)
from models.validation import cross_validated_cif, grouped_splits
from tests.models.conftest import simulate_known_cohort

KNOTS = (182.0, 365.0, 730.0)
GRID = np.arange(0.0, 736.0, 7.0)


def _true_curves(cohort) -> CIFCurves:
    cif = {cause: np.zeros((len(cohort.X), GRID.size)) for cause in CAUSES}
    for j, t in enumerate(GRID[1:], start=1):
        for cause, values in cohort.true_cif(t).items():
            cif[cause][:, j] = values
    return CIFCurves(times=GRID, cif=cif, event_free=1.0 - np.sum(list(cif.values()), axis=0))


def _distorted(curves: CIFCurves, factor: float, power: float) -> CIFCurves:
    """Every cause's cumulative hazard-scale value exp(a) * Lambda^b: too high (factor > 1) and too
    extreme (power > 1); then rescaled so the causes still sum to at most 1."""
    cif = {cause: -np.expm1(-factor * (-np.log1p(-values)) ** power) for cause, values in curves.cif.items()}
    total = np.sum(list(cif.values()), axis=0)
    scale = np.where(total > 0.999, 0.999 / np.maximum(total, 1e-12), 1.0)
    cif = {cause: values * scale for cause, values in cif.items()}
    return CIFCurves(times=curves.times, cif=cif, event_free=1.0 - np.sum(list(cif.values()), axis=0))


@pytest.fixture(scope="module")
def cohort():
    return simulate_known_cohort(n=6000, seed=31)


@pytest.fixture(scope="module")
def truth(cohort):
    return _true_curves(cohort)


def _check_structure(curves: CIFCurves) -> None:
    stacked = np.stack([curves.cif[cause] for cause in CAUSES])
    np.testing.assert_allclose(stacked.sum(axis=0) + curves.event_free, 1.0, atol=1e-12)
    assert (stacked >= 0).all() and (curves.event_free >= -1e-12).all()
    assert (np.diff(stacked, axis=2) >= -1e-12).all(), "a cause's incidence decreases over time"
    assert (np.diff(curves.event_free, axis=1) <= 1e-12).all()


def test_calibrated_predictions_are_left_almost_unchanged(cohort, truth):
    frame = cif_frame(truth, KNOTS, cohort.X.index)
    recalibrator = CIFRecalibrator(knots_days=KNOTS).fit(frame, cohort.y, cohort.X["landmark_day"])
    relapse = RECALIBRATED_CURVES.index("relapse")
    np.testing.assert_allclose(recalibrator.intercept_[relapse], 0.0, atol=0.12)
    np.testing.assert_allclose(recalibrator.slope_[relapse], 1.0, atol=0.12)
    mapped = recalibrator.transform(truth, cohort.X["landmark_day"])
    # largest change of any patient's curve at any time; HSCT's fitted map is the noisiest (slope
    # 0.83 at landmark 28, knot 182 d, from 116 events on true curves; the largest change was 0.071
    # with uncentred fits and is 0.089 with centred ones), so it gets the widest bound
    tolerance = {"relapse": 0.035, **dict.fromkeys(PHENOTYPE_CAUSES, 0.035), "death": 0.035, "hsct": 0.10}
    for cause, bound in tolerance.items():
        before = truth.relapse if cause == "relapse" else truth.cif[cause]
        after = mapped.relapse if cause == "relapse" else mapped.cif[cause]
        assert np.abs(after - before).max() < bound, cause


def test_the_relapse_curve_is_split_by_the_mapped_phenotype_shares():
    from models.recalibration import _phenotype_split

    times = np.arange(0.0, 50.0, 10.0)
    relapse = np.array([[0.0, 0.1, 0.2, 0.3, 0.4]])
    mapped = {"relapse_CD19_pos": 0.5 * relapse, "relapse_CD19_neg": 0.3 * relapse,  # shares 5:3:2, summing to
              "relapse_lineage_switch": 0.2 * relapse * 2.0}                       # more than the relapse curve
    base = CIFCurves(times=times, cif={cause: relapse / 3 for cause in CAUSES}, event_free=1 - 5 * relapse / 3)
    split = _phenotype_split(relapse, mapped, base)
    np.testing.assert_allclose(split[:, 0], np.array([[5], [3], [4]]) / 12 * relapse[0], atol=1e-15)
    # a phenotype whose target (relapse x mapped share) falls cannot give back incidence; the
    # others take every later relapse increment: lineage switch's target is 0.05 at day 10, then
    # 0.2 x 0.1 / 0.6, 0.3 x 0.1 / 1.1, 0.4 x 0.1 / 1.6
    falling = {"relapse_CD19_pos": np.array([[0.0, 0.1, 0.5, 1.0, 1.5]]), "relapse_CD19_neg": np.zeros((1, 5)),
               "relapse_lineage_switch": np.array([[0.0, 0.1, 0.1, 0.1, 0.1]])}
    split = _phenotype_split(relapse, falling, base)
    np.testing.assert_allclose(split.sum(axis=0), relapse)
    assert (np.diff(split, axis=2) >= 0).all()
    np.testing.assert_allclose(split[2, 0], [0.0, 0.05, 0.05, 0.05, 0.05])  # kept, not reduced
    np.testing.assert_allclose(split[0, 0], [0.0, 0.05, 0.15, 0.25, 0.35])


def test_a_known_distortion_is_undone(cohort, truth):
    distorted = _distorted(truth, factor=2.5, power=1.3)
    landmarks = cohort.X["landmark_day"].to_numpy()
    frame = cif_frame(distorted, KNOTS, cohort.X.index)
    outcome = Outcome.from_events(cohort.y["time"], cohort.y["event"], "relapse")
    relapse_365 = frame[endpoint_column("relapse", 365.0)].to_numpy()
    assert observed_expected_ratio(outcome, relapse_365, 365.0) < 0.8  # over-predicts relapse,
    assert calibration_slope(outcome, relapse_365, 365.0) < 0.85  # and too extreme
    recalibrator = CIFRecalibrator(knots_days=KNOTS).fit(frame, cohort.y, landmarks)
    mapped = recalibrator.transform(distorted, landmarks)
    _check_structure(mapped)
    after = cif_frame(mapped, KNOTS, cohort.X.index)
    for endpoint in ("relapse", "relapse_CD19_pos", "hsct"):
        outcome = Outcome.from_events(cohort.y["time"], cohort.y["event"], endpoint)
        for horizon in KNOTS:
            prediction = after[endpoint_column(endpoint, horizon)].to_numpy()
            assert observed_expected_ratio(outcome, prediction, horizon) == pytest.approx(1.0, abs=0.05)
        assert calibration_slope(outcome, after[endpoint_column(endpoint, 365.0)].to_numpy(), 365.0) \
            == pytest.approx(1.0, abs=0.1)
    error_before = np.abs(distorted.relapse - truth.relapse).mean()
    assert np.abs(mapped.relapse - truth.relapse).mean() < error_before / 3


def test_phenotypes_add_up_to_relapse_and_ranking_within_a_landmark_is_kept(cohort, truth):
    distorted = _distorted(truth, factor=1.3, power=0.8)
    landmarks = cohort.X["landmark_day"].to_numpy()
    recalibrator = CIFRecalibrator(knots_days=KNOTS).fit(cif_frame(distorted, KNOTS, cohort.X.index), cohort.y,
                                                         landmarks)
    mapped = recalibrator.transform(distorted, landmarks)
    np.testing.assert_allclose(np.sum([mapped.cif[cause] for cause in PHENOTYPE_CAUSES], axis=0), mapped.relapse)
    for column in (np.flatnonzero(GRID == 182.0)[0], np.searchsorted(GRID, 364.0)):
        for landmark in np.unique(landmarks):
            rows = landmarks == landmark
            # a monotone map at each time; only the running maximum over time can swap near-ties
            assert kendalltau(distorted.relapse[rows, column], mapped.relapse[rows, column]).statistic > 0.999


def test_causes_never_pass_one_when_the_map_pushes_them_up(cohort, truth):
    landmarks = cohort.X["landmark_day"].to_numpy()
    recalibrator = CIFRecalibrator(knots_days=KNOTS).fit(cif_frame(truth, KNOTS, cohort.X.index), cohort.y, landmarks)
    recalibrator.intercept_[:] = 2.5  # every cause about 12 times its hazard: their sum would pass 1
    mapped = recalibrator.transform(truth, landmarks)
    _check_structure(mapped)
    assert mapped.event_free[:, -1].min() == pytest.approx(0.0, abs=1e-12)


def test_sparse_landmarks_are_shrunk_towards_the_pooled_map(cohort, truth):
    distorted = _distorted(truth, factor=1.6, power=1.0)
    landmarks = cohort.X["landmark_day"].to_numpy().copy()
    y = cohort.y.copy()
    sparse = np.flatnonzero(landmarks == 91.0)[:150]  # a small landmark: few events of each cause
    landmarks[sparse] = 300.0
    recalibrator = CIFRecalibrator(knots_days=KNOTS).fit(cif_frame(distorted, KNOTS, cohort.X.index), y, landmarks)
    table = recalibrator.parameters()
    lineage = table[(table["curve"] == "relapse_lineage_switch") & (table["knot_days"] == 365.0)]
    small = lineage[lineage["landmark_day"] == 300.0].iloc[0]
    assert small["n_events"] < 5
    centred_intercept = small["intercept"] - small["centre"] * (1.0 - small["slope"])
    assert abs(centred_intercept - small["pooled_intercept"]) < 0.1
    relapse = table[(table["curve"] == "relapse") & (table["knot_days"] == 365.0) & (table["landmark_day"] == 0.0)]
    assert relapse["intercept"].iloc[0] == pytest.approx(-np.log(1.6), abs=0.15)  # its own estimate: log(1/1.6)


def test_the_map_between_landmarks_is_interpolated(cohort, truth):
    landmarks = cohort.X["landmark_day"].to_numpy()
    recalibrator = CIFRecalibrator(knots_days=KNOTS).fit(cif_frame(truth, KNOTS, cohort.X.index), cohort.y, landmarks)
    recalibrator.intercept_[:, 0], recalibrator.intercept_[:, 1] = 0.0, np.log(2.0)  # landmarks 0 and 28
    recalibrator.slope_[:] = 1.0
    one_row = CIFCurves(times=truth.times, cif={c: v[:1].repeat(4, axis=0) for c, v in truth.cif.items()},
                        event_free=truth.event_free[:1].repeat(4, axis=0))
    mapped = recalibrator.transform(one_row, [0.0, 14.0, 28.0, -5.0])
    hazard = -np.log1p(-mapped.cif["hsct"][:, 10])  # HSCT: far from any cap
    base = -np.log1p(-one_row.cif["hsct"][0, 10])
    np.testing.assert_allclose(hazard / base, [1.0, np.sqrt(2.0), 2.0, 1.0], rtol=1e-6)


def test_fit_needs_the_knot_columns_and_one_landmark_per_row(cohort, truth):
    frame = cif_frame(truth, (182.0, 365.0), cohort.X.index)
    with pytest.raises(ModelInputError, match="lack column"):
        CIFRecalibrator(knots_days=KNOTS).fit(frame, cohort.y, cohort.X["landmark_day"])
    with pytest.raises(ModelInputError, match="knots_days"):
        CIFRecalibrator(knots_days=(365.0, 182.0)).fit(frame, cohort.y, cohort.X["landmark_day"])
    recalibrator = CIFRecalibrator(knots_days=(182.0, 365.0)).fit(frame, cohort.y, cohort.X["landmark_day"])
    with pytest.raises(ModelInputError, match="landmark day per row"):
        recalibrator.transform(truth, cohort.X["landmark_day"].iloc[:5])


# --- the wrapper and nested cross-validation ---------------------------------------------------------
_SMALL = {"n_estimators": 30}


@pytest.fixture(scope="module")
def small_cohort():
    cohort = simulate_known_cohort(n=900, seed=32)
    patients = np.repeat(np.arange(450), 2)  # two landmark rows per patient
    return cohort.X, cohort.y, np.array([f"P{p}" for p in patients])


def test_wrapper_needs_patient_groups_or_out_of_fold_predictions(small_cohort):
    X, y, _ = small_cohort
    with pytest.raises(ModelInputError, match="groups"):
        make_model("xgb_cox_recal", _SMALL).fit(X, y)
    with pytest.raises(ModelInputError, match="landmark column"):
        make_model("xgb_cox_recal", _SMALL).fit(X.drop(columns="landmark_day"), y, groups=np.arange(len(X)))


def test_wrapper_predicts_a_competing_risks_layout_and_shares_the_base_interface(small_cohort):
    X, y, groups = small_cohort
    model = make_model("xgb_cox_recal", {**_SMALL, "cv": 3}).fit(X, y, groups=groups)
    assert isinstance(model, RecalibratedModel) and model.cv == 3
    frame = model.predict_cif(X.iloc[:50], [182.0, 365.0])
    assert list(frame.columns) == cif_columns([182.0, 365.0])
    _check_structure(model.predict_cif_curves(X.iloc[:50]))
    np.testing.assert_allclose(model.predict(X.iloc[:50]), frame[endpoint_column("relapse", 365.0)].to_numpy())
    assert model.relapse_hazard_model_ is model.estimator_.relapse_hazard_model_
    model.background_ = X.iloc[:1]
    assert model.estimator_.background_ is model.background_  # the pickled base carries no other rows
    tree = native_tree_explanation(model, X.iloc[:5])
    np.testing.assert_allclose(tree.values, native_tree_explanation(model.estimator_, X.iloc[:5]).values)


def test_final_map_can_reuse_the_callers_out_of_fold_predictions(small_cohort):
    X, y, groups = small_cohort
    frame = pd.DataFrame({"patient_id": groups})
    splits = grouped_splits(frame, n_splits=3, random_state=1)
    out_of_fold = cross_validated_cif(make_model("xgb_cox", _SMALL), X, y, splits, KNOTS)
    given = make_model("xgb_cox_recal", _SMALL).fit(X, y, out_of_fold=out_of_fold)
    expected = CIFRecalibrator(knots_days=KNOTS).fit(out_of_fold, y, X["landmark_day"])
    np.testing.assert_allclose(given.recalibrator_.intercept_, expected.intercept_)


def test_nested_cross_validation_never_lets_a_fold_shape_its_own_map(small_cohort):
    X, y, groups = small_cohort
    splits = grouped_splits(pd.DataFrame({"patient_id": groups}), n_splits=3, random_state=1)
    model = make_model("xgb_cox_recal", _SMALL)
    base, recalibrated = cross_validated_recalibrated_cif(model, X, y, splits, (182.0, 365.0))
    plain = cross_validated_cif(make_model("xgb_cox", _SMALL), X, y, splits, (182.0, 365.0))
    pd.testing.assert_frame_equal(base[plain.columns], plain)  # the same fits give the "before"
    first = splits[0][1]
    shuffled = y.copy()
    shuffled.iloc[first, shuffled.columns.get_loc("event")] = np.roll(y["event"].to_numpy()[first], 7)
    _, again = cross_validated_recalibrated_cif(model, X, shuffled, splits, (182.0, 365.0))
    pd.testing.assert_frame_equal(again.iloc[first], recalibrated.iloc[first])  # fold 0 never saw its outcomes
    others = np.setdiff1d(np.arange(len(X)), first)
    assert not np.allclose(again.iloc[others].to_numpy(), recalibrated.iloc[others].to_numpy())


def test_nested_cross_validation_needs_three_folds(small_cohort):
    X, y, groups = small_cohort
    splits = grouped_splits(pd.DataFrame({"patient_id": groups}), n_splits=2, random_state=1)
    with pytest.raises(ModelInputError, match="at least 3 folds"):
        cross_validated_recalibrated_cif(make_model("xgb_cox_recal", _SMALL), X, y, splits, KNOTS)


def _death_only_cohort(rng, n_rows: int, log_hazard_365: np.ndarray) -> pd.DataFrame:
    """Exponential deaths with the given log cumulative hazard at 365 days, uniform censoring."""
    rate = np.exp(log_hazard_365) / 365.0
    death = rng.exponential(1.0 / rate)
    censor = rng.uniform(100.0, 900.0, n_rows)
    return pd.DataFrame({"time": np.minimum(death, censor), "event": np.where(death <= censor, "death", "none")})


def test_a_sparse_rare_landmark_borrows_the_pooled_spread_not_the_level_of_the_others():
    """Dense landmarks predict deaths too spread out about their own level (log hazard 1.4 times
    too far from it); a sparse landmark, 30 times rarer, is calibrated. The pooled map narrows the
    spread; read at the sparse landmark's own mean prediction it must leave that level alone (an
    uncentred map, a line through a cumulative hazard of 1, would multiply its risks by about 2)."""
    rng = np.random.default_rng(7)
    dense, sparse = 4000, 150
    true_dense = rng.normal(-1.5, 0.8, 2 * dense)
    true_sparse = rng.normal(-1.5 - np.log(30.0), 0.8, sparse)
    predicted = np.concatenate([-1.5 + 1.4 * (true_dense + 1.5), true_sparse])
    landmarks = np.repeat([0.0, 28.0, 182.0], [dense, dense, sparse])
    y = _death_only_cohort(rng, landmarks.size, np.concatenate([true_dense, true_sparse]))
    frame = {}
    for h in KNOTS:
        death = -np.expm1(-np.exp(predicted) * h / 365.0)
        for curve in RECALIBRATED_CURVES:
            frame[endpoint_column(curve, h)] = death if curve == "death" else np.full(landmarks.size, 1e-3)
    recalibrator = CIFRecalibrator(knots_days=KNOTS).fit(pd.DataFrame(frame), y, landmarks)
    table = recalibrator.parameters().set_index(["curve", "landmark_day", "knot_days"])
    for h in KNOTS:
        cell = table.loc[("death", 182.0, h)]
        level = np.mean(np.log(-np.log1p(-frame[endpoint_column("death", h)][landmarks == 182.0])))
        change_at_level = cell["intercept"] + (cell["slope"] - 1.0) * level
        assert abs(change_at_level) < 0.25, f"knot {h:g}: the sparse landmark's level moved by {change_at_level:.2f}"
        assert cell["slope"] < 0.85  # it did borrow the pooled narrowing (1 / 1.4 = 0.71)


def test_a_map_pickled_before_centring_still_transforms_and_reports(cohort, truth):
    """A map saved before ``centre_`` existed: same curves, and its table reads the intercepts at 0."""
    landmarks = cohort.X["landmark_day"].to_numpy()
    fitted = CIFRecalibrator(knots_days=KNOTS).fit(cif_frame(truth, KNOTS, cohort.X.index), cohort.y, landmarks)
    old = CIFRecalibrator.__new__(CIFRecalibrator)
    old.__setstate__({k: v for k, v in fitted.__getstate__().items() if k != "centre_"})
    np.testing.assert_array_equal(old.transform(truth, landmarks).relapse, fitted.transform(truth, landmarks).relapse)
    assert (old.parameters()["centre"] == 0.0).all()


def test_phenotype_maps_correct_the_phenotypes_given_the_recalibrated_relapse(cohort, truth):
    """Every cause predicted 1.6 times too high, phenotype shares right: the relapse map removes the
    factor, and the phenotype maps, fitted on the recalibrated relapse split by the base shares,
    have nothing left to correct (a map fitted on the base phenotype curves would remove the
    factor a second time from inputs that no longer have it)."""
    distorted = _distorted(truth, factor=1.6, power=1.0)
    recalibrator = CIFRecalibrator(knots_days=KNOTS).fit(cif_frame(distorted, KNOTS, cohort.X.index), cohort.y,
                                                         cohort.X["landmark_day"])
    table = recalibrator.parameters()
    cells = table[(table["knot_days"] == 365.0) & (table["landmark_day"] == 0.0)].set_index("curve")
    centred = cells["intercept"] - cells["centre"] * (1.0 - cells["slope"])
    assert centred["relapse"] == pytest.approx(-np.log(1.6), abs=0.15)
    for phenotype in ("relapse_CD19_pos", "relapse_CD19_neg"):
        assert abs(centred[phenotype]) < 0.12, (phenotype, centred[phenotype])
