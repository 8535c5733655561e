"""Tests of pipelines.champion_gate: a new version is promoted only if it is not worse than the champion.

Unit tests of the comparison; the gate inside the promotion lock with two processes racing (tiny
constant models with chosen metrics); and real trainings: a deliberately worse model on the same
data, a model trained on different data, ``--promote``, and two trainings run at the same time.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines.champion_gate import compare_metrics, compare_with_champion, comparison_preferences
from pipelines.config import RunConfig
from pipelines.registry import ALIAS_CHAMPION, PROMOTION_TAG, alias_version, promotion, register_and_promote
from pipelines.tracking import setup_tracking
from tests.pipelines.conftest import subprocess_environment


# --- the comparison ----------------------------------------------------------------------------------
def test_each_metric_is_judged_in_its_own_direction_with_the_tolerance():
    preferences = {"uno_c": "higher", "ibs": "lower", "observed_expected": 1.0, "auc": "higher"}
    rows = {row.metric: row for row in compare_metrics(
        {"uno_c": 0.70, "ibs": 0.150, "observed_expected": 1.30, "auc": 0.697},
        {"uno_c": 0.68, "ibs": 0.140, "observed_expected": 0.90, "auc": 0.70}, preferences, tolerance=0.005)}
    assert not rows["uno_c"].worse and rows["uno_c"].verdict == "better"
    assert rows["ibs"].worse and rows["ibs"].verdict == "worse by 0.0100 (tolerance 0.005)"  # lower is better
    assert rows["observed_expected"].worse  # 0.30 from 1 against 0.10
    assert not rows["auc"].worse and rows["auc"].verdict == "within tolerance 0.005"
    assert rows["ibs"].difference == pytest.approx(0.010)


def test_a_metric_missing_for_the_candidate_is_worse_and_for_the_champion_not_compared():
    rows = compare_metrics({"uno_c": 0.7, "ibs": float("nan")}, {"uno_c": 0.7}, {"ibs": "lower", "uno_c": "higher"}, 0.0)
    by_name = {row.metric: row for row in rows}
    assert by_name["ibs"].worse and "not computed" in by_name["ibs"].verdict
    rows = compare_metrics({"uno_c": 0.7, "ibs": 0.1}, {"uno_c": 0.7}, {"ibs": "lower"}, 0.0)
    assert not rows[0].worse and "champion has no value" in rows[0].verdict


def test_the_compared_metrics_come_from_the_config_plus_the_selection_metric():
    config = RunConfig.model_validate({"evaluation": {"selection_metric": "ibs"},
                                       "registry": {"champion_metrics": {"uno_c": "higher", "observed_expected": 1}}})
    preferences = comparison_preferences(config.evaluation.selection_metric, config.registry.champion_metrics)
    assert preferences == {"ibs": "lower", "uno_c": "higher", "observed_expected": 1.0}


# --- the gate under the lock, two processes racing ------------------------------------------------------
MODEL = "gate-race"


@mlflow.pyfunc.utils.pyfunc
def _constant_model(model_input: list[float]) -> list[float]:
    return [0.5 for _ in model_input]


def _log_candidate(uno_c: float, data_sha256: str) -> tuple[str, str]:
    experiment = mlflow.get_experiment_by_name("gate-test").experiment_id
    with mlflow.start_run(experiment_id=experiment, tags={"data.sha256": data_sha256}) as run:
        mlflow.log_metric("winner/uno_c", uno_c)
        info = mlflow.pyfunc.log_model(name="model", python_model=_constant_model, pip_requirements=[])
    return info.model_uri, run.info.run_id


def _gate_and_register(client, uno_c: float, data_sha256: str, lock) -> tuple[str, bool, tuple[str, ...]]:
    """What train does once a candidate passed the thresholds (pipelines.train._log_and_register)."""
    uri, run_id = _log_candidate(uno_c, data_sha256)

    def evaluate(_uri):
        raise AssertionError("same data: the champion is not re-evaluated")

    with promotion(lock):
        comparison = compare_with_champion(client, MODEL, data_sha256, {"uno_c": uno_c}, {"uno_c": "higher"}, 0.005,
                                           evaluate)
        registered = register_and_promote(client, MODEL, uri, run_id, promote=comparison.promote)
    return registered.version, registered.promoted, comparison.reasons


def _race(tracking_uri: str, lock: str, uno_c: float, delay_s: float, queue) -> None:
    try:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        time.sleep(delay_s)
        queue.put((uno_c, *_gate_and_register(MlflowClient(tracking_uri=tracking_uri), uno_c, "same", lock)))
    except Exception as exc:  # reported to the parent, which fails the test with it
        queue.put(repr(exc))


@pytest.fixture
def client(tracking_uri):
    setup_tracking("gate-test", tracking_uri=tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@pytest.mark.parametrize("worse_delay_s, better_delay_s", [(0.0, 0.0), (0.0, 1.5), (1.5, 0.0)])
def test_of_two_racing_trainings_the_worse_never_ends_as_champion(client, tracking_uri, tmp_path, worse_delay_s,
                                                                  better_delay_s):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    lock = str(tmp_path / "promo.lock")
    children = [context.Process(target=_race, args=(tracking_uri, lock, uno_c, delay, queue))
                for uno_c, delay in ((0.60, worse_delay_s), (0.70, better_delay_s))]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=180)
    outcomes = {outcome[0]: outcome[1:] for outcome in (queue.get(timeout=10) for _ in children)}
    better_version, better_promoted, _ = outcomes[0.70]
    assert better_promoted and alias_version(client, MODEL, ALIAS_CHAMPION) == better_version
    worse_version, worse_promoted, reasons = outcomes[0.60]
    if not worse_promoted:  # it came second: refused, naming the metric
        assert "uno_c worse by 0.1000" in reasons[0]
    assert client.get_model_version(MODEL, worse_version).tags[PROMOTION_TAG] == ("done" if worse_promoted
                                                                                  else "not_promoted")


def test_different_data_is_not_promoted_and_both_are_shown(client, tmp_path):
    lock = tmp_path / "promo.lock"
    _gate_and_register(client, 0.70, "cohort-a", lock)
    uri, run_id = _log_candidate(0.80, "cohort-b")
    with promotion(lock):
        comparison = compare_with_champion(client, MODEL, "cohort-b", {"uno_c": 0.80}, {"uno_c": "higher"}, 0.005,
                                           lambda champion_uri: ({"uno_c": 0.80}, {"uno_c": 0.75}))
    assert not comparison.promote and comparison.same_data is False
    assert "trained on different data than champion version 1" in comparison.reasons[0]
    assert [(row.candidate, row.champion) for row in comparison.rows] == [(0.80, 0.75)]
    assert "different data: both evaluated on this run's cohort" in "\n".join(comparison.lines())


# --- real trainings --------------------------------------------------------------------------------------
TINY = {
    "data": {"source": "synthetic", "synthetic": {"n_patients": 300, "seed": 5, "with_oracle": False}},
    "features": {"landmark_days": [0, 91]},
    "models": {"candidates": ["xgb_cox"], "params": {"xgb_cox": {"n_estimators": 40}}},
    "evaluation": {"cv_folds": 2, "bootstrap": 0, "shap_max_rows": 10, "endpoints": ["relapse"]},
    "registry": {"model_name": "gate-e2e", "thresholds": {}, "top_factors": 2,
                 "champion_metrics": {"ibs": "lower"}},
}
BADLY_REGULARISED = {"xgb_cox": {"n_estimators": 1, "max_depth": 1, "learning_rate": 0.01}}


def _tiny(store: str, **changes) -> RunConfig:
    models = {**TINY["models"], "params": changes.pop("params", TINY["models"]["params"])}
    return RunConfig.model_validate({**TINY, "models": models, **changes,
                                     "tracking": {"tracking_uri": store, "experiment": "gate-e2e"}})


@pytest.mark.e2e
def test_real_trainings_the_gate_against_the_champion(tracking_uri, tmp_path, capsys):
    from pipelines.train import run_train, train

    worse, good = _tiny(tracking_uri, params=BADLY_REGULARISED), _tiny(tracking_uri)
    # two `car-relapse train` commands on the same data at the same time, on an empty registry
    commands = [[str(Path(sys.executable).parent / "car-relapse"), "train", "--config", str(_write(config, tmp_path / name))]
                for name, config in (("worse.yaml", worse), ("good.yaml", good))]
    processes = [subprocess.Popen(command, env=subprocess_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for command in commands]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    if [process.returncode for process in processes] != [0, 0]:  # whole outputs: the store's reason is at the end
        pytest.fail("\n\n".join(f"exit {process.returncode}:\n{output}" for process, output in zip(processes, outputs)))
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    uno_c = {}  # n_estimators of the run's candidate -> (version, uno_c)
    for version in client.search_model_versions("name = 'gate-e2e'"):
        run = client.get_run(version.run_id)
        uno_c[run.data.params["models.params.xgb_cox.n_estimators"]] = (str(version.version), run.data.metrics["winner/uno_c"])
    (good_version, good_uno_c), (_, worse_uno_c) = uno_c["40"], uno_c["1"]
    assert worse_uno_c < good_uno_c - 0.05, uno_c  # the badly regularised one is clearly worse
    assert alias_version(client, "gate-e2e", ALIAS_CHAMPION) == good_version, outputs

    # the worse again, alone: registered, not promoted, the metric named, the table printed and logged
    summary = train(worse)
    assert summary.registered and not summary.promoted
    assert summary.champion_reasons[0].startswith(f"uno_c worse by {good_uno_c - summary.winner_metrics['uno_c']:.4f}")
    assert alias_version(client, "gate-e2e", ALIAS_CHAMPION) == good_version
    gate = mlflow.artifacts.load_dict(f"runs:/{summary.run_id}/registry/gate.json")
    assert gate["promoted"] is False and gate["champion"]["champion_version"] == good_version
    assert [row["metric"] for row in gate["champion"]["metrics"]] == ["uno_c", "ibs"]

    # a smaller, different cohort: not promoted, both evaluated on it; then --promote
    other = _tiny(tracking_uri, data={**TINY["data"], "synthetic": {**TINY["data"]["synthetic"], "seed": 6,
                                                                     "n_patients": 200}})
    path = _write(other, tmp_path / "other.yaml")
    summary = run_train(path)
    assert summary.registered and not summary.promoted
    assert "trained on different data" in summary.champion_reasons[0]
    printed = capsys.readouterr().out
    assert "different data: both evaluated on this run's cohort" in printed and "NOT promoted" in printed
    summary = run_train(path, promote=True)
    assert summary.promoted and alias_version(client, "gate-e2e", ALIAS_CHAMPION) == summary.model_version
    assert "--promote, although trained on different data" in capsys.readouterr().out


def _write(config: RunConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path
