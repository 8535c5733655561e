"""Tests of pipelines.registry: the registration gate and the champion / previous aliases."""

from __future__ import annotations

import math
import multiprocessing

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipelines.registry import (
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS,
    RegistryError,
    alias_version,
    evaluate_gate,
    next_version,
    promotion,
    register_and_promote,
)
from pipelines.tracking import setup_tracking

MODEL = "gate-test"


def test_gate_passes_when_every_threshold_is_met():
    decision = evaluate_gate({"uno_c": 0.70, "ibs": 0.12}, {"uno_c": 0.65}, {"ibs": 0.15})
    assert decision.passed
    assert decision.reasons == ()
    assert len(decision.checks) == 2


def test_gate_fails_on_low_high_missing_and_nan_metrics():
    decision = evaluate_gate(
        {"uno_c": 0.60, "ibs": 0.20, "auc": math.nan},
        {"uno_c": 0.65, "auc": 0.6, "brier_365d": 0.0},
        {"ibs": 0.15},
    )
    assert not decision.passed
    joined = "\n".join(decision.reasons)
    assert "uno_c = 0.6000 (fails >= 0.65)" in joined
    assert "ibs = 0.2000 (fails <= 0.15)" in joined
    assert "auc: not computed" in joined
    assert "brier_365d: not computed" in joined
    assert len(decision.reasons) == 4


def test_gate_boundary_value_passes():
    assert evaluate_gate({"uno_c": 0.65}, {"uno_c": 0.65}).passed


@mlflow.pyfunc.utils.pyfunc
def _constant_model(model_input: list[float]) -> list[float]:
    return [0.5 for _ in model_input]


def _log_constant_model() -> tuple[str, str]:
    """Log a tiny pyfunc in the "registry-test" experiment (artifacts beside the test's store)."""
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("registry-test").experiment_id) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=_constant_model, pip_requirements=[])
    return info.model_uri, run.info.run_id


