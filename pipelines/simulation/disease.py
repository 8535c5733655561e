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

from pipelines.simulation.arrays import as_column, sample_decaying_hazard, smooth_below
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
    """Per-patient latent parameters of the leukemia (arrays of length n).

    Burdens are log10 of the fraction of nucleated marrow cells (the extramedullary compartment in
    marrow-equivalent units) at infusion, after lymphodepletion; ``-inf`` = no such clone. Rates are
    in log10 per day.
    """

    pos_marrow_log10_day0: np.ndarray
    """CD19-positive clone in the marrow."""
    pos_em_log10_day0: np.ndarray
    """CD19-positive clone in the extramedullary compartment."""
    em_kill_factor: np.ndarray
    """Share of the CAR's marrow kill rate that reaches extramedullary disease."""
    expansion_kill_log10_per_day: np.ndarray
    """Kill rate of CD19-positive cells during CAR expansion (the first ``expansion_days``)."""
    maintenance_kill_log10_per_day: np.ndarray
    """Kill rate of CD19-positive cells by the persisting CAR after expansion."""
    pos_regrowth_log10_per_day: np.ndarray
    """Growth of the CD19-positive clone after CAR loss."""
    neg_growth_log10_per_day: np.ndarray
    """Net growth of CD19-negative cells (negative: an unfit variant that never grows out)."""
    myeloid_growth_log10_per_day: np.ndarray
    """Growth of myeloid-capable (lineage-switch) cells."""
    neg_marrow_log10_day0: np.ndarray
    """Pre-existing CD19-negative / dim subclone in the marrow."""
    myeloid_marrow_log10_day0: np.ndarray
    """Pre-existing myeloid-capable subclone in the marrow."""
    neg_em_log10_day0: np.ndarray
    """Pre-existing CD19-negative subclone in the extramedullary compartment."""
    escape_total_hazard: np.ndarray
    """Expected number of escape variants acquired under CAR pressure if the CAR persisted forever."""
    p_escape_myeloid: np.ndarray
    """Probability that an escape variant (acquired or pre-existing) is myeloid."""
    patchy_marrow: np.ndarray
    """The disease is patchy in the marrow, so an aspirate can miss it (bool)."""
    lymphodepletion_log10_kill: np.ndarray
    """Debulking of every clone between the pre-infusion work-up and infusion (log10)."""


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
    log_kill = (p.expansion_log10_kill.draw(rng, cov.n)
                + p.expansion_kill_per_fitness * cov.tcell_fitness - p.expansion_kill_low_flu * low_flu
                - p.expansion_kill_low_load * low_load + p.expansion_kill_cd28 * cov.cd28
                - p.expansion_kill_per_log_burden * (cov.burden_log10 - p.expansion_reference_burden))
    rate = np.maximum(log_kill, 0.3) / p.expansion_days
    return rate * np.where(primary_failure, pp.primary_failure_kill_factor, 1.0)


def _cd19_directed_selection(cov: Covariates, p: DiseaseParams) -> np.ndarray:
    """Multiplier of the rate of CD19-negative variants after blinatumomab (1 when naive).

    Prior CD19-directed therapy has selected for CD19-negative / dim cells, more so when the
    leukemia did not respond to it.
    """
    return np.choose(cov.blinatumomab, [1.0, p.hidden_seed_factor_blina_responder,
                                        p.hidden_seed_factor_blina_nonresponder])


