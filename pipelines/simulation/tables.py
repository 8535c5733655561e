"""The three input tables (infusions, measurements, outcomes) of a simulated cohort.

Only what a center would record is written: covariates (with the center's gaps), results at
attended visits up to the first event or the last follow-up (plus the marrow at relapse
diagnosis), and outcomes in whole days.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.simulation.arrays import NO_VALUE, take_rows
from pipelines.simulation.course import CourseDraws, CourseOutcome, LatentPatients
from pipelines.simulation.events import EVENT_DEATH, EVENT_NONE, EVENT_RELAPSE
from pipelines.simulation.labtext import ResultRows, format_results
from pipelines.simulation.observation import sampled_log10_burden
from pipelines.simulation.params import ObservationParams, SimulationParams
from pipelines.simulation.persistence import car_copies_log10

__all__ = [
    "EVENT_NAMES",
    "PHENOTYPE_NAMES",
    "SITE_NAMES",
    "ObservedOutcome",
    "patient_ids",
    "observed_outcome",
    "infusions_table",
    "outcomes_table",
    "measurements_table",
]

EVENT_NAMES = np.array(["none", "relapse", "death", "hsct"], dtype=object)
PHENOTYPE_NAMES = np.array(["CD19_pos", "CD19_neg", "lineage_switch"], dtype=object)
SITE_NAMES = np.array(["medullary", "extramedullary", "combined"], dtype=object)
_BLINA_NAMES = np.array(["naive", "responder", "nonresponder"], dtype=object)
_CNS_NAMES = np.array(["CNS1", "CNS2", "CNS3"], dtype=object)
_MEASUREMENT_COLUMNS = ["patient_id", "day", "specimen", "assay", "value", "unit", "detection_limit"]


@dataclass(frozen=True)
class ObservedOutcome:
    """What the center observes of each patient's course, in whole days."""

    event: np.ndarray
    """An ``events.EVENT_*`` code; ``EVENT_NONE`` when censored first."""
    event_day: np.ndarray
    """Whole days since infusion (the latent day rounded up); NaN without an event."""
    last_followup_day: np.ndarray
    observed_until: np.ndarray
    """Visits strictly before this day are observed."""


def patient_ids(n: int) -> np.ndarray:
    """Patient identifiers ``P000001`` ... (object array)."""
    return np.array([f"P{i:06d}" for i in range(1, n + 1)], dtype=object)


def observed_outcome(latent: LatentPatients, outcome: CourseOutcome, censor_day: np.ndarray) -> ObservedOutcome:
    """Apply censoring to the latent first event; non-responders leave follow-up at the assessment.

    Parameters
    ----------
    latent : LatentPatients
        The patients.
    outcome : CourseOutcome
        The realised course.
    censor_day : ndarray
        Administrative censoring or loss to follow-up.

    Returns
    -------
    ObservedOutcome
    """
    response_day = latent.schedule.day[:, 0]
    event_day = np.ceil(outcome.first.day)
    seen = (outcome.first.event != EVENT_NONE) & (event_day <= censor_day)
    event = np.where(seen, outcome.first.event, EVENT_NONE)
    event_day = np.where(seen, event_day, np.nan)
    followup = np.where(event == EVENT_DEATH, event_day, censor_day)
    followup = np.where(outcome.responder | seen, followup, np.minimum(response_day, censor_day))
    until = np.where(seen, event_day, followup + 0.5)
    return ObservedOutcome(event=event, event_day=event_day, last_followup_day=followup, observed_until=until)


