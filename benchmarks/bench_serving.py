"""Serving latency: single-patient requests to the real scoring server under 8 concurrent clients.

Run: ``python -m benchmarks.bench_serving [--requests 800] [--clients 8] [--workers 2] [--repeats 3]
[--model URI --tracking-uri URI] [--baseline-server mlflow|CHECKOUT] [--baseline-model URI
--baseline-tracking-uri URI]``. Without
``--model``, the benchmark model of ``benchmarks.bench_scoring`` is trained and registered first in
a temporary store (not timed). The server is started exactly as ``car-relapse serve`` starts it
(MLflow's scoring app, 2 workers, 127.0.0.1, a free port), warmed up, then the clients send a
bounded number of requests, each one patient (distinct simulated patients, as of day 91), over
keep-alive connections. The measurement is repeated on fresh connections (each repeat is printed, then all requests
pooled); the workers share one listening socket, so the kernel splits the connections between them (not always evenly).
Each line also gives the server's CPU time per request (launcher and workers, from /proc on
Linux): on a shared machine that runs slower at times, the same requests then cost more CPU. The
server is stopped at the end. Targets: median < 50 ms, p99 < 200 ms.

Comparing two servers: ``--baseline-model URI [--baseline-tracking-uri URI]`` serves a second
model beside the first (each runs the code logged with it), ``--baseline-server`` says what serves
it: this checkout's ``car-relapse serve`` (default), ``mlflow`` (plain ``mlflow models serve
--workers N --env-manager local``) or the path of another checkout (its own ``pipelines.serve``, e.g.
an older commit checked out with ``git worktree add``); the baseline model defaults to the model.
Both are measured in turn, repeat by repeat, alternating which goes first; it prints both and the
ratio of their server CPU per request in each repeat. On a machine whose speed drifts, separate runs
minutes apart are not comparable; paired repeats are.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

__all__ = ["request_bodies", "server_command", "start_server", "stop_server", "run_clients", "server_cpu_seconds",
           "machine_load", "main"]


def request_bodies(n_patients: int, as_of_day: float = 91.0, seed: int = 77) -> list[bytes]:
    """One JSON body per simulated patient: ``{"inputs": [record]}``."""
    from models.serving import tables_to_records
    from pipelines.simulate import simulate_cohort

    cohort = simulate_cohort(n_patients, seed)
    records = tables_to_records(cohort.infusions, cohort.measurements, as_of_day)
    return [json.dumps({"inputs": [record]}).encode() for record in records]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_command(server: str, model_uri: str, port: int, workers: int) -> tuple[list[str], dict[str, str]]:
    """Command and extra environment of a scoring server: ``project`` (``car-relapse serve``'s
    launcher), ``mlflow`` (``mlflow models serve``) or the path of another checkout (its launcher)."""
    from pipelines.serve import mlflow_serve_command, serve_command

    if server == "project":
        return serve_command(model_uri, "127.0.0.1", port, workers), {}
    if server == "mlflow":
        return mlflow_serve_command(model_uri, "127.0.0.1", port, workers), {}
    checkout = str(Path(server).resolve())
    command = [sys.executable, "-m", "pipelines.serve", "--model", model_uri, "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers)]
    return command, {"PYTHONPATH": checkout}


def start_server(model_uri: str, tracking_uri: str | None, workers: int, log: Path,
                 server: str = "project") -> tuple[subprocess.Popen, int]:
    """Start a scoring server (own process group, see :func:`server_command`) and wait for ``/ping``."""
    from pipelines.serve import serve_environment
    from pipelines.tracking import resolve_tracking_uri

    port = _free_port()
    command, extra = server_command(server, model_uri, port, workers)
    env = {**serve_environment(resolve_tracking_uri(tracking_uri)), **extra}
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, env=env, cwd=extra.get("PYTHONPATH"), stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return process, port
        except OSError:
            time.sleep(0.5)
    stop_server(process)
    raise RuntimeError(f"scoring server did not start: {log.read_text()[-2000:]}")


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group; SIGKILL if it has not stopped after 30 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def machine_load() -> str:
    """The 1-minute load average and the cores, for the record (the machine may be shared)."""
    try:
        return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    except OSError:
        return "load average unknown"


def _client(port: int, bodies: list[bytes], counter, n_requests: int, latencies: list, errors: list,
            keep_alive: bool = True) -> None:
    """One client: a request at a time, over one keep-alive connection or a new connection each."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json", **({} if keep_alive else {"Connection": "close"})}
    while (index := next(counter)) < n_requests:
        start = time.perf_counter()
        connection.request("POST", "/invocations", body=bodies[index % len(bodies)], headers=headers)
        response = connection.getresponse()
        response.read()
        latencies.append(time.perf_counter() - start)
        if response.status != 200:
            errors.append(response.status)
        if not keep_alive:
            connection.close()
    connection.close()


