"""Where runs go: MLflow tracking URI, store initialisation and the experiment.

The default target is MLflow's SQLite backend inside the project's ``mlruns/`` folder
(``sqlite:///<project>/mlruns/mlflow.db``) with artifacts beside it in ``mlruns/artifacts``; the
file store is deprecated in MLflow 3. The URI is resolved in this order: an explicit argument (CLI
``--tracking-uri``), the ``MLFLOW_TRACKING_URI`` environment variable, the config's
``tracking.tracking_uri``, the default.

A fresh SQLite store is initialised once, under a file lock, before anything else touches it:
MLflow creates the schema (alembic migrations) the first time a store object opens the database,
and two processes doing that at the same moment collide. The database file is created readable by
its owner only (it holds run parameters, tags and data reports). A read-only store (read-only file,
folder or file system) is used as it is for reading (``score``, ``serve``); ``train`` refuses it
in one line.

Runs left ``RUNNING`` by a training that was killed (``kill -9``, power cut) are closed as
``KILLED`` with a note the next time a training starts (:func:`close_stale_runs`): each training
holds a lock file for its run (:func:`start_tracked_run`), which the operating system releases
when the process dies, however it dies.
"""

from __future__ import annotations

import os
import shlex
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = [
    "TrackingError",
    "TrackingTarget",
    "project_root",
    "default_tracking_uri",
    "resolve_tracking_uri",
    "sqlite_db_path",
    "artifact_root_for",
    "lock_path_for",
    "file_lock",
    "store_is_read_only",
    "store_error_reason",
    "init_store",
    "setup_tracking",
    "close_stale_runs",
    "start_tracked_run",
    "mlflow_ui_command",
    "quiet_mlflow",
]

_DB_NAME = "mlflow.db"
_ARTIFACTS_DIR = "artifacts"


class TrackingError(RuntimeError):
    """The tracking target cannot be used (bad URI, unreachable server, locked store)."""


@dataclass(frozen=True)
class TrackingTarget:
    """A ready-to-use tracking target.

    Attributes
    ----------
    tracking_uri : str
        Tracking and registry URI.
    experiment_id : str
        Id of the run's experiment.
    experiment_name : str
        Its name.
    artifact_location : str or None
        Artifact root of the experiment (None: chosen by a remote tracking server).
    lock_path : Path
        Lock file that serialises store initialisation and experiment creation.
    promotion_lock_path : Path
        Lock file that serialises model registration and alias switches.
    closed_stale_runs : tuple of str
        One line per run left RUNNING by a dead training and closed as KILLED while setting up.
    """

    tracking_uri: str
    experiment_id: str
    experiment_name: str
    artifact_location: str | None
    lock_path: Path
    promotion_lock_path: Path
    closed_stale_runs: tuple[str, ...] = ()


def project_root() -> Path:
    """The project's root folder (the one holding ``pyproject.toml``).

    Returns
    -------
    Path
        The source checkout when the package is installed editable, else the current folder.
    """
    checkout = Path(__file__).resolve().parents[1]
    return checkout if (checkout / "pyproject.toml").is_file() else Path.cwd().resolve()


def default_tracking_uri(root: Path | None = None) -> str:
    """``sqlite:///<root>/mlruns/mlflow.db`` (absolute path, so it works from any folder)."""
    root = Path(root) if root is not None else project_root()
    return f"sqlite:///{(root / 'mlruns' / _DB_NAME).resolve()}"


def resolve_tracking_uri(explicit: str | None = None, configured: str | None = None) -> str:
    """Pick the tracking URI: explicit > ``MLFLOW_TRACKING_URI`` > config > default.

    Parameters
    ----------
    explicit : str, optional
        From the command line.
    configured : str, optional
        ``tracking.tracking_uri`` of the run config.

    Returns
    -------
    str
    """
    for candidate in (explicit, os.environ.get("MLFLOW_TRACKING_URI"), configured):
        if candidate:
            return candidate
    return default_tracking_uri()


