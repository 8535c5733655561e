"""Cross-validation grouped by patient (or by site, leave-one-center-out) on a landmark set.

All rows of a patient (one per landmark) fall in the same fold, so no patient is both trained on
and predicted. With ``group_by="site"`` each fold holds out one center.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import GroupKFold, LeaveOneGroupOut

from models.base import ModelInputError, cif_columns

__all__ = ["cross_validated_cif", "grouped_splits"]


def grouped_splits(landmark_set: pd.DataFrame, n_splits: int = 5, group_by: str = "patient",
                   random_state: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train/test row positions of each fold.

    Parameters
    ----------
    landmark_set : DataFrame
        Needs ``patient_id``, and ``site`` when ``group_by="site"``.
    n_splits : int
        Folds when grouping by patient (ignored for sites: one fold per site).
    group_by : {"patient", "site"}
    random_state : int
        Shuffles patients between folds.

    Returns
    -------
    list of (train positions, test positions)
    """
    if group_by == "patient":
        groups = landmark_set["patient_id"].astype(str).to_numpy()
        if np.unique(groups).size < n_splits:
            raise ModelInputError(f"cross-validation: {np.unique(groups).size} patients for {n_splits} folds")
        splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    elif group_by == "site":
        if "site" not in landmark_set.columns or landmark_set["site"].isna().any():
            raise ModelInputError("cross-validation by site needs a 'site' value on every row")
        groups = landmark_set["site"].astype(str).to_numpy()
        if np.unique(groups).size < 2:
            raise ModelInputError("cross-validation by site needs at least two sites")
        splitter = LeaveOneGroupOut()
    else:
        raise ModelInputError(f"group_by must be 'patient' or 'site', got {group_by!r}")
    return list(splitter.split(np.zeros(len(groups)), groups=groups))


def cross_validated_cif(model, X: pd.DataFrame, y: pd.DataFrame, splits: Sequence[tuple[np.ndarray, np.ndarray]],
                        horizons_days: Sequence[float],
                        on_fold: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Out-of-fold ``predict_cif`` of an unfitted model (cloned per fold).

    Parameters
    ----------
    model : estimator
        Unfitted competing-risks model (models.make_model).
    X, y : DataFrame
        Features and target of the landmark set, same index.
    splits : sequence of (train, test) positions
    horizons_days : sequence of float
    on_fold : callable, optional
        Called with the fold number after each fold (progress reporting).

    Returns
    -------
    DataFrame
        Indexed like ``X``; every row predicted by the model that did not see its patient.
    """
    predictions = pd.DataFrame(np.nan, index=X.index, columns=cif_columns(horizons_days))
    for fold, (train, test) in enumerate(splits):
        fitted = clone(model).fit(X.iloc[train], y.iloc[train])
        predictions.iloc[test] = fitted.predict_cif(X.iloc[test], horizons_days).to_numpy()
        if on_fold is not None:
            on_fold(fold)
    return predictions
