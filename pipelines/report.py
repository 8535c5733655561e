"""``car-relapse report``: a self-contained HTML page per patient, as of a day.

    car-relapse report --model models:/car-relapse@champion --input DIR --patient ID --as-of-day 91 --out report.html
    car-relapse report --model models:/car-relapse@champion --input DIR --as-of-day 91 --out reports/

The page shows, for one patient at the as-of day:

- the timeline of what was known by that day: MRD by specimen and assay (values below a detection
  limit drawn as open "<" markers at the limit, never as zero), peripheral B cells with the
  B-cell recovery threshold (B-cell aplasia lost at or above it), CD19 / CD22 expression on
  blasts, CAR transgene copies;
- the predicted cumulative incidence of relapse by phenotype, with death and HSCT, over the
  model's horizons; the risk group and the factors driving it (a SHAP waterfall);
- whether the patient is eligible at that day (in remission and event-free as far as the
  outcomes table shows, ``features.eligibility``, as batch scoring says it), and the model's
  caveats (with the registered version's model card).

The folder is read with ``pipelines.io`` and validated with the data contract (once); the numbers come
from ``models.serving.score_validated``, the scoring step batch scoring and the served model use, with
the scored horizons extended to a grid for the curves and every feature's contribution kept for
the waterfall. Without ``--patient`` every patient of the folder gets a page, plus ``index.html``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.eligibility import ELIGIBLE, eligibility_at
from models.base import CAUSES, cif_column, event_free_column, relapse_column
from models.serving import ScoringBundle

__all__ = [
    "ModelFacts",
    "PatientReportError",
    "patient_page",
    "plot_patient_timeline",
    "registered_model_card",
    "report_bundle",
    "run_patient_report",
    "write_reports",
]

_CURVE_STEP_DAYS = 14.0
_MRD_ASSAYS = ("flow_mrd", "ngs_mrd", "pcr_mrd")
_MORPHOLOGICAL_RELAPSE_FRACTION = 0.05


class PatientReportError(ValueError):
    """The report cannot be made (unknown patient, bad as-of day, unusable model or folder)."""


# --- scoring -----------------------------------------------------------------------------------------------
def report_bundle(bundle: ScoringBundle) -> ScoringBundle:
    """The bundle with the scored horizons extended to a curve grid and every feature's contribution kept.

    The model, features and risk groups are the bundle's own; only what :func:`models.serving.score_tables`
    reports grows.
    """
    top = max(bundle.horizons_days)
    grid = np.arange(_CURVE_STEP_DAYS, top + _CURVE_STEP_DAYS / 2, _CURVE_STEP_DAYS)
    horizons = tuple(sorted({float(h) for h in (*bundle.horizons_days, *grid)}))
    return dataclasses.replace(bundle, horizons_days=horizons, n_top_factors=len(bundle.feature_columns))


def _curves(scores: pd.Series, horizons: Sequence[float]):
    """The patient's predicted curves (models.competing.CIFCurves, one row) from the scored grid."""
    from models.competing import CIFCurves

    times = np.array([0.0, *horizons])
    cif = {cause: np.array([[0.0, *(float(scores[cif_column(cause, h)]) for h in horizons)]]) for cause in CAUSES}
    event_free = np.array([[1.0, *(float(scores[event_free_column(h)]) for h in horizons)]])
    return CIFCurves(times=times, cif=cif, event_free=event_free)


def _waterfall(scores: pd.Series, bundle: ScoringBundle):
    """SHAP waterfall of every feature's contribution, from the scored ``top_factor_*`` columns."""
    from models.explain import Explanation, plot_waterfall

    ranks = range(1, len(bundle.feature_columns) + 1)
    names = [str(scores[f"top_factor_{k}"]) for k in ranks if f"top_factor_{k}" in scores.index]
    values = np.array([[float(scores[f"top_factor_{k}_contribution"]) for k in range(1, len(names) + 1)]])
    data = pd.DataFrame([[float(scores[f"top_factor_{k}_value"]) for k in range(1, len(names) + 1)]], columns=names)
    output = str(scores.get("top_factor_output", "relapse risk"))
    explanation = Explanation(values=values, base_value=0.0, data=data, output=output, method="")
    return plot_waterfall(explanation, 0, title="Factors driving this patient's relapse risk (SHAP)")


