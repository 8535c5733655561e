"""Analysis helpers of the calibration report: cohort preparation, estimators, analyses, tolerances.

The calibration report (``pipelines.calibration``) compares every published figure it models
with the same statistic estimated on a simulated cohort. This module holds the pieces it is built
from, all pure (no I/O):

- :func:`build_patient_frame`: one row per infused patient with the derived covariates
  (``high_burden`` = marrow blasts >= 5% ...), the outcome columns and the per-patient summaries
  of the measurements (first observed loss of B-cell aplasia, NGS-MRD at the landmarks, PB/BM
  discordance) the analyses need.
- Analyses (frozen dataclasses derived from :class:`Analysis`, with ``describe()`` and
  ``compute(data)``): crude shares, Kaplan-Meier, Aalen-Johansen, Cox (lifelines), time-varying
  Cox, landmark Cox. A Cox fit rejected for non-convergence, a covariate left out of a model and
  rows left out of an analysis are said in the result's note, never skipped silently.
- Tolerance rules (derived from :class:`Tolerance`: ``bounds``, ``describe``; :func:`accepts`).

Endpoints (time origin = infusion, day 0)
-----------------------------------------
``efs``
    ELIANA-style event-free survival: no response (NR) is an event at day 0; relapse and death
    are events at their day; consolidative HSCT censors (the CAR-only course is not observed
    after it); event-free patients are censored at last follow-up.
``relapse`` / ``relapse_<phenotype>``
    Cause-specific: the (phenotype's) relapse is the event; death, HSCT, relapses of another
    phenotype and end of follow-up censor.
``death`` / ``hsct``
    Cause-specific death (in remission or without response) / consolidative HSCT.
``bca_loss``
    First observed loss of B-cell aplasia (first post-infusion PB B-cell result at or above
    ``features.longitudinal.BCA_RECOVERY_*``; a censored result is aplastic); censored at the
    first event, at last follow-up or at the last B-cell test, whichever is first.
``relapse_or_bca_loss``
    The earlier of relapse and observed loss of BCA; censored at the first other event or
    last follow-up.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
from lifelines import AalenJohansenFitter, CoxPHFitter, KaplanMeierFitter
from lifelines.exceptions import ConvergenceError, ConvergenceWarning

from features.longitudinal import BCA_RECOVERY_CELLS_PER_UL, BCA_RECOVERY_PCT_LYMPHOCYTES

__all__ = [
    "CalibrationDataError",
    "HIGH_BURDEN_BLASTS_PCT",
    "LOW_CD19_ANTIGEN_LOAD_PCT",
    "LOW_FLUDARABINE_AUC",
    "NGS_LANDMARKS",
    "ENDPOINTS",
    "AnalysisResult",
    "CalibrationData",
    "Analysis",
    "Tolerance",
    "CountingProcessCoxFit",
    "build_outcome_frame",
    "build_patient_frame",
    "endpoint_times",
    "fit_counting_process_cox",
    "Share",
    "ShareDifference",
    "KaplanMeierAt",
    "KaplanMeierMedian",
    "AalenJohansenAt",
    "LatentMedian",
    "CoxHazardRatio",
    "TimeVaryingCoxHazardRatio",
    "LandmarkCoxHazardRatio",
    "NotModeled",
    "PointsTolerance",
    "RelativeTolerance",
    "HazardRatioTolerance",
    "IntervalTolerance",
    "PositiveTolerance",
    "accepts",
]

HIGH_BURDEN_BLASTS_PCT = 5.0
"""Marrow blasts (%) before lymphodepletion at or above which burden is high (CAR-MA, PRWCC)."""
LOW_CD19_ANTIGEN_LOAD_PCT = 15.0
"""CD19 antigen load (% of BM cells) below which expansion is starved (PLAT-02)."""
LOW_FLUDARABINE_AUC = 13.8
"""Fludarabine exposure (mg*h/L) below which lymphodepletion is suboptimal (PRWCC)."""
NGS_LANDMARKS: dict[str, tuple[float, float]] = {"d28": (14.0, 42.0), "m3": (70.0, 112.0)}
"""BM NGS-MRD windows (first, last day); the landmark is the window's last day (no later data)."""
PB_BM_PAIR_TOLERANCE_DAYS = 3.0
"""PB and BM results at most this many days apart count as the same visit."""
BM_FLOW_MRD_NEGATIVE_BELOW = 1e-4
"""BM flow MRD below this fraction (0.01%) counts as negative for the PB/BM discordance."""
RESPONSES_IN_REMISSION = ("CR", "CRi")
COX_NEWTON_STEP_SIZES = (0.5, 0.2, 0.05)
"""Newton step sizes tried in turn for lifelines' CoxPHFitter."""
ENDPOINTS = ("efs", "relapse", "relapse_CD19_pos", "relapse_CD19_neg", "relapse_lineage_switch",
             "death", "hsct", "bca_loss", "relapse_or_bca_loss")
_COMPETING_CODES = {"relapse": 1, "death": 2, "hsct": 3}


class CalibrationDataError(ValueError):
    """A cohort the calibration analyses cannot use (the message names table, row, column, reason)."""


# --- patient frame --------------------------------------------------------------------------------
def _indicator(series: pd.Series) -> np.ndarray:
    """A (contract-typed) boolean column as 1.0 / 0.0, missing as NaN."""
    return series.astype("boolean").to_numpy(dtype=float, na_value=np.nan)


def _flag(condition: pd.Series, known: pd.Series) -> pd.Series:
    return pd.Series(np.where(known, condition.astype(float), np.nan), index=condition.index)


