"""SHAP: exact tree values for XGBoost, additive permutation values for the others, top factors, plots."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb
from matplotlib.figure import Figure

from models.base import ModelInputError, relapse_column
from models.explain import (
    explain_relapse_risk,
    global_importance,
    plot_beeswarm,
    plot_importance_bar,
    plot_waterfall,
    top_factors,
)
from models.factory import make_model


@pytest.fixture(scope="module")
def xgb_model(known_cohort):
    return make_model("xgb_cox").fit(known_cohort.X, known_cohort.y)


@pytest.fixture(scope="module")
def coxnet_model(known_cohort):
    return make_model("coxnet").fit(known_cohort.X, known_cohort.y)


def test_tree_values_add_up_to_the_relapse_booster_margin(xgb_model, known_cohort):
    explanation = explain_relapse_risk(xgb_model, known_cohort.X, max_rows=40)
    assert explanation.method == "tree" and explanation.output == "relapse log relative hazard"
    booster = xgb_model.relapse_hazard_model_.steps[-1][1].booster_
    margin = booster.predict(xgb.DMatrix(explanation.data, missing=np.nan), output_margin=True)
    np.testing.assert_allclose(explanation.values.sum(axis=1) + explanation.base_value, margin, atol=1e-4)


def test_aft_tree_values_are_signed_as_risk(known_cohort):
    model = make_model("xgb_aft", {"n_estimators": 50}).fit(known_cohort.X, known_cohort.y)
    explanation = explain_relapse_risk(model, known_cohort.X, max_rows=300)
    importance = global_importance(explanation).set_index("feature")["mean_abs_shap"]
    x0 = explanation.data["x0"].to_numpy()
    # x0 raises the relapse hazard (beta = 0.7): its contributions must rise with it
    assert np.corrcoef(x0, explanation.values[:, 0])[0, 1] > 0.8
    assert importance["x0"] > importance["noise"]


def test_permutation_values_add_up_to_the_relapse_incidence(coxnet_model, known_cohort):
    explanation = explain_relapse_risk(coxnet_model, known_cohort.X, horizon_days=365.0, n_background=30, max_rows=15)
    assert explanation.method == "permutation" and explanation.output == relapse_column(365.0)
    predicted = coxnet_model.predict_cif(explanation.data, [365.0])[relapse_column(365.0)].to_numpy()
    np.testing.assert_allclose(explanation.values.sum(axis=1) + explanation.base_value, predicted, atol=1e-9)
    importance = global_importance(explanation)
    assert importance["feature"].iloc[0] in ("x0", "x1")


def test_rule_is_explained_model_agnostically(known_cohort):
    X = known_cohort.X.assign(bm_blasts_pct=np.where(known_cohort.X["x0"] > 0, 10.0, 1.0),
                              blinatumomab_nonresponder=0.0, active_non_cns_emd=0.0, kmt2a_rearranged=0.0)
    rule = make_model("rule").fit(X, known_cohort.y)
    explanation = explain_relapse_risk(rule, X, n_background=20, max_rows=10)
    used = {"bm_blasts_pct", "landmark_day"}
    unused = [i for i, name in enumerate(explanation.feature_names) if name not in used]
    np.testing.assert_allclose(explanation.values[:, unused], 0.0, atol=1e-12)


def test_top_factors_are_the_largest_contributions(coxnet_model, known_cohort):
    rows = known_cohort.X.iloc[:4]
    factors = top_factors(coxnet_model, rows, k=3, n_background=20)
    assert list(factors.columns) == ["row", "rank", "feature", "value", "contribution", "output"]
    assert len(factors) == 12 and factors["row"].unique().tolist() == rows.index.tolist()
    for _, group in factors.groupby("row"):
        magnitudes = group.sort_values("rank")["contribution"].abs().to_numpy()
        assert np.all(np.diff(magnitudes) <= 1e-15)
    first = factors.iloc[0]
    assert first["value"] == rows.loc[first["row"], first["feature"]]


def test_single_patient_is_explained_against_the_training_background(coxnet_model, known_cohort):
    factors = top_factors(coxnet_model, known_cohort.X.iloc[[7]], k=2, n_background=20)
    assert np.abs(factors["contribution"]).max() > 1e-4


def test_tree_method_needs_xgboost(coxnet_model, known_cohort):
    with pytest.raises(ModelInputError, match="XGBoost"):
        explain_relapse_risk(coxnet_model, known_cohort.X, method="tree")


def test_plots_are_figures(xgb_model, known_cohort):
    explanation = explain_relapse_risk(xgb_model, known_cohort.X, max_rows=30)
    for figure in (plot_importance_bar(explanation), plot_beeswarm(explanation), plot_waterfall(explanation, 2)):
        assert isinstance(figure, Figure)
        assert figure.axes and figure.axes[0].get_yticklabels()


def test_importance_bars_are_mean_absolute_shap_largest_on_top(xgb_model, known_cohort):
    explanation = explain_relapse_risk(xgb_model, known_cohort.X, max_rows=30)
    axes = plot_importance_bar(explanation, max_features=3).axes[0]
    top_down = sorted(axes.patches, key=lambda bar: -bar.get_y())
    expected = global_importance(explanation).head(3)
    np.testing.assert_allclose([bar.get_width() for bar in top_down], expected["mean_abs_shap"])
    labels = sorted(axes.get_yticklabels(), key=lambda label: -label.get_position()[1])
    assert [label.get_text() for label in labels] == list(expected["feature"])


def test_with_a_lineage_switch_hazard_of_its_own_the_tree_output_says_which_relapses_it_explains(known_cohort):
    from models.explain import native_tree_explanation
    from models.factory import LINEAGE_SWITCH_PARAM

    model = make_model("xgb_cox", {"n_estimators": 20, LINEAGE_SWITCH_PARAM: "xgb_pem"}).fit(known_cohort.X, known_cohort.y)
    rows = known_cohort.X.iloc[:5]
    for explanation in (explain_relapse_risk(model, rows), native_tree_explanation(model, rows)):
        assert explanation.output == "relapse log relative hazard (relapses other than lineage switch)"
