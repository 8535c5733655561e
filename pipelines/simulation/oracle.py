"""Ground truth and the Monte Carlo oracle: true cumulative incidences given the latent state.

At landmark s the oracle keeps each patient's latent parameters and everything that happened up
to s (CAR loss and escape if they occurred by s, results and HSCT decisions at visits up to s),
redraws the rest of the course (T_p given persistence at s, escape given none by s, death given
alive at s, later results and decisions) ``replicates`` times, and counts first events by cause
within each horizon. Risk set at s > 0: latent responders event-free at s. At s = 0 the CIFs are
conditional on remission (replicates without remission are left out), as the landmark-0 set
of ``features.landmarks`` is; ``p_response`` gives the probability of remission itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.simulation.arrays import take_rows
from pipelines.simulation.course import CourseDraws, CourseOutcome, LatentPatients, decision_view, run_course
from pipelines.simulation.disease import sample_escape
from pipelines.simulation.events import EVENT_DEATH, EVENT_HSCT, EVENT_RELAPSE, sample_death_day
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


@dataclass(frozen=True)
class TrueIncidence:
    """True CIFs at one landmark: ``cif[patient, horizon, cause]`` (causes of :data:`CAUSES`)."""

    landmark_day: float
    horizons_days: tuple[float, ...]
    in_risk_set: np.ndarray
    cif: np.ndarray
    p_response: np.ndarray


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


def _cause_index(outcome: CourseOutcome) -> np.ndarray:
    """Cause of :data:`CAUSES` per row (event_free = 5)."""
    event = outcome.first.event
    cause = np.full(event.shape[0], 5)
    cause = np.where(event == EVENT_RELAPSE, outcome.relapse.phenotype, cause)
    cause = np.where(event == EVENT_DEATH, 3, cause)
    return np.where(event == EVENT_HSCT, 4, cause)


def _chunk_incidence(latent: LatentPatients, realised: CourseDraws, patients: np.ndarray, landmark_day: float,
                     horizons: np.ndarray, replicates: int, rng: np.random.Generator,
                     params: SimulationParams) -> tuple[np.ndarray, np.ndarray]:
    rows = np.repeat(patients, replicates)
    latent_rows = take_rows(latent, rows)
    draws = conditional_draws(latent_rows, take_rows(realised, rows), landmark_day, rng, params)
    outcome = run_course(latent_rows, draws, params)
    cause = _cause_index(outcome)
    group = np.repeat(np.arange(patients.shape[0]), replicates)
    counts = np.zeros((patients.shape[0], horizons.shape[0], len(CAUSES)))
    responder = outcome.responder
    for h, horizon in enumerate(horizons):
        within = responder & (outcome.first.day <= landmark_day + horizon)
        row_cause = np.where(within, cause, 5)
        np.add.at(counts[:, h, :], (group[responder], row_cause[responder]), 1.0)
    n_responding = np.bincount(group, weights=responder, minlength=patients.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        cif = counts / n_responding[:, None, None]
    return cif, n_responding / replicates


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
    p_response = np.full(latent.n, np.nan)
    per_chunk = max(1, params.mc_chunk_rows // replicates)
    latent, realised = decision_view(latent, realised, params)
    for start in range(0, todo.shape[0], per_chunk):
        chunk = todo[start:start + per_chunk]
        cif[chunk], p_response[chunk] = _chunk_incidence(latent, realised, chunk, landmark_day, horizons,
                                                         replicates, rng, params)
    return TrueIncidence(landmark_day=float(landmark_day), horizons_days=tuple(horizons.tolist()),
                         in_risk_set=at_risk, cif=cif, p_response=p_response)


def oracle_table(ids: np.ndarray, incidences: Sequence[TrueIncidence]) -> pd.DataFrame:
    """The long ``oracle`` table: one row per patient x landmark x horizon (docs/architecture.md)."""
    frames = []
    for inc in incidences:
        for h, horizon in enumerate(inc.horizons_days):
            frame = pd.DataFrame({"patient_id": ids, "landmark_day": inc.landmark_day, "horizon_days": horizon,
                                  "in_risk_set": inc.in_risk_set})
            for c, cause in enumerate(CAUSES):
                name = cause if cause == "event_free" else f"cif_{cause}"
                frame[name] = np.where(inc.in_risk_set, inc.cif[:, h, c], np.nan)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)
