"""``car-relapse check-config --config FILE``: is this run config usable? Nothing is run or read.

It loads the file (unknown keys, wrong types, a missing ``data.input_dir`` folder) and runs the
checks across sections every job runs first (``pipelines.config.check_config``), then prints
``OK`` with what the config resolves to, or every problem and exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from pipelines.config import ConfigError, RunConfig, check_config, load_config
from pipelines.validate import EXIT_BAD_INPUT

__all__ = ["config_summary", "run_check_config"]


def config_summary(config: RunConfig) -> list[str]:
    """What a usable config resolves to: the cohort, the candidates, where runs and the model go.

    Parameters
    ----------
    config : RunConfig

    Returns
    -------
    list of str
        One line each.
    """
    from pipelines.tracking import resolve_tracking_uri

    data = config.data
    cohort = (f"folder {data.input_dir}" if data.source == "folder"
              else f"synthetic ({data.synthetic.n_patients} patients, seed {data.synthetic.seed})")
    return [
        f"cohort:      {cohort}; bad rows: {data.on_error}",
        f"landmarks:   {', '.join(f'{day:g}' for day in config.features.landmark_days)} "
        f"(days since infusion); horizons {', '.join(f'{h:g}' for h in config.evaluation.horizons_days)} days",
        f"candidates:  {', '.join(config.models.candidates)} (winner by {config.evaluation.selection_metric})",
        f"tracking:    {resolve_tracking_uri(None, config.tracking.tracking_uri)} "
        f"(experiment {config.tracking.experiment})",
        f"model:       {config.registry.model_name}",
    ]


def run_check_config(config_path: Path) -> RunConfig:
    """Load and check a run config; print OK and its summary, or every problem.

    Parameters
    ----------
    config_path : Path
        YAML run config.

    Returns
    -------
    RunConfig

    Raises
    ------
    typer.Exit
        Code 2 after printing the problems to stderr, when the config is not usable.
    """
    console, errors = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    try:
        config = load_config(Path(config_path))
        check_config(config)
    except ConfigError as exc:
        errors.print(f"config error: {exc}", markup=False, highlight=False)
        raise typer.Exit(code=EXIT_BAD_INPUT) from None
    console.print(f"OK: {config_path}", markup=False, highlight=False)
    for line in config_summary(config):
        console.print(f"  {line}", markup=False, highlight=False)
    return config
