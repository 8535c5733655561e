"""Learning curve: held-out Uno's C of a model trained on more and more simulated patients, vs the oracle.

Run ``python -m benchmarks.bench_learning_curve [--sizes 2000 5000 20000 50000] [--model xgb_cox]
[--test-patients 5000] [--seeds 1] [--base-builders NAME ...] [--extra-builders NAME ...] [--bootstrap 100]
[--quick]``.

The model (``models.factory.make_model``) is trained on landmark sets (``features.landmarks``,
landmarks 0 / 28 / 91 / 182, horizon 730 days) of simulated cohorts of each size (training seed
20261121, then +10 per extra ``--seeds``), with a capacity that grows with the training size
(:func:`capacity`), and scored (``models.evaluation``) on one fixed held-out cohort (another
seed, with its oracle). Per landmark, at the headline horizon (12 months):

- Uno's C of relapse at every size, of the **plateau** (``C(n) = C_inf - a n^-1/2`` fitted to the
  curve, or the largest size when the curve is flat or the fit does not hold: :func:`plateau`) and
  of the **oracle** (with its Monte Carlo standard error);
- the gap **model -> plateau** at the reference size (5,000, the embedded cohort): what better
  fitting on the same amount of data could win at most;
- the gap **plateau -> oracle**: what the data cannot show, however many patients.

The model sees the features of ``--base-builders`` (default: ``features.registry.DEFAULT_BUILDERS``).
``--extra-builders`` also trains, at every size, the same model with the base builders plus the
named ones, and prints the gain in Uno's C per landmark with a paired
bootstrap CI (patients of the test cohort resampled; ``models.evaluation`` differences), and the
spread of the gain over ``--seeds`` training cohorts.

Cost on the shared 2-core machine: see docs/models.md ("Learning curve"). ``--quick`` runs sizes
1,000 / 2,000 / 4,000 on a 2,000-patient test cohort (about a minute).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from benchmarks.bench_models import HORIZONS, LANDMARK_DAYS, landmark_cohort
from features.contract import validate_cohort
from features.landmarks import feature_columns
from features.registry import DEFAULT_BUILDERS, build_feature_rows
from models.evaluation import EvaluationSettings, evaluate_sources
from models.factory import MODEL_NAMES, default_params, make_model
from models.oracle import oracle_predictions
from pipelines.simulate import simulate_cohort

__all__ = ["SIZES", "REFERENCE_SIZE", "builder_columns", "capacity", "curve_table", "gain_table", "learning_curve",
           "main", "plateau"]

SIZES = (2000, 5000, 20000, 50000)
QUICK_SIZES = (1000, 2000, 4000)
REFERENCE_SIZE = 5000
"""Training size of the embedded cohort (``make run``): the gap to the plateau is measured there."""
HEADLINE_HORIZON = 365.0
TRAIN_SEED, TEST_SEED = 20261121, 20261122
SEED_STEP = 10
"""Training cohort k has seed ``TRAIN_SEED + SEED_STEP * k`` (never the test seed)."""
ORACLE = "oracle"


def _doublings(n_patients: int) -> float:
    """log2 of the training size relative to :data:`REFERENCE_SIZE` (0 at 5,000, 2 at 20,000)."""
    return math.log2(n_patients / REFERENCE_SIZE)


def capacity(model: str, n_patients: int) -> dict[str, Any]:
    """Hyper-parameters of ``model`` for a training cohort of ``n_patients`` (the capacity schedule).

    At 5,000 patients these are the factory defaults. Per doubling of the training size:

    - ``xgb_cox`` / ``xgb_aft``: trees x sqrt(2) (300 at 5,000; 190 / 600 / 950 at 2k / 20k / 50k),
      depth 3 up to 10,000 patients, then +1 per 1.5 doublings (4 at 20k, 5 at 50k);
    - ``gbsa``: the same for its trees and depth;
    - ``rsf``: minimum leaf size / sqrt(2) (30 at 5,000, 15 at 20k, 9 at 50k), depth + 1 per
      doubling above 5,000 (at most 14), trees x sqrt(2);
    - ``coxnet``: the penalty path extended by a factor 1/2 per doubling (smaller last alpha).

    Parameters
    ----------
    model : str
        One of ``models.factory.MODEL_NAMES``.
    n_patients : int
        Training cohort size.

    Returns
    -------
    dict
        Parameters for ``models.factory.make_model``.
    """
    params = default_params(model)
    doublings = _doublings(n_patients)
    grow = 2.0 ** (doublings / 2)
    extra_depth = max(0, math.floor(doublings / 1.5)) if doublings > 1 else 0
    if model in ("xgb_cox", "xgb_aft", "gbsa"):
        params["n_estimators"] = int(round(params["n_estimators"] * grow, -1))
        params["max_depth"] = params["max_depth"] + extra_depth
    elif model == "rsf":
        params["n_estimators"] = int(round(params["n_estimators"] * grow))
        params["min_samples_leaf"] = max(5, int(round(params["min_samples_leaf"] / grow)))
        params["max_depth"] = min(14, params["max_depth"] + max(0, math.floor(doublings)))
    elif model == "coxnet":
        last = params["alphas"][-1] * 0.5 ** max(doublings, 0.0)
        params["alphas"] = sorted({*params["alphas"], last}, reverse=True)
    return params


def plateau(sizes: Sequence[float], values: Sequence[float], ceiling: float) -> tuple[float, str]:
    """The C a model of this family approaches with unlimited training data.

    Fits ``C(n) = C_inf - a (n / 5000)^(-1/2)`` (the usual n^-1/2 rate of the estimation error;
    a >= 0, C_inf between the best value seen and ``ceiling``) by least squares. When the curve is
    flat (the largest size gains < 0.002 over the smallest), has fewer than three points, or the
    fit misses a point by more than 0.004, the value at the largest size.

    Parameters
    ----------
    sizes, values : sequence of float
        Training sizes and the model's C at each.
    ceiling : float
        Upper bound (the oracle's C).

    Returns
    -------
    (float, str)
        The plateau and how it was obtained (``"fit"`` or ``"largest n"``).
    """
    n, c = np.asarray(sizes, dtype=float), np.asarray(values, dtype=float)
    order = np.argsort(n)
    n, c = n[order], c[order]
    largest = float(c[-1])
    if n.size < 3 or c[-1] - c[0] < 0.002 or not np.isfinite(c).all():
        return largest, "largest n"
    x = -((n / REFERENCE_SIZE) ** -0.5)
    a, c_inf = np.polyfit(x, c, 1)
    if a < 0 or np.max(np.abs(c_inf + a * x - c)) > 0.004:
        return largest, "largest n"
    return float(np.clip(c_inf, c.max(), max(ceiling, c.max()))), "fit"


def _fit_predict(model: str, n_patients: int, seed: int, train: pd.DataFrame, test: pd.DataFrame,
                 columns: list[str]) -> pd.DataFrame:
    """Fit ``model`` with the capacity for ``n_patients`` on ``train``; predict the test rows."""
    started = time.perf_counter()
    estimator = make_model(model, capacity(model, n_patients), random_state=seed)
    estimator.fit(train[columns], train[["time", "event"]])
    prediction = estimator.predict_cif(test[columns], HORIZONS)
    print(f"    {model} on {len(train)} rows, {len(columns)} features: {time.perf_counter() - started:.0f} s",
          flush=True)
    return prediction


def builder_columns(builders: Sequence[str]) -> list[str]:
    """Feature columns the named builders produce (from a one-patient simulated cohort)."""
    cohort = simulate_cohort(1, TEST_SEED, with_true_cifs=False)
    valid = validate_cohort(cohort.infusions, cohort.measurements, cohort.outcomes, on_error="quarantine")
    return list(build_feature_rows(valid.infusions, valid.measurements, 0.0, builders).columns)


def learning_curve(sizes: Sequence[int], model: str, test_patients: int, seeds: int, base_builders: Sequence[str],
                   extra_builders: Sequence[str], n_bootstrap: int) -> pd.DataFrame:
    """Train at every size (and seed), score on the held-out cohort; the metrics table (relapse).

    Sources: ``oracle``, ``n=<size>/seed=<k>`` (base builders) and, with ``extra_builders``,
    ``n=<size>/seed=<k>/+extra`` with the paired difference ``+extra - default`` (bootstrap CI).
    Every source is scored on the same rows: those the oracle covers.

    Returns
    -------
    DataFrame
        ``models.evaluation.EvaluationResult.metrics`` of every source, stacked.
    """
    builders = tuple(dict.fromkeys((*base_builders, *extra_builders)))
    started = time.perf_counter()
    test, oracle = landmark_cohort(test_patients, TEST_SEED, with_oracle=True, builders=builders)
    print(f"test cohort: {test_patients} patients, {len(test)} landmark rows ({time.perf_counter() - started:.0f} s)",
          flush=True)
    oracle_frame = oracle_predictions(test, oracle, HORIZONS)
    covered = oracle_frame.notna().all(axis=1).to_numpy()
    test, oracle_frame = test.loc[covered], oracle_frame.loc[covered]
    targets = test[["patient_id", "landmark_day", "time", "event"]]
    base_columns = [column for column in feature_columns(test) if column in set(builder_columns(base_builders))]

    def settings(reference: str | None) -> EvaluationSettings:
        return EvaluationSettings(horizons_days=HORIZONS, endpoints=("relapse",), n_bootstrap=n_bootstrap,
                                  reference=reference)

    metrics = [evaluate_sources(targets, {ORACLE: oracle_frame}, settings(None)).metrics]
    for size in sizes:
        for k in range(seeds):
            began = time.perf_counter()
            train, _ = landmark_cohort(size, TRAIN_SEED + SEED_STEP * k, with_oracle=False, builders=builders)
            print(f"  n={size} seed={k}: {len(train)} landmark rows ({time.perf_counter() - began:.0f} s)", flush=True)
            name = f"n={size}/seed={k}"
            group = {name: _fit_predict(model, size, k, train, test, base_columns)}
            if extra_builders:
                group[f"{name}/+extra"] = _fit_predict(model, size, k, train, test, feature_columns(test))
            metrics.append(evaluate_sources(targets, group, settings(name if extra_builders else None)).metrics)
    return pd.concat(metrics, ignore_index=True)


def _values(metrics: pd.DataFrame, source: str, metric: str = "uno_c", horizon: float = HEADLINE_HORIZON,
            kind: str = "estimate") -> pd.DataFrame:
    rows = metrics[(metrics["source"] == source) & (metrics["metric"] == metric) & (metrics["kind"] == kind)
                   & np.isclose(metrics["horizon_days"].astype(float), horizon)]
    return rows.set_index(rows["landmark_day"].astype(str))


def _landmarks() -> list[str]:
    return [str(float(day)) for day in LANDMARK_DAYS] + ["all"]


def curve_table(metrics: pd.DataFrame, sizes: Sequence[int], seeds: int, suffix: str = "",
                horizon: float = HEADLINE_HORIZON) -> pd.DataFrame:
    """Per landmark: C at every size (mean over seeds), plateau, oracle (+- MCSE) and the two gaps."""
    oracle = _values(metrics, ORACLE, horizon=horizon)["value"]
    oracle_mcse = _values(metrics, ORACLE, "uno_c_mcse", horizon=horizon)["value"]
    rows = []
    for landmark in _landmarks():
        by_size = {size: float(np.mean([_values(metrics, f"n={size}/seed={k}{suffix}", horizon=horizon)
                                        .loc[landmark, "value"] for k in range(seeds)])) for size in sizes}
        level, how = plateau(list(by_size), list(by_size.values()), float(oracle.loc[landmark]))
        reference = by_size.get(REFERENCE_SIZE, by_size[min(by_size, key=lambda n: abs(n - REFERENCE_SIZE))])
        rows.append({"landmark": landmark, **{f"n={size}": value for size, value in by_size.items()},
                     "plateau": level, "plateau_from": how, "oracle": float(oracle.loc[landmark]),
                     "oracle_mcse": float(oracle_mcse.loc[landmark]), "model_to_plateau": level - reference,
                     "plateau_to_oracle": float(oracle.loc[landmark]) - level})
    return pd.DataFrame(rows).set_index("landmark")


def gain_table(metrics: pd.DataFrame, sizes: Sequence[int], seeds: int,
               horizon: float = HEADLINE_HORIZON) -> pd.DataFrame:
    """Per size and landmark: gain in C from the extra builders, paired bootstrap CI (seed 0), spread over seeds."""
    rows = []
    for size in sizes:
        for landmark in _landmarks():
            gains = [_values(metrics, f"n={size}/seed={k}/+extra - n={size}/seed={k}", kind="difference",
                             horizon=horizon).loc[landmark] for k in range(seeds)]
            values = [float(g["value"]) for g in gains]
            rows.append({"size": size, "landmark": landmark, "gain": float(np.mean(values)),
                         "ci_low_seed0": float(gains[0]["ci_low"]), "ci_high_seed0": float(gains[0]["ci_high"]),
                         "min_over_seeds": min(values), "max_over_seeds": max(values)})
    return pd.DataFrame(rows).set_index(["size", "landmark"])


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m benchmarks.bench_learning_curve``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help=f"training sizes (default {SIZES})")
    parser.add_argument("--model", choices=MODEL_NAMES, default="xgb_cox")
    parser.add_argument("--test-patients", type=int, default=None, help="held-out cohort size (default 5000)")
    parser.add_argument("--seeds", type=int, default=1, help="training cohorts per size (spread over seeds)")
    parser.add_argument("--base-builders", nargs="+", default=list(DEFAULT_BUILDERS),
                        help="feature builders of the model (default: features.registry.DEFAULT_BUILDERS)")
    parser.add_argument("--extra-builders", nargs="*", default=[], help="feature builders to add and measure")
    parser.add_argument("--bootstrap", type=int, default=100, help="patient resamples for CIs")
    parser.add_argument("--quick", action="store_true", help="sizes 1000 2000 4000, test cohort 2000")
    args = parser.parse_args(argv)
    sizes = tuple(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    test_patients = args.test_patients or (2000 if args.quick else 5000)
    start = time.perf_counter()
    with threadpool_limits(1, user_api="blas"):
        metrics = learning_curve(sizes, args.model, test_patients, args.seeds, args.base_builders, args.extra_builders,
                                 args.bootstrap)
    pd.set_option("display.width", 200)
    print(f"\nLearning curve of {args.model}, Uno's C of relapse at {HEADLINE_HORIZON:g} days (held out, "
          f"{test_patients} patients); capacity grows with n (benchmarks.bench_learning_curve.capacity):")
    print(curve_table(metrics, sizes, args.seeds).round(4).to_string())
    if args.extra_builders:
        print(f"\nWith {args.extra_builders} added:")
        print(curve_table(metrics, sizes, args.seeds, "/+extra").round(4).to_string())
        print(f"\nGain in Uno's C from {args.extra_builders} (paired bootstrap 95% CI, seed 0; range over "
              f"{args.seeds} training seed(s)):")
        print(gain_table(metrics, sizes, args.seeds).round(4).to_string())
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
