"""Tests of pipelines.serve that start no server (the real server: test_serve_e2e.py)."""

from __future__ import annotations

import json
import signal
import sys

import pytest
import typer

from models.serving import REQUEST_FIELDS
from pipelines.serve import example_curl, mlflow_serve_command, run_serve, serve_command, tcp_listener


def test_serve_command_runs_the_launcher_on_localhost():
    command = serve_command("models:/car-relapse@champion", port=5123)
    assert command[:3] == [sys.executable, "-m", "pipelines.serve"]
    assert command[command.index("--model") + 1] == "models:/car-relapse@champion"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5123"


def test_the_equivalent_mlflow_command_uses_the_local_env_on_localhost():
    command = mlflow_serve_command("models:/car-relapse@champion", port=5123)
    assert command[:5] == [sys.executable, "-m", "mlflow", "models", "serve"]
    assert command[command.index("-m", 2) + 1] == "models:/car-relapse@champion"
    assert command[command.index("--env-manager") + 1] == "local"
    assert command[command.index("--host") + 1] == "127.0.0.1"


def test_the_listening_socket_turns_nagle_off_for_its_connections():
    """uvicorn #3149: a listener without IPPROTO_TCP leaves Nagle on (40 ms per keep-alive reply)."""
    import asyncio
    import socket

    listener = tcp_listener("127.0.0.1", 0)
    try:
        assert listener.proto == socket.IPPROTO_TCP
        port = listener.getsockname()[1]
        seen = {}

        async def accept_one():
            async def on_connection(reader, writer):
                seen["nodelay"] = writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                writer.close()

            server = await asyncio.start_server(on_connection, sock=listener)
            async with server:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                while "nodelay" not in seen:
                    await asyncio.sleep(0.01)
                writer.close()

        asyncio.run(asyncio.wait_for(accept_one(), timeout=10))
        assert seen["nodelay"] != 0
    finally:
        listener.close()


def test_printed_curl_sends_a_valid_request():
    curl = example_curl("127.0.0.1", 5001)
    assert curl.startswith("curl -s http://127.0.0.1:5001/invocations")
    body = json.loads(curl.split(" -d '", 1)[1].rstrip("'"))
    assert [r["patient_id"] for r in body["inputs"]] == ["EXAMPLE-001"]
    assert {f.name for f in REQUEST_FIELDS if f.required} <= set(body["inputs"][0])


def test_a_missing_champion_is_a_clear_error(tracking_uri, capsys):
    with pytest.raises(typer.Exit) as stop:
        run_serve("models:/car-relapse@champion", tracking_uri=tracking_uri)
    assert stop.value.exit_code == 2  # bad input: no such model
    assert "no model 'models:/car-relapse@champion'" in capsys.readouterr().out


def test_serve_environment_uses_one_openmp_thread_unless_told_otherwise(monkeypatch):
    from pipelines.serve import serve_environment

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = serve_environment("sqlite:///x.db")
    assert env["OMP_NUM_THREADS"] == "1" and env["MLFLOW_TRACKING_URI"] == "sqlite:///x.db"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert serve_environment("sqlite:///x.db")["OMP_NUM_THREADS"] == "2"


def test_serve_command_defaults_to_two_workers():
    command = serve_command("models:/car-relapse@champion")
    assert command[command.index("--workers") + 1] == "2"


def test_server_environment_finds_this_interpreters_tools_without_an_activated_venv(monkeypatch):
    """MLflow execs ``uvicorn`` from PATH: the project's own bin folder must come first."""
    import os
    import sys

    from pipelines.serve import serve_environment

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = serve_environment("sqlite:///x.db")
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert "/usr/bin" in env["PATH"].split(os.pathsep)


