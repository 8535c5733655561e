"""The competing-risks models: one shared contract for every model, and recovery of known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv

from models.base import (
    CAUSES,
    PHENOTYPE_CAUSES,
    CompetingRisksModel,
    ModelInputError,
    cif_column,
    cif_columns,
    event_free_column,
)
from models.competing import CauseSpecificHazardsModel
from models.factory import BASELINE_NAME, LINEAGE_SWITCH_PARAM, MODEL_NAMES, make_model, make_survival_estimator
from models.metrics import Outcome, harrell_c
from models.nonparametric import aalen_johansen
from tests.models.conftest import simulate_known_cohort

HORIZONS = (182.0, 365.0, 730.0)


@pytest.fixture(scope="module")
def contract_data(known_cohort):
    """The known cohort plus the clinicians' rule columns (so every model can be fitted on it)."""
    X = known_cohort.X.assign(
        bm_blasts_pct=np.where(known_cohort.X["x0"] > 0.5, 20.0, 1.0),
        blinatumomab_nonresponder=(known_cohort.X["x1"] < -1.5).astype(float),
        active_non_cns_emd=0.0,
        kmt2a_rearranged=np.nan,
    )
    return X, known_cohort.y


_WITH_LINEAGE_SWITCH_HAZARD = "xgb_aft+lineage_switch_hazard"
"""``xgb_aft`` with a lineage-switch hazard of its own (``xgb_pem``): the shared contract holds for it too."""


def _make(name: str):
    if name == _WITH_LINEAGE_SWITCH_HAZARD:
        return make_model("xgb_aft", {LINEAGE_SWITCH_PARAM: "xgb_pem"}, random_state=0)
    return make_model(name, random_state=0)


@pytest.fixture(scope="module", params=MODEL_NAMES + (BASELINE_NAME, _WITH_LINEAGE_SWITCH_HAZARD))
def fitted(request, contract_data):
    X, y = contract_data
    model = _make(request.param)
    return request.param, model, model.fit(X, y)


def test_fit_returns_the_model_and_follows_the_protocol(fitted):
    _, model, result = fitted
    assert result is model
    assert isinstance(model, CompetingRisksModel)


def test_predict_cif_layout_and_parts_sum_to_one(fitted, contract_data):
    _, model, _ = fitted
    X, _ = contract_data
    cif = model.predict_cif(X.iloc[:200], HORIZONS)
    assert list(cif.columns) == cif_columns(HORIZONS)
    assert cif.index.equals(X.index[:200])
    assert np.isfinite(cif.to_numpy()).all() and (cif.to_numpy() >= -1e-12).all() and (cif.to_numpy() <= 1 + 1e-12).all()
    for h in HORIZONS:
        parts = cif[[cif_column(cause, h) for cause in CAUSES] + [event_free_column(h)]].sum(axis=1)
        np.testing.assert_allclose(parts, 1.0, atol=1e-9)
        phenotypes = cif[[cif_column(cause, h) for cause in CAUSES[:3]]].sum(axis=1)
        np.testing.assert_allclose(cif[cif_column("relapse", h)], phenotypes, atol=1e-12)


def test_curves_are_monotone_in_time(fitted, contract_data):
    _, model, _ = fitted
    X, _ = contract_data
    curves = model.predict_cif_curves(X.iloc[:100])
    for cause in CAUSES:
        assert np.all(np.diff(curves.cif[cause], axis=1) >= -1e-12)
    assert np.all(np.diff(curves.event_free, axis=1) <= 1e-12)
    cif = model.predict_cif(X.iloc[:100], HORIZONS)
    assert np.all(cif[event_free_column(182)] >= cif[event_free_column(730)] - 1e-12)


def test_predict_is_a_relapse_risk_score(fitted, contract_data):
    name, model, _ = fitted
    X, y = contract_data
    risk = model.predict(X)
    assert risk.shape == (len(X),) and np.isfinite(risk).all()
    if name != BASELINE_NAME:
        np.testing.assert_allclose(risk, model.predict_cif(X, [365.0])[cif_column("relapse", 365)], atol=1e-12)
    from models.metrics import harrell_c

    assert harrell_c(Outcome.from_events(y["time"], y["event"]), risk) > 0.55


