"""Tests of pipelines.serve that start no server (the real server: test_serve_e2e.py)."""

from __future__ import annotations

import json
import shlex
import signal
import sys

import pytest
import typer

from models.serving import REQUEST_FIELDS
from pipelines.serve import bind_warning, example_curl, mlflow_serve_command, run_serve, serve_command, tcp_listener


def test_serve_command_runs_the_launcher_on_localhost_with_its_limits():
    command = serve_command("models:/car-relapse@champion", port=5123, max_request_bytes=1000, max_patients=7)
    assert command[:3] == [sys.executable, "-m", "pipelines.serve"]
    assert command[command.index("--model") + 1] == "models:/car-relapse@champion"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5123"
    assert command[command.index("--max-request-bytes") + 1] == "1000"
    assert command[command.index("--max-patients") + 1] == "7"


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
    curl = shlex.split(example_curl("127.0.0.1", 5001))
    assert curl[:3] == ["curl", "-s", "http://127.0.0.1:5001/invocations"]
    body = json.loads(curl[curl.index("-d") + 1])
    assert [r["patient_id"] for r in body["inputs"]] == ["EXAMPLE-001"]
    assert {f.name for f in REQUEST_FIELDS if f.required} <= set(body["inputs"][0])


def test_printed_curl_quotes_a_host_a_shell_would_interpret():
    """The serve lines are pasted into a shell: nothing the user typed may run as a command."""
    curl = example_curl("127.0.0.1;touch pwned", 5001)
    assert shlex.split(curl)[2] == "http://127.0.0.1;touch pwned:5001/invocations"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_binds_need_no_warning(host):
    assert bind_warning(host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org"])
def test_other_binds_are_warned_about_with_the_proxy_advice(host):
    warning = bind_warning(host)
    assert warning is not None and host in warning and "no authentication" in warning and "docs/usage.md" in warning


def test_the_launcher_warns_on_a_non_loopback_bind(capsys, caplog, tmp_path):
    """Before it even loads the model (here: none, so it stops at once)."""
    from pipelines.serve import main

    probe = tcp_listener("127.0.0.1", 0)
    port = probe.getsockname()[1]
    probe.close()
    with caplog.at_level("WARNING", logger="car_relapse.serve"):
        code = main(["--model", str(tmp_path / "no-such-model"), "--host", "0.0.0.0", "--port", str(port)])
    assert code == 1
    assert any("--host 0.0.0.0" in record.getMessage() and "no authentication" in record.getMessage()
               for record in caplog.records)


def test_a_missing_champion_is_a_clear_error(tracking_uri, capsys):
    with pytest.raises(typer.Exit) as stop:
        run_serve("models:/car-relapse@champion", tracking_uri=tracking_uri)
    assert stop.value.exit_code == 2  # bad input: no such model
    assert "no model 'models:/car-relapse@champion'" in capsys.readouterr().err


def test_serve_environment_uses_one_openmp_thread_unless_told_otherwise(monkeypatch):
    from pipelines.serve import serve_environment

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:///elsewhere.db")
    env = serve_environment("sqlite:///x.db")
    assert env["OMP_NUM_THREADS"] == "1" and env["MLFLOW_TRACKING_URI"] == env["MLFLOW_REGISTRY_URI"] == "sqlite:///x.db"
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


def test_a_worker_exit_is_described_by_its_signal_name():
    from pipelines.serve import _exit_description

    assert _exit_description(-signal.SIGKILL) == "was killed by signal 9 (SIGKILL)"
    assert _exit_description(-signal.SIGSEGV) == "was killed by signal 11 (SIGSEGV)"
    assert _exit_description(3) == "exited with code 3"


def test_the_launcher_uses_no_private_attribute_of_mlflow_or_uvicorn():
    """Issue 11: public routes only (the former launcher set ``scoring_server._SERVER_MODEL_PATH`` and
    drove uvicorn's protocol objects)."""
    import ast
    import inspect

    import pipelines.serve
    import pipelines.serve_app

    for module in (pipelines.serve, pipelines.serve_app):
        tree = ast.parse(inspect.getsource(module))
        private = [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                   and node.attr.startswith("_") and not node.attr.startswith("__")
                   and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "workers"))]
        assert private == [], f"{module.__name__} reads {private}"


# --- the OpenAPI document of the served app ---------------------------------------------------------------
def test_openapi_gets_the_request_body_from_the_request_schema():
    import jsonschema
    from fastapi import FastAPI

    from models.request_schema import request_json_schema
    from models.serving import EXAMPLE_PATIENT
    from pipelines.serve_app import openapi_with_request_schema

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