def infusions_table(ids: np.ndarray, latent: LatentPatients, params: SimulationParams,
                    rng: np.random.Generator) -> pd.DataFrame:
    """The ``infusions`` table (one row per patient), with realistic gaps.

    Parameters
    ----------
    ids : ndarray of str
        Patient identifiers.
    latent : LatentPatients
        The reported covariates (latent burden, fitness and unmeasured fludarabine AUC stay out).
    params : SimulationParams
        Site names.
    rng : numpy.random.Generator
        The tables stream (product names and missing values).

    Returns
    -------
    DataFrame
        Columns of docs/architecture.md (infusions).
    """
    cov = latent.cov
    n = cov.n
    blasts_seen = cov.bm_blasts_pct > 0
    site_names = np.array([s.name for s in params.sites], dtype=object)
    product = np.where(cov.cd28, "CD19-28z (academic)",
                       np.where(rng.random(n) < 0.85, "tisagenlecleucel", "CD19-41BB (academic)"))
    frame = pd.DataFrame({
        "patient_id": ids, "site": site_names[cov.site], "age_years": cov.age_years,
        "sex": np.where(cov.male, "M", "F"), "down_syndrome": cov.down_syndrome, "kmt2a_rearranged": cov.kmt2a,
        "tp53_altered": cov.tp53, "hypodiploid": cov.hypodiploid, "ph_positive": cov.ph_positive,
        "prior_lines": pd.array(cov.prior_lines, dtype="Int64"), "prior_crs": pd.array(cov.prior_crs, dtype="Int64"),
        "prior_hsct": cov.prior_hsct, "blinatumomab": _BLINA_NAMES[cov.blinatumomab],
        "inotuzumab_prior": cov.inotuzumab, "bm_blasts_pct": cov.bm_blasts_pct,
        "cns_status": _CNS_NAMES[cov.cns_status], "active_non_cns_emd": cov.active_emd,
        "cd19_antigen_load_pct": cov.cd19_antigen_load_pct,
        "cd19_dim_pre": pd.array(np.where(blasts_seen, cov.cd19_dim, NO_VALUE), dtype="boolean"),
        "cd22_pct_pre": np.where(blasts_seen, cov.cd22_pct, np.nan),
        "product": product, "costim": np.where(cov.cd28, "CD28", "4-1BB"),
        "cell_dose_per_kg": cov.cell_dose_per_kg,
        "fludarabine_auc": np.where(cov.flu_auc_measured, np.round(cov.flu_auc, 1), np.nan),
    })
    for column, share in (("cd19_antigen_load_pct", 0.03), ("cns_status", 0.01), ("cd22_pct_pre", 0.05)):
        frame.loc[rng.random(n) < share, column] = None
    return frame


def outcomes_table(ids: np.ndarray, latent: LatentPatients, outcome: CourseOutcome,
                   observed: ObservedOutcome, rng: np.random.Generator, params: SimulationParams) -> pd.DataFrame:
    """The ``outcomes`` table (one row per patient).

    Parameters
    ----------
    ids : ndarray of str
        Patient identifiers.
    latent : LatentPatients
        For the response-assessment day.
    outcome : CourseOutcome
        Latent response, relapse phenotype and site.
    observed : ObservedOutcome
        The censored first event and follow-up.
    rng : numpy.random.Generator
        The tables stream (CR vs CRi).
    params : SimulationParams
        Share of CRi among remissions.

    Returns
    -------
    DataFrame
        Columns of docs/architecture.md (outcomes).
    """
    response_day = latent.schedule.day[:, 0]
    died_first = (observed.event == EVENT_DEATH) & (observed.event_day <= response_day)
    cri = rng.random(ids.shape[0]) < params.events.p_cri_given_remission
    response = np.where(outcome.responder, np.where(cri, "CRi", "CR"), "NR").astype(object)
    response[died_first] = None
    relapse = observed.event == EVENT_RELAPSE
    return pd.DataFrame({
        "patient_id": ids, "response": response, "response_day": np.where(died_first, np.nan, response_day),
        "event": EVENT_NAMES[observed.event], "event_day": observed.event_day,
        "last_followup_day": observed.last_followup_day,
        "relapse_phenotype": np.where(relapse, PHENOTYPE_NAMES[outcome.relapse.phenotype], NO_VALUE),
        "relapse_site": np.where(relapse, SITE_NAMES[outcome.relapse.site], NO_VALUE),
    })


@dataclass(frozen=True)
class _Block:
    patient: np.ndarray
    day: np.ndarray
    specimen: str
    assay: str
    rows: ResultRows


def _mrd_block(patient: np.ndarray, day: np.ndarray, log10_value: np.ndarray, specimen: str, assay: str,
               limit: float, text_share: np.ndarray, rng: np.random.Generator, po: ObservationParams) -> _Block:
    """MRD results (fraction of nucleated cells) against ``limit``; NGS may be "detected <LOQ"."""
    value = np.minimum(10.0 ** log10_value, 1.0)
    limits = np.full(value.shape[0], limit)
    loq = limits * po.ngs_loq_factor if assay == "ngs_mrd" else None
    rows = format_results(value, value >= limit, limits, "fraction", "percent", text_share, rng, loq, po.p_loq_text)
    return _Block(patient, day, specimen, assay, rows)


def _antigen_blocks(patient: np.ndarray, day: np.ndarray, burden: dict, latent: LatentPatients,
                    text_share: np.ndarray, rng: np.random.Generator, noise_sd: float) -> list[_Block]:
    """CD19 / CD22 % of blasts where blasts are measurable."""
    pos, neg, my = (10.0 ** burden[key] for key in ("pos_m", "neg_m", "my_m"))
    share = latent.cov.cd19_positive_share[patient]
    cd19 = 100.0 * share * pos / np.maximum(pos + neg + my, 1e-300)
    cd22_base = np.where(np.isnan(latent.cov.cd22_pct[patient]), 90.0, latent.cov.cd22_pct[patient])
    blocks = []
    for assay, truth in (("cd19_pct_blasts", cd19), ("cd22_pct_blasts", cd22_base)):
        value = np.clip(truth + rng.normal(0.0, noise_sd, patient.shape[0]), 0.1, 100.0)
        ones = np.ones(patient.shape[0], dtype=bool)
        rows = format_results(np.round(value, 1), ones, np.full(patient.shape[0], np.nan), "pct_blasts",
                              "pct_blasts", text_share, rng)
        blocks.append(_Block(patient, day, "BM", assay, rows))
    return blocks


