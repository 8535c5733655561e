"""The tracking store under faults, through the real commands: killed trainings, read-only and full stores.

A read-only store is a read-only bind mount, and a full one a small tmpfs, in a private mount
namespace (``unshare -rm``: an unprivileged user namespace); without ``unshare``, a read-only store
is made with ``chmod`` (not for root, whom permissions do not stop) and the full store is skipped.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from models.serving import EXAMPLE_PATIENT
from pipelines.io import write_table
from pipelines.simulate import simulate_cohort
from pipelines.tracking import setup_tracking
from tests.pipelines.conftest import subprocess_environment

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
MODEL = "faults"
TINY = {
    "data": {"source": "synthetic", "synthetic": {"n_patients": 300, "seed": 5, "with_oracle": False}},
    "features": {"landmark_days": [0, 91]},
    "models": {"candidates": ["xgb_cox"], "params": {"xgb_cox": {"n_estimators": 40}}},
    "evaluation": {"cv_folds": 2, "bootstrap": 0, "shap_max_rows": 10, "endpoints": ["relapse"]},
    "registry": {"model_name": MODEL, "thresholds": {}, "top_factors": 2},
}


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0


UNSHARE = _unshare_works()


def _read_only(folder: Path, command: list[str]) -> list[str]:
    """``command`` run with ``folder`` read-only (see the module docstring)."""
    if UNSHARE:
        script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
        return ["unshare", "-rm", "sh", "-c", script, str(folder), *command]
    if os.geteuid() == 0:
        pytest.skip("needs unshare (user namespaces) or a non-root user to make a store read-only")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    return command


def _writable_again(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)


def _config(folder: Path, store: str, **changes) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes, "tracking": {"tracking_uri": store, "experiment": "faults"}}))
    return path


def _run(command: list[str], timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=subprocess_environment())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, empty_mlflow_db):
    """A store with one registered tiny model, and a cohort folder to score."""
    folder = tmp_path_factory.mktemp("faults_store")
    shutil.copy(empty_mlflow_db, folder / "mlflow.db")
    store = f"sqlite:///{folder}/mlflow.db"
    result = _run([str(BIN / "car-relapse"), "train", "--config", str(_config(folder, store))])
    assert result.returncode == 0, result.stdout + result.stderr
    cohort = tmp_path_factory.mktemp("faults_cohort")
    simulated = simulate_cohort(5, 99)
    write_table(simulated.infusions, cohort / "infusions.csv")
    write_table(simulated.measurements, cohort / "measurements.csv")
    return folder, store, cohort


@pytest.fixture
def read_only_copy(trained, tmp_path):
    """A copy of the trained store, to be made read-only by the test (writable again afterwards)."""
    folder = tmp_path / "store"
    shutil.copytree(trained[0], folder)
    yield folder, f"sqlite:///{folder}/mlflow.db"
    _writable_again(folder)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    output = (result.stdout + result.stderr).strip()
    assert "Traceback" not in output and "mlflow.db.lock" not in output, output
    return output


def test_train_on_a_read_only_store_fails_in_one_line(read_only_copy, tmp_path):
    folder, store = read_only_copy
    result = _run(_read_only(folder, [str(BIN / "car-relapse"), "train", "--config", str(_config(tmp_path, store))]))
    output = _one_line_error(result)
    assert result.returncode == 1 and "read-only" in output and str(folder / "mlflow.db") in output, output


@pytest.mark.skipif(not UNSHARE, reason="a full file system is a small tmpfs in a private mount namespace (unshare)")
def test_train_on_a_full_store_fails_in_one_line(trained, tmp_path):
    source, _ = trained[0], trained[1]
    mount = tmp_path / "full"
    mount.mkdir()
    size_kb = (source / "mlflow.db").stat().st_size // 1024 + 8
    script = f'mount -t tmpfs -o size={size_kb}k tmpfs "$0" && cp "$1" "$0"/ && shift && exec "$@"'
    config = _config(tmp_path, f"sqlite:///{mount}/mlflow.db")
    result = _run(["unshare", "-rm", "sh", "-c", script, str(mount), str(source / "mlflow.db"),
                   str(BIN / "car-relapse"), "train", "--config", str(config)])
    output = _one_line_error(result)
    assert result.returncode == 1 and "database or disk is full" in output, output


def test_score_reads_a_model_from_a_read_only_store(read_only_copy, trained, tmp_path):
    folder, store = read_only_copy
    output = tmp_path / "scores.csv"
    result = _run(_read_only(folder, [str(BIN / "car-relapse"), "score", "--model", f"models:/{MODEL}@champion",
                                      "--input", str(trained[2]), "--as-of-day", "91", "--output", str(output),
                                      "--tracking-uri", store]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(output.read_text().splitlines()) == 6  # header + 5 patients


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serves(command: list[str], port: int, log: Path) -> None:
    """Start ``car-relapse serve`` (``command``), check it scores the example patient, stop it."""
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=subprocess_environment(),
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        assert process.poll() is None, log.read_text()[-3000:]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"inputs": [EXAMPLE_PATIENT]}).encode())
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.loads(response.read())["predictions"][0]["patient_id"] == "EXAMPLE-001"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def test_serve_serves_a_model_from_a_read_only_store(read_only_copy, tmp_path):
    folder, store = read_only_copy
    port = _free_port()
    _serves(_read_only(folder, [str(BIN / "car-relapse"), "serve", "--model", f"models:/{MODEL}@champion",
                                "--port", str(port), "--tracking-uri", store]), port, tmp_path / "serve.log")


@pytest.mark.skipif(not UNSHARE, reason="a full file system is a small tmpfs in a private mount namespace (unshare)")
def test_serve_serves_a_model_from_a_full_store(trained, tmp_path):
    """The store (database and artifacts) on a file system with no room left."""
    source = trained[0]
    mount = tmp_path / "full"
    mount.mkdir()
    # tmpfs holds each file in whole 4 KiB pages; the slack is then filled up to the last byte.
    size_kb = sum(-(-path.stat().st_size // 4096) * 4 + 4 for path in source.rglob("*")) + 256
    fill = '{ dd if=/dev/zero of="$0"/filler bs=4k 2>/dev/null; test "$(df -k --output=avail "$0" | tail -n 1)" -eq 0; }'
    script = f'mount -t tmpfs -o size={size_kb}k tmpfs "$0" && cp -r "$1"/. "$0"/ && {fill} && shift && exec "$@"'
    port = _free_port()
    _serves(["unshare", "-rm", "sh", "-c", script, str(mount), str(source), str(BIN / "car-relapse"), "serve",
             "--model", f"models:/{MODEL}@champion", "--port", str(port),
             "--tracking-uri", f"sqlite:///{mount}/mlflow.db"], port, tmp_path / "serve.log")


def test_a_training_killed_mid_run_is_closed_as_killed_with_a_note_on_the_next_start(trained, tmp_path):
    """kill -9 while the run is RUNNING; the next training's set-up closes it (and only it)."""
    folder, store, _ = trained
    config = _config(tmp_path, store, data={**TINY["data"], "synthetic": {**TINY["data"]["synthetic"], "n_patients": 3000}})
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("faults").experiment_id
    before = {run.info.run_id for run in client.search_runs([experiment])}
    process = subprocess.Popen([str(BIN / "car-relapse"), "train", "--config", str(config)], env=subprocess_environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = [run for run in client.search_runs([experiment], "attributes.status = 'RUNNING'")
                       if run.info.run_id not in before]
            if running:
                break
            time.sleep(0.2)
        assert running, "the training never started its run"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    killed = running[0].info.run_id
    assert client.get_run(killed).info.status == "RUNNING"
    target = setup_tracking("faults", tracking_uri=store)
    run = client.get_run(killed)
    assert run.info.status == "KILLED" and run.info.end_time is not None
    assert "Closed as KILLED by car-relapse" in run.data.tags["mlflow.note.content"]
    assert [line for line in target.closed_stale_runs if killed in line]


def test_a_live_training_is_not_closed(tracking_uri):
    """The run of a training still alive (it holds its lock) stays RUNNING when another one starts."""
    import multiprocessing

    from pipelines.tracking import start_tracked_run

    target = setup_tracking("live", tracking_uri=tracking_uri)
    with start_tracked_run(target) as run:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            closed = pool.apply(_set_up, ("live", tracking_uri))
        assert closed == []
        assert MlflowClient(tracking_uri=tracking_uri).get_run(run.info.run_id).info.status == "RUNNING"


def _set_up(experiment: str, tracking_uri: str) -> list[str]:
    return list(setup_tracking(experiment, tracking_uri=tracking_uri).closed_stale_runs)


def test_the_printed_command_lines_run_nothing_a_path_carries(tmp_path):
    """``train`` prints the MLflow UI, serve and score lines to paste into a shell: a store path with
    ``;``, quotes or ``$( )`` reaches the command as one argument and runs nothing."""
    from pipelines.train import TrainSummary, _where_to_look

    uri = f"sqlite:///{tmp_path}/it's a $(touch PWNED1); touch PWNED2 `touch PWNED3`/mlflow.db"
    summary = TrainSummary("run", "1", uri, "xgb_cox", {"uno_c": 0.7}, True, "m;touch PWNED4", "1", None, (), "models:/x")
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1] for line in _where_to_look(summary) if ":" in line}
    shell = "mlflow() { printf '%s\\n' \"$@\"; }; car-relapse() { printf '%s\\n' \"$@\"; }; "
    for label in ("MLflow UI", "serve", "batch score"):
        pasted = lines[label].strip().replace("<cohort folder>", "cohort")  # what the user fills in
        result = subprocess.run(["bash", "-c", shell + pasted], cwd=tmp_path, capture_output=True,
                                text=True, timeout=30)
        arguments = result.stdout.splitlines()
        assert uri in arguments, (label, lines[label], arguments)
        if label != "MLflow UI":
            assert "models:/m;touch PWNED4@champion" in arguments
    plain = [line.strip() for line in _where_to_look(summary) if line.strip().startswith("MLFLOW_TRACKING_URI=")]
    assert len(plain) == 3  # the plain mlflow lines: the store in the environment, the model as one argument
    with_store = "mlflow() { printf '%s\\n' \"$MLFLOW_TRACKING_URI\" \"$@\"; }; "
    for line in plain:
        result = subprocess.run(["bash", "-c", with_store + line], cwd=tmp_path, capture_output=True, text=True,
                                timeout=30)
        assert uri in result.stdout.splitlines(), (line, result.stdout)
    assert not list(tmp_path.glob("PWNED*"))
    assert shlex.split(lines["MLflow UI"])[3] == uri
