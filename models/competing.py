r"""Competing risks: cumulative incidence of relapse by phenotype, with death and HSCT competing.

Method: cause-specific hazards for relapse (any phenotype), death and HSCT, each from its own
survival estimator fitted with the other causes censored, and a phenotype model for the share
of each phenotype among relapses at time t:

.. math::

    h_k(t \mid x) = h_\text{relapse}(t \mid x)\, \pi_k(x, t), \qquad
    \pi_k(x, t) = P(\text{phenotype } k \mid \text{relapse at } t, x).

This is an identity, not an approximation: any set of phenotype-specific hazards can be written
this way. It is preferred over one hazard model per phenotype because

- the relapse endpoint, the primary target, is fitted on *all* relapses at once; lineage switch
  (about 7% of relapses) would otherwise get a hazard model from a handful of events;
- relapses with unknown phenotype (``relapse_unknown``) count fully in the relapse hazard and are
  left out only of the phenotype model (phenotype missing at random given x and t);
- one relapse hazard model is what the SHAP explanations (models.explain) explain;
- it costs three survival fits per model instead of five.

One exception is optional (``lineage_switch_estimator``): lineage switch may get a hazard of its
own, and the phenotype model then splits the other relapses into CD19-positive and CD19-negative.
Lineage switch is a different process with its own clock (a myeloid escape, mostly in KMT2A, two
to six months after infusion); inside one relapse hazard a model with one time shape for every
patient (the log-normal AFT) puts a KMT2A patient's relapses too late, when the lineage-switch
share has fallen, and reports part of that patient's lineage-switch risk as CD19 relapse
(docs/models.md, "Where it is wrong in a way that does not average out: KMT2A").

The phenotype model is a multinomial classifier on the features plus the time of relapse since
the landmark and (when the features hold the landmark day, ``landmark_column``) since infusion,
so the mix may change with time (CD19-negative escape and lineage switch early while the CAR
persists, CD19-positive relapse after CAR loss) on the clock the biology keeps: a lineage switch
two months after a day-182 landmark is eight months after infusion, when it no longer happens.

Combination on a common time grid :math:`0 < t_1 < \dots < t_m` (multiples of
``time_resolution_days``): with :math:`\Delta H_{c,j}` the increment of cause c's cumulative
hazard on :math:`(t_{j-1}, t_j]` and :math:`\Delta H_j = \sum_c \Delta H_{c,j}`,

.. math::

    S(t_j) = S(t_{j-1})\, e^{-\Delta H_j}, \qquad
    F_c(t_j) = F_c(t_{j-1}) + S(t_{j-1}) \big(1 - e^{-\Delta H_j}\big)
        \frac{\Delta H_{c,j}}{\Delta H_j},

the exact solution for hazards constant within each interval. By construction
:math:`S + \sum_c F_c = 1` at every grid time; between grid times the curves are interpolated
linearly, which keeps the sum.

HSCT: the landmark set already encodes the policy (``FeaturesConfig.hsct``): as a competing
event (``hsct``) or as censoring (``none``). Without HSCT events the HSCT hazard is zero and
``cif_hsct`` is 0.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data
from sksurv.functions import StepFunction
from sksurv.util import Surv, check_y_survival

from models.base import (
    CAUSES,
    PHENOTYPE_CAUSES,
    RELAPSE_EVENTS,
    ModelInputError,
    check_features,
    check_target,
    cif_column,
    event_free_column,
    relapse_column,
)
from models.metrics import Outcome, harrell_c
from models.survival import batch_invariant_dot, cumulative_hazard_on_grid

__all__ = ["CIFCurves", "CauseSpecificHazardsModel", "cif_frame", "default_phenotype_classifier", "read_curve"]

_HAZARD_CAUSES: dict[str, tuple[str, ...]] = {"relapse": RELAPSE_EVENTS, "death": ("death",), "hsct": ("hsct",)}
_LINEAGE_SWITCH, _LINEAGE_SWITCH_HAZARD = "relapse_lineage_switch", "lineage_switch"
_RELAPSE_TIME_FEATURE = "relapse_time_log1p_days"
_RELAPSE_DAY_FEATURE = "relapse_day_since_infusion_log1p"
_RELAPSE_DAY_QUANTILES = (0.2, 0.4, 0.6, 0.8)
"""Knots of the phenotype model's spline in the relapse day since infusion: these quantiles of the
training relapse days (of known phenotype)."""
_ALL_ZERO_MESSAGE = "all coefficients are zero"  # scikit-survival's Coxnet: an intercept-only fit


@dataclass(frozen=True)
class CIFCurves:
    """Cumulative incidence curves of many rows on one time grid.

    Attributes
    ----------
    times : ndarray, shape (m,)
        Grid in days from the landmark, starting at 0.
    cif : dict of str -> ndarray, shape (n, m)
        Per cause of :data:`models.base.CAUSES`.
    event_free : ndarray, shape (n, m)
    """

    times: np.ndarray
    cif: dict[str, np.ndarray]
    event_free: np.ndarray

    @property
    def relapse(self) -> np.ndarray:
        """Cumulative incidence of relapse, all phenotypes."""
        return np.sum([self.cif[cause] for cause in PHENOTYPE_CAUSES], axis=0)

    def at(self, horizon_days: float) -> dict[str, np.ndarray]:
        """Every curve read at ``horizon_days`` (linear between grid times, flat after the last)."""
        values = {cause: read_curve(self.times, curve, horizon_days) for cause, curve in self.cif.items()}
        values["relapse"] = np.sum([values[cause] for cause in PHENOTYPE_CAUSES], axis=0)
        values["event_free"] = read_curve(self.times, self.event_free, horizon_days)
        return values


def read_curve(times: np.ndarray, curves: np.ndarray, horizon_days: float) -> np.ndarray:
    """Curves (n, len(times)) read at ``horizon_days``: linear between grid times, flat after the last.

    Parameters
    ----------
    times : ndarray
        Increasing grid, days since the landmark.
    curves : ndarray (n, len(times))
        One curve per row on that grid.
    horizon_days : float
        Where to read them.

    Returns
    -------
    ndarray (n,)
    """
    position = np.interp(horizon_days, times, np.arange(times.size))
    low = int(np.floor(position))
    high = min(low + 1, times.size - 1)
    weight = position - low
    return curves[:, low] * (1.0 - weight) + curves[:, high] * weight


def default_phenotype_classifier() -> Pipeline:
    """Multinomial logistic regression with median imputation (plus missingness flags) and scaling."""
    return Pipeline([
        ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
        ("scale", StandardScaler()),
        ("classify", LogisticRegression(C=0.5, max_iter=2000)),
    ])


class CauseSpecificHazardsModel(BaseEstimator):
    """Relapse-by-phenotype cumulative incidence from cause-specific hazards (see module docstring).

    Parameters
    ----------
    survival_estimator : estimator
        Unfitted single-outcome survival estimator (usually a Pipeline from
        :func:`models.factory.make_survival_estimator`), cloned once per cause. It must accept a
        scikit-survival structured target and expose cumulative hazards (see
        :func:`models.survival.cumulative_hazard_on_grid`).
    phenotype_classifier : classifier, optional
        Unfitted classifier with ``predict_proba``; default :func:`default_phenotype_classifier`.
    time_resolution_days : float or None
        Event times are rounded to this resolution before fitting (fewer distinct times make the
        forests and boosted models much faster); the curves live on its multiples. None keeps the
        observed times.
    risk_horizon_days : float
        Horizon of the relapse incidence returned by :meth:`predict`.
    phenotype_time_knots : int
        Times at which the phenotype shares are computed, interpolated linearly in between.
    background_rows : int
        Training rows kept as ``background_`` (reference sample of the SHAP explanations).
    landmark_column : str or None
        Feature holding the landmark day (days since infusion); when present the phenotype model
        also gets the relapse day since infusion. None, or a column not in ``X``: time since the
        landmark only.
    lineage_switch_estimator : estimator or None
        Unfitted single-outcome survival estimator (as ``survival_estimator``) for a hazard of
        lineage switch of its own; the ``relapse`` hazard then covers the other relapses (and those
        of unknown phenotype) and the phenotype model splits them into CD19-positive and
        CD19-negative. None: lineage switch is a share of the one relapse hazard.

    Notes
    -----
    Inputs, as scikit-learn and scikit-survival estimators take them:

    - ``X``: a DataFrame of numbers (the pipeline's path: columns are matched by name at predict
      time), or a 2-D array (columns by position; named ``x0, x1, ...`` inside). NaN means missing
      (the hazard models impute it); infinite values, complex numbers and sparse matrices are refused.
    - ``y``: a DataFrame with ``time`` and ``event`` (every cause of :data:`models.base.EVENT_VALUES`),
      or a scikit-survival structured array (``Surv.from_arrays(event, time)``), read as relapse
      of unknown phenotype (event) versus censored, with no competing event: the relapse incidence
      (``predict``, ``cif_relapse_*``) is then the complement of the relapse-free survival, and the
      phenotype columns split it in equal thirds (no phenotype was observed).

    Attributes
    ----------
    hazard_models_ : dict of str -> fitted estimator or None
        Per hazard cause (``relapse``, ``death``, ``hsct``, and ``lineage_switch`` with a
        ``lineage_switch_estimator``); None without events (zero hazard).
    phenotype_model_ : fitted classifier or None
        None when fewer than two phenotypes were seen (shares = ``phenotype_prior_``).
    fit_notes_ : dict of str -> str
        Per cause, what was unusual about its fit (no events; a penalised Cox model that kept no
        feature, which scikit-survival reports as a warning and is recorded here instead).
    time_grid_ : ndarray
        Grid of the curves (days from the landmark).
    background_ : DataFrame
        A random sample of the training features (SHAP reference rows).
    """

    def __init__(self, survival_estimator=None, *, phenotype_classifier=None, time_resolution_days=7.0,
                 risk_horizon_days=365.0, phenotype_time_knots=8, background_rows=100,
                 landmark_column="landmark_day", lineage_switch_estimator=None):
        self.survival_estimator = survival_estimator
        self.phenotype_classifier = phenotype_classifier
        self.time_resolution_days = time_resolution_days
        self.risk_horizon_days = risk_horizon_days
        self.phenotype_time_knots = phenotype_time_knots
        self.background_rows = background_rows
        self.landmark_column = landmark_column
        self.lineage_switch_estimator = lineage_switch_estimator

    def __setstate__(self, state):
        """Unpickle; a model pickled before ``landmark_column`` existed (its phenotype model was fitted
        on the time since the landmark only) keeps that behaviour, and one pickled before
        ``lineage_switch_estimator`` existed has none, so registered models still load."""
        if "hazard_models_" in state and "landmark_column" not in state:
            state = {**state, "landmark_column": None, "relapse_day_knots_": np.array([])}
        state = {"lineage_switch_estimator": None, **state}
        super().__setstate__(state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaN = missing, imputed by the hazard models
        tags.target_tags.required = True
        return tags

    # ------------------------------------------------------------------ fitting
    def fit(self, X: pd.DataFrame | np.ndarray, y: pd.DataFrame | np.ndarray) -> CauseSpecificHazardsModel:
        """Fit the three cause-specific hazard models and the phenotype model.

        Parameters
        ----------
        X : DataFrame or array of shape (n, p)
            Float features (NaN = missing); see the class notes for arrays.
        y : DataFrame or structured array
            ``time`` (days from the landmark, > 0) and ``event`` (see models.base.EVENT_VALUES),
            or a scikit-survival ``Surv`` array (event = relapse, see the class notes).
        """
        if self.survival_estimator is None:
            raise ModelInputError("survival_estimator is required (build one with models.make_model)")
        X = self._fit_features(X)
        time, event = _target_arrays(y)
        if len(X) != len(time):
            raise ModelInputError(f"features have {len(X)} rows but the target has {len(time)}")
        time = self._rounded(time)
        self.time_grid_ = self._grid(time)
        self.fit_notes_: dict[str, str] = {}
        self.hazard_models_ = {cause: self._fit_hazard(X, time, np.isin(event, members), cause)
                               for cause, members in self._hazard_causes().items()}
        self._fit_phenotype_model(X, time, event)
        self.background_ = X.sample(n=min(len(X), self.background_rows), random_state=0)
        return self

    def _fit_features(self, X) -> pd.DataFrame:
        """Training features as a float DataFrame; sets ``n_features_in_`` (and ``feature_names_in_``
        for a DataFrame)."""
        if isinstance(X, pd.DataFrame):  # the pipeline's path, as before
            X = check_features(X)
            self.feature_names_in_ = np.asarray(X.columns, dtype=object)
            self.n_features_in_ = X.shape[1]
            return X
        values = validate_data(self, X, reset=True, dtype=np.float64, ensure_all_finite="allow-nan", ensure_min_samples=2)
        return pd.DataFrame(values, columns=_positional_names(values.shape[1]))

    def _features(self, X) -> pd.DataFrame:
        """Features to predict from, as the float DataFrame of the fitted columns."""
        names = getattr(self, "feature_names_in_", None)
        if isinstance(X, pd.DataFrame) and names is not None:
            return check_features(X, names)  # the pipeline's path (serving): by name, as before
        check_is_fitted(self, "hazard_models_")
        values = validate_data(self, X, reset=False, dtype=np.float64, ensure_all_finite="allow-nan")
        return pd.DataFrame(values, columns=names if names is not None else _positional_names(values.shape[1]))

    def _rounded(self, time: np.ndarray) -> np.ndarray:
        if not self.time_resolution_days:
            return time
        step = float(self.time_resolution_days)
        return np.maximum(np.round(time / step), 1.0) * step

    def _grid(self, time: np.ndarray) -> np.ndarray:
        if not self.time_resolution_days:
            return np.unique(time)
        step = float(self.time_resolution_days)
        return np.arange(1, int(round(time.max() / step)) + 1) * step

    def _hazard_causes(self) -> dict[str, tuple[str, ...]]:
        """Hazard cause -> the event values it counts."""
        if self.lineage_switch_estimator is None:
            return _HAZARD_CAUSES
        others = tuple(event for event in RELAPSE_EVENTS if event != _LINEAGE_SWITCH)
        return {**_HAZARD_CAUSES, "relapse": others, _LINEAGE_SWITCH_HAZARD: (_LINEAGE_SWITCH,)}

    def _fit_hazard(self, X: pd.DataFrame, time: np.ndarray, is_event: np.ndarray, cause: str):
        if not is_event.any():
            self.fit_notes_[cause] = "no events: zero hazard"
            return None
        estimator = self.lineage_switch_estimator if cause == _LINEAGE_SWITCH_HAZARD else self.survival_estimator
        with warnings.catch_warnings(record=True) as caught:
            warnings.filterwarnings("always", message=_ALL_ZERO_MESSAGE, category=UserWarning)
            model = clone(estimator).fit(X, Surv.from_arrays(is_event, time))
        for warning in caught:
            if re.match(_ALL_ZERO_MESSAGE, str(warning.message)):
                self.fit_notes_[cause] = "penalised Cox kept no feature: hazard does not depend on x"
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return model

    def _fit_phenotype_model(self, X: pd.DataFrame, time: np.ndarray, event: np.ndarray) -> None:
        known = np.isin(event, self._split_phenotypes())
        relapse_times = time[np.isin(event, RELAPSE_EVENTS)]
        knots_from = relapse_times if relapse_times.size else self.time_grid_
        self.phenotype_knots_ = np.unique(np.quantile(knots_from, np.linspace(0, 1, self.phenotype_time_knots)))
        labels = event[known]
        day = self._relapse_day_since_infusion(self._landmark_days(X[known]), time[known])
        self.relapse_day_knots_ = np.unique(np.round(np.quantile(day, _RELAPSE_DAY_QUANTILES))) \
            if day is not None and day.size else np.array([])
        split = self._split_phenotypes()
        self.phenotype_prior_ = np.array([(labels == cause).mean() if labels.size else float(cause in split) / len(split)
                                          for cause in PHENOTYPE_CAUSES])
        if np.unique(labels).size < 2:
            self.phenotype_model_ = None
            return
        model = clone(self.phenotype_classifier) if self.phenotype_classifier is not None \
            else default_phenotype_classifier()
        self.phenotype_model_ = model.fit(self._with_relapse_time(X[known], time[known]), labels)

    def _split_phenotypes(self) -> tuple[str, ...]:
        """Phenotypes the phenotype model splits the ``relapse`` hazard into."""
        if self.lineage_switch_estimator is None:
            return PHENOTYPE_CAUSES
        return tuple(cause for cause in PHENOTYPE_CAUSES if cause != _LINEAGE_SWITCH)

    def _landmark_days(self, X: pd.DataFrame) -> np.ndarray | None:
        if self.landmark_column is None or self.landmark_column not in X.columns:
            return None
        return X[self.landmark_column].to_numpy(dtype=float)

    @staticmethod
    def _relapse_day_since_infusion(landmark_days: np.ndarray | None, time: np.ndarray) -> np.ndarray | None:
        return None if landmark_days is None else landmark_days + np.asarray(time, dtype=float)

    def _relapse_time_features(self, landmark_days: np.ndarray | None, time: np.ndarray) -> dict[str, np.ndarray]:
        """The phenotype model's time features of relapses at ``time`` days after each row's landmark
        (``landmark_days``: per row, or None without a landmark column): log days since the landmark
        and, with landmark days, a linear spline in log days since infusion (knots
        ``relapse_day_knots_``), so a phenotype's share can rise and fall again."""
        time = np.asarray(time, dtype=float)
        features = {_RELAPSE_TIME_FEATURE: np.log1p(time)}
        day = self._relapse_day_since_infusion(landmark_days, time)
        if day is not None:
            log_day = np.log1p(day)
            features[_RELAPSE_DAY_FEATURE] = log_day
            for knot in self.relapse_day_knots_:
                features[f"{_RELAPSE_DAY_FEATURE}_after_{knot:g}d"] = np.maximum(log_day - np.log1p(knot), 0.0)
        return features

    def _with_relapse_time(self, X: pd.DataFrame, time: np.ndarray) -> pd.DataFrame:
        return X.assign(**self._relapse_time_features(self._landmark_days(X), time))

    # --------------------------------------------------------------- prediction
    def _hazard_increments(self, X: pd.DataFrame, grid: np.ndarray) -> dict[str, np.ndarray]:
        """Per hazard cause, the cumulative-hazard increment on each grid interval; shape (n, len(grid))."""
        increments = {}
        for cause, model in self.hazard_models_.items():
            if model is None:
                increments[cause] = np.zeros((len(X), grid.size))
                continue
            cumulative = np.maximum.accumulate(np.maximum(cumulative_hazard_on_grid(model, X, grid), 0), axis=1)
            increments[cause] = np.diff(cumulative, axis=1, prepend=0.0)
        return increments

    @staticmethod
    def _incidence_weights(increments: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Event-free probability at each grid time and the factor turning a cause's hazard
        increment into its incidence increment, S(t_{j-1}) (1 - exp(-dH_j)) / dH_j."""
        total = np.sum(list(increments.values()), axis=0)
        event_free = np.exp(-np.cumsum(total, axis=1))
        before = np.concatenate([np.ones((total.shape[0], 1)), event_free[:, :-1]], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            factor = np.where(total > 0, before * -np.expm1(-total) / total, 0.0)
        return event_free, factor

    def phenotype_shares(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Share of each phenotype among relapses at each grid time; shape (n, 3, len(time_grid_))."""
        check_is_fitted(self, "hazard_models_")
        return self._phenotype_shares(self._features(X))

    def _phenotype_shares(self, X: pd.DataFrame) -> np.ndarray:
        knots = self.phenotype_knots_
        if self.phenotype_model_ is None:
            at_knots = np.broadcast_to(self.phenotype_prior_[None, :, None], (len(X), 3, knots.size))
        else:
            at_knots = self._shares_at_knots(X, knots)
        grid_index = np.interp(self.time_grid_, knots, np.arange(knots.size))
        low = np.floor(grid_index).astype(int)
        high = np.minimum(low + 1, knots.size - 1)
        weight = grid_index - low
        return at_knots[:, :, low] * (1.0 - weight) + at_knots[:, :, high] * weight

    def _shares_at_knots(self, X: pd.DataFrame, knots: np.ndarray) -> np.ndarray:
        """Phenotype shares at each knot relapse time; shape (n, 3, len(knots)).

        One ``predict_proba`` call on the rows repeated once per knot (knot-major), instead of one
        call per knot: the classifier's per-call overhead (input checks) dominates for few rows,
        and each row's probabilities do not depend on the other rows of the call.
        """
        n_rows = len(X)
        tiled = np.tile(X.to_numpy(dtype=float), (knots.size, 1))
        times = np.repeat(knots, n_rows)
        landmark_days = self._landmark_days(X)
        time_features = self._relapse_time_features(
            None if landmark_days is None else np.tile(landmark_days, knots.size), times)
        probabilities = _plain_predict_proba(  # the values _with_relapse_time gives, as a matrix
            self.phenotype_model_, np.column_stack([tiled, *time_features.values()]), [*X.columns, *time_features],
        )
        if probabilities is None:
            stacked = pd.DataFrame(tiled, columns=X.columns)
            probabilities = _predict_proba(self.phenotype_model_, stacked.assign(**time_features))
        shares = np.zeros((knots.size, n_rows, len(PHENOTYPE_CAUSES)))
        assert self.phenotype_model_ is not None  # callers check: no phenotype model -> fixed shares
        for column, label in enumerate(self.phenotype_model_.classes_):
            shares[:, :, PHENOTYPE_CAUSES.index(label)] = probabilities[:, column].reshape(knots.size, n_rows)
        return shares.transpose(1, 2, 0)

    def predict_cif_curves(self, X: pd.DataFrame) -> CIFCurves:
        """Cumulative incidence of every cause and the event-free probability on ``[0, time_grid_]``.

        Parameters
        ----------
        X : DataFrame

        Returns
        -------
        CIFCurves
        """
        check_is_fitted(self, "hazard_models_")
        X = self._features(X)
        increments = self._hazard_increments(X, self.time_grid_)
        event_free, factor = self._incidence_weights(increments)
        shares = self._phenotype_shares(X)
        cif = {cause: np.cumsum(factor * increments["relapse"] * shares[:, k], axis=1)
               for k, cause in enumerate(PHENOTYPE_CAUSES)}
        if _LINEAGE_SWITCH_HAZARD in increments:
            cif[_LINEAGE_SWITCH] = np.cumsum(factor * increments[_LINEAGE_SWITCH_HAZARD], axis=1)
        cif.update({cause: np.cumsum(factor * increments[cause], axis=1) for cause in ("death", "hsct")})
        zeros = np.zeros((len(X), 1))
        return CIFCurves(times=np.concatenate([[0.0], self.time_grid_]),
                         cif={cause: np.hstack([zeros, cif[cause]]) for cause in CAUSES},
                         event_free=np.hstack([zeros + 1.0, event_free]))

    def predict_relapse_incidence(self, X: pd.DataFrame, horizon_days: float) -> np.ndarray:
        """Cumulative incidence of relapse (all phenotypes) at one horizon, computed on the grid up
        to that horizon only and without the phenotype model (the fast path used by
        :meth:`predict` and the SHAP explanations); equal to ``predict_cif``'s ``cif_relapse``."""
        check_is_fitted(self, "hazard_models_")
        X = self._features(X)
        grid = self.time_grid_[: np.searchsorted(self.time_grid_, horizon_days, side="left") + 1]
        increments = self._hazard_increments(X, grid)
        _, factor = self._incidence_weights(increments)
        relapse_increments = increments["relapse"] + increments.get(_LINEAGE_SWITCH_HAZARD, 0.0)
        relapse = np.hstack([np.zeros((len(X), 1)), np.cumsum(factor * relapse_increments, axis=1)])
        return read_curve(np.concatenate([[0.0], grid]), relapse, horizon_days)

    def predict_cif(self, X: pd.DataFrame, horizons_days: Sequence[float]) -> pd.DataFrame:
        """Cumulative incidences at each horizon (columns: see models.base.cif_columns).

        Parameters
        ----------
        X : DataFrame
        horizons_days : sequence of float
            Days from the landmark; beyond the last training time the curves stay flat.

        Returns
        -------
        DataFrame
            Indexed like ``X``: ``cif_{cause}_{h}d`` for every cause, ``cif_relapse_{h}d``,
            ``event_free_{h}d``; per row and horizon the causes and event-free sum to 1.
        """
        curves = self.predict_cif_curves(X)
        return cif_frame(curves, horizons_days, X.index if isinstance(X, pd.DataFrame) else pd.RangeIndex(len(curves.event_free)))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Cumulative incidence of relapse at ``risk_horizon_days`` (the relapse risk score)."""
        return self.predict_relapse_incidence(X, self.risk_horizon_days)

    def score(self, X: pd.DataFrame | np.ndarray, y: pd.DataFrame | np.ndarray) -> float:
        """Harrell's concordance of the relapse risk (:meth:`predict`) with the observed relapses.

        The competing-risks concordance of the evaluation (:func:`models.metrics.harrell_c`,
        Wolbers et al. 2009): a relapse at :math:`T_i` before ``risk_horizon_days`` is a case; it
        is compared with every row still event-free after :math:`T_i` and with every row that had
        a competing event (death, HSCT) at or before :math:`T_i`; ties in risk count one half.
        For a scikit-survival ``Surv`` target (no competing event) it equals scikit-survival's
        ``concordance_index_censored`` with events after the horizon counted as censored.

        Parameters
        ----------
        X : DataFrame or array of shape (n, p)
        y : DataFrame or structured array
            As for :meth:`fit`.

        Returns
        -------
        float
            0.5 for a random ranking, 1 for a perfect one.
        """
        time, event = _target_arrays(y)
        return float(harrell_c(Outcome.from_events(time, event), self.predict(X), tau=self.risk_horizon_days))

    def predict_survival_function(self, X: pd.DataFrame, return_array: bool = False):
        """Event-free probability (no relapse, death or HSCT) at ``unique_times_``."""
        curves = self.predict_cif_curves(X)
        values = curves.event_free[:, 1:]
        if return_array:
            return values
        return np.array([StepFunction(self.time_grid_, row) for row in values], dtype=object)

    @property
    def unique_times_(self) -> np.ndarray:
        """The time grid of the curves (days from the landmark)."""
        check_is_fitted(self, "time_grid_")
        return self.time_grid_

    @property
    def relapse_hazard_model_(self):
        """The fitted single-outcome model of the relapse hazard (any phenotype; with a
        ``lineage_switch_estimator``, the relapses other than lineage switch), or None."""
        check_is_fitted(self, "hazard_models_")
        return self.hazard_models_["relapse"]


def _positional_names(n_columns: int) -> list[str]:
    """Column names of features given as an array: ``x0, x1, ...``."""
    return [f"x{position}" for position in range(n_columns)]


def _target_arrays(y) -> tuple[np.ndarray, np.ndarray]:
    """``time`` and ``event`` (strings of :data:`models.base.EVENT_VALUES`) of a target frame or of a
    scikit-survival structured array (event -> ``relapse_unknown``, censored -> ``none``)."""
    if y is None:
        raise ValueError("CauseSpecificHazardsModel requires y to be passed, but the target y is None")
    if isinstance(y, np.ndarray) and y.dtype.names is not None:
        is_event, time = check_y_survival(y)
        y = pd.DataFrame({"time": time, "event": np.where(is_event, "relapse_unknown", "none")})
    elif not isinstance(y, pd.DataFrame):
        raise ModelInputError("target must be a DataFrame with columns time, event or a scikit-survival structured "
                              f"array (sksurv.util.Surv.from_arrays(event, time)); got {type(y).__name__}")
    return check_target(y)


def _impute(imputer: SimpleImputer, X: np.ndarray) -> np.ndarray | None:
    """``SimpleImputer.transform`` (NaN as missing, dense output) in numpy; None when not that case."""
    statistics = imputer.statistics_
    if not (isinstance(imputer.missing_values, float) and np.isnan(imputer.missing_values)) \
            or X.shape[1] != statistics.shape[0] or statistics.dtype != np.float64:
        return None
    if not imputer.keep_empty_features and np.isnan(statistics).any():
        return None  # sklearn drops those columns, with a warning
    missing = np.isnan(X)
    imputed = np.where(missing, statistics[None, :], X)
    if not imputer.add_indicator:
        return imputed
    indicator = imputer.indicator_
    if indicator.sparse is True:
        return None
    flags = missing[:, indicator.features_] if indicator.features_.size < X.shape[1] else missing
    return np.hstack((imputed, flags))


def _scale(scaler: StandardScaler, X: np.ndarray) -> np.ndarray | None:
    """``StandardScaler.transform`` in numpy (same operations, same order); None when not that case."""
    if X.shape[1] != scaler.n_features_in_:
        return None
    if scaler.with_mean:
        X = X - scaler.mean_
    if scaler.with_std:
        X = X / scaler.scale_
    return X


_PLAIN_STEPS = {SimpleImputer: _impute, StandardScaler: _scale}


def plain_transform(steps: Pipeline, X: pd.DataFrame) -> np.ndarray | None:
    """The transform of fitted ``steps`` computed directly in numpy, bit for bit, or None.

    For a few rows, scikit-learn's per-call input checks cost far more than the arithmetic (about
    2 ms per phenotype call when scoring one patient). Handled: a chain of ``SimpleImputer``
    (NaN as missing, with or without missingness indicators) and ``StandardScaler`` steps fed a
    float frame with exactly the fitted columns and no infinite value. Anything else returns None,
    and the caller uses the pipeline itself (which also raises its own errors).

    Precondition: the steps were fitted on float64 data. A ``SimpleImputer`` fitted on float32
    fills in float32, and no public attribute tells; :class:`CauseSpecificHazardsModel` always fits
    its phenotype classifier on float64 features (``check_features``), which a test pins.

    Parameters
    ----------
    steps : Pipeline
        Fitted transformers (e.g. a classifier pipeline without its final step).
    X : DataFrame
        Features.

    Returns
    -------
    ndarray or None
    """
    if not all(dtype == np.float64 for dtype in X.dtypes):
        return None
    return _plain_transform_matrix(steps, X.to_numpy(dtype=float), list(X.columns))


def _plain_transform_matrix(steps: Pipeline, values: np.ndarray, columns: list) -> np.ndarray | None:
    """:func:`plain_transform` of a float matrix whose columns are named ``columns``."""
    names = getattr(steps.steps[0][1], "feature_names_in_", None)
    if names is None or len(names) != len(columns) or list(names) != columns or np.isinf(values).any():
        return None
    transformed: np.ndarray | None = values
    for _, step in steps.steps:
        transform = _PLAIN_STEPS.get(type(step))
        if transform is None or transformed is None:
            return None
        transformed = transform(step, transformed)
    return transformed


def _predict_proba(classifier, X: pd.DataFrame) -> np.ndarray:
    """``predict_proba``; for a (pipeline ending in a) LogisticRegression the logits come from
    :func:`models.survival.batch_invariant_dot`, so a patient gets bit-identical probabilities
    alone and in a batch. Other classifiers use their own ``predict_proba``. (Scoring calls
    :func:`_plain_predict_proba` first, which does the same without scikit-learn's input checks.)"""
    final = classifier.steps[-1][1] if isinstance(classifier, Pipeline) else classifier
    if not isinstance(final, LogisticRegression):
        return classifier.predict_proba(X)
    Z = classifier[:-1].transform(X) if isinstance(classifier, Pipeline) and len(classifier.steps) > 1 else X
    return _logistic_proba(final, Z)


def _plain_predict_proba(classifier, values: np.ndarray, columns: list) -> np.ndarray | None:
    """:func:`_predict_proba` of a float matrix with named columns, without building a DataFrame,
    when the classifier is plain steps (:func:`plain_transform`) then a LogisticRegression; else None."""
    if not isinstance(classifier, Pipeline) or len(classifier.steps) < 2 \
            or not isinstance(classifier.steps[-1][1], LogisticRegression):
        return None
    Z = _plain_transform_matrix(classifier[:-1], values, columns)
    return None if Z is None else _logistic_proba(classifier.steps[-1][1], Z)


def _logistic_proba(final: LogisticRegression, Z) -> np.ndarray:
    logits = batch_invariant_dot(Z, final.coef_) + final.intercept_
    if logits.shape[1] == 1:
        positive = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return np.column_stack([1.0 - positive, positive])
    logits -= logits.max(axis=1, keepdims=True)
    odds = np.exp(logits)
    return odds / odds.sum(axis=1, keepdims=True)


def cif_frame(curves: CIFCurves, horizons_days: Sequence[float], index: pd.Index) -> pd.DataFrame:
    """The documented ``predict_cif`` layout from curves.

    Parameters
    ----------
    curves : CIFCurves
    horizons_days : sequence of float
        Horizons, days since the landmark.
    index : Index
        Index of the returned frame (the scored rows).

    Returns
    -------
    DataFrame
        Per horizon: each cause's incidence, the relapse total and the event-free probability.
    """
    columns = {}
    for horizon in horizons_days:
        values = curves.at(float(horizon))
        columns.update({cif_column(cause, horizon): values[cause] for cause in CAUSES})
        columns[relapse_column(horizon)] = values["relapse"]
        columns[event_free_column(horizon)] = values["event_free"]
    matrix = np.column_stack(list(columns.values())).astype(float, copy=False) if columns else np.empty((len(index), 0))
    return pd.DataFrame(matrix, index=index, columns=list(columns), copy=False)  # one float block
