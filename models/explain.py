"""SHAP explanations of the relapse risk, global and per patient, with plot helpers.

What is explained, per model:

- **XGBoost models** (``xgb_cox``, ``xgb_aft``): ``shap.TreeExplainer`` (exact TreeSHAP) on the
  booster of the *relapse* cause-specific hazard. For ``xgb_cox`` the explained output is the
  log relative hazard of relapse (any phenotype); for ``xgb_aft`` it is minus the log-time
  location of relapse (signs flipped so that, as everywhere here, a positive contribution means
  higher risk). Units: log-hazard (log-time), not probability; contributions add up to the
  booster margin minus its average. These are exact and fast; they explain the relapse hazard,
  which orders patients like the relapse incidence only when the competing hazards do not differ.
- **Every other model** (``coxnet``, ``rsf``, ``gbsa``, the rule), and XGBoost on request
  (``method="permutation"``): ``shap.PermutationExplainer`` on the model's actual output, the
  cumulative incidence of relapse at the chosen horizon (probability units), with an independent
  masker over a small background sample (``n_background`` rows). Cost is bounded: at most
  ``max_rows`` rows are explained, each with ``2 * n_features + 1`` model evaluations of the
  background.

Plot helpers return matplotlib Figures and never write files (pipelines save them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import shap
from matplotlib.figure import Figure
from sklearn.pipeline import Pipeline

from models.base import ModelInputError, check_features, relapse_column
from models.survival import XGBAFTSurvival, XGBCoxSurvival

__all__ = [
    "Explanation",
    "explain_relapse_risk",
    "global_importance",
    "plot_beeswarm",
    "plot_importance_bar",
    "plot_waterfall",
    "native_tree_explanation",
    "top_factor_arrays",
    "top_factors",
]


@dataclass(frozen=True)
class Explanation:
    """SHAP values of explained rows.

    Attributes
    ----------
    values : ndarray (n_rows, n_features)
        Contributions; positive = higher relapse risk.
    base_value : float
        Expected output over the background (or the booster's average margin).
    data : DataFrame
        The explained rows (feature values), index kept from the input.
    output : str
        What the values add up to, e.g. ``"cif_relapse_365d"`` or ``"relapse log relative hazard"``.
    method : str
        ``"tree"`` or ``"permutation"``.
    """

    values: np.ndarray
    base_value: float
    data: pd.DataFrame
    output: str
    method: str

    @property
    def feature_names(self) -> list[str]:
        """Explained features, in column order."""
        return list(self.data.columns)


def _relapse_booster(model):
    """The fitted XGBoost relapse-hazard estimator of a competing-risks model (also inside a
    recalibrated one: its ``relapse_hazard_model_``), or None."""
    hazard = getattr(model, "relapse_hazard_model_", None)
    if hazard is None:
        return None
    final = hazard.steps[-1][1] if isinstance(hazard, Pipeline) else hazard
    return final if isinstance(final, (XGBCoxSurvival, XGBAFTSurvival)) else None


def _sample(X: pd.DataFrame, n: int, random_state: int) -> pd.DataFrame:
    return X if len(X) <= n else X.sample(n=n, random_state=random_state)


def _relapse_risk_function(model, columns: list[str], horizon_days: float):
    def risk(values: np.ndarray) -> np.ndarray:
        frame = pd.DataFrame(np.asarray(values, dtype=float), columns=columns)
        if hasattr(model, "predict_relapse_incidence"):
            return model.predict_relapse_incidence(frame, horizon_days)
        return model.predict_cif(frame, [horizon_days])[relapse_column(horizon_days)].to_numpy()
    return risk


def _booster_sign_and_output(booster_model, model) -> tuple[float, str]:
    """Sign making higher = riskier, and what the relapse booster's SHAP values add up to (with a
    lineage-switch hazard of its own, the booster is that of the other relapses)."""
    hazards = getattr(getattr(model, "estimator_", model), "hazard_models_", {})
    which = " (relapses other than lineage switch)" if "lineage_switch" in hazards else ""
    if isinstance(booster_model, XGBAFTSurvival):
        return -1.0, "minus relapse log-time location" + which
    return 1.0, "relapse log relative hazard" + which


def _tree_explanation(booster_model, model, rows: pd.DataFrame) -> Explanation:
    explainer = shap.TreeExplainer(booster_model.booster_)
    result = explainer(rows)
    sign, output = _booster_sign_and_output(booster_model, model)
    return Explanation(values=sign * np.asarray(result.values), base_value=float(sign * np.ravel(result.base_values)[0]),
                       data=rows, output=output, method="tree")


def native_tree_explanation(model, rows: pd.DataFrame) -> Explanation | None:
    """Exact TreeSHAP of the relapse booster computed by XGBoost itself, or None for other models.

    The same quantity as :func:`explain_relapse_risk` with ``method="tree"`` (the booster margin,
    sign-flipped for AFT), from ``Booster.predict(pred_contribs=True)``: no ``shap.TreeExplainer``
    is built (and the model re-parsed), so it suits a scoring server answering small requests.
    Single-threaded.

    Parameters
    ----------
    model : CauseSpecificHazardsModel or RecalibratedModel
        Fitted; anything without an XGBoost relapse hazard gives None.
    rows : DataFrame
        Feature rows, in the model's column order.

    Returns
    -------
    Explanation or None
    """
    import xgboost as xgb

    booster_model = _relapse_booster(model)
    if booster_model is None:
        return None
    matrix = xgb.DMatrix(rows.to_numpy(dtype=float), missing=np.nan, feature_names=[str(c) for c in rows.columns],
                         nthread=1)
    contributions = booster_model.booster_.predict(matrix, pred_contribs=True)
    sign, output = _booster_sign_and_output(booster_model, model)
    return Explanation(values=sign * contributions[:, :-1], base_value=float(sign * contributions[0, -1]),
                       data=rows, output=output, method="tree")


def _permutation_explanation(model, rows: pd.DataFrame, background: pd.DataFrame, horizon_days: float,
                             random_state: int) -> Explanation:
    columns = list(rows.columns)
    masker = shap.maskers.Independent(background.to_numpy(dtype=float), max_samples=len(background))
    explainer = shap.PermutationExplainer(_relapse_risk_function(model, columns, horizon_days), masker,
                                          seed=random_state)
    result = explainer(rows.to_numpy(dtype=float), max_evals=2 * len(columns) + 1, silent=True)
    return Explanation(values=np.asarray(result.values), base_value=float(np.ravel(result.base_values)[0]),
                       data=rows, output=relapse_column(horizon_days), method="permutation")


def explain_relapse_risk(model, X: pd.DataFrame, horizon_days: float = 365.0, background: pd.DataFrame | None = None,
                         n_background: int = 50, max_rows: int = 200, method: str = "auto",
                         random_state: int = 0) -> Explanation:
    """SHAP values of the relapse risk for (a sample of) the rows of ``X``.

    Parameters
    ----------
    model : fitted CauseSpecificHazardsModel, RecalibratedModel or ClinicianRule
    X : DataFrame
        Rows to explain (features as at fit time); more than ``max_rows`` are sampled.
    horizon_days : float
        Horizon of the explained cumulative incidence (permutation method).
    background : DataFrame, optional
        Reference rows for masking; default the model's ``background_`` (a sample of its training
        rows), else ``X``. ``n_background`` of them are used.
    n_background, max_rows : int
        Cost bounds.
    method : {"auto", "tree", "permutation"}
        ``auto``: tree for XGBoost models, permutation otherwise.
    random_state : int

    Returns
    -------
    Explanation
    """
    X = check_features(X, getattr(model, "feature_names_in_", None))
    booster = _relapse_booster(model)
    if method == "auto":
        method = "tree" if booster is not None else "permutation"
    if method not in ("tree", "permutation"):
        raise ModelInputError(f"method must be 'auto', 'tree' or 'permutation', got {method!r}")
    rows = _sample(X, max_rows, random_state)
    if method == "tree":
        if booster is None:
            raise ModelInputError("method='tree' needs an XGBoost model (xgb_cox, xgb_aft)")
        return _tree_explanation(booster, model, rows)
    if background is None:
        background = getattr(model, "background_", X)
    reference = check_features(background, list(X.columns))
    return _permutation_explanation(model, rows, _sample(reference, n_background, random_state + 1),
                                    horizon_days, random_state)


def global_importance(explanation: Explanation) -> pd.DataFrame:
    """Mean absolute SHAP value per feature, largest first (columns ``feature``, ``mean_abs_shap``)."""
    importance = np.abs(explanation.values).mean(axis=0)
    frame = pd.DataFrame({"feature": explanation.feature_names, "mean_abs_shap": importance})
    return frame.sort_values("mean_abs_shap", ascending=False, ignore_index=True)


def top_factors(model, X: pd.DataFrame, k: int = 5, horizon_days: float = 365.0,
                explanation: Explanation | None = None, **explain_options) -> pd.DataFrame:
    """Per row, the ``k`` features contributing most (by absolute SHAP value) to its relapse risk.

    Parameters
    ----------
    model : fitted model
    X : DataFrame
        Rows to explain; all are explained (``max_rows`` defaults to ``len(X)`` here).
    k : int
    horizon_days : float
    explanation : Explanation, optional
        Precomputed explanation of these rows (then ``model`` and ``X`` only name them).
    **explain_options
        Passed to :func:`explain_relapse_risk` (``background``, ``n_background``, ``method``).

    Returns
    -------
    DataFrame
        Long format, ``k`` rows per explained row: ``row`` (index label of X), ``rank`` (1 =
        largest), ``feature``, ``value`` (the row's feature value), ``contribution`` (SHAP value,
        positive = riskier), ``output`` (what the contributions explain).
    """
    if explanation is None:
        explain_options.setdefault("max_rows", len(X))
        explanation = explain_relapse_risk(model, X, horizon_days=horizon_days, **explain_options)
    names, values, contributions = top_factor_arrays(explanation, k)
    n_rows, k = names.shape
    return pd.DataFrame({
        "row": np.repeat(explanation.data.index.to_numpy(), k),
        "rank": np.tile(np.arange(1, k + 1), n_rows),
        "feature": names.ravel(),
        "value": values.ravel(),
        "contribution": contributions.ravel(),
        "output": explanation.output,
    })


def top_factor_arrays(explanation: Explanation, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per explained row, the ``k`` features with the largest absolute SHAP value, largest first.

    Ties keep column order. The arrays behind :func:`top_factors` (one row per explained row).

    Parameters
    ----------
    explanation : Explanation
    k : int
        At most the number of features.

    Returns
    -------
    names, values, contributions : ndarray, each of shape (n_rows, min(k, n_features))
        Feature names (object), the rows' feature values and their SHAP values.
    """
    k = min(k, explanation.values.shape[1])
    order = np.argsort(-np.abs(explanation.values), axis=1, kind="stable")[:, :k]
    names = np.asarray(explanation.feature_names, dtype=object)[order]
    values = np.take_along_axis(explanation.data.to_numpy(dtype=float), order, axis=1)
    return names, values, np.take_along_axis(explanation.values, order, axis=1)