# --- the timeline ------------------------------------------------------------------------------------------
def _draw_series(axes, part: pd.DataFrame, label: str, color: str) -> None:
    """A result series: quantified values joined by a line, censored ones as open "<" markers at the limit."""
    part = part.sort_values("day")
    axes.plot(part["day"], part["value"], color=color, linewidth=1, alpha=0.6)
    quantified = part[~part["censored"]]
    axes.plot(quantified["day"], quantified["value"], "o", color=color, markersize=5, label=label)
    below_loq = part["censored"] & part["detected_below_loq"]
    censored = part[part["censored"] & ~below_loq]
    if len(censored):
        axes.plot(censored["day"], censored["value"], "v", markerfacecolor="white", color=color, markersize=6,
                  label=f"{label} < limit")
    if below_loq.any():
        axes.plot(part.loc[below_loq, "day"], part.loc[below_loq, "value"], "D", markerfacecolor="white", color=color,
                  markersize=5, label=f"{label} detected < LOQ")


def _mrd_panel(axes, measurements: pd.DataFrame) -> None:
    mrd = measurements[measurements["assay"].isin(_MRD_ASSAYS)]
    for k, ((specimen, assay), part) in enumerate(mrd.groupby(["specimen", "assay"], observed=True, sort=True)):
        _draw_series(axes, part, f"{specimen} {assay.replace('_mrd', '')}", f"C{k}")
    axes.axhline(_MORPHOLOGICAL_RELAPSE_FRACTION, color="#8a1c17", linestyle=":", linewidth=1)
    axes.text(0.01, _MORPHOLOGICAL_RELAPSE_FRACTION, "5% blasts", transform=axes.get_yaxis_transform(), fontsize=7,
              va="bottom", color="#8a1c17")
    axes.set(yscale="log", ylabel="MRD (fraction)", title="MRD by specimen and assay (open markers: below the limit)")
    if len(mrd) == 0:
        axes.text(0.5, 0.5, "no MRD result", transform=axes.transAxes, ha="center", color="grey")


def _b_cell_panel(axes, measurements: pd.DataFrame, thresholds: dict[str, float]) -> None:
    b_cells = measurements[measurements["assay"] == "b_cell_count"]
    for k, (unit, part) in enumerate(b_cells.groupby("unit", sort=True)):
        _draw_series(axes, part, f"B cells ({unit})", f"C{k}")
        if unit in thresholds:
            axes.axhline(thresholds[unit], color=f"C{k}", linestyle="--", linewidth=1)
            axes.text(0.01, thresholds[unit], f"recovery threshold {thresholds[unit]:g} {unit}: aplasia lost at or above",
                      transform=axes.get_yaxis_transform(), fontsize=7, va="bottom", color=f"C{k}")
    axes.set_yscale("symlog", linthresh=1.0)  # counts of 0 stay on the axis
    axes.set(ylabel="PB CD19+ B cells", title="B-cell aplasia (peripheral CD19+ B cells)")
    axes.set_ylim(bottom=0.0)
    if len(b_cells) == 0:
        axes.text(0.5, 0.5, "no B-cell count", transform=axes.transAxes, ha="center", color="grey")


def _point_panel(axes, measurements: pd.DataFrame, assays: Sequence[str], ylabel: str, title: str,
                 log: bool) -> None:
    shown = measurements[measurements["assay"].isin(assays)]
    for k, (assay, part) in enumerate(shown.groupby("assay", observed=True, sort=True)):
        _draw_series(axes, part, str(assay), f"C{k + 3}")
    axes.set(ylabel=ylabel, title=title, yscale="log" if log else "linear")
    if not log:
        axes.set_ylim(-5, 105)
    if len(shown) == 0:
        axes.text(0.5, 0.5, "no result", transform=axes.transAxes, ha="center", color="grey")


