"""Fixtures of the models tests: competing-risks data simulated from known parameters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from models.base import PHENOTYPE_CAUSES


@pytest.fixture(autouse=True)
def _single_threaded_blas():
    """OpenBLAS with two threads on a shared two-core machine is up to 20x slower on small problems."""
    with threadpool_limits(1, user_api="blas"):
        yield


@dataclass(frozen=True)
class KnownCohort:
    """Landmark-like rows with exponential cause-specific hazards of known parameters.

    relapse hazard = ``relapse_rate * exp(beta . x)`` (x = x0, x1), phenotype of a relapse drawn
    from softmax(``phenotype_logits``), death hazard ``death_rate``, HSCT hazard
    ``hsct_rate * exp(gamma * x2)``; uniform censoring; truncation at 730 days.
    """

    X: pd.DataFrame
    y: pd.DataFrame
    beta: np.ndarray
    relapse_rate: float
    death_rate: float
    hsct_rate: float
    gamma: float
    patient_id: np.ndarray

    def true_cif(self, horizon: float) -> dict[str, np.ndarray]:
        """Exact cumulative incidence of each cause at ``horizon`` (constant hazards)."""
        x = self.X[["x0", "x1"]].to_numpy()
        relapse = self.relapse_rate * np.exp(x @ self.beta)
        hsct = self.hsct_rate * np.exp(self.gamma * self.X["x2"].to_numpy())
        total = relapse + self.death_rate + hsct
        any_event = 1.0 - np.exp(-total * horizon)
        shares = _phenotype_shares(self.X)
        cif = {cause: any_event * relapse / total * shares[:, k] for k, cause in enumerate(PHENOTYPE_CAUSES)}
        cif["death"] = any_event * self.death_rate / total
        cif["hsct"] = any_event * hsct / total
        return cif


def _phenotype_shares(X: pd.DataFrame) -> np.ndarray:
    logits = np.column_stack([0.8 * X["x1"].to_numpy(), -0.8 * X["x1"].to_numpy(), np.full(len(X), -2.0)])
    shares = np.exp(logits)
    return shares / shares.sum(axis=1, keepdims=True)


def simulate_known_cohort(n: int = 1500, seed: int = 0, beta=(0.7, -0.5), relapse_rate: float = 0.0015,
                          death_rate: float = 0.0002, hsct_rate: float = 0.0004, gamma: float = 0.5,
                          missing_share: float = 0.1) -> KnownCohort:
    """Rows of a known-parameter competing-risks cohort (see :class:`KnownCohort`)."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"x0": rng.normal(size=n), "x1": rng.normal(size=n), "x2": rng.normal(size=n),
                      "noise": rng.normal(size=n), "landmark_day": rng.choice([0.0, 28.0, 91.0], n)})
    beta = np.asarray(beta, dtype=float)
    relapse = rng.exponential(1.0 / (relapse_rate * np.exp(X[["x0", "x1"]].to_numpy() @ beta)))
    death = rng.exponential(1.0 / death_rate, n)
    hsct = rng.exponential(1.0 / (hsct_rate * np.exp(gamma * X["x2"].to_numpy())))
    censor = rng.uniform(200.0, 1200.0, n)
    shares = _phenotype_shares(X)
    phenotype = np.array([rng.choice(PHENOTYPE_CAUSES, p=p) for p in shares])
    first = np.minimum.reduce([relapse, death, hsct])
    cause = np.where(first == relapse, phenotype, np.where(first == death, "death", "hsct"))
    time = np.minimum.reduce([first, censor, np.full(n, 730.0)])
    event = np.where(first <= np.minimum(censor, 730.0), cause, "none")
    X_observed = X.copy()
    X_observed.loc[rng.random(n) < missing_share, "noise"] = np.nan
    return KnownCohort(X=X_observed, y=pd.DataFrame({"time": time, "event": event}), beta=beta,
                       relapse_rate=relapse_rate, death_rate=death_rate, hsct_rate=hsct_rate, gamma=gamma,
                       patient_id=np.array([f"P{i:05d}" for i in range(n)]))


@pytest.fixture(scope="session")
def known_cohort() -> KnownCohort:
    """1,500 rows, 10% of the ``noise`` feature missing."""
    return simulate_known_cohort()
