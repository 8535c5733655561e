"""What is observed: the visit schedule, assays done or not, and noisy results against limits.

An MRD result is the sampled compartment's burden times log-normal sampling noise. A marrow
aspirate samples only the marrow, and a patchy marrow can be missed (a per-visit patch factor
shared by flow and NGS of the same aspirate). Peripheral blood carries marrow disease 1-2 logs
lower plus what extramedullary disease sheds, so PB can turn positive while the aspirate is
negative. Flow MRD sees lymphoid blasts (CD19-positive and -negative); NGS sees every clone
carrying the tracked rearrangement (about 10% of patients have none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.simulation.disease import ClonalCourse
from pipelines.simulation.params import ObservationParams, SiteParams

__all__ = [
    "MRD_SERIES",
    "ObservationLatent",
    "Schedule",
    "VisitNoise",
    "VisitObservations",
    "draw_observation_latent",
    "draw_schedule",
    "draw_visit_noise",
    "sampled_log10_burden",
    "observe_visits",
    "observe_b_cells",
]

MRD_SERIES = ("bm_flow", "bm_ngs", "pb_flow", "pb_ngs")
"""MRD series observed at follow-up visits: (specimen)_(assay)."""


@dataclass(frozen=True)
class ObservationLatent:
    """Per-patient properties of the observation process."""

    pb_offset_log10: np.ndarray
    """How many logs the blood runs below the marrow."""
    ngs_trackable: np.ndarray
    """The leukemia has a clonal rearrangement NGS can track (about 90%)."""
    patchy_marrow: np.ndarray
    """An aspirate can miss the disease (see :class:`~pipelines.simulation.disease.DiseaseLatent`)."""


@dataclass(frozen=True)
class Schedule:
    """Visit days and which assays were done (arrays of shape (n, V); V = schedule slots)."""

    day: np.ndarray
    """Visit day (days since infusion); slot 0 is the response assessment."""
    attended: np.ndarray
    """The visit took place (slot 0 always)."""
    bm: np.ndarray
    """A marrow aspirate was done (flow MRD)."""
    bm_ngs: np.ndarray
    """NGS MRD was run on the aspirate (if the patient has a trackable clone)."""
    pb_flow: np.ndarray
    pb_ngs: np.ndarray
    b_cells: np.ndarray
    car_copies: np.ndarray
    pre_infusion_day: np.ndarray
    """Day of the pre-infusion work-up, shape (n,) (negative)."""


@dataclass(frozen=True)
class VisitNoise:
    """Standard-normal noise of each result (n, V), and uniforms for visit-level decisions."""

    patch: np.ndarray
    bm_flow: np.ndarray
    bm_ngs: np.ndarray
    pb_sampling: np.ndarray
    pb_flow: np.ndarray
    pb_ngs: np.ndarray
    b_cells: np.ndarray
    decision: np.ndarray
    """Uniform (0, 1) of the HSCT decision at the visit."""
    car_copies: np.ndarray | None = None
    antigen: np.ndarray | None = None
    """Drawn but unused: antigen results take their noise from the tables stream. Dropping it would
    shift every later draw of the course stream, so it stays until the next recalibration."""


@dataclass(frozen=True)
class VisitObservations:
    """Observed log10 results at each visit (n, V); NaN where the assay was not done."""

    log10: dict[str, np.ndarray]
    """Observed log10 fraction of nucleated cells by :data:`MRD_SERIES` key."""
    detected: dict[str, np.ndarray]
    """At or above the assay's detection limit (False where not done)."""


def draw_observation_latent(n: int, patchy: np.ndarray, rng: np.random.Generator,
                            p: ObservationParams) -> ObservationLatent:
    """Draw the patient-level observation properties (PB offset, NGS clone).

    Parameters
    ----------
    n : int
        Number of patients.
    patchy : ndarray of bool
        Patchy marrow disease (drawn with the disease).
    rng : numpy.random.Generator
        The latent-patient stream.
    p : ObservationParams
        PB offset distribution and the share with a trackable NGS clone.

    Returns
    -------
    ObservationLatent
    """
    return ObservationLatent(
        pb_offset_log10=p.pb_offset_log10.draw(rng, n),
        ngs_trackable=rng.random(n) < p.p_ngs_trackable,
        patchy_marrow=patchy,
    )


def _by_slot(early: float, late: float, n_slots: int) -> np.ndarray:
    return np.linspace(early, late, n_slots)[None, :]


