"""Marginals and correlations of the patient at infusion (pipelines.simulation.covariates)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.simulation.covariates import BLINA_NAIVE, BLINA_NONRESPONDER, draw_covariates
from pipelines.simulation.params import SimulationParams


@pytest.fixture(scope="module")
def cov():
    params = SimulationParams()
    return draw_covariates(40000, np.random.default_rng(0), params.covariates, params.sites)


def test_age_is_pediatric_and_young_adult(cov):
    assert 10.0 <= np.median(cov.age_years) <= 14.0
    assert cov.age_years.min() > 0 and cov.age_years.max() <= 25.0
    assert (cov.age_years < 1.0).mean() < 0.06


def test_kmt2a_is_rare_and_mostly_young(cov):
    assert 0.05 < cov.kmt2a.mean() < 0.11
    assert np.median(cov.age_years[cov.kmt2a]) < np.median(cov.age_years) - 3
    assert (cov.age_years[cov.age_years < 1.0] < 1.0).any() and cov.kmt2a[cov.age_years < 1.0].mean() > 0.4


def test_marrow_blast_mixture(cov):
    blasts = cov.bm_blasts_pct
    assert 0.15 < ((blasts > 0) & (blasts < 5)).mean() < 0.25
    assert 0.10 < (blasts >= 50).mean() < 0.20
    assert (blasts == 0).mean() > 0.2
    adults = cov.age_years >= 18
    assert (blasts[adults] >= 50).mean() > (blasts[~adults] >= 50).mean()


def test_cd19_dim_and_antigen_load_follow_history_and_burden(cov):
    naive = cov.blinatumomab == BLINA_NAIVE
    nonresponder = cov.blinatumomab == BLINA_NONRESPONDER
    assert cov.cd19_dim[nonresponder].mean() > 3 * cov.cd19_dim[naive].mean()
    low_blasts = cov.bm_blasts_pct < 5
    assert np.median(cov.cd19_antigen_load_pct[low_blasts]) < 15 < np.median(cov.cd19_antigen_load_pct[~low_blasts])
    no_blasts = cov.bm_blasts_pct == 0
    assert (np.median(cov.cd19_antigen_load_pct[no_blasts & cov.inotuzumab])
            < np.median(cov.cd19_antigen_load_pct[no_blasts & ~cov.inotuzumab]))


def test_fludarabine_exposure_and_costimulation(cov):
    assert np.median(cov.flu_auc) == pytest.approx(15.0, rel=0.05)
    assert 0.3 < (cov.flu_auc < 13.8).mean() < 0.5
    assert 0.05 < cov.cd28.mean() < 0.2
