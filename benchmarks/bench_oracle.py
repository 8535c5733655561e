"""Stability of the oracle's concordance in its Monte Carlo replicates.

Run ``python -m benchmarks.bench_oracle [--patients 2000] [--replicates 16 32 128 512]``.

One simulated cohort (seed 20261122, the held-out seed of ``bench_models``), landmarks
0 / 28 / 91 / 182, horizon 730 days; the oracle is recomputed with each replicate count
(``SimulationParams.oracle_replicates``; the cohort's tables do not depend on it) and scored like
any source (``models.evaluation``): Uno's C of relapse at 12 months per landmark, with its Monte
Carlo standard error (``uno_c_mcse``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import pandas as pd
from threadpoolctl import threadpool_limits

from benchmarks.bench_models import HEADLINE_HORIZON, HORIZONS, LANDMARK_DAYS
from features.contract import validate_cohort
from features.landmarks import build_landmark_set
from models.evaluation import EvaluationSettings, evaluate_sources
from models.oracle import oracle_predictions
from pipelines.simulate import simulate_cohort
from pipelines.simulation.params import SimulationParams

__all__ = ["oracle_stability", "main"]

SEED = 20261122


def oracle_stability(n_patients: int, replicate_counts: list[int]) -> pd.DataFrame:
    """Uno's C of relapse at 12 months (and its MCSE) of the oracle per landmark and replicate count.

    Returns
    -------
    DataFrame
        Index: landmark (and ``all``); columns ``C (<replicates>)`` and ``MCSE (<replicates>)``
        per replicate count, then ``seconds (<replicates>)`` of the oracle's computation.
    """
    table: dict[str, pd.Series] = {}
    for replicates in replicate_counts:
        params = dataclasses.replace(SimulationParams(), oracle_replicates=replicates)
        started = time.perf_counter()
        cohort = simulate_cohort(n_patients, SEED, params, with_oracle=True, with_true_cifs=False)
        seconds = time.perf_counter() - started
        valid = validate_cohort(cohort.infusions, cohort.measurements, cohort.outcomes, on_error="quarantine")
        landmark_set = build_landmark_set(valid.infusions, valid.measurements, valid.outcomes, LANDMARK_DAYS, 730.0)
        oracle = oracle_predictions(landmark_set, cohort.oracle, HORIZONS)
        covered = oracle.notna().all(axis=1).to_numpy()
        targets = landmark_set.loc[covered, ["patient_id", "landmark_day", "time", "event"]]
        settings = EvaluationSettings(horizons_days=HORIZONS, endpoints=("relapse",), n_bootstrap=0, reference=None)
        metrics = evaluate_sources(targets, {"oracle": oracle.loc[covered]}, settings).metrics
        at = metrics[(metrics["horizon_days"].astype(float) == HEADLINE_HORIZON) & (metrics["endpoint"] == "relapse")]
        for metric, label in (("uno_c", "C"), ("uno_c_mcse", "MCSE")):
            rows = at[at["metric"] == metric]
            table[f"{label} ({replicates})"] = pd.Series(rows["value"].to_numpy(), index=rows["landmark_day"].astype(str))
        table[f"seconds ({replicates})"] = pd.Series(seconds, index=table[f"C ({replicates})"].index)
        print(f"  {replicates} replicates: {seconds:.0f} s", flush=True)
    return pd.DataFrame(table)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m benchmarks.bench_oracle``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--replicates", type=int, nargs="+", default=[16, 32, 128, 512])
    args = parser.parse_args(argv)
    with threadpool_limits(1, user_api="blas"):
        table = oracle_stability(args.patients, args.replicates)
    pd.set_option("display.width", 200)
    print(f"\nOracle, Uno's C of relapse at {HEADLINE_HORIZON:g} days ({args.patients} patients, seed {SEED}):")
    print(table.round(4).to_string())


if __name__ == "__main__":
    main()