def draw_schedule(site: np.ndarray, response_day: np.ndarray, rng: np.random.Generator,
                  p: ObservationParams, sites: tuple[SiteParams, ...]) -> Schedule:
    """Draw visit days (jittered; slot 0 is the response assessment), missed visits and assays.

    Parameters
    ----------
    site : ndarray of int
        Center index of each patient.
    response_day : ndarray
        Day of the response assessment (the first visit).
    rng : numpy.random.Generator
        The random stream.
    p : ObservationParams
        Observation parameters (schedule, assays, noise, limits).
    sites : tuple of SiteParams
        The centers.

    Returns
    -------
    Schedule
    """
    n, nominal = site.shape[0], np.asarray(p.visit_days, dtype=float)
    v = nominal.shape[0]
    gaps = np.diff(nominal, prepend=0.0)
    jitter_sd = np.minimum(_by_slot(p.jitter_sd_early, p.jitter_sd_late, v), gaps / 6.0)
    day = np.round(nominal + rng.standard_normal((n, v)) * jitter_sd)
    day[:, 0] = response_day
    attended = rng.random((n, v)) >= _by_slot(p.p_missed_early, p.p_missed_late, v)
    attended[:, 0] = True
    marrow_slot = np.isin(nominal, p.marrow_visit_days)[None, :]
    bm = attended & marrow_slot & (rng.random((n, v)) < _by_slot(p.p_bm_done_early, p.p_bm_done_late, v))
    pb_ngs_site = np.array([s.pb_ngs for s in sites])[site][:, None]
    car_site = np.array([s.car_copies for s in sites])[site][:, None]
    return Schedule(
        day=day, attended=attended, bm=bm, bm_ngs=bm & (rng.random((n, v)) < p.p_ngs_done),
        pb_flow=attended & (rng.random((n, v)) < p.p_pb_flow_done),
        pb_ngs=attended & pb_ngs_site & (rng.random((n, v)) < p.p_pb_ngs_done),
        b_cells=attended & (rng.random((n, v)) < p.p_b_cells_done),
        car_copies=attended & car_site & (rng.random((n, v)) < p.p_car_copies_done),
        pre_infusion_day=np.round(rng.uniform(*p.pre_infusion_day_range, n)),
    )


def draw_visit_noise(shape: tuple[int, int], rng: np.random.Generator, full: bool = True) -> VisitNoise:
    """Draw the noise of every result at every visit slot.

    Parameters
    ----------
    shape : tuple of int
        (patients, visit slots).
    rng : numpy.random.Generator
        The course stream (the order of the draws below is part of the calibrated cohort).
    full : bool
        Also draw what only the tables need (CAR copies, antigen); the oracle does without.

    Returns
    -------
    VisitNoise
    """
    def normal() -> np.ndarray:
        """Standard-normal float32 noise of one result series."""
        return rng.standard_normal(shape, dtype=np.float32)

    extra = dict(car_copies=normal(), antigen=normal()) if full else {}
    return VisitNoise(patch=normal(), bm_flow=normal(), bm_ngs=normal(), pb_sampling=normal(),
                      pb_flow=normal(), pb_ngs=normal(), b_cells=normal(),
                      decision=rng.random(shape, dtype=np.float32), **extra)


_LN10 = np.log(10.0)


def _log10_sum(*terms: np.ndarray) -> np.ndarray:
    """log10 of the sum of 10**term (``-inf`` terms contribute nothing)."""
    total = terms[0] * _LN10
    for term in terms[1:]:
        total = np.logaddexp(total, term * _LN10)
    return total / _LN10


def sampled_log10_burden(clones: dict[str, np.ndarray], pb_offset: np.ndarray,
                         em_to_pb_offset: float) -> dict[str, np.ndarray]:
    """True log10 burden seen by each specimen / assay family, from the clone burdens.

    Parameters
    ----------
    clones : dict
        Burden of each clone (:meth:`ClonalCourse.log10_burden`), shape (n,) or (n, k).
    pb_offset : ndarray, shape (n,)
        How many logs blood runs below marrow.
    em_to_pb_offset : float
        How many logs below its own burden EM disease appears in blood.

    Returns
    -------
    dict
        ``bm_lymphoid`` (flow), ``bm_all`` (NGS), ``pb_lymphoid``, ``pb_all``.
    """
    offset = pb_offset[:, None] if np.ndim(clones["pos_m"]) == 2 else pb_offset
    em_total = _log10_sum(clones["pos_e"], clones["neg_e"])
    bm_lymphoid = _log10_sum(clones["pos_m"], clones["neg_m"])
    bm_all = _log10_sum(bm_lymphoid, clones["my_m"])
    return {
        "bm_lymphoid": bm_lymphoid, "bm_all": bm_all,
        "pb_lymphoid": _log10_sum(bm_lymphoid - offset, em_total - em_to_pb_offset),
        "pb_all": _log10_sum(bm_all - offset, em_total - em_to_pb_offset),
    }


