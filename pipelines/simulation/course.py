"""The forward model: latent patients, the randomness of their course, and the course itself.

A patient's course is split into *latent parameters* (drawn once: covariates, clone sizes and
rates, persistence hazard, observation properties) and *course randomness* (CAR loss time T_p,
acquired escape, death, result noise and HSCT decisions at visits). The Monte Carlo oracle keeps
the latent parameters and everything that happened up to the landmark, and redraws the rest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

import numpy as np

from pipelines.simulation.covariates import Covariates, draw_covariates
from pipelines.simulation.disease import (
    ClonalCourse,
    DiseaseLatent,
    clonal_course,
    draw_disease,
    sample_escape,
)
from pipelines.simulation.events import (
    FirstEvent,
    Relapse,
    first_event,
    hsct_decision_day,
    hsct_decision_probability,
    in_remission,
    relapse_from_crossings,
    sample_death_day,
)
from pipelines.simulation.observation import (
    ObservationLatent,
    Schedule,
    VisitNoise,
    VisitObservations,
    draw_observation_latent,
    draw_schedule,
    draw_visit_noise,
    observe_b_cells,
    observe_visits,
)
from pipelines.simulation.params import SimulationParams
from pipelines.simulation.persistence import (
    PersistenceLatent,
    b_cells_per_ul,
    draw_persistence,
    sample_persistence_day,
)

__all__ = [
    "LatentPatients",
    "CourseDraws",
    "DiseaseCourse",
    "CourseOutcome",
    "draw_latent_patients",
    "draw_course",
    "disease_course",
    "run_course",
    "decision_view",
]

T = TypeVar("T", bound="DataclassInstance")


@dataclass(frozen=True)
class LatentPatients:
    """Everything drawn once per patient (arrays of length n)."""

    cov: Covariates
    disease: DiseaseLatent
    persistence: PersistenceLatent
    observation: ObservationLatent
    schedule: Schedule
    hsct_policy: np.ndarray
    """The center's multiplier of the per-visit HSCT decision hazard."""
    b_cells_in_pct: np.ndarray
    """The center reports B cells in % of lymphocytes (else cells/uL)."""
    hsct_delay_days: np.ndarray
    """Work-up time from the HSCT decision to the transplant."""

    @property
    def n(self) -> int:
        """Number of patients."""
        return self.cov.n


@dataclass(frozen=True)
class CourseDraws:
    """The random course of each patient given its latent parameters."""

    car_loss_day: np.ndarray
    """T_p, the day the CAR stops working (``inf``: persists)."""
    escape_day: np.ndarray
    """Day an escape variant arises under CAR pressure (``inf``: none)."""
    escape_myeloid: np.ndarray
    death_day: np.ndarray
    """Latent day of death in remission (``inf`` never happens: the late hazard is constant)."""
    noise: VisitNoise


@dataclass(frozen=True)
class DiseaseCourse:
    """What T_p, the escape and the result noise decide: everything but death and the HSCT decisions."""

    clonal: ClonalCourse
    crossings: np.ndarray
    """Crossing day of each clone, shape (n, 5) (:meth:`ClonalCourse.crossing_days`)."""
    remission: np.ndarray
    """The disease criterion of remission at the response assessment (alive or not)."""
    relapse: Relapse
    observed: VisitObservations
    b_cells_value: np.ndarray
    """Observed B cells at each visit slot in the center's unit (NaN: not done)."""
    hsct_probability: np.ndarray
    """Probability of deciding a consolidative HSCT at each visit slot, until the relapse."""


@dataclass(frozen=True)
class CourseOutcome:
    """The deterministic consequences of latent parameters and course draws."""

    clonal: ClonalCourse
    crossings: np.ndarray
    """Crossing day of each clone, shape (n, 5) (:meth:`ClonalCourse.crossing_days`)."""
    responder: np.ndarray
    """Remission (CR/CRi) at the response assessment."""
    relapse: Relapse
    hsct_day: np.ndarray
    """Day of a consolidative HSCT if nothing comes first (``inf``: not decided)."""
    first: FirstEvent
    observed: VisitObservations
    b_cells_value: np.ndarray
    """Observed B cells at each visit slot in the center's unit (NaN: not done)."""


def draw_latent_patients(n: int, rng: np.random.Generator, params: SimulationParams) -> LatentPatients:
    """Draw the latent parameters of ``n`` patients.

    Covariates first, then CAR persistence (its primary failure weakens expansion), the leukemia,
    the observation properties and the visit schedule, all from the one latent-patient stream.

    Parameters
    ----------
    n : int
        Number of patients.
    rng : numpy.random.Generator
        The latent-patient stream (the order of the draws is part of the calibrated cohort).
    params : SimulationParams
        Every parameter; the sites give the HSCT policy and the B-cell reporting unit.

    Returns
    -------
    LatentPatients
    """
    cov = draw_covariates(n, rng, params.covariates, params.sites)
    persistence = draw_persistence(cov, rng, params.persistence)
    disease = draw_disease(cov, persistence.primary_failure, rng, params.disease, params.persistence)
    low, high = params.events.response_day_range
    response_day = rng.integers(low, high + 1, n).astype(float)
    return LatentPatients(
        cov=cov, disease=disease, persistence=persistence,
        observation=draw_observation_latent(n, disease.patchy_marrow, rng, params.observation),
        schedule=draw_schedule(cov.site, response_day, rng, params.observation, params.sites),
        hsct_policy=np.array([s.hsct_policy for s in params.sites])[cov.site],
        b_cells_in_pct=np.array([s.b_cell_unit == "pct_lymphocytes" for s in params.sites])[cov.site],
        hsct_delay_days=rng.uniform(*params.events.hsct_delay_days, n),
    )


