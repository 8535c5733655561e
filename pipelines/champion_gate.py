"""The gate against the champion: a new model is promoted only if it is not worse than the current one.

Called by ``car-relapse train`` inside the promotion lock (``pipelines.registry.promotion``), so the
champion compared with is the one the new version would replace at that moment; two trainings
finishing together are compared one after the other, and the worse can never end as champion.

- Same data (the champion's run has this run's ``data.sha256``): the candidate's cross-validated
  summary metrics are compared with those the champion's run logged (``winner/<metric>``).
- Different data: the champion is scored on this run's cohort as it is served (its own feature
  builders and options, landmark by landmark) and evaluated on the same rows as the candidate's
  out-of-fold predictions; both are shown. A model trained on different data is never promoted
  without ``car-relapse train --promote``: the two were not selected on the same patients.
- Worse: a compared metric worse than the champion's by more than ``registry.champion_tolerance``
  (absolute, in the metric's unit). Compared: ``evaluation.selection_metric`` and every metric named
  in ``registry.champion_metrics`` ('higher' / 'lower' is better, or the number it is best close to;
  any metric of the run's summary). A metric the candidate lacks counts as worse; one the champion
  lacks (an older run) is shown as not compared.

A candidate that fails any of the fixed thresholds (``registry.thresholds`` / ``max_thresholds``) is
not registered at all (``pipelines.registry.evaluate_gate``), whatever the champion.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import pandas as pd

__all__ = [
    "MetricComparison",
    "ChampionComparison",
    "comparison_preferences",
    "compare_metrics",
    "compare_with_champion",
    "champion_on_cohort",
]

Preference = str | float


@dataclass(frozen=True)
class MetricComparison:
    """One compared metric: values, difference (candidate - champion) and verdict."""

    metric: str
    better: str
    candidate: float | None
    champion: float | None
    difference: float | None
    verdict: str
    worse: bool


@dataclass(frozen=True)
class ChampionComparison:
    """The candidate against the champion at the moment of promotion.

    Attributes
    ----------
    champion_version, champion_run_id : str or None
        None when there is no champion (the candidate is the first).
    same_data : bool or None
        The champion's run has this run's data fingerprint (None: no champion).
    basis : str
        What the compared values are.
    rows : tuple of MetricComparison
    reasons : tuple of str
        Why the candidate is not promoted (empty: promote).
    """

    champion_version: str | None
    champion_run_id: str | None
    same_data: bool | None
    basis: str
    rows: tuple[MetricComparison, ...]
    reasons: tuple[str, ...]

    @property
    def promote(self) -> bool:
        """Not worse than the champion, on the same data (or no champion at all)."""
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        """For ``registry/gate.json``."""
        return {"champion_version": self.champion_version, "champion_run_id": self.champion_run_id,
                "same_data": self.same_data, "basis": self.basis, "promote": self.promote,
                "reasons": list(self.reasons), "metrics": [asdict(row) for row in self.rows]}

    def lines(self) -> list[str]:
        """The comparison as text lines (a table), for the terminal."""
        if self.champion_version is None:
            return [f"champion:    none yet ({self.basis})"]
        lines = [f"champion:    version {self.champion_version} (run {self.champion_run_id}); {self.basis}"]
        if self.rows:
            lines.append(f"  {'metric':<20} {'better':<16} {'this run':>10} {'champion':>10} {'difference':>11}  verdict")
            for row in self.rows:
                lines.append(f"  {row.metric:<20} {row.better:<16} {_number(row.candidate):>10} "
                             f"{_number(row.champion):>10} {_number(row.difference, signed=True):>11}  {row.verdict}")
        return lines


def _number(value: float | None, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _describe(preference: Preference) -> str:
    return f"{preference} is better" if isinstance(preference, str) else f"closest to {float(preference):g}"


def comparison_preferences(selection_metric: str, configured: Mapping[str, Preference]) -> dict[str, Preference]:
    """Compared metrics and how each is judged: the selection metric (as the winner was picked,
    ``models.evaluation.metric_preference``) then ``registry.champion_metrics``."""
    from models.evaluation import metric_preference

    return {selection_metric: metric_preference(selection_metric), **configured}


def compare_metrics(candidate: Mapping[str, float], champion: Mapping[str, float],
                    preferences: Mapping[str, Preference], tolerance: float) -> tuple[MetricComparison, ...]:
    """Compare each metric of ``preferences`` (see the module docstring for the verdicts).

    Parameters
    ----------
    candidate, champion : mapping
        Summary metric name -> value.
    preferences : mapping
        Metric name -> ``"higher"``, ``"lower"`` or the number it is best close to.
    tolerance : float
        How much worse (absolute) still counts as not worse.
    """
    from models.evaluation import goodness

    rows = []
    for metric, preference in preferences.items():
        ours, theirs = candidate.get(metric), champion.get(metric)
        ours = None if ours is None or not math.isfinite(ours) else float(ours)
        theirs = None if theirs is None or not math.isfinite(theirs) else float(theirs)
        difference = None if ours is None or theirs is None else ours - theirs
        if ours is None:
            verdict, worse = "not computed for this run", True
        elif theirs is None:
            verdict, worse = "not compared (the champion has no value)", False
        else:
            gain = float(goodness(ours, preference) - goodness(theirs, preference))
            worse = gain < -tolerance
            verdict = (f"worse by {-gain:.4f} (tolerance {tolerance:g})" if worse
                       else "better" if gain > tolerance else f"within tolerance {tolerance:g}")
        rows.append(MetricComparison(metric, _describe(preference), ours, theirs, difference, verdict, worse))
    return tuple(rows)


def _champion_run(client, model_name: str):
    """The champion's version and run now, or (None, None)."""
    from mlflow.exceptions import MlflowException

    from pipelines.registry import ALIAS_CHAMPION

    try:
        version = client.get_model_version_by_alias(model_name, ALIAS_CHAMPION)
    except MlflowException:
        return None, None
    return version, (client.get_run(version.run_id) if version.run_id else None)


