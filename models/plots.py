"""Evaluation plots as matplotlib Figures (pure: nothing is shown or written; pipelines save them).

- :func:`plot_metric_by_landmark`: a metric (e.g. Uno's C) per landmark, one series per source
  (models, oracle, rule) with bootstrap CIs;
- :func:`plot_calibration`: predicted vs observed cumulative incidence by risk group, one panel
  per landmark, one series per source;
- :func:`plot_cif_curves`: stacked cumulative incidence curves by cause for a few patients;
- :func:`plot_incidence_over_time`: observed (Aalen-Johansen, lines) vs mean predicted (markers)
  cumulative incidence of every cause over time, one panel per landmark;
- :func:`plot_calibration_by_cause`: observed/expected with CIs by cause (rows), landmark
  (columns) and horizon, one series per source, against the accepted band.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from models.base import CAUSES, RELAPSE_EVENTS
from models.competing import CIFCurves
from models.evaluation import endpoint_column
from models.nonparametric import aalen_johansen

__all__ = [
    "plot_calibration",
    "plot_calibration_by_cause",
    "plot_cif_curves",
    "plot_incidence_over_time",
    "plot_metric_by_landmark",
]

_CAUSE_COLORS = {
    "relapse": "#000000",
    "relapse_CD19_pos": "#d62728",
    "relapse_CD19_neg": "#ff7f0e",
    "relapse_lineage_switch": "#9467bd",
    "death": "#7f7f7f",
    "hsct": "#2ca02c",
}


def _default_title(metric: str, sources: Sequence[str]) -> str:
    """``"<metric> by landmark: models vs oracle vs clinicians' rule"``, naming only what is drawn."""
    shown = ["models"] + [label for name, label in (("oracle", "oracle"), ("rule", "clinicians' rule")) if name in sources]
    return f"{metric} by landmark: " + " vs ".join(shown)


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
    axes.set_title(title or _default_title(metric, sources))
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


def _grid(n_rows: int, n_cols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(width * n_cols, height * n_rows))
    return figure, np.atleast_2d(figure.subplots(n_rows, n_cols, squeeze=False))


def _observed_by_cause(time: np.ndarray, event: np.ndarray, grid: np.ndarray) -> dict[str, np.ndarray]:
    """Aalen-Johansen incidence of every cause on ``grid``, plus relapse of any phenotype (a relapse
    of unknown phenotype counts there, and as a competing event for each phenotype)."""
    codes = {cause: k + 1 for k, cause in enumerate((*CAUSES, "relapse_unknown"))}
    status = pd.Series(event).map(codes).fillna(0).astype(int).to_numpy()
    incidence = aalen_johansen(time, status, grid, n_causes=len(codes))
    observed = {cause: incidence[codes[cause] - 1] for cause in CAUSES}
    observed["relapse"] = sum(incidence[codes[cause] - 1] for cause in RELAPSE_EVENTS)
    return observed


def plot_incidence_over_time(targets: pd.DataFrame, predicted: pd.DataFrame, horizons_days: Sequence[float],
                             title: str = "") -> Figure:
    """Observed vs mean predicted cumulative incidence of every cause over time, a panel per landmark.

    Lines: Aalen-Johansen estimate of each cause (relapse of any phenotype in black, relapses of
    unknown phenotype included there). Markers: the mean predicted incidence of the same cause at
    each horizon. A marker on its line is calibration in the large at that horizon.

    Parameters
    ----------
    targets : DataFrame
        ``landmark_day``, ``time``, ``event`` of the rows.
    predicted : DataFrame
        ``predict_cif`` layout for the same rows (e.g. out-of-fold predictions).
    horizons_days : sequence of float
    title : str
    """
    from matplotlib.lines import Line2D

    landmarks = sorted(targets["landmark_day"].astype(float).unique())
    n_cols = min(len(landmarks), 4)
    figure, axes = _grid(-(-len(landmarks) // n_cols), n_cols, 4.2, 4.0)
    grid = np.linspace(0, max(horizons_days), 100)
    shown = ("relapse", *CAUSES)
    for axis, landmark in zip(axes.ravel(), landmarks):
        rows = (targets["landmark_day"].astype(float) == landmark).to_numpy()
        observed = _observed_by_cause(targets.loc[rows, "time"].to_numpy(float), targets.loc[rows, "event"].to_numpy(),
                                      grid)
        for cause in shown:
            axis.plot(grid, observed[cause], color=_CAUSE_COLORS[cause], linewidth=1.2)
            means = [predicted.loc[rows, endpoint_column(cause, h)].mean() for h in horizons_days]
            axis.plot(horizons_days, means, marker="o", linestyle="none", color=_CAUSE_COLORS[cause])
        axis.set(title=f"landmark day {landmark:g} (n={int(rows.sum())})", xlabel="days from landmark",
                 ylabel="cumulative incidence")
    for axis in axes.ravel()[len(landmarks):]:
        axis.set_visible(False)
    handles = [Line2D([], [], color=_CAUSE_COLORS[c], label=c.replace("relapse_", "relapse ")) for c in shown]
    handles += [Line2D([], [], color="grey", label="line: observed (Aalen-Johansen)"),
                Line2D([], [], color="grey", marker="o", linestyle="none", label="marker: mean predicted")]
    axes.ravel()[0].legend(handles=handles, fontsize=7)
    figure.suptitle(title or "Cumulative incidence by cause: observed vs mean predicted")
    figure.tight_layout()
    return figure


def plot_calibration_by_cause(metrics: pd.DataFrame, sources: Sequence[str], endpoints: Sequence[str] | None = None,
                              band: tuple[float, float] | None = (0.9, 1.1), title: str = "") -> Figure:
    """Observed/expected with its CI per horizon: a row per cause, a column per landmark, a series per source.

    Parameters
    ----------
    metrics : DataFrame
        ``EvaluationResult.metrics`` (rows with ``metric == "observed_expected"``).
    sources : sequence of str
        Sources to draw, in order.
    endpoints : sequence of str, optional
        Causes (rows of panels); default every endpoint in ``metrics``.
    band : (float, float), optional
        Accepted range, shaded (e.g. the selection bounds).
    title : str
    """
    rows = metrics[(metrics["metric"] == "observed_expected") & (metrics["kind"] == "estimate")
                   & metrics["source"].isin(list(sources)) & (metrics["landmark_day"].astype(str) != "all")]
    endpoints = list(endpoints) if endpoints is not None else list(dict.fromkeys(rows["endpoint"]))
    landmarks = sorted(rows["landmark_day"].astype(float).unique())
    figure, axes = _grid(len(endpoints), max(len(landmarks), 1), 2.6, 2.2)
    horizons = sorted(rows["horizon_days"].astype(float).unique())
    width = 0.6 / max(len(sources), 1)
    for i, endpoint in enumerate(endpoints):
        for j, landmark in enumerate(landmarks):
            axis = axes[i, j]
            if band is not None:
                axis.axhspan(*band, color="#2ca02c", alpha=0.12, linewidth=0)
            axis.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
            for k, source in enumerate(sources):
                part = rows[(rows["endpoint"] == endpoint) & (rows["source"] == source)
                            & (rows["landmark_day"].astype(float) == landmark)].set_index("horizon_days").reindex(horizons)
                x = np.arange(len(horizons)) + (k - (len(sources) - 1) / 2) * width
                value = part["value"].to_numpy(dtype=float)
                errors = np.vstack([value - part["ci_low"].to_numpy(float), part["ci_high"].to_numpy(float) - value])
                errors = np.clip(np.nan_to_num(errors), 0.0, None)  # a percentile CI can miss a small sample's point
                axis.errorbar(x, value, yerr=errors, fmt="o", markersize=3, capsize=2, label=source)
            axis.set_xticks(np.arange(len(horizons)), [f"{h:g} d" for h in horizons], fontsize=7)
            axis.tick_params(axis="y", labelsize=7)
            axis.set_title(f"{endpoint.replace('relapse_', '')}, landmark {landmark:g}", fontsize=8)
        axes[i, 0].set_ylabel("observed / expected", fontsize=8)
    axes[0, -1].legend(fontsize=6)
    figure.suptitle(title or "Calibration by cause: observed (Aalen-Johansen) / mean predicted, 95% CI")
    figure.tight_layout()
    return figure
