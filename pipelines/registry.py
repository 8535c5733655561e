"""Gated registration of the winning model and its ``champion`` / ``previous`` aliases.

A model is registered only when its metrics pass every configured threshold; it is promoted
(alias ``champion``) only when it is not worse than the champion (``pipelines.champion_gate``), or
on request. Registration and the alias switch happen one at a time: the caller holds
:func:`promotion` (a file lock beside the tracking store) while it compares, logs, registers and
promotes, so two trainings finishing together cannot both think they are the new champion, and the
version number written into the model is the one the registry gives it.

Promotion is all-or-nothing. A version is registered with the promotion it is meant for written in
its tags (``car_relapse.promotion = pending`` and the aliases it replaces); then ``previous`` moves,
then ``champion`` (the commit point), then the tag says ``done``. A process killed on the way leaves
a ``pending`` version, which the next promotion (or training start) finds under the lock and
settles (:func:`repair_interrupted_promotions`): if ``champion`` already points to it, the
promotion is complete; if not, ``previous`` is put back and the version is marked ``interrupted``
(registered, never served as champion).
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
    "PROMOTION_TAG",
    "promotion",
    "register_and_promote",
    "repair_interrupted_promotions",
    "settle_interrupted_promotions",
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
    """A registered version, promoted to champion or not."""

    model_name: str
    version: str
    previous_champion: str | None
    promoted: bool = True


PROMOTION_TAG = "car_relapse.promotion"
"""Model-version tag: ``pending`` (promotion under way), ``done``, ``interrupted`` (settled by
:func:`repair_interrupted_promotions`) or ``not_promoted`` (registered without promotion)."""
_FORMER_CHAMPION_TAG = "car_relapse.former_champion"
_FORMER_PREVIOUS_TAG = "car_relapse.former_previous"


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
    client, model_name: str, model_uri: str, run_id: str, expected_version: str | None = None, promote: bool = True
) -> Promotion:
    """Register ``model_uri`` as a new version and, if ``promote``, make it the champion.

    The former champion (if any) gets alias ``previous``. Call inside :func:`promotion`, after
    :func:`repair_interrupted_promotions`.

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
    promote : bool
        Move the aliases (else the version is registered with tag ``not_promoted``).

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
    tags = {"source_run_id": run_id, PROMOTION_TAG: "pending" if promote else "not_promoted",
            _FORMER_CHAMPION_TAG: former or "", _FORMER_PREVIOUS_TAG: alias_version(client, model_name, ALIAS_PREVIOUS) or ""}
    try:  # the version and its tags are written together: a pending promotion is never untagged
        version = str(mlflow.register_model(model_uri, model_name, tags=tags).version)
    except MlflowException as exc:
        raise RegistryError(f"cannot register {model_uri} as '{model_name}': {exc.message}") from None
    if expected_version is not None and version != str(expected_version):
        raise RegistryError(
            f"'{model_name}' got version {version} but {expected_version} was expected: another "
            "process registered a version without holding the promotion lock"
        )
    if promote:
        if former is not None:
            client.set_registered_model_alias(model_name, ALIAS_PREVIOUS, former)
        client.set_registered_model_alias(model_name, ALIAS_CHAMPION, version)  # the commit point
        client.set_model_version_tag(model_name, version, PROMOTION_TAG, "done")
    return Promotion(model_name=model_name, version=version, previous_champion=former, promoted=promote)


def repair_interrupted_promotions(client, model_name: str) -> list[str]:
    """Settle the promotions a killed process left half done; call inside :func:`promotion`.

    Under the lock no promotion is under way, so a version tagged ``pending`` belongs to a dead
    process. If ``champion`` points to it, the promotion had committed: it is marked ``done``.
    Otherwise the version is marked ``interrupted``, with a description saying so, and, if
    ``champion`` is still the one the version was to replace, ``previous`` is put back where it was
    (it may already point to the champion); aliases moved since by other means are left alone.

    Returns
    -------
    list of str
        One line per settled version (empty when nothing was pending).
    """
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException:
        return []
    settled = []
    for entry in sorted(versions, key=lambda v: int(v.version)):
        tags = entry.tags or {}
        if tags.get(PROMOTION_TAG) != "pending":
            continue
        version, champion = str(entry.version), alias_version(client, model_name, ALIAS_CHAMPION)
        if champion == version:
            client.set_model_version_tag(model_name, version, PROMOTION_TAG, "done")
            settled.append(f"version {version}: its promotion had completed before the process was interrupted; "
                           "marked done")
            continue
        former_previous = tags.get(_FORMER_PREVIOUS_TAG) or None
        champion_unchanged = champion == (tags.get(_FORMER_CHAMPION_TAG) or None)
        if champion_unchanged and former_previous is None:
            if alias_version(client, model_name, ALIAS_PREVIOUS) is not None:
                client.delete_registered_model_alias(model_name, ALIAS_PREVIOUS)
        elif champion_unchanged:
            client.set_registered_model_alias(model_name, ALIAS_PREVIOUS, former_previous)
        client.set_model_version_tag(model_name, version, PROMOTION_TAG, "interrupted")
        client.update_model_version(model_name, version, description=(
            f"Registered by run {entry.run_id}, but the process was interrupted before it became champion: "
            "not promoted (car_relapse.promotion = interrupted). Check the run before using it."))
        restored = f", alias 'previous' restored to {former_previous or 'none'}" if champion_unchanged else ""
        settled.append(f"version {version}: its promotion was interrupted (process killed); not promoted, "
                       f"marked interrupted{restored}")
    return settled


def settle_interrupted_promotions(lock_path: Path, model_name: str, tracking_uri: str) -> list[str]:
    """:func:`repair_interrupted_promotions` under the promotion lock, as a training starts (the same
    repair runs again right before its own promotion)."""
    from mlflow.tracking import MlflowClient

    with promotion(lock_path):
        return repair_interrupted_promotions(MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri), model_name)
