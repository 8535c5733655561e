"""Ground truth and the Monte Carlo oracle: true cumulative incidences given the latent state.

At landmark s the oracle keeps each patient's latent parameters and everything that happened up
to s (CAR loss and escape if they occurred by s, results and HSCT decisions at visits up to s),
redraws the rest of the course (T_p given persistence at s, escape given none by s, later
results) ``replicates`` times, and averages the probability of each first event by cause within
each horizon. Risk set at s > 0: latent responders event-free at s. At s = 0 the CIFs are
conditional on remission (replicates without remission are left out), as the landmark-0 set
of ``features.landmarks`` is; ``p_response`` gives the probability of remission itself.

Conditional expectation (Rao-Blackwellisation): within a replicate, death and the HSCT decisions
at future visits are not drawn but integrated out exactly
(:func:`pipelines.simulation.events.first_event_probabilities`, from the hazards the course
samples from). The estimate keeps its expectation and loses most of its noise: for patients
whose relapse is already certain (a CD19-positive clone regrowing after CAR loss) the only
uncertainty left is whether death or an HSCT comes first, which differs between patients by a
fraction of a percent, and counting events resolved it only with tens of thousands of
replicates (so the oracle's concordance rose with the replicate count; see docs/models.md).

Monte Carlo standard error: replicates are independent, so the standard error of a patient's
CIF is the standard deviation of the replicates' probabilities over the square root of their
number (a ratio estimate over the replicates in remission at s = 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.simulation.arrays import take_rows
from pipelines.simulation.course import CourseDraws, CourseOutcome, LatentPatients, decision_view, disease_course
from pipelines.simulation.disease import sample_escape
from pipelines.simulation.events import death_cumulative_hazard, first_event_probabilities, sample_death_day
from pipelines.simulation.observation import VisitNoise, draw_visit_noise
from pipelines.simulation.params import SimulationParams
from pipelines.simulation.persistence import sample_persistence_day

__all__ = [
    "CAUSES",
    "TrueIncidence",
    "in_risk_set",
    "conditional_draws",
    "true_incidence",
    "oracle_table",
]

CAUSES = ("CD19_pos", "CD19_neg", "lineage_switch", "death", "hsct", "event_free")
"""Causes of the last axis of ``TrueIncidence.cif`` (the order of ``events.first_event_probabilities``)."""
RELAPSE = len(CAUSES)
"""Index of the relapse total (sum of the phenotypes) on the last axis of ``TrueIncidence.mcse``."""


@dataclass(frozen=True)
class TrueIncidence:
    """True CIFs at one landmark: ``cif[patient, horizon, cause]`` (causes of :data:`CAUSES`).

    ``mcse[patient, horizon, k]`` is the Monte Carlo standard error of ``cif[..., k]`` for the six
    causes and, at ``k == RELAPSE``, of the relapse total; ``replicates`` per patient.
    """

    landmark_day: float
    horizons_days: tuple[float, ...]
    in_risk_set: np.ndarray
    cif: np.ndarray
    p_response: np.ndarray
    mcse: np.ndarray
    replicates: int


def in_risk_set(outcome: CourseOutcome, landmark_day: float) -> np.ndarray:
    """Latent risk set: responders event-free at the landmark (all responders at s = 0)."""
    return outcome.responder & (outcome.first.day > landmark_day)


def _keep_past(realised: np.ndarray, fresh: np.ndarray, past: np.ndarray) -> np.ndarray:
    return np.where(past, realised, fresh)


def conditional_draws(latent: LatentPatients, realised: CourseDraws, landmark_day: float, rng: np.random.Generator,
                      params: SimulationParams) -> CourseDraws:
    """Redraw the course after ``landmark_day``, keeping what happened up to it.

    Parameters
    ----------
    latent : LatentPatients
        Rows may repeat (replicates).
    realised : CourseDraws
        The realised draws of the same rows.
    landmark_day : float
        The landmark s (days since infusion).
    rng : numpy.random.Generator
        The random stream.
    params : SimulationParams
        Every parameter.

    Returns
    -------
    CourseDraws
    """
    s = float(landmark_day)
    fresh_loss_day = sample_persistence_day(latent.persistence, rng, params.persistence, after_day=s)
    car_loss_day = _keep_past(realised.car_loss_day, fresh_loss_day, realised.car_loss_day <= s)
    fresh_escape, fresh_myeloid = sample_escape(latent.disease, car_loss_day, rng, params.disease, after_day=s)
    escaped = realised.escape_day <= s
    fresh_noise = draw_visit_noise(latent.schedule.day.shape, rng, full=False)
    past_visit = latent.schedule.day <= s
    noise = VisitNoise(**{
        name: _keep_past(getattr(realised.noise, name), getattr(fresh_noise, name), past_visit)
        for name in ("patch", "bm_flow", "bm_ngs", "pb_sampling", "pb_flow", "pb_ngs", "b_cells", "decision")
    })
    return CourseDraws(
        car_loss_day=car_loss_day, escape_day=_keep_past(realised.escape_day, fresh_escape, escaped),
        escape_myeloid=_keep_past(realised.escape_myeloid, fresh_myeloid, escaped),
        death_day=sample_death_day(latent.cov.prior_hsct, rng, params.events, after_day=s), noise=noise,
    )


def _replicate_probabilities(latent: LatentPatients, draws: CourseDraws, landmark_day: float,
                             horizons: np.ndarray, params: SimulationParams
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per replicate row: remission criterion, P(alive at the assessment), first events by each horizon.

    Decisions at visits up to the landmark are known (the kept uniforms decide them); later ones
    and death after ``max(landmark, response assessment)`` are integrated out.

    Returns
    -------
    remission : ndarray of bool, shape (rows,)
    alive_at_response : ndarray, shape (rows,)
        1 unless the landmark precedes the response assessment.
    events : ndarray, shape (rows, H, 6)
        See :func:`pipelines.simulation.events.first_event_probabilities`.
    """
    course = disease_course(latent, draws, params)
    visit_day = latent.schedule.day
    known = np.where(draws.noise.decision < course.hsct_probability, 1.0, 0.0)
    probability = np.where(visit_day <= landmark_day, known, course.hsct_probability)
    alive_at = np.maximum(landmark_day, visit_day[:, 0])
    ends = np.minimum(landmark_day + horizons, params.horizon_days)
    events = first_event_probabilities(course.relapse, probability, visit_day, latent.hsct_delay_days,
                                       latent.cov.prior_hsct, alive_at, ends, params.events)
    alive_at_response = np.exp(-death_cumulative_hazard(latent.cov.prior_hsct, alive_at, landmark_day, params.events))
    return course.remission, alive_at_response, events


