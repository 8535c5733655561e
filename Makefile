# Two entry points for newcomers (see README):
#   make run   -> set up .venv, then run the main job on the embedded synthetic cohort
#   make test  -> set up .venv, then run the whole test suite
PYTHON ?= python3
# One BLAS thread per process: on 2 cores, threaded OpenBLAS made small fits up to 20x slower.
export OPENBLAS_NUM_THREADS ?= 1
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup bench calibration clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/car-relapse train --config configs/default.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

calibration: $(STAMP)
	$(BIN)/car-relapse calibrate --patients 20000 --seed 20261121 --out docs/calibration.md

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
