"""Baseline (pre-infusion) features from the infusions table.

Clinically meaningful encodings of the published risk factors known at infusion: marrow burden
flags at 5% and 40% blasts, blinatumomab status as exposure / response / non-response,
fludarabine exposure below 13.8 mg*h/L, CD19 antigen load below 15%, costimulatory domain,
cytogenetic flags, CNS status, active non-CNS extramedullary disease, prior therapy.

Every output column is float: flags are 0.0/1.0, and a missing input stays NaN (estimators impute
inside their own pipelines). The values do not depend on the landmark day.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.registry import float_frame, log10_positive, patient_index, register_builder, require_columns

__all__ = [
    "BLASTS_FLOOR_PCT",
    "BLASTS_HIGH_PCT",
    "BLASTS_LOW_PCT",
    "CD19_LOAD_LOW_PCT",
    "FLUDARABINE_AUC_LOW_MG_H_PER_L",
    "baseline_features",
]

BLASTS_LOW_PCT = 5.0
"""Marrow blasts >= 5% = high burden (CAR-MA, PRWCC)."""
BLASTS_HIGH_PCT = 40.0
"""Second burden cut, >= 40% blasts."""
BLASTS_FLOOR_PCT = 0.01
"""Floor applied before log10 of marrow blasts (0% -> log10(0.01) = -2)."""
FLUDARABINE_AUC_LOW_MG_H_PER_L = 13.8
"""Fludarabine AUC below which relapse risk rises (PRWCC)."""
CD19_LOAD_LOW_PCT = 15.0
"""CD19 antigen load below which early loss of BCA is likelier (PLAT-02)."""

_REQUIRED_COLUMNS = (
    "age_years", "sex", "down_syndrome", "kmt2a_rearranged", "tp53_altered", "hypodiploid",
    "ph_positive", "prior_lines", "prior_crs", "prior_hsct", "blinatumomab", "inotuzumab_prior",
    "bm_blasts_pct", "cns_status", "active_non_cns_emd", "cd19_antigen_load_pct", "cd19_dim_pre",
    "cd22_pct_pre", "costim", "cell_dose_per_kg",
)
_BOOLEAN_COLUMNS = (
    "down_syndrome",
    "kmt2a_rearranged",
    "tp53_altered",
    "hypodiploid",
    "ph_positive",
    "prior_hsct",
    "inotuzumab_prior",
    "active_non_cns_emd",
    "cd19_dim_pre",
)


def _numeric(infusions: pd.DataFrame, column: str) -> np.ndarray:
    """Column as float (missing -> NaN); an absent (optional) column is all NaN."""
    if column not in infusions.columns:
        return np.full(len(infusions), np.nan)
    values = infusions[column]
    if values.dtype == np.float64:  # already float with NaN for missing: no conversion
        return values.to_numpy()
    return values.to_numpy(dtype=float, na_value=np.nan)


def _flag(condition: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """0.0/1.0 from a boolean condition, NaN where the input is missing."""
    return np.where(missing, np.nan, condition.astype(float))


def _level_flag(infusions: pd.DataFrame, column: str, levels: tuple[str, ...]) -> np.ndarray:
    """1.0 where the category column is one of ``levels``, 0.0 otherwise, NaN where missing."""
    values = infusions[column].to_numpy(dtype=object)
    missing = pd.isna(values)
    chosen = np.zeros(len(values), dtype=bool)
    chosen[~missing] = np.isin(values[~missing], levels)  # missing values (None, NaN, NA) never compared
    return _flag(chosen, missing)


def _log10_floored(values: np.ndarray, floor: float) -> np.ndarray:
    return np.log10(np.maximum(values, floor))  # maximum propagates NaN (fmax would not)


def _burden_features(infusions: pd.DataFrame) -> dict[str, np.ndarray]:
    blasts = _numeric(infusions, "bm_blasts_pct")
    missing = np.isnan(blasts)
    return {
        "bm_blasts_pct": blasts,
        "bm_blasts_log10_pct": _log10_floored(blasts, BLASTS_FLOOR_PCT),
        "bm_blasts_ge5_flag": _flag(blasts >= BLASTS_LOW_PCT, missing),
        "bm_blasts_ge40_flag": _flag(blasts >= BLASTS_HIGH_PCT, missing),
        "cns2_flag": _level_flag(infusions, "cns_status", ("CNS2",)),
        "cns3_flag": _level_flag(infusions, "cns_status", ("CNS3",)),
    }


def _prior_therapy_features(infusions: pd.DataFrame) -> dict[str, np.ndarray]:
    prior_crs = _numeric(infusions, "prior_crs")
    return {
        "prior_lines_count": _numeric(infusions, "prior_lines"),
        "prior_crs_count": prior_crs,
        "prior_crs_ge2_flag": _flag(prior_crs >= 2, np.isnan(prior_crs)),
        "blinatumomab_exposed": _level_flag(infusions, "blinatumomab", ("responder", "nonresponder")),
        "blinatumomab_responder": _level_flag(infusions, "blinatumomab", ("responder",)),
        "blinatumomab_nonresponder": _level_flag(infusions, "blinatumomab", ("nonresponder",)),
    }


def _product_features(infusions: pd.DataFrame) -> dict[str, np.ndarray]:
    auc = _numeric(infusions, "fludarabine_auc")
    load = _numeric(infusions, "cd19_antigen_load_pct")
    return {
        "cd19_antigen_load_pct": load,
        "cd19_antigen_load_below_15pct_flag": _flag(load < CD19_LOAD_LOW_PCT, np.isnan(load)),
        "cd22_pct_pre": _numeric(infusions, "cd22_pct_pre"),
        "costim_cd28_flag": _level_flag(infusions, "costim", ("CD28",)),
        "cell_dose_log10_per_kg": log10_positive(_numeric(infusions, "cell_dose_per_kg")),
        "fludarabine_auc_mg_h_per_l": auc,
        "fludarabine_auc_below_13p8_flag": _flag(auc < FLUDARABINE_AUC_LOW_MG_H_PER_L, np.isnan(auc)),
    }


@register_builder("baseline")
def baseline_features(
    infusions: pd.DataFrame, measurements: pd.DataFrame | None = None, landmark_day: float = 0.0
) -> pd.DataFrame:
    """Baseline features, one row per patient; independent of ``measurements`` and the landmark.

    Parameters
    ----------
    infusions : DataFrame
        Typed infusions table (docs/architecture.md). ``fludarabine_auc`` may be absent.
    measurements, landmark_day
        Unused; present for the common builder signature.

    Returns
    -------
    DataFrame
        Indexed by ``patient_id``; columns (unit):

        - ``age_years`` (years); ``sex_male`` (flag)
        - ``down_syndrome``, ``kmt2a_rearranged``, ``tp53_altered``, ``hypodiploid``,
          ``ph_positive`` (flags)
        - ``prior_lines_count`` (lines), ``prior_crs_count`` (remissions),
          ``prior_crs_ge2_flag`` (>= 2 prior CRs), ``prior_hsct``, ``inotuzumab_prior`` (flags)
        - ``blinatumomab_exposed``, ``blinatumomab_responder``, ``blinatumomab_nonresponder``
          (flags; naive = all 0)
        - ``bm_blasts_pct`` (% nucleated marrow cells), ``bm_blasts_log10_pct``
          (log10 %, floored at 0.01%), ``bm_blasts_ge5_flag``, ``bm_blasts_ge40_flag`` (flags)
        - ``cns2_flag``, ``cns3_flag`` (flags; CNS1 = both 0), ``active_non_cns_emd`` (flag)
        - ``cd19_antigen_load_pct`` (% BM cells CD19+), ``cd19_antigen_load_below_15pct_flag``,
          ``cd19_dim_pre`` (flag), ``cd22_pct_pre`` (% blasts CD22+)
        - ``costim_cd28_flag`` (flag; 4-1BB = 0), ``cell_dose_log10_per_kg``
          (log10 CAR+ T cells/kg)
        - ``fludarabine_auc_mg_h_per_l`` (mg*h/L), ``fludarabine_auc_below_13p8_flag`` (flag)
    """
    index = patient_index(infusions)
    require_columns(infusions, _REQUIRED_COLUMNS, "infusions")
    columns: dict[str, np.ndarray] = {
        "age_years": _numeric(infusions, "age_years"),
        "sex_male": _level_flag(infusions, "sex", ("M",)),
    }
    columns.update({name: _numeric(infusions, name) for name in _BOOLEAN_COLUMNS})
    columns.update(_burden_features(infusions))
    columns.update(_prior_therapy_features(infusions))
    columns.update(_product_features(infusions))
    return float_frame(columns, index)
