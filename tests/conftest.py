"""Shared fixtures: a tiny hand-made cohort that satisfies the data contract.

Three patients, all cells as text (as ``pipelines.io`` reads a CSV):

- ``P1``: CR on day 28, CD19-negative medullary relapse on day 200, last follow-up day 300;
- ``P2``: CR on day 28, no event, last follow-up day 400;
- ``P3``: NR on day 28, death on day 60, last follow-up day 60.
"""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import settings

# Property tests draw the same examples on every run, so that CI cannot pass or fail by chance; a
# failure found while developing is fixed and kept as an explicit test.
settings.register_profile("car-relapse", derandomize=True)
settings.load_profile("car-relapse")

_BOOLEAN_COLUMNS = (
    "down_syndrome", "kmt2a_rearranged", "tp53_altered", "hypodiploid", "ph_positive",
    "prior_hsct", "inotuzumab_prior", "active_non_cns_emd", "cd19_dim_pre",
)


def _infusions() -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "patient_id": ["P1", "P2", "P3"],
            "site": ["center_a", "center_a", "center_b"],
            "age_years": ["12.5", "7", "19"],
            "sex": ["F", "M", "F"],
            "prior_lines": ["2", "3", "4"],
            "prior_crs": ["1", "2", "2"],
            "blinatumomab": ["naive", "responder", "nonresponder"],
            "bm_blasts_pct": ["3", "0.5", "62"],
            "cns_status": ["CNS1", "CNS2", "CNS1"],
            "cd19_antigen_load_pct": ["25", "12", "70"],
            "cd22_pct_pre": ["90", "85", "60"],
            "product": ["tisagenlecleucel"] * 3,
            "costim": ["4-1BB", "4-1BB", "CD28"],
            "cell_dose_per_kg": ["2.0e6", "1.5e6", "3e6"],
            "fludarabine_auc": ["15.2", "11.0", None],
        }
    )
    for i, column in enumerate(_BOOLEAN_COLUMNS):
        frame[column] = ["False", "True" if i == 1 else "False", "True" if i == 0 else "False"]
    return frame


def _measurements() -> pd.DataFrame:
    rows = [
        # patient, day, specimen, assay, value, unit, detection_limit
        ("P1", "-5", "BM", "flow_mrd", "45%", None, None),
        ("P1", "28", "BM", "flow_mrd", "<0.01%", None, None),
        ("P1", "28", "BM", "ngs_mrd", "1.2E-05", "fraction", None),
        ("P1", "28", "PB", "b_cell_count", "0", "cells/uL", None),
        ("P1", "91", "PB", "b_cell_count", "2%", None, None),
        ("P1", "91", "BM", "ngs_mrd", "detected <LOQ", "fraction", "1e-6"),
        ("P2", "28", "BM", "flow_mrd", "NEG", None, None),
        ("P2", "28", "BM", "cd19_pct_blasts", "95", "pct_blasts", None),
        ("P2", "28", "PB", "car_copies", "15000", "copies/ug", None),
        ("P3", "28", "BM", "flow_mrd", "0.06%", None, None),
    ]
    columns = ["patient_id", "day", "specimen", "assay", "value", "unit", "detection_limit"]
    return pd.DataFrame(rows, columns=columns)


def _outcomes() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": ["P1", "P2", "P3"],
            "response": ["CR", "CR", "NR"],
            "response_day": ["28", "28", "28"],
            "event": ["relapse", "none", "death"],
            "event_day": ["200", None, "60"],
            "last_followup_day": ["300", "400", "60"],
            "relapse_phenotype": ["CD19_neg", None, None],
            "relapse_site": ["medullary", None, None],
        }
    )


@pytest.fixture
def raw_cohort() -> dict[str, pd.DataFrame]:
    """Fresh raw tables ``infusions``, ``measurements``, ``outcomes`` of the three-patient cohort."""
    return {"infusions": _infusions(), "measurements": _measurements(), "outcomes": _outcomes()}