def test_clone_refits_to_the_same_predictions(fitted, contract_data):
    _, model, _ = fitted
    X, y = contract_data
    twin = clone(model)
    assert twin.get_params(deep=False).keys() == model.get_params(deep=False).keys()
    np.testing.assert_allclose(twin.fit(X, y).predict_cif(X.iloc[:50], HORIZONS), model.predict_cif(X.iloc[:50], HORIZONS))


def test_a_row_predicts_bit_identically_alone_and_in_a_batch(fitted, contract_data):
    _, model, _ = fitted
    X, _ = contract_data
    batch = model.predict_cif(X.iloc[:40], HORIZONS)
    for position in (0, 17, 39):
        alone = model.predict_cif(X.iloc[[position]], HORIZONS)
        np.testing.assert_array_equal(alone.to_numpy(), batch.iloc[[position]].to_numpy())


def test_phenotype_shares_equal_one_classifier_call_per_knot(fitted, contract_data):
    """All knots are scored in one call; the shares equal those of one call per knot, bit for bit."""
    from models.base import PHENOTYPE_CAUSES
    from models.competing import _predict_proba

    name, model, _ = fitted
    if name == BASELINE_NAME or model.phenotype_model_ is None:
        pytest.skip("no phenotype classifier")
    X = contract_data[0].iloc[:25][list(model.feature_names_in_)].astype(float)
    per_knot = []
    for knot in model.phenotype_knots_:
        probabilities = _predict_proba(model.phenotype_model_, model._with_relapse_time(X, np.full(len(X), knot)))
        classes = list(model.phenotype_model_.classes_)  # without lineage switch when it has its own hazard
        per_knot.append(np.column_stack([probabilities[:, classes.index(cause)] if cause in classes
                                         else np.zeros(len(X)) for cause in PHENOTYPE_CAUSES]))
    expected = np.stack(per_knot, axis=2)
    np.testing.assert_array_equal(model._shares_at_knots(X, model.phenotype_knots_), expected)


def test_default_phenotype_classifier_is_scored_without_scikit_learns_input_checks(fitted, contract_data):
    """The matrix route (no DataFrame, no per-call checks) applies to the default classifier and
    gives what the classifier's own pipeline gives."""
    from models.competing import _RELAPSE_TIME_FEATURE, _plain_predict_proba

    name, model, _ = fitted
    if name == BASELINE_NAME or model.phenotype_model_ is None:
        pytest.skip("no phenotype classifier")
    X = contract_data[0].iloc[:25][list(model.feature_names_in_)].astype(float)
    with_time = model._with_relapse_time(X, np.full(len(X), 42.0))
    assert _RELAPSE_TIME_FEATURE in with_time.columns
    fast = _plain_predict_proba(model.phenotype_model_, with_time.to_numpy(), list(with_time.columns))
    assert fast is not None
    np.testing.assert_allclose(fast, model.phenotype_model_.predict_proba(with_time), rtol=1e-12, atol=1e-14)


def test_phenotype_classifier_is_fitted_on_float64_even_from_float32_features(contract_data):
    """The precondition of models.competing.plain_transform (scikit-learn keeps the imputer's fill
    dtype private): the model fits its phenotype classifier on float64, so the fast path is exact."""
    from models.competing import plain_transform

    X, y = contract_data
    model = make_model("coxnet").fit(X.astype("float32"), y)
    rows = model._with_relapse_time(X.iloc[:20].astype(float), np.full(20, 42.0))
    steps = model.phenotype_model_[:-1]
    assert rows.isna().any().any()
    np.testing.assert_array_equal(plain_transform(steps, rows), steps.transform(rows))


def test_missing_values_at_prediction_are_handled(fitted, contract_data):
    _, model, _ = fitted
    X, _ = contract_data
    holes = X.iloc[:30].copy()
    holes.iloc[::2, :3] = np.nan
    assert np.isfinite(model.predict_cif(holes, HORIZONS).to_numpy()).all()


def test_missing_feature_column_is_a_clear_error(fitted, contract_data):
    _, model, _ = fitted
    X, _ = contract_data
    with pytest.raises(ModelInputError, match="missing column"):
        model.predict_cif(X.drop(columns=["bm_blasts_pct"]).iloc[:5], HORIZONS)