def _top_features(explanation: Explanation, max_features: int) -> np.ndarray:
    importance = np.abs(explanation.values).mean(axis=0)
    return np.argsort(-importance, kind="stable")[:max_features]


def plot_importance_bar(explanation: Explanation, max_features: int = 15, title: str = "") -> Figure:
    """Global importance: mean |SHAP| per feature, horizontal bars (largest on top).

    Parameters
    ----------
    explanation : Explanation
    max_features : int
        Features shown, the most important first.
    title : str
        Figure title (a default when empty).

    Returns
    -------
    matplotlib.figure.Figure
    """
    top = _top_features(explanation, max_features)
    figure = Figure(figsize=(7, 0.35 * len(top) + 1.5))
    axes = figure.subplots()
    importance = np.abs(explanation.values).mean(axis=0)[top]
    axes.barh(np.arange(len(top))[::-1], importance, color="#1f77b4")
    axes.set_yticks(np.arange(len(top))[::-1], [explanation.feature_names[i] for i in top])
    axes.set_xlabel(f"mean |SHAP| ({explanation.output})")
    axes.set_title(title or "Global feature importance")
    figure.tight_layout()
    return figure


def _scaled_colors(values: np.ndarray) -> np.ndarray:
    """Feature values mapped to [0, 1] by rank within the feature (NaN -> 0.5)."""
    ranks = pd.Series(values).rank(pct=True).to_numpy()
    return np.where(np.isnan(ranks), 0.5, ranks)


