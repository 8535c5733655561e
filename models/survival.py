"""Single-outcome survival estimators that yield cumulative hazard curves.

These are the building blocks of the competing-risks model (:mod:`models.competing`): each is
fitted on one cause at a time (scikit-survival structured target, other causes censored) and
must return the cumulative hazard of that cause on a time grid. scikit-survival's Cox, random
survival forest and gradient boosting already do; this module adds

- :class:`FastGradientBoostingSurvivalAnalysis`: scikit-survival's gradient-boosted Cox model
  with the partial-likelihood loss and its gradient computed in O(n log n) by cumulative sums
  (scikit-survival's own implementation is O(n^2) and takes seconds per boosting stage at ten
  thousand rows); results are identical (tests compare both);
- :class:`XGBCoxSurvival`: XGBoost ``survival:cox`` plus a Breslow baseline hazard;
- :class:`XGBAFTSurvival`: XGBoost ``survival:aft`` with curves from the fitted AFT distribution,
  whose location shift and scale are re-estimated by maximum likelihood after boosting.

:func:`cumulative_hazard_on_grid` evaluates any of them (bare or as the last step of a
scikit-learn Pipeline) on a common grid.
"""

from __future__ import annotations

import numpy as np
import xgboost as xgb
from scipy import optimize, special
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted
from sksurv.ensemble import GradientBoostingSurvivalAnalysis, RandomSurvivalForest
from sksurv.ensemble.survival_loss import CoxPH
from sksurv.functions import StepFunction
from sksurv.linear_model import CoxnetSurvivalAnalysis
from sksurv.linear_model.coxph import BreslowEstimator
from sksurv.util import check_array_survival

__all__ = [
    "FastCoxPHLoss",
    "FastGradientBoostingSurvivalAnalysis",
    "XGBAFTSurvival",
    "XGBCoxSurvival",
    "XGBPiecewiseSurvival",
    "batch_invariant_dot",
    "cox_partial_likelihood",
    "cumulative_hazard_on_grid",
]


