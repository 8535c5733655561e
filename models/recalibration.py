r"""Post-hoc recalibration of every cause's cumulative incidence, fitted on out-of-fold predictions.

Why: the candidates rank patients well but their absolute risks drift by cause, horizon and
landmark (a log-normal AFT has no cure plateau, so it under-predicts early and over-predicts
late relapse; the Cox models over-predict some phenotypes). A clinician reads the absolute number.

**The map.** For each curve c (relapse of any phenotype, each phenotype, death, HSCT), each
landmark l and each knot horizon h, a logistic recalibration on the complementary log-log scale

.. math::  \operatorname{cloglog} \tilde F_c(h \mid x) = a_{c,l,h} + b_{c,l,h} \operatorname{cloglog} \hat F_c(h \mid x)

(for a phenotype, :math:`\hat F_c` is the *recalibrated* relapse incidence times the base
model's share of that phenotype: its map corrects the phenotype given the recalibrated relapse,
whose level and spread the split of step 3 passes on; fitted on the base phenotype curves
instead, the maps of relapse and phenotypes disagreed and the split compounded them, e.g. a
CD19-positive calibration slope of 1.12 where its own map gave 1.04)
is fitted by IPCW-weighted binomial maximum likelihood (:func:`models.calibration.cloglog_recalibration`,
the model whose slope is the reported calibration slope) on *out-of-fold* predictions: a
prediction enters the fit only if the model that made it never saw that patient. Partial
pooling keeps rare cells stable: per curve and knot, (a, b) are first fitted on all landmarks
together, shrunk towards no change (0, 1); each landmark's (a, b) are then shrunk towards those
pooled values, by a normal prior of standard deviations ``prior_sd`` (penalised likelihood). A
cell with hundreds of events keeps its own estimate; one with a handful (lineage switch at late
landmarks) mostly takes the pooled one. The fits are *centred*: per landmark, the intercept is
read at that landmark's mean predicted cloglog c (:math:`c + a + b(\cdot - c)`), so what a rare
cell borrows is the pooled calibration-in-the-large and spread at its own risk level. (Uncentred,
a pooled slope of 0.85 read at a cumulative hazard of 1 would multiply a landmark's 0.4% risks
by about 1.9.) The stored map is the same line written at cloglog 0 (intercept a + c(1 - b)).
Between knots (a, b) are interpolated linearly in time
(constant before the first and after the last knot), between landmarks linearly in the landmark
day (constant outside the fitted landmarks), so any prediction day gets a map.

**Keeping a competing-risks model.** Applied to whole curves on the model's time grid:

1. each recalibrated curve :math:`G_c(t) = 1 - \exp(-e^{a} \Lambda_c(t)^{b})`, with
   :math:`\Lambda_c = -\log(1 - \hat F_c)` (0 stays 0), is made non-decreasing in t (running
   maximum);
2. the relapse, death and HSCT increments on each grid interval are those of :math:`G`, scaled
   down on the rare interval where they would exceed the probability still event-free, so the
   causes plus the event-free probability sum to 1 and every curve stays non-decreasing;
3. the relapse curve is split among the phenotypes: at each time each phenotype's target is
   the relapse incidence times its share of the recalibrated phenotype curves (relapses of
   unknown phenotype, counted in relapse but in no phenotype, are thereby spread over the
   phenotypes as the model predicts them), and each interval's relapse increment goes to the
   phenotypes still below target, in proportion to their shortfall; so the phenotypes add up to
   the recalibrated relapse curve exactly and stay non-decreasing.

At each time the map is monotone (b > 0), so the relapse ranking within a landmark is kept but
for near-ties the running maximum of step 1 or the cap of step 2 may swap: Uno's C of relapse
stays the same to about 0.001.

**Without leakage.** :class:`RecalibratedModel` fits the map on out-of-fold predictions of a
grouped (by patient) inner cross-validation of its own training rows, then refits the model on
all of them; :func:`cross_validated_recalibrated_cif` scores it honestly by nested
cross-validation, reusing the outer folds as inner folds (for outer fold k, the map is fitted on
predictions for the other folds from models trained without fold k, so no row of fold k
influences its own map).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import GroupKFold
from sklearn.utils.validation import check_is_fitted

from models.base import (
    CAUSES,
    COMPETING_CAUSES,
    PHENOTYPE_CAUSES,
    ModelInputError,
    check_features,
    check_target,
    cif_columns,
)
from models.calibration import cloglog, cloglog_recalibration
from models.competing import CIFCurves, cif_frame, read_curve
from models.evaluation import endpoint_column
from models.metrics import ENDPOINT, Outcome

__all__ = [
    "RECALIBRATED_CURVES",
    "CIFRecalibrator",
    "RecalibratedModel",
    "cross_validated_recalibrated_cif",
]

RECALIBRATED_CURVES: tuple[str, ...] = ("relapse", *PHENOTYPE_CAUSES, *COMPETING_CAUSES)
"""The curves the map is fitted for, named as the endpoints of :mod:`models.metrics`."""
_MAIN_CURVES = ("relapse", *COMPETING_CAUSES)
_CHUNK_ROWS = 4096
"""Rows mapped at once (the map's parameters on the grid take curves x rows x grid times)."""


def _fit_cell(outcome: Outcome, cif: np.ndarray, horizon: float, prior_mean: tuple[float, float],
              prior_sd: tuple[float, float], centre: np.ndarray) -> tuple[float, float]:
    """Centred (a, b) of one curve at one knot on some rows, shrunk towards ``prior_mean``; the
    prior mean itself when the fit fails or gives a slope that is not positive."""
    intercept, slope = cloglog_recalibration(outcome, cif, horizon, prior_mean=prior_mean, prior_sd=prior_sd,
                                             centre=centre)
    return (intercept, slope) if np.isfinite(intercept) and np.isfinite(slope) and slope > 0 else prior_mean


class CIFRecalibrator(BaseEstimator):
    """The map of the module docstring: per curve, landmark and knot, cloglog intercept and slope.

    Parameters
    ----------
    knots_days : sequence of float
        Horizons (days since the landmark) at which the map is fitted.
    prior_sd : (float, float)
        Standard deviations of the normal priors on intercept and slope: of the pooled
        parameters around no change (0, 1), and of each landmark's around the pooled ones.

    Attributes
    ----------
    landmarks_ : ndarray
        Landmark days of the fitting rows (sorted).
    intercept_, slope_ : ndarray, shape (len(RECALIBRATED_CURVES), len(landmarks_), len(knots_days))
        Per curve, landmark and knot: the map, intercept read at cloglog 0.
    centre_ : ndarray, shape of ``intercept_``
        The landmark's mean out-of-fold cloglog prediction, where the fits read their intercepts.
    pooled_intercept_, pooled_slope_ : ndarray, shape (len(RECALIBRATED_CURVES), len(knots_days))
        Fitted on every landmark together, centred (what each landmark is shrunk towards).
    n_events_ : ndarray of int, shape of ``intercept_``
        Endpoint events by the knot in the cell's rows (how much the cell could say on its own).
    """

    def __init__(self, *, knots_days: Sequence[float] = (182.0, 365.0, 730.0),
                 prior_sd: tuple[float, float] = (0.5, 0.25)):
        self.knots_days = knots_days
        self.prior_sd = prior_sd

    def __setstate__(self, state):
        """Unpickle; a map fitted before the fits were centred has no ``centre_``: its intercepts are
        read at cloglog 0, i.e. centre 0."""
        if "intercept_" in state and "centre_" not in state:
            state = {**state, "centre_": np.zeros_like(state["intercept_"])}
        super().__setstate__(state)

    def fit(self, predictions: pd.DataFrame, y: pd.DataFrame, landmark_days: ArrayLike) -> CIFRecalibrator:
        """Fit the map on out-of-fold predictions.

        Parameters
        ----------
        predictions : DataFrame
            ``predict_cif`` layout with (at least) the columns of every knot, one row per target row.
        y : DataFrame
            ``time`` and ``event`` of the same rows.
        landmark_days : sequence of float
            Landmark day of every row.

        Returns
        -------
        CIFRecalibrator
        """
        knots = self._knots()
        time, event = check_target(y)
        landmarks = np.asarray(landmark_days, dtype=float)
        needed = [endpoint_column(curve, h) for curve in RECALIBRATED_CURVES for h in knots]
        missing = [column for column in needed if column not in predictions.columns]
        if missing:
            raise ModelInputError(f"recalibration: predictions lack column(s) {missing[:5]}")
        if not (len(predictions) == time.size == landmarks.size) or not np.isfinite(landmarks).all():
            raise ModelInputError("recalibration: predictions, target and landmark days must be rows of one set")
        self.landmarks_ = np.unique(landmarks)
        shape = (len(RECALIBRATED_CURVES), self.landmarks_.size, knots.size)
        self.intercept_, self.slope_, self.n_events_ = np.zeros(shape), np.ones(shape), np.zeros(shape, dtype=int)
        self.pooled_intercept_, self.pooled_slope_ = np.zeros(shape[::2]), np.ones(shape[::2])
        self.centre_ = np.zeros(shape)
        row_landmark = np.searchsorted(self.landmarks_, landmarks)
        phenotype_inputs: dict[int, dict[str, np.ndarray]] = {}  # per knot, after relapse is fitted
        for c, curve in enumerate(RECALIBRATED_CURVES):
            outcome = Outcome.from_events(time, event, curve)
            for k, horizon in enumerate(knots):
                # the phenotypes' maps see the recalibrated relapse split by the base shares
                cif = phenotype_inputs[k][curve] if curve in PHENOTYPE_CAUSES \
                    else predictions[endpoint_column(curve, horizon)].to_numpy(float)
                self._fit_knot(c, k, outcome, cif, horizon, landmarks)
                if curve == "relapse":
                    relapse = _mapped(cif, self.intercept_[c, row_landmark, k], self.slope_[c, row_landmark, k])
                    phenotype_inputs[k] = _phenotype_inputs(relapse, {
                        cause: predictions[endpoint_column(cause, horizon)].to_numpy(float) for cause in PHENOTYPE_CAUSES})
        return self

    def _knots(self) -> np.ndarray:
        knots = np.asarray(self.knots_days, dtype=float)
        if knots.size == 0 or np.any(knots <= 0) or np.any(np.diff(knots) <= 0):
            raise ModelInputError(f"recalibration: knots_days must be increasing and > 0, got {list(self.knots_days)}")
        return knots

    def _fit_knot(self, c: int, k: int, outcome: Outcome, cif: np.ndarray, horizon: float,
                  landmarks: np.ndarray) -> None:
        prior_sd = (float(self.prior_sd[0]), float(self.prior_sd[1]))
        centres = np.array([cloglog(cif[landmarks == landmark]).mean() for landmark in self.landmarks_])
        row_centre = centres[np.searchsorted(self.landmarks_, landmarks)]
        pooled = _fit_cell(outcome, cif, horizon, (0.0, 1.0), prior_sd, row_centre)
        self.pooled_intercept_[c, k], self.pooled_slope_[c, k] = pooled
        for j, landmark in enumerate(self.landmarks_):
            rows = landmarks == landmark
            part = Outcome(outcome.time[rows], outcome.status[rows])
            self.n_events_[c, j, k] = int(((part.status == ENDPOINT) & (part.time <= horizon)).sum())
            intercept, slope = _fit_cell(part, cif[rows], horizon, pooled, prior_sd, row_centre[rows])
            # the map applies a at cloglog 0: a + c (1 - b) is the same line
            self.intercept_[c, j, k] = intercept + centres[j] * (1.0 - slope)
            self.slope_[c, j, k] = slope
            self.centre_[c, j, k] = centres[j]

    def parameters(self) -> pd.DataFrame:
        """The fitted map as a table: curve, landmark_day, knot_days, intercept, slope, centre,
        n_events, pooled_intercept, pooled_slope (pooled ones centred, see the class attributes)."""
        check_is_fitted(self, "intercept_")
        index = pd.MultiIndex.from_product([RECALIBRATED_CURVES, self.landmarks_, self._knots()],
                                           names=["curve", "landmark_day", "knot_days"])
        pooled = {name: np.repeat(values[:, None, :], self.landmarks_.size, axis=1).ravel()
                  for name, values in (("pooled_intercept", self.pooled_intercept_), ("pooled_slope", self.pooled_slope_))}
        return pd.DataFrame({"intercept": self.intercept_.ravel(), "slope": self.slope_.ravel(),
                             "centre": self.centre_.ravel(), "n_events": self.n_events_.ravel(), **pooled},
                            index=index).reset_index()

    def _parameters_on_grid(self, landmark_days: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Intercepts and slopes per curve, row and grid time; shapes (curves, n, len(times))."""
        def weights(values: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            position = np.interp(values, nodes, np.arange(nodes.size))
            low = np.floor(position).astype(int)
            return low, np.minimum(low + 1, nodes.size - 1), position - low

        lm_low, lm_high, lm_weight = weights(landmark_days, self.landmarks_)
        kn_low, kn_high, kn_weight = weights(times, self._knots())
        result = []
        for table in (self.intercept_, self.slope_):
            by_row = table[:, lm_low] * (1.0 - lm_weight)[None, :, None] + table[:, lm_high] * lm_weight[None, :, None]
            result.append(by_row[:, :, kn_low] * (1.0 - kn_weight) + by_row[:, :, kn_high] * kn_weight)
        return result[0], result[1]

    def transform(self, curves: CIFCurves, landmark_days: ArrayLike) -> CIFCurves:
        """Recalibrated curves (module docstring, steps 1-3): same grid, causes + event-free = 1.

        Parameters
        ----------
        curves : CIFCurves
            The model's curves for n rows.
        landmark_days : sequence of float
            Landmark (prediction) day of every row.

        Returns
        -------
        CIFCurves
        """
        check_is_fitted(self, "intercept_")
        landmarks = np.asarray(landmark_days, dtype=float)
        n_rows = curves.event_free.shape[0]
        if landmarks.shape != (n_rows,) or not np.isfinite(landmarks).all():
            raise ModelInputError("recalibration: one finite landmark day per row is needed")
        if n_rows <= _CHUNK_ROWS:
            return self._transform_rows(curves, landmarks)
        parts = [self._transform_rows(_rows(curves, slice(start, start + _CHUNK_ROWS)),
                                      landmarks[start:start + _CHUNK_ROWS]) for start in range(0, n_rows, _CHUNK_ROWS)]
        return CIFCurves(times=curves.times, cif={cause: np.vstack([p.cif[cause] for p in parts]) for cause in CAUSES},
                         event_free=np.vstack([p.event_free for p in parts]))

    def _transform_rows(self, curves: CIFCurves, landmarks: np.ndarray) -> CIFCurves:
        intercept, slope = self._parameters_on_grid(landmarks, curves.times)
        base = {**curves.cif, "relapse": curves.relapse}
        mapped: dict[str, np.ndarray] = {}
        for c, curve in enumerate(RECALIBRATED_CURVES):
            if curve == PHENOTYPE_CAUSES[0]:
                base.update(_phenotype_inputs(mapped["relapse"], {cause: curves.cif[cause] for cause in PHENOTYPE_CAUSES}))
            mapped[curve] = np.maximum.accumulate(_mapped(base[curve], intercept[c], slope[c]), axis=1)
        return _assemble(mapped, curves)


def _mapped(cif: np.ndarray, intercept: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """The cloglog map of the module docstring, 1 - exp(-e^a Lambda^b) with Lambda = -log(1 - cif)."""
    cumulative_hazard = -np.log1p(-np.clip(cif, 0.0, 1.0 - 1e-15))
    return -np.expm1(-np.exp(intercept) * cumulative_hazard ** slope)


def _phenotype_inputs(relapse: np.ndarray, phenotypes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The recalibrated relapse incidence split by the base model's phenotype shares (equal thirds
    where the base model has no relapse): what the phenotype maps are fitted on and applied to, so
    they correct the phenotypes *given* the recalibrated relapse, whose spread they inherit."""
    shares = _shares(np.stack(list(phenotypes.values())))
    return {cause: relapse * share for cause, share in zip(phenotypes, shares)}


def _shares(curves: np.ndarray) -> np.ndarray:
    """Each curve's share of their sum along the first axis; equal shares where the sum is 0."""
    total = curves.sum(axis=0)
    return np.divide(curves, total, out=np.full(curves.shape, 1.0 / curves.shape[0]), where=total > 0)


def _rows(curves: CIFCurves, rows: slice) -> CIFCurves:
    return CIFCurves(times=curves.times, cif={cause: values[rows] for cause, values in curves.cif.items()},
                     event_free=curves.event_free[rows])


def _increments(curve: np.ndarray) -> np.ndarray:
    return np.diff(curve, axis=1, prepend=0.0)


def _phenotype_split(relapse: np.ndarray, mapped: dict[str, np.ndarray], curves: CIFCurves) -> np.ndarray:
    """The relapse curve split into phenotype curves; shape (3, n, m).

    Target at each grid time: the relapse incidence times each phenotype's share of the mapped
    phenotype curves (the base model's shares where those are all zero). Each interval's relapse
    increment goes to the phenotypes still below their target, in proportion to how far below:
    every curve stays non-decreasing, they add up to the relapse curve, and a phenotype whose
    target share only grows meets its target exactly.
    """
    mapped_curves = np.stack([mapped[cause] for cause in PHENOTYPE_CAUSES])
    base_curves = np.stack([curves.cif[cause] for cause in PHENOTYPE_CAUSES])
    shares = _shares(np.where(mapped_curves.sum(axis=0) > 0, mapped_curves, base_curves))
    target = relapse[None] * shares
    split, reached = np.zeros_like(target), np.zeros(target.shape[:2])
    for j, step in enumerate(_increments(relapse).T):
        need = np.maximum(target[:, :, j] - reached, 0.0)
        total_need = need.sum(axis=0)
        portion = np.divide(need, total_need, out=shares[:, :, j].copy(), where=total_need > 0)
        reached = reached + step * portion
        split[:, :, j] = reached
    return split


def _capped(steps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Increments of the main causes scaled down where their running sum would pass 1."""
    total = np.sum(list(steps.values()), axis=0)
    over = np.flatnonzero(np.cumsum(total, axis=1).max(axis=1) > 1.0)
    if over.size == 0:
        return steps
    capped = {cause: values.copy() for cause, values in steps.items()}
    used = np.zeros(over.size)
    for j in range(total.shape[1]):
        room = np.maximum(1.0 - used, 0.0)
        scale = np.divide(room, total[over, j], out=np.ones(over.size), where=total[over, j] > room)
        for cause in capped:
            capped[cause][over, j] *= scale
        used += total[over, j] * scale
    return capped


def _assemble(mapped: dict[str, np.ndarray], curves: CIFCurves) -> CIFCurves:
    """Steps 2 and 3 of the module docstring."""
    steps = _capped({cause: _increments(mapped[cause]) for cause in _MAIN_CURVES})
    split = _phenotype_split(np.cumsum(steps["relapse"], axis=1), mapped, curves)
    cif = {cause: split[k] for k, cause in enumerate(PHENOTYPE_CAUSES)}
    cif.update({cause: np.cumsum(steps[cause], axis=1) for cause in COMPETING_CAUSES})
    event_free = np.maximum(1.0 - np.sum([cif[cause] for cause in CAUSES], axis=0), 0.0)
    return CIFCurves(times=curves.times, cif={cause: cif[cause] for cause in CAUSES}, event_free=event_free)


class RecalibratedModel(BaseEstimator):
    """A competing-risks model whose cumulative incidences pass through a fitted :class:`CIFRecalibrator`.

    Same interface as :class:`models.competing.CauseSpecificHazardsModel` (``predict_cif``,
    ``predict_cif_curves``, ``predict``, ``predict_relapse_incidence``, ``background_``,
    ``relapse_hazard_model_``), so scoring, serving and SHAP use it unchanged.

    Parameters
    ----------
    estimator : CauseSpecificHazardsModel
        Unfitted base model (cloned for the inner folds and for the final fit).
    knots_days, prior_sd
        As :class:`CIFRecalibrator`.
    cv : int
        Inner folds (grouped by ``groups``) for the out-of-fold predictions the map is fitted on.
    landmark_column : str
        Feature holding the landmark (prediction) day of a row.
    random_state : int
        Shuffles the patients between inner folds.

    Attributes
    ----------
    estimator_ : fitted base model (on every training row)
    recalibrator_ : fitted CIFRecalibrator
    """

    def __init__(self, estimator=None, *, knots_days: Sequence[float] = (182.0, 365.0, 730.0),
                 prior_sd: tuple[float, float] = (0.5, 0.25), cv: int = 5, landmark_column: str = "landmark_day",
                 random_state: int = 0):
        self.estimator = estimator
        self.knots_days = knots_days
        self.prior_sd = prior_sd
        self.cv = cv
        self.landmark_column = landmark_column
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, y: pd.DataFrame, groups: ArrayLike | None = None,
            out_of_fold: pd.DataFrame | None = None) -> RecalibratedModel:
        """Fit the map on out-of-fold predictions, then the base model on every row.

        Parameters
        ----------
        X, y : DataFrame
            As ``CauseSpecificHazardsModel.fit``; ``X`` has the ``landmark_column``.
        groups : sequence, optional
            Patient of every row: the inner folds keep a patient's landmark rows together.
            Required unless ``out_of_fold`` is given.
        out_of_fold : DataFrame, optional
            Out-of-fold ``predict_cif`` of ``estimator`` for exactly these rows at (at least) the
            knots, from a cross-validation grouped by patient (e.g. the caller's own CV, which
            saves the inner one).

        Returns
        -------
        RecalibratedModel
        """
        if self.estimator is None:
            raise ModelInputError("estimator is required (build one with models.make_model)")
        X = check_features(X)
        check_target(y)
        landmarks = self._landmarks(X)
        if out_of_fold is None:
            out_of_fold = self._inner_out_of_fold(X, y, groups)
        elif not out_of_fold.index.equals(X.index):
            raise ModelInputError("recalibration: out_of_fold must be indexed like X")
        self.recalibrator_ = self._recalibrator().fit(
            out_of_fold, y, landmarks)
        self.estimator_ = clone(self.estimator).fit(X, y)
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = X.shape[1]
        return self

    def _recalibrator(self) -> CIFRecalibrator:
        return CIFRecalibrator(knots_days=self.knots_days, prior_sd=self.prior_sd)

    def _landmarks(self, X: pd.DataFrame) -> np.ndarray:
        if self.landmark_column not in X.columns:
            raise ModelInputError(f"recalibration: features lack the landmark column {self.landmark_column!r}")
        return X[self.landmark_column].to_numpy(dtype=float)

    def _inner_out_of_fold(self, X: pd.DataFrame, y: pd.DataFrame, groups: ArrayLike | None) -> pd.DataFrame:
        from models.validation import cross_validated_cif

        if groups is None:
            raise ModelInputError("recalibration: fit needs groups (the patient of every row) or out_of_fold")
        patients = np.asarray(groups, dtype=object).astype(str)
        if patients.size != len(X):
            raise ModelInputError(f"recalibration: {patients.size} groups for {len(X)} rows")
        splitter = GroupKFold(n_splits=self.cv, shuffle=True, random_state=self.random_state)
        splits = list(splitter.split(np.zeros(len(X)), groups=patients))
        return cross_validated_cif(self.estimator, X, y, splits, list(self.knots_days))

    # --------------------------------------------------------------- prediction
    def predict_cif_curves(self, X: pd.DataFrame) -> CIFCurves:
        """Recalibrated cumulative incidence curves (see ``CauseSpecificHazardsModel.predict_cif_curves``)."""
        check_is_fitted(self, "recalibrator_")
        X = check_features(X, self.feature_names_in_)
        return self.recalibrator_.transform(self.estimator_.predict_cif_curves(X), self._landmarks(X))

    def predict_cif(self, X: pd.DataFrame, horizons_days: Sequence[float]) -> pd.DataFrame:
        """Recalibrated incidences at each horizon (columns: see models.base.cif_columns)."""
        return cif_frame(self.predict_cif_curves(X), horizons_days, X.index)

    def predict_relapse_incidence(self, X: pd.DataFrame, horizon_days: float) -> np.ndarray:
        """Recalibrated cumulative incidence of relapse (all phenotypes) at one horizon."""
        curves = self.predict_cif_curves(X)
        return read_curve(curves.times, curves.relapse, horizon_days)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Recalibrated relapse incidence at the base model's ``risk_horizon_days`` (the risk score)."""
        check_is_fitted(self, "estimator_")
        return self.predict_relapse_incidence(X, self.estimator_.risk_horizon_days)

    @property
    def relapse_hazard_model_(self):
        """The base model's relapse hazard model (what tree SHAP explains)."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.relapse_hazard_model_

    @property
    def background_(self) -> pd.DataFrame:
        """The base model's SHAP reference rows (setting it replaces them there too)."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.background_

    @background_.setter
    def background_(self, rows: pd.DataFrame) -> None:
        self.estimator_.background_ = rows


def _fold_of_rows(splits: Sequence[tuple[np.ndarray, np.ndarray]], n_rows: int) -> np.ndarray:
    fold = np.full(n_rows, -1)
    for k, (_, test) in enumerate(splits):
        if (fold[test] >= 0).any():
            raise ModelInputError("nested cross-validation: a row is in two test folds")
        fold[test] = k
    if len(splits) < 3 or (fold < 0).any():
        raise ModelInputError("nested cross-validation needs at least 3 folds whose test parts cover every row")
    return fold


def _inner_predictions(base, X: pd.DataFrame, y: pd.DataFrame, fold: np.ndarray, knots: list[float],
                       on_fit: Callable[[], None] | None) -> list[pd.DataFrame]:
    """For each outer fold k, predictions for the rows outside k from models trained without k
    and without the predicted row's own fold: one fit per pair of folds serves both."""
    n_folds = int(fold.max()) + 1
    inner = [pd.DataFrame(np.nan, index=X.index, columns=cif_columns(knots)) for _ in range(n_folds)]
    for j, k in itertools.combinations(range(n_folds), 2):
        train = np.flatnonzero((fold != j) & (fold != k))
        fitted = clone(base).fit(X.iloc[train], y.iloc[train])
        for predicted, outer in ((j, k), (k, j)):
            rows = np.flatnonzero(fold == predicted)
            inner[outer].iloc[rows] = fitted.predict_cif(X.iloc[rows], knots).to_numpy()
        if on_fit is not None:
            on_fit()
    return inner


def cross_validated_recalibrated_cif(model: RecalibratedModel, X: pd.DataFrame, y: pd.DataFrame,
                                     splits: Sequence[tuple[np.ndarray, np.ndarray]], horizons_days: Sequence[float],
                                     on_fit: Callable[[], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Out-of-fold predictions of the base model and, by nested CV, of the recalibrated model.

    For outer fold k the map is fitted on predictions for the rows of every other fold j, each
    made by a model trained without folds j and k (the inner folds are the other outer folds), and
    applied to fold k's curves from the model trained without k. Fits: one per pair of folds plus
    one per fold (15 for 5 folds, against 30 for a separate 5 x 5 nested CV).

    Parameters
    ----------
    model : RecalibratedModel
        Unfitted; its ``estimator`` is the base model.
    X, y : DataFrame
        Features (with the landmark column) and target of the landmark set.
    splits : sequence of (train, test) positions
        Outer folds whose test parts partition the rows (grouped by patient or site), at least 3.
    horizons_days : sequence of float
    on_fit : callable, optional
        Called after every model fit (progress reporting).

    Returns
    -------
    base : DataFrame
        Out-of-fold ``predict_cif`` of the base model at the horizons and the knots (what
        ``RecalibratedModel.fit(out_of_fold=...)`` takes for the final fit).
    recalibrated : DataFrame
        Out-of-fold recalibrated ``predict_cif`` at the horizons.
    """
    if model.estimator is None:
        raise ModelInputError("estimator is required (build one with models.make_model)")
    X = check_features(X)
    fold = _fold_of_rows(splits, len(X))
    knots = [float(h) for h in model.knots_days]
    at = sorted({*map(float, horizons_days), *knots})
    landmarks = model._landmarks(X)
    inner = _inner_predictions(model.estimator, X, y, fold, knots, on_fit)
    base = pd.DataFrame(np.nan, index=X.index, columns=cif_columns(at))
    recalibrated = pd.DataFrame(np.nan, index=X.index, columns=cif_columns(horizons_days))
    for k, (train, test) in enumerate(splits):
        recalibrator = model._recalibrator().fit(
            inner[k].iloc[train], y.iloc[train], landmarks[train])
        curves = clone(model.estimator).fit(X.iloc[train], y.iloc[train]).predict_cif_curves(X.iloc[test])
        base.iloc[test] = cif_frame(curves, at, X.index[test]).to_numpy()
        recalibrated.iloc[test] = cif_frame(recalibrator.transform(curves, landmarks[test]), horizons_days,
                                            X.index[test]).to_numpy()
        if on_fit is not None:
            on_fit()
    return base, recalibrated
