"""Gated registration of the winning model and its ``champion`` / ``previous`` aliases.

A model is registered only when its metrics pass every configured threshold. Registration and
the alias switch happen one at a time: the caller holds :func:`promotion` (a file lock beside the
tracking store) while it logs, registers and promotes, so two trainings finishing together cannot
both think they are the new champion, and the version number written into the model is the one
the registry gives it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipelines.tracking import file_lock

__all__ = [
    "ALIAS_CHAMPION",
    "ALIAS_PREVIOUS",
    "RegistryError",
    "GateDecision",
    "Promotion",
    "evaluate_gate",
    "next_version",
    "alias_version",
    "promotion",
    "register_and_promote",
]

ALIAS_CHAMPION = "champion"
ALIAS_PREVIOUS = "previous"


class RegistryError(RuntimeError):
    """Registration or promotion failed; the message says which model and why."""


@dataclass(frozen=True)
class GateDecision:
    """Outcome of the registration gate.

    Attributes
    ----------
    passed : bool
        True when every threshold is met.
    reasons : tuple of str
        One line per failed threshold (empty when passed).
    checks : tuple of str
        One line per threshold, passed or not, for the run's log.
    """

    passed: bool
    reasons: tuple[str, ...]
    checks: tuple[str, ...]


@dataclass(frozen=True)
class Promotion:
    """A registered and promoted version."""

    model_name: str
    version: str
    previous_champion: str | None


def _check(name: str, value: float | None, bound: float, lower_bound: bool) -> tuple[bool, str]:
    relation = ">=" if lower_bound else "<="
    if value is None or not math.isfinite(value):
        return False, f"{name}: not computed (required {relation} {bound:g})"
    ok = value >= bound if lower_bound else value <= bound
    return ok, f"{name} = {value:.4f} ({'meets' if ok else 'fails'} {relation} {bound:g})"


def evaluate_gate(
    metrics: Mapping[str, float],
    minimums: Mapping[str, float],
    maximums: Mapping[str, float] | None = None,
) -> GateDecision:
    """Check the winner's metrics against the configured thresholds.

    Parameters
    ----------
    metrics : mapping
        Metric name -> value of the winning model (cross-validated).
    minimums : mapping
        Metric name -> lowest acceptable value (higher is better).
    maximums : mapping, optional
        Metric name -> highest acceptable value (lower is better).

    Returns
    -------
    GateDecision
        A metric named in a threshold but missing or non-finite fails the gate.
    """
    results = [_check(n, metrics.get(n), b, True) for n, b in minimums.items()]
    results += [_check(n, metrics.get(n), b, False) for n, b in (maximums or {}).items()]
    reasons = tuple(line for ok, line in results if not ok)
    return GateDecision(passed=not reasons, reasons=reasons, checks=tuple(line for _, line in results))


def next_version(client, model_name: str) -> str:
    """The version number the registry will give the next version of ``model_name``."""
    versions = client.search_model_versions(f"name = '{model_name}'")
    return str(1 + max((int(v.version) for v in versions), default=0))


def alias_version(client, model_name: str, alias: str) -> str | None:
    """Version currently holding ``alias``, or None (also when the model does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


@contextmanager
def promotion(lock_path: Path) -> Iterator[None]:
    """Hold the promotion lock: one registration and alias switch at a time."""
    with file_lock(lock_path):
        yield


def register_and_promote(
    client, model_name: str, model_uri: str, run_id: str, expected_version: str | None = None
) -> Promotion:
    """Register ``model_uri`` as a new version and make it the champion.

    The former champion (if any) gets alias ``previous``. Call inside :func:`promotion`.

    Parameters
    ----------
    client : mlflow.tracking.MlflowClient
    model_name : str
        Registered model name (created if missing).
    model_uri : str
        The logged model (``models:/<model_id>``).
    run_id : str
        Source run.
    expected_version : str, optional
        Version number written into the model before logging; a mismatch means someone
        registered without the lock and is an error.

    Returns
    -------
    Promotion

    Raises
    ------
    RegistryError
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    former = alias_version(client, model_name, ALIAS_CHAMPION)
    try:
        version = mlflow.register_model(model_uri, model_name, tags={"source_run_id": run_id}).version
    except MlflowException as exc:
        raise RegistryError(f"cannot register {model_uri} as '{model_name}': {exc.message}") from None
    if expected_version is not None and str(version) != str(expected_version):
        raise RegistryError(
            f"'{model_name}' got version {version} but {expected_version} was expected: another "
            "process registered a version without holding the promotion lock"
        )
    if former is not None:
        client.set_registered_model_alias(model_name, ALIAS_PREVIOUS, former)
    client.set_registered_model_alias(model_name, ALIAS_CHAMPION, str(version))
    return Promotion(model_name=model_name, version=str(version), previous_champion=former)
