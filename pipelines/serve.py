"""``car-relapse serve``: MLflow's scoring server for the champion model, on localhost.

The server is MLflow's own scoring app (``mlflow.pyfunc.scoring_server.app:app``, what
``mlflow models serve -m <model URI> --env-manager local`` runs: the model is loaded into the
current environment, nothing is installed) under uvicorn, bound to 127.0.0.1 unless told otherwise,
after checking that the model URI resolves so that a missing champion is a clear message rather
than a server that dies while starting.

Why not ``mlflow models serve`` itself: with ``--workers`` > 1, uvicorn (0.54, the newest) binds its
listening socket with ``proto=0``; accepted connections inherit it, asyncio then leaves Nagle's
algorithm on, and every keep-alive response waits about 40 ms for the client's delayed ACK
(uvicorn issue #3149, open). :func:`main` (``python -m pipelines.serve``) starts the same app with
the same workers on a listening socket created with ``IPPROTO_TCP`` and ``TCP_NODELAY``, and deals
the connections out to the workers in turn (uvicorn leaves that to the kernel, which split 8
keep-alive clients 6/2 or 7/1 as often as 4/4). ``mlflow models serve`` still serves the model
(the end-to-end test checks it), only slower with several workers.

MLflow's app publishes an OpenAPI document (``/openapi.json``) that says nothing of the body of
``POST /invocations``. The launcher fills it in from the JSON Schema the model carries
(``artifacts/request_schema.json``, ``models.request_schema``): the body formats, each patient record
with its types, allowed values and ranges (:func:`openapi_with_request_schema`). It changes the
document only, not how requests are parsed.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import socket
import sys
import time

from rich.console import Console

from pipelines.tracking import TrackingError, init_store, resolve_tracking_uri

__all__ = [
    "DEFAULT_WORKERS", "ServeError", "serve_command", "mlflow_serve_command", "tcp_listener", "serve_environment",
    "example_curl", "check_model_uri", "openapi_with_request_schema", "run_serve", "main",
]

_console = Console(soft_wrap=True, highlight=False)


class ServeError(RuntimeError):
    """The model cannot be served (unknown model or alias, unreachable store)."""


DEFAULT_WORKERS = 2
"""Uvicorn worker processes: measured on 2 cores, 2 workers serve about 1.5x the requests/s of 1."""


def serve_command(
    model_uri: str, host: str = "127.0.0.1", port: int = 5001, workers: int = DEFAULT_WORKERS
) -> list[str]:
    """The command that serves ``model_uri`` with MLflow's scoring app (see :func:`main`)."""
    return [
        sys.executable, "-m", "pipelines.serve",
        "--model", model_uri, "--host", host, "--port", str(port), "--workers", str(workers),
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


def _local_model_path(model_uri: str) -> str:
    """The model's files on this machine (downloaded from the store when needed), as MLflow does."""
    from mlflow.artifacts import download_artifacts

    return download_artifacts(artifact_uri=model_uri)


_APP = "mlflow.pyfunc.scoring_server.app:app"
_REQUEST_SCHEMA_FILE = os.path.join("artifacts", "request_schema.json")
_SCHEMA_PREFIX = "CarRelapse"


def _component_refs(schema, names: dict[str, str]):
    """``schema`` with ``#/$defs/x`` references pointing at the OpenAPI components ``names[x]``."""
    if isinstance(schema, dict):
        return {key: (f"#/components/schemas/{names[value.removeprefix('#/$defs/')]}"
                      if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/")
                      else _component_refs(value, names)) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_component_refs(item, names) for item in schema]
    return schema


def openapi_with_request_schema(openapi: dict, request_schema: dict) -> dict:
    """The app's OpenAPI document with the request body of ``POST /invocations`` described.

    Parameters
    ----------
    openapi : dict
        The document FastAPI generates for MLflow's scoring app (OpenAPI 3.1).
    request_schema : dict
        The model's JSON Schema of one patient (``models.request_schema.request_json_schema``).

    Returns
    -------
    dict
        A copy whose components hold the patient and measurement schemas and whose
        ``/invocations`` POST has a JSON request body: ``inputs`` or ``dataframe_records`` (patient
        records), ``dataframe_split``, ``instances``, and ``params.on_error``.
    """
    names = {name: f"{_SCHEMA_PREFIX}{''.join(part.title() for part in name.split('_'))}"
             for name in request_schema.get("$defs", {})}
    patient = {key: value for key, value in request_schema.items() if key not in ("$schema", "$id", "$defs")}
    components = {f"{_SCHEMA_PREFIX}Patient": _component_refs(patient, names),
                  **{names[name]: _component_refs(value, names) for name, value in request_schema.get("$defs", {}).items()}}
    records = {"type": "array", "items": {"$ref": f"#/components/schemas/{_SCHEMA_PREFIX}Patient"}}
    body = {"type": "object", "minProperties": 1, "properties": {
        "inputs": records, "dataframe_records": records,
        "dataframe_split": {"type": "object", "description": "columns and rows of patient records"},
        "instances": {"type": "array", "description": "patient records, measurements in column form"},
        "params": {"type": "object", "properties": {"on_error": {"enum": ["quarantine", "fail"]}}},
    }}
    document = json.loads(json.dumps(openapi))
    document.setdefault("components", {}).setdefault("schemas", {}).update(components)
    post = document.setdefault("paths", {}).setdefault("/invocations", {}).setdefault("post", {})
    post["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return document


def _describe_invocations(app, model_path: str) -> None:
    """Fill in the app's OpenAPI document from the model's request schema (models logged without one: unchanged)."""
    schema_file = os.path.join(model_path, _REQUEST_SCHEMA_FILE)
    if os.path.isfile(schema_file):
        with open(schema_file, encoding="utf-8") as handle:
            app.openapi_schema = openapi_with_request_schema(app.openapi(), json.load(handle))


def _exit_with_parent(parent_pid: int, interval_s: float = 1.0) -> None:
    """Stop this worker (SIGTERM to itself) once its launcher is gone: no orphaned server."""
    import signal
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


_READY = b"r"
"""Sent by a worker on its channel once it serves: the launcher deals connections only then."""


def _serve_connection(server, loop, protocol_factory, connection: socket.socket) -> None:
    """On the event loop: serve one handed-over connection with the server's HTTP protocol
    (closed at once if the server is shutting down, as its own listeners would refuse it)."""
    if server.should_exit:
        connection.close()
        return
    task = loop.create_task(loop.connect_accepted_socket(protocol_factory, sock=connection))
    _CONNECTION_TASKS.add(task)

    def done(finished) -> None:
        _CONNECTION_TASKS.discard(finished)
        if not finished.cancelled() and finished.exception() is not None:  # e.g. reset before it started
            connection.close()

    task.add_done_callback(done)


_CONNECTION_TASKS: set = set()


def _receive_connections(channel: socket.socket, loop, protocol_factory, server) -> None:
    """Worker thread: take each connection the launcher hands over and pass it to the event loop.

    Ends when the channel does (the launcher is gone, or :func:`_handed_connections_server` shuts
    it at shutdown). A message whose socket did not arrive (this process out of file
    descriptors: the kernel drops it) is logged and skipped; the client sees its connection closed.
    """
    import logging

    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, 1, 1)
        except OSError:
            return
        if not message and not fds:
            return  # end of the channel
        if not fds:
            logging.getLogger("uvicorn.error").warning("a connection handed over by the launcher was lost "
                                                       "(out of file descriptors?)")
            continue
        connection = socket.socket(fileno=fds[0])
        try:
            loop.call_soon_threadsafe(_serve_connection, server, loop, protocol_factory, connection)
        except RuntimeError:  # the event loop has closed: the server is shutting down
            connection.close()
            return


def _handed_connections_server(config, channel: socket.socket):
    """A uvicorn server without a listener of its own: its connections arrive over ``channel``.

    It serves them exactly as it serves the connections of its own listeners: with the HTTP
    protocol object uvicorn builds for those (same arguments), tracked for a graceful shutdown.
    Once started it tells the launcher it is ready; at shutdown it stops taking connections.
    """
    import asyncio
    import threading

    import uvicorn

    class HandedConnectionsServer(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=[])

            def protocol_factory():
                return self.config.http_protocol_class(
                    config=self.config, server_state=self.server_state, app_state=self.lifespan.state
                )

            threading.Thread(target=_receive_connections,
                             args=(channel, asyncio.get_running_loop(), protocol_factory, self),
                             name="receive-connections", daemon=True).start()
            channel.sendall(_READY)

        async def shutdown(self, sockets=None) -> None:
            try:
                channel.shutdown(socket.SHUT_RD)  # ends the receive thread: no new connection
            except OSError:
                pass
            await super().shutdown(sockets=sockets)

    return HandedConnectionsServer(config)


def _run_worker(model_path: str, host: str, port: int, channel: socket.socket | None = None,
                parent_pid: int | None = None) -> None:
    """One server process: MLflow's scoring app, on its own listener or on connections handed over.

    The model runs with the code it was logged with (its ``features``/``models`` copies, put on
    ``sys.path`` by MLflow), as under ``mlflow models serve``: this module imports neither package
    before the model loads.

    The app module loads the model when imported; it is imported here, before uvicorn starts, so
    that everything loaded can then be frozen out of the garbage collector's reach
    (``gc.freeze``: a full collection over the ~320,000 loaded objects took 130 ms, a pause for
    every request in flight). Only server processes do this, not every process loading the model.
    """
    import gc
    import importlib

    import uvicorn
    from mlflow.pyfunc import scoring_server

    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    listener = tcp_listener(host, port) if channel is None else None
    os.environ[scoring_server._SERVER_MODEL_PATH] = model_path  # read by MLflow's app module
    app_module = importlib.import_module(_APP.split(":")[0])
    _describe_invocations(app_module.app, model_path)
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(_APP, host=host, port=port)
    if listener is not None:
        uvicorn.Server(config).run(sockets=[listener])
    else:
        assert channel is not None  # one of the two, by the caller
        _handed_connections_server(config, channel).run()


_TRANSIENT_ACCEPT_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _hand_out_connections(listener: socket.socket, channels: list[socket.socket], stopping) -> None:
    """Launcher thread: once every worker is ready, accept each connection and hand it to the next
    worker in turn, until ``stopping`` (a ``threading.Event``) is set.

    Until then connections wait in the listener's backlog. A failed ``accept`` (a connection reset
    while queued, or this process out of file descriptors for a moment) is skipped, not fatal.
    """
    for channel in channels:
        if channel.recv(1) != _READY:
            return  # that worker is gone before serving: the launcher is stopping everything
    for channel in itertools.cycle(channels):
        while not stopping.is_set():
            try:
                connection, _ = listener.accept()
                break
            except OSError as exc:
                if exc.errno in _TRANSIENT_ACCEPT_ERRORS:
                    time.sleep(0.05)
        else:
            return
        with connection:
            try:
                socket.send_fds(channel, [b"c"], [connection.fileno()])
            except OSError:
                pass  # that worker is gone: the launcher is stopping everything


def _launcher_exit_code(worker_exit_code: int | None) -> int:
    """The launcher's exit code for a worker's: a worker killed by signal N (``exitcode`` -N) gives
    128 + N, as a shell reports a killed process (a negative code would leave the process as 256 - N)."""
    code = worker_exit_code or 0
    return 128 - code if code < 0 else code


def _run_workers(host: str, port: int, model_path: str, n_workers: int) -> int:
    """Run ``n_workers`` server processes; the launcher accepts the connections and deals them out.

    Round robin: with 8 keep-alive clients and 2 workers, each worker serves 4. Left to the
    kernel, the split was uneven: one shared listener gave most of a burst to whichever worker
    woke first (6-7 of 8 typical), one ``SO_REUSEPORT`` listener per worker hashed connections
    to workers at random (4/4 to 7/1 seen), and the fuller worker set the latency.
    Stops every worker when one exits or on SIGTERM / SIGINT; returns the first exit code.
    """
    import multiprocessing
    import signal
    import threading
    from multiprocessing.connection import wait

    listener = tcp_listener(host, port)
    listener.listen(2048)
    pairs = [socket.socketpair() for _ in range(n_workers)]
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_run_worker, args=(model_path, host, port, theirs, os.getpid()))
               for _, theirs in pairs]
    for worker in workers:
        worker.start()
    for _, theirs in pairs:
        theirs.close()
    stopping = threading.Event()
    threading.Thread(target=_hand_out_connections, args=(listener, [ours for ours, _ in pairs], stopping),
                     name="hand-out-connections", daemon=True).start()
    stopped_by_signal = []

    def stop(signum=None, frame=None) -> None:
        if signum is not None:
            stopped_by_signal.append(signum)
        if not stopping.is_set():  # no new connection from now on (shutdown wakes a blocked accept)
            stopping.set()
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for worker in workers:
            if worker.is_alive():
                worker.terminate()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        finished = wait([worker.sentinel for worker in workers])
        stop()
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
                worker.join()
        first = next(worker for worker in workers if worker.sentinel in finished)
        return 0 if stopped_by_signal else _launcher_exit_code(first.exitcode)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        listener.close()


