"""Side-by-side evaluation: same rows for every source, landmark means, paired differences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.base import CAUSES, ModelInputError, cif_column, event_free_column, relapse_column
from models.evaluation import (
    ALL_LANDMARKS,
    EvaluationSettings,
    best_source,
    calibration_summary,
    calibration_thresholds,
    evaluate_sources,
    is_summary_metric,
    parse_summary_key,
    select_candidate,
    summary_by_source,
)
from models.metrics import Outcome, uno_c
from tests.models.conftest import simulate_known_cohort

HORIZONS = (182.0, 365.0)


def _frame(cohort, index, blur: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """predict_cif layout from the true incidences, optionally blurred (a weaker source)."""
    rng = np.random.default_rng(seed)
    columns = {}
    for h in HORIZONS:
        truth = cohort.true_cif(h)
        factor = np.exp(blur * rng.normal(size=len(index)))
        parts = {cause: np.clip(truth[cause] * factor, 0, 0.3) for cause in CAUSES}
        columns.update({cif_column(cause, h): parts[cause] for cause in CAUSES})
        columns[relapse_column(h)] = sum(parts[c] for c in CAUSES[:3])
        columns[event_free_column(h)] = 1.0 - sum(parts.values())
    return pd.DataFrame(columns, index=index)


@pytest.fixture(scope="module")
def evaluation():
    cohort = simulate_known_cohort(n=2000, seed=21)
    targets = pd.concat([cohort.X[["landmark_day"]], cohort.y], axis=1)
    targets.insert(0, "patient_id", cohort.patient_id)
    sources = {"truth": _frame(cohort, targets.index), "copy": _frame(cohort, targets.index),
               "weak": _frame(cohort, targets.index, blur=1.5, seed=1)}
    sources["truth"].iloc[:5] = np.nan  # these rows must be dropped for every source
    settings = EvaluationSettings(horizons_days=HORIZONS, endpoints=("relapse", "relapse_CD19_pos"), n_bootstrap=40,
                                  bootstrap_endpoints=("relapse",), reference="weak", random_state=0)
    return targets, sources, evaluate_sources(targets, sources, settings)


def _value(metrics, **selection):
    rows = metrics
    for column, value in selection.items():
        rows = rows[rows[column] == value]
    assert len(rows) == 1, selection
    return rows.iloc[0]


def test_rows_without_a_prediction_are_dropped_for_every_source(evaluation):
    targets, sources, result = evaluation
    assert result.n_rows_dropped == 5 and result.n_rows_scored == len(targets) - 5
    kept = targets.iloc[5:]
    rows = (kept["landmark_day"] == 28.0).to_numpy()
    outcome = Outcome.from_events(kept["time"][rows], kept["event"][rows])
    expected = uno_c(outcome, sources["weak"].iloc[5:][relapse_column(365)][rows].to_numpy(), 365.0)
    row = _value(result.metrics, landmark_day=28.0, endpoint="relapse", horizon_days=365.0, metric="uno_c",
                 source="weak", kind="estimate")
    assert row["value"] == pytest.approx(expected)
    assert row["n_rows"] == rows.sum()


def test_all_landmarks_is_the_mean_over_landmarks(evaluation):
    _, _, result = evaluation
    metrics = result.metrics
    per_landmark = metrics[(metrics["metric"] == "brier") & (metrics["source"] == "truth") & (metrics["endpoint"] == "relapse")
                           & (metrics["horizon_days"] == 182.0) & (metrics["landmark_day"] != ALL_LANDMARKS)]
    overall = _value(metrics, landmark_day=ALL_LANDMARKS, endpoint="relapse", horizon_days=182.0, metric="brier",
                     source="truth", kind="estimate")
    assert overall["value"] == pytest.approx(per_landmark["value"].mean())


def test_paired_differences_have_intervals(evaluation):
    _, _, result = evaluation
    metrics = result.metrics
    truth = _value(metrics, landmark_day=ALL_LANDMARKS, endpoint="relapse", horizon_days=365.0, metric="uno_c",
                   source="truth", kind="estimate")
    weak = _value(metrics, landmark_day=ALL_LANDMARKS, endpoint="relapse", horizon_days=365.0, metric="uno_c",
                  source="weak", kind="estimate")
    difference = _value(metrics, landmark_day=ALL_LANDMARKS, endpoint="relapse", horizon_days=365.0, metric="uno_c",
                        source="truth - weak", kind="difference")
    assert difference["value"] == pytest.approx(truth["value"] - weak["value"])
    assert 0 < difference["ci_low"] < difference["value"] < difference["ci_high"]
    same = _value(metrics, landmark_day=0.0, endpoint="relapse", horizon_days=365.0, metric="uno_c",
                  source="copy - weak", kind="difference")
    twin = _value(metrics, landmark_day=0.0, endpoint="relapse", horizon_days=365.0, metric="uno_c",
                  source="truth - weak", kind="difference")
    assert same["value"] == pytest.approx(twin["value"]) and same["ci_low"] == pytest.approx(twin["ci_low"])


def test_only_bootstrap_endpoints_get_intervals_but_every_endpoint_gets_observed_expected_intervals(evaluation):
    _, _, result = evaluation
    metrics = result.metrics
    phenotype = metrics[(metrics["endpoint"] == "relapse_CD19_pos") & (metrics["kind"] == "estimate")]
    others = phenotype[phenotype["metric"] != "observed_expected"]
    assert others["ci_low"].isna().all() and others["value"].notna().any()
    ratio = phenotype[phenotype["metric"] == "observed_expected"]
    assert len(ratio) == 4 * len(HORIZONS) * 3  # landmarks 0, 28, 91 and "all"; every horizon and source
    assert ((ratio["ci_low"] < ratio["value"]) & (ratio["value"] < ratio["ci_high"])).all()
    assert not (metrics["endpoint"] == "relapse_CD19_pos").loc[metrics["kind"] == "difference"].any()
    assert not (metrics["metric"] == "observed_expected").loc[metrics["kind"] == "difference"].any()


def test_calibration_tables_and_summary(evaluation):
    _, _, result = evaluation
    table = result.calibration
    part = table[(table["source"] == "truth") & (table["landmark_day"] == 0.0) & (table["endpoint"] == "relapse")
                 & (table["horizon_days"] == 365.0)]
    assert len(part) == 10 and part["predicted"].is_monotonic_increasing
    summary = summary_by_source(result.metrics)
    assert {"uno_c", "harrell_c", "auc", "brier", "ibs", "calibration_slope"} <= set(summary.columns)
    assert best_source(result.metrics, ["weak", "truth"], "uno_c") == "truth"
    assert best_source(result.metrics, ["weak", "truth"], "brier") == "truth"


def test_predictions_must_share_the_target_index(evaluation):
    targets, sources, _ = evaluation
    shifted = sources["weak"].set_axis(sources["weak"].index + 1)
    with pytest.raises(ModelInputError, match="indexed like the targets"):
        evaluate_sources(targets, {"weak": shifted}, EvaluationSettings(horizons_days=HORIZONS, n_bootstrap=0))


# --- names, bounds and selection on calibration --------------------------------------------------------
def test_calibration_summary_names_every_endpoint_landmark_and_horizon(evaluation):
    _, _, result = evaluation
    summary = calibration_summary(result.metrics)
    truth = summary["truth"]
    row = _value(result.metrics, landmark_day=28.0, endpoint="relapse_CD19_pos", horizon_days=365.0,
                 metric="observed_expected", source="truth", kind="estimate")
    assert truth["oe/relapse_CD19_pos/lm28/h365"] == pytest.approx(row["value"])
    assert {"oe/relapse/h182", "slope/relapse/lm91/h365", "ibs/relapse", "ibs/relapse_CD19_pos/lm0"} <= set(truth)
    assert "truth - weak" not in summary
    for name in truth:
        assert is_summary_metric(name) and parse_summary_key(name) is not None


@pytest.mark.parametrize(("name", "parts"), [
    ("oe/relapse/lm28/h365", ("oe", "relapse", 28.0, 365.0)),
    ("slope/death/h182", ("slope", "death", None, 182.0)),
    ("ibs/hsct/lm0", ("ibs", "hsct", 0.0, None)),
    ("oe/relapse", None), ("ibs/relapse/h365", None), ("oe/relapse_CD19_dim/h365", None), ("oe/relapse/lmx/h365", None),
    ("auc/relapse/h365", None),
])
def test_summary_names_parse_back(name, parts):
    assert parse_summary_key(name) == parts


def test_calibration_bounds_expand_to_every_landmark_and_horizon():
    minimums, maximums = calibration_thresholds({"observed_expected": {"relapse": (0.9, 1.1)},
                                                 "calibration_slope": {"relapse_CD19_neg": (0.8, 1.25)}},
                                                [0.0, 28.0], [182.0, 365.0])
    assert minimums["oe/relapse/lm28/h182"] == 0.9 and maximums["oe/relapse/lm0/h365"] == 1.1
    assert maximums["slope/relapse_CD19_neg/lm28/h365"] == 1.25
    assert len(minimums) == len(maximums) == 2 * 2 * 2
    with pytest.raises(ModelInputError, match="unknown metric"):
        calibration_thresholds({"brier": {"relapse": (0.0, 1.0)}}, [0.0], [365.0])


def test_selection_takes_the_best_discrimination_within_the_calibration_bounds():
    summary = {
        "sharp_but_off": {"uno_c": 0.83, "oe/relapse/lm0/h365": 0.80, "oe/relapse/lm28/h365": 1.00},
        "calibrated": {"uno_c": 0.82, "oe/relapse/lm0/h365": 0.97, "oe/relapse/lm28/h365": 1.04},
        "weak": {"uno_c": 0.70, "oe/relapse/lm0/h365": 1.00, "oe/relapse/lm28/h365": 1.00},
    }
    minimums, maximums = {"oe/relapse/lm0/h365": 0.9, "oe/relapse/lm28/h365": 0.9}, \
        {"oe/relapse/lm0/h365": 1.1, "oe/relapse/lm28/h365": 1.1}
    selection = select_candidate(summary, list(summary), "uno_c", minimums, maximums)
    assert selection.winner == "calibrated" and selection.eligible == ("calibrated", "weak")
    assert selection.failures == {"sharp_but_off": ("oe/relapse/lm0/h365 = 0.800 (outside [0.9, 1.1])",)}
    assert select_candidate(summary, list(summary), "uno_c").winner == "sharp_but_off"  # no bounds: C alone


def test_without_an_eligible_candidate_the_least_outside_wins():
    summary = {"far": {"uno_c": 0.9, "oe/relapse/lm0/h365": 0.5}, "near": {"uno_c": 0.8, "oe/relapse/lm0/h365": 0.85},
               "missing": {"uno_c": 0.95}}
    selection = select_candidate(summary, list(summary), "uno_c", {"oe/relapse/lm0/h365": 0.9},
                                 {"oe/relapse/lm0/h365": 1.1})
    assert selection.winner == "near" and selection.eligible == ()
    assert selection.failures["missing"] == ("oe/relapse/lm0/h365 = nan (outside [0.9, 1.1])",)