def _covariates(infusions: pd.DataFrame) -> pd.DataFrame:
    """Derived pre-infusion covariates (1.0 / 0.0, NaN when the source is missing)."""
    blasts = pd.to_numeric(infusions["bm_blasts_pct"], errors="coerce")
    load = pd.to_numeric(infusions["cd19_antigen_load_pct"], errors="coerce")
    auc = pd.to_numeric(infusions.get("fludarabine_auc", pd.Series(np.nan, index=infusions.index)), errors="coerce")
    blina, cns, sex = infusions["blinatumomab"], infusions["cns_status"], infusions["sex"]
    age = pd.to_numeric(infusions["age_years"], errors="coerce")
    out = pd.DataFrame({"patient_id": infusions["patient_id"].astype(str), "bm_blasts_pct": blasts})
    out["high_burden"] = _flag(blasts >= HIGH_BURDEN_BLASTS_PCT, blasts.notna())
    out["blasts_above_0_below_5"] = _flag((blasts > 0) & (blasts < HIGH_BURDEN_BLASTS_PCT), blasts.notna())
    out["blasts_ge_50"] = _flag(blasts >= 50.0, blasts.notna())
    for status in ("naive", "responder", "nonresponder"):
        out[f"blinatumomab_{status}"] = _flag(blina == status, blina.notna())
    for column in ("active_non_cns_emd", "kmt2a_rearranged", "down_syndrome", "prior_hsct", "ph_positive",
                   "hypodiploid"):
        out[column] = _indicator(infusions[column])
    prior_crs = pd.to_numeric(infusions["prior_crs"], errors="coerce")
    out["prior_crs_ge2"] = _flag(prior_crs >= 2, prior_crs.notna())
    out["low_cd19_antigen_load"] = _flag(load < LOW_CD19_ANTIGEN_LOAD_PCT, load.notna())
    out["low_fludarabine_auc"] = _flag(auc < LOW_FLUDARABINE_AUC, auc.notna())
    out["costim_cd28"] = _flag(infusions["costim"] == "CD28", infusions["costim"].notna())
    out["age_ge_18"] = _flag(age >= 18.0, age.notna())
    out["male"] = _flag(sex == "M", sex.notna())
    out["cns3"] = _flag(cns == "CNS3", cns.notna())
    cns_involved = cns.isin(["CNS2", "CNS3"])
    isolated = cns_involved & (blasts < HIGH_BURDEN_BLASTS_PCT) & (out["active_non_cns_emd"] == 0.0)
    out["isolated_cns"] = _flag(isolated, cns.notna() & blasts.notna())
    return out


