"""Response, relapse, competing events (death in remission, consolidative HSCT) and follow-up.

- Response at the day-28 assessment: no response (NR) when a marrow clone is at or above 5%
  blasts or extramedullary disease is still clinically evident; otherwise CR (or CRi).
- Relapse: the first upward passage of any clone over its compartment's threshold; phenotype =
  the clone that crossed, site = the compartment(s) involved.
- Death: an early treatment-related hazard decaying over weeks, then a low infection hazard.
- HSCT: decided at visits from *observed* results (B-cell recovery, detectable MRD), with the
  center's policy as a multiplier and a lower rate after a prior transplant; it happens after
  a work-up delay unless relapse or death comes first.

The course samples death and the HSCT decisions (:func:`sample_death_day`, :func:`hsct_decision_day`);
the Monte Carlo oracle integrates them out instead (:func:`first_event_probabilities`, from the
same hazards: :func:`death_cumulative_hazard`, :func:`hsct_decision_probability`), which removes
most of its Monte Carlo noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.simulation.arrays import first_true_index, sample_decaying_hazard
from pipelines.simulation.disease import MARROW_CLONES, PHENOTYPE_OF_CLONE, ClonalCourse
from pipelines.simulation.observation import MRD_SERIES, Schedule, VisitObservations
from pipelines.simulation.params import DiseaseParams, EventParams

__all__ = [
    "EVENT_NONE",
    "EVENT_RELAPSE",
    "EVENT_DEATH",
    "EVENT_HSCT",
    "SITE_MEDULLARY",
    "SITE_EXTRAMEDULLARY",
    "SITE_COMBINED",
    "Relapse",
    "FirstEvent",
    "in_remission",
    "relapse_from_crossings",
    "death_cumulative_hazard",
    "sample_death_day",
    "hsct_decision_probability",
    "hsct_decision_day",
    "first_event",
    "first_event_probabilities",
    "draw_censoring_day",
]

EVENT_NONE, EVENT_RELAPSE, EVENT_DEATH, EVENT_HSCT = 0, 1, 2, 3
"""Event codes (``tables.EVENT_NAMES`` spells them)."""
SITE_MEDULLARY, SITE_EXTRAMEDULLARY, SITE_COMBINED = 0, 1, 2
"""Relapse site codes (``tables.SITE_NAMES`` spells them)."""


@dataclass(frozen=True)
class Relapse:
    """Latent relapse of each patient (if nothing else happened first)."""

    day: np.ndarray
    """Days since infusion of the first clone's crossing; ``inf``: never."""
    phenotype: np.ndarray
    """0 CD19_pos, 1 CD19_neg, 2 lineage_switch: the phenotype of the clone that crossed first."""
    site: np.ndarray
    """A ``SITE_*`` code: the compartment(s) crossing within ``combined_site_window_days``."""


@dataclass(frozen=True)
class FirstEvent:
    """The first event after infusion (latent, before administrative censoring)."""

    event: np.ndarray
    """An ``EVENT_*`` code."""
    day: np.ndarray
    """Days since infusion; ``inf`` for ``EVENT_NONE``."""


def in_remission(course: ClonalCourse, response_day: np.ndarray, p: DiseaseParams) -> np.ndarray:
    """The disease criterion of remission at the response assessment: marrow clones < 5%, no evident EM disease.

    Parameters
    ----------
    course : ClonalCourse
        The latent clone burdens.
    response_day : ndarray
        Day of the response assessment (days since infusion, about 28).
    p : DiseaseParams
        Marrow and extramedullary thresholds.

    Returns
    -------
    ndarray of bool
    """
    burden = course.log10_burden(response_day)
    marrow = np.maximum.reduce([burden["pos_m"], burden["neg_m"], burden["my_m"]])
    em = np.maximum(burden["pos_e"], burden["neg_e"])
    return (marrow < p.marrow_threshold_log10) & (em < p.em_threshold_log10)


