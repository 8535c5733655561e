"""Evaluation plots as matplotlib Figures (pure: nothing is shown or written; pipelines save them).

- :func:`plot_metric_by_landmark`: a metric (e.g. Uno's C) per landmark, one series per source
  (models, oracle, rule) with bootstrap CIs;
- :func:`plot_calibration`: predicted vs observed cumulative incidence by risk group, one panel
  per landmark, one series per source;
- :func:`plot_cif_curves`: stacked cumulative incidence curves by cause for a few patients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from models.base import CAUSES
from models.competing import CIFCurves

__all__ = ["plot_calibration", "plot_cif_curves", "plot_metric_by_landmark"]

_CAUSE_COLORS = {
    "relapse_CD19_pos": "#d62728",
    "relapse_CD19_neg": "#ff7f0e",
    "relapse_lineage_switch": "#9467bd",
    "death": "#7f7f7f",
    "hsct": "#2ca02c",
}


def _landmark_order(values: pd.Series) -> list:
    numeric = sorted(v for v in values.unique() if not isinstance(v, str))
    return numeric + [v for v in values.unique() if isinstance(v, str)]


def plot_metric_by_landmark(metrics: pd.DataFrame, metric: str = "uno_c", horizon_days: float = 365.0,
                            endpoint: str = "relapse", sources: Sequence[str] | None = None, title: str = "") -> Figure:
    """One series per source of a metric across landmarks, with CI error bars.

    Parameters
    ----------
    metrics : DataFrame
        ``EvaluationResult.metrics``.
    metric, horizon_days, endpoint : selection
    sources : sequence of str, optional
        Sources to draw, in order (default: every estimate source).
    title : str
    """
    rows = metrics[(metrics["metric"] == metric) & (metrics["endpoint"] == endpoint) & (metrics["kind"] == "estimate")
                   & np.isclose(metrics["horizon_days"].astype(float), horizon_days)]
    sources = list(sources) if sources is not None else list(dict.fromkeys(rows["source"]))
    landmarks = _landmark_order(rows["landmark_day"])
    figure = Figure(figsize=(7.5, 4.5))
    axes = figure.subplots()
    width = 0.8 / max(len(sources), 1)
    for k, source in enumerate(sources):
        part = rows[rows["source"] == source].set_index("landmark_day").reindex(landmarks)
        x = np.arange(len(landmarks)) + (k - (len(sources) - 1) / 2) * width
        low = (part["value"] - part["ci_low"]).to_numpy(dtype=float)
        high = (part["ci_high"] - part["value"]).to_numpy(dtype=float)
        errors = np.clip(np.vstack([np.nan_to_num(low), np.nan_to_num(high)]), 0.0, None)  # a CI can miss the point
        axes.errorbar(x, part["value"].to_numpy(dtype=float), yerr=errors, fmt="o", capsize=3, label=source)
    axes.set_xticks(np.arange(len(landmarks)), [f"day {v:g}" if not isinstance(v, str) else v for v in landmarks])
    axes.set_ylabel(f"{metric} ({endpoint}, {horizon_days:g} days)")
    axes.set_xlabel("landmark")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize="small", ncols=2)
    axes.set_title(title or f"{metric} by landmark: models vs oracle vs clinicians' rule")
    figure.tight_layout()
    return figure


def plot_calibration(calibration: pd.DataFrame, horizon_days: float = 365.0, endpoint: str = "relapse",
                     sources: Sequence[str] | None = None, title: str = "") -> Figure:
    """Predicted vs observed (Aalen-Johansen) incidence per risk group; a panel per landmark.

    Parameters
    ----------
    calibration : DataFrame
        ``EvaluationResult.calibration``.
    horizon_days, endpoint : selection
    sources : sequence of str, optional
    title : str
    """
    rows = calibration[(calibration["endpoint"] == endpoint)
                       & np.isclose(calibration["horizon_days"].astype(float), horizon_days)]
    sources = list(sources) if sources is not None else list(dict.fromkeys(rows["source"]))
    landmarks = sorted(rows["landmark_day"].unique())
    figure = Figure(figsize=(3.6 * max(len(landmarks), 1), 3.9))
    panels = np.atleast_1d(figure.subplots(1, max(len(landmarks), 1), sharey=True))
    for axes, landmark in zip(panels, landmarks):
        axes.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
        for source in sources:
            part = rows[(rows["landmark_day"] == landmark) & (rows["source"] == source)]
            axes.plot(part["predicted"], part["observed"], marker="o", markersize=4, label=source)
        top = float(np.nanmax(rows[["predicted", "observed"]].to_numpy(dtype=float), initial=0.1))
        axes.set_xlim(0, min(1.0, top * 1.1))
        axes.set_ylim(0, min(1.0, top * 1.1))
        axes.set_title(f"landmark day {landmark:g}")
        axes.set_xlabel("predicted")
    panels[0].set_ylabel(f"observed {endpoint} incidence at {horizon_days:g} d")
    panels[-1].legend(fontsize="small")
    figure.suptitle(title or "Calibration by risk decile")
    figure.tight_layout()
    return figure


def plot_cif_curves(curves: CIFCurves, rows: Sequence[int], labels: Sequence[str] | None = None,
                    title: str = "") -> Figure:
    """Stacked cumulative incidence by cause over time, one panel per selected row.

    Parameters
    ----------
    curves : CIFCurves
        From ``predict_cif_curves``.
    rows : sequence of int
        Positions of the rows to draw.
    labels : sequence of str, optional
        Panel titles.
    title : str
    """
    rows = list(rows)
    figure = Figure(figsize=(4.2 * max(len(rows), 1), 3.8))
    panels = np.atleast_1d(figure.subplots(1, max(len(rows), 1), sharey=True))
    for k, (axes, row) in enumerate(zip(panels, rows)):
        stacked = np.vstack([curves.cif[cause][row] for cause in CAUSES])
        axes.stackplot(curves.times, stacked, labels=[c.replace("relapse_", "relapse ") for c in CAUSES],
                       colors=[_CAUSE_COLORS[c] for c in CAUSES], alpha=0.85)
        axes.set_xlim(curves.times[0], curves.times[-1])
        axes.set_ylim(0, 1)
        axes.set_xlabel("days from landmark")
        axes.set_title(labels[k] if labels is not None else f"row {row}")
    panels[0].set_ylabel("cumulative incidence (stacked)")
    panels[-1].legend(fontsize="x-small", loc="upper left")
    figure.suptitle(title or "Predicted cumulative incidence by cause")
    figure.tight_layout()
    return figure