def _outcome_columns(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Response, first event and its day, and the end of observation (event day or last follow-up)."""
    event = outcomes["event"].astype(str)
    event_day = pd.to_numeric(outcomes["event_day"], errors="coerce")
    last = pd.to_numeric(outcomes["last_followup_day"], errors="coerce")
    return pd.DataFrame({
        "patient_id": outcomes["patient_id"].astype(str),
        "response": outcomes["response"],
        "responder": outcomes["response"].isin(RESPONSES_IN_REMISSION),
        "nonresponse": outcomes["response"] == "NR",
        "first_event": event,
        "end_day": np.where(event == "none", last, event_day),
        "relapse_phenotype": outcomes["relapse_phenotype"],
        "relapse_site": outcomes["relapse_site"],
    })


def _post_infusion_rows(measurements: pd.DataFrame, specimen: str, assay: str) -> pd.DataFrame:
    rows = measurements[(measurements["specimen"].astype(str) == specimen)
                        & (measurements["assay"].astype(str) == assay) & (measurements["day"] > 0)]
    return rows


def _detectable(rows: pd.DataFrame) -> pd.Series:
    """Detectable = quantified above zero, or detected below the limit of quantitation."""
    return (~rows["censored"].astype(bool) & (rows["value"] > 0)) | rows["detected_below_loq"].astype(bool)


def _bca_columns(measurements: pd.DataFrame) -> pd.DataFrame:
    """First observed loss of BCA, last B-cell test, and status at the first test, per patient."""
    rows = _post_infusion_rows(measurements, "PB", "b_cell_count")
    threshold = np.where(rows["unit"] == "pct_lymphocytes", BCA_RECOVERY_PCT_LYMPHOCYTES, BCA_RECOVERY_CELLS_PER_UL)
    recovered = ~rows["censored"].astype(bool) & (rows["value"] >= threshold)
    tests = pd.DataFrame({"patient_id": rows["patient_id"].astype(str), "day": rows["day"], "recovered": recovered})
    grouped = tests.sort_values("day").groupby("patient_id", sort=False)
    return pd.DataFrame({
        "bca_loss_day": tests[tests["recovered"]].groupby("patient_id")["day"].min(),
        "bca_first_test_day": grouped["day"].min(),
        "bca_last_test_day": grouped["day"].max(),
        "bca_first_test_aplastic": 1.0 - grouped["recovered"].first().astype(float),
    })


def _ngs_landmark_columns(measurements: pd.DataFrame) -> pd.DataFrame:
    """Any detectable BM NGS-MRD within each landmark window (NaN: no result in the window)."""
    rows = _post_infusion_rows(measurements, "BM", "ngs_mrd")
    detectable = _detectable(rows).astype(float)
    columns = {}
    for name, (first, last) in NGS_LANDMARKS.items():
        inside = (rows["day"] >= first) & (rows["day"] <= last)
        columns[f"ngs_bm_detectable_{name}"] = detectable[inside].groupby(rows["patient_id"][inside].astype(str)).max()
    return pd.DataFrame(columns)


def _pb_bm_discordance(measurements: pd.DataFrame) -> pd.Series:
    """1.0 if any visit has detectable PB flow MRD while BM flow MRD < 0.01%; NaN without a pair."""
    pb = _post_infusion_rows(measurements, "PB", "flow_mrd").assign(pb_pos=lambda r: _detectable(r))
    bm = _post_infusion_rows(measurements, "BM", "flow_mrd")
    bm = bm.assign(bm_below=lambda r: r["censored"].astype(bool) | (r["value"] < BM_FLOW_MRD_NEGATIVE_BELOW))
    left = pb[["patient_id", "day", "pb_pos"]].astype({"patient_id": str}).sort_values("day")
    right = bm[["patient_id", "day", "bm_below"]].astype({"patient_id": str}).sort_values("day")
    pairs = pd.merge_asof(left, right, on="day", by="patient_id", direction="nearest",
                          tolerance=PB_BM_PAIR_TOLERANCE_DAYS).dropna(subset=["bm_below"])
    discordant = (pairs["pb_pos"] & pairs["bm_below"].astype(bool)).astype(float)
    return discordant.groupby(pairs["patient_id"]).max().rename("pb_pos_bm_below_0_01pct")


def build_outcome_frame(infusions: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """Derived pre-infusion covariates and outcome columns, one row per patient in both tables."""
    return _covariates(infusions).merge(_outcome_columns(outcomes), on="patient_id", how="inner")


def build_patient_frame(infusions: pd.DataFrame, outcomes: pd.DataFrame, measurements: pd.DataFrame,
                        ground_truth: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per infused patient with everything the calibration analyses use.

    Parameters
    ----------
    infusions, outcomes : DataFrame
        Input tables of the data contract.
    measurements : DataFrame
        Normalised measurements (``features.contract.validate_cohort``).
    ground_truth : DataFrame, optional
        Simulated latent truth; adds ``car_persistence_day``.

    Returns
    -------
    DataFrame
        Indexed by position; see the module docstring for the derived columns.

    Raises
    ------
    CalibrationDataError
        When patient ids are duplicated in infusions or outcomes.
    """
    for name, table in (("infusions", infusions), ("outcomes", outcomes)):
        duplicated = table["patient_id"].astype(str).duplicated()
        if duplicated.any():
            raise CalibrationDataError(f"{name}, row {int(np.flatnonzero(duplicated)[0])}, column 'patient_id': "
                                       "duplicated patient id")
    frame = build_outcome_frame(infusions, outcomes)
    per_patient = [_bca_columns(measurements), _ngs_landmark_columns(measurements), _pb_bm_discordance(measurements)]
    for summary in per_patient:
        frame = frame.join(summary, on="patient_id")
    if ground_truth is not None:
        latent = ground_truth.assign(patient_id=ground_truth["patient_id"].astype(str))
        frame = frame.merge(latent[["patient_id", "car_persistence_day"]], on="patient_id", how="left")
    return frame.reset_index(drop=True)


# --- endpoints ------------------------------------------------------------------------------------
def endpoint_times(patients: pd.DataFrame, endpoint: str) -> tuple[np.ndarray, np.ndarray]:
    """Time (days since infusion) and event indicator of ``endpoint`` (see the module docstring).

    Parameters
    ----------
    patients : DataFrame
        From :func:`build_patient_frame`.
    endpoint : str
        One of :data:`ENDPOINTS`.

    Returns
    -------
    (ndarray of float, ndarray of bool)
        NaN time = not evaluable (e.g. no B-cell test for ``bca_loss``).
    """
    end = patients["end_day"].to_numpy(dtype=float)
    first = patients["first_event"].to_numpy(dtype=object)
    relapse = first == "relapse"
    if endpoint == "efs":
        nonresponse = patients["nonresponse"].to_numpy(dtype=bool)
        return np.where(nonresponse, 0.0, end), nonresponse | relapse | (first == "death")
    if endpoint.startswith("relapse_") and endpoint != "relapse_or_bca_loss":
        phenotype = endpoint.removeprefix("relapse_")
        return end, relapse & (patients["relapse_phenotype"].to_numpy(dtype=object) == phenotype)
    if endpoint in ("relapse", "death", "hsct"):
        return end, first == endpoint
    loss = patients["bca_loss_day"].to_numpy(dtype=float)
    observed = np.isfinite(loss) & (loss <= end)
    if endpoint == "bca_loss":
        censor = np.fmin(end, patients["bca_last_test_day"].to_numpy(dtype=float))
        censor = np.where(np.isfinite(patients["bca_last_test_day"].to_numpy(dtype=float)), censor, np.nan)
        return np.where(observed, loss, censor), observed
    if endpoint == "relapse_or_bca_loss":
        return np.where(observed, loss, end), observed | relapse
    raise ValueError(f"unknown endpoint '{endpoint}'; expected one of {ENDPOINTS}")


def _truncate(time: np.ndarray, event: np.ndarray, horizon_day: float | None) -> tuple[np.ndarray, np.ndarray]:
    if horizon_day is None:
        return time, event
    return np.fmin(time, horizon_day), event & (time <= horizon_day)


# --- the analysed data ----------------------------------------------------------------------------
@dataclass(frozen=True)
class AnalysisResult:
    """An estimate with its sample: ``value`` (NaN = not estimable), patients, events, a note."""

    value: float
    n: int = 0
    events: int | None = None
    note: str = ""


_EMPTY_POPULATION = AnalysisResult(math.nan, 0, note="empty population")


@dataclass
class CalibrationData:
    """The prepared cohort: the patient frame plus a cache of fitted models (by specification)."""

    patients: pd.DataFrame
    has_ground_truth: bool
    cache: dict = field(default_factory=dict)

    def select(self, population: str) -> pd.DataFrame:
        """Patients matching a pandas query expression (``"all"`` = everyone)."""
        return self.patients if population == "all" else self.patients.query(population, engine="python")


def _survival_frame(patients: pd.DataFrame, endpoint: str, horizon_day: float | None = None) -> pd.DataFrame:
    time, event = _truncate(*endpoint_times(patients, endpoint), horizon_day)
    frame = pd.DataFrame({"time": time, "event": event}, index=patients.index)
    return frame[np.isfinite(frame["time"])]


# --- analyses ---------------------------------------------------------------------------------------
class Analysis(ABC):
    """How one published figure is estimated on a prepared cohort (the base of every analysis).

    Subclasses are frozen dataclasses whose fields define the endpoint and the population;
    ``needs_ground_truth`` says whether the analysis reads the simulated latent truth.
    """

    needs_ground_truth: ClassVar[bool] = False

    @abstractmethod
    def describe(self) -> str:
        """One line saying what is estimated, on whom (shown in the report's ``analysis`` column)."""

    @abstractmethod
    def compute(self, data: CalibrationData) -> AnalysisResult:
        """Estimate the figure on ``data``.

        Parameters
        ----------
        data : CalibrationData
            The prepared cohort (models fitted once are cached in ``data.cache``).

        Returns
        -------
        AnalysisResult
            ``value`` is NaN when the figure cannot be estimated; the note says why.
        """


@dataclass(frozen=True)
class Share(Analysis):
    """Percentage of ``population`` meeting ``condition`` (a pandas expression); crude count share."""

    population: str
    condition: str

    def describe(self) -> str:
        return f"crude share: [{self.condition}] among [{self.population}]"

    def compute(self, data: CalibrationData) -> AnalysisResult:
        hits = data.select(self.population).eval(self.condition, engine="python").astype(float).dropna()
        if hits.empty:
            return _EMPTY_POPULATION
        return AnalysisResult(100.0 * float(hits.mean()), int(hits.size), note=f"{int(hits.sum())}/{hits.size}")


@dataclass(frozen=True)
class ShareDifference(Analysis):
    """Share of ``condition`` in ``population`` minus its share in ``reference`` (points)."""

    population: str
    reference: str
    condition: str

    def describe(self) -> str:
        return f"difference of crude shares of [{self.condition}]: [{self.population}] minus [{self.reference}]"

    def compute(self, data: CalibrationData) -> AnalysisResult:
        first, second = (Share(p, self.condition).compute(data) for p in (self.population, self.reference))
        return AnalysisResult(first.value - second.value, first.n + second.n,
                              note=f"{first.value:.1f}% (n={first.n}) vs {second.value:.1f}% (n={second.n})")


def _kaplan_meier(data: CalibrationData, endpoint: str, population: str
                  ) -> tuple[pd.DataFrame, KaplanMeierFitter | None]:
    """The survival frame of ``endpoint`` among ``population`` and its Kaplan-Meier fit (None if empty)."""
    frame = _survival_frame(data.select(population), endpoint)
    if frame.empty:
        return frame, None
    return frame, KaplanMeierFitter().fit(frame["time"], frame["event"])


@dataclass(frozen=True)
class KaplanMeierAt(Analysis):
    """Kaplan-Meier event-free probability (``risk=False``) or 1 - it, in %, at ``day``."""

    endpoint: str
    population: str
    day: float
    risk: bool = False

    def describe(self) -> str:
        what = "1 - KM" if self.risk else "KM"
        return f"{what} of {self.endpoint} at day {self.day:g} among [{self.population}]"

    def compute(self, data: CalibrationData) -> AnalysisResult:
        frame, fitter = _kaplan_meier(data, self.endpoint, self.population)
        if fitter is None:
            return _EMPTY_POPULATION
        survival = float(fitter.survival_function_at_times(self.day).iloc[0])
        at_risk = int((frame["time"] > self.day).sum())
        value = 100.0 * (1.0 - survival if self.risk else survival)
        return AnalysisResult(value, len(frame), int(frame["event"].sum()),
                              note=f"{at_risk} at risk at day {self.day:g}")


@dataclass(frozen=True)
class KaplanMeierMedian(Analysis):
    """Kaplan-Meier median time (days) to ``endpoint``."""

    endpoint: str
    population: str

    def describe(self) -> str:
        return f"KM median time to {self.endpoint} among [{self.population}]"

    def compute(self, data: CalibrationData) -> AnalysisResult:
        frame, fitter = _kaplan_meier(data, self.endpoint, self.population)
        if fitter is None:
            return _EMPTY_POPULATION
        return AnalysisResult(float(fitter.median_survival_time_), len(frame), int(frame["event"].sum()))


@dataclass(frozen=True)
class AalenJohansenAt(Analysis):
    """Aalen-Johansen cumulative incidence (%) of ``cause`` by ``day`` (minus that by ``from_day``).

    Competing first events: relapse, death, HSCT; no response is not an event (NR patients are
    followed like the others).
    """

    cause: str
    population: str
    day: float
    from_day: float | None = None

    def describe(self) -> str:
        window = f"between day {self.from_day:g} and {self.day:g}" if self.from_day else f"by day {self.day:g}"
        return (f"Aalen-Johansen cumulative incidence of {self.cause} {window} among [{self.population}]"
                " (competing: relapse, death, HSCT)")

    def compute(self, data: CalibrationData) -> AnalysisResult:
        frame = data.select(self.population)
        if frame.empty:
            return _EMPTY_POPULATION
        codes = frame["first_event"].map(_COMPETING_CODES).fillna(0).astype(int).to_numpy()
        time = frame["end_day"].to_numpy(dtype=float)
        days = [self.day] if self.from_day is None else [self.from_day, self.day]
        incidence = _aalen_johansen(time, codes, _COMPETING_CODES[self.cause], days)
        value = incidence[-1] - (incidence[0] if self.from_day is not None else 0.0)
        events = int((codes == _COMPETING_CODES[self.cause]).sum())
        return AnalysisResult(100.0 * value, int(time.size), events)


def _aalen_johansen(time: np.ndarray, codes: np.ndarray, cause: int, days: list[float]) -> np.ndarray:
    """lifelines' Aalen-Johansen CIF at ``days``, deterministic and side-effect free.

    lifelines jitters event times tied across causes (with a warning) using the global numpy
    random state; the jitter (1e-4 day) is immaterial here, so its warning is silenced and the
    global random state is restored afterwards.
    """
    state = np.random.get_state()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Tied event times were detected")
            fitter = AalenJohansenFitter(calculate_variance=False, seed=0)
            fitter.fit(pd.Series(time), pd.Series(codes), event_of_interest=cause)
    finally:
        np.random.set_state(state)
    return np.atleast_1d(np.asarray(fitter.predict(days), dtype=float))


@dataclass(frozen=True)
class LatentMedian(Analysis):
    """Median of a ground-truth latent time (``inf`` = beyond the horizon) among ``population``."""

    column: str
    population: str
    needs_ground_truth: ClassVar[bool] = True

    def describe(self) -> str:
        return f"median of latent {self.column} (ground truth) among [{self.population}]"

    def compute(self, data: CalibrationData) -> AnalysisResult:
        values = data.select(self.population)[self.column].to_numpy(dtype=float)
        values = values[~np.isnan(values)]
        if values.size == 0:
            return AnalysisResult(math.nan, 0, note="no latent values")
        share_inf = float(np.mean(np.isinf(values)))
        return AnalysisResult(float(np.median(values)), int(values.size), note=f"{100 * share_inf:.1f}% never lost")


# --- Cox models -------------------------------------------------------------------------------------
@dataclass
class _CoxFit:
    """A fitted Cox model as the report needs it: HRs, 95% CIs, and what was left out and why."""

    n: int
    events: int
    hazard_ratio: dict[str, float] = field(default_factory=dict)
    ci95: dict[str, tuple[float, float]] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    """Covariates left out of the model -> reason (constant, or separation)."""
    notes: list[str] = field(default_factory=list)
    """Everything else the report must say (rows left out, rejected fits, warnings)."""


@dataclass(frozen=True)
class CoxHazardRatio(Analysis):
    """Hazard ratio of ``covariate`` from a Cox model (lifelines CoxPHFitter, Efron ties).

    The model (endpoint, population, covariates, horizon) is fitted once and cached; rows with a
    missing covariate are left out (complete cases, counted in the note).
    """

    endpoint: str
    population: str
    covariates: tuple[str, ...]
    covariate: str
    horizon_day: float | None = None

    def describe(self) -> str:
        kind = "univariable" if len(self.covariates) == 1 else "multivariable"
        horizon = f", follow-up truncated at day {self.horizon_day:g}" if self.horizon_day else ""
        adjusted = f" adjusted for {', '.join(c for c in self.covariates if c != self.covariate)}" \
            if len(self.covariates) > 1 else ""
        return (f"{kind} Cox, {self.endpoint}{horizon}, among [{self.population}]: HR of "
                f"{self.covariate}{adjusted}")

    def compute(self, data: CalibrationData) -> AnalysisResult:
        key = ("cox", self.endpoint, self.population, self.covariates, self.horizon_day)
        if key not in data.cache:
            frame = _survival_frame(data.select(self.population), self.endpoint, self.horizon_day)
            design = data.select(self.population).loc[frame.index, list(self.covariates)]
            data.cache[key] = _fit_cox(frame.join(design))
        return _hazard_ratio_result(data.cache[key], self.covariate)


def _fit_cox(frame: pd.DataFrame) -> _CoxFit:
    """Fit lifelines' CoxPHFitter on the complete rows of ``frame`` (time, event, covariates).

    Rows with a missing covariate are left out and counted. Constant covariates, and binary
    covariates without an event at one level (separation: the HR is infinite or zero), are left
    out of the model and reported as not estimable. Fits rejected for non-convergence and
    lifelines' other warnings are kept in the notes.
    """
    complete = frame.dropna()
    fit = _CoxFit(n=len(complete), events=int(complete["event"].sum()))
    if len(complete) < len(frame):
        fit.notes.append(f"{len(frame) - len(complete)} rows with a missing covariate left out")
    candidates = [c for c in complete.columns if c not in ("time", "event")]
    fit.excluded = {name: reason for name in candidates if (reason := _not_estimable_reason(complete, name))}
    covariates = [c for c in candidates if c not in fit.excluded]
    if fit.events == 0:
        fit.notes.append("no events")
    if not covariates or fit.events == 0:
        return fit
    model, warning_names, rejected = _damped_cox_fit(complete[covariates + ["time", "event"]])
    fit.notes += [f"fit rejected, {attempt}" for attempt in rejected]
    if model is None:
        fit.notes.append("did not converge at any step size")
        return fit
    ci = model.confidence_intervals_
    for name in covariates:
        fit.hazard_ratio[name] = float(model.hazard_ratios_[name])
        fit.ci95[name] = (math.exp(ci.loc[name].iloc[0]), math.exp(ci.loc[name].iloc[1]))
    if warning_names:
        fit.notes.append(f"warnings: {', '.join(warning_names)}")
    return fit


def _damped_cox_fit(frame: pd.DataFrame) -> tuple[CoxPHFitter | None, list[str], list[str]]:
    """CoxPHFitter with damped Newton steps, trying smaller steps while it fails to converge.

    lifelines' default step (0.95) can diverge or stop at a wrong optimum (HR 1e-30 instead of
    30) with a ``ConvergenceWarning``; such a fit is rejected, and so is one that raises
    ``ConvergenceError``.

    Returns
    -------
    model : CoxPHFitter or None
        The first accepted fit (None if every step size fails).
    warning_names : list of str
        Names of the other warnings the accepted fit raised.
    rejected : list of str
        One line per rejected attempt: step size, exception or warning, and its message.
    """
    rejected = []
    for step_size in COX_NEWTON_STEP_SIZES:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model = CoxPHFitter().fit(frame, "time", "event", fit_options={"step_size": step_size})
            except ConvergenceError as error:
                rejected.append(f"step size {step_size:g}: ConvergenceError ({_first_sentence(error)})")
                continue
        convergence = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
        if convergence:
            rejected.append(f"step size {step_size:g}: ConvergenceWarning ({_first_sentence(convergence[0].message)})")
            continue
        return model, sorted({w.category.__name__ for w in caught}), rejected
    return None, [], rejected


def _first_sentence(message: object, max_chars: int = 120) -> str:
    """The first line / sentence of a warning or error message, shortened for a table cell."""
    text = str(message).strip().splitlines()[0] if str(message).strip() else type(message).__name__
    text = text.split(". ")[0].rstrip(".")
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def _not_estimable_reason(frame: pd.DataFrame, name: str) -> str:
    """Why a covariate's HR cannot be estimated ('' if it can): constant, or no event at a level."""
    if frame[name].nunique() < 2:
        return f"{name} does not vary"
    levels = frame.groupby(name)["event"].sum()
    if set(levels.index) <= {0.0, 1.0} and (levels == 0).any():
        return f"no event with {name} = {levels.index[levels == 0][0]:g} (separation: HR infinite or zero)"
    return ""


def _hazard_ratio_result(fit: _CoxFit, covariate: str) -> AnalysisResult:
    """The HR of ``covariate`` with its CI and every note of the fit (adjusters left out included)."""
    if covariate not in fit.hazard_ratio:
        reason = fit.excluded.get(covariate) or "; ".join(fit.notes) or "model not fitted"
        return AnalysisResult(math.nan, fit.n, fit.events, note=f"not estimable: {reason}")
    low, high = fit.ci95[covariate]
    left_out = [f"adjustment left out: {reason}" for name, reason in fit.excluded.items() if name != covariate]
    note = "; ".join([f"95% CI {low:.2f}-{high:.2f}"] + left_out + fit.notes)
    return AnalysisResult(fit.hazard_ratio[covariate], fit.n, fit.events, note=note)


# --- counting-process (time-varying) Cox -------------------------------------------------------------
@dataclass(frozen=True)
class CountingProcessCoxFit:
    """Result of :func:`fit_counting_process_cox`.

    ``log_hazard_ratio`` and ``standard_error`` hold one value per covariate (NaN when the fit
    did not converge); ``rows_dropped`` counts rows left out because their interval was empty
    or not finite (stop <= start); ``iterations`` counts Newton-Raphson iterations.
    """

    log_hazard_ratio: np.ndarray
    standard_error: np.ndarray
    rows_used: int
    rows_dropped: int
    converged: bool
    iterations: int


_NEWTON_STEP_TOLERANCE = 1e-9
"""Newton-Raphson has converged when no log hazard ratio moves more than this."""
_LOGLIK_RELATIVE_ROUNDING = 1e-12
"""Relative rounding error of the summed log partial likelihood (a smaller drop is not an overshoot)."""


@dataclass(frozen=True)
class _RiskSets:
    """Counting-process rows prepared for the Breslow partial likelihood."""

    start: np.ndarray
    stop: np.ndarray
    x: np.ndarray
    event_times: np.ndarray
    deaths: np.ndarray
    """Number of events at each of ``event_times``."""
    x_events: np.ndarray
    """Sum of the covariates over the event rows."""


def fit_counting_process_cox(start: np.ndarray, stop: np.ndarray, event: np.ndarray, covariates: np.ndarray,
                             max_iterations: int = 50) -> CountingProcessCoxFit:
    """Cox model on counting-process rows (start, stop], Breslow ties, by Newton-Raphson.

    The partial likelihood is that of lifelines' ``CoxTimeVaryingFitter`` (which uses Efron ties
    and is identical without tied event times) but vectorised: risk-set sums at each event time
    t are (sum of exp(x'b) over rows with stop >= t) - (same over rows with start >= t), from
    suffix sums over sorted stops and starts. ``CoxTimeVaryingFitter`` needs minutes for 20,000
    patients; this takes milliseconds. A step that lowers the likelihood is halved.

    Parameters
    ----------
    start, stop : ndarray of float
        Interval of each row (days). Rows with ``stop <= start`` (or a non-finite bound or
        covariate) are at risk nowhere; they are left out and counted in ``rows_dropped``.
    event : ndarray of bool
        Event at ``stop``.
    covariates : ndarray of float, shape (n_rows, n_covariates)
        Covariate values over the interval.
    max_iterations : int
        Newton-Raphson iterations (including halved steps) before giving up.

    Returns
    -------
    CountingProcessCoxFit
        ``converged`` is False (and the estimates NaN) when the iterations ran out, there was
        no event, or the information matrix was singular.
    """
    start, stop = np.asarray(start, dtype=float), np.asarray(stop, dtype=float)
    x = np.asarray(covariates, dtype=float).reshape(len(stop), -1)
    valid = (stop > start) & np.isfinite(start) & np.isfinite(stop) & np.isfinite(x).all(axis=1)
    event = np.asarray(event, dtype=bool)[valid]
    risk_sets = _risk_sets(start[valid], stop[valid], event, x[valid])
    beta, converged, iterations = np.full(x.shape[1], np.nan), False, 0
    standard_error = np.full(x.shape[1], np.nan)
    if event.any():
        try:
            beta, converged, iterations = _newton_raphson(risk_sets, max_iterations)
            standard_error = np.sqrt(np.diag(np.linalg.inv(_cox_terms(risk_sets, beta)[2])))
        except np.linalg.LinAlgError:
            converged = False
    if not converged:
        beta, standard_error = np.full(x.shape[1], np.nan), np.full(x.shape[1], np.nan)
    return CountingProcessCoxFit(beta, standard_error, int(valid.sum()), int((~valid).sum()), converged, iterations)


def _risk_sets(start: np.ndarray, stop: np.ndarray, event: np.ndarray, x: np.ndarray) -> _RiskSets:
    event_times = np.unique(stop[event])
    deaths = np.bincount(np.searchsorted(event_times, stop[event]), minlength=event_times.size)
    return _RiskSets(start, stop, x, event_times, deaths, x[event].sum(axis=0))


def _newton_raphson(risk_sets: _RiskSets, max_iterations: int) -> tuple[np.ndarray, bool, int]:
    """Maximise the partial likelihood from beta = 0; returns (beta, converged, iterations).

    Converged when the Newton step is below ``_NEWTON_STEP_TOLERANCE``. A step that lowers the
    log likelihood by more than its rounding error (``_LOGLIK_RELATIVE_ROUNDING``) is halved.
    """
    beta = np.zeros(risk_sets.x.shape[1])
    accepted_beta, accepted_loglik = beta, -np.inf
    for iteration in range(1, max_iterations + 1):
        loglik, gradient, information = _cox_terms(risk_sets, beta)
        if not loglik >= accepted_loglik - _LOGLIK_RELATIVE_ROUNDING * abs(accepted_loglik):
            beta = (beta + accepted_beta) / 2.0  # the step overshot (or left the finite region)
            continue
        step = np.linalg.solve(information, gradient)
        accepted_beta, accepted_loglik = beta, loglik
        beta = beta + step
        if np.max(np.abs(step)) < _NEWTON_STEP_TOLERANCE:
            return beta, True, iteration
    return beta, False, max_iterations


def _cox_terms(risk_sets: _RiskSets, beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Breslow log partial likelihood, its gradient and the observed information at ``beta``."""
    x = risk_sets.x
    eta = x @ beta
    weight = np.exp(eta - eta.max())
    moments = [weight, weight[:, None] * x, weight[:, None, None] * x[:, :, None] * x[:, None, :]]
    s0, s1, s2 = (_risk_set_sum(m, risk_sets.start, risk_sets.stop, risk_sets.event_times) for m in moments)
    mean = s1 / s0[:, None]
    deaths = risk_sets.deaths
    loglik = float(risk_sets.x_events @ beta - np.sum(deaths * (np.log(s0) + eta.max())))
    gradient = risk_sets.x_events - (deaths[:, None] * mean).sum(axis=0)
    covariance = s2 / s0[:, None, None] - mean[:, :, None] * mean[:, None, :]
    return loglik, gradient, (deaths[:, None, None] * covariance).sum(axis=0)


def _risk_set_sum(values: np.ndarray, start: np.ndarray, stop: np.ndarray, times: np.ndarray) -> np.ndarray:
    """For each time t: sum of ``values`` over rows with start < t <= stop."""
    def suffix_sum(keys: np.ndarray) -> np.ndarray:
        """Sum of ``values`` over rows with key >= t, for each t of ``times``."""
        order = np.argsort(keys, kind="stable")
        cumulative = np.concatenate([np.cumsum(values[order][::-1], axis=0)[::-1], np.zeros((1,) + values.shape[1:])])
        return cumulative[np.searchsorted(keys[order], times, side="left")]

    return suffix_sum(stop) - suffix_sum(start)


def _switch_rows(time: np.ndarray, event: np.ndarray, switch: np.ndarray, switches: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Counting-process rows (start, stop, event, exposed) of a 0 -> 1 covariate switching at ``switch``."""
    start = np.concatenate([np.zeros(time.size), switch[switches]])
    stop = np.concatenate([np.where(switches, switch, time), time[switches]])
    status = np.concatenate([event & ~switches, event[switches]])
    exposed = np.concatenate([np.zeros(time.size), np.ones(int(switches.sum()))])
    return start, stop, status, exposed


@dataclass(frozen=True)
class TimeVaryingCoxHazardRatio(Analysis):
    """HR of a 0 -> 1 time-varying covariate switching at ``switch_column`` (if <= ``switch_by_day``).

    Counting-process Cox (see :func:`fit_counting_process_cox`), time since infusion; a switch
    on the day of the event itself does not count (the covariate must precede the event).
    """

    endpoint: str
    population: str
    switch_column: str
    switch_by_day: float

    def describe(self) -> str:
        return (f"time-varying Cox (counting process), {self.endpoint} among [{self.population}]: HR after "
                f"{self.switch_column} (switch only if observed by day {self.switch_by_day:g}) vs before/never")

    def compute(self, data: CalibrationData) -> AnalysisResult:
        patients = data.select(self.population)
        frame = _survival_frame(patients, self.endpoint)
        switch = patients.loc[frame.index, self.switch_column].to_numpy(dtype=float)
        time, event = frame["time"].to_numpy(), frame["event"].to_numpy(dtype=bool)
        switches = np.isfinite(switch) & (switch <= self.switch_by_day) & (switch > 0) & (switch < time)
        n, events = len(frame), int(event.sum())
        if events == 0 or not switches.any():
            return AnalysisResult(math.nan, n, events, note="not estimable: no events or no switch")
        start, stop, status, exposed = _switch_rows(time, event, switch, switches)
        fit = fit_counting_process_cox(start, stop, status, exposed[:, None])
        notes = [f"{fit.rows_dropped} rows with an empty interval (stop <= start) left out"] if fit.rows_dropped else []
        if not fit.converged:
            reason = f"Newton-Raphson did not converge ({fit.iterations} iterations)"
            return AnalysisResult(math.nan, n, events, note="; ".join([f"not estimable: {reason}"] + notes))
        log_hr, se = fit.log_hazard_ratio[0], fit.standard_error[0]
        low, high = np.exp(log_hr - 1.96 * se), np.exp(log_hr + 1.96 * se)
        note = "; ".join([f"95% CI {low:.2f}-{high:.2f}", f"{int(switches.sum())} switched"] + notes)
        return AnalysisResult(float(np.exp(log_hr)), n, events, note=note)


@dataclass(frozen=True)
class LandmarkCoxHazardRatio(Analysis):
    """Landmark Cox HR of a marker known by ``landmark_day``, among patients in remission then.

    Risk set: responders event-free and under follow-up at the landmark with a known marker;
    time = days from the landmark to the event (others censor), lifelines CoxPHFitter. With
    ``adjust_for_bca_loss`` the model also holds ``bca_lost_by_landmark`` (a recovered B-cell
    test by the landmark; patients without a B-cell test by then are left out), as in the
    multivariable ELIANA/ENSIGN analysis.
    """

    endpoint: str
    marker: str
    landmark_day: float
    adjust_for_bca_loss: bool = False

    def describe(self) -> str:
        adjusted = " adjusted for loss of BCA by the landmark" if self.adjust_for_bca_loss else ""
        return (f"landmark Cox at day {self.landmark_day:g}, {self.endpoint} after the landmark, among responders "
                f"event-free at the landmark: HR of {self.marker}{adjusted}")

    def compute(self, data: CalibrationData) -> AnalysisResult:
        key = ("landmark", self.endpoint, self.marker, self.landmark_day, self.adjust_for_bca_loss)
        if key not in data.cache:
            data.cache[key] = _fit_cox(self._risk_set(data.patients))
        return _hazard_ratio_result(data.cache[key], self.marker)

    def _risk_set(self, patients: pd.DataFrame) -> pd.DataFrame:
        at_risk = patients[patients["responder"] & (patients["end_day"] > self.landmark_day)]
        frame = _survival_frame(at_risk, self.endpoint)
        frame = frame.assign(time=frame["time"] - self.landmark_day, **{self.marker: at_risk[self.marker]})
        if self.adjust_for_bca_loss:
            tested = at_risk["bca_first_test_day"] <= self.landmark_day
            lost = (at_risk["bca_loss_day"] <= self.landmark_day).astype(float)
            frame["bca_lost_by_landmark"] = lost.where(tested)
        return frame[frame["time"] > 0]


@dataclass(frozen=True)
class NotModeled(Analysis):
    """A published figure the simulator cannot reproduce, with the reason."""

    reason: str

    def describe(self) -> str:
        return "not modeled"

    def compute(self, data: CalibrationData) -> AnalysisResult:
        return AnalysisResult(math.nan, note=self.reason)


# --- tolerance rules --------------------------------------------------------------------------------
class Tolerance(ABC):
    """An acceptance rule: the interval a simulated figure must fall in, given the published one.

    ``describe`` shows the rule and its interval, the bounds formatted with ``_bounds_format``
    (None: the rule says it all).
    """

    _bounds_format: ClassVar[str | None] = ".3g"

    @abstractmethod
    def bounds(self, target: float, target_range: tuple[float, float] | None = None,
               ci: tuple[float, float] | None = None) -> tuple[float, float]:
        """Accepted interval (low, high) for the published ``target``.

        Parameters
        ----------
        target : float
            Published value (midpoint of a published range).
        target_range : tuple of float, optional
            Published range (low, high).
        ci : tuple of float, optional
            Published 95% confidence interval.

        Returns
        -------
        tuple of float
        """

    @abstractmethod
    def rule(self, ci: tuple[float, float] | None = None) -> str:
        """The rule in words (e.g. ``+-5 points``); ``ci`` is the published 95% CI, if any."""

    def describe(self, target: float, target_range: tuple[float, float] | None = None,
                 ci: tuple[float, float] | None = None) -> str:
        """The rule and its interval, short (the report's ``tolerance`` column); arguments as in ``bounds``."""
        if self._bounds_format is None:
            return self.rule(ci)
        low, high = self.bounds(target, target_range, ci)
        return f"{self.rule(ci)} ({low:{self._bounds_format}}-{high:{self._bounds_format}})"


def _range(target: float, target_range: tuple[float, float] | None) -> tuple[float, float]:
    return target_range if target_range is not None else (target, target)


@dataclass(frozen=True)
class PointsTolerance(Tolerance):
    """Percentage within +-``points`` of the published value (or of the published range)."""

    points: float = 5.0
    _bounds_format: ClassVar[str | None] = ".1f"

    def bounds(self, target, target_range=None, ci=None) -> tuple[float, float]:
        low, high = _range(target, target_range)
        return max(low - self.points, 0.0), min(high + self.points, 100.0)

    def rule(self, ci=None) -> str:
        return f"+-{self.points:g} points"


@dataclass(frozen=True)
class RelativeTolerance(Tolerance):
    """Within +-``fraction`` of the published value (or range), relative."""

    fraction: float = 0.30

    def bounds(self, target, target_range=None, ci=None) -> tuple[float, float]:
        low, high = _range(target, target_range)
        return low * (1.0 - self.fraction), high * (1.0 + self.fraction)

    def rule(self, ci=None) -> str:
        return f"+-{100 * self.fraction:g}%"


@dataclass(frozen=True)
class HazardRatioTolerance(Tolerance):
    """Hazard ratio inside the published 95% CI, or within +-``fraction`` of the published HR."""

    fraction: float = 0.30
    _bounds_format: ClassVar[str | None] = ".2f"

    def bounds(self, target, target_range=None, ci=None) -> tuple[float, float]:
        low, high = target * (1.0 - self.fraction), target * (1.0 + self.fraction)
        if ci is not None:
            low, high = min(low, ci[0]), max(high, ci[1])
        return low, high

    def rule(self, ci=None) -> str:
        relative = f"+-{100 * self.fraction:g}%"
        return f"in 95% CI or {relative}" if ci is not None else relative


@dataclass(frozen=True)
class IntervalTolerance(Tolerance):
    """Within a fixed interval (e.g. 'no effect': HR 0.77-1.3)."""

    low: float
    high: float
    _bounds_format: ClassVar[str | None] = None

    def bounds(self, target, target_range=None, ci=None) -> tuple[float, float]:
        return self.low, self.high

    def rule(self, ci=None) -> str:
        return f"within {self.low:g}-{self.high:g}"


@dataclass(frozen=True)
class PositiveTolerance(Tolerance):
    """Strictly above zero (the phenomenon occurs)."""

    _bounds_format: ClassVar[str | None] = None

    def bounds(self, target, target_range=None, ci=None) -> tuple[float, float]:
        return 0.0, math.inf

    def rule(self, ci=None) -> str:
        return "> 0"


def accepts(tolerance: Tolerance, simulated: float, target: float, target_range: tuple[float, float] | None = None,
            ci: tuple[float, float] | None = None) -> bool:
    """Whether ``simulated`` satisfies ``tolerance`` (NaN never does; ``> 0`` is strict).

    Parameters
    ----------
    tolerance : Tolerance
        The acceptance rule.
    simulated : float
        The figure estimated on the simulated cohort.
    target, target_range, ci
        The published figure, as in :meth:`Tolerance.bounds`.

    Returns
    -------
    bool
    """
    if simulated is None or not np.isfinite(simulated):
        return False
    if isinstance(tolerance, PositiveTolerance):
        return simulated > 0.0
    low, high = tolerance.bounds(target, target_range, ci)
    return low <= simulated <= high
