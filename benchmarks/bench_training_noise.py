"""Benchmark: how much of a held-out calibration miss is the training sample's noise.

Run ``python -m benchmarks.bench_training_noise [--config FILE] [--model NAME] [--train-patients N]
[--train-seeds S,S,...] [--test-patients N] [--test-seed S]``.

The held-out check of ``benchmarks.bench_calibration`` trains once, on one seed. A cell with a
handful of training events (lineage switch at landmark 182: 1-4 per 5,000 patients) then
depends on which patients that seed drew. This benchmark refits one candidate (default
``xgb_aft_recal``, with the config's parameters, as ``pipelines.experiment.refit`` does) on
several training seeds, scores one fresh cohort with its Monte Carlo oracle, and prints per
landmark, cause and horizon:

- the model's mean predicted incidence over the oracle's on the same rows (expected / truth:
  no event noise in it), per training seed, with the mean and standard deviation over seeds;
- the number of training events of the cell per seed;
- the same expected/oracle ratio at 12 months within each value of one feature (``--subgroup``,
  default ``kmt2a_rearranged``: lineage switch is mostly a KMT2A relapse), where a model can be
  calibrated on average and wrong in the patients who carry the risk;
- per seed, how many of the 48 cells of issue 12's check (relapse and each phenotype, 6/12/24
  months, 4 landmarks) have an observed/expected ratio outside 0.9-1.1, and how many an
  expected/oracle ratio outside it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from threadpoolctl import threadpool_limits

from benchmarks.bench_calibration import (
    BAND,
    TARGET_CAUSES,
    expected_over_oracle,
    outside,
    pick_metric,
    predict_in_chunks,
    with_cohort,
)
from models.evaluation import EvaluationSettings, evaluate_sources
from models.oracle import oracle_predictions
from pipelines.config import RunConfig, load_config
from pipelines.experiment import ORACLE, prepare_landmark_set, refit

__all__ = ["main", "ratios", "subgroup_ratios"]

def _training_events(landmark_set: pd.DataFrame) -> pd.Series:
    """Events per (landmark_day, cause) of a training landmark set; relapse counts every phenotype."""
    event = landmark_set["event"].astype(str)
    counts = {(float(landmark), cause): int((event[rows.index].str.startswith("relapse_") if cause == "relapse"
                                             else event[rows.index] == cause).sum())
              for landmark, rows in landmark_set.groupby("landmark_day") for cause in TARGET_CAUSES}
    return pd.Series(counts)


def ratios(metrics: pd.DataFrame, source: str) -> pd.DataFrame:
    """Per (landmark_day, endpoint, horizon_days) of ``TARGET_CAUSES``: the source's observed/expected
    and its expected over the oracle's (the oracle's O/E over the source's).

    Parameters
    ----------
    metrics : DataFrame
        ``models.evaluation.evaluate_sources`` metrics holding ``source`` and ``oracle``.
    source : str

    Returns
    -------
    DataFrame
        Columns ``observed_expected`` and ``expected_over_oracle``.
    """
    frame = pd.DataFrame({"observed_expected": pick_metric(metrics, "observed_expected", source)["value"],
                          "expected_over_oracle": expected_over_oracle(metrics, source)})
    return frame[frame.index.get_level_values("endpoint").isin(TARGET_CAUSES)]


def subgroup_ratios(landmark_set: pd.DataFrame, predictions: dict[str, pd.DataFrame], column: str,
                    horizon_days: float) -> pd.DataFrame:
    """Each source's summed predicted incidence over the oracle's, per landmark, cause and value of
    ``column`` (rows where the feature is missing are left out).

    Parameters
    ----------
    landmark_set : DataFrame
        Holds ``landmark_day`` and ``column``.
    predictions : dict
        Source name -> ``predict_cif`` frame indexed like ``landmark_set``; must hold ``oracle``.
    column : str
    horizon_days : float

    Returns
    -------
    DataFrame
        Index (landmark_day, endpoint, ``column``), one column per source other than the oracle.
    """
    from models.base import cif_column, relapse_column

    oracle = predictions[ORACLE]
    rows = {}
    for (landmark, value), group in landmark_set.groupby(["landmark_day", column]):
        for cause in TARGET_CAUSES:
            name = relapse_column(horizon_days) if cause == "relapse" else cif_column(cause, horizon_days)
            truth = oracle.loc[group.index, name].sum()
            rows[(float(landmark), cause, value)] = {source: frame.loc[group.index, name].sum() / truth
                                                    for source, frame in predictions.items() if source != ORACLE}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["landmark_day", "endpoint", column])
    return frame


def _markdown(frame: pd.DataFrame) -> str:
    """A frame with a (landmark_day, endpoint, ...) index as a markdown table (3 decimals)."""
    head = ["landmark", "cause", *frame.index.names[2:], *map(str, frame.columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (landmark, endpoint, *levels), row in frame.iterrows():
        cells = [f"{landmark:g}", str(endpoint).replace("relapse_", ""), *(f"{level:g}" for level in levels),
                 *(f"{value:.3f}" if isinstance(value, float) else str(value) for value in row.tolist())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _count_outside(values: pd.Series) -> int:
    return sum(outside(value, BAND) > 0 for value in values)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m benchmarks.bench_training_noise``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    parser.add_argument("--model", default="xgb_aft_recal")
    parser.add_argument("--train-patients", type=int, default=5000)
    parser.add_argument("--train-seeds", default="20261121,101,202,303,404")
    parser.add_argument("--test-patients", type=int, default=20000)
    parser.add_argument("--test-seed", type=int, default=20261122)
    parser.add_argument("--subgroup", default="kmt2a_rearranged", help="feature column to split by ('' for none)")
    args = parser.parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    config: RunConfig = load_config(args.config)
    horizons = [float(h) for h in config.evaluation.horizons_days]
    seeds = [int(seed) for seed in args.train_seeds.split(",")]
    start = time.perf_counter()
    with threadpool_limits(1, user_api="blas"):
        test = prepare_landmark_set(with_cohort(config, args.test_patients, args.test_seed, with_oracle=True))
        keys = test.landmark_set[["patient_id", "landmark_day"]]
        predictions = {ORACLE: oracle_predictions(keys, test.cohort.oracle, horizons)}
        events = {}
        for seed in seeds:
            train = prepare_landmark_set(with_cohort(config, args.train_patients, seed))
            events[seed] = _training_events(train.landmark_set)
            model = refit(config, train, args.model)
            predictions[str(seed)] = predict_in_chunks(model, test.landmark_set[test.columns], horizons)
            console.print(f"seed {seed}: fitted and scored ({time.perf_counter() - start:.0f} s)", markup=False)
    settings = EvaluationSettings(horizons_days=tuple(horizons), endpoints=tuple(TARGET_CAUSES), n_bootstrap=0,
                                  bootstrap_endpoints=(), reference=None)
    targets = test.landmark_set[["patient_id", "landmark_day", "time", "event"]]
    metrics = evaluate_sources(targets, predictions, settings).metrics
    per_seed = {seed: ratios(metrics, str(seed)) for seed in seeds}
    truth = pd.DataFrame({seed: frame["expected_over_oracle"] for seed, frame in per_seed.items()})
    console.print(f"\n{args.model} trained on {args.train_patients} patients per seed; held-out seed {args.test_seed}: "
                  f"{test.landmark_set['patient_id'].nunique()} patients, {len(test.landmark_set)} landmark rows\n",
                  markup=False)
    for horizon in horizons:
        table = truth.xs(horizon, level="horizon_days")
        table = table.assign(mean=table.mean(axis=1), sd=table.std(axis=1))
        table.columns = [f"E/oracle seed {c}" if isinstance(c, int) else c for c in table.columns]
        counts = pd.DataFrame(events).astype(str).rename(columns=lambda s: f"training events seed {s}")
        counts.index.names = ["landmark_day", "endpoint"]
        console.print(f"expected / oracle at {horizon:g} days", markup=False)
        console.print(_markdown(table.join(counts)), markup=False)
        console.print("", markup=False)
    if args.subgroup:
        by_group = subgroup_ratios(test.landmark_set, predictions, args.subgroup, 365.0)
        by_group = by_group.assign(mean=by_group.mean(axis=1), sd=by_group.std(axis=1))
        by_group.columns = [f"E/oracle seed {c}" if c not in ("mean", "sd") else c for c in by_group.columns]
        console.print(f"expected / oracle at 365 days by {args.subgroup}", markup=False)
        console.print(_markdown(by_group), markup=False)
        console.print("", markup=False)
    for seed, frame in per_seed.items():
        console.print(f"seed {seed}: O/E outside 0.9-1.1 in {_count_outside(frame['observed_expected'])}/{len(frame)} cells; "
                      f"expected/oracle outside it in {_count_outside(frame['expected_over_oracle'])}/{len(frame)}",
                      markup=False)
    console.print(f"\ntotal {time.perf_counter() - start:.0f} s", markup=False)


if __name__ == "__main__":
    main()