def _pre_existing_escape(cov: Covariates, rng: np.random.Generator, p: DiseaseParams,
                         p_myeloid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log10 burden before lymphodepletion of pre-existing CD19-negative and myeloid subclones (-inf: none).

    A subclone is seeded with probability ``1 - exp(-rate)``, the rate rising with burden (more
    cells, more variants), CD19-directed pre-treatment (selection), CD19-dim blasts and KMT2A
    (lineage plasticity). CD19-dim blasts also make the subclone larger.
    """
    n = cov.n
    factor = _cd19_directed_selection(cov, p)
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


def _lymphodepletion_log10_kill(cov: Covariates, p: DiseaseParams, pp: PersistenceParams) -> np.ndarray:
    """Debulking by lymphodepletion: ``lymphodepletion_log10_kill``, less with low fludarabine exposure."""
    low_flu = smooth_below(cov.flu_auc, pp.flu_threshold, pp.flu_smoothness_log)
    full, low = p.lymphodepletion_log10_kill, p.lymphodepletion_log10_kill_low_flu
    return full + (low - full) * low_flu


def draw_disease(cov: Covariates, primary_failure: np.ndarray, rng: np.random.Generator, p: DiseaseParams,
                 pp: PersistenceParams) -> DiseaseLatent:
    """Draw the latent leukemia parameters of each patient.

    Parameters
    ----------
    cov : Covariates
        The patients at infusion (burden, antigen, history, fitness).
    primary_failure : ndarray of bool
        The CAR product fails to expand (from :func:`pipelines.simulation.persistence.draw_persistence`).
    rng : numpy.random.Generator
        The latent-patient stream.
    p : DiseaseParams
        Clone sizes, growth and kill rates.
    pp : PersistenceParams
        For the antigen-load and fludarabine thresholds that also weaken CAR expansion.

    Returns
    -------
    DiseaseLatent
    """
    n = cov.n
    p_myeloid = np.where(cov.kmt2a, p.p_escape_myeloid_kmt2a, p.p_escape_myeloid_other)
    neg_before_debulk, myeloid_before_debulk = _pre_existing_escape(cov, rng, p, p_myeloid)
    em_before_debulk = _em_burden(cov, rng, p)
    debulk = _lymphodepletion_log10_kill(cov, p, pp)
    pos_marrow = cov.burden_log10 - debulk
    escape_total_hazard = _cd19_directed_selection(cov, p) * 10.0 ** (
        p.escape_total_slope * (pos_marrow - p.escape_total_offset))
    regrowth = p.regrowth_log10_per_day.draw(rng, n)
    regrowth *= np.where(cov.prior_crs >= 2, p.regrowth_factor_two_prior_crs, 1.0)
    patchy = rng.random(n) < np.where(cov.active_emd, p.p_patchy_marrow_emd, p.p_patchy_marrow)
    exhaustion = 10.0 ** (-p.maintenance_kill_per_log_burden * (cov.burden_log10 - p.expansion_reference_burden))
    return DiseaseLatent(
        pos_marrow_log10_day0=pos_marrow, pos_em_log10_day0=em_before_debulk - debulk,
        em_kill_factor=np.where(cov.active_emd, p.em_kill_factor_emd, p.em_kill_factor_other),
        expansion_kill_log10_per_day=_expansion_kill(cov, primary_failure, rng, p, pp),
        maintenance_kill_log10_per_day=p.maintenance_kill_log10_per_day.draw(rng, n) * exhaustion,
        pos_regrowth_log10_per_day=regrowth,
        neg_growth_log10_per_day=p.neg_growth_log10_per_day.draw(rng, n),
        myeloid_growth_log10_per_day=p.myeloid_growth_log10_per_day.draw(rng, n),
        neg_marrow_log10_day0=_surviving(neg_before_debulk - debulk, p),
        myeloid_marrow_log10_day0=_surviving(myeloid_before_debulk - debulk, p),
        neg_em_log10_day0=_surviving(em_before_debulk - debulk + (neg_before_debulk - cov.burden_log10), p),
        escape_total_hazard=escape_total_hazard, p_escape_myeloid=p_myeloid, patchy_marrow=patchy,
        lymphodepletion_log10_kill=debulk,
    )


def sample_escape(latent: DiseaseLatent, car_loss_day: np.ndarray, rng: np.random.Generator, p: DiseaseParams,
                  after_day: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Time of an escape variant acquired under CAR pressure, given no escape by ``after_day``.

    The hazard is ``escape_total_hazard / tau * exp(-t / tau)`` while the CAR persists
    (t < T_p), 0 after: it follows the shrinking pool of CD19-positive cells in which variants arise.

    Parameters
    ----------
    latent : DiseaseLatent
        Per-patient escape hazard and probability that a variant is myeloid.
    car_loss_day : ndarray
        T_p, the day the CAR stops working (``inf``: never).
    rng : numpy.random.Generator
        The course stream.
    p : DiseaseParams
        For ``escape_tau_days``.
    after_day : float or ndarray
        Condition on no escape by this day (the oracle's landmark).

    Returns
    -------
    escape_day : ndarray
        ``inf`` when no escape variant arises.
    escape_myeloid : ndarray of bool
        The variant is myeloid (lineage switch) rather than CD19-negative.
    """
    n = car_loss_day.shape[0]
    escape_day = sample_decaying_hazard(latent.escape_total_hazard, p.escape_tau_days, rng, n, after_day,
                                        car_loss_day)
    return escape_day, rng.random(n) < latent.p_escape_myeloid


@dataclass(frozen=True)
class ClonalCourse:
    """Piecewise-linear log10 burden of every clone x compartment, given T_p and the escape.

    The clones' sizes on day 0 and their rates are the patient's :class:`DiseaseLatent`; an
    escape variant acquired on ``escape_day`` enters at ``escape_seed_log10`` and grows at the
    rate of its lineage.
    """

    disease: DiseaseLatent
    car_loss_day: np.ndarray
    """T_p: the CAR kills CD19-positive cells before it, not after (``inf``: never lost)."""
    escape_day: np.ndarray
    """Day an escape variant arises under CAR pressure (``inf``: none)."""
    escape_myeloid: np.ndarray
    """The escape variant is myeloid (lineage switch) rather than CD19-negative."""
    escape_seed_log10: float
    expansion_days: float
    floor_log10: float

    def _killed(self, t: np.ndarray, kill_factor: np.ndarray | float) -> np.ndarray:
        """log10 of CD19-positive cells killed by day ``t`` (the kill stops at T_p)."""
        u = np.minimum(t, as_column(self.car_loss_day, t))
        e = self.expansion_days
        with np.errstate(invalid="ignore"):  # 0 * inf (no kill, CAR never lost) is NaN: no extinction
            killed = (as_column(self.disease.expansion_kill_log10_per_day, t) * np.minimum(u, e)
                      + as_column(self.disease.maintenance_kill_log10_per_day, t) * np.maximum(u - e, 0))
            return as_column(kill_factor, t) * killed

    def _pos(self, t: np.ndarray, day0: np.ndarray, kill_factor: np.ndarray | float) -> np.ndarray:
        under_car = as_column(day0, t) - self._killed(t, kill_factor)
        since_loss = np.maximum(t - as_column(self.car_loss_day, t), 0.0)
        regrown = under_car + as_column(self.disease.pos_regrowth_log10_per_day, t) * since_loss
        return np.where(under_car < self.floor_log10, -np.inf, regrown)

    def _escaping(self, t: np.ndarray, pre: np.ndarray, growth: np.ndarray, myeloid: bool) -> np.ndarray:
        g, day = as_column(growth, t), as_column(self.escape_day, t)
        lineage = as_column(self.escape_myeloid == myeloid, t)
        since = t - np.minimum(day, t)
        acquired = np.where(np.logical_and(lineage, t >= day), self.escape_seed_log10 + g * since, -np.inf)
        return np.maximum(as_column(pre, t) + g * t, acquired)

    def log10_burden(self, t: np.ndarray) -> dict[str, np.ndarray]:
        """Burden of each clone at days ``t`` (shape (n,) or (n, k)); keys are :data:`CLONES`."""
        t = np.asarray(t, dtype=float)
        d = self.disease
        return {
            "pos_m": self._pos(t, d.pos_marrow_log10_day0, 1.0),
            "neg_m": self._escaping(t, d.neg_marrow_log10_day0, d.neg_growth_log10_per_day, myeloid=False),
            "my_m": self._escaping(t, d.myeloid_marrow_log10_day0, d.myeloid_growth_log10_per_day, myeloid=True),
            "pos_e": self._pos(t, d.pos_em_log10_day0, d.em_kill_factor),
            "neg_e": as_column(d.neg_em_log10_day0, t) + as_column(d.neg_growth_log10_per_day, t) * t,
        }

    def _pos_crossing(self, day0: np.ndarray, kill_factor: np.ndarray | float, threshold: float) -> np.ndarray:
        at_loss = day0 - self._killed(self.car_loss_day, kill_factor)
        extinct = ~(at_loss >= self.floor_log10)
        with np.errstate(invalid="ignore"):
            rise = self.car_loss_day + (threshold - at_loss) / self.disease.pos_regrowth_log10_per_day
        crossing = np.where(at_loss >= threshold, 0.0, rise)
        return np.where(extinct | ~np.isfinite(self.car_loss_day), np.inf, crossing)

    def _escape_crossing(self, pre: np.ndarray, growth: np.ndarray, myeloid: bool, threshold: float) -> np.ndarray:
        acquired = np.where(self.escape_myeloid == myeloid, self.escape_day, np.inf)
        seeded = acquired + _linear_crossing(np.full(pre.shape, self.escape_seed_log10), growth, threshold)
        return np.minimum(_linear_crossing(pre, growth, threshold), seeded)

    def crossing_days(self, marrow_threshold: float, em_threshold: float) -> np.ndarray:
        """First upward passage of each clone over its compartment's threshold, shape (n, 5).

        Parameters
        ----------
        marrow_threshold, em_threshold : float
            Clinical thresholds (log10 burden) of the marrow and extramedullary compartments.

        Returns
        -------
        ndarray, shape (n, 5)
            Columns in the order of :data:`CLONES`; ``inf`` = never; 0 = the clone never fell
            below the threshold (persistent disease).
        """
        d = self.disease
        return np.column_stack([
            self._pos_crossing(d.pos_marrow_log10_day0, 1.0, marrow_threshold),
            self._escape_crossing(d.neg_marrow_log10_day0, d.neg_growth_log10_per_day, False, marrow_threshold),
            self._escape_crossing(d.myeloid_marrow_log10_day0, d.myeloid_growth_log10_per_day, True, marrow_threshold),
            self._pos_crossing(d.pos_em_log10_day0, d.em_kill_factor, em_threshold),
            _linear_crossing(d.neg_em_log10_day0, d.neg_growth_log10_per_day, em_threshold),
        ])


def _linear_crossing(intercept: np.ndarray, growth: np.ndarray, threshold: float) -> np.ndarray:
    """First upward passage of ``intercept + growth * t`` over ``threshold``.

    0 when the line starts at or above the threshold and never falls below it; ``inf`` when it
    never passes upward (including a declining line that starts above the threshold).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        day = np.where(intercept >= threshold, np.where(growth >= 0.0, 0.0, np.inf), (threshold - intercept) / growth)
    return np.where(np.isfinite(intercept) & (day >= 0.0), day, np.inf)


def clonal_course(latent: DiseaseLatent, car_loss_day: np.ndarray, escape_day: np.ndarray,
                  escape_myeloid: np.ndarray, p: DiseaseParams) -> ClonalCourse:
    """Assemble the piecewise-linear burdens from the latent parameters, T_p and the escape.

    Parameters
    ----------
    latent : DiseaseLatent
        Clone sizes and rates.
    car_loss_day : ndarray
        T_p, CAR persistence time (``inf`` = persists).
    escape_day, escape_myeloid : ndarray
        From :func:`sample_escape`.
    p : DiseaseParams
        For the escape seed, the expansion phase and the extinction level.

    Returns
    -------
    ClonalCourse
    """
    return ClonalCourse(disease=latent, car_loss_day=car_loss_day, escape_day=escape_day,
                        escape_myeloid=escape_myeloid, escape_seed_log10=p.escape_seed_log10,
                        expansion_days=p.expansion_days, floor_log10=p.floor_log10)
