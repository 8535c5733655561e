"""The run report and the model card of a training run.

- **Run report** (``report/run_report.html`` in every training run): one self-contained page with the
  data report (counts only, never patient rows), every candidate against the oracle and the
  clinicians' rule, calibration per cause and horizon, the HSCT decision curves and the SHAP summary
  of the winner. Metric tables list whatever metrics the evaluation produced
  (``EvaluationResult.metrics`` / ``.calibration``), so new metrics or endpoints appear without a
  change here.
- **Model card** (``report/model_card.md`` in every run, and the description of the registered
  model version): intended use, the landmark-0 caveat, the training data fingerprint, performance
  against the rule and known limits. :func:`describe_model_version` sets it on a version;
  :func:`model_card` only builds the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import RunConfig
from pipelines.experiment import ORACLE, RULE, PreparedCohort, calibration_by_cause_figure, dataset_hash
from pipelines.html import figure_data_uri, markdown_html, render_page, table_rows

__all__ = [
    "MAX_DESCRIPTION_CHARS",
    "RUN_REPORT_ARTIFACT",
    "MODEL_CARD_ARTIFACT",
    "RunOutcome",
    "describe_model_version",
    "log_run_report",
    "metric_table",
    "model_card",
    "run_report_html",
]

RUN_REPORT_ARTIFACT, MODEL_CARD_ARTIFACT = "report/run_report.html", "report/model_card.md"
MAX_DESCRIPTION_CHARS = 5000
"""MLflow stores a model version description in a 5,000-character column."""
_ALL = "all"
_CARD_THRESHOLDS = (0.2, 0.3)


@dataclass(frozen=True)
class RunOutcome:
    """What the training run decided (from ``pipelines.train``)."""

    run_id: str
    winner: str
    registered: bool
    model_name: str
    model_version: str | None = None
    gate_reasons: tuple[str, ...] = ()
    promoted: bool = False
    champion_reasons: tuple[str, ...] = ()
    created: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))


@dataclass(frozen=True)
class _DataFacts:
    description: str
    sha256: str
    patients: int
    landmark_rows: int
    synthetic: bool


def _data_facts(config: RunConfig, prepared: PreparedCohort) -> _DataFacts:
    validated = prepared.validated
    return _DataFacts(prepared.cohort.description,
                      dataset_hash(validated.infusions, validated.measurements, validated.outcomes),
                      int(validated.report.patients_out), len(prepared.landmark_set), config.data.source == "synthetic")


def _horizon_label(value: Any) -> str:
    return "all horizons" if pd.isna(value) else f"{float(value):g} d"


def metric_table(metrics: pd.DataFrame, sources: Sequence[str], landmark: Any = _ALL,
                 endpoint: str | None = None) -> pd.DataFrame:
    """Estimates of every metric present, sources side by side, at one landmark (``"all"``: the mean).

    Parameters
    ----------
    metrics : DataFrame
        ``EvaluationResult.metrics``.
    sources : sequence of str
        Columns, in order (those present).
    landmark : float or "all"
    endpoint : str, optional
        One endpoint, or every endpoint present.

    Returns
    -------
    DataFrame
        ``endpoint``, ``horizon``, ``metric``, then one column per source.
    """
    rows = metrics[(metrics["kind"] == "estimate") & (metrics["landmark_day"].astype(str) == str(landmark))
                   & metrics["source"].isin(list(sources))]
    if endpoint is not None:
        rows = rows[rows["endpoint"] == endpoint]
    rows = rows.assign(horizon=rows["horizon_days"].map(_horizon_label))
    table = rows.pivot_table(index=["endpoint", "horizon", "metric"], columns="source", values="value", sort=False)
    return table.reindex(columns=[s for s in sources if s in table.columns]).reset_index()


def _versus_rule(metrics: pd.DataFrame, winner: str, horizon: float) -> pd.DataFrame:
    """Winner, rule, oracle and winner - rule [95% CI] for the relapse metrics at the headline horizon."""
    difference = f"{winner} - {RULE}"
    rows = metrics[(metrics["landmark_day"].astype(str) == _ALL) & (metrics["endpoint"] == "relapse")
                   & (np.isclose(metrics["horizon_days"].astype(float), horizon) | metrics["horizon_days"].isna())]
    records = []
    for metric, group in rows.groupby("metric", sort=False):
        by_source = group.set_index("source")
        record: dict[str, Any] = {"metric": str(metric)}
        for source in (winner, RULE, ORACLE):
            if source in by_source.index:
                record[source] = float(by_source.loc[source, "value"])
        if difference in by_source.index:
            low, high = by_source.loc[difference, ["ci_low", "ci_high"]]
            record[f"{difference} [95% CI]"] = f"{by_source.loc[difference, 'value']:+.3f} [{low:+.3f}, {high:+.3f}]"
        records.append(record)
    return pd.DataFrame.from_records(records)


def _net_benefit_rows(decisions: pd.DataFrame, sources: Sequence[str], horizon: float,
                      thresholds: Sequence[float]) -> pd.DataFrame:
    from models.decision import net_benefit_at

    records = []
    for landmark in sorted(decisions["landmark_day"].unique()):
        for threshold in thresholds:
            at = net_benefit_at(decisions, landmark, horizon, threshold)
            record: dict[str, Any] = {"landmark": f"day {landmark:g}", "threshold": f"{threshold:.0%}"}
            for source in sources:
                if source in at.index:
                    row = at.loc[source]
                    record[source] = f"{row['net_benefit']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
            records.append(record)
    return pd.DataFrame.from_records(records)


def _markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    data = table_rows(frame, digits=digits)
    lines = ["| " + " | ".join(data["columns"]) + " |", "|" + "---|" * len(data["columns"])]
    lines += ["| " + " | ".join(row) + " |" for row in data["rows"]]
    return "\n".join(lines)


def model_card(config: RunConfig, prepared: PreparedCohort, evaluation, decisions: pd.DataFrame,
               outcome: RunOutcome) -> str:
    """The model card (Markdown, at most :data:`MAX_DESCRIPTION_CHARS` characters).

    Parameters
    ----------
    config : RunConfig
    prepared : PreparedCohort
        The training cohort (fingerprint, counts).
    evaluation : models.evaluation.EvaluationResult
        Cross-validated metrics of every source.
    decisions : DataFrame
        ``models.decision.decision_curves`` table of the run.
    outcome : RunOutcome

    Returns
    -------
    str
    """
    data = _data_facts(config, prepared)
    horizon = float(config.registry.risk_group_horizon_days)
    landmarks = ", ".join(f"{d:g}" for d in config.features.landmark_days)
    horizons = ", ".join(f"{h:g}" for h in config.evaluation.horizons_days)
    versus = _versus_rule(evaluation.metrics, outcome.winner, horizon)
    benefit = _net_benefit_rows(decisions, [outcome.winner, RULE], horizon, _CARD_THRESHOLDS)
    synthetic = ("- **Trained on a simulated cohort**: the numbers describe the simulator, not real patients; "
                 "validate on real data before any clinical use.\n" if data.synthetic else "")
    card = f"""# {outcome.model_name}: {outcome.winner} (run {outcome.run_id})