@pytest.mark.parametrize("bad, match", [({"time": -1.0}, "time"), ({"event": "relapse"}, "event")])
def test_bad_target_is_a_clear_error(contract_data, bad, match):
    X, y = contract_data
    y = y.copy()
    column, value = next(iter(bad.items()))
    y.loc[y.index[7], column] = value
    with pytest.raises(ModelInputError, match=f"row {y.index[7]}.*'{match}'"):
        make_model("xgb_cox").fit(X, y)


def _relapse_hazard_coefficients(model, names):
    pipeline = model.hazard_models_["relapse"]
    scale = pipeline.named_steps["scale"].scale_[: len(names)]
    return pipeline.named_steps["model"].coef_[: len(names), -1] / scale


def test_coxnet_recovers_known_hazard_ratios():
    cohort = simulate_known_cohort(n=4000, seed=5)
    model = make_model("coxnet", {"alphas": [0.05, 0.01, 0.002, 0.0005]}).fit(cohort.X, cohort.y)
    coefficients = _relapse_hazard_coefficients(model, list(cohort.X.columns))
    np.testing.assert_allclose(coefficients[:2], cohort.beta, atol=0.08)
    assert abs(coefficients[3]) < 0.05  # the pure-noise feature
    hsct = model.hazard_models_["hsct"]
    gamma = hsct.named_steps["model"].coef_[2, -1] / hsct.named_steps["scale"].scale_[2]
    assert gamma == pytest.approx(cohort.gamma, abs=0.12)


def test_incidences_recover_the_known_truth():
    cohort = simulate_known_cohort(n=4000, seed=6)
    model = make_model("coxnet", {"alphas": [0.05, 0.01, 0.002, 0.0005]}).fit(cohort.X, cohort.y)
    predicted = model.predict_cif(cohort.X, [365.0])
    truth = cohort.true_cif(365.0)
    for cause in CAUSES:
        error = np.mean(np.abs(predicted[cif_column(cause, 365)] - truth[cause]))
        assert error < 0.02, cause


def test_without_informative_features_incidences_equal_aalen_johansen():
    cohort = simulate_known_cohort(n=3000, seed=7, beta=(0.0, 0.0), gamma=0.0)
    noise = pd.DataFrame({"noise": np.random.default_rng(0).normal(size=3000)})
    model = make_model("coxnet", {"alphas": [5.0]}).fit(noise, cohort.y)
    assert "kept no feature" in model.fit_notes_["relapse"]
    predicted = model.predict_cif(noise.iloc[:1], [365.0]).iloc[0]
    status = np.select([cohort.y["event"].str.startswith("relapse"), cohort.y["event"] == "death",
                        cohort.y["event"] == "hsct"], [1, 2, 3], 0)
    expected = aalen_johansen(cohort.y["time"].to_numpy(), status, [365.0], n_causes=3)[:, 0]
    np.testing.assert_allclose([predicted[cif_column(c, 365)] for c in ("relapse", "death", "hsct")], expected, atol=0.01)


def test_unknown_phenotype_relapses_still_count_as_relapses():
    cohort = simulate_known_cohort(n=3000, seed=8)
    masked = cohort.y.copy()
    relapses = np.flatnonzero(masked["event"].str.startswith("relapse").to_numpy())
    masked.loc[masked.index[relapses[::4]], "event"] = "relapse_unknown"
    known = make_model("xgb_cox").fit(cohort.X, cohort.y).predict_cif(cohort.X, [365.0])
    partly_unknown = make_model("xgb_cox").fit(cohort.X, masked).predict_cif(cohort.X, [365.0])
    column = cif_column("relapse", 365)
    np.testing.assert_allclose(partly_unknown[column], known[column], atol=1e-9)


def test_hsct_as_censoring_gives_zero_hsct_incidence():
    cohort = simulate_known_cohort(n=1000, seed=9)
    censored = cohort.y.assign(event=cohort.y["event"].replace({"hsct": "none"}))
    model = make_model("xgb_cox").fit(cohort.X, censored)
    assert model.fit_notes_["hsct"].startswith("no events")
    assert (model.predict_cif(cohort.X.iloc[:20], HORIZONS)[[cif_column("hsct", h) for h in HORIZONS]] == 0).all().all()