def plot_beeswarm(explanation: Explanation, max_features: int = 15, title: str = "", random_state: int = 0) -> Figure:
    """Summary (beeswarm-style) plot: one jittered dot per row and feature, colored by feature value.

    Parameters
    ----------
    explanation, max_features, title
        As :func:`plot_importance_bar`.
    random_state : int
        Seed of the vertical jitter.

    Returns
    -------
    matplotlib.figure.Figure
    """
    top = _top_features(explanation, max_features)
    rng = np.random.default_rng(random_state)
    figure = Figure(figsize=(8, 0.4 * len(top) + 1.5))
    axes = figure.subplots()
    data = explanation.data.to_numpy(dtype=float)
    for position, feature in zip(np.arange(len(top))[::-1], top):
        jitter = rng.uniform(-0.3, 0.3, size=len(data))
        points = axes.scatter(explanation.values[:, feature], position + jitter, c=_scaled_colors(data[:, feature]),
                              cmap="coolwarm", vmin=0, vmax=1, s=8)
    axes.axvline(0.0, color="grey", linewidth=0.8)
    axes.set_yticks(np.arange(len(top))[::-1], [explanation.feature_names[i] for i in top])
    axes.set_xlabel(f"SHAP value ({explanation.output}); positive = higher risk")
    axes.set_title(title or "Feature contributions")
    figure.colorbar(points, ax=axes, label="feature value (rank: low -> high)")
    figure.tight_layout()
    return figure