def _point_blocks(patient: np.ndarray, day: np.ndarray, clones: dict[str, np.ndarray], latent: LatentPatients,
                  params: SimulationParams, text_share: np.ndarray, rng: np.random.Generator) -> list[_Block]:
    """Marrow MRD and antigen at one day per patient (pre-infusion work-up, relapse diagnosis).

    ``clones`` holds each clone's burden of these patients on that day.
    """
    po = params.observation
    truth = sampled_log10_burden(clones, latent.observation.pb_offset_log10[patient], po.em_to_pb_offset)
    m = patient.shape[0]
    flow = truth["bm_lymphoid"] + rng.normal(0.0, po.assay_noise_sd, m)
    ngs_rows = latent.observation.ngs_trackable[patient] & (rng.random(m) < po.p_ngs_done)
    ngs = truth["bm_all"] + rng.normal(0.0, po.assay_noise_sd, m)
    blocks = [_mrd_block(patient, day, flow, "BM", "flow_mrd", po.flow_limit, text_share, rng, po),
              _mrd_block(patient[ngs_rows], day[ngs_rows], ngs[ngs_rows], "BM", "ngs_mrd", po.ngs_limit,
                         text_share[ngs_rows], rng, po)]
    blasts = flow >= np.log10(po.flow_limit)
    blast_burden = {key: clones[key][blasts] for key in ("pos_m", "neg_m", "my_m")}
    blocks += _antigen_blocks(patient[blasts], day[blasts], blast_burden, latent, text_share[blasts], rng,
                              po.antigen_noise_sd)
    return blocks


def _pre_infusion_clones(outcome: CourseOutcome, latent: LatentPatients) -> dict[str, np.ndarray]:
    """Clone burdens at the work-up: the burden at infusion before lymphodepletion's debulking."""
    at_infusion = outcome.clonal.log10_burden(np.zeros(latent.n))
    debulk = latent.disease.lymphodepletion_log10_kill
    return {key: value + debulk for key, value in at_infusion.items()}


def _visit_blocks(latent: LatentPatients, draws: CourseDraws, outcome: CourseOutcome, observed: ObservedOutcome,
                  params: SimulationParams, text_share: np.ndarray, rng: np.random.Generator) -> list[_Block]:
    """Every result at attended follow-up visits before the first event / end of follow-up."""
    po, sched = params.observation, latent.schedule
    window = (sched.day < observed.observed_until[:, None]) & (sched.day <= observed.last_followup_day[:, None])
    share = np.broadcast_to(text_share[:, None], sched.day.shape)
    blocks = []
    limits = {"bm_flow": po.flow_limit, "bm_ngs": po.ngs_limit, "pb_flow": po.flow_limit, "pb_ngs": po.ngs_limit}
    for series, values in outcome.observed.log10.items():
        rows = window & ~np.isnan(values)
        patient, _ = np.nonzero(rows)
        specimen, assay = series.split("_")
        blocks.append(_mrd_block(patient, sched.day[rows], values[rows], specimen.upper(), f"{assay}_mrd",
                                 limits[series], share[rows], rng, po))
    blocks += _b_cell_blocks(latent.b_cells_in_pct, sched.day, outcome.b_cells_value, window, share, rng, po)
    blocks += _car_copy_blocks(latent, draws, window, share, rng, params)
    marrow_blasts = window & outcome.observed.detected["bm_flow"]
    patient, _ = np.nonzero(marrow_blasts)
    clones = take_rows(outcome.clonal, patient).log10_burden(sched.day[marrow_blasts])
    blocks += _antigen_blocks(patient, sched.day[marrow_blasts], clones, latent, share[marrow_blasts], rng,
                              po.antigen_noise_sd)
    return blocks


def _b_cell_blocks(in_pct_unit: np.ndarray, day: np.ndarray, value: np.ndarray, window: np.ndarray,
                   share: np.ndarray, rng: np.random.Generator, po: ObservationParams) -> list[_Block]:
    """B-cell counts in each center's unit (cells/uL or % of lymphocytes), shapes (n, V)."""
    blocks = []
    for in_pct, unit, limit in ((False, "cells/uL", po.b_cells_limit_per_ul), (True, "pct_lymphocytes",
                                                                               po.b_cells_limit_pct)):
        rows = window & ~np.isnan(value) & (in_pct_unit == in_pct)[:, None]
        patient, _ = np.nonzero(rows)
        v = value[rows]
        percent_unit = unit if in_pct else None
        result = format_results(v, v >= limit, np.full(v.shape[0], limit), unit, percent_unit, share[rows], rng)
        blocks.append(_Block(patient, day[rows], "PB", "b_cell_count", result))
    return blocks