@pytest.fixture
def client(tracking_uri):
    setup_tracking("registry-test", tracking_uri=tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def test_two_promotions_move_champion_and_previous(client, tmp_path):
    assert next_version(client, MODEL) == "1"
    assert alias_version(client, MODEL, ALIAS_CHAMPION) is None
    first_uri, first_run = _log_constant_model()
    with promotion(tmp_path / "promo.lock"):
        first = register_and_promote(client, MODEL, first_uri, first_run, expected_version="1")
    assert (first.version, first.previous_champion) == ("1", None)
    assert alias_version(client, MODEL, ALIAS_PREVIOUS) is None

    second_uri, second_run = _log_constant_model()
    with promotion(tmp_path / "promo.lock"):
        second = register_and_promote(client, MODEL, second_uri, second_run, expected_version="2")
    assert (second.version, second.previous_champion) == ("2", "1")
    assert alias_version(client, MODEL, ALIAS_CHAMPION) == "2"
    assert alias_version(client, MODEL, ALIAS_PREVIOUS) == "1"
    assert client.get_model_version(MODEL, "2").run_id == second_run


def test_unexpected_version_number_is_an_error(client):
    uri, run_id = _log_constant_model()
    with pytest.raises(RegistryError, match="got version 1 but 7 was expected"):
        register_and_promote(client, MODEL, uri, run_id, expected_version="7")


def _child_client(tracking_uri: str) -> MlflowClient:
    """In a child process: MLflow pointed at the test's store and experiment."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment("registry-test")
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _promote_in_child(tracking_uri: str, lock: str, queue) -> None:
    try:
        client = _child_client(tracking_uri)
        uri, run_id = _log_constant_model()
        with promotion(lock):
            expected = next_version(client, MODEL)
            queue.put(register_and_promote(client, MODEL, uri, run_id, expected_version=expected).version)
    except Exception as exc:  # reported to the parent, which fails the test with it
        queue.put(repr(exc))


def test_concurrent_promotions_are_serialised(client, tracking_uri, tmp_path):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [
        context.Process(target=_promote_in_child, args=(tracking_uri, str(tmp_path / "promo.lock"), queue))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    versions = sorted(queue.get(timeout=5) for _ in children)
    assert versions == ["1", "2"]
    assert alias_version(client, MODEL, ALIAS_CHAMPION) == "2"
    assert alias_version(client, MODEL, ALIAS_PREVIOUS) == "1"


# --- promotion is all-or-nothing: a process killed half way is settled on the next start ----------------
def _promote_and_die(tracking_uri: str, lock: str, die_at: str) -> None:
    """Child: register a third version and promote it, SIGKILLed at ``die_at`` (never returns normally)."""
    import os
    import signal

    calls = {"alias": 0}
    set_alias, set_tag = MlflowClient.set_registered_model_alias, MlflowClient.set_model_version_tag

    def alias(self, *args, **kwargs):
        calls["alias"] += 1
        if (die_at, calls["alias"]) in {("before the aliases", 1), ("between the alias moves", 2)}:
            os.kill(os.getpid(), signal.SIGKILL)
        return set_alias(self, *args, **kwargs)

    def tag(self, *args, **kwargs):
        if die_at == "after the champion moved":
            os.kill(os.getpid(), signal.SIGKILL)
        return set_tag(self, *args, **kwargs)

    MlflowClient.set_registered_model_alias, MlflowClient.set_model_version_tag = alias, tag
    client = _child_client(tracking_uri)
    uri, run_id = _log_constant_model()
    with promotion(lock):
        register_and_promote(client, MODEL, uri, run_id, expected_version="3")


@pytest.mark.parametrize("die_at, champion, previous, state", [
    ("before the aliases", "2", "1", "interrupted"),
    ("between the alias moves", "2", "1", "interrupted"),  # c4836dd left champion and previous both on 2
    ("after the champion moved", "3", "2", "done"),
])
def test_a_promotion_killed_half_way_is_settled_all_or_nothing(client, tracking_uri, tmp_path, die_at, champion,
                                                               previous, state):
    from pipelines.registry import PROMOTION_TAG, repair_interrupted_promotions

    lock = str(tmp_path / "promo.lock")
    for expected in ("1", "2"):
        uri, run_id = _log_constant_model()
        with promotion(lock):
            register_and_promote(client, MODEL, uri, run_id, expected_version=expected)
    child = multiprocessing.get_context("fork").Process(target=_promote_and_die, args=(tracking_uri, lock, die_at))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -9  # killed, as by kill -9 or a power cut
    with promotion(lock):
        settled = repair_interrupted_promotions(client, MODEL)
    assert len(settled) == 1 and settled[0].startswith("version 3")
    assert (alias_version(client, MODEL, ALIAS_CHAMPION), alias_version(client, MODEL, ALIAS_PREVIOUS)) == (champion, previous)
    assert client.get_model_version(MODEL, "3").tags[PROMOTION_TAG] == state
    if state == "interrupted":
        assert "interrupted" in client.get_model_version(MODEL, "3").description
    with promotion(lock):
        assert repair_interrupted_promotions(client, MODEL) == []  # settled once


def test_aliases_moved_by_hand_since_an_interrupted_promotion_are_left_alone(client, tracking_uri, tmp_path):
    from pipelines.registry import PROMOTION_TAG, repair_interrupted_promotions

    lock = str(tmp_path / "promo.lock")
    for expected in ("1", "2"):
        uri, run_id = _log_constant_model()
        with promotion(lock):
            register_and_promote(client, MODEL, uri, run_id, expected_version=expected)
    child = multiprocessing.get_context("fork").Process(target=_promote_and_die,
                                                        args=(tracking_uri, lock, "before the aliases"))
    child.start()
    child.join(timeout=120)
    client.set_registered_model_alias(MODEL, ALIAS_CHAMPION, "1")  # someone rolled back by hand meanwhile
    with promotion(lock):
        repair_interrupted_promotions(client, MODEL)
    assert (alias_version(client, MODEL, ALIAS_CHAMPION), alias_version(client, MODEL, ALIAS_PREVIOUS)) == ("1", "1")
    assert client.get_model_version(MODEL, "3").tags[PROMOTION_TAG] == "interrupted"


def test_a_version_registered_without_promotion_moves_no_alias(client, tmp_path):
    from pipelines.registry import PROMOTION_TAG

    uri, run_id = _log_constant_model()
    with promotion(tmp_path / "promo.lock"):
        register_and_promote(client, MODEL, uri, run_id, expected_version="1")
    uri, run_id = _log_constant_model()
    with promotion(tmp_path / "promo.lock"):
        registered = register_and_promote(client, MODEL, uri, run_id, expected_version="2", promote=False)
    assert (registered.version, registered.promoted) == ("2", False)
    assert alias_version(client, MODEL, ALIAS_CHAMPION) == "1" and alias_version(client, MODEL, ALIAS_PREVIOUS) is None
    assert client.get_model_version(MODEL, "2").tags[PROMOTION_TAG] == "not_promoted"
