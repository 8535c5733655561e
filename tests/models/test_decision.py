"""Tests of models.decision: net benefit of HSCT policies with competing events, bootstrap, plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.base import ModelInputError, relapse_column
from models.decision import (
    DECISION_COLUMNS,
    TREAT_ALL,
    TREAT_NONE,
    decision_curves,
    net_benefit,
    net_benefit_at,
    plot_decision_curves,
    relapse_incidence_by_threshold,
)
from models.nonparametric import aalen_johansen

H = 365.0


def _targets(time, event, landmark=91.0, patients=None) -> pd.DataFrame:
    n = len(time)
    return pd.DataFrame({"patient_id": patients if patients is not None else [f"P{i}" for i in range(n)],
                         "landmark_day": landmark, "time": np.asarray(time, float), "event": list(event)})


def _prediction(risk, index) -> pd.DataFrame:
    return pd.DataFrame({relapse_column(H): np.asarray(risk, float)}, index=index)


def test_incidence_by_threshold_is_aalen_johansen_of_each_flagged_subset():
    rng = np.random.default_rng(3)
    n = 400
    time = np.minimum(np.round(rng.exponential(250, n)), 730.0)
    status = rng.integers(0, 3, n)
    risk = rng.random(n)
    thresholds = np.array([0.1, 0.35, 0.8])
    level = np.searchsorted(thresholds, risk)
    multiplicities = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1 / n), size=4)])
    incidence, share = relapse_incidence_by_threshold(time, status, H, level, thresholds.size, multiplicities)
    for r in range(multiplicities.shape[0]):
        for k, threshold in enumerate(thresholds):
            weights = multiplicities[r] * (risk > threshold)
            expected = aalen_johansen(time, status, [H], n_causes=2, weights=weights)[0, 0]
            assert incidence[r, k] == pytest.approx(expected, abs=1e-12)
            assert share[r, k] == pytest.approx(weights.sum() / multiplicities[r].sum())


def test_net_benefit_by_hand_without_censoring():
    # 10 patients followed past the horizon; the model flags 4, of whom 3 relapse.
    event = ["relapse_CD19_pos", "relapse_CD19_neg", "relapse_lineage_switch", "none"] + ["none"] * 5 + ["relapse_CD19_pos"]
    time = [100, 200, 300, H, H, H, H, H, H, 50]
    targets = _targets(time, event)
    risk = [0.9, 0.8, 0.7, 0.6] + [0.1] * 6
    table = decision_curves(targets, {"model": _prediction(risk, targets.index)}, [H], thresholds=[0.25, 0.5],
                            n_bootstrap=0)
    at = net_benefit_at(table, 91, H, 0.25)
    # P(flagged) = 0.4, F = 3/4: 0.4 * (0.75 - 0.25 * 0.25 / 0.75)
    assert at.loc["model", "net_benefit"] == pytest.approx(0.4 * (0.75 - 0.25 / 3))
    assert at.loc["model", "flagged_share"] == pytest.approx(0.4)
    # treat-all: F = 4/10
    assert at.loc[TREAT_ALL, "net_benefit"] == pytest.approx(0.4 - 0.6 / 3)
    assert at.loc[TREAT_NONE, "net_benefit"] == 0.0
    assert np.isnan(at.loc["model", "ci_low"])  # no bootstrap, no interval


def test_hsct_and_death_stay_competing_events_not_censorings():
    # Flagged: HSCT on day 10, death on day 20, relapse on day 100, one event-free to the horizon.
    targets = _targets([10, 20, 100, H, H], ["hsct", "death", "relapse_CD19_pos", "none", "none"])
    table = decision_curves(targets, {"model": _prediction([0.9, 0.9, 0.9, 0.9, 0.0], targets.index)}, [H],
                            thresholds=[0.5], n_bootstrap=0)
    at = net_benefit_at(table, 91, H, 0.5)
    # Competing: F = 1/4 (the transplanted and the dead did not relapse by h). Censoring them would give 1/2.
    assert at.loc["model", "net_benefit"] == pytest.approx(0.8 * (0.25 - 0.75 * 1.0))


def test_censoring_enters_through_the_at_risk_sets():
    # One flagged patient censored on day 50 (before the relapse of another): Aalen-Johansen, not a count.
    targets = _targets([50, 100, H], ["none", "relapse_CD19_pos", "none"])
    table = decision_curves(targets, {"model": _prediction([0.9, 0.9, 0.9], targets.index)}, [H],
                            thresholds=[0.2], n_bootstrap=0)
    incidence = aalen_johansen(np.array([50, 100, H]), np.array([0, 1, 0]), [H])[0, 0]
    assert incidence == pytest.approx(0.5)
    assert net_benefit_at(table, 91, H, 0.2).loc["model", "net_benefit"] == pytest.approx(incidence - 0.5 * 0.25)


def test_a_perfect_predictor_gains_the_whole_incidence_at_every_threshold():
    rng = np.random.default_rng(0)
    relapse = rng.random(300) < 0.3
    targets = _targets(np.where(relapse, rng.uniform(10, 300, 300), H), np.where(relapse, "relapse_CD19_pos", "none"))
    table = decision_curves(targets, {"perfect": _prediction(relapse.astype(float), targets.index)}, [H],
                            n_bootstrap=20)
    rows = table[(table["source"] == "perfect") & (table["kind"] == "estimate")]
    assert np.allclose(rows["net_benefit"], relapse.mean())
    assert (rows["ci_low"] <= rows["net_benefit"]).all() and (rows["net_benefit"] <= rows["ci_high"]).all()


def test_fixed_policy_flags_the_same_rows_at_every_threshold_and_differences_are_paired():
    rng = np.random.default_rng(1)
    n = 200
    targets = _targets(rng.uniform(5, H, n), rng.choice(["none", "relapse_CD19_pos", "hsct"], n),
                       patients=[f"P{i // 2}" for i in range(n)])
    flags = rng.random(n) < 0.4
    predictions = {"model": _prediction(rng.random(n), targets.index)}
    table = decision_curves(targets, predictions, [H], fixed_policies={"rule": flags}, n_bootstrap=30,
                            reference="rule")
    assert list(table.columns) == list(DECISION_COLUMNS)
    rule = table[(table["source"] == "rule") & (table["kind"] == "estimate")]
    assert np.allclose(rule["flagged_share"], flags.mean())
    estimates = table[table["kind"] == "estimate"].set_index(["threshold", "source"])["net_benefit"]
    difference = table[table["source"] == "model - rule"].set_index("threshold")["net_benefit"]
    for threshold, value in difference.items():
        assert value == pytest.approx(estimates[(threshold, "model")] - estimates[(threshold, "rule")])
    assert set(table["source"]) == {"model", "rule", TREAT_ALL, TREAT_NONE, "model - rule"}


def test_rows_without_a_prediction_are_left_out_for_every_source():
    targets = _targets([100, 200, H, H], ["relapse_CD19_pos", "none", "none", "relapse_CD19_neg"])
    oracle = _prediction([0.9, np.nan, 0.1, 0.2], targets.index)
    table = decision_curves(targets, {"model": _prediction([0.9, 0.8, 0.1, 0.2], targets.index), "oracle": oracle},
                            [H], thresholds=[0.5], n_bootstrap=0)
    assert (table["n_rows"] == 3).all()
    assert net_benefit_at(table, 91, H, 0.5).loc[TREAT_ALL, "flagged_share"] == 1.0


def test_one_curve_per_landmark_and_horizon():
    targets = pd.concat([_targets([100, H], ["relapse_CD19_pos", "none"], landmark=0.0),
                         _targets([100, H], ["none", "none"], landmark=91.0)], ignore_index=True)
    risks = pd.DataFrame({relapse_column(182.0): [0.3, 0.1, 0.3, 0.1], relapse_column(H): [0.5, 0.2, 0.5, 0.2]},
                         index=targets.index)
    table = decision_curves(targets, {"model": risks}, [182.0, H], thresholds=[0.1, 0.4], n_bootstrap=0)
    assert set(zip(table["landmark_day"], table["horizon_days"])) == {(0.0, 182.0), (0.0, H), (91.0, 182.0), (91.0, H)}
    assert net_benefit_at(table, 91, H, 0.1).loc[TREAT_ALL, "net_benefit"] < 0  # nobody relapses at day 91


@pytest.mark.parametrize("thresholds", [[0.3, 0.2], [0.0, 0.5], [0.5, 1.0], []])
def test_bad_thresholds_are_refused(thresholds):
    targets = _targets([100], ["none"])
    with pytest.raises(ModelInputError, match="threshold"):
        decision_curves(targets, {"m": _prediction([0.5], targets.index)}, [H], thresholds=thresholds, n_bootstrap=0)


def test_unknown_event_is_refused():
    targets = _targets([100], ["relapsed"])
    with pytest.raises(ModelInputError, match="unknown event"):
        decision_curves(targets, {"m": _prediction([0.5], targets.index)}, [H], n_bootstrap=0)


def test_net_benefit_is_zero_when_nobody_is_flagged():
    assert net_benefit(np.array([0.0]), np.array([0.0]), np.array([0.3]))[0] == 0.0


def test_plot_has_a_panel_per_landmark_and_the_reference_policies():
    targets = pd.concat([_targets([100, H, 50], ["relapse_CD19_pos", "none", "hsct"], landmark=day)
                         for day in (0.0, 91.0)], ignore_index=True)
    risk = _prediction([0.6, 0.2, 0.4] * 2, targets.index)
    table = decision_curves(targets, {"model": risk}, [H], fixed_policies={"rule": np.array([1, 0, 1] * 2, bool)},
                            n_bootstrap=5)
    figure = plot_decision_curves(table, H, sources=["model", "rule"], bands=["model"])
    panels = [axes for axes in figure.axes if axes.get_visible()]
    assert len(panels) == 2
    assert {line.get_label() for line in panels[0].get_lines()} == {"model", "rule", "treat all", "treat none"}
    with pytest.raises(ModelInputError, match="no rows at horizon"):
        plot_decision_curves(table, 182.0)