def plot_patient_timeline(measurements: pd.DataFrame, as_of_day: float, recovery_thresholds: dict[str, float]):
    """Four panels sharing the day axis: MRD, B cells, CD19/CD22 on blasts, CAR copies (known by ``as_of_day``).

    Parameters
    ----------
    measurements : DataFrame
        The patient's normalised measurements (``features.contract.validate_cohort``), day <= as-of.
    as_of_day : float
    recovery_thresholds : dict
        Unit -> B-cell recovery threshold (``cells/uL``, ``pct_lymphocytes``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 10.5), layout="constrained")
    mrd, b_cells, antigen, car = figure.subplots(4, 1, sharex=True)
    _mrd_panel(mrd, measurements)
    _b_cell_panel(b_cells, measurements, recovery_thresholds)
    _point_panel(antigen, measurements, ("cd19_pct_blasts", "cd22_pct_blasts"), "% of blasts",
                 "CD19 / CD22 expression on blasts", log=False)
    _point_panel(car, measurements, ("car_copies",), "copies/ug DNA", "CAR transgene copies (blood)", log=True)
    start = float(min(measurements["day"].min(), 0.0)) if len(measurements) else 0.0
    for axes in (mrd, b_cells, antigen, car):
        axes.axvline(as_of_day, color="black", linestyle="--", linewidth=1)
        axes.axvline(0.0, color="grey", linewidth=0.6)
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    car.set_xlim(start - 7, max(as_of_day, 1.0) * 1.04 + 7)
    car.set_xlabel(f"days since infusion (dashed line: as of day {as_of_day:g}; 0 = infusion)")
    return figure


# --- the page ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFacts:
    """What the page says about the model: identity, risk groups, and the registered model card."""

    uri: str
    bundle: ScoringBundle
    card: str | None = None


def _caveats(as_of_day: float, eligibility: pd.Series, measurements: pd.DataFrame, output: str) -> list[str]:
    caveats = []
    if eligibility["eligible"] != ELIGIBLE:
        caveats.append(f"Eligible: {eligibility['eligible']} ({eligibility['eligibility_reason']}): the model was built for "
                       "patients in remission and event-free at the day; read these numbers as a reference only.")
    if as_of_day <= 0:
        caveats.append("At infusion (day 0) the model predicts relapse among patients who reach remission: read it as "
                       "'risk of relapse if the patient reaches remission'. It does not predict non-response.")
    if not (measurements["assay"] == "ngs_mrd").any():
        caveats.append("No NGS-MRD result by this day (no trackable clone, or not done): the risk rests on flow MRD "
                       "and the other data.")
    caveats.append("Death in remission and consolidative HSCT are competing events: the relapse risk is that under the "
                   "training cohort's transplant practice, among patients who are not transplanted first.")
    caveats.append(f"The waterfall shows contributions to the {output}, from the model's reference (the average "
                   "training patient); they say what drives the model, not what causes relapse.")
    return caveats


def _risk_facts(scores: pd.Series, bundle: ScoringBundle) -> dict[str, Any]:
    horizon = float(bundle.risk_group_horizon_days)
    cutoffs = ", ".join(f"{c:.0%}" for c in bundle.risk_group_cutoffs)
    rows = pd.DataFrame([{"horizon": f"{h:g} days", "relapse (all)": scores[relapse_column(h)],
                          **{cause.replace("relapse_", "relapse "): scores[cif_column(cause, h)] for cause in CAUSES},
                          "event-free": scores[event_free_column(h)]} for h in bundle.horizons_days])
    return {"group": str(scores["risk_group"]), "horizon": f"{horizon:g}", "cutoffs": cutoffs,
            "risk": f"{float(scores[relapse_column(horizon)]):.1%}", "table": rows}


def patient_page(patient_id: str, scores: pd.Series, measurements: pd.DataFrame, eligibility: pd.Series,
                 as_of_day: float, model: ModelFacts, later_results: int = 0) -> str:
    """The HTML page of one patient.

    Parameters
    ----------
    patient_id : str
    scores : Series
        The patient's row of ``models.serving.score_tables`` with :func:`report_bundle`.
    measurements : DataFrame
        The patient's normalised measurements known by ``as_of_day``.
    eligibility : Series
        ``eligible`` and ``eligibility_reason`` (``features.eligibility.eligibility_at``).
    as_of_day : float
    model : ModelFacts
    later_results : int
        Results after the as-of day (not used, not shown; counted on the page).

    Returns
    -------
    str
    """
    from models.plots import plot_cif_curves
    from pipelines.html import figure_data_uri, markdown_html, render_page, table_rows

    bundle = model.bundle
    options = bundle.builder_options.get("bca", {})
    thresholds = {"cells/uL": float(options.get("recovery_cells_per_ul", 10.0)),
                  "pct_lymphocytes": float(options.get("recovery_pct_lymphocytes", 1.0))}
    grid = sorted(float(h) for h in report_bundle(bundle).horizons_days)
    curves = plot_cif_curves(_curves(scores, grid), [0], [f"from the as-of day ({as_of_day:g})"])
    curves.set_size_inches(7.0, 4.4)
    curves.tight_layout()
    risk = _risk_facts(scores, bundle)
    risk["table"] = table_rows(risk["table"])
    return render_page(
        "patient_report.html.j2", patient_id=patient_id, as_of_day=f"{as_of_day:g}", model=model,
        eligibility=eligibility, risk=risk, later_results=later_results,
        timeline=figure_data_uri(plot_patient_timeline(measurements, as_of_day, thresholds), dpi=80),
        curves=figure_data_uri(curves, dpi=90), waterfall=figure_data_uri(_waterfall(scores, bundle), dpi=90),
        caveats=_caveats(as_of_day, eligibility, measurements, str(scores.get("top_factor_output", "relapse risk"))),
        card_html=markdown_html(model.card) if model.card else None,
    )


# --- the job -------------------------------------------------------------------------------------------------
_UNSAFE_FILE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


def _file_name(patient_id: str, taken: set[str]) -> str:
    """A file name for the patient's page: safe characters only, unique within the folder."""
    stem = _UNSAFE_FILE_CHARACTERS.sub("_", patient_id).strip("._") or "patient"
    name, k = f"{stem}.html", 1
    while name.lower() in taken or name.lower() == "index.html":
        k += 1
        name = f"{stem}_{k}.html"
    taken.add(name.lower())
    return name


