"""The ``car-relapse`` command line.

Each command is thin: it parses arguments and calls the job function of its module in
``pipelines``. Bad input is reported as a clear message and a non-zero exit code, never as a
traceback.
"""

from __future__ import annotations

from pathlib import Path

import typer

_PROJECT_PACKAGES = frozenset({"features", "models", "pipelines"})


def _run_job(job, **kwargs) -> None:
    """Call a job function; the project's own error types become a message and an exit code.

    Exit codes (every command): 0 ok; 1 the job failed for a reason other than its input
    (tracking store, registry, a file it cannot write; an uncaught bug also ends with 1, with
    its traceback); 2 bad input (usage, config, data, a missing file or model). Errors raised by
    car-relapse itself, and files that cannot be written, are meant for the user, so they are
    printed without a traceback. Anything else is a bug and propagates.
    """
    try:
        job(**kwargs)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - filtered by origin just below
        from pipelines.registry import RegistryError
        from pipelines.tracking import TrackingError
        from pipelines.validate import EXIT_BAD_INPUT, EXIT_FAILED

        ours = type(exc).__module__.split(".")[0] in _PROJECT_PACKAGES
        if not ours and not isinstance(exc, OSError):  # a file or folder the job could not write: not a bug
            raise
        typer.echo(f"error: {exc}", err=True)
        failed = isinstance(exc, (TrackingError, RegistryError)) or not ours
        raise typer.Exit(code=EXIT_FAILED if failed else EXIT_BAD_INPUT) from None


app = typer.Typer(
    name="car-relapse",
    help="Predict relapse and relapse phenotype after CD19 CAR T-cell therapy.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


@app.command()
def simulate(
    patients: int = typer.Option(2000, "--patients", min=1, help="Number of patients to simulate."),
    seed: int = typer.Option(20261121, "--seed", help="Random seed."),
    out: Path = typer.Option(..., "--out", help="Output folder for the cohort tables."),
    oracle: bool = typer.Option(False, "--oracle/--no-oracle", help="Also compute the Monte Carlo oracle (slow)."),
    file_format: str = typer.Option("parquet", "--format", help="parquet or csv."),
) -> None:
    """Simulate a synthetic cohort (three input tables plus a separate ground truth)."""
    from pipelines.simulate import run_simulate

    _run_job(run_simulate, n_patients=patients, seed=seed, out_dir=out, with_oracle=oracle, file_format=file_format)


@app.command()
def validate(
    input_dir: Path = typer.Option(..., "--input", help="Cohort folder with the three tables."),
    on_error: str = typer.Option("fail", "--on-error", help="fail or quarantine bad rows."),
    report: Path | None = typer.Option(None, "--report", help="Also write the data report as JSON here."),
) -> None:
    """Validate a cohort folder against the data contract and print the data report."""
    from pipelines.validate import run_validate

    _run_job(run_validate, input_dir=input_dir, on_error=on_error, report_path=report)


@app.command()
def features(
    input_dir: Path = typer.Option(..., "--input", help="Cohort folder with the three tables."),
    landmarks: str = typer.Option("0,28,91,182", "--landmarks", help="Comma-separated landmark days."),
    horizon_days: float = typer.Option(730.0, "--horizon-days", help="Prediction horizon in days."),
    out: Path = typer.Option(..., "--out", help="Output file (.parquet or .csv)."),
    on_error: str = typer.Option("fail", "--on-error", help="fail or quarantine bad rows."),
) -> None:
    """Build the stacked landmark training set."""
    from pipelines.build_features import run_features

    _run_job(run_features, input_dir=input_dir, landmarks=landmarks, horizon_days=horizon_days, out=out, on_error=on_error)


@app.command()
def calibrate(
    patients: int = typer.Option(20000, "--patients", min=100),
    seed: int = typer.Option(20261121, "--seed"),
    out: Path = typer.Option(Path("docs/calibration.md"), "--out"),
) -> None:
    """Regenerate the calibration report (published targets vs simulated figures)."""
    from pipelines.calibration import run_calibration

    _run_job(run_calibration, n_patients=patients, seed=seed, out_path=out)


@app.command()
def evaluate(
    config: Path = typer.Option(Path("configs/default.yaml"), "--config"),
    out: Path = typer.Option(..., "--out", help="Output folder for metrics.json and plots."),
) -> None:
    """Evaluate the configured candidates against the oracle and the clinicians' rule."""
    from pipelines.evaluate import run_evaluate

    _run_job(run_evaluate, config_path=config, out_dir=out)


@app.command()
def train(
    config: Path = typer.Option(Path("configs/default.yaml"), "--config"),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", help="MLflow tracking/registry URI; wins over MLFLOW_TRACKING_URI and the config."
    ),
) -> None:
    """Train the configured candidates, log to MLflow and register the winner (gated)."""
    from pipelines.train import run_train

    _run_job(run_train, config_path=config, tracking_uri=tracking_uri)