def test_the_launcher_deals_connections_to_ready_workers_in_turn():
    """Nothing is dealt before every worker is ready; then each worker's channel receives every
    other connection, the received socket is the client's, and stopping ends the dealing."""
    import socket
    import threading

    from pipelines.serve import _READY, _hand_out_connections

    listener = tcp_listener("127.0.0.1", 0)
    listener.listen()
    pairs = [socket.socketpair() for _ in range(2)]
    stopping = threading.Event()
    dealer = threading.Thread(target=_hand_out_connections, args=(listener, [ours for ours, _ in pairs], stopping),
                              daemon=True)
    dealer.start()
    clients = [socket.create_connection(listener.getsockname(), timeout=10) for _ in range(6)]
    try:
        pairs[0][1].settimeout(0.3)
        with pytest.raises(TimeoutError):  # worker 1 is not ready yet: nothing is dealt
            socket.recv_fds(pairs[0][1], 1, 1)
        for _, theirs in pairs:
            theirs.sendall(_READY)
        for number, client in enumerate(clients):
            _, theirs = pairs[number % 2]
            theirs.settimeout(10)
            _, fds, _, _ = socket.recv_fds(theirs, 1, 1)
            with socket.socket(fileno=fds[0]) as served:
                assert served.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                client.sendall(f"hello {number}".encode())
                assert served.recv(100) == f"hello {number}".encode()
        stopping.set()
        listener.shutdown(socket.SHUT_RDWR)
        dealer.join(timeout=10)
        assert not dealer.is_alive()
    finally:
        for client in clients:
            client.close()
        listener.close()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_a_worker_skips_a_lost_connection_and_stops_at_the_end_of_its_channel():
    import socket
    import threading

    from pipelines.serve import _receive_connections

    handed = []

    class Loop:
        def call_soon_threadsafe(self, callback, *args):
            handed.append(args[-1])

    ours, theirs = socket.socketpair()
    spare_a, spare_b = socket.socketpair()
    receiver = threading.Thread(target=_receive_connections, args=(theirs, Loop(), None, None), daemon=True)
    receiver.start()
    try:
        ours.sendall(b"c")  # a message whose socket was dropped by the kernel
        socket.send_fds(ours, [b"c"], [spare_a.fileno()])
        ours.close()
        receiver.join(timeout=10)
        assert not receiver.is_alive()
        assert len(handed) == 1
        handed[0].sendall(b"x")
        assert spare_b.recv(1) == b"x"
    finally:
        for sock in (theirs, spare_a, spare_b, *handed):
            sock.close()


def test_launcher_reports_a_taken_port_in_one_line(capsys):
    from pipelines.serve import main

    taken = tcp_listener("127.0.0.1", 0)
    taken.listen()
    try:
        code = main(["--model", "models:/never-used@champion", "--port", str(taken.getsockname()[1])])
    finally:
        taken.close()
    error = capsys.readouterr().err
    assert code == 1 and error.startswith("error: cannot listen on 127.0.0.1:") and "Traceback" not in error


def test_launcher_reports_a_model_it_cannot_load_in_one_line(capsys, tmp_path):
    from pipelines.serve import main

    probe = tcp_listener("127.0.0.1", 0)
    port = probe.getsockname()[1]
    probe.close()
    code = main(["--model", str(tmp_path / "no-such-model"), "--port", str(port)])
    error = capsys.readouterr().err
    assert code == 1 and error.startswith("error: cannot load model") and "Traceback" not in error


def test_server_processes_leave_the_model_its_own_code():
    """Importing the launcher imports neither ``features`` nor ``models``: the served model then
    loads the copies it was logged with (MLflow puts them first on sys.path), as under
    ``mlflow models serve``, not whatever this checkout holds."""
    import subprocess

    probe = ("import sys, pipelines.serve; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('features', 'models')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.strip() == "[]"


def test_a_worker_killed_by_a_signal_gives_the_shell_exit_code():
    from pipelines.serve import _launcher_exit_code

    assert _launcher_exit_code(-signal.SIGKILL) == 128 + signal.SIGKILL == 137
    assert _launcher_exit_code(-signal.SIGTERM) == 143
    assert _launcher_exit_code(3) == 3 and _launcher_exit_code(0) == 0 and _launcher_exit_code(None) == 0


# --- the OpenAPI document of the served app ---------------------------------------------------------------
def test_openapi_gets_the_request_body_from_the_request_schema():
    import jsonschema
    from fastapi import FastAPI

    from models.request_schema import request_json_schema
    from models.serving import EXAMPLE_PATIENT
    from pipelines.serve import openapi_with_request_schema

    app = FastAPI()
    app.post("/invocations")(lambda: None)
    plain = app.openapi()
    document = openapi_with_request_schema(plain, request_json_schema())
    assert "requestBody" not in plain["paths"]["/invocations"]["post"]  # the copy is changed, not the app's
    body = document["paths"]["/invocations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    patient = document["components"]["schemas"]["CarRelapsePatient"]
    assert list(patient["properties"]) == list(request_json_schema()["properties"])
    assert "$defs" not in json.dumps(document)  # every reference points at a component
    validator = jsonschema.Draft202012Validator({**body, "components": document["components"]})
    assert not list(validator.iter_errors({"inputs": [EXAMPLE_PATIENT], "params": {"on_error": "fail"}}))
    assert not list(validator.iter_errors({"dataframe_records": [EXAMPLE_PATIENT]}))
    bad = {**EXAMPLE_PATIENT, "prior_lines": 2.5, "measurements": [{**EXAMPLE_PATIENT["measurements"][0], "assay": "x"}]}
    messages = [error.message for error in validator.iter_errors({"inputs": [bad]})]
    assert any("2.5" in message for message in messages) and len(messages) == 2
    assert list(validator.iter_errors({}))  # a body needs a format
