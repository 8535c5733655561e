"""Evaluation plots are pure Figures built from the evaluation tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from models.factory import make_model
from models.plots import plot_calibration, plot_cif_curves, plot_metric_by_landmark


def test_metric_by_landmark_draws_one_series_per_source():
    metrics = pd.DataFrame([
        {"landmark_day": day, "endpoint": "relapse", "horizon_days": 365.0, "metric": "uno_c", "source": source,
         "kind": "estimate", "value": value, "ci_low": value - 0.02, "ci_high": value + 0.02}
        for day in (0.0, 28.0, "all") for source, value in (("xgb_cox", 0.8), ("oracle", 0.9), ("rule", 0.6))
    ])
    figure = plot_metric_by_landmark(metrics, sources=["xgb_cox", "oracle", "rule"])
    assert isinstance(figure, Figure)
    assert [text.get_text() for text in figure.axes[0].get_legend().get_texts()] == ["xgb_cox", "oracle", "rule"]
    assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == ["day 0", "day 28", "all"]


def test_metric_by_landmark_draws_a_bootstrap_interval_that_misses_its_point():
    # With few resamples a percentile CI can lie wholly above (or below) the point estimate.
    metrics = pd.DataFrame([{"landmark_day": 0.0, "endpoint": "relapse", "horizon_days": 365.0, "metric": "uno_c",
                             "source": "m", "kind": "estimate", "value": 0.80, "ci_low": 0.81, "ci_high": 0.85}])
    figure = plot_metric_by_landmark(metrics, sources=["m"])
    assert len(figure.axes[0].containers) == 1


def test_calibration_has_a_panel_per_landmark():
    table = pd.DataFrame([
        {"landmark_day": day, "endpoint": "relapse", "horizon_days": 365.0, "source": "m", "group": g,
         "n_rows": 10, "n_events": 2, "predicted": g / 10, "observed": g / 11}
        for day in (0.0, 91.0) for g in range(1, 11)
    ])
    figure = plot_calibration(table)
    assert len(figure.axes) == 2
    np.testing.assert_allclose(figure.axes[1].lines[1].get_xdata(), np.arange(1, 11) / 10)


def test_cif_curves_stack_every_cause(known_cohort):
    model = make_model("xgb_cox").fit(known_cohort.X, known_cohort.y)
    curves = model.predict_cif_curves(known_cohort.X.iloc[:3])
    figure = plot_cif_curves(curves, [0, 2], ["a", "b"])
    assert [axes.get_title() for axes in figure.axes] == ["a", "b"]
    assert len(figure.axes[0].collections) == 5


def test_metric_title_names_the_oracle_only_when_it_is_drawn():
    metrics = pd.DataFrame([
        {"landmark_day": 0.0, "endpoint": "relapse", "horizon_days": 365.0, "metric": "uno_c", "source": source,
         "kind": "estimate", "value": 0.7, "ci_low": 0.68, "ci_high": 0.72} for source in ("xgb_cox", "rule", "oracle")
    ])
    without = plot_metric_by_landmark(metrics, sources=["xgb_cox", "rule"]).axes[0].get_title()
    assert "oracle" not in without and "clinicians' rule" in without
    assert "oracle" in plot_metric_by_landmark(metrics, sources=["xgb_cox", "oracle"]).axes[0].get_title()


def _targets_and_predictions():
    """Two landmarks; half the rows at landmark 0 relapse of unknown phenotype at day 10."""
    n = 200
    event = np.where(np.arange(n) % 2 == 0, "relapse_unknown", "none")
    targets = pd.DataFrame({"landmark_day": np.repeat([0.0, 28.0], n // 2), "time": np.where(event == "none", 700.0, 10.0),
                            "event": event})
    columns = {}
    for h in (182.0, 365.0):
        columns.update({f"cif_{cause}_{h:g}d": np.full(n, 0.1) for cause in
                        ("relapse_CD19_pos", "relapse_CD19_neg", "relapse_lineage_switch", "death", "hsct")})
        columns[f"cif_relapse_{h:g}d"] = np.full(n, 0.3)
    return targets, pd.DataFrame(columns)


def test_incidence_figure_counts_unknown_phenotype_relapses_and_names_lines_and_markers():
    from models.plots import plot_incidence_over_time

    targets, predicted = _targets_and_predictions()
    figure = plot_incidence_over_time(targets, predicted, [182.0, 365.0])
    axes = figure.axes[0]
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert "line: observed (Aalen-Johansen)" in labels and "marker: mean predicted" in labels and "relapse" in labels
    relapse_line, relapse_markers = axes.lines[0], axes.lines[1]  # relapse of any phenotype is drawn first
    assert relapse_line.get_ydata()[-1] == pytest.approx(0.5)  # the unknown-phenotype relapses, not censorings
    np.testing.assert_allclose(relapse_markers.get_ydata(), [0.3, 0.3])
    phenotype_line = axes.lines[2]
    assert phenotype_line.get_ydata()[-1] == 0.0  # no CD19-positive relapse observed


def test_calibration_by_cause_has_a_panel_per_cause_and_landmark():
    from models.plots import plot_calibration_by_cause

    metrics = pd.DataFrame([
        {"landmark_day": day, "endpoint": endpoint, "horizon_days": h, "metric": "observed_expected", "source": source,
         "kind": "estimate", "value": 1.0, "ci_low": 0.9, "ci_high": 1.1}
        for day in (0.0, 28.0, "all") for endpoint in ("relapse", "death") for h in (182.0, 365.0)
        for source in ("a", "b")
    ])
    figure = plot_calibration_by_cause(metrics, ["a", "b"])
    assert [axes.get_title() for axes in figure.axes] == ["relapse, landmark 0", "relapse, landmark 28",
                                                          "death, landmark 0", "death, landmark 28"]
    assert [text.get_text() for text in figure.axes[1].get_legend().get_texts()] == ["a", "b"]
