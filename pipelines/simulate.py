"""The mechanistic synthetic cohort: simulate the three input tables, the ground truth and the oracle.

``simulate_cohort`` is pure (no I/O): it returns DataFrames. ``run_simulate`` writes them to a
cohort folder. The mechanism lives in ``pipelines.simulation`` (its package docstring maps the modules);
the calibrated parameters in ``pipelines.simulation.params``.

Ground truth (``ground_truth.parquet``, one row per patient): latent CAR persistence day,
each phenotype's latent crossing day, the latent first event and day (before censoring, within
``params.horizon_days``), the latent response, and the true CIFs at infusion for 6/12/24 months.
The CIFs at infusion are conditional on remission (as the landmark-0 risk set of
``features.landmarks`` is); ``true_p_response`` is the probability of remission itself, and
patients whose Monte Carlo replicates never respond get NaN.

Random streams are independent per purpose (latent patients, their course, the tables, the
ground-truth and oracle Monte Carlo), so asking for the oracle never changes the tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from pipelines.io import write_cohort_folder, write_table
from pipelines.simulation.course import (
    CourseDraws,
    CourseOutcome,
    LatentPatients,
    draw_course,
    draw_latent_patients,
    run_course,
)
from pipelines.simulation.disease import PHENOTYPE_OF_CLONE
from pipelines.simulation.events import EVENT_RELAPSE, draw_censoring_day
from pipelines.simulation.oracle import CAUSES, TrueIncidence, oracle_table, true_incidence
from pipelines.simulation.params import SimulationParams
from pipelines.simulation.tables import (
    EVENT_NAMES,
    infusions_table,
    measurements_table,
    observed_outcome,
    outcomes_table,
    patient_ids,
)

__all__ = ["SimulatedCohort", "SimulationError", "simulate_cohort", "run_simulate"]

_PHENOTYPE_CAUSES = ("CD19_pos", "CD19_neg", "lineage_switch")
_STREAMS = ("latent", "course", "censoring", "tables", "ground_truth", "oracle")


class SimulationError(ValueError):
    """Invalid simulation request (the message says which argument and why)."""


@dataclass(frozen=True)
class SimulatedCohort:
    """A simulated cohort: the three input tables, the ground truth and (on request) the oracle."""

    infusions: pd.DataFrame
    measurements: pd.DataFrame
    outcomes: pd.DataFrame
    ground_truth: pd.DataFrame
    oracle: pd.DataFrame | None = None

    def tables(self) -> dict[str, pd.DataFrame]:
        """The three input tables by name (what a model may read)."""
        return {"infusions": self.infusions, "measurements": self.measurements, "outcomes": self.outcomes}


def _streams(seed: int) -> dict[str, np.random.Generator]:
    children = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children)}


def _crossing_by_phenotype(crossings: np.ndarray) -> dict[str, np.ndarray]:
    """Earliest crossing over both compartments of each phenotype's clones."""
    return {f"crossing_day_{name}": crossings[:, PHENOTYPE_OF_CLONE == k].min(axis=1)
            for k, name in enumerate(_PHENOTYPE_CAUSES)}


def _ground_truth_table(ids: np.ndarray, draws: CourseDraws, outcome: CourseOutcome,
                        at_infusion: TrueIncidence | None) -> pd.DataFrame:
    """Latent times, the true first event and (unless ``at_infusion`` is None) the true CIFs at infusion."""
    first = outcome.first
    event = EVENT_NAMES[first.event].copy()
    relapse = first.event == EVENT_RELAPSE
    phenotype = np.array(_PHENOTYPE_CAUSES, dtype=object)[outcome.relapse.phenotype]
    frame = pd.DataFrame({
        "patient_id": ids, "car_persistence_day": draws.car_loss_day, **_crossing_by_phenotype(outcome.crossings),
        "true_response": outcome.responder, "true_event": event,
        "true_event_day": np.where(np.isfinite(first.day), first.day, np.nan),
        "true_relapse_phenotype": np.where(relapse, phenotype, None),
    })
    if at_infusion is None:
        return frame
    frame["true_p_response"] = at_infusion.p_response
    for h, months in enumerate((6, 12, 24)):
        cif = at_infusion.cif[:, h, :]
        for c, cause in enumerate(CAUSES[:5]):
            prefix = "relapse_" if cause in _PHENOTYPE_CAUSES else ""
            frame[f"true_cif_{prefix}{cause}_{months}m"] = cif[:, c]
        frame[f"true_cif_relapse_{months}m"] = cif[:, :3].sum(axis=1)
    return frame


