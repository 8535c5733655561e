"""Calibration report: published figures vs the same statistics on a simulated cohort.

``TARGETS`` declares every published figure the simulator is held to: its source cohort,
the statistic, the published value (and 95% CI or range when known), the analysis that estimates
it (``pipelines.calibration_targets``) and the tolerance rule. Figures the simulator cannot
produce are kept as ``NotModeled`` rows with the reason.

- :func:`compute_calibration` is pure: tables in, one row per target out. It runs on any cohort in
  the data contract; rows needing the ground truth are marked when none is given.
- :func:`run_calibration` simulates, computes, writes ``docs/calibration.md`` (plus a figure
  under ``docs/figures/``) and prints the table.

Tolerance rules: a hazard ratio inside its published 95% CI or within +-30%; a percentage within
+-5 points of the published value or range (figures below 10% within +-50%, since 5 points would
exceed the figure); a median within +-30%; "no effect" as a hazard ratio within 0.77-1.3.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from features.contract import validate_cohort
from features.longitudinal import BCA_RECOVERY_CELLS_PER_UL, BCA_RECOVERY_PCT_LYMPHOCYTES
from pipelines.calibration_targets import (
    HIGH_BURDEN_BLASTS_PCT,
    LOW_CD19_ANTIGEN_LOAD_PCT,
    LOW_FLUDARABINE_AUC,
    NGS_LANDMARKS,
    AalenJohansenAt,
    Analysis,
    CalibrationData,
    CoxHazardRatio,
    HazardRatioTolerance,
    IntervalTolerance,
    KaplanMeierAt,
    KaplanMeierMedian,
    LandmarkCoxHazardRatio,
    LatentMedian,
    NotModeled,
    PointsTolerance,
    PositiveTolerance,
    RelativeTolerance,
    Share,
    ShareDifference,
    TimeVaryingCoxHazardRatio,
    Tolerance,
    accepts,
    build_outcome_frame,
    build_patient_frame,
    endpoint_times,
)

__all__ = [
    "CalibrationTarget",
    "TARGETS",
    "RESULT_COLUMNS",
    "compute_calibration",
    "calibration_misses",
    "quarantine_summary",
    "render_markdown",
    "efs_by_burden_figure",
    "run_calibration",
]

DAYS_6_MONTHS = 182.6
DAYS_12_MONTHS = 365.25
DAYS_24_MONTHS = 730.5
DAYS_36_MONTHS = 1095.75

Statistic = Literal["hazard_ratio", "percentage", "median_days", "count_share", "difference_points"]


@dataclass(frozen=True)
class CalibrationTarget:
    """One published figure and how the simulated cohort is checked against it.

    Parameters
    ----------
    id : str
        Stable identifier (used in tests and by the simulator's tuning).
    description : str
        The published statement, short.
    source : str
        Source cohort (CAR-MA, PRWCC, ELIANA/ENSIGN, PLAT-02, registry).
    statistic : str
        hazard_ratio, percentage, median_days, count_share or difference_points.
    target : float
        Published value (for a published range, its midpoint; see ``target_range``).
    analysis : Analysis
        How the figure is estimated on the cohort (carries the definition of the endpoint).
    tolerance : Tolerance
        The acceptance rule.
    target_range : tuple of float, optional
        Published range (low, high) when the figure is a range.
    ci95 : tuple of float, optional
        Published 95% confidence interval, when known.
    """

    id: str
    description: str
    source: str
    statistic: Statistic
    target: float
    analysis: Analysis
    tolerance: Tolerance
    target_range: tuple[float, float] | None = None
    ci95: tuple[float, float] | None = None

    @property
    def modeled(self) -> bool:
        """False when the simulator cannot produce this figure."""
        return not isinstance(self.analysis, NotModeled)


# --- shared definitions ----------------------------------------------------------------------------------
RESPONDERS = "responder"
BCA_LOST_BY_6_MONTHS = f"bca_loss_day <= {DAYS_6_MONTHS}"
CARMA_EFS_COVARIATES = ("high_burden", "blinatumomab_nonresponder", "blinatumomab_responder", "active_non_cns_emd",
                        "kmt2a_rearranged")
CARMA_RELAPSE_COVARIATES = CARMA_EFS_COVARIATES + ("prior_crs_ge2",)
NO_EFFECT_COVARIATES = CARMA_RELAPSE_COVARIATES + ("age_ge_18", "male", "down_syndrome", "prior_hsct", "ph_positive",
                                                   "hypodiploid")
HR = HazardRatioTolerance(0.30)
POINTS = PointsTolerance(5.0)
SMALL_PERCENT = RelativeTolerance(0.50)
MEDIAN = RelativeTolerance(0.30)
NO_EFFECT = IntervalTolerance(0.77, 1.3)
OS_NOT_MODELED = ("outcomes record only the first event (relapse, death, HSCT) and the simulator has no course "
                  "after it, so overall survival (deaths after relapse, NR or HSCT) does not exist in the cohort")


def _efs_hr(target_id: str, covariate: str, description: str, target: float,
            tolerance: Tolerance = HR) -> CalibrationTarget:
    analysis = CoxHazardRatio("efs", "all", CARMA_EFS_COVARIATES, covariate)
    return CalibrationTarget(target_id, description, "CAR-MA", "hazard_ratio", target, analysis, tolerance)


def _relapse_hr(target_id: str, endpoint: str, covariate: str, description: str, target: float,
                covariates: tuple[str, ...] = CARMA_RELAPSE_COVARIATES, tolerance: Tolerance = HR,
                source: str = "CAR-MA") -> CalibrationTarget:
    analysis = CoxHazardRatio(endpoint, RESPONDERS, covariates, covariate)
    return CalibrationTarget(target_id, description, source, "hazard_ratio", target, analysis, tolerance)


def _no_effect(target_id: str, covariate: str, label: str) -> CalibrationTarget:
    return _relapse_hr(target_id, "relapse", covariate, f"{label}: no clear effect on relapse", 1.0,
                       NO_EFFECT_COVARIATES, NO_EFFECT, "CAR-MA / DOMAIN")


def _share(target_id: str, description: str, source: str, target: float, population: str, condition: str,
           tolerance: Tolerance = POINTS, target_range: tuple[float, float] | None = None,
           statistic: Statistic = "percentage") -> CalibrationTarget:
    return CalibrationTarget(target_id, description, source, statistic, target, Share(population, condition),
                             tolerance, target_range)


def _km(target_id: str, description: str, source: str, target: float, endpoint: str, population: str, day: float,
        ci95: tuple[float, float] | None = None, risk: bool = False) -> CalibrationTarget:
    return CalibrationTarget(target_id, description, source, "percentage", target,
                             KaplanMeierAt(endpoint, population, day, risk), POINTS, ci95=ci95)


def _not_modeled(target_id: str, description: str, source: str, statistic: Statistic, target: float,
                 reason: str) -> CalibrationTarget:
    return CalibrationTarget(target_id, description, source, statistic, target, NotModeled(reason), POINTS)


def _overall_targets() -> list[CalibrationTarget]:
    return [
        _share("cr_cri_rate", "CR/CRi among infused: 81% (ELIANA), 85-88% (real-world)", "ELIANA / real-world",
               84.5, "all", "responder", target_range=(81.0, 88.0)),
        _km("efs_6m", "EFS at 6 months 73%", "ELIANA", 73.0, "efs", "all", DAYS_6_MONTHS),
        _km("efs_12m", "EFS at 12 months 50%", "ELIANA", 50.0, "efs", "all", DAYS_12_MONTHS),
        _not_modeled("os_6m", "OS at 6 months 90%", "ELIANA", "percentage", 90.0, OS_NOT_MODELED),
        _not_modeled("os_12m", "OS at 12 months 76%", "ELIANA", "percentage", 76.0, OS_NOT_MODELED),
        _share("relapse_share_treated", "166 relapses among 420 treated (39.5%)", "CAR-MA", 39.5, "all",
               "first_event == 'relapse'", statistic="count_share"),
        _km("relapse_responders_36m", "about half of responders relapse (ELIANA 3-year RFS 52% censoring at "
            "subsequent therapy)", "ELIANA", 50.0, "relapse", RESPONDERS, DAYS_36_MONTHS, risk=True),
    ]


def _phenotype_targets() -> list[CalibrationTarget]:
    relapsed = "first_event == 'relapse'"
    return [
        _share("relapse_mix_cd19_pos", "CD19-positive share of relapses 50%", "CAR-MA", 50.0, relapsed,
               "relapse_phenotype == 'CD19_pos'", statistic="count_share"),
        _share("relapse_mix_cd19_neg", "CD19-negative share of relapses 41%", "CAR-MA", 41.0, relapsed,
               "relapse_phenotype == 'CD19_neg'", statistic="count_share"),
        _share("relapse_mix_lineage_switch", "lineage-switch share of relapses 7%", "CAR-MA", 7.0, relapsed,
               "relapse_phenotype == 'lineage_switch'", SMALL_PERCENT, statistic="count_share"),
        CalibrationTarget(
            "cd19_pos_dominates_short_persistence",
            "CD19-positive relapse dominates where CAR persistence is short (CD28 vs 4-1BB constructs)",
            "DOMAIN (series comparison)", "difference_points", 0.0,
            ShareDifference(f"{relapsed} and costim_cd28 == 1", f"{relapsed} and costim_cd28 == 0",
                            "relapse_phenotype == 'CD19_pos'"),
            PositiveTolerance()),
        _not_modeled("cd19_neg_share_series", "CD19-negative relapse: a quarter of events in some series, most "
                     "relapses in ELIANA", "several series", "count_share", math.nan,
                     "a between-series spread, not one figure; the simulator is calibrated to the CAR-MA mix"),
        _not_modeled("os_after_relapse_by_phenotype", "median OS after relapse: CD19+ 18.9, CD19- 9.7, lineage "
                     "switch 3.7 months", "CAR-MA", "median_days", 18.9 * 30.44, OS_NOT_MODELED),
    ]


def _persistence_targets() -> list[CalibrationTarget]:
    responders_tested = f"{RESPONDERS} and bca_first_test_aplastic == bca_first_test_aplastic"
    return [
        CalibrationTarget("car_persistence_median_latent", "CAR persistence median 168 days among responders "
                          "(range 20-617)", "ELIANA", "median_days", 168.0,
                          LatentMedian("car_persistence_day", RESPONDERS), MEDIAN),
        CalibrationTarget("bca_duration_median_observed", "median duration of B-cell aplasia ~168 days among "
                          "responders (observed loss of BCA)", "ELIANA", "median_days", 168.0,
                          KaplanMeierMedian("bca_loss", RESPONDERS), MEDIAN),
        _share("bca_at_first_test", "all responders were B-cell aplastic at first", "ELIANA", 100.0,
               responders_tested, "bca_first_test_aplastic == 1"),
    ]


def _baseline_targets() -> list[CalibrationTarget]:
    return [
        _share("blasts_above_0_below_5", "about 20% have >0 to <5% marrow blasts before infusion", "registry (N=768)",
               20.0, "bm_blasts_pct == bm_blasts_pct", "blasts_above_0_below_5 == 1"),
        _share("blasts_ge_50", "12% (children) to 18% (young adults) have >=50% marrow blasts", "registry (N=768)",
               15.0, "bm_blasts_pct == bm_blasts_pct", "blasts_ge_50 == 1", target_range=(12.0, 18.0)),
    ]


def _competing_event_targets() -> list[CalibrationTarget]:
    return [
        CalibrationTarget("death_early", "early (treatment-related) death 1-3% (by day 30, all infused)",
                          "DOMAIN / ELIANA-ENSIGN", "percentage", 2.0, AalenJohansenAt("death", "all", 30.0),
                          SMALL_PERCENT, target_range=(1.0, 3.0)),
        CalibrationTarget("death_in_remission_late", "later death in remission, a few % (day 30 to 24 months, "
                          "responders; 'a few' read as 1-5%)", "DOMAIN", "percentage", 3.0,
                          AalenJohansenAt("death", RESPONDERS, DAYS_24_MONTHS, from_day=30.0), SMALL_PERCENT,
                          target_range=(1.0, 5.0)),
        _share("hsct_in_remission", "consolidative HSCT in remission 10-25% of responders (center policy)",
               "DOMAIN (several centers)", 17.5, RESPONDERS, "first_event == 'hsct'", target_range=(10.0, 25.0)),
    ]


def _burden_targets() -> list[CalibrationTarget]:
    return [
        _efs_hr("efs_hr_high_burden", "high_burden", "BM blasts >=5%: EFS HR 2.5 (multivariable)", 2.5),
        _km("efs_12m_low_burden", "12-month EFS 70% with BM blasts <5%", "PRWCC", 70.0, "efs", "high_burden == 0",
            DAYS_12_MONTHS),
        _km("efs_12m_high_burden", "12-month EFS 31% with BM blasts >=5%", "PRWCC", 31.0, "efs", "high_burden == 1",
            DAYS_12_MONTHS),
        _not_modeled("os_12m_by_burden", "12-month OS 58% vs 85% by burden", "PRWCC", "percentage", 58.0,
                     OS_NOT_MODELED),
        _relapse_hr("cd19_neg_hr_high_burden", "relapse_CD19_neg", "high_burden",
                    "high burden drives CD19-negative relapse: cause-specific HR 5.2", 5.2),
    ]


def _blinatumomab_targets() -> list[CalibrationTarget]:
    groups = (("nonresponder", 65.0, 27.0), ("responder", 93.0, 67.0), ("naive", 94.0, 73.0))
    targets = []
    for status, cr, efs in groups:
        population = f"blinatumomab_{status} == 1"
        targets.append(_share(f"cr_blinatumomab_{status}", f"CR {cr:g}% after blinatumomab {status}", "CAR-MA", cr,
                              population, "responder"))
        targets.append(_km(f"efs_6m_blinatumomab_{status}", f"6-month EFS {efs:g}% after blinatumomab {status}",
                           "CAR-MA", efs, "efs", population, DAYS_6_MONTHS))
    targets.append(_efs_hr("efs_hr_blinatumomab_exposure", "blinatumomab_responder",
                           "blinatumomab exposure alone (responder vs naive): no effect on EFS", 1.0, NO_EFFECT))
    return targets


def _extramedullary_targets() -> list[CalibrationTarget]:
    isolated = "isolated_cns == 1"
    relapsed = "first_event == 'relapse'"
    extramedullary = "relapse_site in ('extramedullary', 'combined')"
    return [
        _efs_hr("efs_hr_active_non_cns_emd", "active_non_cns_emd", "active non-CNS EMD at infusion: EFS HR 1.9", 1.9),
        _not_modeled("prior_emd_no_effect", "prior EM or CNS disease: no effect", "CAR-MA", "hazard_ratio", 1.0,
                     "the data contract records CNS status and active EMD at infusion, not prior EM/CNS disease"),
        _share("cr_active_non_cns_emd", "active non-CNS extramedullary disease at infusion: CR/CRi 66%", "PRWCC",
               66.0, "active_non_cns_emd == 1", "responder"),
        _share("cr_cns3", "CNS3 at infusion: CR/CRi 88%", "PRWCC", 88.0, "cns3 == 1", "responder"),
        _share("cr_isolated_cns", "isolated CNS disease (CNS2/3, BM blasts <5%, no other EMD): CR 96-98%",
               "single-center series", 97.0, isolated, "responder", target_range=(96.0, 98.0)),
        _share("relapse_isolated_cns", "isolated CNS disease: about a third relapse afterwards",
               "single-center series", 33.3, f"{isolated} and {RESPONDERS}", relapsed),
        CalibrationTarget("em_relapse_isolated_cns", "isolated CNS disease: relapses often in the CNS (EM or combined "
                          "site more often than after other presentations)", "single-center series",
                          "difference_points", 0.0,
                          ShareDifference(f"{isolated} and {relapsed}", f"isolated_cns == 0 and {relapsed}",
                                          extramedullary), PositiveTolerance()),
    ]


def _antigen_and_lymphodepletion_targets() -> list[CalibrationTarget]:
    early_bca = CoxHazardRatio("bca_loss", RESPONDERS, ("low_cd19_antigen_load", "costim_cd28"),
                               "low_cd19_antigen_load", horizon_day=DAYS_6_MONTHS)
    with_auc = f"{RESPONDERS} and low_fludarabine_auc == low_fludarabine_auc"
    flu = ("low_fludarabine_auc", "high_burden")
    return [
        _relapse_hr("cd19_pos_hr_prior_crs_ge2", "relapse_CD19_pos", "prior_crs_ge2",
                    ">=2 prior CRs: CD19-positive relapse HR 1.3", 1.3),
        _not_modeled("os_hr_prior_lines", "OS HR 1.4 per prior therapy line", "PRWCC", "hazard_ratio", 1.4,
                     OS_NOT_MODELED),
        CalibrationTarget("bca_loss_early_hr_low_antigen", "CD19 antigen load <15%: early loss of BCA (by 6 months) "
                          "HR 3.0", "PLAT-02", "hazard_ratio", 3.0, early_bca, HR),
        CalibrationTarget("relapse_hr_low_fludarabine_auc", "fludarabine AUC <13.8 mg*h/L: relapse HR 2.5 "
                          "(2.45, multivariable with burden)", "PRWCC", "hazard_ratio", 2.5,
                          CoxHazardRatio("relapse", with_auc, flu, "low_fludarabine_auc"), HR, ci95=(1.34, 4.48)),
        CalibrationTarget("relapse_or_bca_loss_hr_low_fludarabine_auc", "fludarabine AUC <13.8 mg*h/L: "
                          "relapse-or-BCA-loss HR 2.0 (1.96)", "PRWCC", "hazard_ratio", 2.0,
                          CoxHazardRatio("relapse_or_bca_loss", with_auc, flu, "low_fludarabine_auc"), HR,
                          ci95=(1.19, 3.23)),
    ]


def _surveillance_targets() -> list[CalibrationTarget]:
    return [
        CalibrationTarget("relapse_hr_bca_loss_1y", "loss of BCA within 1 year: relapse HR 4.5", "ELIANA/ENSIGN",
                          "hazard_ratio", 4.5,
                          TimeVaryingCoxHazardRatio("relapse", RESPONDERS, "bca_loss_day", DAYS_12_MONTHS), HR,
                          ci95=(2.03, 9.97)),
        _km("efs_24m_bca_loss_6m", "loss of B-cell aplasia within 6 months: 24-month EFS 14%", "ELIANA/ENSIGN", 14.0,
            "efs", f"{RESPONDERS} and {BCA_LOST_BY_6_MONTHS}", DAYS_24_MONTHS),
        CalibrationTarget("relapse_hr_ngs_d28", "detectable BM NGS-MRD at day 28: relapse HR 4.9 (4.87, with "
                          "B-cell recovery in the model)", "ELIANA/ENSIGN", "hazard_ratio", 4.9,
                          LandmarkCoxHazardRatio("relapse", "ngs_bm_detectable_d28", NGS_LANDMARKS["d28"][1], True), HR,
                          ci95=(2.18, 10.8)),
        CalibrationTarget("relapse_hr_ngs_m3", "detectable BM NGS-MRD at month 3: relapse HR 12 (with B-cell "
                          "recovery in the model)", "ELIANA/ENSIGN", "hazard_ratio", 12.0,
                          LandmarkCoxHazardRatio("relapse", "ngs_bm_detectable_m3", NGS_LANDMARKS["m3"][1], True), HR,
                          ci95=(2.87, 50.0)),
        _share("pb_mrd_pos_bm_negative", "PB MRD positive while BM MRD <0.01% occurs (patients with such a visit, "
               "among patients with paired PB/BM flow MRD)", "DOMAIN", 0.0,
               "pb_pos_bm_below_0_01pct == pb_pos_bm_below_0_01pct", "pb_pos_bm_below_0_01pct == 1",
               PositiveTolerance()),
    ]


def _kmt2a_and_no_effect_targets() -> list[CalibrationTarget]:
    return [
        _relapse_hr("lineage_switch_hr_kmt2a", "relapse_lineage_switch", "kmt2a_rearranged",
                    "KMT2A rearrangement: lineage-switch HR ~32", 32.0),
        _no_effect("relapse_hr_kmt2a", "kmt2a_rearranged", "KMT2A rearrangement (similar overall relapse risk)"),
        _not_modeled("os_kmt2a", "KMT2A: worse OS", "CAR-MA", "hazard_ratio", math.nan, OS_NOT_MODELED),
        _no_effect("relapse_hr_age_ge_18", "age_ge_18", "age >=18 years"),
        _no_effect("relapse_hr_male", "male", "sex (male)"),
        _no_effect("relapse_hr_down_syndrome", "down_syndrome", "Down syndrome"),
        _no_effect("relapse_hr_prior_hsct", "prior_hsct", "prior HSCT"),
        _no_effect("relapse_hr_ph_positive", "ph_positive", "cytogenetics: Ph-positive"),
        _no_effect("relapse_hr_hypodiploid", "hypodiploid", "cytogenetics: hypodiploid"),
    ]


TARGETS: tuple[CalibrationTarget, ...] = tuple(
    _overall_targets() + _phenotype_targets() + _persistence_targets() + _baseline_targets()
    + _competing_event_targets() + _burden_targets() + _blinatumomab_targets() + _extramedullary_targets()
    + _antigen_and_lymphodepletion_targets() + _surveillance_targets() + _kmt2a_and_no_effect_targets()
)

RESULT_COLUMNS = ("id", "description", "source", "statistic", "analysis", "target", "target_low", "target_high",
                  "ci95_low", "ci95_high", "simulated", "tolerance", "tolerance_low", "tolerance_high",
                  "within_tolerance", "status", "n", "events", "note")


# --- computation -----------------------------------------------------------------------------------------
def compute_calibration(infusions: pd.DataFrame, measurements: pd.DataFrame, outcomes: pd.DataFrame,
                        ground_truth: pd.DataFrame | None = None,
                        targets: tuple[CalibrationTarget, ...] = TARGETS,
                        progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Estimate every target's statistic on a cohort and check it against its tolerance (pure).

    The tables go through ``features.contract.validate_cohort`` in quarantine mode: rows that
    violate the contract are left out and counted in ``results.attrs["data_report"]`` (a dict;
    see :func:`quarantine_summary`), so a calibration on a partly invalid cohort is visible.

    Parameters
    ----------
    infusions, measurements, outcomes : DataFrame
        A cohort in the data contract (raw, as read from its folder).
    ground_truth : DataFrame, optional
        Simulated latent truth; without it, rows that need it get status ``no ground truth``.
    targets : tuple of CalibrationTarget
        Defaults to :data:`TARGETS`.
    progress : callable, optional
        Called with each target id before it is computed (for a progress bar).

    Returns
    -------
    DataFrame
        One row per target, columns :data:`RESULT_COLUMNS`. ``status`` is ``pass``, ``miss``
        (also when not estimable), ``not modeled`` or ``no ground truth``; ``within_tolerance``
        is True only for ``pass``.
    """
    cohort = validate_cohort(infusions, measurements, outcomes, on_error="quarantine")
    patients = build_patient_frame(cohort.infusions, cohort.outcomes, cohort.measurements, ground_truth)
    data = CalibrationData(patients, has_ground_truth=ground_truth is not None)
    rows = []
    for target in targets:
        if progress is not None:
            progress(target.id)
        rows.append(_evaluate(target, data))
    results = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    results.attrs["data_report"] = cohort.report.to_dict()
    return results


def quarantine_summary(results: pd.DataFrame) -> str:
    """One line on what the data contract left out of the calibration (from ``results.attrs``)."""
    report = results.attrs.get("data_report")
    if report is None:
        return "data contract: no report"
    rows = ", ".join(f"{name} {table['rows_quarantined']} of {table['rows_in']}"
                     for name, table in report["tables"].items())
    return (f"data contract: {report['patients_out']} of {report['patients_in']} patients analysed; "
            f"rows quarantined: {rows}")


def _evaluate(target: CalibrationTarget, data: CalibrationData) -> dict:
    low, high = target.target_range or (target.target, target.target)
    ci_low, ci_high = target.ci95 or (math.nan, math.nan)
    tol_low, tol_high = target.tolerance.bounds(target.target, target.target_range, target.ci95)
    tolerance = target.tolerance.describe(target.target, target.target_range, target.ci95)
    if not target.modeled:
        tol_low, tol_high, tolerance = math.nan, math.nan, "-"
    row = {"id": target.id, "description": target.description, "source": target.source,
           "statistic": target.statistic, "analysis": target.analysis.describe(), "target": target.target,
           "target_low": low, "target_high": high, "ci95_low": ci_low, "ci95_high": ci_high,
           "tolerance": tolerance, "tolerance_low": tol_low, "tolerance_high": tol_high}
    if not target.modeled:
        return {**row, "simulated": math.nan, "within_tolerance": False, "status": "not modeled", "n": 0,
                "events": None, "note": getattr(target.analysis, "reason", "")}
    if target.analysis.needs_ground_truth and not data.has_ground_truth:
        return {**row, "simulated": math.nan, "within_tolerance": False, "status": "no ground truth", "n": 0,
                "events": None, "note": "needs the simulated ground truth"}
    result = target.analysis.compute(data)
    within = accepts(target.tolerance, result.value, target.target, target.target_range, target.ci95)
    return {**row, "simulated": result.value, "within_tolerance": within, "status": "pass" if within else "miss",
            "n": result.n, "events": result.events, "note": result.note}


def calibration_misses(results: pd.DataFrame) -> pd.DataFrame:
    """The modeled targets outside their tolerance: id, target, simulated, tolerance, note."""
    return results.loc[results["status"] == "miss", ["id", "target", "simulated", "tolerance", "note"]]


# --- report ----------------------------------------------------------------------------------------------
def _format_value(value: float, statistic: str) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    if statistic == "hazard_ratio":
        return f"{value:.2f}"
    if statistic == "median_days":
        return f"{value:.0f} d"
    return f"{value:.1f}"


def _format_target(row: pd.Series) -> str:
    if not np.isfinite(row["target"]):
        return "-"
    if row["tolerance_high"] == math.inf:
        return "> 0"
    if row["target_low"] != row["target_high"]:
        low, high = (_format_value(row[key], row["statistic"]) for key in ("target_low", "target_high"))
        text = f"{low}-{high}"
    else:
        text = _format_value(row["target"], row["statistic"])
    if np.isfinite(row["ci95_low"]):
        text += f" (95% CI {row['ci95_low']:g}-{row['ci95_high']:g})"
    return text


_STATUS_MARK = {"pass": "PASS", "miss": "**MISS**", "not modeled": "not modeled", "no ground truth": "no ground truth"}


def _markdown_table(results: pd.DataFrame) -> list[str]:
    lines = ["| id | published figure | source | target | simulated | tolerance | result | analysis | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, row in results.iterrows():
        cells = [row["id"], row["description"], row["source"], _format_target(row),
                 _format_value(row["simulated"], row["statistic"]), row["tolerance"], _STATUS_MARK[row["status"]],
                 row["analysis"], _note_with_sample(row)]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return lines


def _note_with_sample(row: pd.Series) -> str:
    sample = f"n={int(row['n'])}" if row["n"] else ""
    if row["events"] is not None and np.isfinite(row["events"]):
        sample += f", events={int(row['events'])}"
    return "; ".join(part for part in (sample, row["note"]) if part)


def _definitions() -> str:
    """The definitions section of the report, from the thresholds the analyses use."""
    (d28_first, d28_last), (m3_first, m3_last) = NGS_LANDMARKS["d28"], NGS_LANDMARKS["m3"]
    return f"""## Definitions

- Time origin: CAR infusion (day 0). Responders: response CR or CRi at the day-28 assessment.
- **EFS** (ELIANA style): events = no response (at day 0), relapse, death; consolidative HSCT censors
  (the CAR-only course is not observed after it); otherwise censored at last follow-up.
- **Relapse** (cause-specific, among responders): the relapse (of the named phenotype) is the event;
  death, HSCT and relapses of another phenotype censor.
- **Loss of B-cell aplasia (BCA)**: first post-infusion PB B-cell result >= {BCA_RECOVERY_PCT_LYMPHOCYTES:g}% of
  lymphocytes or >= {BCA_RECOVERY_CELLS_PER_UL:g} cells/uL (`features.longitudinal` thresholds); its day is the
  visit where it is first seen (interval-censored in truth). In the time-varying Cox model the covariate
  switches on at that day if it is within 1 year; a loss first seen on the day of the relapse does not count.
- **Detectable NGS-MRD**: any BM NGS result above the detection limit, including "detected, below
  quantitation". Landmark analyses use the results of days {d28_first:g}-{d28_last:g} (landmark day {d28_last:g})
  and {m3_first:g}-{m3_last:g} (landmark day {m3_last:g}), among responders event-free and followed at the
  landmark; time runs from it. As in the ELIANA/ENSIGN multivariable analysis, the model also holds loss
  of BCA by the landmark (left out, and said in the note, when nobody has an observed loss by then).
- **High burden**: marrow blasts >= {HIGH_BURDEN_BLASTS_PCT:g}% before lymphodepletion. Multivariable EFS model
  (CAR-MA): {", ".join(CARMA_EFS_COVARIATES)}. Cause-specific relapse models add prior_crs_ge2; the "no
  effect" model adds age_ge_18, male, down_syndrome, prior_hsct, ph_positive, hypodiploid.
- **Loss of BCA within 6 months** (ELIANA/ENSIGN EFS figure): responders whose first recovered B-cell
  result is on or before day {DAYS_6_MONTHS:g}; their EFS is counted from infusion.
- **CR/CRi by extramedullary disease** (PRWCC): among patients with active non-CNS EMD at infusion, and
  among CNS3 patients, whatever their marrow burden.
- **Low antigen load / fludarabine exposure**: CD19 antigen load < {LOW_CD19_ANTIGEN_LOAD_PCT:g}% of BM cells;
  fludarabine AUC < {LOW_FLUDARABINE_AUC:g} mg*h/L (patients without an AUC are left out of those models).
- **Cumulative incidences** (death, HSCT) by Aalen-Johansen with relapse, death and HSCT as
  competing first events.
- Cox models: lifelines CoxPHFitter (Efron ties, damped Newton steps), complete cases. A fit lifelines
  flags with a ConvergenceWarning (or ConvergenceError) is rejected and refitted with a smaller step.
  The time-varying model uses a vectorised counting-process Cox (Breslow ties; equal to lifelines'
  CoxTimeVaryingFitter without ties, which needs minutes at this size). Every rejected fit, covariate
  left out of a model (constant, or no event at one level) and row left out (missing covariate, empty
  interval) is counted in the row's note.
"""


def render_markdown(results: pd.DataFrame, n_patients: int, seed: int, command: str,
                    figures: tuple[str, ...] = ()) -> str:
    """The calibration report as markdown (date-free, so it is reproducible).

    Parameters
    ----------
    results : DataFrame
        From :func:`compute_calibration`.
    n_patients, seed : int
        Simulation size and seed.
    command : str
        The command that regenerates the report.
    figures : tuple of str
        Relative paths of figures to embed.

    Returns
    -------
    str
    """
    counts = results["status"].value_counts()
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("pass", "miss", "not modeled", "no ground truth"))
    lines = ["# Calibration report", "",
             "Generated file; do not edit. Published figures (source cohort in the `source` column; 'DOMAIN' marks "
             "consensus figures of the clinical literature without a single cohort) vs the same statistics on the "
             "simulated cohort.", "",
             f"Regenerate with `{command}` (N = {n_patients} patients, seed = {seed}).", "",
             f"**Summary:** {summary} (of {len(results)} figures); {quarantine_summary(results)}.", "",
             "Tolerance: HR inside its published 95% CI or within +-30%; percentages within +-5 points of the "
             "published value or range (figures below 10%: within +-50%); medians within +-30%; 'no effect' as "
             "HR 0.77-1.3.", ""]
    lines += _markdown_table(results)
    lines += ["", _definitions()]
    for path in figures:
        lines += [f"![{Path(path).stem}]({path})", ""]
    return "\n".join(lines).rstrip() + "\n"


def efs_by_burden_figure(infusions: pd.DataFrame, outcomes: pd.DataFrame, path: Path) -> None:
    """Kaplan-Meier EFS by marrow burden with the published points (PRWCC, ELIANA), saved as PNG.

    Parameters
    ----------
    infusions, outcomes : DataFrame
        A cohort's tables in the data contract.
    path : Path
        PNG file to write (its folder is created); no date in the metadata, so it is reproducible.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lifelines import KaplanMeierFitter

    patients = build_outcome_frame(infusions, outcomes)
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    for label, mask, colour in (("BM blasts <5%", patients["high_burden"] == 0, "tab:blue"),
                                ("BM blasts >=5%", patients["high_burden"] == 1, "tab:red"),
                                ("all", patients["high_burden"].notna(), "black")):
        time, event = endpoint_times(patients[mask], "efs")
        KaplanMeierFitter(label=f"simulated, {label}").fit(time / 30.44, event).plot_survival_function(
            ax=axes, ci_show=False, color=colour)
    axes.scatter([12, 12], [0.70, 0.31], marker="D", color=["tab:blue", "tab:red"], zorder=5,
                 label="published 12-mo EFS by burden (PRWCC)")
    axes.scatter([6, 12], [0.73, 0.50], marker="s", color="black", zorder=5, label="published EFS (ELIANA)")
    axes.set(xlim=(0, 24), ylim=(0, 1), xlabel="months since infusion", ylabel="event-free survival",
             title="EFS (NR = event at day 0; HSCT censors)")
    axes.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(figure)


def _print_table(results: pd.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="calibration: published vs simulated")
    table.add_column("id", no_wrap=True)
    for column in ("target", "simulated", "accepted", "result"):
        table.add_column(column, no_wrap=True)
    style = {"pass": "green", "miss": "bold red"}
    for _, row in results.iterrows():
        table.add_row(row["id"], _format_target(row).split(" (95% CI")[0],
                      _format_value(row["simulated"], row["statistic"]), _format_accepted(row),
                      f"[{style.get(row['status'], 'dim')}]{row['status']}[/]")
    console = Console(width=max(Console().width, 110))
    console.print(table)
    console.print(quarantine_summary(results))


def _format_accepted(row: pd.Series) -> str:
    """The acceptance interval of a row, short."""
    if not np.isfinite(row["tolerance_low"]):
        return "-"
    if row["tolerance_high"] == math.inf:
        return "> 0"
    return f"{row['tolerance_low']:.3g}-{row['tolerance_high']:.3g}"


def run_calibration(n_patients: int, seed: int, out_path: Path) -> pd.DataFrame:
    """Simulate a cohort, compute the calibration table, write the markdown report and a figure.

    Parameters
    ----------
    n_patients : int
        Patients to simulate (20,000 for the report).
    seed : int
        Simulation seed.
    out_path : Path
        Markdown file to write (``docs/calibration.md``); the figure goes to
        ``<out_path's folder>/figures/``.

    Returns
    -------
    DataFrame
        The calibration table (see :func:`compute_calibration`).
    """
    from rich.progress import Progress

    from pipelines.simulate import simulate_cohort

    out_path = Path(out_path)
    with Progress(transient=True) as progress:
        task = progress.add_task(f"simulating {n_patients} patients", total=len(TARGETS) + 1)
        cohort = simulate_cohort(n_patients, seed, with_true_cifs=False)  # the report reads only latent times
        progress.advance(task)

        def advance(target_id: str) -> None:
            """Show the target being computed and advance the bar."""
            progress.update(task, description=f"computing {target_id}", advance=1)

        results = compute_calibration(cohort.infusions, cohort.measurements, cohort.outcomes, cohort.ground_truth,
                                      progress=advance)
    figure = Path("figures") / "calibration_efs_by_burden.png"
    efs_by_burden_figure(cohort.infusions, cohort.outcomes, out_path.parent / figure)
    command = f"car-relapse calibrate --patients {n_patients} --seed {seed} --out {out_path}"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(render_markdown(results, n_patients, seed, command, (figure.as_posix(),)))
    _print_table(results)
    return results