def compare_with_champion(
    client,
    model_name: str,
    data_sha256: str,
    candidate_metrics: Mapping[str, float],
    preferences: Mapping[str, Preference],
    tolerance: float,
    evaluate_on_this_cohort: Callable[[str], tuple[Mapping[str, float], Mapping[str, float]]],
) -> ChampionComparison:
    """Compare the candidate with the champion as it is now (call inside the promotion lock).

    Parameters
    ----------
    client : mlflow.tracking.MlflowClient
    model_name : str
    data_sha256 : str
        This run's data fingerprint (tag ``data.sha256``).
    candidate_metrics : mapping
        The candidate's cross-validated summary metrics.
    preferences : mapping
        From :func:`comparison_preferences`.
    tolerance : float
    evaluate_on_this_cohort : callable
        Champion model URI -> (candidate metrics, champion metrics) on this run's cohort, same rows
        (:func:`champion_on_cohort`); called only when the data differ.
    """
    version, run = _champion_run(client, model_name)
    if version is None:
        return ChampionComparison(None, None, None, "the new version becomes champion", (), ())
    number, run_id = str(version.version), version.run_id
    champion_sha = run.data.tags.get("data.sha256") if run is not None else None
    if champion_sha == data_sha256:
        champion_metrics = {key[len("winner/"):]: value for key, value in run.data.metrics.items()
                            if key.startswith("winner/")}
        rows = compare_metrics(candidate_metrics, champion_metrics, preferences, tolerance)
        return ChampionComparison(number, run_id, True, "same data: cross-validated metrics of both runs", rows,
                                  _worse_reasons(rows, number))
    different = (f"trained on different data than champion version {number} (data.sha256 {data_sha256[:12]} vs "
                 f"{(champion_sha or 'unknown')[:12]}); promote it with `car-relapse train --promote` if intended")
    try:
        ours, theirs = evaluate_on_this_cohort(f"models:/{model_name}/{number}")
    except Exception as exc:  # noqa: BLE001 - any failure only means the two cannot be shown side by side
        basis = f"different data: the champion could not be evaluated on this cohort ({type(exc).__name__}: {exc})"
        return ChampionComparison(number, run_id, False, basis, (), (different,))
    rows = compare_metrics(ours, theirs, preferences, tolerance)
    return ChampionComparison(number, run_id, False, "different data: both evaluated on this run's cohort (same rows; "
                              "the candidate out of fold)", rows, (different, *_worse_reasons(rows, number)))


