"""Patient-level bootstrap: resample patients (not rows), so a patient's landmark rows move together.

The metrics take *multiplicities* — how many times each row is drawn in each resample — instead
of resampled copies, so one draw serves every source (model, oracle, rule) and every landmark:
differences between sources are paired, and means over landmarks are resampled consistently.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["PatientBootstrap", "percentile_interval"]


class PatientBootstrap:
    """B resamples of the patients of an evaluation set.

    Parameters
    ----------
    patient_ids : sequence
        Patient of every row (rows of one patient share its draw count).
    n_bootstrap : int
        Number of resamples B.
    random_state : int
    """

    def __init__(self, patient_ids: Sequence, n_bootstrap: int, random_state: int = 0):
        codes = np.unique(np.asarray(patient_ids, dtype=object).astype(str), return_inverse=True)[1]
        self.row_patient = codes
        self.n_patients = int(codes.max(initial=-1)) + 1
        self.n_bootstrap = int(n_bootstrap)
        rng = np.random.default_rng(random_state)
        uniform = np.full(self.n_patients, 1.0 / max(self.n_patients, 1))
        self.patient_counts = rng.multinomial(self.n_patients, uniform, size=self.n_bootstrap).astype(float)

    def multiplicities(self, rows: np.ndarray) -> np.ndarray:
        """Multiplicities (B, n_rows) of the selected rows (boolean mask or positions)."""
        return self.patient_counts[:, self.row_patient[rows]]


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile confidence interval of bootstrap replicates (NaN replicates ignored).

    Parameters
    ----------
    values : ndarray
        The B replicates.
    level : float
        Coverage, e.g. 0.95.

    Returns
    -------
    (low, high) : tuple of float
        NaN, NaN when no replicate is finite.
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.nan, np.nan
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)