def relapse_from_crossings(crossings: np.ndarray, p: DiseaseParams) -> Relapse:
    """Relapse day, phenotype (0 CD19_pos, 1 CD19_neg, 2 lineage_switch) and site from crossings.

    Parameters
    ----------
    crossings : ndarray, shape (n, 5)
        From :meth:`ClonalCourse.crossing_days`.
    p : DiseaseParams
        Disease parameters (thresholds).

    Returns
    -------
    Relapse
        ``day`` is ``inf`` when no clone ever crosses.
    """
    first = np.argmin(crossings, axis=1)
    day = crossings[np.arange(crossings.shape[0]), first]
    marrow_day = crossings[:, MARROW_CLONES].min(axis=1)
    em_day = crossings[:, ~MARROW_CLONES].min(axis=1)
    with np.errstate(invalid="ignore"):
        both = np.abs(marrow_day - em_day) <= p.combined_site_window_days
    site = np.where(both, SITE_COMBINED, np.where(marrow_day <= em_day, SITE_MEDULLARY, SITE_EXTRAMEDULLARY))
    return Relapse(day=day, phenotype=PHENOTYPE_OF_CLONE[first], site=site)


def _late_death_rate_per_day(prior_hsct: np.ndarray, p: EventParams) -> np.ndarray:
    """Hazard (per day) of later death in remission, higher after a prior transplant."""
    return p.late_death_per_year / 365.25 * np.where(prior_hsct, p.late_death_factor_prior_hsct, 1.0)


def _treatment_related_total_hazard(p: EventParams) -> float:
    """Integrated early hazard, so that ``p_treatment_related_death`` die of it."""
    return float(-np.log1p(-p.p_treatment_related_death))


def death_cumulative_hazard(prior_hsct: np.ndarray, day: np.ndarray, after_day: np.ndarray | float,
                            p: EventParams) -> np.ndarray:
    """Cumulative hazard of death in remission from ``after_day`` to ``day`` (0 when ``day <= after_day``).

    The two hazards of :func:`sample_death_day`: ``total / tau * exp(-t / tau)`` (treatment-related)
    plus a constant later rate from ``late_death_start_day``; ``exp(-H)`` is the probability of
    being alive at ``day`` given alive at ``after_day``.

    Parameters
    ----------
    prior_hsct : ndarray of bool
        A transplant before CAR T cells (raises the later rate); broadcast against ``day``.
    day : ndarray
        Days since infusion (``inf`` allowed).
    after_day : float or ndarray
        Alive at this day.
    p : EventParams
        Treatment-related death probability and decay, later death rate.

    Returns
    -------
    ndarray
        Broadcast shape of the inputs.
    """
    tau = p.treatment_related_tau_days
    day = np.maximum(day, after_day)
    early = _treatment_related_total_hazard(p) * (np.exp(-np.asarray(after_day, dtype=float) / tau) - np.exp(-day / tau))
    late_start = np.maximum(after_day, p.late_death_start_day)
    with np.errstate(invalid="ignore"):  # inf - finite is inf; the rate is > 0
        late = _late_death_rate_per_day(prior_hsct, p) * np.maximum(day - late_start, 0.0)
    return early + late


def sample_death_day(prior_hsct: np.ndarray, rng: np.random.Generator, p: EventParams,
                     after_day: np.ndarray | float = 0.0) -> np.ndarray:
    """Day of death in remission, given alive at ``after_day``: early toxicity or later infection.

    Its survival function is ``exp(-death_cumulative_hazard)``.

    Parameters
    ----------
    prior_hsct : ndarray of bool
        A transplant before CAR T cells raises the later (infection) hazard.
    rng : numpy.random.Generator
        The course stream.
    p : EventParams
        Treatment-related death probability and decay, later death rate.
    after_day : float or ndarray
        Condition on being alive at this day (the oracle's landmark).

    Returns
    -------
    ndarray
        Days since infusion (the earlier of the two causes).
    """
    n = prior_hsct.shape[0]
    early = sample_decaying_hazard(_treatment_related_total_hazard(p), p.treatment_related_tau_days, rng, n,
                                   after_day)
    late = np.maximum(after_day, p.late_death_start_day) + rng.exponential(1.0, n) / _late_death_rate_per_day(
        prior_hsct, p)
    return np.minimum(early, late)


