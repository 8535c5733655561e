"""Benchmark: stacked landmark set for 100,000 patients x ~15 measurements at 6 landmarks.

Target (issue 3): under 20 s wall time and under 4 GB peak memory on 2 cores.

Run ``python -m benchmarks.bench_features [--patients N] [--seed S]``. The normalised tables are
generated directly here (vectorised numpy, seconds), shaped like the contract's output: a visit
schedule with jitter and missed visits, PB B cells and flow MRD at every visit, BM flow / NGS /
PCR MRD at marrow visits, censoring at the assays' detection limits, ~10% without an NGS clone.
Peak memory is the process's maximum resident set size (``resource.getrusage``), which includes
the input tables themselves.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import pandas as pd

from features.landmarks import build_landmark_set
from pipelines.simulation.arrays import NO_VALUE

__all__ = ["LANDMARK_DAYS", "main", "synthetic_tables"]

LANDMARK_DAYS = (0.0, 28.0, 91.0, 182.0, 365.0, 730.0)
_VISIT_DAYS = np.array([-7.0, 28.0, 60.0, 91.0, 182.0, 365.0, 730.0])
_MARROW_VISIT = np.array([True, True, False, True, True, False, False])
_LIMITS = {"flow_mrd": 1e-4, "pcr_mrd": 1e-5, "ngs_mrd": 1e-6}


def _infusions(ids: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    n = ids.size
    return pd.DataFrame({
        "patient_id": ids,
        "site": rng.choice(["A", "B", "C", "D"], n),
        "age_years": rng.uniform(1, 25, n),
        "sex": rng.choice(["F", "M"], n),
        **{c: rng.random(n) < 0.1 for c in ("down_syndrome", "kmt2a_rearranged", "tp53_altered",
                                             "hypodiploid", "ph_positive", "prior_hsct",
                                             "inotuzumab_prior", "active_non_cns_emd", "cd19_dim_pre")},
        "prior_lines": rng.integers(1, 6, n),
        "prior_crs": rng.integers(0, 4, n),
        "blinatumomab": rng.choice(["naive", "responder", "nonresponder"], n),
        "bm_blasts_pct": rng.uniform(0, 100, n) * (rng.random(n) < 0.6),
        "cns_status": rng.choice(["CNS1", "CNS2", "CNS3"], n, p=[0.8, 0.15, 0.05]),
        "cd19_antigen_load_pct": rng.uniform(0, 90, n),
        "cd22_pct_pre": rng.uniform(50, 100, n),
        "product": "tisagenlecleucel",
        "costim": rng.choice(["4-1BB", "CD28"], n, p=[0.8, 0.2]),
        "cell_dose_per_kg": rng.lognormal(np.log(2e6), 0.5, n),
        "fludarabine_auc": rng.lognormal(np.log(14), 0.4, n),
    })


def _outcomes(ids: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    n = ids.size
    responder = rng.random(n) < 0.85
    event = np.where(responder, rng.choice(["relapse", "death", "hsct", "none"], n, p=[0.4, 0.05, 0.15, 0.4]),
                     rng.choice(["death", "none"], n, p=[0.3, 0.7]))
    event_day = np.where(event == "none", np.nan, rng.uniform(35, 900, n))
    followup = np.where(event == "none", rng.uniform(60, 1800, n), event_day + rng.uniform(0, 400, n))
    return pd.DataFrame({
        "patient_id": ids,
        "response": np.where(responder, rng.choice(["CR", "CRi"], n), "NR"),
        "response_day": rng.normal(28, 2, n).round(),
        "event": event,
        "event_day": event_day,
        "last_followup_day": followup,
        "relapse_phenotype": np.where(event == "relapse", rng.choice(["CD19_pos", "CD19_neg", "lineage_switch"], n), NO_VALUE),
        "relapse_site": np.where(event == "relapse", "medullary", NO_VALUE),
    })


def _measurements(ids: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    n, v = ids.size, _VISIT_DAYS.size
    patient = np.repeat(np.arange(n), v)
    day = np.tile(_VISIT_DAYS, n) + rng.normal(0, 4, n * v).round()
    attended = rng.random(n * v) < 0.85
    marrow = np.tile(_MARROW_VISIT, n) & attended
    has_clone = np.repeat(rng.random(n) < 0.9, v)
    blocks = [
        ("PB", "b_cell_count", attended, rng.lognormal(0, 2.5, n * v), 1.0, "cells/uL"),
        ("PB", "flow_mrd", attended & (rng.random(n * v) < 0.5), 10 ** rng.normal(-5, 1.5, n * v),
         _LIMITS["flow_mrd"], "fraction"),
        ("BM", "flow_mrd", marrow, 10 ** rng.normal(-4.5, 1.5, n * v), _LIMITS["flow_mrd"], "fraction"),
        ("BM", "ngs_mrd", marrow & has_clone, 10 ** rng.normal(-5, 1.5, n * v), _LIMITS["ngs_mrd"], "fraction"),
        ("BM", "pcr_mrd", marrow & (rng.random(n * v) < 0.2), 10 ** rng.normal(-5, 1.5, n * v), _LIMITS["pcr_mrd"], "fraction"),
    ]
    frames = []
    for specimen, assay, present, value, limit, unit in blocks:
        censored = value[present] < limit
        frames.append(pd.DataFrame({
            "patient_id": ids[patient[present]],
            "day": day[present],
            "specimen": specimen,
            "assay": assay,
            "value": np.where(censored, limit, value[present]),
            "censored": censored,
            "detection_limit": limit,
            "unit": unit,
            "detected_below_loq": False,
        }))
    table = pd.concat(frames, ignore_index=True)
    for column in ("specimen", "assay", "unit"):
        table[column] = table[column].astype("category")
    return table


def synthetic_tables(n_patients: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Normalised (infusions, measurements, outcomes) tables for the benchmark."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"P{i:07d}" for i in range(n_patients)], dtype=object)
    return _infusions(ids, rng), _measurements(ids, rng), _outcomes(ids, rng)


def _peak_rss_gb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print wall time and peak memory; non-zero exit when over target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    infusions, measurements, outcomes = synthetic_tables(args.patients, args.seed)
    print(f"{len(infusions)} patients, {len(measurements)} measurements "
          f"({len(measurements) / len(infusions):.1f} per patient); RSS after generation {_peak_rss_gb():.2f} GB")
    start, cpu_start = time.perf_counter(), time.process_time()
    landmark_set = build_landmark_set(infusions, measurements, outcomes, LANDMARK_DAYS, horizon_days=730.0)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _peak_rss_gb()
    print(f"build_landmark_set at {len(LANDMARK_DAYS)} landmarks: {len(landmark_set)} rows x "
          f"{landmark_set.shape[1]} columns in {elapsed:.2f} s wall ({cpu:.2f} s CPU); peak RSS {peak:.2f} GB")
    print(landmark_set.groupby("landmark_day").size().to_string())
    ok = elapsed < 20.0 and peak < 4.0
    print("PASS (< 20 s, < 4 GB)" if ok else "FAIL (target: < 20 s, < 4 GB)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
