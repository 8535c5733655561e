"""Analysis helpers of the calibration report: cohort preparation, estimators, analyses, tolerances.

The calibration report (``pipelines.calibration``) compares every published figure of DOMAIN.md
with the same statistic estimated on a simulated cohort. This module holds the pieces it is built
from, all pure (no I/O):

- :func:`build_patient_frame`: one row per infused patient with the derived covariates
  (``high_burden`` = marrow blasts >= 5% ...), the outcome columns and the per-patient summaries
  of the measurements (first observed loss of B-cell aplasia, NGS-MRD at the landmarks, PB/BM
  discordance) the analyses need.
- Analyses (frozen dataclasses with ``describe()`` and ``compute(data)``): crude shares,
  Kaplan-Meier, Aalen-Johansen, Cox (lifelines), time-varying Cox, landmark Cox.
- Tolerance rules (``bounds``, ``accepts``, ``describe``).

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
from dataclasses import dataclass, field
from typing import Optional

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
                        ground_truth: Optional[pd.DataFrame] = None) -> pd.DataFrame:
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


def _truncate(time: np.ndarray, event: np.ndarray, horizon_day: Optional[float]) -> tuple[np.ndarray, np.ndarray]:
    if horizon_day is None:
        return time, event
    return np.fmin(time, horizon_day), event & (time <= horizon_day)


# --- the analysed data ----------------------------------------------------------------------------
@dataclass(frozen=True)
class AnalysisResult:
    """An estimate with its sample: ``value`` (NaN = not estimable), patients, events, a note."""

    value: float
    n: int = 0
    events: Optional[int] = None
    note: str = ""


@dataclass
class CalibrationData:
    """The prepared cohort: the patient frame plus a cache of fitted models (by specification)."""

    patients: pd.DataFrame
    has_ground_truth: bool
    cache: dict = field(default_factory=dict)

    def select(self, population: str) -> pd.DataFrame:
        """Patients matching a pandas query expression (``"all"`` = everyone)."""
        return self.patients if population == "all" else self.patients.query(population, engine="python")


def _survival_frame(patients: pd.DataFrame, endpoint: str, horizon_day: Optional[float] = None) -> pd.DataFrame:
    time, event = _truncate(*endpoint_times(patients, endpoint), horizon_day)
    frame = pd.DataFrame({"time": time, "event": event}, index=patients.index)
    return frame[np.isfinite(frame["time"])]


# --- analyses ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Share:
    """Percentage of ``population`` meeting ``condition`` (a pandas expression); crude count share."""

    population: str
    condition: str
    needs_ground_truth = False

    def describe(self) -> str:
        return f"crude share: [{self.condition}] among [{self.population}]"

    def compute(self, data: CalibrationData) -> AnalysisResult:
        frame = data.select(self.population)
        hits = frame.eval(self.condition, engine="python").astype(float).dropna()
        if hits.empty:
            return AnalysisResult(math.nan, 0, note="empty population")
        return AnalysisResult(100.0 * float(hits.mean()), int(hits.size), note=f"{int(hits.sum())}/{hits.size}")


@dataclass(frozen=True)
class ShareDifference:
    """Share of ``condition`` in ``population`` minus its share in ``reference`` (points)."""

    population: str
    reference: str
    condition: str
    needs_ground_truth = False

    def describe(self) -> str:
        return f"difference of crude shares of [{self.condition}]: [{self.population}] minus [{self.reference}]"

    def compute(self, data: CalibrationData) -> AnalysisResult:
        first, second = (Share(p, self.condition).compute(data) for p in (self.population, self.reference))
        return AnalysisResult(first.value - second.value, first.n + second.n,
                              note=f"{first.value:.1f}% (n={first.n}) vs {second.value:.1f}% (n={second.n})")


@dataclass(frozen=True)
class KaplanMeierAt:
    """Kaplan-Meier event-free probability (``risk=False``) or 1 - it, in %, at ``day``."""

    endpoint: str
    population: str
    day: float
    risk: bool = False
    needs_ground_truth = False

    def describe(self) -> str:
        what = "1 - KM" if self.risk else "KM"
        return f"{what} of {self.endpoint} at day {self.day:g} among [{self.population}]"

    def compute(self, data: CalibrationData) -> AnalysisResult:
        frame = _survival_frame(data.select(self.population), self.endpoint)
        if frame.empty:
            return AnalysisResult(math.nan, 0, note="empty population")
        fitter = KaplanMeierFitter().fit(frame["time"], frame["event"])
        survival = float(fitter.survival_function_at_times(self.day).iloc[0])
        at_risk = int((frame["time"] > self.day).sum())
        value = 100.0 * (1.0 - survival if self.risk else survival)
        note = f"{at_risk} at risk at day {self.day:g}"
        return AnalysisResult(value, len(frame), int(frame["event"].sum()), note=note)


@dataclass(frozen=True)
class KaplanMeierMedian:
    """Kaplan-Meier median time (days) to ``endpoint``."""

    endpoint: str
    population: str
    needs_ground_truth = False

    def describe(self) -> str:
        return f"KM median time to {self.endpoint} among [{self.population}]"

    def compute(self, data: CalibrationData) -> AnalysisResult:
        frame = _survival_frame(data.select(self.population), self.endpoint)
        if frame.empty:
            return AnalysisResult(math.nan, 0, note="empty population")
        fitter = KaplanMeierFitter().fit(frame["time"], frame["event"])
        return AnalysisResult(float(fitter.median_survival_time_), len(frame), int(frame["event"].sum()))


@dataclass(frozen=True)
class AalenJohansenAt:
    """Aalen-Johansen cumulative incidence (%) of ``cause`` by ``day`` (minus that by ``from_day``).

    Competing first events: relapse, death, HSCT; no response is not an event (NR patients are
    followed like the others).
    """

    cause: str
    population: str
    day: float
    from_day: Optional[float] = None
    needs_ground_truth = False

    def describe(self) -> str:
        window = f"between day {self.from_day:g} and {self.day:g}" if self.from_day else f"by day {self.day:g}"
        return (f"Aalen-Johansen cumulative incidence of {self.cause} {window} among [{self.population}]"
                " (competing: relapse, death, HSCT)")

    def compute(self, data: CalibrationData) -> AnalysisResult:
        frame = data.select(self.population)
        codes = frame["first_event"].map(_COMPETING_CODES).fillna(0).astype(int).to_numpy()
        time = frame["end_day"].to_numpy(dtype=float)
        if time.size == 0:
            return AnalysisResult(math.nan, 0, note="empty population")
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
class LatentMedian:
    """Median of a ground-truth latent time (``inf`` = beyond the horizon) among ``population``."""

    column: str
    population: str
    needs_ground_truth = True

    def describe(self) -> str:
        return f"median of latent {self.column} (ground truth) among [{self.population}]"

    def compute(self, data: CalibrationData) -> AnalysisResult:
        values = data.select(self.population)[self.column].to_numpy(dtype=float)
        values = values[~np.isnan(values)]
        if values.size == 0:
            return AnalysisResult(math.nan, 0, note="no latent values")
        share_inf = float(np.mean(np.isinf(values)))
        return AnalysisResult(float(np.median(values)), int(values.size), note=f"{100 * share_inf:.1f}% never lost")


@dataclass(frozen=True)
class CoxHazardRatio:
    """Hazard ratio of ``covariate`` from a Cox model (lifelines CoxPHFitter, Efron ties).

    The model (endpoint, population, covariates, horizon) is fitted once and cached; rows with a
    missing covariate are left out (complete cases).
    """

    endpoint: str
    population: str
    covariates: tuple[str, ...]
    covariate: str
    horizon_day: Optional[float] = None
    needs_ground_truth = False

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
            data.cache[key] = _fit_cox(frame.join(design).dropna())
        return _hazard_ratio_result(data.cache[key], self.covariate)


def _fit_cox(frame: pd.DataFrame) -> dict:
    """Fit lifelines' CoxPHFitter and keep each covariate's HR and 95% CI.

    Constant covariates, and binary covariates without an event at one level (separation: the
    HR is infinite or zero), are left out of the model and reported as not estimable; lifelines'
    warnings are kept in the note.
    """
    fit = {"n": len(frame), "events": int(frame["event"].sum()), "hr": {}, "ci": {}, "note": "", "excluded": {}}
    for name in (c for c in frame.columns if c not in ("time", "event")):
        reason = _not_estimable_reason(frame, name)
        if reason:
            fit["excluded"][name] = reason
    covariates = [c for c in frame.columns if c not in ("time", "event") and c not in fit["excluded"]]
    if not covariates or fit["events"] == 0:
        fit["note"] = "no events" if fit["events"] == 0 else ""
        return fit
    model, warning_names = _damped_cox_fit(frame[covariates + ["time", "event"]])
    if model is None:
        fit["note"] = "did not converge"
        return fit
    ci = model.confidence_intervals_
    for name in covariates:
        fit["hr"][name] = float(model.hazard_ratios_[name])
        fit["ci"][name] = (math.exp(ci.loc[name].iloc[0]), math.exp(ci.loc[name].iloc[1]))
    fit["note"] = "; ".join(warning_names)
    return fit


def _damped_cox_fit(frame: pd.DataFrame) -> tuple[Optional[CoxPHFitter], list[str]]:
    """CoxPHFitter with damped Newton steps, trying smaller steps while it fails to converge.

    lifelines' default step (0.95) can diverge or stop at a wrong optimum (HR 1e-30 instead of
    30) with a ``ConvergenceWarning``; such a fit is rejected. Returns the model (None if every
    step size fails) and the names of the other warnings raised.
    """
    for step_size in COX_NEWTON_STEP_SIZES:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model = CoxPHFitter().fit(frame, "time", "event", fit_options={"step_size": step_size})
            except ConvergenceError:
                continue
        if not any(issubclass(w.category, ConvergenceWarning) for w in caught):
            return model, sorted({w.category.__name__ for w in caught})
    return None, []


def _not_estimable_reason(frame: pd.DataFrame, name: str) -> str:
    """Why a covariate's HR cannot be estimated ('' if it can): constant, or no event at a level."""
    if frame[name].nunique() < 2:
        return f"{name} does not vary"
    levels = frame.groupby(name)["event"].sum()
    if set(levels.index) <= {0.0, 1.0} and (levels == 0).any():
        return f"no event with {name} = {levels.index[levels == 0][0]:g} (separation: HR infinite or zero)"
    return ""


