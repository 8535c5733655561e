"""``car-relapse serve``: MLflow's scoring server for the champion model, on localhost.

The server is MLflow's own scoring app (``mlflow.pyfunc.scoring_server.init``, what
``mlflow models serve -m <model URI> --env-manager local`` runs: the model is loaded into the current
environment, nothing is installed) behind :class:`pipelines.serve_app.RequestGuard` (request limits,
4xx for bad input, error answers without stack traces or patient values), run by uvicorn through its
public API (``uvicorn.Server(config).run(sockets=[listener])``) in worker processes that share one
listening socket. The launcher (:func:`main`, ``python -m pipelines.serve``) binds that socket, starts
the workers, logs which worker died and why and starts a new one, and stops them all on SIGTERM /
SIGINT. It binds to 127.0.0.1 unless told otherwise and warns on any other address.

Why not ``mlflow models serve`` itself: with ``--workers`` > 1, uvicorn (0.54, the newest) binds its
listening socket with ``proto=0``; accepted connections inherit it, asyncio then leaves Nagle's
algorithm on, and every keep-alive answer waits about 40 ms for the client's delayed ACK (uvicorn
issue #3149, open). The listener here is created with ``IPPROTO_TCP`` and ``TCP_NODELAY``. Measured
side by side (``benchmarks.bench_serving --baseline-server mlflow``, busy 2-core machine), plain
``mlflow models serve --workers 2`` had 1.1 to 2.4 times this server's median latency and used a
third more CPU per request; it still serves the model (the end-to-end test checks it).

The workers share the listener, so the kernel gives each new connection to whichever worker
accepts first: a burst of keep-alive clients can be split unevenly (8 clients: 2/6 or 3/5 was
typical), and the fuller worker sets the latency. The former launcher accepted the connections
itself and dealt them out in turn, which needs uvicorn's internal protocol objects (uvicorn has
no public way to serve an accepted connection); measured side by side with it, the median was
about 1.7 times its median with 2 workers and the same with 1.

MLflow's app publishes an OpenAPI document (``/openapi.json``) that says nothing of the body of
``POST /invocations``; the served app fills it in from the JSON Schema the model carries
(:func:`pipelines.serve_app.openapi_with_request_schema`). It changes the document only, not how
requests are parsed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shlex
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from pipelines.tracking import TrackingError, init_store, resolve_tracking_uri

if TYPE_CHECKING:  # the app module is imported by the server processes only
    from pipelines.serve_app import RequestLimits

__all__ = [
    "DEFAULT_WORKERS", "DEFAULT_MAX_REQUEST_BYTES", "DEFAULT_MAX_PATIENTS", "ServeError", "serve_command",
    "mlflow_serve_command", "tcp_listener", "bind_warning", "serve_environment", "example_curl", "check_model_uri",
    "run_serve", "main",
]

_console = Console(soft_wrap=True, highlight=False)
_stderr = Console(stderr=True, soft_wrap=True, highlight=False)
_logger = logging.getLogger("car_relapse.serve")


class ServeError(RuntimeError):
    """The model cannot be served (unknown model or alias, unreachable store)."""


DEFAULT_WORKERS = 2
"""Uvicorn worker processes: measured on 2 cores, 2 workers serve about 1.5x the requests/s of 1."""
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
"""Largest request body: about 1,000 patients with 50 measurements each."""
DEFAULT_MAX_PATIENTS = 1000
"""Most patients per request: 10,000 took 6 s and 170 MB more per worker; 1,000 take well under a second."""


def serve_command(
    model_uri: str, host: str = "127.0.0.1", port: int = 5001, workers: int = DEFAULT_WORKERS,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, max_patients: int = DEFAULT_MAX_PATIENTS,
) -> list[str]:
    """The command that serves ``model_uri`` with MLflow's scoring app (see :func:`main`)."""
    return [
        sys.executable, "-m", "pipelines.serve",
        "--model", model_uri, "--host", host, "--port", str(port), "--workers", str(workers),
        "--max-request-bytes", str(max_request_bytes), "--max-patients", str(max_patients),
    ]


def mlflow_serve_command(
    model_uri: str, host: str = "127.0.0.1", port: int = 5001, workers: int = 1
) -> list[str]:
    """The equivalent ``mlflow models serve`` command line (run with this interpreter's MLflow)."""
    return [
        sys.executable, "-m", "mlflow", "models", "serve",
        "-m", model_uri, "--env-manager", "local",
        "--host", host, "--port", str(port), "--workers", str(workers),
    ]