def _plain_pipeline_data(seed: int = 3) -> pd.DataFrame:
    """Features with missing values in some columns, one column never observed, and extreme values."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(300, 6)) * [1.0, 10.0, 1e-3, 1e6, 1.0, 1.0], columns=[f"f{i}" for i in range(6)])
    X.iloc[rng.random(300) < 0.3, 0] = np.nan
    X.iloc[rng.random(300) < 0.1, 3] = np.nan
    X["f5"] = np.nan
    return X


@pytest.mark.parametrize(
    "steps",
    [
        lambda: [SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True), StandardScaler()],
        lambda: [SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler(with_mean=False)],
        lambda: [SimpleImputer(strategy="most_frequent", add_indicator=True, keep_empty_features=True)],
        lambda: [SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(with_std=False)],
    ],
    ids=["default phenotype steps", "mean, no centring", "most frequent, indicators", "median, no scaling"],
)
def test_plain_transform_is_the_pipeline_transform_bit_for_bit(steps):
    from models.competing import plain_transform

    X = _plain_pipeline_data()
    pipeline = make_pipeline(*steps()).fit(X)
    new = _plain_pipeline_data(seed=4).iloc[:40]
    new.iloc[0] = np.nan
    fast = plain_transform(pipeline, new)
    assert fast is not None
    np.testing.assert_array_equal(fast, pipeline.transform(new))
    np.testing.assert_array_equal(plain_transform(pipeline, new.iloc[[7]]), pipeline.transform(new.iloc[[7]]))


def test_plain_transform_declines_what_it_does_not_handle():
    from sklearn.preprocessing import MinMaxScaler

    from models.competing import plain_transform

    X = _plain_pipeline_data()
    default = make_pipeline(SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                            StandardScaler()).fit(X)
    new = X.iloc[:5].copy()
    assert plain_transform(default, new.assign(f1=[np.inf, 0, 0, 0, 0])) is None  # scikit-learn raises
    assert plain_transform(default, new[list(reversed(new.columns))]) is None
    assert plain_transform(default, new.astype({"f2": "float32"})) is None
    assert plain_transform(make_pipeline(SimpleImputer(keep_empty_features=True), MinMaxScaler()).fit(X), new) is None
    dropping = make_pipeline(SimpleImputer(strategy="median")).fit(X)  # drops the never-observed column
    assert plain_transform(dropping, new) is None
    observed = X.drop(columns="f5")
    sentinel = make_pipeline(SimpleImputer(missing_values=-1.0)).fit(observed.fillna(-1.0))
    assert plain_transform(sentinel, new.drop(columns="f5").fillna(-1.0)) is None


# --- scikit-learn and scikit-survival conventions ---------------------------------------------------
def _surv_target(y: pd.DataFrame) -> np.ndarray:
    """The target as scikit-survival writes it: any relapse = event, everything else censored."""
    return Surv.from_arrays(y["event"].str.startswith("relapse").to_numpy(), y["time"].to_numpy(dtype=float))


def test_surv_targets_and_arrays_fit_like_frames(contract_data):
    X, y = contract_data
    relapse_only = y.assign(event=np.where(y["event"].str.startswith("relapse"), "relapse_unknown", "none"))
    by_frame = make_model("coxnet").fit(X, relapse_only)
    by_surv = make_model("coxnet").fit(X, _surv_target(y))
    by_array = make_model("coxnet").fit(X.to_numpy(), _surv_target(y))
    assert not hasattr(by_array, "feature_names_in_") and by_array.n_features_in_ == X.shape[1]
    expected = by_frame.predict_cif(X.iloc[:50], HORIZONS)
    pd.testing.assert_frame_equal(by_surv.predict_cif(X.iloc[:50], HORIZONS), expected, check_exact=True)
    from_array = by_array.predict_cif(X.iloc[:50].to_numpy(), HORIZONS)
    np.testing.assert_allclose(from_array.to_numpy(), expected.to_numpy(), rtol=1e-12, atol=1e-15)
    assert list(from_array.columns) == list(expected.columns) and from_array.index.equals(pd.RangeIndex(50))
    with pytest.warns(UserWarning, match="does not have valid feature names"):  # scikit-learn's convention
        by_position = by_frame.predict(X.to_numpy())
    np.testing.assert_array_equal(by_position, by_frame.predict(X))
    with pytest.raises(ValueError, match="X has 3 features, but CauseSpecificHazardsModel is expecting"):
        by_array.predict(X.to_numpy()[:, :3])
    with pytest.raises(ModelInputError, match="structured"):
        make_model("coxnet").fit(X, y["time"].to_numpy())


def test_score_is_the_evaluations_harrell_c_and_scikit_survivals_without_competing_events(contract_data):
    X, y = contract_data
    model = make_model("coxnet").fit(X, y)
    risk = model.predict(X)
    outcome = Outcome.from_events(y["time"], y["event"])
    assert model.score(X, y) == harrell_c(outcome, risk, tau=model.risk_horizon_days)
    assert 0.6 < model.score(X, y) < 1.0  # the known cohort's relapse hazard depends on x0, x1
    surv = _surv_target(y)
    before_horizon = surv["event"] & (surv["time"] < model.risk_horizon_days)
    expected = concordance_index_censored(before_horizon, surv["time"], risk)[0]
    assert model.score(X, surv) == pytest.approx(expected, abs=1e-12)


class _ChecksTargetAsSurvival(CauseSpecificHazardsModel):
    """The estimator with scikit-learn's generated targets as survival targets, for the common checks.

    The checks fit with a 1-D target (class labels or regression values), which no survival
    estimator can take; each is mapped to a ``Surv`` array (time = 1 + the value's rank in days,
    every other row an event), so the checks exercise the estimator itself on the data they make.
    """

    def fit(self, X, y):
        return super().fit(X, _checks_target(y))

    def score(self, X, y):
        return super().score(X, _checks_target(y))


def _checks_target(y):
    if y is None:
        return None
    values = np.real(np.asarray(y)).astype(float).ravel()  # complex y: check_complex_data tests X's refusal
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    return Surv.from_arrays(np.arange(values.size) % 2 == 0, 1.0 + ranks)


_EXPECTED_FAILED_CHECKS: dict[str, str] = {}


@parametrize_with_checks(
    [_ChecksTargetAsSurvival(make_survival_estimator("coxnet", {"alphas": [0.1]}), time_resolution_days=1.0)],
    expected_failed_checks=lambda estimator: _EXPECTED_FAILED_CHECKS,
)
def test_scikit_learn_common_checks(estimator, check):
    check(estimator)


def test_a_phenotype_share_can_rise_and_fall_with_the_relapse_day_since_infusion():
    """Lineage switch happens between days 60 and 180 after infusion only (whatever the landmark).
    With the relapse day since infusion (landmark day + time) in a linear spline, the share is high
    at day 120 from landmark 0, low at day 400, and low two weeks after a day-182 landmark; with
    time since the landmark alone it could only rise or fall."""
    rng = np.random.default_rng(5)
    n = 4000
    day = rng.uniform(10.0, 700.0, n)
    window = (day > 60.0) & (day < 180.0)
    switch = rng.random(n) < np.where(window, 0.6, 0.01)
    phenotype = np.where(switch, "relapse_lineage_switch", np.where(rng.random(n) < 0.5, "relapse_CD19_pos",
                                                                     "relapse_CD19_neg"))
    later = day > 182.0
    X = pd.DataFrame({"landmark_day": np.concatenate([np.zeros(n), np.full(later.sum(), 182.0)]),
                      "noise": rng.normal(size=n + later.sum())})
    y = pd.DataFrame({"time": np.concatenate([day, day[later] - 182.0]),
                      "event": np.concatenate([phenotype, phenotype[later]])})
    shares = {}
    for landmark_column in ("landmark_day", None):
        model = make_model("xgb_cox", {"n_estimators": 20}).set_params(landmark_column=landmark_column).fit(X, y)
        rows = pd.DataFrame({"landmark_day": [0.0, 0.0, 182.0], "noise": [0.0, 0.0, 0.0]})
        grid = model.time_grid_
        by_row = model.phenotype_shares(rows)[:, PHENOTYPE_CAUSES.index("relapse_lineage_switch")]
        shares[landmark_column] = [np.interp(t, grid, by_row[i]) for i, t in enumerate((120.0, 400.0, 14.0))]
    at_120, at_400, after_182 = shares["landmark_day"]
    assert at_120 > 0.25 and at_400 < 0.05 and after_182 < 0.05, shares["landmark_day"]
    assert not (shares[None][0] > 0.25 and shares[None][1] < 0.05), shares[None]  # monotone in time alone


def test_a_model_pickled_before_the_infusion_day_features_still_loads_and_predicts_as_it_did():
    """Registered models are pickles: one saved before ``landmark_column`` existed has a phenotype
    model fitted on the time since the landmark only, and must keep predicting exactly that."""
    import pickle

    cohort = simulate_known_cohort(n=800, seed=12)
    fitted = make_model("xgb_cox", {"n_estimators": 20}).set_params(landmark_column=None).fit(cohort.X, cohort.y)
    old_state = {k: v for k, v in fitted.__getstate__().items() if k not in ("landmark_column", "relapse_day_knots_")}
    old = CauseSpecificHazardsModel.__new__(CauseSpecificHazardsModel)
    old.__setstate__(pickle.loads(pickle.dumps(old_state)))
    assert "landmark_day" in cohort.X.columns and old.landmark_column is None
    pd.testing.assert_frame_equal(old.predict_cif(cohort.X.iloc[:50], HORIZONS),
                                  fitted.predict_cif(cohort.X.iloc[:50], HORIZONS))


def _early_lineage_switch_cohort(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Two relapse processes with their own clocks: in the ``kmt2a`` group (20%) a lineage switch
    40-150 days after the landmark in 40% of patients; in everybody a CD19 relapse at a log-normal
    time (median 400 days). Returns X, y and each row's true 365-day lineage-switch incidence."""
    rng = np.random.default_rng(seed)
    kmt2a = rng.random(n) < 0.2
    X = pd.DataFrame({"kmt2a": kmt2a.astype(float), "noise": rng.normal(size=n), "landmark_day": np.zeros(n)})
    switch_day = np.where(kmt2a & (rng.random(n) < 0.4), rng.uniform(40.0, 150.0, n), np.inf)
    cd19_day = np.exp(rng.normal(np.log(400.0), 0.6, n))
    death_day = rng.exponential(3000.0, n)
    censor = rng.uniform(300.0, 1200.0, n)
    first = np.minimum.reduce([switch_day, cd19_day, death_day])
    cd19 = np.where(rng.random(n) < 0.5, "relapse_CD19_pos", "relapse_CD19_neg")
    cause = np.where(first == switch_day, "relapse_lineage_switch", np.where(first == cd19_day, cd19, "death"))
    time = np.minimum.reduce([first, censor, np.full(n, 730.0)])
    event = np.where(first <= np.minimum(censor, 730.0), cause, "none")
    return X, pd.DataFrame({"time": time, "event": event}), kmt2a