def draw_course(latent: LatentPatients, rng: np.random.Generator, params: SimulationParams,
                full_noise: bool = True) -> CourseDraws:
    """Draw a patient's course from infusion on: T_p, acquired escape, death and result noise.

    Parameters
    ----------
    latent : LatentPatients
        The patients.
    rng : numpy.random.Generator
        The course stream.
    params : SimulationParams
        Persistence, disease and event parameters.
    full_noise : bool
        Also draw the noise only the output tables need (CAR copies, antigen).

    Returns
    -------
    CourseDraws
    """
    car_loss_day = sample_persistence_day(latent.persistence, rng, params.persistence)
    escape_day, escape_myeloid = sample_escape(latent.disease, car_loss_day, rng, params.disease)
    return CourseDraws(
        car_loss_day=car_loss_day, escape_day=escape_day, escape_myeloid=escape_myeloid,
        death_day=sample_death_day(latent.cov.prior_hsct, rng, params.events),
        noise=draw_visit_noise(latent.schedule.day.shape, rng, full=full_noise),
    )


def disease_course(latent: LatentPatients, draws: CourseDraws, params: SimulationParams) -> DiseaseCourse:
    """Resolve the leukemia, its observation and the HSCT decision hazards (not death, not the decisions).

    A decision is possible at visits before the relapse. A death before such a visit makes the
    decision moot (death is the first event then), so it need not end the eligibility here.

    Parameters
    ----------
    latent : LatentPatients
        The patients (rows may repeat: Monte Carlo replicates).
    draws : CourseDraws
        Their course draws (the death day is not used).
    params : SimulationParams
        Thresholds, observation and event parameters.

    Returns
    -------
    DiseaseCourse
    """
    dp = params.disease
    clonal = clonal_course(latent.disease, draws.car_loss_day, draws.escape_day, draws.escape_myeloid, dp)
    crossings = clonal.crossing_days(dp.marrow_threshold_log10, dp.em_threshold_log10)
    remission = in_remission(clonal, latent.schedule.day[:, 0], dp)
    relapse = relapse_from_crossings(crossings, dp)
    observed = observe_visits(clonal, latent.observation, latent.schedule, draws.noise, params.observation)
    true_b = b_cells_per_ul(latent.schedule.day, draws.car_loss_day, latent.persistence, params.persistence)
    b_value, b_recovered = observe_b_cells(true_b, latent.persistence.lymphocytes_per_ul, latent.b_cells_in_pct,
                                           latent.schedule.b_cells, draws.noise.b_cells, params.observation)
    probability = hsct_decision_probability(observed, latent.schedule, b_recovered,
                                            np.where(remission, relapse.day, -np.inf), latent.hsct_policy,
                                            latent.cov.prior_hsct, params.events)
    return DiseaseCourse(clonal=clonal, crossings=crossings, remission=remission, relapse=relapse, observed=observed,
                         b_cells_value=b_value, hsct_probability=probability)


def run_course(latent: LatentPatients, draws: CourseDraws, params: SimulationParams) -> CourseOutcome:
    """Resolve response, relapse, HSCT and the first event from the latent state and the draws.

    Deterministic: the same latent state and draws give the same course (the oracle relies on it).

    Parameters
    ----------
    latent : LatentPatients
        The patients (rows may repeat: Monte Carlo replicates).
    draws : CourseDraws
        Their course draws.
    params : SimulationParams
        Thresholds, observation and event parameters.

    Returns
    -------
    CourseOutcome
    """
    course = disease_course(latent, draws, params)
    response_day = latent.schedule.day[:, 0]
    responder = course.remission & (draws.death_day > response_day)
    decision = hsct_decision_day(course.hsct_probability, latent.schedule.day, draws.noise.decision)
    hsct_day = decision + latent.hsct_delay_days
    first = first_event(responder, response_day, course.relapse.day, draws.death_day, hsct_day, params.horizon_days)
    return CourseOutcome(clonal=course.clonal, crossings=course.crossings, responder=responder,
                         relapse=course.relapse, hsct_day=hsct_day, first=first, observed=course.observed,
                         b_cells_value=course.b_cells_value)


def _first_columns(record: T, k: int) -> T:
    """Copy of a dataclass with every 2-d array field cut to its first ``k`` columns."""
    values = {spec.name: getattr(record, spec.name)[:, :k] for spec in dataclasses.fields(record)
              if isinstance(getattr(record, spec.name), np.ndarray) and getattr(record, spec.name).ndim == 2}
    return dataclasses.replace(record, **values)


def decision_view(latent: LatentPatients, draws: CourseDraws, params: SimulationParams
                  ) -> tuple[LatentPatients, CourseDraws]:
    """Restrict the schedule and noise to the visits at which an HSCT can still be decided.

    Events do not depend on later visits, so the Monte Carlo oracle runs on this view.

    Parameters
    ----------
    latent : LatentPatients
        The patients.
    draws : CourseDraws
        Their course draws.
    params : SimulationParams
        The nominal visit days and the last day an HSCT is decided.

    Returns
    -------
    (LatentPatients, CourseDraws)
        The same with the visit-slot arrays cut to the decision visits.
    """
    nominal = np.asarray(params.observation.visit_days, dtype=float)
    k = int(np.sum(nominal <= params.events.hsct_last_decision_day))
    latent = dataclasses.replace(latent, schedule=_first_columns(latent.schedule, k))
    draws = dataclasses.replace(draws, noise=_first_columns(draws.noise, k))
    return latent, draws
