"""Mixed load on the real scoring server: valid, 4xx-class and formerly-500 requests, keep-alive clients.

Run: ``python -m benchmarks.bench_abuse [--clients 16] [--seconds 60] [--workers 2] [--model URI
--tracking-uri URI] [--server project|mlflow|CHECKOUT]``. Without ``--model``, the benchmark model of
``benchmarks.bench_scoring`` is trained and registered first in a temporary store (not timed).
``--server`` says what serves it (see ``benchmarks.bench_serving.server_command``): this checkout's
``car-relapse serve`` (default), plain ``mlflow models serve``, or another checkout.

Each client keeps one connection alive and sends, one at a time until the time is up, requests
drawn (fixed seed per client) from three classes:

- valid (half): one simulated patient as of day 91;
- 4xx-class (a quarter): a missing field, a word for a number, an unknown assay, malformed JSON, a
  CSV content type, two input keys, more patients than the server's limit, a body over its byte limit;
- formerly 500 (a quarter): no ``Content-Type``, JSON nested 5,000 levels deep, a 5,000-digit number.

A request that fails because the server closed or reset the kept-alive connection without saying
so counts as a reset (the client then reconnects); an answer with ``Connection: close`` is followed
by a new connection and counted apart. Targets: zero 5xx answers and zero resets.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["abuse_requests", "post", "main"]

_RESETS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, http.client.RemoteDisconnected)


def abuse_requests(valid_bodies: list[bytes], max_patients: int, max_request_bytes: int) -> dict[str, list]:
    """Request kinds by class: ``{class: [(kind, body, content type or None), ...]}``."""
    from models.serving import EXAMPLE_PATIENT

    patient = dict(EXAMPLE_PATIENT)

    def body(*records: dict) -> bytes:
        return json.dumps({"inputs": list(records)}).encode()

    without = {key: value for key, value in patient.items() if key != "bm_blasts_pct"}
    json_type = "application/json"
    return {
        "valid": [("one patient", b, json_type) for b in valid_bodies],
        "4xx-class": [
            ("missing field", body(without), json_type),
            ("word for a number", body({**patient, "age_years": "eleven"}), json_type),
            ("unknown assay", body({**patient, "measurements": [{**patient["measurements"][0], "assay": "x"}]}), json_type),
            ("malformed JSON", b'{"inputs": [{"patient_id": ', json_type),
            ("CSV content type", b"patient_id\nP1\n", "text/csv"),
            ("two input keys", b'{"inputs": [], "instances": []}', json_type),
            ("too many patients", body(*[{**patient, "patient_id": f"P{i}"} for i in range(max_patients + 1)]), json_type),
            ("body over the byte limit", b'{"inputs": ["' + b"x" * max_request_bytes + b'"]}', json_type),
        ],
        "formerly 500": [
            ("no Content-Type", body(patient), None),
            ("JSON nested 5,000 deep", b"[" * 5000 + b"]" * 5000, json_type),
            ("5,000-digit number", b'{"inputs": [{"age_years": ' + b"9" * 5000 + b"}]}", json_type),
        ],
    }


_WEIGHTS = {"valid": 0.5, "4xx-class": 0.25, "formerly 500": 0.25}


class _Tally:
    """Counts shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answers: collections.Counter = collections.Counter()  # (class, kind, status)
        self.resets: collections.Counter = collections.Counter()  # (class, kind)
        self.announced_closes = 0
        self.valid_latency_s: list[float] = []


def post(connection: http.client.HTTPConnection, body: bytes, content_type: str | None) -> tuple[int, str | None, bytes]:
    """POST ``body`` to /invocations on a kept-alive connection (``Content-Type`` left out when None):
    (status, the answer's ``Connection`` header, the answer)."""
    connection.putrequest("POST", "/invocations")
    if content_type is not None:
        connection.putheader("Content-Type", content_type)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    return response.status, response.getheader("Connection"), response.read()


def _client(port: int, requests: dict[str, list], seed: int, stop_at: float, tally: _Tally) -> None:
    """One client: requests drawn from the classes, one at a time, over a kept-alive connection."""
    chooser = random.Random(seed)
    classes, weights = list(_WEIGHTS), list(_WEIGHTS.values())
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    while time.monotonic() < stop_at:
        group = chooser.choices(classes, weights)[0]
        kind, body, content_type = chooser.choice(requests[group])
        start = time.perf_counter()
        try:
            status, connection_header, _ = post(connection, body, content_type)
        except _RESETS:
            with tally.lock:
                tally.resets[(group, kind)] += 1
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            continue
        elapsed = time.perf_counter() - start
        with tally.lock:
            tally.answers[(group, kind, status)] += 1
            if group == "valid" and status == 200:
                tally.valid_latency_s.append(elapsed)
            if connection_header == "close":
                tally.announced_closes += 1
        if connection_header == "close":
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.close()


def _report(tally: _Tally, seconds: float) -> list[str]:
    lines = [f"{'class':<14} {'request':<26} {'answers by status':<40} resets"]
    kinds = sorted({(g, k) for g, k, _ in tally.answers} | set(tally.resets))
    for group, kind in kinds:
        statuses = {s: n for (g, k, s), n in tally.answers.items() if (g, k) == (group, kind)}
        shown = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
        lines.append(f"{group:<14} {kind:<26} {shown:<40} {tally.resets[(group, kind)]}")
    total = sum(tally.answers.values())
    server_errors = sum(n for (_, _, status), n in tally.answers.items() if status >= 500)
    latency_ms = np.asarray(tally.valid_latency_s) * 1000.0
    lines.append(f"{total} answers in {seconds:.0f} s ({total / seconds:.1f}/s): {server_errors} 5xx, "
                 f"{sum(tally.resets.values())} resets, {tally.announced_closes} announced closes (Connection: close); "
                 "targets: 0 5xx, 0 resets")
    if len(latency_ms):
        lines.append(f"valid requests: {len(latency_ms)} answered 200, median {np.median(latency_ms):.1f} ms, "
                     f"p99 {np.percentile(latency_ms, 99):.1f} ms")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Start the server, run the mixed load, stop; print the tally."""
    from benchmarks.bench_scoring import model_or_trained
    from benchmarks.bench_serving import machine_load, request_bodies, start_server, stop_server
    from pipelines.serve import DEFAULT_MAX_PATIENTS, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_WORKERS
    from pipelines.tracking import quiet_mlflow

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--patients", type=int, default=200, help="Distinct valid patients the requests cycle over.")
    parser.add_argument("--model", default=None)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--server", default="project", help="project, mlflow or the path of another checkout.")
    args = parser.parse_args(argv)
    quiet_mlflow()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        model_uri, tracking_uri = model_or_trained(folder, args.model, args.tracking_uri)
        requests = abuse_requests(request_bodies(args.patients), DEFAULT_MAX_PATIENTS, DEFAULT_MAX_REQUEST_BYTES)
        process, port = start_server(model_uri, tracking_uri, args.workers, folder / "server.log", args.server)
        tally = _Tally()
        try:
            print(f"server: {args.server}, {args.workers} worker(s); {args.clients} clients for {args.seconds:.0f} s "
                  f"({machine_load()})")
            stop_at = time.monotonic() + args.seconds
            threads = [threading.Thread(target=_client, args=(port, requests, seed, stop_at, tally))
                       for seed in range(args.clients)]
            start = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=args.seconds + 300)
            elapsed = time.monotonic() - start
            print(f"done ({machine_load()})")
        finally:
            stop_server(process)
    print("\n".join(_report(tally, elapsed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