def main(argv: list[str] | None = None) -> int:
    """Run MLflow's scoring app for a model under uvicorn, Nagle off (:func:`tcp_listener`).

    Usage: ``python -m pipelines.serve --model URI [--host H] [--port P] [--workers N]``; the
    tracking store comes from ``MLFLOW_TRACKING_URI`` (see :func:`serve_environment`). With N > 1
    the workers are separate processes and this one deals the connections out (:func:`_run_workers`).
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipelines.serve", description=main.__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    args = parser.parse_args(argv)
    from mlflow.exceptions import MlflowException

    try:  # fails if anything already listens on the port: one line, not a traceback
        tcp_listener(args.host, args.port).close()
        model_path = _local_model_path(args.model)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except MlflowException as exc:
        print(f"error: cannot load model {args.model!r}: {exc.message}", file=sys.stderr)
        return 1
    if args.workers > 1:
        return _run_workers(args.host, args.port, model_path, args.workers)
    _run_worker(model_path, args.host, args.port)
    return 0


def serve_environment(tracking_uri: str) -> dict[str, str]:
    """Environment of the scoring server: the tracking store, and one OpenMP thread per process.

    Each request scores a few patients; on a small shared machine OpenMP thread pools (XGBoost)
    cost far more in start-up and contention than they gain (about 20 ms per call measured on
    2 busy cores). An ``OMP_NUM_THREADS`` already set by the user is kept.

    ``mlflow models serve`` (:func:`mlflow_serve_command`) starts ``uvicorn`` found on ``PATH``; the
    folder of this interpreter is put first on ``PATH`` so that the project's own environment is
    used even when it is not activated (``.venv/bin/car-relapse serve``, ``make`` targets, CI).
    """
    interpreter_bin = os.path.dirname(sys.executable)
    path = os.pathsep.join([interpreter_bin, os.environ.get("PATH", "")])
    return {"OMP_NUM_THREADS": "1", **os.environ, "PATH": path, "MLFLOW_TRACKING_URI": tracking_uri}


def example_curl(host: str, port: int) -> str:
    """A ready-to-paste curl request scoring the made-up example patient."""
    from models.serving import EXAMPLE_PATIENT

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
    tracking_uri: str | None = None,
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
    from rich.markup import escape

    from pipelines.validate import EXIT_BAD_INPUT, EXIT_FAILED

    uri = resolve_tracking_uri(tracking_uri)
    try:
        init_store(uri)
        check_model_uri(model_uri, uri)
    except ServeError as exc:  # no such model: bad input
        _console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    except TrackingError as exc:
        _console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(code=EXIT_FAILED) from None
    _console.print(f"Serving [bold]{model_uri}[/bold] from {uri}")
    _console.print(f"URL: http://{host}:{port}/invocations  (health: http://{host}:{port}/ping)")
    _console.print("Example request:", style="bold")
    print(example_curl(host, port))
    sys.stdout.flush()
    command = serve_command(model_uri, host, port, workers)
    os.execve(command[0], command, serve_environment(uri))  # the launcher takes this process: signals reach it


if __name__ == "__main__":
    sys.exit(main())
