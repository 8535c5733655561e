"""The clinicians' rule: hand-worked risk groups, and curves equal to Aalen-Johansen per stratum."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import AalenJohansenFitter

from models.base import ModelInputError, cif_column
from models.rule import HIGH_RISK, STANDARD_RISK, ClinicianRule


def _row(**values) -> dict:
    base = {"bm_blasts_pct": 1.0, "blinatumomab_nonresponder": 0.0, "active_non_cns_emd": 0.0,
            "kmt2a_rearranged": 0.0, "bm_ngs_mrd_detectable_since_infusion": np.nan,
            "bca_lost_by_landmark": np.nan, "bca_loss_day_upper": np.nan, "landmark_day": 28.0}
    return {**base, **values}


@pytest.mark.parametrize("values, group", [
    ({}, STANDARD_RISK),
    ({"bm_blasts_pct": 5.0}, HIGH_RISK),
    ({"bm_blasts_pct": 4.9}, STANDARD_RISK),
    ({"bm_blasts_pct": np.nan}, STANDARD_RISK),
    ({"blinatumomab_nonresponder": 1.0}, HIGH_RISK),
    ({"active_non_cns_emd": 1.0}, HIGH_RISK),
    ({"kmt2a_rearranged": 1.0}, HIGH_RISK),
    ({"kmt2a_rearranged": np.nan}, STANDARD_RISK),
    ({"bm_ngs_mrd_detectable_since_infusion": 1.0}, HIGH_RISK),
    ({"bm_ngs_mrd_detectable_since_infusion": 1.0, "landmark_day": 0.0}, STANDARD_RISK),
    ({"bca_lost_by_landmark": 1.0, "bca_loss_day_upper": 150.0, "landmark_day": 182.0}, HIGH_RISK),
    ({"bca_lost_by_landmark": 1.0, "bca_loss_day_upper": 200.0, "landmark_day": 365.0}, STANDARD_RISK),
    ({"bca_lost_by_landmark": 0.0, "landmark_day": 91.0}, STANDARD_RISK),
])
def test_risk_group_hand_worked(values, group):
    assert ClinicianRule().risk_group(pd.DataFrame([_row(**values)]))[0] == group


def test_optional_columns_may_be_absent_but_baseline_ones_may_not():
    rows = pd.DataFrame([_row(bm_blasts_pct=10.0)]).drop(columns=["bca_lost_by_landmark", "bca_loss_day_upper"])
    assert ClinicianRule().risk_group(rows)[0] == HIGH_RISK
    with pytest.raises(ModelInputError, match="kmt2a_rearranged"):
        ClinicianRule().risk_group(rows.drop(columns=["kmt2a_rearranged"]))


@pytest.fixture(scope="module")
def rule_data():
    rng = np.random.default_rng(0)
    n = 1200
    X = pd.DataFrame([_row() for _ in range(n)])
    X["bm_blasts_pct"] = np.where(rng.random(n) < 0.3, 20.0, 0.5)
    X["landmark_day"] = rng.choice([0.0, 28.0], n)
    high = X["bm_blasts_pct"].to_numpy() >= 5
    relapse = rng.exponential(np.where(high, 300.0, 1200.0))
    death = rng.exponential(4000.0, n)
    censor = rng.uniform(100.0, 900.0, n)
    time = np.minimum.reduce([relapse, death, censor])
    event = np.where(time == relapse, "relapse_CD19_neg", np.where(time == death, "death", "none"))
    return X, pd.DataFrame({"time": time, "event": event})


def test_incidence_equals_aalen_johansen_of_its_stratum(rule_data):
    X, y = rule_data
    rule = ClinicianRule(time_resolution_days=1.0).fit(X, y)
    stratum = (X["bm_blasts_pct"] >= 5) & (X["landmark_day"] == 28.0)
    status = np.select([y["event"] == "relapse_CD19_neg", y["event"] == "death"], [1, 2], 0)[stratum.to_numpy()]
    fitter = AalenJohansenFitter(calculate_variance=False).fit(y["time"][stratum], pd.Series(status), event_of_interest=1)
    reference = fitter.cumulative_density_.iloc[:, 0]
    predicted = rule.predict_cif(X[stratum].iloc[:1], [365.0])
    expected = reference[reference.index <= 365.0].iloc[-1]
    assert predicted[cif_column("relapse_CD19_neg", 365)].iloc[0] == pytest.approx(expected, abs=0.003)
    assert predicted[cif_column("relapse", 365)].iloc[0] == pytest.approx(expected, abs=0.003)


def test_small_strata_fall_back_to_the_group(rule_data):
    X, y = rule_data
    rule = ClinicianRule(min_stratum_rows=10_000).fit(X, y)
    assert rule.stratum_curves_ == {}
    day0, day28 = X.iloc[[0]].assign(landmark_day=0.0), X.iloc[[0]].assign(landmark_day=28.0)
    np.testing.assert_allclose(rule.predict_cif(day0, [365.0]), rule.predict_cif(day28, [365.0]))


def test_unknown_phenotype_relapses_are_split_over_the_known_phenotypes(rule_data):
    X, y = rule_data
    masked = y.copy()
    relapses = np.flatnonzero(masked["event"].eq("relapse_CD19_neg").to_numpy())
    masked.loc[masked.index[relapses[::3]], "event"] = "relapse_unknown"
    full, partial = ClinicianRule().fit(X, y), ClinicianRule().fit(X, masked)
    column = cif_column("relapse", 365)
    np.testing.assert_allclose(partial.predict_cif(X.iloc[:20], [365.0])[column],
                               full.predict_cif(X.iloc[:20], [365.0])[column], atol=1e-12)


def test_predict_returns_the_group(rule_data):
    X, y = rule_data
    rule = ClinicianRule().fit(X, y)
    np.testing.assert_array_equal(rule.predict(X), (X["bm_blasts_pct"] >= 5).astype(float))
