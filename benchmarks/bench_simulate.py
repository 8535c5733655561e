"""Speed and memory of the synthetic cohort: 10,000 patients (fast path) and the oracle for 5,000.

Run: ``python -m benchmarks.bench_simulate [--patients 10000] [--oracle-patients 5000]``.
Prints wall-clock seconds and the peak resident memory of each run (each in a fresh process, so
the peaks do not mix). Targets: fast path < 30 s, oracle for 5,000 well under 2 minutes, on 2 cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time

__all__ = ["time_simulation", "main"]


def time_simulation(n_patients: int, with_oracle: bool, seed: int = 20261121) -> tuple[float, float, int]:
    """Simulate once (tables, ground truth with its true CIFs, and the oracle if asked).

    Parameters
    ----------
    n_patients : int
        Cohort size.
    with_oracle : bool
        Also compute the Monte Carlo oracle at every landmark.
    seed : int
        Simulation seed (the calibration report's by default).

    Returns
    -------
    (float, float, int)
        Wall-clock seconds, peak resident memory of this process in MB, measurement rows.
    """
    from pipelines.simulate import simulate_cohort

    start = time.perf_counter()
    cohort = simulate_cohort(n_patients, seed, with_oracle=with_oracle)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return seconds, peak_mb, len(cohort.measurements)


def _child(n_patients: int, with_oracle: bool, queue: multiprocessing.Queue) -> None:
    queue.put(time_simulation(n_patients, with_oracle))


def _run_isolated(n_patients: int, with_oracle: bool) -> tuple[float, float, int]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(n_patients, with_oracle, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--oracle-patients", type=int, default=5_000)
    args = parser.parse_args(argv)
    for label, n, oracle in (("fast path", args.patients, False), ("with oracle", args.oracle_patients, True)):
        seconds, peak_mb, rows = _run_isolated(n, oracle)
        print(f"simulate {label:<11} {n:>6} patients: {seconds:6.1f} s, peak memory {peak_mb:7.0f} MB, "
              f"{rows} measurement rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