def plot_waterfall(explanation: Explanation, row: int = 0, max_features: int = 10, title: str = "") -> Figure:
    """Per-patient waterfall: from the base value, the largest contributions of one explained row.

    Parameters
    ----------
    explanation : Explanation
    row : int
        Position of the row within the explanation.
    max_features : int
        Largest contributions shown; the rest are summed into one bar.
    title : str
    """
    values = explanation.values[row]
    order = np.argsort(-np.abs(values), kind="stable")
    shown, rest = order[:max_features], order[max_features:]
    labels = [f"{explanation.feature_names[i]} = {explanation.data.iloc[row, i]:.3g}" for i in shown]
    steps = list(values[shown])
    if rest.size:
        labels.append(f"{rest.size} other features")
        steps.append(float(values[rest].sum()))
    figure = Figure(figsize=(8, 0.4 * len(steps) + 1.8))
    axes = figure.subplots()
    start = explanation.base_value + np.concatenate([[0.0], np.cumsum(steps)[:-1]])
    positions = np.arange(len(steps))[::-1]
    colors = ["#d62728" if step > 0 else "#1f77b4" for step in steps]
    axes.barh(positions, steps, left=start, color=colors)
    axes.set_yticks(positions, labels)
    axes.axvline(explanation.base_value, color="grey", linestyle=":", linewidth=0.8)
    axes.set_xlabel(f"{explanation.output}: base {explanation.base_value:.3g} -> "
                    f"{explanation.base_value + values.sum():.3g}")
    axes.set_title(title or f"Why this risk (row {explanation.data.index[row]})")
    figure.tight_layout()
    return figure
