# Two entry points for newcomers (see README):
#   make run   -> set up .venv, then run the main job on the embedded synthetic cohort (train: metrics,
#                 decision curves, run report, registered champion), then compare surveillance schedules
#   make test  -> set up .venv, then run the whole test suite
PYTHON ?= python3
# One BLAS thread per process: on 2 cores, threaded OpenBLAS made small fits up to 20x slower.
export OPENBLAS_NUM_THREADS ?= 1
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check lint setup spark bench calibration config-reference request-schema clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# Optional: the spark extra (pyspark, a 456 MB download; about 2 min to install here) for distributed
# scoring (docs/usage.md, "Scoring in Spark") and its tests, which are skipped without it. CI runs it.
spark: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,spark]"

run: $(STAMP)
	$(BIN)/car-relapse train --config configs/default.yaml
	$(BIN)/car-relapse surveillance --config configs/surveillance.yaml --out outputs/surveillance

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

# Fast lane while developing: unit tests only (no slow or end-to-end tests).
check: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -m "not slow and not e2e"

# Lint and type checks (configured in pyproject.toml), on the whole tree.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

calibration: $(STAMP)
	$(BIN)/car-relapse calibrate --patients 20000 --seed 20261121 --out docs/calibration.md

# docs/config.md from the pydantic run config (pipelines/config.py); a test keeps them in step.
config-reference: $(STAMP)
	$(BIN)/python -m pipelines.config_reference docs/config.md

# docs/request_schema.json (JSON Schema of one patient of a scoring request) from the data contract.
request-schema: $(STAMP)
	$(BIN)/python -m pipelines.request_schema docs/request_schema.json

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