def tcp_listener(host: str, port: int) -> socket.socket:
    """A bound TCP listening socket whose connections have Nagle's algorithm off.

    ``IPPROTO_TCP`` makes asyncio set ``TCP_NODELAY`` on each accepted connection (it checks the
    socket's protocol); the option is also set on the listener, which Linux copies to accepted
    connections.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        listener.bind((host, port))
    except OSError:
        listener.close()
        raise
    return listener


def bind_warning(host: str) -> str | None:
    """A warning when ``host`` is not a loopback address (``localhost``, 127.0.0.0/8, ::1), else None."""
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (f"--host {host} makes the server reachable from other machines, with no authentication and no "
            "encryption: anyone who can reach the port can send patient data and read risk scores. Keep the "
            "default 127.0.0.1 and put an authenticating reverse proxy in front (docs/usage.md, "
            "'Serving beyond this machine').")


def _local_model_path(model_uri: str) -> str:
    """The model's files on this machine (downloaded from the store when needed), as MLflow does."""
    from mlflow.artifacts import download_artifacts

    return download_artifacts(artifact_uri=model_uri)


def _exit_with_parent(parent_pid: int, interval_s: float = 1.0) -> None:
    """Stop this worker (SIGTERM to itself) once its launcher is gone: no orphaned server."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run_worker(model_path: str, listener: socket.socket, limits: RequestLimits, parent_pid: int, ready: Any) -> None:
    """One server process: the guarded scoring app under uvicorn, on the shared listener.

    The model runs with the code it was logged with (its ``features``/``models`` copies, put on
    ``sys.path`` by MLflow), as under ``mlflow models serve``: this module imports neither package
    before the model loads. Everything loaded is then frozen out of the garbage collector's reach
    (``gc.freeze``: a full collection over the ~320,000 loaded objects took 130 ms, a pause for
    every request in flight). ``ready`` (the sending end of a pipe) gets a message once the model is
    loaded.
    """
    import gc

    import uvicorn

    from pipelines.serve_app import scoring_app

    _exit_with_parent(parent_pid)
    app = scoring_app(model_path, limits)
    gc.collect()
    gc.freeze()
    ready.send(True)
    ready.close()
    host, port = listener.getsockname()[:2]
    uvicorn.Server(uvicorn.Config(app, host=host, port=port)).run(sockets=[listener])


def _exit_description(exit_code: int | None) -> str:
    if exit_code is not None and exit_code < 0:
        return f"was killed by signal {-exit_code} ({signal.Signals(-exit_code).name})"
    return f"exited with code {exit_code}"


def _launcher_exit_code(worker_exit_code: int | None) -> int:
    """The launcher's exit code for a worker's: a worker killed by signal N (``exitcode`` -N) gives
    128 + N, as a shell reports a killed process (a negative code would leave the process as 256 - N)."""
    code = worker_exit_code or 0
    return 128 - code if code < 0 else code


class _Workers:
    """The worker processes (spawned, numbered from 1) on one listener; see :func:`_run_workers`."""

    def __init__(self, listener: socket.socket, model_path: str, limits: RequestLimits):
        import multiprocessing

        self._context = multiprocessing.get_context("spawn")
        self._args = (model_path, listener, limits, os.getpid())
        self.processes: dict[int, Any] = {}
        self._ready: dict[int, Any] = {}

    def start(self, number: int) -> None:
        if number in self._ready:
            self._ready[number].close()
        self._ready[number], ready = self._context.Pipe(duplex=False)
        process = self._context.Process(target=_run_worker, args=(*self._args, ready),
                                        name=f"car-relapse-serve-worker-{number}")
        process.start()
        ready.close()
        self.processes[number] = process

    def was_ready(self, number: int) -> bool:
        """Whether worker ``number`` had loaded its model (call once it has exited)."""
        return self._ready[number].poll()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()

    def join(self, timeout_s: float = 30.0) -> None:
        for process in self.processes.values():
            process.join(timeout=timeout_s)
            if process.is_alive():
                process.kill()
                process.join()


def _run_workers(listener: socket.socket, model_path: str, limits: RequestLimits, n_workers: int) -> int:
    """Run ``n_workers`` server processes on ``listener`` until SIGTERM / SIGINT (exit code 0).

    A worker that dies after its model loaded is logged (which worker, which signal or exit code)
    and replaced; one that dies while starting (the model cannot load) stops the server, with the
    worker's exit code (128 + N for signal N).
    """
    from multiprocessing.connection import wait

    workers = _Workers(listener, model_path, limits)
    for number in range(1, n_workers + 1):
        workers.start(number)
    stopping: list[int] = []

    def stop(signum: int, frame: Any = None) -> None:
        stopping.append(signum)
        workers.stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping:
            finished = wait([process.sentinel for process in workers.processes.values()])
            for number, process in list(workers.processes.items()):
                if process.sentinel not in finished or stopping:
                    continue
                process.join()
                what = f"worker {number} (pid {process.pid}) {_exit_description(process.exitcode)}"
                if not workers.was_ready(number):
                    _logger.error("%s while loading the model; stopping the server", what)
                    return _launcher_exit_code(process.exitcode) or 1
                _logger.error("%s; starting a new worker %d", what, number)
                workers.start(number)
        return 0
    finally:
        workers.stop()
        workers.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """Serve a model with MLflow's scoring app under uvicorn, Nagle off (:func:`tcp_listener`).

    Usage: ``python -m pipelines.serve --model URI [--host H] [--port P] [--workers N]
    [--max-request-bytes B] [--max-patients K]``; the tracking store comes from
    ``MLFLOW_TRACKING_URI`` (see :func:`serve_environment`).
    """
    import argparse

    from mlflow.exceptions import MlflowException

    from pipelines.serve_app import RequestLimits

    parser = argparse.ArgumentParser(prog="python -m pipelines.serve", description=main.__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    parser.add_argument("--max-patients", type=int, default=DEFAULT_MAX_PATIENTS)
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s:    [launcher] %(message)s", level=logging.INFO)
    if (warning := bind_warning(args.host)) is not None:
        _logger.warning(warning)
    try:  # fails if anything already listens on the port: one line, not a traceback
        listener = tcp_listener(args.host, args.port)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    with listener:
        try:
            model_path = _local_model_path(args.model)
        except (MlflowException, OSError) as exc:
            print(f"error: cannot load model {args.model!r}: {getattr(exc, 'message', exc)}", file=sys.stderr)
            return 1
        listener.listen(2048)
        limits = RequestLimits(max_bytes=args.max_request_bytes, max_patients=args.max_patients)
        return _run_workers(listener, model_path, limits, args.workers)


def serve_environment(tracking_uri: str) -> dict[str, str]:
    """Environment of the scoring server: the tracking store (also the registry that ``models:/``
    URIs resolve in, whatever ``MLFLOW_REGISTRY_URI`` said), and one OpenMP thread per process.

    Each request scores a few patients; on a small shared machine OpenMP thread pools (XGBoost)
    cost far more in start-up and contention than they gain (about 20 ms per call measured on
    2 busy cores). An ``OMP_NUM_THREADS`` already set by the user is kept.

    ``mlflow models serve`` (:func:`mlflow_serve_command`) starts ``uvicorn`` found on ``PATH``; the
    folder of this interpreter is put first on ``PATH`` so that the project's own environment is
    used even when it is not activated (``.venv/bin/car-relapse serve``, ``make`` targets, CI).
    """
    interpreter_bin = os.path.dirname(sys.executable)
    path = os.pathsep.join([interpreter_bin, os.environ.get("PATH", "")])
    return {"OMP_NUM_THREADS": "1", **os.environ, "PATH": path, "MLFLOW_TRACKING_URI": tracking_uri,
            "MLFLOW_REGISTRY_URI": tracking_uri}


def _url(host: str, port: int, path: str) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def example_curl(host: str, port: int) -> str:
    """A ready-to-paste curl request scoring the made-up example patient (every argument shell-quoted)."""
    from models.serving import EXAMPLE_PATIENT

    body = json.dumps({"inputs": [EXAMPLE_PATIENT]})
    return shlex.join(["curl", "-s", _url(host, port, "/invocations"), "-H", "Content-Type: application/json",
                       "-d", body])


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
    tracking_uri: str | None = None,
    workers: int = DEFAULT_WORKERS,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_patients: int = DEFAULT_MAX_PATIENTS,
) -> None:
    """Serve ``model_uri`` with MLflow's scoring server until interrupted.

    Parameters
    ----------
    model_uri : str
        E.g. ``models:/car-relapse@champion``.
    host : str
        Bind address; 127.0.0.1 (localhost only) by default; any other address is warned about.
    port : int
        TCP port.
    tracking_uri : str, optional
        Registry to resolve ``models:/`` URIs in (default: see ``pipelines.tracking``); a read-only
        store is fine.
    workers : int
        Uvicorn worker processes (each loads the model; concurrent requests within one are
        scored together).
    max_request_bytes, max_patients : int
        Request limits: a larger request is answered 413 naming the limit.
    """
    import typer

    from pipelines.validate import EXIT_BAD_INPUT, EXIT_FAILED

    uri = resolve_tracking_uri(tracking_uri)
    try:
        init_store(uri)
        check_model_uri(model_uri, uri)
    except (ServeError, TrackingError) as exc:  # no such model: bad input; the store: the job failed
        _stderr.print(Text("error: ", style="red") + Text(str(exc)))
        raise typer.Exit(code=EXIT_BAD_INPUT if isinstance(exc, ServeError) else EXIT_FAILED) from None
    _console.print(f"Serving {model_uri} from {uri}", markup=False)
    _console.print(f"URL: {_url(host, port, '/invocations')}  (health: {_url(host, port, '/ping')}); "
                   f"at most {max_patients} patients and {max_request_bytes} bytes per request", markup=False)
    _console.print("Example request:", style="bold")
    print(example_curl(host, port))
    sys.stdout.flush()
    command = serve_command(model_uri, host, port, workers, max_request_bytes, max_patients)
    os.execve(command[0], command, serve_environment(uri))  # the launcher takes this process: signals reach it


if __name__ == "__main__":
    sys.exit(main())