@app.command("check-config")
def check_config(
    config: Path = typer.Option(..., "--config", help="YAML run config to check."),
) -> None:
    """Check a run config without running anything: OK and what it resolves to, or every problem (exit 2)."""
    from pipelines.check_config import run_check_config

    _run_job(run_check_config, config_path=config)


@app.command()
def surveillance(
    config: Path = typer.Option(Path("configs/surveillance.yaml"), "--config", help="Schedules to compare (YAML)."),
    out: Path = typer.Option(Path("outputs/surveillance"), "--out", help="Output folder for the table and the plot."),
) -> None:
    """Compare MRD surveillance schedules on the same simulated patients."""
    from pipelines.surveillance import run_surveillance

    _run_job(run_surveillance, config_path=config, out_dir=out)


@app.command()
def score(
    model: str = typer.Option("models:/car-relapse@champion", "--model", help="MLflow model URI."),
    input_dir: Path = typer.Option(..., "--input"),
    as_of_day: float | None = typer.Option(None, "--as-of-day", help="Use only data known by this day (every patient)."),
    as_of_day_column: str | None = typer.Option(
        None, "--as-of-day-column",
        help="Instead of --as-of-day: a column of the infusions table with each patient's as-of day.",
    ),
    output: Path = typer.Option(..., "--output", help=".parquet or .csv"),
    chunk_size: int = typer.Option(5000, "--chunk-size", min=1),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri"),
    on_error: str = typer.Option(
        "quarantine", "--on-error",
        help="quarantine: score the patients the contract accepts, list the rest in <output stem>.rejects.csv; "
        "fail: score nothing if any row breaks the contract (exit code 2).",
    ),
) -> None:
    """Batch-score a cohort folder with a registered model (with outcomes: each patient's eligibility)."""
    from pipelines.score import run_score

    _run_job(
        run_score,
        model_uri=model,
        input_dir=input_dir,
        as_of_day=as_of_day,
        as_of_day_column=as_of_day_column,
        output=output,
        chunk_size=chunk_size,
        tracking_uri=tracking_uri,
        on_error=on_error,
    )


@app.command()
def report(
    model: str = typer.Option("models:/car-relapse@champion", "--model", help="MLflow model URI."),
    input_dir: Path = typer.Option(..., "--input", help="Cohort folder (infusions, measurements; outcomes optional)."),
    as_of_day: float = typer.Option(..., "--as-of-day", help="Use only data known by this day."),
    out: Path = typer.Option(..., "--out", help="HTML file with --patient; else a folder (one page per patient + index)."),
    patient: str | None = typer.Option(None, "--patient", help="One patient_id; omit for every patient of the folder."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri"),
) -> None:
    """Write self-contained HTML report(s) of patients as of a day: timeline, risks, drivers, caveats."""
    from pipelines.report import run_patient_report

    _run_job(run_patient_report, model_uri=model, input_dir=input_dir, as_of_day=as_of_day, out=out, patient=patient,
             tracking_uri=tracking_uri)


@app.command()
def serve(
    model: str = typer.Option("models:/car-relapse@champion", "--model"),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (localhost by default)."),
    port: int = typer.Option(5001, "--port"),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri"),
) -> None:
    """Serve the champion model with MLflow's scoring server on localhost."""
    from pipelines.serve import run_serve

    _run_job(run_serve, model_uri=model, host=host, port=port, tracking_uri=tracking_uri)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
