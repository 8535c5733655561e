"""``car-relapse surveillance``: compare MRD surveillance schedules on the same simulated patients.

No standard surveillance schedule exists after CD19 CAR T cells. Schedules differ in specimen
(blood vs marrow), assay (flow about 1e-4 vs NGS about 1e-6) and cadence; a risk-adapted schedule
intensifies surveillance for the patients a model calls high risk. This job follows one simulated
cohort under every schedule of the config and counts, per schedule:

- relapses caught before morphology: a positive MRD test strictly before the morphological relapse
  (the latent first passage over 5% marrow blasts or clinically evident extramedullary disease);
- the lead time from the first positive test (molecular relapse) to morphological relapse;
- marrow procedures (aspirates) per patient-year of surveillance;
- detection of extramedullary-only relapse, which a marrow aspirate does not sample;
- patients with a positive test who did not relapse in the window (what a positive costs).

**Measurement model.** Every test result comes from the simulator's own observation model
(``pipelines.simulation.observation.observe_visits``): the latent burden of each clone in marrow and
extramedullary compartments, sampling noise (a patchy marrow can be missed), blood 1-2 logs below
the marrow plus what extramedullary disease sheds, each assay's detection limit, and no NGS for a
leukemia without a trackable clone. Only the visit days and the tests done are this module's.

**Patients.** Responders of a cohort simulated with the config's seed, followed from the response
assessment to relapse, death or the end of the window, along their CAR-only natural history:
consolidative HSCT is not applied (its decisions would depend on the schedule under study).

**Risk-adapted schedules** switch, at ``as_of_day``, the patients whose predicted relapse risk by
``horizon_days`` is at least ``cutoff`` to an intensive schedule. The risk comes from a registered
model (``risk_model.model_uri``; the champion of ``make run`` by default), scored with
``models.serving.score_tables`` on the cohort's own tables (what a center would have recorded by
that day: the simulator's visit schedule), exactly as batch scoring does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.simulation.course import CourseDraws, CourseOutcome, LatentPatients
from pipelines.simulation.observation import MRD_SERIES, Schedule
from pipelines.simulation.params import SimulationParams

__all__ = [
    "SURVEILLANCE_COLUMNS",
    "RiskAdaptation",
    "RiskModelConfig",
    "ScheduleConfig",
    "SimulatedCourses",
    "SurveillanceConfig",
    "SurveillanceError",
    "VisitPlan",
    "cohort_tables",
    "evaluate_schedules",
    "load_surveillance_config",
    "observe_plan",
    "plan_visits",
    "plot_surveillance",
    "predicted_risk",
    "run_surveillance",
    "schedule_outcomes",
    "simulate_courses",
    "summarise_schedule",
]

MarrowOrBloodTest = Literal["bm_flow", "bm_ngs", "pb_flow", "pb_ngs"]
_MARROW_TESTS = ("bm_flow", "bm_ngs")
_DAYS_PER_YEAR = 365.25
SURVEILLANCE_COLUMNS = (
    "schedule", "patients", "patient_years", "relapses", "caught_before_morphology", "caught_pct",
    "median_lead_time_days", "lead_time_q1_days", "lead_time_q3_days", "marrow_procedures_per_patient_year",
    "tests_per_patient_year", "em_only_relapses", "em_only_caught_pct", "relapse_free_with_positive_pct",
)
"""Columns of the summary table, one row per schedule."""


class SurveillanceError(ValueError):
    """The surveillance job cannot run with this config or model (the message says why)."""


# --- config ---------------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RiskAdaptation(_Strict):
    """Switch high-risk patients to an intensive schedule from ``as_of_day`` on."""

    as_of_day: float = Field(91.0, gt=0, description="Day the model scores the patients (days since infusion).")
    horizon_days: float = Field(365.0, gt=0, description="Horizon of the predicted relapse risk (a model horizon).")
    cutoff: float = Field(0.2, gt=0, lt=1, description="Risk at or above which a patient is high risk.")
    tests: list[MarrowOrBloodTest] = Field(min_length=1, description="Tests of the intensive schedule.")
    interval_days: float = Field(gt=0, description="Days between intensive visits (the first on as_of_day).")


class ScheduleConfig(_Strict):
    """One schedule: the tests done at each visit, every ``interval_days`` after the response assessment."""

    name: str = Field(min_length=1)
    tests: list[MarrowOrBloodTest] = Field(min_length=1, description="bm_flow, bm_ngs, pb_flow, pb_ngs.")
    interval_days: float = Field(gt=0)
    risk_adapted: RiskAdaptation | None = None


class CohortConfig(_Strict):
    """The simulated patients every schedule follows."""

    n_patients: int = Field(3000, ge=50)
    seed: int = Field(20261122, description="Use a seed other than the training cohort's.")


class RiskModelConfig(_Strict):
    """The model behind risk-adapted schedules."""

    model_uri: str = "models:/car-relapse@champion"
    tracking_uri: str | None = None


class SurveillanceConfig(_Strict):
    """``configs/surveillance.yaml``."""

    cohort: CohortConfig = CohortConfig()
    window_days: float = Field(730.0, gt=0, description="Surveillance ends this many days after infusion.")
    risk_model: RiskModelConfig = RiskModelConfig()
    schedules: list[ScheduleConfig] = Field(min_length=1)

    @field_validator("schedules")
    @classmethod
    def _unique_names(cls, value: list[ScheduleConfig]) -> list[ScheduleConfig]:
        names = [schedule.name for schedule in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"schedule names must be unique; repeated: {duplicates}")
        return value

    @model_validator(mode="after")
    def _adaptation_inside_window(self) -> SurveillanceConfig:
        for schedule in self.schedules:
            if schedule.risk_adapted is not None and schedule.risk_adapted.as_of_day >= self.window_days:
                raise ValueError(f"schedule '{schedule.name}': risk_adapted.as_of_day must be before window_days")
        return self


# --- the simulated patients -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SimulatedCourses:
    """Latent courses of a simulated cohort (``pipelines.simulation.course``) and its random streams."""

    latent: LatentPatients
    draws: CourseDraws
    outcome: CourseOutcome
    params: SimulationParams
    seed: int

    @property
    def n(self) -> int:
        """Number of patients."""
        return self.latent.n

    @property
    def response_day(self) -> np.ndarray:
        """Day of the response assessment (the first visit of the simulator's schedule)."""
        return self.latent.schedule.day[:, 0]

    def end_day(self, window_days: float) -> np.ndarray:
        """Surveillance ends at relapse, death or the end of the window (HSCT is not applied)."""
        return np.minimum.reduce([self.outcome.relapse.day, self.draws.death_day, np.full(self.n, float(window_days))])


_STREAMS = ("latent", "course", "tables", "noise")


def _stream(seed: int, name: str) -> np.random.Generator:
    """A fresh generator of one purpose (independent streams; the same state on every call)."""
    child = np.random.SeedSequence(seed).spawn(len(_STREAMS))[_STREAMS.index(name)]
    return np.random.default_rng(child)


def simulate_courses(n_patients: int, seed: int, params: SimulationParams | None = None) -> SimulatedCourses:
    """Simulate the latent courses of ``n_patients`` with the simulator's public functions.

    Parameters
    ----------
    n_patients : int
    seed : int
    params : SimulationParams, optional
        Default: the calibrated parameters.

    Returns
    -------
    SimulatedCourses
    """
    from pipelines.simulation.course import draw_course, draw_latent_patients, run_course

    params = params or SimulationParams()
    latent = draw_latent_patients(int(n_patients), _stream(seed, "latent"), params)
    draws = draw_course(latent, _stream(seed, "course"), params)
    return SimulatedCourses(latent, draws, run_course(latent, draws, params), params, int(seed))


def cohort_tables(courses: SimulatedCourses, window_days: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The infusions and measurements tables a center would have recorded (the simulator's schedule).

    Returns
    -------
    (infusions, measurements)
        Raw tables in the data contract; patient ids ``P000001`` ... in cohort order.
    """
    from pipelines.simulation.tables import infusions_table, measurements_table, observed_outcome, patient_ids

    rng = _stream(courses.seed, "tables")
    ids = patient_ids(courses.n)
    observed = observed_outcome(courses.latent, courses.outcome, np.full(courses.n, float(window_days)))
    infusions = infusions_table(ids, courses.latent, courses.params, rng)
    measurements = measurements_table(ids, courses.latent, courses.draws, courses.outcome, observed, courses.params, rng)
    return infusions, measurements


# --- visits and results -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class VisitPlan:
    """Visit days and the tests done at each, per patient (arrays of shape (n, V); unused slots False)."""

    day: np.ndarray
    tests: dict[str, np.ndarray]
    """Per test of :data:`pipelines.simulation.observation.MRD_SERIES`: done at the slot."""

    @property
    def done(self) -> np.ndarray:
        """Any test at the slot."""
        return np.logical_or.reduce([self.tests[test] for test in MRD_SERIES])

    @property
    def marrow(self) -> np.ndarray:
        """A marrow aspirate at the slot."""
        return np.logical_or.reduce([self.tests[test] for test in _MARROW_TESTS])


def _regular_days(start: np.ndarray, interval: float, first_offset: float, last_day: float) -> np.ndarray:
    """``start + first_offset + k * interval`` up to ``last_day`` (NaN beyond), shape (n, K)."""
    count = int(np.floor((last_day - float(np.min(start)) - first_offset) / interval)) + 1
    days = start[:, None] + first_offset + interval * np.arange(max(count, 0))[None, :]
    return np.where(days <= last_day, days, np.nan)


def _slots(tests: Sequence[str], valid: np.ndarray) -> dict[str, np.ndarray]:
    """Per test: done at the valid slots when the schedule lists it."""
    return {test: valid & (test in tests) for test in MRD_SERIES}


def plan_visits(schedule: ScheduleConfig, response_day: np.ndarray, window_days: float,
                high_risk: np.ndarray | None = None) -> VisitPlan:
    """Visit days and tests of every patient under ``schedule``.

    Regular visits come every ``interval_days`` after the response assessment. A risk-adapted
    schedule keeps them for everyone before ``as_of_day`` and for the patients not at high risk;
    the high-risk patients get the intensive tests every ``risk_adapted.interval_days`` from
    ``as_of_day`` on.

    Parameters
    ----------
    schedule : ScheduleConfig
    response_day : ndarray, shape (n,)
    window_days : float
    high_risk : ndarray of bool, shape (n,), optional
        Required by a risk-adapted schedule.

    Returns
    -------
    VisitPlan
    """
    days = _regular_days(response_day, schedule.interval_days, schedule.interval_days, window_days)
    valid = np.isfinite(days)
    adaptation = schedule.risk_adapted
    if adaptation is None:
        return VisitPlan(np.nan_to_num(days), _slots(schedule.tests, valid))
    if high_risk is None or high_risk.shape != response_day.shape:
        raise SurveillanceError(f"schedule '{schedule.name}' is risk-adapted: it needs a risk per patient")
    valid &= ~high_risk[:, None] | (days < adaptation.as_of_day)
    intensive = _regular_days(np.full(response_day.shape, adaptation.as_of_day), adaptation.interval_days, 0.0,
                              window_days)
    intensive_valid = np.isfinite(intensive) & high_risk[:, None]
    regular, adapted = _slots(schedule.tests, valid), _slots(adaptation.tests, intensive_valid)
    return VisitPlan(np.nan_to_num(np.hstack([days, intensive])),
                     {test: np.hstack([regular[test], adapted[test]]) for test in MRD_SERIES})


def observe_plan(courses: SimulatedCourses, plan: VisitPlan, window_days: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Which tests of the plan are positive (at or above their detection limit), shape (n, V).

    The results come from the simulator's observation model
    (``pipelines.simulation.observation.observe_visits``). Its noise is drawn once per patient and
    day of the window (``rng`` in the same state gives the same noise), so the same test on the
    same day of the same patient gives the same result under every schedule.
    """
    from pipelines.simulation.observation import draw_visit_noise, observe_visits

    shape = plan.day.shape
    daily = draw_visit_noise((shape[0], int(np.ceil(window_days)) + 1), rng, full=False)
    day_index = np.clip(np.rint(plan.day).astype(int), 0, int(np.ceil(window_days)))
    noise = dataclasses.replace(daily, **{
        spec.name: np.take_along_axis(getattr(daily, spec.name), day_index, axis=1)
        for spec in dataclasses.fields(daily) if isinstance(getattr(daily, spec.name), np.ndarray)})
    none = np.zeros(shape, dtype=bool)
    schedule: Schedule = dataclasses.replace(
        courses.latent.schedule, day=plan.day, attended=plan.done, bm=plan.tests["bm_flow"],
        bm_ngs=plan.tests["bm_ngs"], pb_flow=plan.tests["pb_flow"], pb_ngs=plan.tests["pb_ngs"],
        b_cells=none, car_copies=none,
    )
    observed = observe_visits(courses.outcome.clonal, courses.latent.observation, schedule, noise,
                              courses.params.observation)
    return np.logical_or.reduce([observed.detected[test] & plan.tests[test] for test in MRD_SERIES])


def schedule_outcomes(courses: SimulatedCourses, plan: VisitPlan, positive: np.ndarray,
                      window_days: float) -> pd.DataFrame:
    """Per responder: relapse in the window, first positive test before it, procedures, follow-up.

    Returns
    -------
    DataFrame
        ``relapse`` (bool), ``relapse_day``, ``em_only`` (extramedullary-only relapse),
        ``first_positive_day`` (NaN: none before the end), ``caught`` (positive strictly before the
        morphological relapse), ``lead_time_days``, ``tests``, ``marrow_procedures``, ``patient_years``.
    """
    from pipelines.simulation.events import SITE_EXTRAMEDULLARY

    end = courses.end_day(window_days)
    relapse_day = courses.outcome.relapse.day
    relapse = (relapse_day <= window_days) & (relapse_day < courses.draws.death_day)
    before_end = plan.done & (plan.day < end[:, None]) & (plan.day > courses.response_day[:, None])
    hits = np.where(positive & before_end, plan.day, np.inf).min(axis=1)
    first_positive = np.where(np.isfinite(hits), hits, np.nan)
    caught = relapse & np.isfinite(hits)
    lead_time = np.full(courses.n, np.nan)
    lead_time[caught] = relapse_day[caught] - hits[caught]
    frame = pd.DataFrame({
        "relapse": relapse, "relapse_day": np.where(relapse, relapse_day, np.nan),
        "em_only": relapse & (courses.outcome.relapse.site == SITE_EXTRAMEDULLARY),
        "first_positive_day": first_positive, "caught": caught,
        "lead_time_days": lead_time,
        "tests": before_end.sum(axis=1), "marrow_procedures": (before_end & plan.marrow).sum(axis=1),
        "patient_years": np.maximum(end - courses.response_day, 0.0) / _DAYS_PER_YEAR,
    })
    return frame.loc[courses.outcome.responder].reset_index(drop=True)


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else float("nan")


def summarise_schedule(name: str, outcomes: pd.DataFrame) -> dict:
    """One row of the summary table (:data:`SURVEILLANCE_COLUMNS`) from :func:`schedule_outcomes`."""
    relapses = outcomes[outcomes["relapse"]]
    lead = relapses["lead_time_days"].dropna()
    em_only = relapses[relapses["em_only"]]
    relapse_free = outcomes[~outcomes["relapse"]]
    years = float(outcomes["patient_years"].sum())
    quartiles = lead.quantile([0.25, 0.5, 0.75]).to_numpy() if len(lead) else np.full(3, np.nan)
    return {
        "schedule": name, "patients": len(outcomes), "patient_years": years, "relapses": len(relapses),
        "caught_before_morphology": int(relapses["caught"].sum()),
        "caught_pct": _percent(int(relapses["caught"].sum()), len(relapses)),
        "median_lead_time_days": float(quartiles[1]), "lead_time_q1_days": float(quartiles[0]),
        "lead_time_q3_days": float(quartiles[2]),
        "marrow_procedures_per_patient_year": float(outcomes["marrow_procedures"].sum()) / years if years else np.nan,
        "tests_per_patient_year": float(outcomes["tests"].sum()) / years if years else np.nan,
        "em_only_relapses": len(em_only), "em_only_caught_pct": _percent(int(em_only["caught"].sum()), len(em_only)),
        "relapse_free_with_positive_pct": _percent(int(relapse_free["first_positive_day"].notna().sum()),
                                                   len(relapse_free)),
    }


# --- the risk model -----------------------------------------------------------------------------------------
def predicted_risk(bundle, courses: SimulatedCourses, adaptation: RiskAdaptation, window_days: float) -> np.ndarray:
    """Predicted relapse risk by ``adaptation.horizon_days`` at ``adaptation.as_of_day`` (NaN: not scored).

    Scored: responders event-free at the as-of day (latent relapse and death later), from the
    tables recorded up to that day, with ``models.serving.score_tables`` (the batch-scoring path).

    Parameters
    ----------
    bundle : models.serving.ScoringBundle
    courses : SimulatedCourses
    adaptation : RiskAdaptation
    window_days : float

    Returns
    -------
    ndarray, shape (n,)
    """
    from models.base import relapse_column
    from models.serving import score_tables

    horizons = [float(h) for h in bundle.horizons_days]
    if float(adaptation.horizon_days) not in horizons:
        raise SurveillanceError(f"risk_adapted.horizon_days {adaptation.horizon_days:g} is not a horizon of the "
                                f"model ({horizons})")
    as_of = float(adaptation.as_of_day)
    eligible = courses.outcome.responder & (courses.end_day(window_days) > as_of) & (courses.response_day <= as_of)
    infusions, measurements = cohort_tables(courses, window_days)
    ids = infusions["patient_id"].to_numpy()[eligible]
    scored = score_tables(dataclasses.replace(bundle, n_top_factors=0),
                          infusions[infusions["patient_id"].isin(ids)],
                          measurements[measurements["patient_id"].isin(ids)], as_of, on_error="quarantine").scores
    risk = pd.Series(np.nan, index=infusions["patient_id"])
    risk.loc[scored["patient_id"].to_numpy()] = scored[relapse_column(adaptation.horizon_days)].to_numpy(float)
    return risk.to_numpy()


# --- the comparison -----------------------------------------------------------------------------------------
def evaluate_schedules(courses: SimulatedCourses, config: SurveillanceConfig,
                       risks: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Summary table of every schedule of the config on the same patients (:data:`SURVEILLANCE_COLUMNS`).

    Parameters
    ----------
    courses : SimulatedCourses
    config : SurveillanceConfig
    risks : mapping, optional
        Schedule name -> predicted risk per patient (:func:`predicted_risk`) for each risk-adapted
        schedule; a patient without a risk (NaN) stays on the regular visits.

    Returns
    -------
    DataFrame
    """
    rows = []
    for schedule in config.schedules:
        high_risk = None
        if schedule.risk_adapted is not None:
            if risks is None or schedule.name not in risks:
                raise SurveillanceError(f"schedule '{schedule.name}' is risk-adapted but no risk was given")
            high_risk = np.nan_to_num(risks[schedule.name], nan=-1.0) >= schedule.risk_adapted.cutoff
        plan = plan_visits(schedule, courses.response_day, config.window_days, high_risk)
        positive = observe_plan(courses, plan, config.window_days, _stream(courses.seed, "noise"))
        rows.append(summarise_schedule(schedule.name, schedule_outcomes(courses, plan, positive, config.window_days)))
    return pd.DataFrame.from_records(rows, columns=list(SURVEILLANCE_COLUMNS))


# --- plot ----------------------------------------------------------------------------------------------------
def plot_surveillance(summary: pd.DataFrame, title: str = ""):
    """Three panels: relapses caught vs marrow procedures, lead time, extramedullary-only detection.

    Parameters
    ----------
    summary : DataFrame
        :func:`evaluate_schedules` table.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 0.42 * len(summary) + 3.2), layout="constrained")
    trade_off, lead, extramedullary = figure.subplots(1, 3, gridspec_kw={"width_ratios": [1.3, 1, 1]})
    colors = [f"C{k % 10}" for k in range(len(summary))]
    trade_off.scatter(summary["marrow_procedures_per_patient_year"], summary["caught_pct"], c=colors, s=60, zorder=3)
    for row, color in zip(summary.itertuples(), colors):
        trade_off.annotate(str(row.schedule), (row.marrow_procedures_per_patient_year, row.caught_pct), fontsize=7,
                           xytext=(4, 3), textcoords="offset points", color=color)
    trade_off.set(xlabel="marrow procedures per patient-year", ylabel="relapses caught before morphology (%)",
                  title="Detection vs marrow procedures", ylim=(0, 100))
    trade_off.grid(alpha=0.3)
    positions = np.arange(len(summary))[::-1]
    errors = np.vstack([summary["median_lead_time_days"] - summary["lead_time_q1_days"],
                        summary["lead_time_q3_days"] - summary["median_lead_time_days"]])
    lead.barh(positions, summary["median_lead_time_days"], xerr=np.nan_to_num(errors), color=colors, capsize=3)
    lead.set_yticks(positions, summary["schedule"], fontsize=8)
    lead.set(xlabel="days from first positive test to morphological relapse",
             title="Lead time (median, IQR; caught relapses)")
    extramedullary.barh(positions, summary["em_only_caught_pct"], color=colors)
    extramedullary.set_yticks(positions, [""] * len(summary))
    extramedullary.set(xlabel="% caught before clinical relapse", xlim=(0, 100),
                       title="Extramedullary-only relapses")
    for axes in (lead, extramedullary):
        axes.grid(axis="x", alpha=0.3)
    figure.suptitle(title or "MRD surveillance schedules on the same simulated patients")
    return figure


# --- the job ----------------------------------------------------------------------------------------------------
def load_surveillance_config(path: Path) -> SurveillanceConfig:
    """Read and validate ``configs/surveillance.yaml``.

    Raises
    ------
    pipelines.config.ConfigError
        Missing file, bad YAML, or every offending key with its reason.
    """
    from pipelines.config import load_yaml_model

    return load_yaml_model(path, SurveillanceConfig, "surveillance config")


def _risks(config: SurveillanceConfig, courses: SimulatedCourses) -> dict[str, np.ndarray]:
    """Predicted risk for each risk-adapted schedule, from the configured registered model."""
    from models.serving import ScoringInputError
    from pipelines.score import ScoreError, load_scoring_bundle

    adapted = [s for s in config.schedules if s.risk_adapted is not None]
    if not adapted:
        return {}
    try:
        bundle = load_scoring_bundle(config.risk_model.model_uri, config.risk_model.tracking_uri)
    except ScoreError as exc:
        raise SurveillanceError(f"risk model: {exc} (train one first: make run)") from None
    try:
        return {s.name: predicted_risk(bundle, courses, s.risk_adapted, config.window_days) for s in adapted
                if s.risk_adapted is not None}
    except ScoringInputError as exc:
        raise SurveillanceError(f"risk model: {exc}") from None


def _printed_table(summary: pd.DataFrame):
    from rich.table import Table

    table = Table(title="Surveillance schedules (same simulated patients)")
    columns = {"schedule": "schedule", "caught_pct": "caught %", "median_lead_time_days": "median lead (d)",
               "marrow_procedures_per_patient_year": "marrow / pt-yr", "tests_per_patient_year": "tests / pt-yr",
               "em_only_caught_pct": "EM-only caught %", "relapse_free_with_positive_pct": "positive, no relapse %"}
    for name in columns.values():
        table.add_column(name, justify="left" if name == "schedule" else "right")
    for row in summary.to_dict("records"):
        table.add_row(*(str(row[c]) if c == "schedule" else f"{row[c]:.1f}" for c in columns))
    return table


def run_surveillance(config_path: Path, out_dir: Path) -> pd.DataFrame:
    """``car-relapse surveillance``: compare the configured schedules; write the table and the plot.

    Writes ``surveillance.csv`` (one row per schedule, :data:`SURVEILLANCE_COLUMNS`) and
    ``surveillance.png`` to ``out_dir`` and prints the table. Exit code 2 for a bad config or a
    risk model that cannot be loaded or used.

    Returns
    -------
    DataFrame
        The summary table.
    """
    import typer
    from rich.console import Console
    from rich.markup import escape

    from pipelines.config import ConfigError
    from pipelines.tracking import quiet_mlflow

    console = Console(soft_wrap=True, highlight=False)
    quiet_mlflow()
    try:
        config = load_surveillance_config(config_path)
        with console.status(f"simulating {config.cohort.n_patients} patients (seed {config.cohort.seed})"):
            courses = simulate_courses(config.cohort.n_patients, config.cohort.seed)
            summary = evaluate_schedules(courses, config, _risks(config, courses))
    except (ConfigError, SurveillanceError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(code=2) from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out_dir / "surveillance.csv", index=False)
    plot_surveillance(summary).savefig(out_dir / "surveillance.png", dpi=110)
    console.print(_printed_table(summary))
    console.print(f"{int(summary['patients'].iloc[0])} responders followed to relapse, death or day "
                  f"{config.window_days:g}; wrote surveillance.csv and surveillance.png to {out_dir}", markup=False)
    return summary