def _risk_set_sums(time: np.ndarray, exp_prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order by time and the sum of ``exp_prediction`` over each sample's risk set (time_j >= time_i)."""
    order = np.argsort(time, kind="mergesort")
    sorted_time = time[order]
    tail_sums = np.cumsum(exp_prediction[order][::-1])[::-1]
    return order, tail_sums[np.searchsorted(sorted_time, sorted_time, side="left")]


def cox_partial_likelihood(event: np.ndarray, time: np.ndarray, prediction: np.ndarray) -> tuple[float, np.ndarray]:
    r"""Negative Cox log partial likelihood (Breslow ties) and its negative gradient, in O(n log n).

    .. math::

        \ell = -\sum_{i: \delta_i = 1} \Big[f_i - \log \sum_{j: t_j \ge t_i} e^{f_j}\Big], \qquad
        -\frac{\partial \ell}{\partial f_i} = \delta_i - e^{f_i}
            \sum_{k: \delta_k = 1,\, t_k \le t_i} \frac{1}{\sum_{j: t_j \ge t_k} e^{f_j}}

    Parameters
    ----------
    event : ndarray of bool
    time : ndarray of float
    prediction : ndarray of float
        Log relative hazards ``f``.

    Returns
    -------
    loss : float
    negative_gradient : ndarray
    """
    event = np.asarray(event, dtype=bool)
    prediction = np.asarray(prediction, dtype=float)
    shift = prediction.max(initial=0.0)  # the partial likelihood is invariant to a common shift
    exp_prediction = np.exp(prediction - shift)
    order, risk = _risk_set_sums(time, exp_prediction)
    sorted_event = event[order]
    loss = -np.sum(sorted_event * (prediction[order] - shift - np.log(risk)))
    cumulative = np.cumsum(np.where(sorted_event, 1.0 / risk, 0.0))
    sorted_time = time[order]
    last_tied = np.searchsorted(sorted_time, sorted_time, side="right") - 1
    gradient = np.empty_like(prediction)
    gradient[order] = sorted_event - exp_prediction[order] * cumulative[last_tied]
    return float(loss), gradient


class FastCoxPHLoss(CoxPH):
    """scikit-survival's Cox partial-likelihood loss, computed by :func:`cox_partial_likelihood`."""

    def __call__(self, y_true, raw_prediction, sample_weight=None):
        """Negative log partial likelihood (sample weights are ignored, as in scikit-survival)."""
        return cox_partial_likelihood(y_true["event"], y_true["time"], raw_prediction.ravel())[0]

    def gradient(self, y_true, raw_prediction, sample_weight=None, **kwargs):
        """Negative gradient of the partial likelihood, times the sample weights when given."""
        gradient = cox_partial_likelihood(y_true["event"], y_true["time"], raw_prediction.ravel())[1]
        return gradient if sample_weight is None else gradient * sample_weight


class FastGradientBoostingSurvivalAnalysis(GradientBoostingSurvivalAnalysis):
    """``sksurv.ensemble.GradientBoostingSurvivalAnalysis`` with an O(n log n) Cox loss.

    Same parameters, attributes and results as the parent class; only ``loss="coxph"`` is
    accelerated (other losses are the parent's).

    This overrides a private method, ``_get_loss``, because scikit-survival 0.28 offers no public
    route: ``loss`` only accepts the names ``"coxph"``, ``"squared"``, ``"ipcwls"`` (checked
    against its parameter constraints), the loss object is built inside ``fit`` by ``_get_loss``,
    and its Cox loss is compiled code that is O(n^2) (seconds per boosting stage at ten thousand
    rows). tests/models/test_survival.py pins the behaviour relied on: fitting calls this loss, and
    the results equal the parent's.
    """

    def _get_loss(self, sample_weight):
        if self.loss == "coxph":
            return FastCoxPHLoss()
        return super()._get_loss(sample_weight)


def _survival_target(y) -> tuple[np.ndarray, np.ndarray]:
    event, time = check_array_survival(np.zeros((len(y), 1)), y)
    return np.asarray(event, dtype=bool), np.asarray(time, dtype=float)


def _step_functions(times: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.array([StepFunction(times, row) for row in values], dtype=object)


class _XGBSurvivalBase(BaseEstimator):
    """Shared XGBoost plumbing: parameters, DMatrix, margins, curve methods."""

    def __init__(self, *, n_estimators=300, learning_rate=0.05, max_depth=3, min_child_weight=5.0,
                 subsample=0.8, colsample_bytree=0.8, reg_lambda=1.0, max_bin=64, n_jobs=1, random_state=0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.max_bin = max_bin
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _booster_params(self) -> dict:
        return {
            "eta": self.learning_rate, "max_depth": self.max_depth, "min_child_weight": self.min_child_weight,
            "subsample": self.subsample, "colsample_bytree": self.colsample_bytree, "lambda": self.reg_lambda,
            "max_bin": self.max_bin, "nthread": self.n_jobs, "seed": self.random_state, "tree_method": "hist",
            "verbosity": 0,
        }

    def _matrix(self, X) -> xgb.DMatrix:
        names = getattr(self, "feature_names_in_", None)
        if hasattr(X, "columns"):
            names = [str(column) for column in X.columns]
        return xgb.DMatrix(np.asarray(X, dtype=float), missing=np.nan, feature_names=names)

    def _remember_features(self, X) -> None:
        self.n_features_in_ = np.asarray(X).shape[1]
        if hasattr(X, "columns"):
            self.feature_names_in_ = np.asarray([str(column) for column in X.columns], dtype=object)

    def _check_fitted_columns(self, X) -> None:
        """Fitted, and a DataFrame's columns are the fitted features in order."""
        check_is_fitted(self, "booster_")
        names = getattr(X, "columns", None)
        if names is not None and hasattr(self, "feature_names_in_") and list(map(str, names)) != list(self.feature_names_in_):
            raise ValueError("feature names differ from those seen in fit (same columns, same order expected)")

    def margin(self, X) -> np.ndarray:
        """Raw booster output (before the survival link) per row.

        Uses XGBoost's in-place prediction (no DMatrix: a quarter of the cost for a few rows, the
        same numbers); the columns must be the fitted features in order, as for every estimator here.
        """
        self._check_fitted_columns(X)
        return self.booster_.inplace_predict(np.asarray(X, dtype=float), predict_type="margin", missing=np.nan)

    def predict_cumulative_hazard_function(self, X, return_array=False):
        """Cumulative hazard at ``unique_times_`` (array) or as StepFunctions, like scikit-survival."""
        values = self.cumulative_hazard_at(X, self.unique_times_)
        return values if return_array else _step_functions(self.unique_times_, values)

    def predict_survival_function(self, X, return_array=False):
        """Survival at ``unique_times_`` (array) or as StepFunctions, like scikit-survival."""
        values = np.exp(-self.cumulative_hazard_at(X, self.unique_times_))
        return values if return_array else _step_functions(self.unique_times_, values)


class XGBCoxSurvival(_XGBSurvivalBase):
    r"""XGBoost ``survival:cox`` with a Breslow baseline hazard.

    The booster learns the log relative hazard :math:`f(x)`; the cumulative hazard is
    :math:`H(t \mid x) = H_0(t)\, e^{f(x)}` with Breslow's :math:`H_0` estimated on the training
    margins. Missing values go to XGBoost's learned default directions (no imputation).

    Parameters
    ----------
    n_estimators, learning_rate, max_depth, min_child_weight, subsample, colsample_bytree, reg_lambda, max_bin
        XGBoost booster parameters (rounds, eta, depth, min hessian per leaf, row and column
        sampling, L2 penalty, histogram bins).
    n_jobs : int
        XGBoost threads (1 is fastest on a shared two-core machine).
    random_state : int
    """

    def fit(self, X, y):
        """Fit the booster on structured target ``y`` (event, time), then the Breslow baseline."""
        event, time = _survival_target(y)
        self._remember_features(X)
        matrix = self._matrix(X)
        matrix.set_label(np.where(event, time, -time))
        params = {**self._booster_params(), "objective": "survival:cox", "eval_metric": "cox-nloglik"}
        self.booster_ = xgb.train(params, matrix, num_boost_round=self.n_estimators)
        margin = self.booster_.predict(matrix, output_margin=True)
        self.baseline_ = BreslowEstimator().fit(margin, event, time)
        self.unique_times_ = self.baseline_.unique_times_
        return self

    def predict(self, X) -> np.ndarray:
        """Log relative hazard (higher = riskier)."""
        return self.margin(X)

    def cumulative_hazard_at(self, X, times) -> np.ndarray:
        """Cumulative hazard of every row at ``times``; shape (n_rows, n_times)."""
        baseline = self.baseline_.cum_baseline_hazard_
        baseline_at = _step_values(baseline.x, baseline.y, np.asarray(times, dtype=float))
        return np.exp(self.margin(X))[:, None] * baseline_at[None, :]


_AFT_LOG_SURVIVAL = {
    "extreme": lambda z: -np.exp(z),
    "normal": lambda z: special.log_ndtr(-z),
    "logistic": lambda z: -np.logaddexp(0.0, z),
}
_AFT_LOG_DENSITY = {
    "extreme": lambda z: z - np.exp(z),
    "normal": lambda z: -0.5 * z**2 - 0.5 * np.log(2 * np.pi),
    "logistic": lambda z: z - 2.0 * np.logaddexp(0.0, z),
}


class XGBAFTSurvival(_XGBSurvivalBase):
    r"""XGBoost ``survival:aft`` with curves from the fitted accelerated-failure-time distribution.

    The booster learns the location :math:`\mu(x)` of :math:`\log T = \mu(x) + \sigma \varepsilon`
    with :math:`\varepsilon` of the chosen ``distribution`` (``"extreme"`` gives a Weibull model).
    XGBoost keeps :math:`\sigma` fixed during boosting, so after boosting a location shift
    :math:`a` and the scale :math:`\sigma` are re-estimated by censored maximum likelihood on the
    training margins; then :math:`S(t \mid x) = S_\varepsilon\big((\log t - \mu(x) - a)/\sigma\big)`
    and :math:`H = -\log S`.

    Parameters
    ----------
    distribution : {"extreme", "normal", "logistic"}
    distribution_scale : float
        :math:`\sigma` used while boosting.
    n_estimators, learning_rate, max_depth, min_child_weight, subsample, colsample_bytree, reg_lambda, max_bin
        As :class:`XGBCoxSurvival`.
    n_jobs, random_state
        As :class:`XGBCoxSurvival`.
    """

    def __init__(self, *, distribution="extreme", distribution_scale=1.0, n_estimators=300, learning_rate=0.05,
                 max_depth=3, min_child_weight=5.0, subsample=0.8, colsample_bytree=0.8, reg_lambda=1.0,
                 max_bin=64, n_jobs=1, random_state=0):
        super().__init__(n_estimators=n_estimators, learning_rate=learning_rate, max_depth=max_depth,
                         min_child_weight=min_child_weight, subsample=subsample, colsample_bytree=colsample_bytree,
                         reg_lambda=reg_lambda, max_bin=max_bin, n_jobs=n_jobs, random_state=random_state)
        self.distribution = distribution
        self.distribution_scale = distribution_scale

    def fit(self, X, y):
        """Fit the booster on structured target ``y`` (event, time), then shift and scale."""
        if self.distribution not in _AFT_LOG_SURVIVAL:
            raise ValueError(f"distribution must be one of {sorted(_AFT_LOG_SURVIVAL)}, got {self.distribution!r}")
        event, time = _survival_target(y)
        self._remember_features(X)
        matrix = self._matrix(X)
        matrix.set_float_info("label_lower_bound", time)
        matrix.set_float_info("label_upper_bound", np.where(event, time, np.inf))
        # start boosting from the exponential-model mean event time (XGBoost's base_score is on the
        # time scale for AFT); from the default 0.5 the first hundreds of rounds only move the intercept
        params = {**self._booster_params(), "objective": "survival:aft", "eval_metric": "aft-nloglik",
                  "aft_loss_distribution": self.distribution,
                  "aft_loss_distribution_scale": self.distribution_scale,
                  "base_score": float(time.sum() / max(event.sum(), 1))}
        self.booster_ = xgb.train(params, matrix, num_boost_round=self.n_estimators)
        margin = self.booster_.predict(matrix, output_margin=True)
        self.location_shift_, self.scale_ = self._fit_shift_and_scale(margin, event, time)
        self.unique_times_ = np.unique(time)
        return self

    def _fit_shift_and_scale(self, margin, event, time) -> tuple[float, float]:
        log_survival, log_density = _AFT_LOG_SURVIVAL[self.distribution], _AFT_LOG_DENSITY[self.distribution]
        residual = np.log(time) - margin

        def negative_log_likelihood(theta):
            shift, log_scale = theta
            z = (residual - shift) / np.exp(log_scale)
            return -np.sum(np.where(event, log_density(z) - log_scale, log_survival(z)))

        start = np.array([0.0, np.log(self.distribution_scale)])
        result = optimize.minimize(negative_log_likelihood, start, method="Nelder-Mead",
                                   options={"xatol": 1e-6, "fatol": 1e-8, "maxiter": 2000})
        return float(result.x[0]), float(np.exp(result.x[1]))

    def predict(self, X) -> np.ndarray:
        """Minus the predicted log-time location (higher = earlier event = riskier)."""
        return -self.margin(X)

    def cumulative_hazard_at(self, X, times) -> np.ndarray:
        """Cumulative hazard of every row at ``times``; shape (n_rows, n_times)."""
        times = np.asarray(times, dtype=float)
        location = self.margin(X) + self.location_shift_
        with np.errstate(divide="ignore"):
            z = (np.log(times)[None, :] - location[:, None]) / self.scale_
        return np.maximum(-_AFT_LOG_SURVIVAL[self.distribution](z), 0.0)


def _transform_to_last_step(pipeline: Pipeline, X):
    for _, step in pipeline.steps[:-1]:
        if step is not None and step != "passthrough":
            X = step.transform(X)
    return X


def _cox_baseline(final, n_features: int) -> tuple[np.ndarray, np.ndarray] | None:
    r"""Event times and cumulative baseline hazard of a scikit-survival Cox-type model (Coxnet with a
    baseline model, gradient boosting with the Cox loss), or None for other models.

    scikit-survival 0.28 keeps the Breslow baseline private, so it is read through public
    predictions for one reference row (all features 0): :math:`H_0(t) = H(t \mid x_0) / e^{f(x_0)}`.
    That lets :func:`cumulative_hazard_on_grid` compute ``exp(risk) * H0(grid)`` as one outer
    product (with a batch-invariant risk for Coxnet) instead of scikit-survival's per-row
    step-function loop; the values agree to rounding (tested).
    """
    cox = (isinstance(final, CoxnetSurvivalAnalysis) and final.fit_baseline_model) \
        or (isinstance(final, GradientBoostingSurvivalAnalysis) and final.loss == "coxph")
    if not cox:
        return None
    reference = np.zeros((1, n_features))
    hazard = final.predict_cumulative_hazard_function(reference, return_array=True)[0]
    return np.asarray(final.unique_times_, dtype=float), hazard / np.exp(final.predict(reference)[0])


def batch_invariant_dot(X, coefficients: np.ndarray) -> np.ndarray:
    """``X @ coefficients.T`` accumulated feature by feature in a fixed order.

    BLAS products and numpy reductions pick different kernels and summation orders for one row
    than for many, so the last bits of a row's result depend on the batch it comes in. Adding one
    feature at a time makes every row's result independent of the batch (a patient scores
    bit-identically alone and in a batch); the cost is one vector operation per feature.

    Parameters
    ----------
    X : array-like (n, p)
    coefficients : ndarray (k, p) or (p,)

    Returns
    -------
    ndarray (n, k), or (n,) for 1-d coefficients
    """
    X = np.asarray(X, dtype=float)
    matrix = np.atleast_2d(coefficients)
    total = np.zeros((X.shape[0], matrix.shape[0]))
    for feature in range(X.shape[1]):
        total += X[:, feature, None] * matrix[None, :, feature]
    return total[:, 0] if np.ndim(coefficients) == 1 else total


def _risk_score(final, X) -> np.ndarray:
    """``final.predict(X)``; for Coxnet computed by :func:`batch_invariant_dot`."""
    if isinstance(final, CoxnetSurvivalAnalysis):
        return batch_invariant_dot(X, final.coef_[:, -1]) - final.offset_[-1]
    return final.predict(X)


def _forest_cumulative_hazard(forest: RandomSurvivalForest, X) -> np.ndarray:
    """The forest's cumulative hazard, averaged over its trees in a fixed order.

    scikit-survival accumulates the trees from parallel threads in whatever order they finish,
    so the last bits of a prediction change from run to run and between a patient alone and in a
    batch; summing in tree order makes predictions reproducible (same values otherwise).
    """
    X = np.asarray(X, dtype=np.float32)
    total = np.zeros((X.shape[0], forest.unique_times_.size))
    for tree in forest.estimators_:
        total += tree.predict_cumulative_hazard_function(X, return_array=True)
    return total / len(forest.estimators_)


class XGBPiecewiseSurvival(_XGBSurvivalBase):
    r"""Piecewise-exponential hazard boosted by XGBoost: a flexible baseline and time-varying effects.

    Follow-up is cut at ``interval_edges_days`` (the last interval is open). On interval k the
    hazard is constant, :math:`\lambda_k(x) = e^{f(x, k)}`, where the booster sees the features and
    the interval's start day, so trees can give a covariate a different effect early and late
    (KMT2A-rearranged leukaemia relapses early as a lineage switch, then rarely; a Cox or AFT model
    must spread one effect over all of follow-up). It is fitted as a Poisson regression on one
    record per row and interval at risk (``count:poisson``: the event indicator with
    :math:`\log` exposure as offset), the piecewise-exponential likelihood; then
    :math:`H(t \mid x) = \sum_k \lambda_k(x)\, |(e_k, e_{k+1}] \cap (0, t]|`.

    Parameters
    ----------
    interval_edges_days : sequence of float
        Increasing cut points starting at 0 (days since the landmark).
    n_estimators, learning_rate, max_depth, min_child_weight, subsample, colsample_bytree, reg_lambda, max_bin
        As :class:`XGBCoxSurvival`.
    n_jobs, random_state
        As :class:`XGBCoxSurvival`.
    clock_column : str or None
        Feature holding the landmark day (days since infusion). When it is a fitted column, each
        interval record also gets its start day since infusion (landmark day + interval start), so
        the hazard can follow the infusion clock the biology keeps (lineage switch two to six months
        after infusion, whatever the landmark) in one split. None, or a column not among the
        fitted features (``clock_index_`` is then None): the interval's start since the landmark
        only.
    """

    def __init__(self, *, interval_edges_days=(0.0, 14.0, 28.0, 42.0, 63.0, 91.0, 122.0, 152.0, 182.0, 243.0, 304.0,
                                                365.0, 456.0, 548.0, 730.0, 1095.0),
                 n_estimators=300, learning_rate=0.05, max_depth=3, min_child_weight=5.0, subsample=0.8,
                 colsample_bytree=0.8, reg_lambda=1.0, max_bin=64, n_jobs=1, random_state=0, clock_column=None):
        super().__init__(n_estimators=n_estimators, learning_rate=learning_rate, max_depth=max_depth,
                         min_child_weight=min_child_weight, subsample=subsample, colsample_bytree=colsample_bytree,
                         reg_lambda=reg_lambda, max_bin=max_bin, n_jobs=n_jobs, random_state=random_state)
        self.interval_edges_days = interval_edges_days
        self.clock_column = clock_column

    def __setstate__(self, state):
        """Unpickle; a model pickled before ``clock_column`` existed has no clock feature."""
        super().__setstate__({"clock_column": None, "clock_index_": None, **state})

    def _edges(self) -> np.ndarray:
        edges = np.asarray(self.interval_edges_days, dtype=float)
        if edges.size < 2 or edges[0] != 0.0 or np.any(np.diff(edges) <= 0):
            raise ValueError(f"interval_edges_days must start at 0 and increase, got {list(self.interval_edges_days)}")
        return edges

    def _interval_rows(self, X) -> np.ndarray:
        """Every row once per interval (interval-major), with the interval's start day appended (and,
        with a clock column, its start day since infusion)."""
        values = np.asarray(X, dtype=float)
        edges = self._edges()
        starts = np.repeat(edges, values.shape[0])
        columns = [np.tile(values, (edges.size, 1)), starts]
        if self.clock_index_ is not None:
            columns.append(np.tile(values[:, self.clock_index_], edges.size) + starts)
        return np.column_stack(columns)

    def _fit_clock(self, X) -> None:
        names = [str(name) for name in getattr(X, "columns", [])]
        self.clock_index_ = names.index(self.clock_column) if self.clock_column in names else None

    def fit(self, X, y):
        """Fit the booster on one record per row and interval at risk (Poisson, log-exposure offset)."""
        event, time = _survival_target(y)
        self._remember_features(X)
        self._fit_clock(X)
        edges = self._edges()
        upper = np.append(edges[1:], np.inf)
        expanded = self._interval_rows(X)
        interval = np.repeat(np.arange(edges.size), len(time))
        row_time, row_event = np.tile(time, edges.size), np.tile(event, edges.size)
        at_risk = row_time > edges[interval]
        exposure = np.minimum(row_time, upper[interval]) - edges[interval]
        label = row_event & (row_time <= upper[interval])
        # boosting starts from the crude event rate; the offset carries it explicitly (XGBoost adds no
        # base_score to rows that have a base margin) and prediction passes it back
        self.log_base_rate_ = float(np.log(max(label[at_risk].sum(), 1) / exposure[at_risk].sum()))
        matrix = xgb.DMatrix(expanded[at_risk], label=label[at_risk].astype(float), missing=np.nan)
        matrix.set_base_margin(np.log(exposure[at_risk]) + self.log_base_rate_)
        params = {**self._booster_params(), "objective": "count:poisson"}
        self.booster_ = xgb.train(params, matrix, num_boost_round=self.n_estimators)
        self.unique_times_ = np.unique(time)
        return self

    def margin(self, X) -> np.ndarray:
        """Log hazard per row and interval; shape (n_rows, len(interval_edges_days))."""
        self._check_fitted_columns(X)
        n_rows = np.shape(X)[0]
        rows = self._interval_rows(X)
        log_hazard = self.booster_.inplace_predict(rows, predict_type="margin", missing=np.nan,
                                                   base_margin=np.full(rows.shape[0], self.log_base_rate_))
        return np.asarray(log_hazard).reshape(self._edges().size, n_rows).T

    def predict(self, X) -> np.ndarray:
        """Cumulative hazard by one year (higher = riskier)."""
        return self.cumulative_hazard_at(X, np.array([365.0]))[:, 0]

    def cumulative_hazard_at(self, X, times) -> np.ndarray:
        """Cumulative hazard of every row at ``times``; shape (n_rows, n_times)."""
        edges = self._edges()
        upper = np.append(edges[1:], np.inf)
        times = np.asarray(times, dtype=float)
        overlap = np.clip(times[:, None], edges[None, :], upper[None, :]) - edges[None, :]
        return np.exp(self.margin(X)) @ overlap.T


def _step_values(x: np.ndarray, y: np.ndarray, times: np.ndarray) -> np.ndarray:
    index = np.searchsorted(x, times, side="right") - 1
    return np.where(index >= 0, y[np.clip(index, 0, None)], 0.0)


def cumulative_hazard_on_grid(estimator, X, grid: np.ndarray) -> np.ndarray:
    """Cumulative hazard of every row of ``X`` at the ``grid`` times; shape (n_rows, len(grid)).

    Parameters
    ----------
    estimator : fitted estimator or Pipeline
        Its last step either has ``cumulative_hazard_at(X, times)`` (the XGBoost estimators of this
        module) or scikit-survival's ``predict_cumulative_hazard_function(X, return_array=True)``
        with ``unique_times_``; the latter is a step function, read at the last jump <= each time.
    X : array-like
    grid : ndarray
        Increasing times.
    """
    final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    Xt = _transform_to_last_step(estimator, X) if isinstance(estimator, Pipeline) else X
    if hasattr(final, "cumulative_hazard_at"):
        return final.cumulative_hazard_at(Xt, grid)
    baseline = _cox_baseline(final, np.shape(Xt)[1])
    if baseline is not None:
        times, hazard = baseline
        return np.exp(_risk_score(final, Xt))[:, None] * _step_values(times, hazard, grid)[None, :]
    values = _forest_cumulative_hazard(final, Xt) if isinstance(final, RandomSurvivalForest) \
        else final.predict_cumulative_hazard_function(Xt, return_array=True)
    index = np.searchsorted(final.unique_times_, grid, side="right") - 1
    return np.where(index[None, :] >= 0, values[:, np.clip(index, 0, None)], 0.0)