def sqlite_db_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for any other scheme.

    Raises
    ------
    TrackingError
        For an in-memory or relative-less SQLite URI that has no file.
    """
    if not tracking_uri.startswith("sqlite:"):
        return None
    path = tracking_uri[len("sqlite:///"):] if tracking_uri.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        raise TrackingError(f"tracking URI '{tracking_uri}' has no database file; use sqlite:///<path>")
    return Path(path.split("?", 1)[0])


def artifact_root_for(tracking_uri: str) -> Path | None:
    """Artifact folder beside a SQLite store (``<db folder>/artifacts``); None for servers."""
    db_path = sqlite_db_path(tracking_uri)
    return None if db_path is None else db_path.parent / _ARTIFACTS_DIR


def lock_path_for(tracking_uri: str) -> Path:
    """Lock file beside a SQLite store, else one in the project's ``mlruns/`` per server host."""
    db_path = sqlite_db_path(tracking_uri)
    if db_path is not None:
        return db_path.with_name(db_path.name + ".lock")
    host = urlparse(tracking_uri).netloc.replace(":", "_") or "local"
    return project_root() / "mlruns" / f".{host}.lock"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block.

    Serialises processes on one machine (POSIX ``flock``; ``msvcrt`` on Windows).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        if os.name == "nt":  # pragma: no cover - exercised on Windows only
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)  # type: ignore[attr-defined]
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def store_is_read_only(tracking_uri: str) -> bool:
    """True for an existing SQLite store that this process cannot write (file, folder or file system).

    SQLite writes a journal beside the database, so a writable file in a read-only folder is
    read-only too. Other stores (tracking servers) are never read-only here.
    """
    db_path = sqlite_db_path(tracking_uri)
    return db_path is not None and db_path.is_file() and not (
        os.access(db_path, os.W_OK) and os.access(db_path.parent, os.W_OK))


def _private_store_file(db_path: Path) -> None:
    """Create the database file readable by its owner only (0600), or take the world's read bits off an
    existing one this user owns: it holds run parameters, tags and data reports."""
    if not db_path.exists():
        os.close(os.open(db_path, os.O_CREAT | os.O_WRONLY, 0o600))
    status = db_path.stat()
    if status.st_uid == os.getuid() and status.st_mode & 0o007:
        db_path.chmod(status.st_mode & 0o770)


def init_store(tracking_uri: str) -> None:
    """Create the tracking store's schema once, under a file lock (SQLite only).

    One client call (``search_experiments``) makes MLflow open the database and run its
    migrations; later calls find the schema in place. A read-only store is left as it is (whoever
    wrote it initialised it; reading needs no lock). Remote servers need nothing.

    Raises
    ------
    TrackingError
        The store cannot be created or opened (one line: path and reason).
    """
    db_path = sqlite_db_path(tracking_uri)
    if db_path is None or store_is_read_only(tracking_uri):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(lock_path_for(tracking_uri)):
            _private_store_file(db_path)
            MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).search_experiments(max_results=1)
    except (OSError, MlflowException) as exc:
        raise TrackingError(f"cannot use the tracking store {db_path}: {store_error_reason(exc)}") from None


def store_error_reason(exc: BaseException) -> str:
    """One line saying why the store refused: the database driver's own words when MLflow wraps them
    (``(sqlite3.OperationalError) database or disk is full`` gives ``database or disk is full``), the
    system's for a file, else the message's first line."""
    import re

    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    text = str(getattr(exc, "message", exc))
    driver = re.search(r"\([\w.]*Error\) ([^\n\[]+)", text)
    if driver:
        return driver.group(1).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__


