"""Latent leukemia: clones with a log10 burden that grow, are killed by the CAR, and escape it.

Compartments: marrow (M, sampled by aspirates) and extramedullary (E: active EMD, CNS, occult
seeding; not sampled by the aspirate). Clones:

- ``pos``: CD19-positive. Killed while the CAR persists, fast during expansion (first
  ``expansion_days``), then slowly; regrows after CAR loss ``T_p`` from what survived. It is
  extinct when its burden falls below ``floor_log10``.
- ``neg``: CD19-negative / dim. Not killed by the CAR; grows from a pre-existing subclone (a
  sizeable one with CD19-dim blasts; a small hidden one seeded with a probability rising with
  burden and CD19-directed pre-treatment) or from an escape variant acquired while the CAR
  persists (hazard decaying with the shrinking CD19-positive pool).
- ``my``: myeloid-capable (lineage switch), the same escape routes but mostly in KMT2A.

Every burden is piecewise linear in time, so first-passage (crossing) times are closed-form.
Relapse is the first passage of a clone over the clinical threshold of its compartment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.simulation.arrays import sample_decaying_hazard, smooth_below
from pipelines.simulation.covariates import Covariates
from pipelines.simulation.params import DiseaseParams, PersistenceParams

__all__ = [
    "CLONES",
    "PHENOTYPE_OF_CLONE",
    "MARROW_CLONES",
    "DiseaseLatent",
    "ClonalCourse",
    "draw_disease",
    "sample_escape",
    "clonal_course",
]

CLONES = ("pos_m", "neg_m", "my_m", "pos_e", "neg_e")
"""Clone x compartment pairs, in the column order of crossing-day arrays."""
PHENOTYPE_OF_CLONE = np.array([0, 1, 2, 0, 1])
"""Phenotype index (0 CD19_pos, 1 CD19_neg, 2 lineage_switch) of each entry of :data:`CLONES`."""
MARROW_CLONES = np.array([True, True, True, False, False])


@dataclass(frozen=True)
class DiseaseLatent:
    """Per-patient latent parameters of the leukemia (arrays of length n)."""

    b0_m: np.ndarray
    b0_e: np.ndarray
    kill_factor_e: np.ndarray
    expansion_kill_per_day: np.ndarray
    maintenance_kill_per_day: np.ndarray
    growth_pos: np.ndarray
    growth_neg: np.ndarray
    growth_my: np.ndarray
    neg_pre_m: np.ndarray
    my_pre_m: np.ndarray
    neg_pre_e: np.ndarray
    escape_total: np.ndarray
    p_escape_myeloid: np.ndarray
    patchy_marrow: np.ndarray
    lymphodepletion_log_kill: np.ndarray
    """Debulking of every clone between the pre-infusion work-up and infusion."""


def _lognormal(rng: np.random.Generator, median: float, log_sd: float, n: int) -> np.ndarray:
    return median * np.exp(rng.normal(0.0, log_sd, n))


def _em_burden(cov: Covariates, rng: np.random.Generator, p: DiseaseParams) -> np.ndarray:
    n = cov.n
    occult = np.where(rng.random(n) < p.p_occult_em, cov.burden_log10 + p.occult_em_offset
                      + rng.normal(0.0, p.occult_em_sd, n), -np.inf)
    cns = np.choose(cov.cns_status, [np.full(n, -np.inf), np.full(n, p.em_cns2_mean), np.full(n, p.em_cns3_mean)])
    emd = np.where(cov.active_emd, p.em_emd_mean, -np.inf)
    seeded = np.maximum(cns, emd) + rng.normal(0.0, p.em_sd, n)
    return np.minimum(np.maximum(occult, seeded), -0.5)


def _expansion_kill(cov: Covariates, primary_failure: np.ndarray, rng: np.random.Generator, p: DiseaseParams,
                    pp: PersistenceParams) -> np.ndarray:
    """log10 kill of CD19+ cells during the expansion phase, as a rate per day.

    Deeper with T-cell fitness and CD28 costimulation, shallower with low fludarabine exposure,
    low antigen load (poor expansion) and high burden (low effector-to-target ratio), and much
    shallower when the product fails to expand.
    """
    low_load = smooth_below(cov.cd19_antigen_load_pct, pp.load_threshold_pct, pp.load_smoothness_log)
    low_flu = smooth_below(cov.flu_auc, pp.flu_threshold, pp.flu_smoothness_log)
    log_kill = (p.expansion_log_kill_mean + rng.normal(0.0, p.expansion_log_kill_sd, cov.n)
                + p.expansion_kill_per_fitness * cov.tcell_fitness - p.expansion_kill_low_flu * low_flu
                - p.expansion_kill_low_load * low_load + p.expansion_kill_cd28 * cov.cd28
                - p.expansion_kill_per_log_burden * (cov.burden_log10 - p.expansion_reference_burden))
    rate = np.maximum(log_kill, 0.3) / p.expansion_days
    return rate * np.where(primary_failure, pp.primary_failure_kill_factor, 1.0)


def _pre_existing_escape(cov: Covariates, rng: np.random.Generator, p: DiseaseParams,
                         p_myeloid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log10 burden at infusion of pre-existing CD19-negative and myeloid subclones (-inf: none).

    A subclone is seeded with probability ``1 - exp(-rate)``, the rate rising with burden (more
    cells, more variants), CD19-directed pre-treatment (selection), CD19-dim blasts and KMT2A
    (lineage plasticity). CD19-dim blasts also make the subclone larger.
    """
    n = cov.n
    factor = np.choose(cov.blinatumomab, [1.0, p.hidden_seed_factor_blina_responder,
                                          p.hidden_seed_factor_blina_nonresponder])
    factor = factor * np.where(cov.kmt2a, p.kmt2a_myeloid_seed_factor, 1.0)
    factor = factor * np.where(cov.cd19_dim, p.dim_seed_factor, 1.0)
    rate = factor * 10.0 ** (p.hidden_seed_slope * (cov.burden_log10 - p.hidden_seed_offset))
    seeded = rng.random(n) < -np.expm1(-rate)
    fraction_mean = np.where(cov.cd19_dim, p.dim_fraction_log10_mean, p.hidden_fraction_log10_mean)
    burden = np.minimum(cov.burden_log10 + fraction_mean + rng.normal(0.0, p.hidden_fraction_log10_sd, n),
                        cov.burden_log10)
    myeloid = (rng.random(n) < p_myeloid) & ~cov.cd19_dim
    neg = np.where(seeded & ~myeloid, burden, -np.inf)
    my = np.where(seeded & myeloid, burden, -np.inf)
    return neg, my