def _chunk_incidence(latent: LatentPatients, realised: CourseDraws, patients: np.ndarray, landmark_day: float,
                     horizons: np.ndarray, replicates: int, rng: np.random.Generator,
                     params: SimulationParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CIFs, their Monte Carlo standard errors and P(remission) of ``patients`` (means over the replicates)."""
    rows = np.repeat(patients, replicates)
    latent_rows = take_rows(latent, rows)
    draws = conditional_draws(latent_rows, take_rows(realised, rows), landmark_day, rng, params)
    remission, alive, events = _replicate_probabilities(latent_rows, draws, landmark_day, horizons, params)
    events = np.concatenate([events, events[..., :3].sum(axis=2, keepdims=True)], axis=2)
    shape = (patients.shape[0], replicates)
    events = events.reshape(*shape, *events.shape[1:])
    weight = remission.reshape(shape)[:, :, None, None]
    n_remission = weight.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (weight * events).sum(axis=1) / n_remission
        spread = (weight * (events - mean[:, None]) ** 2).sum(axis=1)
        mcse = np.where(n_remission >= 2, np.sqrt(spread / (n_remission * (n_remission - 1))), np.nan)
    p_response = (remission * alive).reshape(shape).mean(axis=1)
    return mean[..., :RELAPSE], mcse, p_response


def true_incidence(latent: LatentPatients, realised: CourseDraws, outcome: CourseOutcome, landmark_day: float,
                   horizons_days: Sequence[float], replicates: int, rng: np.random.Generator,
                   params: SimulationParams, patients: np.ndarray | None = None) -> TrueIncidence:
    """Monte Carlo true CIFs at one landmark for the patients in the risk set (or those given).

    Parameters
    ----------
    latent : LatentPatients
        The patients.
    realised : CourseDraws
        The realised course draws of the same rows.
    outcome : CourseOutcome
        The realised course (defines the risk set).
    landmark_day : float
        The landmark s (days since infusion).
    horizons_days : sequence of float
        Horizons from the landmark.
    replicates : int
        Monte Carlo replicates per patient.
    rng : numpy.random.Generator
        The random stream.
    params : SimulationParams
        Every parameter.
    patients : ndarray of int, optional
        Compute for these patients instead of the risk set (e.g. everyone at s = 0).

    Returns
    -------
    TrueIncidence
        NaN CIFs outside the computed patients.
    """
    horizons = np.asarray(horizons_days, dtype=float)
    at_risk = in_risk_set(outcome, landmark_day)
    todo = np.flatnonzero(at_risk) if patients is None else np.asarray(patients)
    cif = np.full((latent.n, horizons.shape[0], len(CAUSES)), np.nan)
    mcse = np.full((latent.n, horizons.shape[0], len(CAUSES) + 1), np.nan)
    p_response = np.full(latent.n, np.nan)
    per_chunk = max(1, params.mc_chunk_rows // replicates)
    latent, realised = decision_view(latent, realised, params)
    for start in range(0, todo.shape[0], per_chunk):
        chunk = todo[start:start + per_chunk]
        cif[chunk], mcse[chunk], p_response[chunk] = _chunk_incidence(latent, realised, chunk, landmark_day, horizons,
                                                                      replicates, rng, params)
    return TrueIncidence(landmark_day=float(landmark_day), horizons_days=tuple(horizons.tolist()),
                         in_risk_set=at_risk, cif=cif, p_response=p_response, mcse=mcse, replicates=int(replicates))


def _column(cause: str) -> str:
    """Oracle table column of a cause (``event_free`` keeps its name, the others get ``cif_``)."""
    return cause if cause == "event_free" else f"cif_{cause}"


def oracle_table(ids: np.ndarray, incidences: Sequence[TrueIncidence]) -> pd.DataFrame:
    """The long ``oracle`` table: one row per patient x landmark x horizon (docs/architecture.md).

    Besides the CIFs, ``mcse_<column>`` holds each one's Monte Carlo standard error,
    ``mcse_cif_relapse`` that of their relapse total, and ``mc_replicates`` the replicates drawn.
    """
    frames = []
    for inc in incidences:
        for h, horizon in enumerate(inc.horizons_days):
            frame = pd.DataFrame({"patient_id": ids, "landmark_day": inc.landmark_day, "horizon_days": horizon,
                                  "in_risk_set": inc.in_risk_set})
            for c, cause in enumerate(CAUSES):
                frame[_column(cause)] = np.where(inc.in_risk_set, inc.cif[:, h, c], np.nan)
            for c, cause in enumerate((*CAUSES, "relapse")):
                frame[f"mcse_{_column(cause)}"] = np.where(inc.in_risk_set, inc.mcse[:, h, c], np.nan)
            frame["mc_replicates"] = inc.replicates
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)
