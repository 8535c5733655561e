"""``car-relapse serve``: MLflow's scoring server for the champion model, on localhost.

This runs exactly ``mlflow models serve -m <model URI> --env-manager local`` (the model is loaded
into the current environment, nothing is installed), bound to 127.0.0.1 unless told otherwise,
after checking that the model URI resolves so that a missing champion is a clear message rather
than a server that dies while starting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Optional

from rich.console import Console

from models.serving import EXAMPLE_PATIENT
from pipelines.tracking import TrackingError, init_store, resolve_tracking_uri

__all__ = [
    "DEFAULT_WORKERS", "ServeError", "serve_command", "serve_environment", "example_curl", "check_model_uri",
    "run_serve",
]

_console = Console(soft_wrap=True, highlight=False)


class ServeError(RuntimeError):
    """The model cannot be served (unknown model or alias, unreachable store)."""


DEFAULT_WORKERS = 2
"""Uvicorn worker processes: measured on 2 cores, 2 workers serve about 1.5x the requests/s of 1."""


def serve_command(
    model_uri: str, host: str = "127.0.0.1", port: int = 5001, workers: int = DEFAULT_WORKERS
) -> list[str]:
    """The ``mlflow models serve`` command line (run with this interpreter's MLflow)."""
    return [
        sys.executable, "-m", "mlflow", "models", "serve",
        "-m", model_uri, "--env-manager", "local",
        "--host", host, "--port", str(port), "--workers", str(workers),
    ]


def serve_environment(tracking_uri: str) -> dict[str, str]:
    """Environment of the scoring server: the tracking store, and one OpenMP thread per process.

    Each request scores a few patients; on a small shared machine OpenMP thread pools (XGBoost)
    cost far more in start-up and contention than they gain (about 20 ms per call measured on
    2 busy cores). An ``OMP_NUM_THREADS`` already set by the user is kept.

    MLflow starts the server as ``uvicorn`` found on ``PATH``; the folder of this interpreter is put
    first on ``PATH`` so that the project's own environment is used even when it is not activated
    (``.venv/bin/car-relapse serve``, ``make`` targets, CI).
    """
    interpreter_bin = os.path.dirname(sys.executable)
    path = os.pathsep.join([interpreter_bin, os.environ.get("PATH", "")])
    return {"OMP_NUM_THREADS": "1", **os.environ, "PATH": path, "MLFLOW_TRACKING_URI": tracking_uri}


def example_curl(host: str, port: int) -> str:
    """A ready-to-paste curl request scoring the made-up example patient."""
    body = json.dumps({"inputs": [EXAMPLE_PATIENT]})
    return (
        f"curl -s http://{host}:{port}/invocations -H 'Content-Type: application/json' "
        f"-d '{body}'"
    )


def check_model_uri(model_uri: str, tracking_uri: str) -> None:
    """Fail early, with a readable message, when ``model_uri`` does not resolve.

    Raises
    ------
    ServeError
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not model_uri.startswith("models:/"):
        return
    name, _, ref = model_uri[len("models:/"):].partition("@")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if ref:
            client.get_model_version_by_alias(name, ref)
        else:
            client.get_registered_model(name.split("/")[0])
    except MlflowException:
        raise ServeError(
            f"no model '{model_uri}' in the registry at {tracking_uri}; run `car-relapse train` "
            "first (a model is registered only when it passes the configured thresholds)"
        ) from None


def run_serve(
    model_uri: str,
    host: str = "127.0.0.1",
    port: int = 5001,
    tracking_uri: Optional[str] = None,
    workers: int = DEFAULT_WORKERS,
) -> None:
    """Serve ``model_uri`` with MLflow's scoring server until interrupted.

    Parameters
    ----------
    model_uri : str
        E.g. ``models:/car-relapse@champion``.
    host : str
        Bind address; 127.0.0.1 (localhost only) by default.
    port : int
        TCP port.
    tracking_uri : str, optional
        Registry to resolve ``models:/`` URIs in (default: see ``pipelines.tracking``).
    workers : int
        Uvicorn worker processes (each loads the model; concurrent requests within one are
        scored together).
    """
    import typer

    uri = resolve_tracking_uri(tracking_uri)
    try:
        init_store(uri)
        check_model_uri(model_uri, uri)
    except (ServeError, TrackingError) as exc:
        _console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from None
    _console.print(f"Serving [bold]{model_uri}[/bold] from {uri}")
    _console.print(f"URL: http://{host}:{port}/invocations  (health: http://{host}:{port}/ping)")
    _console.print("Example request:", style="bold")
    print(example_curl(host, port))
    env = serve_environment(uri)
    try:
        completed = subprocess.run(serve_command(model_uri, host, port, workers), env=env, check=False)
    except KeyboardInterrupt:
        return
    if completed.returncode not in (0, -2, 130):
        raise typer.Exit(code=completed.returncode)