def _car_copy_blocks(latent: LatentPatients, draws: CourseDraws, window: np.ndarray, share: np.ndarray,
                     rng: np.random.Generator, params: SimulationParams) -> list[_Block]:
    sched, po = latent.schedule, params.observation
    rows = window & sched.car_copies
    patient, _ = np.nonzero(rows)
    level = car_copies_log10(sched.day, draws.car_loss_day, latent.persistence, params.persistence)[rows]
    noise = draws.noise.car_copies
    assert noise is not None  # drawn whenever car-copy rows are written
    value = 10.0 ** (level + 0.3 * noise[rows])
    limit = np.full(value.shape[0], po.car_copies_limit)
    result = format_results(np.round(value, 1), value >= limit, limit, "copies/ug", None, share[rows], rng)
    return [_Block(patient, sched.day[rows], "PB", "car_copies", result)]


def _pre_infusion_b_cells(latent: LatentPatients, text_share: np.ndarray, rng: np.random.Generator,
                          po: ObservationParams) -> list[_Block]:
    """Peripheral B cells before infusion (fewer after blinatumomab / inotuzumab)."""
    cov = latent.cov
    depleted = np.where(cov.blinatumomab > 0, 0.3, 1.0) * np.where(cov.inotuzumab, 0.1, 1.0)
    cells = 60.0 * depleted * np.exp(rng.normal(0.0, 1.0, cov.n))
    value = np.where(latent.b_cells_in_pct, 100.0 * cells / (latent.persistence.lymphocytes_per_ul + cells), cells)
    mask = np.ones((cov.n, 1), dtype=bool)
    return _b_cell_blocks(latent.b_cells_in_pct, latent.schedule.pre_infusion_day[:, None], value[:, None], mask,
                          text_share[:, None], rng, po)


def measurements_table(ids: np.ndarray, latent: LatentPatients, draws: CourseDraws, outcome: CourseOutcome,
                       observed: ObservedOutcome, params: SimulationParams, rng: np.random.Generator) -> pd.DataFrame:
    """The ``measurements`` table (long; raw, lab-style), sorted by patient and day.

    Pre-infusion work-up (marrow MRD, antigen, B cells), every result at attended visits before
    the first event or the end of follow-up, and the marrow at relapse diagnosis.

    Parameters
    ----------
    ids : ndarray of str
        Patient identifiers.
    latent : LatentPatients
        Schedule, observation properties and sites.
    draws : CourseDraws
        T_p (CAR copies) and result noise.
    outcome : CourseOutcome
        Clone burdens and the observed MRD series.
    observed : ObservedOutcome
        What is observed until when.
    params : SimulationParams
        Assay limits and noise, lab-text shares.
    rng : numpy.random.Generator
        The tables stream.

    Returns
    -------
    DataFrame
        Columns of docs/architecture.md (measurements).
    """
    share = np.array([s.lab_text_share for s in params.sites])[latent.cov.site]
    everyone = np.arange(latent.n)
    blocks = _point_blocks(everyone, latent.schedule.pre_infusion_day, _pre_infusion_clones(outcome, latent), latent,
                           params, share, rng)
    blocks += _pre_infusion_b_cells(latent, share, rng, params.observation)
    blocks += _visit_blocks(latent, draws, outcome, observed, params, share, rng)
    relapsed = np.flatnonzero(observed.event == EVENT_RELAPSE)
    at_relapse = take_rows(outcome.clonal, relapsed).log10_burden(observed.event_day[relapsed])
    blocks += _point_blocks(relapsed, observed.event_day[relapsed], at_relapse, latent, params, share[relapsed], rng)
    patient = np.concatenate([b.patient for b in blocks])
    day = np.concatenate([b.day for b in blocks]).astype(float)
    order = np.lexsort((day, patient))
    frame = pd.DataFrame({
        "patient_id": ids[patient],
        "day": day,
        "specimen": np.concatenate([np.full(b.patient.shape[0], b.specimen, dtype=object) for b in blocks]),
        "assay": np.concatenate([np.full(b.patient.shape[0], b.assay, dtype=object) for b in blocks]),
        "value": np.concatenate([b.rows.value for b in blocks]),
        "unit": np.concatenate([b.rows.unit for b in blocks]),
        "detection_limit": np.concatenate([b.rows.detection_limit for b in blocks]),
    })
    return frame.iloc[order].reset_index(drop=True)[_MEASUREMENT_COLUMNS]
