"""Where runs go: MLflow tracking URI, store initialisation and the experiment.

The default target is MLflow's SQLite backend inside the project's ``mlruns/`` folder
(``sqlite:///<project>/mlruns/mlflow.db``) with artifacts beside it in ``mlruns/artifacts``; the
file store is deprecated in MLflow 3. The URI is resolved in this order: an explicit argument (CLI
``--tracking-uri``), the ``MLFLOW_TRACKING_URI`` environment variable, the config's
``tracking.tracking_uri``, the default.

A fresh SQLite store is initialised once, under a file lock, before anything else touches it:
MLflow creates the schema (alembic migrations) the first time a store object opens the database,
and two processes doing that at the same moment collide.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
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
    "init_store",
    "setup_tracking",
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
    """

    tracking_uri: str
    experiment_id: str
    experiment_name: str
    artifact_location: str | None
    lock_path: Path
    promotion_lock_path: Path


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


def init_store(tracking_uri: str) -> None:
    """Create the tracking store's schema once, under a file lock (SQLite only).

    One client call (``search_experiments``) makes MLflow open the database and run its
    migrations; later calls find the schema in place. Remote servers need nothing.
    """
    db_path = sqlite_db_path(tracking_uri)
    if db_path is None:
        return
    from mlflow.tracking import MlflowClient

    db_path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock_path_for(tracking_uri)):
        MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).search_experiments(max_results=1)


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
    if artifact_location is None and (root := artifact_root_for(uri)) is not None:
        artifact_location = root.resolve().as_uri()
    lock_path = lock_path_for(uri)
    try:
        init_store(uri)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        with file_lock(lock_path):
            experiment_id = _get_or_create_experiment(client, experiment, artifact_location)
    except MlflowException as exc:
        raise TrackingError(f"cannot use tracking URI '{uri}': {exc.message}") from None
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    location = client.get_experiment(experiment_id).artifact_location
    promotion_lock = lock_path.with_name(lock_path.name.replace(".lock", ".promotion.lock"))
    return TrackingTarget(uri, experiment_id, experiment, location, lock_path, promotion_lock)


def mlflow_ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store (localhost)."""
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


def quiet_mlflow() -> None:
    """Silence MLflow's chatter that says nothing to a user of this project.

    The ``value`` field of a measurement is ``str | float`` on purpose (lab text or a number),
    which MLflow reports as an "AnyType" warning every time the model is logged or loaded; the
    artifact download progress bars are replaced by the project's own progress bars.
    """
    import logging

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow.types.type_hints").setLevel(logging.ERROR)
    logging.getLogger("mlflow.models.signature").setLevel(logging.WARNING)