def _select_patient(tables: dict[str, pd.DataFrame], patient: str) -> dict[str, pd.DataFrame]:
    ids = tables["infusions"]["patient_id"].astype(str).str.strip()
    if not (ids == patient).any():
        examples = ", ".join(ids.head(3))
        raise PatientReportError(f"patient {patient!r} is not in the infusions table ({len(ids)} patients, e.g. {examples})")
    return {name: frame[frame["patient_id"].astype(str).str.strip() == patient] for name, frame in tables.items()}


def _index_page(pages: list[dict], rejected: pd.DataFrame, as_of_day: float, model_uri: str,
                bundle: ScoringBundle) -> str:
    from pipelines.html import render_page, table_rows

    return render_page("patient_index.html.j2", pages=pages, rejected=rejected.to_dict("records"),
                       rejected_table=table_rows(rejected), as_of_day=f"{as_of_day:g}", model_uri=model_uri,
                       horizon=f"{float(bundle.risk_group_horizon_days):g}")


def _rejected(validated, scored_ids: set[str], all_ids: Sequence[str]) -> pd.DataFrame:
    """One line per patient without a page, with the contract's reasons."""
    reasons: dict[str, list[str]] = {}
    for rows in validated.quarantined.values():
        if len(rows) and "patient_id" in rows:
            for pid, reason in zip(rows["patient_id"].astype(str), rows["quarantine_reasons"].astype(str)):
                reasons.setdefault(pid, []).append(reason)
    missing = [pid for pid in dict.fromkeys(all_ids) if pid not in scored_ids]
    return pd.DataFrame({"patient_id": missing,
                         "reason": ["; ".join(dict.fromkeys(reasons.get(pid, ["not scored"])))[:300] for pid in missing]})


def _scored(model: ModelFacts, tables: dict[str, pd.DataFrame], as_of_day: float, on_error: str):
    """The validated tables (data contract, checked once) and the scores of every valid patient
    (``models.serving.score_validated``, what ``score_tables`` runs after the contract)."""
    from features.contract import validate_cohort
    from models.serving import cohort_as_of_days, score_validated

    validated = validate_cohort(tables["infusions"], tables["measurements"], tables.get("outcomes"), on_error=on_error)
    scores = score_validated(report_bundle(model.bundle), validated.infusions, validated.measurements,
                             cohort_as_of_days(validated.infusions, float(as_of_day)))
    return validated, scores.set_index("patient_id")


