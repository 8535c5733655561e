"""Parameters of the mechanistic synthetic cohort (frozen dataclasses; the defaults are calibrated).

Units: time in days; leukemic burden as log10 of the fraction of nucleated marrow cells (the
extramedullary compartment in marrow-equivalent units); growth and kill rates in log10 per day.
The defaults were fitted against the published figures with ``pipelines.calibration``;
``docs/calibration.md`` shows target vs simulated for each figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Normal",
    "LogNormal",
    "SiteParams",
    "CovariateParams",
    "DiseaseParams",
    "PersistenceParams",
    "ObservationParams",
    "EventParams",
    "SimulationParams",
    "DEFAULT_SITES",
]


@dataclass(frozen=True)
class Normal:
    """A normal distribution of a per-patient parameter (mean and sd in the parameter's unit)."""

    mean: float
    sd: float

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw ``n`` values, one per patient, with a single ``rng.normal`` call.

        Parameters
        ----------
        rng : numpy.random.Generator
            The random stream.
        n : int
            Number of patients.

        Returns
        -------
        ndarray of float, shape (n,)
        """
        return rng.normal(self.mean, self.sd, n)


@dataclass(frozen=True)
class LogNormal:
    """A log-normal distribution: median (in the parameter's unit) and sd of the natural log."""

    median: float
    log_sd: float

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``median * exp(x)`` with ``x`` drawn as :meth:`Normal.draw` of ``Normal(0, log_sd)``."""
        return self.median * np.exp(Normal(0.0, self.log_sd).draw(rng, n))


@dataclass(frozen=True)
class SiteParams:
    """One treating center: enrolment, HSCT policy and laboratory habits."""

    name: str
    enrolment_weight: float
    hsct_policy: float
    """Multiplier of the per-visit hazard of deciding a consolidative HSCT."""
    cd28_share: float
    """Share of patients treated with a CD28-costimulated product."""
    b_cell_unit: str
    """``cells/uL`` or ``pct_lymphocytes``."""
    pb_ngs: bool
    """Whether the center also tracks NGS-MRD in peripheral blood."""
    car_copies: bool
    """Whether the center measures CAR transgene copies in blood."""
    measures_flu_auc: bool
    enrolment_start_day: float
    """Day (from the consortium start) the center begins to enrol."""
    lab_text_share: float
    """Share of quantified results written as lab text ("0.06%", "1.2E-05")."""


DEFAULT_SITES: tuple[SiteParams, ...] = (
    SiteParams("center_01", 0.22, 0.6, 0.00, "cells/uL", True, True, True, 0.0, 0.15),
    SiteParams("center_02", 0.18, 1.0, 0.00, "pct_lymphocytes", False, False, True, 0.0, 0.40),
    SiteParams("center_03", 0.15, 1.6, 0.55, "cells/uL", False, True, False, 120.0, 0.10),
    SiteParams("center_04", 0.14, 0.8, 0.00, "pct_lymphocytes", True, False, True, 200.0, 0.30),
    SiteParams("center_05", 0.12, 1.3, 0.15, "cells/uL", False, False, False, 300.0, 0.50),
    SiteParams("center_06", 0.11, 0.4, 0.00, "cells/uL", False, True, True, 365.0, 0.20),
    SiteParams("center_07", 0.08, 2.5, 0.10, "pct_lymphocytes", True, False, False, 500.0, 0.25),
)


@dataclass(frozen=True)
class CovariateParams:
    """Marginals and correlations of the patient at infusion."""

    p_infant: float = 0.04
    age_beta_a: float = 2.0
    age_beta_b: float = 2.3
    age_min_noninfant: float = 1.0
    age_max: float = 25.0
    p_male: float = 0.57
    p_down_syndrome: float = 0.03
    p_kmt2a_infant: float = 0.55
    p_kmt2a_toddler: float = 0.12
    p_kmt2a_other: float = 0.055
    p_tp53: float = 0.08
    p_hypodiploid: float = 0.04
    p_ph_positive: float = 0.05
    extra_prior_lines_mean: float = 1.3
    p_primary_refractory: float = 0.08
    p_blina_exposed_base: float = 0.20
    p_blina_exposed_per_line: float = 0.05
    p_blina_nonresponse: float = 0.55
    p_inotuzumab_base: float = 0.08
    p_inotuzumab_per_line: float = 0.03
    blast_category_probs: tuple[float, float, float, float] = (0.30, 0.20, 0.36, 0.14)
    """P(bm blasts = 0, (0,5), [5,50), >=50) for children naive to blinatumomab failure."""
    adult_high_burden_shift: float = 0.05
    blina_nonresponder_blast_probs: tuple[float, float, float, float] = (0.14, 0.18, 0.42, 0.26)
    occult_burden_log10_range: tuple[float, float] = (-6.0, -2.5)
    p_cns2: float = 0.08
    p_cns3: float = 0.06
    p_active_emd: float = 0.09
    normal_b_bm_pct: LogNormal = LogNormal(median=3.0, log_sd=0.9)
    """Normal CD19+ B cells before lymphodepletion, % of marrow cells (before the factors below)."""
    normal_b_factor_inotuzumab: float = 0.15
    normal_b_factor_blinatumomab: float = 0.5
    p_cd19_dim_base: float = 0.10
    p_cd19_dim_blina_responder: float = 0.16
    p_cd19_dim_blina_nonresponder: float = 0.8
    fludarabine_auc_mg_h_per_l: LogNormal = LogNormal(median=15.0, log_sd=0.38)
    cell_dose_per_kg: LogNormal = LogNormal(median=1.7e6, log_sd=0.5)
    """CAR+ T cells infused per kg."""
    tcell_fitness_blina_nonresponder: float = -1.6
    tcell_fitness_per_extra_line: float = -0.08


@dataclass(frozen=True)
class DiseaseParams:
    """Clonal burdens, CAR killing and leukemia growth."""

    floor_log10: float = -10.0
    """Extinction level (about a hundred cells in 1e12): below it a clone is gone."""
    marrow_threshold_log10: float = -1.30103
    """Clinical relapse / no response: 5% marrow blasts."""
    em_threshold_log10: float = -2.0
    """Clinically evident extramedullary disease (marrow-equivalent burden)."""
    expansion_days: float = 28.0
    lymphodepletion_log10_kill: float = 1.0
    """Debulking of every clone by fludarabine/cyclophosphamide at optimal exposure."""
    lymphodepletion_log10_kill_low_flu: float = 0.2
    expansion_log10_kill: Normal = Normal(mean=7.0, sd=1.3)
    """log10 kill of CD19-positive cells over the expansion phase, before the modifiers below."""
    expansion_kill_per_fitness: float = 0.6
    expansion_kill_low_flu: float = 2.0
    expansion_kill_low_load: float = 0.3
    expansion_kill_cd28: float = 0.4
    expansion_kill_per_log_burden: float = 0.8
    """Effector-to-target ratio: log10 kill lost per log10 of burden above ``expansion_reference_burden``."""
    expansion_reference_burden: float = -2.0
    maintenance_kill_log10_per_day: LogNormal = LogNormal(median=0.04, log_sd=0.5)
    """Kill rate of the persisting CAR after expansion, at the reference burden."""
    maintenance_kill_per_log_burden: float = 0.12
    """Exhaustion: the persisting CAR's kill rate is divided by 10**(this x (burden - reference))."""
    regrowth_log10_per_day: LogNormal = LogNormal(median=0.024, log_sd=0.35)
    """Growth of the CD19-positive clone after CAR loss."""
    regrowth_factor_two_prior_crs: float = 1.15
    neg_growth_log10_per_day: Normal = Normal(mean=0.022, sd=0.015)
    """Normal, not log-normal: some CD19-negative variants are unfit (net decline) and never grow out."""
    myeloid_growth_log10_per_day: LogNormal = LogNormal(median=0.06, log_sd=0.3)
    dim_seed_factor: float = 5.0
    dim_fraction_log10_mean: float = -0.6
    hidden_fraction_log10_mean: float = -5.0
    hidden_fraction_log10_sd: float = 1.0
    hidden_seed_slope: float = 0.35
    hidden_seed_offset: float = 0.45
    hidden_seed_factor_blina_responder: float = 1.6
    hidden_seed_factor_blina_nonresponder: float = 5.0
    kmt2a_myeloid_seed_factor: float = 0.8
    escape_total_slope: float = 0.45
    escape_total_offset: float = 0.9
    escape_tau_days: float = 30.0
    escape_seed_log10: float = -8.0
    p_escape_myeloid_kmt2a: float = 0.9
    p_escape_myeloid_other: float = 0.03
    em_emd_mean: float = -1.5
    em_cns3_mean: float = -2.5
    em_cns2_mean: float = -3.5
    em_sd: float = 0.6
    p_occult_em: float = 0.25
    occult_em_offset: float = -2.5
    occult_em_sd: float = 1.0
    em_kill_factor_emd: float = 0.5
    em_kill_factor_other: float = 0.72
    p_patchy_marrow: float = 0.15
    p_patchy_marrow_emd: float = 0.35
    combined_site_window_days: float = 30.0


@dataclass(frozen=True)
class PersistenceParams:
    """CAR persistence (B-cell aplasia) time T_p."""

    primary_failure_logit: float = -4.7
    primary_failure_low_load: float = 0.7
    primary_failure_low_flu: float = 0.6
    primary_failure_per_fitness: float = -1.0
    primary_failure_days: tuple[float, float] = (7.0, 24.0)
    primary_failure_kill_factor: float = 0.1
    """A product that fails to expand kills at this fraction of the usual expansion rate."""
    p_long_persistence: float = 0.08
    weibull_shape: float = 1.3
    weibull_scale_days: float = 950.0
    log_hr_low_load: float = 1.75
    log_hr_low_flu: float = 1.2
    log_hr_cd28: float = 1.2
    log_hr_per_fitness: float = -0.3
    log_hr_per_log_burden: float = 0.5
    """Exhaustion: log hazard ratio per log10 of marrow burden above 1%."""
    reference_burden_log10: float = -2.0
    load_threshold_pct: float = 15.0
    load_smoothness_log: float = 0.15
    flu_threshold: float = 13.8
    flu_smoothness_log: float = 0.08
    b_recovery_lag_days: float = 10.0
    lymphodepletion_b_recovery_day: float = 30.0
    """Lymphodepletion alone keeps B cells away about this long, CAR or not."""
    b_recovery_tau_days: float = 25.0
    b_cells_max_per_ul: LogNormal = LogNormal(median=250.0, log_sd=0.6)
    """Peripheral CD19+ B cells once fully recovered."""
    lymphocytes_per_ul: LogNormal = LogNormal(median=1200.0, log_sd=0.4)
    """Other (non-B) peripheral lymphocytes, the denominator of B cells in % of lymphocytes."""
    b_cells_aplasia_per_ul: float = 0.2
    car_peak_log10_copies_per_ug: Normal = Normal(mean=4.5, sd=0.5)
    car_peak_day: float = 14.0
    car_decline_log10_per_day: float = 0.008
    car_plateau_log10: float = 2.3
    car_loss_log10_per_day: float = 0.15


@dataclass(frozen=True)
class ObservationParams:
    """Visit schedule, assays and their noise and limits."""

    visit_days: tuple[float, ...] = (
        28, 61, 91, 122, 182, 273, 365, 456, 547, 730, 912, 1095, 1277, 1460, 1642, 1825,
        2007, 2190, 2372, 2555,
    )
    marrow_visit_days: tuple[float, ...] = (28, 91, 182, 273, 365, 547, 730, 1095, 1460, 1825, 2190, 2555)
    jitter_sd_early: float = 2.0
    jitter_sd_late: float = 7.0
    p_missed_early: float = 0.04
    p_missed_late: float = 0.15
    p_bm_done_early: float = 0.92
    p_bm_done_late: float = 0.55
    p_ngs_done: float = 0.85
    p_ngs_trackable: float = 0.90
    p_pb_flow_done: float = 0.75
    p_pb_ngs_done: float = 0.5
    p_b_cells_done: float = 0.9
    p_car_copies_done: float = 0.6
    pre_infusion_day_range: tuple[float, float] = (-14.0, -3.0)
    flow_limit: float = 1e-4
    ngs_limit: float = 1e-6
    b_cells_limit_per_ul: float = 1.0
    b_cells_limit_pct: float = 0.1
    b_cells_recovery_per_ul: float = 10.0
    b_cells_recovery_pct: float = 1.0
    car_copies_limit: float = 5.0
    assay_noise_sd: float = 0.2
    pb_offset_log10: Normal = Normal(mean=1.5, sd=0.3)
    """How many logs peripheral blood runs below the marrow (per patient)."""
    pb_noise_sd: float = 0.35
    em_to_pb_offset: float = 1.0
    patch_sd_patchy: float = 1.0
    patch_sd_regular: float = 0.15
    b_cells_noise_sd: float = 0.25
    antigen_noise_sd: float = 4.0
    ngs_loq_factor: float = 5.0
    """Results between the limit and limit x this factor are often reported "detected <LOQ"."""
    p_loq_text: float = 0.5


@dataclass(frozen=True)
class EventParams:
    """Competing events (death in remission, consolidative HSCT) and follow-up."""

    p_treatment_related_death: float = 0.02
    treatment_related_tau_days: float = 20.0
    late_death_per_year: float = 0.025
    late_death_factor_prior_hsct: float = 1.5
    late_death_start_day: float = 60.0
    hsct_hazard_base: float = 0.008
    hsct_hazard_bca_loss: float = 0.04
    hsct_hazard_mrd_positive: float = 0.03
    hsct_factor_prior_hsct: float = 0.25
    hsct_last_decision_day: float = 730.0
    hsct_delay_days: tuple[float, float] = (21.0, 56.0)
    consortium_cutoff_day: float = 1825.0
    last_enrolment_day: float = 1460.0
    loss_to_followup_per_year: float = 0.02
    response_day_range: tuple[int, int] = (24, 28)
    p_cri_given_remission: float = 0.3


@dataclass(frozen=True)
class SimulationParams:
    """Everything the simulator needs; ``SimulationParams()`` is the calibrated default."""

    sites: tuple[SiteParams, ...] = DEFAULT_SITES
    covariates: CovariateParams = field(default_factory=CovariateParams)
    disease: DiseaseParams = field(default_factory=DiseaseParams)
    persistence: PersistenceParams = field(default_factory=PersistenceParams)
    observation: ObservationParams = field(default_factory=ObservationParams)
    events: EventParams = field(default_factory=EventParams)
    horizon_days: float = 3650.0
    """Latent course simulated up to this day; later events count as none."""
    ground_truth_replicates: int = 64
    """Monte Carlo replicates per patient of the true CIFs at infusion (ground truth; not scored)."""
    oracle_replicates: int = 128
    """Monte Carlo replicates per patient and landmark of the oracle. Death and the HSCT decisions
    are integrated out in each replicate, so at 128 its Uno C is within 0.001 of 512 replicates
    (docs/models.md, "The oracle and its Monte Carlo error")."""
    oracle_landmark_days: tuple[float, ...] = (0.0, 28.0, 91.0, 182.0, 365.0)
    oracle_horizon_days: tuple[float, ...] = (182.0, 365.0, 730.0)
    mc_chunk_rows: int = 60_000
