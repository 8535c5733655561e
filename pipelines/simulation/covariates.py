"""The patient at infusion: covariates drawn from realistic marginals and correlations.

Besides the reported covariates this draws three latent ones that the mechanism uses: the true
marrow burden (``burden_log10``, of which ``bm_blasts_pct`` is the morphologic report), the true
fludarabine exposure (reported only at centers that measure it) and the patient's T-cell fitness
(lower after blinatumomab non-response and many prior lines).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.simulation.params import CovariateParams, SiteParams

__all__ = ["Covariates", "BLINA_NAIVE", "BLINA_RESPONDER", "BLINA_NONRESPONDER", "draw_covariates"]

BLINA_NAIVE, BLINA_RESPONDER, BLINA_NONRESPONDER = 0, 1, 2


@dataclass(frozen=True)
class Covariates:
    """Per-patient arrays (length n) of the infusion covariates, reported and latent."""

    site: np.ndarray
    age_years: np.ndarray
    male: np.ndarray
    down_syndrome: np.ndarray
    kmt2a: np.ndarray
    tp53: np.ndarray
    hypodiploid: np.ndarray
    ph_positive: np.ndarray
    prior_lines: np.ndarray
    prior_crs: np.ndarray
    prior_hsct: np.ndarray
    blinatumomab: np.ndarray
    inotuzumab: np.ndarray
    burden_log10: np.ndarray
    bm_blasts_pct: np.ndarray
    cns_status: np.ndarray
    active_emd: np.ndarray
    cd19_dim: np.ndarray
    cd19_positive_share: np.ndarray
    cd19_antigen_load_pct: np.ndarray
    cd22_pct: np.ndarray
    cd28: np.ndarray
    cell_dose_per_kg: np.ndarray
    flu_auc: np.ndarray
    flu_auc_measured: np.ndarray
    tcell_fitness: np.ndarray

    @property
    def n(self) -> int:
        """Number of patients."""
        return int(self.age_years.shape[0])


def _draw_age(n: int, rng: np.random.Generator, p: CovariateParams) -> np.ndarray:
    infant = rng.random(n) < p.p_infant
    span = p.age_max - p.age_min_noninfant
    older = p.age_min_noninfant + span * rng.beta(p.age_beta_a, p.age_beta_b, n)
    return np.where(infant, rng.uniform(0.25, 1.0, n), older)


def _draw_history(n: int, age: np.ndarray, rng: np.random.Generator, p: CovariateParams) -> dict:
    prior_lines = 1 + rng.poisson(p.extra_prior_lines_mean, n)
    prior_lines = np.where(age < 1.0, np.minimum(prior_lines, 2), np.minimum(prior_lines, 8))
    refractory = rng.random(n) < p.p_primary_refractory
    prior_crs = np.where(refractory, 0, 1 + rng.binomial(prior_lines - 1, 0.5))
    prior_hsct = rng.random(n) < np.clip(0.12 + 0.12 * (prior_lines - 1), 0, 0.7)
    exposed = rng.random(n) < p.p_blina_exposed_base + p.p_blina_exposed_per_line * (prior_lines - 1)
    nonresponse = rng.random(n) < p.p_blina_nonresponse
    blina = np.where(exposed, np.where(nonresponse, BLINA_NONRESPONDER, BLINA_RESPONDER), BLINA_NAIVE)
    inotuzumab = rng.random(n) < p.p_inotuzumab_base + p.p_inotuzumab_per_line * (prior_lines - 1)
    return dict(prior_lines=prior_lines, prior_crs=prior_crs, prior_hsct=prior_hsct,
                blinatumomab=blina, inotuzumab=inotuzumab)


def _draw_burden(n: int, age: np.ndarray, blina: np.ndarray, rng: np.random.Generator,
                 p: CovariateParams) -> tuple[np.ndarray, np.ndarray]:
    """Latent log10 marrow burden and the morphologic blast % reported from it."""
    base = np.asarray(p.blast_category_probs, dtype=float)
    probs = np.tile(base, (n, 1))
    adult = age >= 18.0
    probs[adult, 3] += p.adult_high_burden_shift
    probs[adult, 2] -= p.adult_high_burden_shift
    probs[blina == BLINA_NONRESPONDER] = p.blina_nonresponder_blast_probs
    category = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
    low, high = p.occult_burden_log10_range
    occult = rng.uniform(low, high, n)
    moderate = rng.uniform(np.log10(0.01), np.log10(5.0), n)
    high_burden = rng.uniform(np.log10(5.0), np.log10(50.0), n)
    very_high = np.log10(rng.uniform(50.0, 97.0, n))
    blasts_log10_pct = np.choose(category, [np.full(n, -np.inf), moderate, high_burden, very_high])
    burden = np.where(category == 0, occult, blasts_log10_pct - 2.0 + rng.normal(0.0, 0.15, n))
    blasts_pct = np.where(category == 0, 0.0, np.round(10.0 ** blasts_log10_pct, 2))
    return np.minimum(burden, -0.01), blasts_pct


def _draw_antigen(n: int, cov: dict, rng: np.random.Generator, p: CovariateParams) -> dict:
    blina = cov["blinatumomab"]
    p_dim = np.choose(blina, [p.p_cd19_dim_base, p.p_cd19_dim_blina_responder, p.p_cd19_dim_blina_nonresponder])
    dim = rng.random(n) < p_dim
    positive_share = np.where(dim, rng.beta(6, 4, n), rng.beta(40, 1, n))
    normal_b = p.normal_b_bm_pct.draw(rng, n)
    normal_b *= np.where(cov["inotuzumab"], p.normal_b_factor_inotuzumab, 1.0)
    normal_b *= np.where(blina != BLINA_NAIVE, p.normal_b_factor_blinatumomab, 1.0)
    blasts = 100.0 * 10.0 ** cov["burden_log10"]
    load = blasts * positive_share + normal_b * (1.0 - blasts / 100.0)
    cd22 = np.where(cov["inotuzumab"], 100 * rng.beta(6, 3, n), 100 * rng.beta(18, 1.5, n))
    return dict(cd19_dim=dim, cd19_positive_share=positive_share,
                cd19_antigen_load_pct=np.clip(np.round(load, 2), 0.01, 100.0), cd22_pct=np.round(cd22, 1))


def draw_covariates(n: int, rng: np.random.Generator, p: CovariateParams,
                    sites: tuple[SiteParams, ...]) -> Covariates:
    """Draw the infusion covariates of ``n`` patients.

    Parameters
    ----------
    n : int
        Number of patients.
    rng : numpy.random.Generator
        The random stream.
    p : CovariateParams
        Covariate marginals and correlations.
    sites : tuple of SiteParams
        Centers (enrolment weights, share of CD28 products, fludarabine monitoring).

    Returns
    -------
    Covariates
    """
    weights = np.array([s.enrolment_weight for s in sites])
    site = rng.choice(len(sites), size=n, p=weights / weights.sum())
    age = _draw_age(n, rng, p)
    p_kmt2a = np.where(age < 1.0, p.p_kmt2a_infant, np.where(age < 3.0, p.p_kmt2a_toddler, p.p_kmt2a_other))
    cov = _draw_history(n, age, rng, p)
    burden, blasts_pct = _draw_burden(n, age, cov["blinatumomab"], rng, p)
    cov.update(burden_log10=burden)
    cov.update(_draw_antigen(n, cov, rng, p))
    cns = (rng.random(n)[:, None] > np.cumsum([1 - p.p_cns2 - p.p_cns3, p.p_cns2])).sum(axis=1)
    cd28_share = np.array([s.cd28_share for s in sites])[site]
    measured = np.array([s.measures_flu_auc for s in sites])[site]
    fitness = rng.normal(0.0, 1.0, n) + p.tcell_fitness_per_extra_line * (cov["prior_lines"] - 2)
    fitness += np.where(cov["blinatumomab"] == BLINA_NONRESPONDER, p.tcell_fitness_blina_nonresponder, 0.0)
    return Covariates(
        site=site, age_years=np.round(age, 1), male=rng.random(n) < p.p_male,
        down_syndrome=rng.random(n) < p.p_down_syndrome, kmt2a=rng.random(n) < p_kmt2a,
        tp53=rng.random(n) < p.p_tp53, hypodiploid=rng.random(n) < p.p_hypodiploid,
        ph_positive=rng.random(n) < p.p_ph_positive, bm_blasts_pct=blasts_pct, cns_status=cns,
        active_emd=rng.random(n) < p.p_active_emd, cd28=rng.random(n) < cd28_share,
        cell_dose_per_kg=np.round(p.cell_dose_per_kg.draw(rng, n), -3),
        flu_auc=p.fludarabine_auc_mg_h_per_l.draw(rng, n),
        flu_auc_measured=measured, tcell_fitness=fitness, **cov,
    )