def _surviving(burden: np.ndarray, p: DiseaseParams) -> np.ndarray:
    """A subclone debulked below the extinction level is gone (-inf)."""
    return np.where(burden >= p.floor_log10, burden, -np.inf)


def draw_disease(cov: Covariates, primary_failure: np.ndarray, rng: np.random.Generator, p: DiseaseParams,
                 pp: PersistenceParams) -> DiseaseLatent:
    """Draw the latent leukemia parameters of each patient.

    Parameters
    ----------
    cov : Covariates
    primary_failure : ndarray of bool
        The CAR product fails to expand (from :func:`pipelines.simulation.persistence.draw_persistence`).
    rng : numpy.random.Generator
    p : DiseaseParams
    pp : PersistenceParams
        For the antigen-load and fludarabine thresholds that also weaken CAR expansion.

    Returns
    -------
    DiseaseLatent
    """
    n = cov.n
    p_myeloid = np.where(cov.kmt2a, p.p_escape_myeloid_kmt2a, p.p_escape_myeloid_other)
    neg_pre_m, my_pre_m = _pre_existing_escape(cov, rng, p, p_myeloid)
    b0_e = _em_burden(cov, rng, p)
    low_flu = smooth_below(cov.flu_auc, pp.flu_threshold, pp.flu_smoothness_log)
    debulk = p.lymphodepletion_log_kill + (p.lymphodepletion_log_kill_low_flu - p.lymphodepletion_log_kill) * low_flu
    blina_factor = np.choose(cov.blinatumomab, [1.0, p.hidden_seed_factor_blina_responder,
                                                p.hidden_seed_factor_blina_nonresponder])
    b0_m = cov.burden_log10 - debulk
    escape_total = blina_factor * 10.0 ** (p.escape_total_slope * (b0_m - p.escape_total_offset))
    growth_pos = _lognormal(rng, p.regrowth_median, p.regrowth_log_sd, n)
    growth_pos *= np.where(cov.prior_crs >= 2, p.regrowth_factor_two_prior_crs, 1.0)
    patchy = rng.random(n) < np.where(cov.active_emd, p.p_patchy_marrow_emd, p.p_patchy_marrow)
    return DiseaseLatent(
        b0_m=b0_m, b0_e=b0_e - debulk,
        kill_factor_e=np.where(cov.active_emd, p.em_kill_factor_emd, p.em_kill_factor_other),
        expansion_kill_per_day=_expansion_kill(cov, primary_failure, rng, p, pp),
        maintenance_kill_per_day=_lognormal(rng, p.maintenance_kill_median, p.maintenance_kill_log_sd, n)
        * 10.0 ** (-p.maintenance_kill_per_log_burden * (cov.burden_log10 - p.expansion_reference_burden)),
        growth_pos=growth_pos,
        growth_neg=rng.normal(p.neg_growth_mean, p.neg_growth_sd, n),
        growth_my=_lognormal(rng, p.myeloid_growth_median, p.myeloid_growth_log_sd, n),
        neg_pre_m=_surviving(neg_pre_m - debulk, p), my_pre_m=_surviving(my_pre_m - debulk, p),
        neg_pre_e=_surviving(b0_e - debulk + (neg_pre_m - cov.burden_log10), p),
        escape_total=escape_total, p_escape_myeloid=p_myeloid, patchy_marrow=patchy,
        lymphodepletion_log_kill=debulk,
    )


