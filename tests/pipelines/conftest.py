"""Shared fixtures of the pipeline tests: a fresh MLflow SQLite store per test, quickly.

Creating MLflow's schema in a new SQLite file runs every alembic migration (several seconds), so
the schema is created once per test session and each test gets a copy of that empty database.
"""

from __future__ import annotations

import os
import shutil

import pytest

from pipelines.tracking import init_store


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory):
    """Path of an initialised, empty MLflow SQLite database (do not write to it)."""
    folder = tmp_path_factory.mktemp("mlflow_template")
    init_store(f"sqlite:///{folder}/mlflow.db")
    return folder / "mlflow.db"


@pytest.fixture
def tracking_uri(empty_mlflow_db, tmp_path, monkeypatch):
    """A fresh SQLite tracking URI in this test's folder; MLFLOW_TRACKING_URI is cleared."""
    store = tmp_path / "mlruns"
    store.mkdir()
    shutil.copy(empty_mlflow_db, store / "mlflow.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return f"sqlite:///{store}/mlflow.db"


def subprocess_environment() -> dict[str, str]:
    """This environment for a command run by a test, without what earlier tests' MLflow calls left in
    it (``mlflow.set_tracking_uri`` / ``set_registry_uri`` / ``set_experiment`` export
    ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI`` / ``MLFLOW_EXPERIMENT_ID`` for subprocesses),
    and with one OpenMP thread."""
    stale = {"MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"}
    return {key: value for key, value in os.environ.items() if key not in stale} | {"OMP_NUM_THREADS": "1"}