def observe_visits(course: ClonalCourse, latent: ObservationLatent, schedule: Schedule, noise: VisitNoise,
                   p: ObservationParams) -> VisitObservations:
    """Noisy log10 MRD results at every visit, with detection against each assay's limit.

    Parameters
    ----------
    course : ClonalCourse
        The latent clone burdens.
    latent : ObservationLatent
        Per-patient observation properties.
    schedule : Schedule
        Visit days and the assays done.
    noise : VisitNoise
        The result noise.
    p : ObservationParams
        Observation parameters (schedule, assays, noise, limits).

    Returns
    -------
    VisitObservations
        Keys of :data:`MRD_SERIES`.
    """
    truth = sampled_log10_burden(course.log10_burden(schedule.day), latent.pb_offset_log10, p.em_to_pb_offset)
    patch_sd = np.where(latent.patchy_marrow, p.patch_sd_patchy, p.patch_sd_regular)[:, None]
    patch = -np.abs(noise.patch) * patch_sd
    pb = noise.pb_sampling * p.pb_noise_sd
    ngs_done = schedule.bm_ngs & latent.ngs_trackable[:, None]
    pb_ngs_done = schedule.pb_ngs & latent.ngs_trackable[:, None]
    values = {
        "bm_flow": np.where(schedule.bm, truth["bm_lymphoid"] + patch + noise.bm_flow * p.assay_noise_sd, np.nan),
        "bm_ngs": np.where(ngs_done, truth["bm_all"] + patch + noise.bm_ngs * p.assay_noise_sd, np.nan),
        "pb_flow": np.where(schedule.pb_flow, truth["pb_lymphoid"] + pb + noise.pb_flow * p.assay_noise_sd, np.nan),
        "pb_ngs": np.where(pb_ngs_done, truth["pb_all"] + pb + noise.pb_ngs * p.assay_noise_sd, np.nan),
    }
    limits = {"bm_flow": p.flow_limit, "bm_ngs": p.ngs_limit, "pb_flow": p.flow_limit, "pb_ngs": p.ngs_limit}
    detected = {key: values[key] >= np.log10(limits[key]) for key in MRD_SERIES}
    return VisitObservations(log10=values, detected=detected)


def observe_b_cells(true_per_ul: np.ndarray, lymphocytes_per_ul: np.ndarray, in_pct: np.ndarray,
                    schedule_mask: np.ndarray, noise: np.ndarray,
                    p: ObservationParams) -> tuple[np.ndarray, np.ndarray]:
    """Observed peripheral B cells in each patient's reporting unit, and B-cell recovery flags.

    Parameters
    ----------
    true_per_ul : ndarray, shape (n, V)
        True CD19+ B cells per uL.
    lymphocytes_per_ul : ndarray, shape (n,)
        Other (non-B) lymphocytes per uL.
    in_pct : ndarray of bool, shape (n,)
        The center reports % of lymphocytes instead of cells/uL.
    schedule_mask : ndarray of bool, shape (n, V)
        The count was done.
    noise : ndarray, shape (n, V)
        Standard-normal noise of each count.
    p : ObservationParams
        Observation parameters (schedule, assays, noise, limits).

    Returns
    -------
    value : ndarray
        Observed value in the reporting unit, NaN where not done.
    recovered : ndarray of bool
        Done and at or above the recovery threshold (10 cells/uL or 1% of lymphocytes).
    """
    cells = true_per_ul * np.exp(noise * p.b_cells_noise_sd)
    pct = 100.0 * cells / (lymphocytes_per_ul[:, None] + cells)
    value = np.where(in_pct[:, None], pct, cells)
    threshold = np.where(in_pct, p.b_cells_recovery_pct, p.b_cells_recovery_per_ul)[:, None]
    return np.where(schedule_mask, value, np.nan), schedule_mask & (value >= threshold)
