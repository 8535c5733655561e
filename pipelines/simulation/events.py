"""Response, relapse, competing events (death in remission, consolidative HSCT) and follow-up.

- Response at the day-28 assessment: no response (NR) when a marrow clone is at or above 5%
  blasts or extramedullary disease is still clinically evident; otherwise CR (or CRi).
- Relapse: the first upward passage of any clone over its compartment's threshold; phenotype =
  the clone that crossed, site = the compartment(s) involved.
- Death: an early treatment-related hazard decaying over weeks, then a low infection hazard.
- HSCT: decided at visits from *observed* results (B-cell recovery, detectable MRD), with the
  center's policy as a multiplier and a lower rate after a prior transplant; it happens after
  a work-up delay unless relapse or death comes first.
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
    "responds",
    "relapse_from_crossings",
    "sample_death_day",
    "hsct_decision_day",
    "first_event",
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


def responds(course: ClonalCourse, response_day: np.ndarray, death_day: np.ndarray,
             p: DiseaseParams) -> np.ndarray:
    """Remission at the response assessment: alive, marrow clones < 5%, no evident EM disease.

    Parameters
    ----------
    course : ClonalCourse
        The latent clone burdens.
    response_day : ndarray
        Day of the response assessment (days since infusion, about 28).
    death_day : ndarray
        Latent day of death (a patient dead by the assessment does not respond).
    p : DiseaseParams
        Marrow and extramedullary thresholds.

    Returns
    -------
    ndarray of bool
    """
    burden = course.log10_burden(response_day)
    marrow = np.maximum.reduce([burden["pos_m"], burden["neg_m"], burden["my_m"]])
    em = np.maximum(burden["pos_e"], burden["neg_e"])
    return (marrow < p.marrow_threshold_log10) & (em < p.em_threshold_log10) & (death_day > response_day)


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


def sample_death_day(prior_hsct: np.ndarray, rng: np.random.Generator, p: EventParams,
                     after_day: np.ndarray | float = 0.0) -> np.ndarray:
    """Day of death in remission, given alive at ``after_day``: early toxicity or later infection.

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
    total = -np.log1p(-p.p_treatment_related_death)
    early = sample_decaying_hazard(total, p.treatment_related_tau_days, rng, n, after_day)
    rate = p.late_death_per_year / 365.25 * np.where(prior_hsct, p.late_death_factor_prior_hsct, 1.0)
    late = np.maximum(after_day, p.late_death_start_day) + rng.exponential(1.0, n) / rate
    return np.minimum(early, late)


def hsct_decision_day(observed: VisitObservations, schedule: Schedule, b_cells_recovered: np.ndarray,
                      eligible_until: np.ndarray, hsct_policy: np.ndarray, prior_hsct: np.ndarray,
                      decision_uniform: np.ndarray, p: EventParams) -> np.ndarray:
    """Day of the first visit at which a consolidative HSCT is decided (``inf``: never).

    Parameters
    ----------
    observed : VisitObservations
        MRD results at the visits (detection flags are used).
    schedule : Schedule
        Visit days and the assays done.
    b_cells_recovered : ndarray of bool, shape (n, V)
        B-cell recovery observed at the visit (count above the recovery threshold).
    eligible_until : ndarray
        Last day a decision can be taken (relapse or death before it ends eligibility);
        ``-inf`` for non-responders.
    hsct_policy : ndarray
        Center policy multiplier per patient.
    prior_hsct : ndarray of bool
        A transplant before CAR T cells.
    decision_uniform : ndarray, shape (n, V)
        Uniform draw of each visit's decision (decided when below 1 - exp(-hazard)).
    p : EventParams
        Per-visit hazards of deciding an HSCT and the last day a decision is taken.

    Returns
    -------
    ndarray
        Day of the deciding visit (days since infusion); the transplant follows after a delay.
    """
    mrd_positive = np.zeros_like(schedule.attended)
    for series in MRD_SERIES:
        mrd_positive |= observed.detected[series]
    hazard = p.hsct_hazard_base + p.hsct_hazard_bca_loss * b_cells_recovered + p.hsct_hazard_mrd_positive * mrd_positive
    hazard = hazard * (hsct_policy * np.where(prior_hsct, p.hsct_factor_prior_hsct, 1.0))[:, None]
    possible = schedule.attended & (schedule.day < eligible_until[:, None]) & (schedule.day <= p.hsct_last_decision_day)
    decided = possible & (decision_uniform < -np.expm1(-hazard))
    first = first_true_index(decided)
    return np.where(first >= 0, schedule.day[np.arange(first.shape[0]), np.maximum(first, 0)], np.inf)


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