def hsct_decision_probability(observed: VisitObservations, schedule: Schedule, b_cells_recovered: np.ndarray,
                              eligible_until: np.ndarray, hsct_policy: np.ndarray, prior_hsct: np.ndarray,
                              p: EventParams) -> np.ndarray:
    """Probability that a consolidative HSCT is decided at each visit (0 where no decision is possible).

    Parameters
    ----------
    observed : VisitObservations
        MRD results at the visits (detection flags are used).
    schedule : Schedule
        Visit days and the assays done.
    b_cells_recovered : ndarray of bool, shape (n, V)
        B-cell recovery observed at the visit (count above the recovery threshold).
    eligible_until : ndarray
        A decision is possible at visits strictly before this day (the relapse; ``-inf`` for
        non-responders).
    hsct_policy : ndarray
        Center policy multiplier per patient.
    prior_hsct : ndarray of bool
        A transplant before CAR T cells.
    p : EventParams
        Per-visit hazards of deciding an HSCT and the last day a decision is taken.

    Returns
    -------
    ndarray, shape (n, V)
        ``1 - exp(-hazard)`` at attended visits before ``eligible_until`` and
        ``hsct_last_decision_day``, else 0.
    """
    mrd_positive = np.zeros_like(schedule.attended)
    for series in MRD_SERIES:
        mrd_positive |= observed.detected[series]
    hazard = p.hsct_hazard_base + p.hsct_hazard_bca_loss * b_cells_recovered + p.hsct_hazard_mrd_positive * mrd_positive
    hazard = hazard * (hsct_policy * np.where(prior_hsct, p.hsct_factor_prior_hsct, 1.0))[:, None]
    possible = schedule.attended & (schedule.day < eligible_until[:, None]) & (schedule.day <= p.hsct_last_decision_day)
    return np.where(possible, -np.expm1(-hazard), 0.0)


def hsct_decision_day(probability: np.ndarray, visit_day: np.ndarray, decision_uniform: np.ndarray) -> np.ndarray:
    """Day of the first visit at which a consolidative HSCT is decided (``inf``: never).

    Parameters
    ----------
    probability : ndarray, shape (n, V)
        From :func:`hsct_decision_probability`.
    visit_day : ndarray, shape (n, V)
        Visit days (days since infusion).
    decision_uniform : ndarray, shape (n, V)
        Uniform draw of each visit's decision (decided when below the probability).

    Returns
    -------
    ndarray
        Day of the deciding visit; the transplant follows after a delay.
    """
    first = first_true_index(decision_uniform < probability)
    return np.where(first >= 0, visit_day[np.arange(first.shape[0]), np.maximum(first, 0)], np.inf)


def first_event(responder: np.ndarray, response_day: np.ndarray, relapse_day: np.ndarray, death_day: np.ndarray,
                hsct_day: np.ndarray, horizon_days: float) -> FirstEvent:
    """The first of relapse (responders only), death and HSCT within the horizon.

    Non-responders leave the CAR-only course at the assessment: their only possible event is a
    death before it.

    Parameters
    ----------
    responder : ndarray of bool
        Remission at the assessment.
    response_day : ndarray
        Day of the assessment.
    relapse_day, death_day, hsct_day : ndarray
        Latent day of each event (``inf``: never), days since infusion.
    horizon_days : float
        Events after it count as none.

    Returns
    -------
    FirstEvent
    """
    relapse = np.where(responder, relapse_day, np.inf)
    hsct = np.where(responder, hsct_day, np.inf)
    death = np.where(responder | (death_day <= response_day), death_day, np.inf)
    days = np.column_stack([relapse, death, hsct])
    kind = np.argmin(days, axis=1)
    day = days[np.arange(days.shape[0]), kind]
    happened = day <= horizon_days
    return FirstEvent(event=np.where(happened, kind + 1, EVENT_NONE), day=np.where(happened, day, np.inf))


