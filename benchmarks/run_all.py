"""Run every benchmark in turn, each in its own process, and print their figures.

Run with ``make bench`` or ``python -m benchmarks.run_all [--only NAME ...]``. Benchmarks are not
part of the test suite: they take minutes and their timings depend on the machine. Each one
prints its own targets next to what it measured.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

__all__ = ["BENCHMARKS", "main"]

BENCHMARKS = {
    "simulate": "benchmarks.bench_simulate",  # issue 2: 10,000 patients < 30 s
    "features": "benchmarks.bench_features",  # issue 3: 100,000 patients x 6 landmarks < 20 s, < 4 GB
    "models": "benchmarks.bench_models",  # issue 4: CV of all candidates < 5 min; quality vs oracle
    "calibration": "benchmarks.bench_calibration",  # issue 12: held-out O/E 0.9-1.1 per cause, horizon, landmark
    "training_noise": "benchmarks.bench_training_noise",  # issue 12: held-out expected/oracle over training seeds
    "scoring": "benchmarks.bench_scoring",  # issue 5: 100,000 patients < 60 s
    "serving": "benchmarks.bench_serving",  # issue 5: median < 50 ms, p99 < 200 ms, 8 clients
    "abuse": "benchmarks.bench_abuse",  # issue 13: 16 clients, 60 s of mixed requests: 0 5xx, 0 resets
    "oracle": "benchmarks.bench_oracle",  # issue 12: oracle C stable in its Monte Carlo replicates
    "learning_curve": "benchmarks.bench_learning_curve",  # issue 12: gaps model -> plateau -> oracle
}


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; return non-zero if any of them failed to run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), default=sorted(BENCHMARKS))
    args = parser.parse_args(argv)
    failed = []
    for name in [n for n in BENCHMARKS if n in args.only]:
        print(f"\n=== benchmark: {name} ({BENCHMARKS[name]})", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", BENCHMARKS[name]])
        print(f"=== {name}: exit {code}, {time.perf_counter() - start:.1f} s wall in all", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