def sample_escape(latent: DiseaseLatent, tp: np.ndarray, rng: np.random.Generator, p: DiseaseParams,
                  after_day: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Time of an escape variant acquired under CAR pressure, given no escape by ``after_day``.

    The hazard is ``escape_total / tau * exp(-t / tau)`` while the CAR persists (t < T_p), 0 after:
    it follows the shrinking pool of CD19-positive cells in which variants arise.

    Returns
    -------
    escape_day : ndarray
        ``inf`` when no escape variant arises.
    escape_myeloid : ndarray of bool
        The variant is myeloid (lineage switch) rather than CD19-negative.
    """
    n = tp.shape[0]
    escape_day = sample_decaying_hazard(latent.escape_total, p.escape_tau_days, rng, n, after_day, tp)
    return escape_day, rng.random(n) < latent.p_escape_myeloid


@dataclass(frozen=True)
class ClonalCourse:
    """Piecewise-linear log10 burden of every clone x compartment, given T_p and the escape.

    ``neg_m`` / ``my_m`` / ``neg_e`` are the intercepts (burden at day 0) of the pre-existing
    subclones; an escape variant acquired on ``escape_day`` enters at ``escape_seed_log10`` and
    grows at the rate of its lineage.
    """

    b0_m: np.ndarray
    b0_e: np.ndarray
    kill_factor_e: np.ndarray
    k1: np.ndarray
    k2: np.ndarray
    tp: np.ndarray
    growth_pos: np.ndarray
    growth_neg: np.ndarray
    growth_my: np.ndarray
    neg_m: np.ndarray
    my_m: np.ndarray
    neg_e: np.ndarray
    escape_day: np.ndarray
    escape_myeloid: np.ndarray
    escape_seed_log10: float
    expansion_days: float
    floor_log10: float

    def _killed(self, t: np.ndarray, kill_factor: np.ndarray | float) -> np.ndarray:
        u = np.minimum(t, _col(self.tp, t))
        e = self.expansion_days
        with np.errstate(invalid="ignore"):  # 0 * inf (no kill, CAR never lost) is NaN: no extinction
            killed = _col(self.k1, t) * np.minimum(u, e) + _col(self.k2, t) * np.maximum(u - e, 0)
            return _col(kill_factor, t) * killed

    def _pos(self, t: np.ndarray, b0: np.ndarray, kill_factor: np.ndarray | float) -> np.ndarray:
        under_car = _col(b0, t) - self._killed(t, kill_factor)
        regrown = under_car + _col(self.growth_pos, t) * np.maximum(t - _col(self.tp, t), 0.0)
        return np.where(under_car < self.floor_log10, -np.inf, regrown)

    def _escaping(self, t: np.ndarray, pre: np.ndarray, growth: np.ndarray, myeloid: bool) -> np.ndarray:
        g, day = _col(growth, t), _col(self.escape_day, t)
        lineage = _col(self.escape_myeloid == myeloid, t)
        since = t - np.minimum(day, t)
        acquired = np.where(lineage & (t >= day), self.escape_seed_log10 + g * since, -np.inf)
        return np.maximum(_col(pre, t) + g * t, acquired)

    def log10_burden(self, t: np.ndarray) -> dict[str, np.ndarray]:
        """Burden of each clone at days ``t`` (shape (n,) or (n, k)); keys are :data:`CLONES`."""
        t = np.asarray(t, dtype=float)
        return {
            "pos_m": self._pos(t, self.b0_m, 1.0),
            "neg_m": self._escaping(t, self.neg_m, self.growth_neg, myeloid=False),
            "my_m": self._escaping(t, self.my_m, self.growth_my, myeloid=True),
            "pos_e": self._pos(t, self.b0_e, self.kill_factor_e),
            "neg_e": _col(self.neg_e, t) + _col(self.growth_neg, t) * t,
        }

    def _pos_crossing(self, b0: np.ndarray, kill_factor: np.ndarray | float, threshold: float) -> np.ndarray:
        at_loss = b0 - self._killed(self.tp, kill_factor)
        extinct = ~(at_loss >= self.floor_log10)
        with np.errstate(invalid="ignore"):
            rise = self.tp + (threshold - at_loss) / self.growth_pos
        crossing = np.where(at_loss >= threshold, 0.0, rise)
        return np.where(extinct | ~np.isfinite(self.tp), np.inf, crossing)

    def _escape_crossing(self, pre: np.ndarray, growth: np.ndarray, myeloid: bool, threshold: float) -> np.ndarray:
        acquired = np.where(self.escape_myeloid == myeloid, self.escape_day, np.inf)
        seeded = acquired + _linear_crossing(np.full(pre.shape, self.escape_seed_log10), growth, threshold)
        return np.minimum(_linear_crossing(pre, growth, threshold), seeded)

    def crossing_days(self, marrow_threshold: float, em_threshold: float) -> np.ndarray:
        """First upward passage of each clone over its compartment's threshold, shape (n, 5).

        ``inf`` = never; 0 = the clone never fell below the threshold (persistent disease).
        """
        return np.column_stack([
            self._pos_crossing(self.b0_m, 1.0, marrow_threshold),
            self._escape_crossing(self.neg_m, self.growth_neg, False, marrow_threshold),
            self._escape_crossing(self.my_m, self.growth_my, True, marrow_threshold),
            self._pos_crossing(self.b0_e, self.kill_factor_e, em_threshold),
            _linear_crossing(self.neg_e, self.growth_neg, em_threshold),
        ])


def _linear_crossing(intercept: np.ndarray, growth: np.ndarray, threshold: float) -> np.ndarray:
    """First upward passage of ``intercept + growth * t`` over ``threshold``.

    0 when the line starts at or above the threshold and never falls below it; ``inf`` when it
    never passes upward (including a declining line that starts above the threshold).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        day = np.where(intercept >= threshold, np.where(growth >= 0.0, 0.0, np.inf), (threshold - intercept) / growth)
    return np.where(np.isfinite(intercept) & (day >= 0.0), day, np.inf)


def _col(values: np.ndarray | float, like: np.ndarray) -> np.ndarray | float:
    """Per-patient values as a column when ``like`` is 2-d (patients x times)."""
    if np.ndim(values) == 1 and np.ndim(like) == 2:
        return values[:, None]
    return values


def clonal_course(latent: DiseaseLatent, tp: np.ndarray, escape_day: np.ndarray,
                  escape_myeloid: np.ndarray, p: DiseaseParams) -> ClonalCourse:
    """Assemble the piecewise-linear burdens from the latent parameters, T_p and the escape.

    Parameters
    ----------
    latent : DiseaseLatent
    tp : ndarray
        CAR persistence time (``inf`` = persists).
    escape_day, escape_myeloid : ndarray
        From :func:`sample_escape`.
    p : DiseaseParams

    Returns
    -------
    ClonalCourse
    """
    return ClonalCourse(
        b0_m=latent.b0_m, b0_e=latent.b0_e, kill_factor_e=latent.kill_factor_e,
        k1=latent.expansion_kill_per_day, k2=latent.maintenance_kill_per_day, tp=tp,
        growth_pos=latent.growth_pos, growth_neg=latent.growth_neg, growth_my=latent.growth_my,
        neg_m=latent.neg_pre_m, my_m=latent.my_pre_m, neg_e=latent.neg_pre_e, escape_day=escape_day,
        escape_myeloid=escape_myeloid, escape_seed_log10=p.escape_seed_log10, expansion_days=p.expansion_days,
        floor_log10=p.floor_log10,
    )