**Intended use.** Research decision support for children and young adults with relapsed/refractory B-ALL
after CD19 CAR T cells who are **in remission and event-free** at a follow-up visit (landmarks {landmarks} days):
cumulative incidence of relapse by phenotype (CD19-positive, CD19-negative, lineage switch), with death in
remission and consolidative HSCT as competing events, at {horizons} days; a risk group and its drivers.
It informs, never replaces, the decision on consolidative HSCT and on surveillance.

**Landmark 0 caveat.** At infusion the model predicts relapse **among patients who reach remission**: read it
as "risk of relapse if the patient reaches remission". It does not predict non-response (10-30% of patients).

**Training data.** {data.description}; {data.patients} patients, {data.landmark_rows} landmark rows;
HSCT: {config.features.hsct}; fingerprint (sha256 of the validated tables) `{data.sha256}`.

**Performance against the clinicians' rule** (cross-validated, folds grouped by {config.evaluation.group_by};
relapse by {horizon:g} days, mean over landmarks):

{_markdown_table(versus)}

Net benefit of "consolidate if predicted relapse risk > threshold" (rule: its high-risk group), [95% CI]:

{_markdown_table(benefit)}

**Known limits.**
{synthetic}- HSCT under the training cohort's practice is a competing event: predicted risks assume that practice
  continues; a center transplanting more (or less) often sees less (or more) relapse than predicted.
- Landmarks after day {max(config.features.landmark_days):g} extrapolate; patients not in remission, after
  relapse or after HSCT are out of scope.
- Values below a detection limit are censored, not zero; a patient without a trackable NGS clone is
  scored from flow and other data only.
