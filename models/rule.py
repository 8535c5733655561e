"""The clinicians' rule of thumb (docs/models.md) as a baseline model with the models' interface.

High risk = any of

- high marrow burden: pre-infusion marrow blasts >= 5%;
- blinatumomab non-response;
- active non-CNS extramedullary disease at infusion;
- KMT2A rearrangement (lineage-switch risk);

upgraded after infusion (landmarks > 0) by

- detectable NGS-MRD in bone marrow after infusion (the rule says day 28 / month 3; the landmark
  features give "any detectable BM NGS-MRD after infusion by the landmark", which is the same at
  landmarks up to month 3 and slightly broader later);
- loss of B-cell aplasia observed before month 6.

A missing value never makes a patient high risk (absence of evidence). The rule's curves are
Aalen-Johansen estimates of each cause in the training rows of the same risk group and landmark
(the group alone when that stratum has fewer than ``min_stratum_rows`` rows), so its incidences
are calibrated in the training data; its risk score is the group (ties within a group).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from models.base import CAUSES, PHENOTYPE_CAUSES, ModelInputError, check_features, check_target
from models.competing import CIFCurves, cif_frame
from models.nonparametric import aalen_johansen

__all__ = ["ClinicianRule", "HIGH_RISK", "STANDARD_RISK"]

STANDARD_RISK = 0
HIGH_RISK = 1
_STATUS_CAUSES = CAUSES + ("relapse_unknown",)


def _flag(X: pd.DataFrame, column: str | None) -> np.ndarray:
    """1.0-valued flag column as bool; NaN or an absent optional column -> False."""
    if column is None or column not in X.columns:
        return np.zeros(len(X), dtype=bool)
    return X[column].to_numpy(dtype=float) >= 0.5


class ClinicianRule(BaseEstimator):
    """The clinicians' rule; see the module docstring for the criteria.

    Parameters
    ----------
    bm_blasts_column : str
        Pre-infusion marrow blasts, % of nucleated cells.
    bm_blasts_high_pct : float
        High burden threshold (%).
    blinatumomab_nonresponse_column, emd_column, kmt2a_column : str
        Baseline flags (0/1).
    ngs_mrd_column : str or None
        Flag: detectable BM NGS-MRD after infusion by the landmark.
    bca_loss_column : str or None
        Flag: loss of B-cell aplasia observed by the landmark.
    bca_loss_day_column : str or None
        Day (since infusion) by which the loss was observed; with ``bca_loss_before_day`` it
        restricts the upgrade to losses before month 6. Ignored when absent from ``X``.
    bca_loss_before_day : float
    landmark_column : str
        Landmark day (days since infusion); upgrades apply only after infusion.
    min_stratum_rows : int
        Minimum training rows of a (group, landmark) stratum to get its own curves.
    time_resolution_days : float
        Spacing of the curves' time grid.
    background_rows : int
        Training rows kept as ``background_`` (reference sample of the SHAP explanations).
    """

    def __init__(self, *, bm_blasts_column="bm_blasts_pct", bm_blasts_high_pct=5.0,
                 blinatumomab_nonresponse_column="blinatumomab_nonresponder", emd_column="active_non_cns_emd",
                 kmt2a_column="kmt2a_rearranged", ngs_mrd_column="bm_ngs_mrd_detectable_since_infusion",
                 bca_loss_column="bca_lost_by_landmark", bca_loss_day_column="bca_loss_day_upper",
                 bca_loss_before_day=182.0, landmark_column="landmark_day", min_stratum_rows=30,
                 time_resolution_days=7.0, background_rows=100):
        self.bm_blasts_column = bm_blasts_column
        self.bm_blasts_high_pct = bm_blasts_high_pct
        self.blinatumomab_nonresponse_column = blinatumomab_nonresponse_column
        self.emd_column = emd_column
        self.kmt2a_column = kmt2a_column
        self.ngs_mrd_column = ngs_mrd_column
        self.bca_loss_column = bca_loss_column
        self.bca_loss_day_column = bca_loss_day_column
        self.bca_loss_before_day = bca_loss_before_day
        self.landmark_column = landmark_column
        self.min_stratum_rows = min_stratum_rows
        self.time_resolution_days = time_resolution_days
        self.background_rows = background_rows

    def _required_columns(self) -> list[str]:
        return [self.bm_blasts_column, self.blinatumomab_nonresponse_column, self.emd_column, self.kmt2a_column,
                self.landmark_column]

    def risk_group(self, X: pd.DataFrame) -> np.ndarray:
        """Risk group per row: :data:`HIGH_RISK` (1) or :data:`STANDARD_RISK` (0)."""
        missing = [column for column in self._required_columns() if column not in X.columns]
        if missing:
            raise ModelInputError(f"clinicians' rule: missing feature column(s) {missing}")
        blasts = X[self.bm_blasts_column].to_numpy(dtype=float)
        baseline = (np.nan_to_num(blasts, nan=-np.inf) >= self.bm_blasts_high_pct) \
            | _flag(X, self.blinatumomab_nonresponse_column) | _flag(X, self.emd_column) | _flag(X, self.kmt2a_column)
        after_infusion = X[self.landmark_column].to_numpy(dtype=float) > 0
        bca_lost = _flag(X, self.bca_loss_column)
        if self.bca_loss_day_column is not None and self.bca_loss_day_column in X.columns:
            loss_day = X[self.bca_loss_day_column].to_numpy(dtype=float)
            bca_lost &= np.nan_to_num(loss_day, nan=np.inf) <= self.bca_loss_before_day
        upgraded = after_infusion & (_flag(X, self.ngs_mrd_column) | bca_lost)
        return np.where(baseline | upgraded, HIGH_RISK, STANDARD_RISK)

    def fit(self, X: pd.DataFrame, y: pd.DataFrame) -> ClinicianRule:
        """Estimate the Aalen-Johansen curves of each (risk group, landmark) stratum."""
        X = check_features(X)
        time, event = check_target(y)
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        group = self.risk_group(X)
        landmark = X[self.landmark_column].to_numpy(dtype=float)
        step = float(self.time_resolution_days)
        self.time_grid_ = np.arange(0, int(np.ceil(time.max() / step)) + 1) * step
        status = np.select([event == cause for cause in _STATUS_CAUSES], np.arange(1, len(_STATUS_CAUSES) + 1), 0)
        everyone = self._curves(time, status)
        self.group_curves_ = {g: self._curves(time[group == g], status[group == g]) if (group == g).any() else everyone
                              for g in (STANDARD_RISK, HIGH_RISK)}
        self.stratum_curves_ = {}
        for g in (STANDARD_RISK, HIGH_RISK):
            for day in np.unique(landmark):
                rows = (group == g) & (landmark == day)
                if rows.sum() >= self.min_stratum_rows:
                    self.stratum_curves_[(g, float(day))] = self._curves(time[rows], status[rows])
        self.background_ = X.sample(n=min(len(X), self.background_rows), random_state=0)
        return self

    def _curves(self, time: np.ndarray, status: np.ndarray) -> np.ndarray:
        """Per cause of CAUSES, the AJ incidence on the grid; unknown-phenotype relapses are split
        over the phenotypes in proportion to their incidence."""
        incidence = aalen_johansen(time, status, self.time_grid_, n_causes=len(_STATUS_CAUSES))
        known, unknown = incidence[: len(PHENOTYPE_CAUSES)], incidence[-1]
        known_total = known.sum(axis=0)
        share = np.divide(known, known_total, out=np.full_like(known, 1.0 / len(PHENOTYPE_CAUSES)),
                          where=known_total > 0)
        incidence[: len(PHENOTYPE_CAUSES)] = known + share * unknown
        return incidence[: len(CAUSES)]

    def predict_cif_curves(self, X: pd.DataFrame) -> CIFCurves:
        """The stratum curves of every row (see models.competing.CIFCurves)."""
        check_is_fitted(self, "group_curves_")
        X = check_features(X, self.feature_names_in_)
        group = self.risk_group(X)
        landmark = X[self.landmark_column].to_numpy(dtype=float)
        stacked = np.empty((len(X), len(CAUSES), self.time_grid_.size))
        for row_group in (STANDARD_RISK, HIGH_RISK):
            for day in np.unique(landmark):
                rows = (group == row_group) & (landmark == day)
                stacked[rows] = self.stratum_curves_.get((row_group, float(day)), self.group_curves_[row_group])
        cif = {cause: stacked[:, k] for k, cause in enumerate(CAUSES)}
        return CIFCurves(times=self.time_grid_, cif=cif, event_free=1.0 - stacked.sum(axis=1))

    def predict_cif(self, X: pd.DataFrame, horizons_days: Sequence[float]) -> pd.DataFrame:
        """Cumulative incidences at each horizon (columns: see models.base.cif_columns)."""
        return cif_frame(self.predict_cif_curves(X), horizons_days, X.index)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """The risk group as a float score (1 = high risk); ties within a group."""
        check_is_fitted(self, "group_curves_")
        return self.risk_group(check_features(X, self.feature_names_in_)).astype(float)