def simulate_cohort(n_patients: int, seed: int, params: SimulationParams | None = None,
                    with_oracle: bool = False, with_true_cifs: bool = True) -> SimulatedCohort:
    """Simulate a cohort of CD19 CAR T-treated patients (pure; no file I/O).

    Parameters
    ----------
    n_patients : int
        Number of patients (>= 1).
    seed : int
        Random seed; the same seed and parameters give identical tables.
    params : SimulationParams, optional
        Defaults to the calibrated ``SimulationParams()``.
    with_oracle : bool
        Also compute the Monte Carlo oracle at every landmark of ``params.oracle_landmark_days``.
    with_true_cifs : bool
        Compute the ground truth's true CIFs at infusion (``true_cif_*``, ``true_p_response``) by
        Monte Carlo; without them (most of the fast path's time) the ground truth holds only the
        latent times and events. Neither flag changes the input tables (independent streams).

    Returns
    -------
    SimulatedCohort
    """
    if int(n_patients) < 1:
        raise SimulationError(f"n_patients must be >= 1, got {n_patients}")
    params = params or SimulationParams()
    rng = _streams(int(seed))
    latent = draw_latent_patients(int(n_patients), rng["latent"], params)
    draws = draw_course(latent, rng["course"], params)
    outcome = run_course(latent, draws, params)
    site_start = np.array([s.enrolment_start_day for s in params.sites])[latent.cov.site]
    censor = np.maximum(draw_censoring_day(site_start, rng["censoring"], params.events), 60.0)
    observed = observed_outcome(latent, outcome, censor)
    ids = patient_ids(latent.n)
    at_infusion = None
    if with_true_cifs:
        at_infusion = true_incidence(latent, draws, outcome, 0.0, (182.0, 365.0, 730.0),
                                     params.ground_truth_replicates, rng["ground_truth"], params,
                                     patients=np.arange(latent.n))
    oracle = _oracle(ids, latent, draws, outcome, params, rng["oracle"]) if with_oracle else None
    return SimulatedCohort(
        infusions=infusions_table(ids, latent, params, rng["tables"]),
        measurements=measurements_table(ids, latent, draws, outcome, observed, params, rng["tables"]),
        outcomes=outcomes_table(ids, latent, outcome, observed, rng["tables"], params),
        ground_truth=_ground_truth_table(ids, draws, outcome, at_infusion),
        oracle=oracle,
    )


def _oracle(ids: np.ndarray, latent: LatentPatients, draws: CourseDraws, outcome: CourseOutcome,
            params: SimulationParams, rng: np.random.Generator) -> pd.DataFrame:
    incidences = [true_incidence(latent, draws, outcome, s, params.oracle_horizon_days, params.oracle_replicates,
                                 rng, params) for s in params.oracle_landmark_days]
    return oracle_table(ids, incidences)


def run_simulate(n_patients: int, seed: int, out_dir: Path, with_oracle: bool = False,
                 file_format: str = "parquet") -> None:
    """Simulate a cohort and write it to ``out_dir`` (created if needed).

    Writes ``infusions``, ``measurements`` and ``outcomes`` in ``file_format`` (parquet or csv),
    and ``ground_truth.parquet`` (plus ``oracle.parquet`` with ``with_oracle``).

    Parameters
    ----------
    n_patients : int
        Number of patients (>= 1).
    seed : int
        Random seed.
    out_dir : Path
        The cohort folder.
    with_oracle : bool
        Also compute and write the Monte Carlo oracle (slower).
    file_format : {"parquet", "csv"}
        Format of the three input tables.

    Raises
    ------
    SimulationError
        For an unknown format or fewer than one patient.
    """
    if file_format not in ("parquet", "csv"):
        raise SimulationError(f"--format must be parquet or csv, got '{file_format}'")
    what = "cohort and Monte Carlo oracle" if with_oracle else "cohort"
    with Console(stderr=True).status(f"Simulating a {what} of {n_patients} patients (seed {seed})"):
        cohort = simulate_cohort(n_patients, seed, with_oracle=with_oracle)
    out_dir = Path(out_dir)
    write_cohort_folder(out_dir, cohort.infusions, cohort.measurements, cohort.outcomes, file_format=file_format)
    write_table(cohort.ground_truth, out_dir / "ground_truth.parquet")
    if cohort.oracle is not None:
        write_table(cohort.oracle, out_dir / "oracle.parquet")