def test_a_lineage_switch_hazard_of_its_own_keeps_an_early_subgroups_lineage_switch():
    """Lineage switch early in one group, CD19 relapse late in everybody: inside one log-normal
    relapse hazard the group's relapses are spread late and its lineage switch (a share that is
    high only early) comes out too low; with a lineage-switch hazard of its own it does not. The
    truth: the Aalen-Johansen incidence in the group of a large independent cohort."""
    X, y, _ = _early_lineage_switch_cohort(4000, seed=21)
    X_test, y_test, group = _early_lineage_switch_cohort(20000, seed=22)
    codes = {"relapse_CD19_pos": 1, "relapse_CD19_neg": 2, "relapse_lineage_switch": 3, "death": 4}
    status = y_test["event"].map(codes).fillna(0).astype(int).to_numpy()[group]
    truth = aalen_johansen(y_test["time"].to_numpy()[group], status, [365.0], n_causes=4)[2, 0]
    column = cif_column("relapse_lineage_switch", 365)
    errors = {}
    for name, params in (("share", {}), ("own hazard", {LINEAGE_SWITCH_PARAM: "xgb_pem"})):
        model = make_model("xgb_aft", {"n_estimators": 100, **params}).fit(X, y)
        predicted = model.predict_cif(X_test[group], [365.0])
        assert set(model.hazard_models_) == ({"relapse", "death", "hsct", "lineage_switch"} if params
                                             else {"relapse", "death", "hsct"})
        curves = model.predict_cif(X_test.iloc[:200], [365.0])
        parts = curves[[cif_column(c, 365) for c in CAUSES]].sum(axis=1) + curves[event_free_column(365)]
        np.testing.assert_allclose(parts, 1.0, atol=1e-9)
        np.testing.assert_allclose(curves[cif_column("relapse", 365)],
                                   curves[[cif_column(c, 365) for c in PHENOTYPE_CAUSES]].sum(axis=1), atol=1e-12)
        errors[name] = abs(predicted[column].mean() / truth - 1.0)
    assert errors["own hazard"] < 0.1 and errors["share"] > 2 * errors["own hazard"], errors
