"""Evaluation plots are pure Figures built from the evaluation tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
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
