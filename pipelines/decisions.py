"""HSCT decision curves of a run (``models.decision``): computed from the out-of-fold predictions,
logged to MLflow by ``car-relapse train`` and written to the output folder by ``car-relapse evaluate``.

Policies compared, per landmark and horizon, at thresholds 5-60%:

- every candidate and the oracle (when known): consolidate when the predicted relapse risk by the
  horizon exceeds the threshold (out-of-fold predictions of ``pipelines.experiment.cross_validate``);
- the clinicians' rule: consolidate its high-risk group (a fixed policy; the rule's own
  risk group, ``models.rule.ClinicianRule.risk_group``, on the same rows);
- treat-all and treat-none.

What goes out: ``decision_curves.csv`` (every landmark, horizon, threshold and source, with
patient-bootstrap CIs and paired differences to the rule) and ``decision_curves.png`` (net benefit
at the risk-group horizon, one panel per landmark).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from features.landmarks import feature_columns
from pipelines.config import RunConfig
from pipelines.experiment import ORACLE, RULE

__all__ = [
    "DECISION_FIGURE",
    "DECISION_TABLE",
    "HEADLINE_THRESHOLDS",
    "decision_figure",
    "log_decision_curves",
    "progress_step",
    "rule_high_risk",
    "run_decision_curves",
    "write_decision_curves",
]

DECISION_TABLE, DECISION_FIGURE = "decision_curves.csv", "decision_curves.png"
HEADLINE_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
"""Thresholds the run report quotes in its net-benefit table."""


@contextmanager
def progress_step(progress, description: str) -> Iterator[None]:
    """A one-step task on a rich progress display (nothing when ``progress`` is None)."""
    task = None if progress is None else progress.add_task(description, total=1)
    yield
    if task is not None:
        progress.advance(task)


def rule_high_risk(config: RunConfig, landmark_set: pd.DataFrame) -> np.ndarray:
    """The clinicians' rule's high-risk flag of every landmark-set row (its configured parameters)."""
    from models.factory import BASELINE_NAME, make_model
    from models.rule import HIGH_RISK

    rule = make_model(BASELINE_NAME, config.models.params.get(BASELINE_NAME), config.models.random_state)
    return rule.risk_group(landmark_set[feature_columns(landmark_set)]) == HIGH_RISK


def run_decision_curves(config: RunConfig, landmark_set: pd.DataFrame,
                        predictions: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Decision curves of every candidate, the oracle, the rule, treat-all and treat-none.

    Parameters
    ----------
    config : RunConfig
        Horizons (``evaluation.horizons_days``), bootstrap resamples and random state.
    landmark_set : DataFrame
        The run's landmark set (targets and features).
    predictions : mapping
        Source name -> out-of-fold prediction frame (``pipelines.experiment.cross_validated_sources``);
        the rule's entry is replaced by its fixed high-risk policy.

    Returns
    -------
    DataFrame
        ``models.decision.decision_curves`` table.
    """
    from models.decision import decision_curves

    risks = {name: frame for name, frame in predictions.items() if name != RULE}
    return decision_curves(
        landmark_set[["patient_id", "landmark_day", "time", "event"]], risks,
        horizons_days=[float(h) for h in config.evaluation.horizons_days],
        fixed_policies={RULE: rule_high_risk(config, landmark_set)},
        n_bootstrap=config.evaluation.bootstrap, reference=RULE, random_state=config.models.random_state,
    )


def decision_figure(table: pd.DataFrame, config: RunConfig, winner: str):
    """Net benefit at the risk-group horizon: candidates, rule, oracle; CI bands for winner, rule, oracle."""
    from models.decision import plot_decision_curves

    present = set(table["source"])
    sources = [s for s in (*config.models.candidates, RULE, ORACLE) if s in present]
    bands = [s for s in (winner, RULE, ORACLE) if s in present]
    return plot_decision_curves(table, float(config.registry.risk_group_horizon_days), sources=sources, bands=bands)


def log_decision_curves(config: RunConfig, landmark_set: pd.DataFrame, predictions: Mapping[str, pd.DataFrame],
                        winner: str, progress=None) -> pd.DataFrame:
    """Compute the decision curves and log the table and the figure to the active MLflow run.

    ``progress`` (a rich Progress, optional) gets a one-step task.

    Returns
    -------
    DataFrame
        The table (for the run report).
    """
    import tempfile

    import mlflow

    with progress_step(progress, f"decision curves (bootstrap {config.evaluation.bootstrap})"):
        table = run_decision_curves(config, landmark_set, predictions)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / DECISION_TABLE
        table.to_csv(path, index=False)
        mlflow.log_artifact(str(path), "evaluation")
    mlflow.log_figure(decision_figure(table, config, winner), f"plots/{DECISION_FIGURE}")
    return table


def write_decision_curves(config: RunConfig, landmark_set: pd.DataFrame, predictions: Mapping[str, pd.DataFrame],
                          winner: str, out_dir: Path) -> list[Path]:
    """Compute the decision curves and write the table and the figure to ``out_dir``.

    Returns
    -------
    list of Path
        ``decision_curves.csv`` and ``decision_curves.png``.
    """
    table = run_decision_curves(config, landmark_set, predictions)
    out_dir = Path(out_dir)
    table_path, figure_path = out_dir / DECISION_TABLE, out_dir / DECISION_FIGURE
    table.to_csv(table_path, index=False)
    decision_figure(table, config, winner).savefig(figure_path, dpi=110)
    return [table_path, figure_path]
