"""Tests of pipelines.tracking: URI resolution, one-time store initialisation, experiment setup."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import shlex
import shutil
import sqlite3
import stat

import pytest

from pipelines import tracking
from pipelines.tracking import (
    TrackingError,
    default_tracking_uri,
    file_lock,
    init_store,
    lock_path_for,
    mlflow_ui_command,
    resolve_tracking_uri,
    setup_tracking,
    sqlite_db_path,
)


def test_default_uri_is_sqlite_in_project_mlruns():
    uri = default_tracking_uri()
    assert uri.startswith("sqlite:////")
    assert sqlite_db_path(uri) == tracking.project_root() / "mlruns" / "mlflow.db"


def test_resolution_order_explicit_env_config_default(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, None) == default_tracking_uri()
    assert resolve_tracking_uri(None, "sqlite:////tmp/config.db") == "sqlite:////tmp/config.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri(None, "sqlite:////tmp/config.db") == "http://127.0.0.1:5999"
    assert resolve_tracking_uri("sqlite:////tmp/cli.db", "sqlite:////tmp/config.db") == "sqlite:////tmp/cli.db"


def test_sqlite_paths_and_lock_location(tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    assert sqlite_db_path(uri) == tmp_path / "store" / "mlflow.db"
    assert lock_path_for(uri) == tmp_path / "store" / "mlflow.db.lock"
    assert sqlite_db_path("http://127.0.0.1:5000") is None
    with pytest.raises(TrackingError, match="no database file"):
        sqlite_db_path("sqlite://")


def _init_in_child(uri: str, queue) -> None:
    try:
        init_store(uri)
        queue.put("ok")
    except Exception as exc:  # reported to the parent, which fails the test with it
        queue.put(repr(exc))


def test_concurrent_first_use_initialises_schema_once(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_init_in_child, args=(uri, queue)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    outcomes = [queue.get(timeout=5) for _ in children]
    assert outcomes == ["ok"] * 2
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        tables = {row[0] for row in connection.execute("select name from sqlite_master where type='table'")}
    assert {"experiments", "runs", "registered_models", "model_versions"} <= tables


def _try_lock(path: str, queue) -> None:
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            queue.put("acquired")
        except BlockingIOError:
            queue.put("blocked")


def test_file_lock_excludes_other_processes(tmp_path):
    lock = tmp_path / "x.lock"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    with file_lock(lock):
        child = context.Process(target=_try_lock, args=(str(lock), queue))
        child.start()
        child.join(timeout=30)
        assert queue.get(timeout=5) == "blocked"
    child = context.Process(target=_try_lock, args=(str(lock), queue))
    child.start()
    child.join(timeout=30)
    assert queue.get(timeout=5) == "acquired"


def test_setup_tracking_creates_experiment_with_artifacts_beside_db(tracking_uri):
    uri = tracking_uri
    target = setup_tracking("exp-a", tracking_uri=uri)
    assert target.tracking_uri == uri
    assert target.artifact_location == (sqlite_db_path(uri).parent / "artifacts").as_uri()
    again = setup_tracking("exp-a", configured_uri=uri)
    assert again.experiment_id == target.experiment_id
    other = setup_tracking("exp-b", tracking_uri=uri)
    assert other.experiment_id != target.experiment_id


def test_setup_tracking_env_overrides_config(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    target = setup_tracking("exp", configured_uri=f"sqlite:///{tmp_path}/config/mlflow.db")
    assert target.tracking_uri == tracking_uri
    assert not (tmp_path / "config").exists()


def test_a_new_store_file_is_readable_by_its_owner_only(tmp_path):
    previous = os.umask(0o022)  # the usual umask: files 0644, world-readable
    try:
        init_store(f"sqlite:///{tmp_path}/store/mlflow.db")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "store" / "mlflow.db").stat().st_mode) == 0o600


def test_an_existing_world_readable_store_loses_the_world_bits(tmp_path, empty_mlflow_db):
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    (tmp_path / "mlflow.db").chmod(0o644)
    init_store(f"sqlite:///{tmp_path}/mlflow.db")
    assert stat.S_IMODE((tmp_path / "mlflow.db").stat().st_mode) == 0o640


def test_the_mlflow_ui_line_passes_the_store_as_one_argument():
    uri = "sqlite:////data/it's; touch PWNED/mlflow.db"
    assert shlex.split(mlflow_ui_command(uri))[:4] == ["mlflow", "ui", "--backend-store-uri", uri]