def write_reports(model: ModelFacts, tables: dict[str, pd.DataFrame], as_of_day: float, out: Path,
                  patient: str | None = None, progress=None) -> list[Path]:
    """Write the page of ``patient`` to ``out`` (a file, or ``<patient>.html`` in ``out`` when it is a folder),
    or of every patient to the folder ``out`` with an index.

    Parameters
    ----------
    model : ModelFacts
    tables : dict
        Raw ``infusions``, ``measurements`` and optionally ``outcomes`` (``pipelines.io.read_cohort_folder``).
    as_of_day : float
    out : Path
    patient : str, optional
        One patient (its contract violations are errors); else every patient (violations quarantine
        the patient, listed in the index).
    progress : rich.progress.Progress, optional

    Returns
    -------
    list of Path
        The pages written (the index last).

    Raises
    ------
    PatientReportError, features.contract.ContractError, models.serving.ScoringInputError
        Bad input (unknown patient, bad as-of day, contract violation of the patient).
    """
    if not np.isfinite(as_of_day) or as_of_day < 0:
        raise PatientReportError(f"--as-of-day must be a number of days >= 0, got {as_of_day!r}")
    if patient is not None:
        tables = _select_patient(tables, patient)
    validated, scores = _scored(model, tables, as_of_day, "fail" if patient is not None else "quarantine")
    eligibility = eligibility_at(validated.outcomes, list(scores.index), as_of_day)
    measurements = validated.measurements.assign(patient_id=validated.measurements["patient_id"].astype(str))
    known = measurements[measurements["day"] <= as_of_day]
    later = measurements.loc[measurements["day"] > as_of_day, "patient_id"].value_counts()
    pages, written, taken = [], [], set[str]()
    task = None if progress is None else progress.add_task("patient reports", total=len(scores))
    for patient_id, row in scores.iterrows():
        pid = str(patient_id)
        single_file = patient is not None and not Path(out).is_dir()
        path = Path(out) if single_file else Path(out) / _file_name(pid, taken)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(patient_page(pid, row, known[known["patient_id"] == pid], eligibility.loc[pid], as_of_day,
                                     model, int(later.get(pid, 0))), encoding="utf-8")
        written.append(path)
        risk = float(row[relapse_column(model.bundle.risk_group_horizon_days)])
        pages.append({"patient_id": pid, "file": path.name, "eligible": eligibility.loc[pid, "eligible"],
                      "group": row["risk_group"], "risk": f"{risk:.1%}"})
        if progress is not None and task is not None:
            progress.advance(task)
    if patient is None:
        rejected = _rejected(validated, set(scores.index.astype(str)),
                             tables["infusions"]["patient_id"].astype(str).str.strip().tolist())
        written.append(Path(out) / "index.html")
        written[-1].parent.mkdir(parents=True, exist_ok=True)
        written[-1].write_text(_index_page(pages, rejected, as_of_day, model.uri, model.bundle), encoding="utf-8")
    return written


def registered_model_card(model_uri: str) -> str | None:
    """The description (model card) of the registered version a ``models:/name@alias`` or
    ``models:/name/version`` URI names; None for other URIs or when it cannot be read."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", model_uri.strip())
    if match is None:
        return None
    name, alias, version = match.groups()
    client = MlflowClient()
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        return None
    return found.description or None


def run_patient_report(model_uri: str, input_dir: Path, as_of_day: float, out: Path, patient: str | None = None,
                       tracking_uri: str | None = None) -> list[Path]:
    """``car-relapse report``: load the model and the folder, write the page(s), print where they are.

    Exit codes: 2 for bad input (folder, patient, as-of day, contract violation, model not found),
    1 when the pages cannot be written.
    """
    import typer
    from rich.console import Console
    from rich.markup import escape

    from features.contract import ContractError
    from models.serving import ScoringInputError
    from pipelines.experiment import progress_bar
    from pipelines.io import CohortIOError, read_cohort_folder
    from pipelines.score import ScoreError, load_scoring_bundle
    from pipelines.tracking import quiet_mlflow

    console = Console(soft_wrap=True, highlight=False)
    quiet_mlflow()
    try:
        files = read_cohort_folder(Path(input_dir))
        bundle = load_scoring_bundle(model_uri, tracking_uri)
        model = ModelFacts(model_uri, bundle, registered_model_card(model_uri))
        with progress_bar(console) as progress:
            written = write_reports(model, files.tables, float(as_of_day), Path(out), patient, progress)
    except (PatientReportError, ContractError, ScoringInputError, CohortIOError, ScoreError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(code=2) from None
    except OSError as exc:
        console.print(f"[red]cannot write the report:[/red] {escape(str(exc))}")
        raise typer.Exit(code=1) from None
    console.print(f"wrote {len(written)} page(s): {written[-1]}", markup=False)
    return written
