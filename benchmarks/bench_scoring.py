"""Batch scoring speed: 100,000 patients with a registered model, as ``car-relapse score`` runs it.

Run: ``python -m benchmarks.bench_scoring [--patients 100000] [--chunk-size 5000] [--model URI
--tracking-uri URI]``. Without ``--model``, a small model is trained and registered first in a
temporary SQLite store (not timed). The cohort is simulated and written as Parquet (not timed);
the timed part is exactly ``pipelines.score.run_score``: loading the model through MLflow,
reading the folder, validating, building features, predicting, explaining (top factors), writing
the output and the rejects. Target: < 60 s for 100,000 patients on 2 cores.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["BENCH_CONFIG", "train_benchmark_model", "model_or_trained", "write_cohort", "main"]

BENCH_CONFIG = {
    "data": {"source": "synthetic", "synthetic": {"n_patients": 1500, "seed": 7, "with_oracle": False}},
    "models": {"candidates": ["xgb_cox"]},
    "evaluation": {"cv_folds": 2, "bootstrap": 0, "shap_max_rows": 20, "endpoints": ["relapse"]},
    "registry": {"model_name": "car-relapse-bench", "thresholds": {}, "top_factors": 5},
}


def train_benchmark_model(folder: Path) -> tuple[str, str | None]:
    """Train and register the benchmark model in a SQLite store under ``folder``.

    Returns
    -------
    (model URI, tracking URI)
    """
    from pipelines.config import RunConfig
    from pipelines.train import train

    tracking_uri = f"sqlite:///{Path(folder).resolve()}/mlflow.db"
    config = RunConfig.model_validate({**BENCH_CONFIG, "tracking": {"tracking_uri": tracking_uri}})
    summary = train(config)
    return f"models:/{summary.model_name}@champion", tracking_uri


def model_or_trained(folder: Path, model_uri: str | None, tracking_uri: str | None) -> tuple[str, str | None]:
    """The given model and store, or a benchmark model trained into ``folder`` when none is given."""
    if model_uri:
        return model_uri, tracking_uri
    return train_benchmark_model(folder)


def write_cohort(folder: Path, n_patients: int, seed: int = 99) -> Path:
    """Simulate ``n_patients`` and write infusions and measurements as Parquet into ``folder``."""
    from pipelines.io import write_table
    from pipelines.simulate import simulate_cohort

    cohort = simulate_cohort(n_patients, seed)
    write_table(cohort.infusions, Path(folder) / "infusions.parquet")
    write_table(cohort.measurements, Path(folder) / "measurements.parquet")
    return Path(folder)


def main(argv: list[str] | None = None) -> int:
    """Prepare (untimed), then time one batch scoring run and print the figures."""
    from pipelines.score import run_score
    from pipelines.tracking import quiet_mlflow

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=5000)
    parser.add_argument("--as-of-day", type=float, default=91.0)
    parser.add_argument("--model", default=None, help="Registered model URI (default: train one first).")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)
    quiet_mlflow()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        model_uri, tracking_uri = model_or_trained(folder, args.model, args.tracking_uri)
        start = time.perf_counter()
        cohort = write_cohort(folder / "cohort", args.patients)
        print(f"simulated and wrote {args.patients} patients in {time.perf_counter() - start:.1f} s (not timed)")
        start = time.perf_counter()
        summary = run_score(model_uri, cohort, args.as_of_day, folder / "scores.parquet", args.chunk_size, tracking_uri)
        seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"batch scoring: {summary.patients_scored} of {summary.patients_in} patients in {seconds:.1f} s "
          f"({summary.patients_scored / seconds:,.0f} patients/s), {summary.rejected_rows} rejected rows, "
          f"peak memory {peak_mb:,.0f} MB; target < 60 s for 100,000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