def _hazard_ratio_result(fit: dict, covariate: str) -> AnalysisResult:
    if covariate not in fit["hr"]:
        note = fit["excluded"].get(covariate) or fit["note"] or "model not fitted"
        return AnalysisResult(math.nan, fit["n"], fit["events"], note=f"not estimable: {note}")
    low, high = fit["ci"][covariate]
    note = f"95% CI {low:.2f}-{high:.2f}" + (f"; warnings: {fit['note']}" if fit["note"] else "")
    return AnalysisResult(fit["hr"][covariate], fit["n"], fit["events"], note=note)


def fit_counting_process_cox(start: np.ndarray, stop: np.ndarray, event: np.ndarray,
                             covariates: np.ndarray, max_iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Cox model on counting-process rows (start, stop], Breslow ties, by Newton-Raphson.

    The partial likelihood is that of lifelines' ``CoxTimeVaryingFitter`` (which uses Efron ties
    and is identical without tied event times) but vectorised: risk-set sums at each event time
    t are (sum of exp(x'b) over rows with stop >= t) - (same over rows with start >= t), from
    suffix sums over sorted stops and starts. ``CoxTimeVaryingFitter`` needs minutes for 20,000
    patients; this takes milliseconds.

    Parameters
    ----------
    start, stop : ndarray of float
        Interval of each row (start < stop).
    event : ndarray of bool
        Event at ``stop``.
    covariates : ndarray of float, shape (n_rows, n_covariates)
        Covariate values over the interval.
    max_iterations : int

    Returns
    -------
    (ndarray, ndarray)
        log hazard ratios and their standard errors.
    """
    x = np.asarray(covariates, dtype=float).reshape(len(stop), -1)
    beta = np.zeros(x.shape[1])
    times = np.unique(stop[event])
    deaths = np.bincount(np.searchsorted(times, stop[event]), minlength=times.size)
    x_events = x[event].sum(axis=0)
    previous = -np.inf
    for _ in range(max_iterations):
        loglik, gradient, information = _cox_terms(start, stop, x, beta, times, deaths, x_events)
        if loglik < previous:  # halve a step that overshot
            beta = (beta + last_beta) / 2.0
            continue
        step = np.linalg.solve(information, gradient)
        last_beta, previous = beta, loglik
        beta = beta + step
        if np.max(np.abs(step)) < 1e-9:
            break
    _, _, information = _cox_terms(start, stop, x, beta, times, deaths, x_events)
    return beta, np.sqrt(np.diag(np.linalg.inv(information)))


def _cox_terms(start, stop, x, beta, times, deaths, x_events):
    """Breslow log partial likelihood, its gradient and the observed information at ``beta``."""
    eta = x @ beta
    weight = np.exp(eta - eta.max())
    moments = [weight, weight[:, None] * x, weight[:, None, None] * x[:, :, None] * x[:, None, :]]
    at_risk = [_risk_set_sum(m, start, stop, times) for m in moments]
    s0, s1, s2 = at_risk[0], at_risk[1], at_risk[2]
    mean = s1 / s0[:, None]
    loglik = float(x_events @ beta - np.sum(deaths * (np.log(s0) + eta.max())))
    gradient = x_events - (deaths[:, None] * mean).sum(axis=0)
    covariance = s2 / s0[:, None, None] - mean[:, :, None] * mean[:, None, :]
    return loglik, gradient, (deaths[:, None, None] * covariance).sum(axis=0)


def _risk_set_sum(values: np.ndarray, start: np.ndarray, stop: np.ndarray, times: np.ndarray) -> np.ndarray:
    """For each time t: sum of ``values`` over rows with start < t <= stop."""
    def suffix_sum(keys: np.ndarray, side: str) -> np.ndarray:
        order = np.argsort(keys, kind="stable")
        cumulative = np.concatenate([np.cumsum(values[order][::-1], axis=0)[::-1], np.zeros((1,) + values.shape[1:])])
        return cumulative[np.searchsorted(keys[order], times, side=side)]

    return suffix_sum(stop, "left") - suffix_sum(start, "left")


@dataclass(frozen=True)
class TimeVaryingCoxHazardRatio:
    """HR of a 0 -> 1 time-varying covariate switching at ``switch_column`` (if <= ``switch_by_day``).

    Counting-process Cox (see :func:`fit_counting_process_cox`), time since infusion; a switch
    on the day of the event itself does not count (the covariate must precede the event).
    """

    endpoint: str
    population: str
    switch_column: str
    switch_by_day: float
    needs_ground_truth = False

    def describe(self) -> str:
        return (f"time-varying Cox (counting process), {self.endpoint} among [{self.population}]: HR after "
                f"{self.switch_column} (switch only if observed by day {self.switch_by_day:g}) vs before/never")

    def compute(self, data: CalibrationData) -> AnalysisResult:
        patients = data.select(self.population)
        frame = _survival_frame(patients, self.endpoint)
        switch = patients.loc[frame.index, self.switch_column].to_numpy(dtype=float)
        time, event = frame["time"].to_numpy(), frame["event"].to_numpy(dtype=bool)
        switches = np.isfinite(switch) & (switch <= self.switch_by_day) & (switch > 0) & (switch < time)
        start = np.concatenate([np.zeros(time.size), switch[switches]])
        stop = np.concatenate([np.where(switches, switch, time), time[switches]])
        status = np.concatenate([event & ~switches, event[switches]])
        exposed = np.concatenate([np.zeros(time.size), np.ones(int(switches.sum()))])
        if status.sum() == 0 or switches.sum() == 0:
            return AnalysisResult(math.nan, len(frame), int(event.sum()), note="not estimable: no events or no switch")
        log_hr, se = fit_counting_process_cox(start, stop, status, exposed[:, None])
        low, high = np.exp(log_hr[0] - 1.96 * se[0]), np.exp(log_hr[0] + 1.96 * se[0])
        note = f"95% CI {low:.2f}-{high:.2f}; {int(switches.sum())} switched"
        return AnalysisResult(float(np.exp(log_hr[0])), len(frame), int(event.sum()), note=note)


@dataclass(frozen=True)
class LandmarkCoxHazardRatio:
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
    needs_ground_truth = False

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
        return frame[frame["time"] > 0].dropna()


@dataclass(frozen=True)
class NotModeled:
    """A published figure the simulator cannot reproduce, with the reason."""

    reason: str
    needs_ground_truth = False

    def describe(self) -> str:
        return "not modeled"

    def compute(self, data: CalibrationData) -> AnalysisResult:
        return AnalysisResult(math.nan, note=self.reason)


# --- tolerance rules --------------------------------------------------------------------------------
def _range(target: float, target_range: Optional[tuple[float, float]]) -> tuple[float, float]:
    return target_range if target_range is not None else (target, target)


@dataclass(frozen=True)
class PointsTolerance:
    """Percentage within +-``points`` of the published value (or of the published range)."""

    points: float = 5.0

    def bounds(self, target, target_range=None, ci=None) -> tuple[float, float]:
        low, high = _range(target, target_range)
        return max(low - self.points, 0.0), min(high + self.points, 100.0)

    def describe(self, target, target_range=None, ci=None) -> str:
        low, high = self.bounds(target, target_range, ci)
        return f"+-{self.points:g} points ({low:.1f}-{high:.1f})"


@dataclass(frozen=True)
class RelativeTolerance:
    """Within +-``fraction`` of the published value (or range), relative."""

    fraction: float = 0.30

    def bounds(self, target, target_range=None, ci=None) -> tuple[float, float]:
        low, high = _range(target, target_range)
        return low * (1.0 - self.fraction), high * (1.0 + self.fraction)

    def describe(self, target, target_range=None, ci=None) -> str:
        low, high = self.bounds(target, target_range, ci)
        return f"+-{100 * self.fraction:g}% ({low:.3g}-{high:.3g})"


@dataclass(frozen=True)
class HazardRatioTolerance:
    """Hazard ratio inside the published 95% CI, or within +-``fraction`` of the published HR."""

    fraction: float = 0.30

    def bounds(self, target, target_range=None, ci=None) -> tuple[float, float]:
        low, high = target * (1.0 - self.fraction), target * (1.0 + self.fraction)
        if ci is not None:
            low, high = min(low, ci[0]), max(high, ci[1])
        return low, high

    def describe(self, target, target_range=None, ci=None) -> str:
        low, high = self.bounds(target, target_range, ci)
        rule = "in 95% CI or +-30%" if ci is not None else "+-30%"
        return f"{rule} ({low:.2f}-{high:.2f})"


@dataclass(frozen=True)
class IntervalTolerance:
    """Within a fixed interval (e.g. 'no effect': HR 0.77-1.3)."""

    low: float
    high: float

    def bounds(self, target, target_range=None, ci=None) -> tuple[float, float]:
        return self.low, self.high

    def describe(self, target, target_range=None, ci=None) -> str:
        return f"within {self.low:g}-{self.high:g}"


@dataclass(frozen=True)
class PositiveTolerance:
    """Strictly above zero (the phenomenon occurs)."""

    def bounds(self, target, target_range=None, ci=None) -> tuple[float, float]:
        return 0.0, math.inf

    def describe(self, target, target_range=None, ci=None) -> str:
        return "> 0"


def accepts(tolerance, simulated: float, target: float, target_range=None, ci=None) -> bool:
    """Whether ``simulated`` satisfies ``tolerance`` (NaN never does; ``> 0`` is strict)."""
    if simulated is None or not np.isfinite(simulated):
        return False
    low, high = tolerance.bounds(target, target_range, ci)
    if isinstance(tolerance, PositiveTolerance):
        return simulated > 0.0
    return low <= simulated <= high