def _worse_reasons(rows: tuple[MetricComparison, ...], champion_version: str) -> tuple[str, ...]:
    return tuple(f"{row.metric} {row.verdict} than champion version {champion_version} "
                 f"({_number(row.candidate)} vs {_number(row.champion)})" if row.candidate is not None
                 else f"{row.metric} {row.verdict}" for row in rows if row.worse)


def _champion_bundle(model_uri: str):
    """The champion's scoring bundle, unpickled with this checkout's code (its model is not loaded
    as a pyfunc: MLflow would swap the ``features``/``models`` modules of this process for its copies)."""
    from pathlib import Path

    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    from pipelines.pyfunc_model import BUNDLE_ARTIFACT, load_bundle

    folder = Path(download_artifacts(artifact_uri=model_uri))
    artifacts = Model.load(str(folder)).flavors["python_function"]["artifacts"]
    return load_bundle(folder / artifacts[BUNDLE_ARTIFACT]["path"])


def champion_on_cohort(model_uri: str, infusions: pd.DataFrame, measurements: pd.DataFrame,
                       landmark_set: pd.DataFrame, candidate_predictions: pd.DataFrame,
                       config) -> tuple[dict[str, float], dict[str, float]]:
    """Score the champion on a cohort as it is served and evaluate it beside the candidate.

    At each landmark day, the patients of the landmark set are scored by the champion's bundle
    (``models.serving.score_tables``: its data contract, feature builders and options, as of that
    day; no explanations). Both sources are evaluated on the rows both scored, without bootstrap.

    Parameters
    ----------
    model_uri : str
        The champion (``models:/<name>/<version>``).
    infusions, measurements : DataFrame
        This run's raw cohort tables.
    landmark_set : DataFrame
        This run's landmark set (targets and ``landmark_day``).
    candidate_predictions : DataFrame
        The candidate's out-of-fold predictions, indexed like ``landmark_set``.
    config : RunConfig
        Horizons, endpoints and evaluation settings.

    Returns
    -------
    (candidate summary metrics, champion summary metrics)
    """
    from models.evaluation import summary_by_source
    from models.serving import score_tables
    from pipelines.experiment import evaluate_landmark_set

    bundle = replace(_champion_bundle(model_uri), n_top_factors=0)
    columns = list(candidate_predictions.columns)
    parts = []
    for day, rows in landmark_set.groupby("landmark_day", sort=True):
        ids = set(rows["patient_id"].astype(str))
        scored = score_tables(bundle, infusions[infusions["patient_id"].astype(str).isin(ids)],
                              measurements[measurements["patient_id"].astype(str).isin(ids)], float(day),
                              on_error="quarantine").scores.set_index("patient_id")
        missing = [column for column in columns if column not in scored.columns]
        if missing:
            raise ValueError(f"the champion does not predict {missing[:3]} (other horizons?)")
        part = scored.reindex(rows["patient_id"].astype(str))[columns]
        part.index = rows.index
        parts.append(part)
    champion = pd.concat(parts).reindex(landmark_set.index)
    quick = config.model_copy(update={"evaluation": config.evaluation.model_copy(update={"bootstrap": 0})})
    evaluation = evaluate_landmark_set(landmark_set, {"candidate": candidate_predictions, "champion": champion}, quick)
    summary = summary_by_source(evaluation.metrics)
    return ({str(k): float(v) for k, v in summary.loc["candidate"].items()},
            {str(k): float(v) for k, v in summary.loc["champion"].items()})