- The explanation (SHAP) says what drives the model, not what causes relapse.
"""
    return card if len(card) <= MAX_DESCRIPTION_CHARS else card[: MAX_DESCRIPTION_CHARS - 20] + "\n\n(truncated)\n"


# --- the HTML run report ---------------------------------------------------------------------------------
def _events_figure(landmark_set: pd.DataFrame):
    """Rows per landmark, stacked by their first event within the horizon."""
    from matplotlib.figure import Figure

    counts = pd.crosstab(landmark_set["landmark_day"], landmark_set["event"])
    figure = Figure(figsize=(7.5, 3.6), layout="constrained")
    axes = figure.subplots()
    bottom = np.zeros(len(counts))
    for event in counts.columns:
        axes.bar([f"day {d:g}" for d in counts.index], counts[event], bottom=bottom, label=str(event))
        bottom += counts[event].to_numpy()
    axes.set(xlabel="landmark", ylabel="patients at risk", title="Landmark risk sets by first event within the horizon")
    figure.legend(fontsize="small", loc="outside right upper")
    return figure


def _data_section(prepared: PreparedCohort) -> dict[str, Any]:
    """Counts only: no patient id, no example row."""
    report = prepared.validated.report.to_dict()
    tables = pd.DataFrame([{"table": name, "source": t["source"], "rows in": t["rows_in"], "rows out": t["rows_out"],
                            "rows quarantined": t["rows_quarantined"],
                            "reasons": "; ".join(f"{k} ({v})" for k, v in t["reasons"].items())}
                           for name, t in report["tables"].items()])
    events = pd.crosstab(prepared.landmark_set["landmark_day"], prepared.landmark_set["event"], margins=True,
                         margins_name="total").reset_index()
    events["landmark_day"] = events["landmark_day"].map(lambda d: d if isinstance(d, str) else f"day {d:g}")
    return {
        "patients_in": report["patients_in"], "patients_out": report["patients_out"],
        "quarantined": len(report["quarantined_patients"]), "notes": report["notes"],
        "tables": table_rows(tables), "events": table_rows(events),
        "figure": figure_data_uri(_events_figure(prepared.landmark_set)),
    }


def _calibration_figures(calibration: pd.DataFrame, source: str) -> list[dict[str, Any]]:
    """Per endpoint present in the calibration tables, one figure of ``source``: a line per horizon."""
    from models.plots import plot_calibration

    sections = []
    for endpoint in dict.fromkeys(calibration["endpoint"]):
        part = calibration[(calibration["endpoint"] == endpoint) & (calibration["source"] == source)]
        if part.empty:
            continue
        by_horizon = part.assign(source=part["horizon_days"].map(lambda h: f"{float(h):g} days"), horizon_days=0.0)
        figure = plot_calibration(by_horizon, 0.0, endpoint=str(endpoint), sources=list(dict.fromkeys(by_horizon["source"])),
                                  title=f"Calibration of {source}: {endpoint}, one line per horizon")
        figure.axes[0].set_ylabel(f"observed {endpoint} incidence (Aalen-Johansen)")
        sections.append({"endpoint": str(endpoint), "figure": figure_data_uri(figure, dpi=75)})
    return sections


def _comparison_section(config: RunConfig, evaluation, outcome: RunOutcome) -> dict[str, Any]:
    from models.evaluation import summary_by_source
    from models.plots import plot_metric_by_landmark

    metrics = evaluation.metrics
    sources = [*config.models.candidates, RULE, ORACLE]
    horizon = float(config.registry.risk_group_horizon_days)
    shown_metric = config.evaluation.selection_metric
    if not (metrics["metric"] == shown_metric).any() or metrics.loc[metrics["metric"] == shown_metric,
                                                                    "horizon_days"].isna().all():
        shown_metric = "uno_c"
    summary = summary_by_source(metrics)
    summary = summary.reindex([s for s in sources if s in summary.index]).reset_index()
    return {
        "metric": shown_metric, "horizon": f"{horizon:g}",
        "figure": figure_data_uri(plot_metric_by_landmark(metrics, shown_metric, horizon, sources=sources)),
        "summary": table_rows(summary),
        "versus_rule": table_rows(_versus_rule(metrics, outcome.winner, horizon)),
    }


def _calibration_section(config: RunConfig, evaluation, outcome: RunOutcome) -> dict[str, Any]:
    sources = [outcome.winner, RULE, ORACLE]
    metrics = metric_table(evaluation.metrics, sources)
    by_cause = calibration_by_cause_figure(config, evaluation.metrics, outcome.winner, set(evaluation.metrics["source"]))
    return {
        "by_cause": figure_data_uri(by_cause, dpi=75),
        "figures": _calibration_figures(evaluation.calibration, outcome.winner) if len(evaluation.calibration) else [],
        "tables": [{"endpoint": str(endpoint), "table": table_rows(part.drop(columns="endpoint"))}
                   for endpoint, part in metrics.groupby("endpoint", sort=False)],
    }


def _decision_section(config: RunConfig, decisions: pd.DataFrame, outcome: RunOutcome) -> dict[str, Any]:
    from pipelines.decisions import HEADLINE_THRESHOLDS, decision_figure

    horizon = float(config.registry.risk_group_horizon_days)
    sources = [s for s in (outcome.winner, RULE, ORACLE, "treat_all") if s in set(decisions["source"])]
    return {"horizon": f"{horizon:g}", "figure": figure_data_uri(decision_figure(decisions, config, outcome.winner)),
            "table": table_rows(_net_benefit_rows(decisions, sources, horizon, HEADLINE_THRESHOLDS))}


def _shap_section(explanation, winner: str) -> dict[str, Any] | None:
    if explanation is None:
        return None
    from models.explain import plot_beeswarm, plot_importance_bar

    return {"output": explanation.output, "method": explanation.method, "rows": len(explanation.data),
            "beeswarm": figure_data_uri(plot_beeswarm(explanation, title=f"SHAP: {winner}")),
            "importance": figure_data_uri(plot_importance_bar(explanation, title=f"SHAP importance: {winner}"))}


def run_report_html(config: RunConfig, prepared: PreparedCohort, evaluation, decisions: pd.DataFrame, explanation,
                    outcome: RunOutcome, card: str | None = None) -> str:
    """The self-contained HTML run report (see the module docstring).

    Parameters
    ----------
    config : RunConfig
    prepared : PreparedCohort
    evaluation : models.evaluation.EvaluationResult
    decisions : DataFrame
        ``models.decision.decision_curves`` table.
    explanation : models.explain.Explanation or None
        SHAP of the refitted winner.
    outcome : RunOutcome
    card : str, optional
        The model card (Markdown); built with :func:`model_card` when not given.

    Returns
    -------
    str
    """
    card = card if card is not None else model_card(config, prepared, evaluation, decisions, outcome)
    data = _data_facts(config, prepared)
    return render_page(
        "run_report.html.j2", outcome=outcome, data=data, data_section=_data_section(prepared),
        comparison=_comparison_section(config, evaluation, outcome),
        calibration=_calibration_section(config, evaluation, outcome),
        decision=_decision_section(config, decisions, outcome), shap=_shap_section(explanation, outcome.winner),
        card_html=markdown_html(card), oracle=ORACLE in set(evaluation.metrics["source"]),
    )


# --- MLflow -----------------------------------------------------------------------------------------------
def describe_model_version(model_name: str, version: str, card: str) -> None:
    """Set the model card as the description of a registered model version.

    Parameters
    ----------
    model_name, version : str
    card : str
        At most :data:`MAX_DESCRIPTION_CHARS` characters (:func:`model_card` keeps to that).
    """
    from mlflow.tracking import MlflowClient

    MlflowClient().update_model_version(model_name, version, description=card[:MAX_DESCRIPTION_CHARS])


def log_run_report(config: RunConfig, prepared: PreparedCohort, evaluation, decisions: pd.DataFrame, explanation,
                   outcome: RunOutcome, progress=None) -> str:
    """Log the model card and the HTML run report to the active run; describe the registered version.

    ``progress`` (a rich Progress, optional) gets a one-step task.

    Returns
    -------
    str
        Where the run report is: a local path for a local artifact store, else its artifact URI.
    """
    import mlflow

    from pipelines.decisions import progress_step

    with progress_step(progress, "run report and model card"):
        card = model_card(config, prepared, evaluation, decisions, outcome)
        mlflow.log_text(card, MODEL_CARD_ARTIFACT)
        mlflow.log_text(run_report_html(config, prepared, evaluation, decisions, explanation, outcome, card),
                        RUN_REPORT_ARTIFACT)
        if outcome.registered and outcome.model_version is not None:
            describe_model_version(outcome.model_name, outcome.model_version, card)
    uri = mlflow.get_artifact_uri(RUN_REPORT_ARTIFACT)
    return uri.removeprefix("file://") if uri.startswith("file:///") else uri