def first_event_probabilities(relapse: Relapse, decision_probability: np.ndarray, visit_day: np.ndarray,
                              hsct_delay_days: np.ndarray, prior_hsct: np.ndarray, alive_at: np.ndarray,
                              end_days: np.ndarray, p: EventParams) -> np.ndarray:
    """Probability of each first event by each end day, integrating out death and the HSCT decisions.

    The conditional expectation of :func:`first_event` for a responder alive at ``alive_at``, given
    everything but the death time and the decision uniforms: the HSCT is decided at visit k with
    probability ``q_k * prod_{j<k} (1 - q_j)`` (or never) and follows after the work-up delay;
    relapse and HSCT then happen in that order unless death comes first (relapse wins a tie with
    HSCT, as in :func:`first_event`).

    Parameters
    ----------
    relapse : Relapse
        Latent relapse day and phenotype.
    decision_probability : ndarray, shape (n, V)
        From :func:`hsct_decision_probability` with eligibility until the relapse; decisions
        already taken (or not) are 1 (or 0).
    visit_day : ndarray, shape (n, V)
        Visit days.
    hsct_delay_days : ndarray
        Work-up time from the decision to the transplant.
    prior_hsct : ndarray of bool
        For the death hazard.
    alive_at : ndarray
        Day the patient is known alive (the landmark, or the response assessment).
    end_days : ndarray, shape (H,)
        Count events up to these days (days since infusion).
    p : EventParams
        Death hazards.

    Returns
    -------
    ndarray, shape (n, H, 6)
        Probabilities of CD19_pos, CD19_neg, lineage_switch relapse, death, HSCT first, and of
        no event by each end day; they sum to 1.
    """
    n = decision_probability.shape[0]
    undecided = np.cumprod(1.0 - decision_probability, axis=1)
    undecided_before = np.hstack([np.ones((n, 1)), undecided[:, :-1]])
    weight = np.hstack([decision_probability * undecided_before, undecided[:, -1:]])
    hsct_day = np.hstack([visit_day + hsct_delay_days[:, None], np.full((n, 1), np.inf)])
    other_day = np.minimum(relapse.day[:, None], hsct_day)
    relapse_first = relapse.day[:, None] <= hsct_day
    hazard_other = death_cumulative_hazard(prior_hsct[:, None], other_day, alive_at[:, None], p)
    alive_then = weight * np.exp(-hazard_other)
    phenotype = relapse.phenotype[:, None] == np.arange(3)
    out = np.empty((n, len(end_days), 6))
    for h, end in enumerate(end_days):
        hazard_end = death_cumulative_hazard(prior_hsct, np.full(n, float(end)), alive_at, p)
        within = alive_then * (other_day <= end)
        out[:, h, :3] = phenotype * (within * relapse_first).sum(axis=1)[:, None]
        out[:, h, 3] = (weight * -np.expm1(-np.minimum(hazard_other, hazard_end[:, None]))).sum(axis=1)
        out[:, h, 4] = (within * ~relapse_first).sum(axis=1)
        out[:, h, 5] = (weight * np.exp(-hazard_end[:, None]) * (other_day > end)).sum(axis=1)
    return out


def draw_censoring_day(site_start_day: np.ndarray, rng: np.random.Generator, p: EventParams) -> np.ndarray:
    """Administrative censoring (staggered enrolment to a common cut-off) or loss to follow-up.

    Parameters
    ----------
    site_start_day : ndarray
        Day (from the consortium start) each patient's center began to enrol.
    rng : numpy.random.Generator
        The censoring stream.
    p : EventParams
        Last enrolment day, consortium cut-off and the loss-to-follow-up rate.

    Returns
    -------
    ndarray
        Whole days from infusion to the end of follow-up.
    """
    n = site_start_day.shape[0]
    enrolment_day = rng.uniform(site_start_day, p.last_enrolment_day, n)
    administrative = p.consortium_cutoff_day - enrolment_day
    lost = rng.exponential(365.25 / p.loss_to_followup_per_year, n)
    return np.round(np.minimum(administrative, lost))