def run_clients(port: int, bodies: list[bytes], n_requests: int, n_clients: int,
                keep_alive: bool = True) -> tuple[np.ndarray, list, float]:
    """Send ``n_requests`` from ``n_clients`` threads; return latencies (s), error codes, wall time."""
    counter, latencies, errors = itertools.count(), list[float](), list[int]()
    threads = [threading.Thread(target=_client, args=(port, bodies, counter, n_requests, latencies, errors, keep_alive))
               for _ in range(n_clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return np.asarray(latencies), errors, time.perf_counter() - start


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (``mlflow models serve`` runs uvicorn, which runs the workers)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            queue += [int(child) for child in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            continue
    return found


def server_cpu_seconds(root_pid: int) -> float | None:
    """CPU time (user + system, s) used so far by the server: the launcher and every process below it.

    Read from /proc (Linux); None elsewhere. The CPU per request tells a slower machine (the same
    requests cost more CPU) from queueing (they cost the same but wait longer).
    """
    if not Path(f"/proc/{root_pid}/stat").is_file():
        return None
    total = 0.0
    for pid in _descendants(root_pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _measure(port: int, bodies: list[bytes], n_requests: int, n_clients: int, server_pid: int):
    """One measurement on fresh connections: latencies, errors, wall time, server CPU s/request (or None)."""
    cpu_before = server_cpu_seconds(server_pid)
    latencies, errors, wall = run_clients(port, bodies, n_requests, n_clients)
    cpu_after = server_cpu_seconds(server_pid)
    cpu_per_request = None if cpu_before is None or cpu_after is None else (cpu_after - cpu_before) / n_requests
    return latencies, errors, wall, cpu_per_request


def _figures(ms: np.ndarray, errors: list, wall_s: float, cpu_s: list) -> str:
    measured = cpu_s and all(value is not None for value in cpu_s)
    cpu = f", server CPU {1000 * np.mean(cpu_s):.1f} ms/request" if measured else ""
    return (f"median {np.median(ms):.1f} ms, p90 {np.percentile(ms, 90):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, "
            f"max {ms.max():.1f} ms, {len(ms) / wall_s:.1f} requests/s, {len(errors)} errors{cpu}")


def _pooled(runs: list) -> str:
    """Figures of several measurements pooled."""
    pooled = np.concatenate([run[0] for run in runs]) * 1000.0
    return _figures(pooled, sum((run[1] for run in runs), []), sum(run[2] for run in runs), [run[3] for run in runs])


def _measure_in_turn(servers: dict, bodies: list[bytes], n_requests: int, n_clients: int, repeats: int) -> dict:
    """Measure each server once per repeat, alternating which goes first; ``{name: [run, ...]}``."""
    runs: dict[str, list] = {name: [] for name in servers}
    names = list(servers)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            process, port = servers[name]
            runs[name].append(_measure(port, bodies, n_requests, n_clients, process.pid))
    return runs


def main(argv: list[str] | None = None) -> int:
    """Prepare, start the server(s), warm up, measure, stop; print the figures."""
    from benchmarks.bench_scoring import model_or_trained
    from pipelines.serve import DEFAULT_WORKERS
    from pipelines.tracking import quiet_mlflow

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="Uvicorn worker processes.")
    parser.add_argument("--patients", type=int, default=200, help="Distinct patients the requests cycle over.")
    parser.add_argument("--repeats", type=int, default=3, help="Measurements, each on fresh connections.")
    parser.add_argument("--model", default=None)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--baseline-model", default=None,
                        help="Also serve this model (e.g. one registered by an older checkout: it runs its own "
                             "logged code) and measure the two in turn, repeat by repeat, for a paired comparison.")
    parser.add_argument("--baseline-tracking-uri", default=None)
    parser.add_argument("--baseline-server", default=None,
                        help="What serves the baseline: 'project' (this checkout, the default), 'mlflow' (plain "
                             "mlflow models serve) or the path of another checkout; implies a baseline (the same "
                             "model unless --baseline-model).")
    args = parser.parse_args(argv)
    quiet_mlflow()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        models = {"model": (*model_or_trained(folder, args.model, args.tracking_uri), "project")}
        if args.baseline_model or args.baseline_server:
            same_model = args.baseline_model is None
            models["baseline"] = (models["model"][0] if same_model else args.baseline_model,
                                  args.baseline_tracking_uri or (models["model"][1] if same_model else args.tracking_uri),
                                  args.baseline_server or "project")
        bodies = request_bodies(args.patients)
        servers = {}
        try:
            for name, (model_uri, tracking_uri, server) in models.items():
                servers[name] = start_server(model_uri, tracking_uri, args.workers, folder / f"{name}.log", server)
            for _, port in servers.values():
                for _ in range(3):  # warm-up, on fresh connections each time (they reach every worker)
                    run_clients(port, bodies, 2 * args.clients, args.clients)
            print(f"measuring ({machine_load()})")
            runs = _measure_in_turn(servers, bodies, args.requests, args.clients, args.repeats)
            print(f"measured ({machine_load()})")
        finally:
            for process, _ in servers.values():
                stop_server(process)
    label = {name: f"{model_uri} in {tracking_uri}, served by {server}" for name, (model_uri, tracking_uri, server)
             in models.items()}
    for name, measured in runs.items():
        prefix = f"{name} ({label[name]}) " if len(runs) > 1 else ""
        for number, (latencies, errors, wall, cpu) in enumerate(measured, start=1):
            print(f"{prefix}repeat {number}: {_figures(latencies * 1000.0, errors, wall, [cpu])}")
        print(f"{prefix}serving, {args.clients} clients, {args.workers} worker(s), {args.repeats} x {args.requests} "
              f"single-patient requests: {_pooled(measured)}; targets: median < 50 ms, p99 < 200 ms")
    if len(runs) > 1 and all(run[3] is not None for measured in runs.values() for run in measured):
        ratios = [model[3] / baseline[3] for model, baseline in zip(runs["model"], runs["baseline"])]
        print(f"server CPU per request, model / baseline, repeat by repeat: {', '.join(f'{r:.3f}' for r in ratios)} "
              f"(mean {np.mean(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