def _get_or_create_experiment(client, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def setup_tracking(
    experiment: str,
    tracking_uri: str | None = None,
    configured_uri: str | None = None,
    artifact_location: str | None = None,
) -> TrackingTarget:
    """Resolve the URI, initialise the store, point MLflow at it and get the experiment.

    Parameters
    ----------
    experiment : str
        Experiment name (created if missing).
    tracking_uri : str, optional
        Explicit URI (CLI); wins over everything else.
    configured_uri : str, optional
        ``tracking.tracking_uri`` from the config.
    artifact_location : str, optional
        Artifact root for a newly created experiment; default ``<db folder>/artifacts`` for
        SQLite, the server's choice otherwise. An existing experiment keeps its own.

    Returns
    -------
    TrackingTarget

    Raises
    ------
    TrackingError
        When the store cannot be opened or the experiment cannot be created.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri, configured_uri)
    if store_is_read_only(uri):
        raise TrackingError(f"the tracking store {sqlite_db_path(uri)} is read-only; a training writes its run there "
                            "(use a writable store: --tracking-uri, MLFLOW_TRACKING_URI or tracking.tracking_uri)")
    if artifact_location is None and (root := artifact_root_for(uri)) is not None:
        artifact_location = root.resolve().as_uri()
    lock_path = lock_path_for(uri)
    init_store(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        with file_lock(lock_path):
            experiment_id = _get_or_create_experiment(client, experiment, artifact_location)
            closed = close_stale_runs(client, experiment_id, _runs_folder(lock_path))
    except (OSError, MlflowException) as exc:
        raise TrackingError(f"cannot use tracking URI '{uri}': {store_error_reason(exc)}") from None
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    location = client.get_experiment(experiment_id).artifact_location
    promotion_lock = lock_path.with_name(lock_path.name.replace(".lock", ".promotion.lock"))
    return TrackingTarget(uri, experiment_id, experiment, location, lock_path, promotion_lock, tuple(closed))


_LIVENESS_TAG = "car_relapse.liveness_lock"
"""Run tag: name of the lock file its training holds while it runs (in :func:`_runs_folder`)."""
_NOTE_TAG = "mlflow.note.content"


def _runs_folder(lock_path: Path) -> Path:
    """Folder of the runs' liveness lock files, beside the store's lock file."""
    return lock_path.with_name(lock_path.name + ".runs")


def _held_by_a_live_process(path: Path) -> bool:
    """True while some process holds the lock on ``path`` (released by the kernel when it dies)."""
    if os.name == "nt":  # pragma: no cover - no flock: never take a run for dead
        return True
    import fcntl

    try:
        with open(path, "rb") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


def close_stale_runs(client, experiment_id: str, runs_folder: Path) -> list[str]:
    """Close as ``KILLED``, with a note, the runs of the experiment left RUNNING by a dead training.

    A training started by :func:`start_tracked_run` tags its run with its lock file; when no
    process holds that lock any more, the training died without ending its run. Runs without
    the tag (started by other tools, or by older versions of this project) are left alone.

    Returns
    -------
    list of str
        One line per closed run.
    """
    from mlflow.entities import RunStatus

    closed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        name = run.data.tags.get(_LIVENESS_TAG)
        lock = runs_folder / str(name)
        if not name or Path(str(name)).name != name or _held_by_a_live_process(lock):
            continue
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000))
        note = (f"Closed as KILLED by car-relapse at {time.strftime('%Y-%m-%d %H:%M:%S')}: the training that "
                f"started this run on {started} (host {run.data.tags.get('car_relapse.host', '?')}) ended without "
                "closing it (killed or crashed). Its metrics and artifacts may be incomplete.")
        previous_note = run.data.tags.get(_NOTE_TAG)
        client.set_tag(run.info.run_id, _NOTE_TAG, f"{previous_note}\n\n{note}" if previous_note else note)
        client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))
        lock.unlink(missing_ok=True)
        closed.append(f"run {run.info.run_id} (started {started}) was left RUNNING by a training that died; "
                      "closed as KILLED")
    return closed


@contextmanager
def start_tracked_run(target: TrackingTarget) -> Iterator[Any]:
    """``mlflow.start_run`` in the target's experiment, holding a lock file for the run's lifetime.

    The run is created with the lock file's name as a tag (one call: no moment where the run
    exists without it), so that :func:`close_stale_runs` can tell a live training from a dead one.
    Yields the active run.
    """
    import mlflow

    folder = _runs_folder(target.lock_path)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}.lock"
    try:
        with file_lock(folder / name):
            tags = {_LIVENESS_TAG: name, "car_relapse.host": socket.gethostname()}
            with mlflow.start_run(experiment_id=target.experiment_id, tags=tags) as run:
                yield run
    finally:
        (folder / name).unlink(missing_ok=True)


def mlflow_ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store (localhost), the URI shell-quoted."""
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)} --host 127.0.0.1 --port 5000"


def quiet_mlflow() -> None:
    """Silence MLflow's chatter that says nothing to a user of this project.

    The ``value`` field of a measurement is ``str | float`` on purpose (lab text or a number),
    which MLflow reports as an "AnyType" warning every time the model is logged or loaded; the
    artifact download progress bars are replaced by the project's own progress bars. MLflow's
    SQL store logs every database error with its traceback before raising it; the project's
    commands report the error in one line (a full or read-only store, for example).
    """
    import logging

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow.types.type_hints").setLevel(logging.ERROR)
    logging.getLogger("mlflow.models.signature").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
