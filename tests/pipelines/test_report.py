"""Tests of pipelines.report: the per-patient HTML report, its eligibility and its numbers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import typer

from features.contract import ContractError
from features.eligibility import ELIGIBLE, eligibility_at
from models.base import cif_column, relapse_column
from models.serving import score_tables
from pipelines.report import (
    ModelFacts,
    PatientReportError,
    report_bundle,
    run_patient_report,
    write_reports,
)
from pipelines.simulate import simulate_cohort
from tests.models.test_serving import bundle  # noqa: F401  (shared fitted-bundle fixture)
from tests.pipelines.html_checks import browser_check, parse_self_contained


@pytest.fixture(scope="module")
def tables():
    cohort = simulate_cohort(12, 21)
    return {"infusions": cohort.infusions, "measurements": cohort.measurements, "outcomes": cohort.outcomes}


def _eligible_patient(tables, as_of_day: float = 91.0) -> str:
    status = eligibility_at(tables["outcomes"], tables["outcomes"]["patient_id"].tolist(), as_of_day)
    return str(status.index[status["eligible"] == ELIGIBLE][0])


# --- the numbers ----------------------------------------------------------------------------------------------
def test_report_scores_are_batch_scores_at_the_model_horizons(bundle, tables):  # noqa: F811
    extended = report_bundle(bundle)
    assert set(bundle.horizons_days) < set(extended.horizons_days)
    assert extended.n_top_factors == len(bundle.feature_columns)
    plain = score_tables(bundle, tables["infusions"], tables["measurements"], 91.0).scores
    report = score_tables(extended, tables["infusions"], tables["measurements"], 91.0).scores
    for horizon in bundle.horizons_days:
        for column in (relapse_column(horizon), cif_column("hsct", horizon)):
            assert np.allclose(plain[column], report[column])
    assert (plain["risk_group"] == report["risk_group"]).all()
    assert (plain["top_factor_1"] == report["top_factor_1"]).all()


# --- the page ---------------------------------------------------------------------------------------------------
def test_single_patient_page_is_self_contained_and_complete(bundle, tables, tmp_path):  # noqa: F811
    patient = _eligible_patient(tables)
    out = tmp_path / "one" / "report.html"
    written = write_reports(ModelFacts("models:/m@champion", bundle, "# card\n\n**Intended use.** x"), tables, 91.0, out,
                            patient)
    assert written == [out]
    page = out.read_text()
    parsed = parse_self_contained(page)
    assert len(parsed["images"]) == 3  # timeline, incidence curves, waterfall
    for words in (f"Patient {patient}", "as of day 91", "eligible", "risk group", "Caveats", "Intended use",
                  "relapse CD19_neg", "hsct"):
        assert words in parsed["text"], words
    later = (tables["measurements"]["patient_id"] == patient) & (tables["measurements"]["day"] > 91)
    assert f"{int(later.sum())} later result(s) left out" in parsed["text"]
    seen = browser_check(out)
    if seen is None:
        pytest.skip("browser part skipped: no Chromium installed (the HTML was checked by parsing)")
    assert seen == {"images": 3, "decoded": 3, "fetched": [], "title": f"Patient {patient}, day 91"}


def test_day_0_page_carries_the_landmark_0_caveat(bundle, tables, tmp_path):  # noqa: F811
    patient = _eligible_patient(tables, 0.0)
    write_reports(ModelFacts("m", bundle), tables, 0.0, tmp_path / "p.html", patient)
    assert "risk of relapse if the patient reaches remission" in (tmp_path / "p.html").read_text()


def test_text_from_the_data_is_escaped(bundle, tables, tmp_path):  # noqa: F811
    patient = _eligible_patient(tables)
    odd = "<b>x</b>&1"
    renamed = {name: frame.assign(patient_id=frame["patient_id"].replace(patient, odd)) for name, frame in tables.items()}
    write_reports(ModelFacts("m", bundle), renamed, 91.0, tmp_path / "p.html", odd)
    page = (tmp_path / "p.html").read_text()
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;&amp;1" in page


def test_every_patient_gets_a_page_and_the_index_links_them(bundle, tables, tmp_path):  # noqa: F811
    four = tables["infusions"]["patient_id"].iloc[:4].tolist()
    few = {name: frame[frame["patient_id"].isin(four)] for name, frame in tables.items()}
    few["infusions"] = few["infusions"].assign(age_years=np.where(few["infusions"]["patient_id"] == four[0], -3.0,
                                                                  few["infusions"]["age_years"]))
    written = write_reports(ModelFacts("m", bundle), few, 91.0, tmp_path / "all")
    index = written[-1]
    assert index.name == "index.html" and [p.name for p in written[:-1]] == [f"{p}.html" for p in four[1:]]
    parsed = parse_self_contained(index.read_text())
    assert parsed["links"] == [f"{p}.html" for p in four[1:]]
    assert four[0] in parsed["text"] and "must be in [0, 40]" in parsed["text"]  # not reported, with the reason


def test_unknown_patient_and_bad_day_are_named(bundle, tables, tmp_path):  # noqa: F811
    with pytest.raises(PatientReportError, match="'nobody' is not in the infusions table"):
        write_reports(ModelFacts("m", bundle), tables, 91.0, tmp_path / "x.html", "nobody")
    with pytest.raises(PatientReportError, match="as-of-day"):
        write_reports(ModelFacts("m", bundle), tables, -1.0, tmp_path / "x.html", _eligible_patient(tables))


def test_a_contract_violation_of_the_patient_is_an_error(bundle, tables, tmp_path):  # noqa: F811
    patient = _eligible_patient(tables)
    bad = dict(tables)
    bad["measurements"] = pd.concat([tables["measurements"], pd.DataFrame([{
        "patient_id": patient, "day": 30.0, "specimen": "BM", "assay": "flow_mrd", "value": "lots", "unit": None}])])
    with pytest.raises(ContractError, match="lots"):
        write_reports(ModelFacts("m", bundle), bad, 91.0, tmp_path / "x.html", patient)


def test_command_exits_2_for_a_missing_folder_or_model(tmp_path, tracking_uri, capsys):
    with pytest.raises(typer.Exit) as stop:
        run_patient_report("models:/car-relapse@champion", tmp_path / "missing", 91.0, tmp_path / "r.html", "P1",
                           tracking_uri)
    assert stop.value.exit_code == 2
    cohort = simulate_cohort(5, 1)
    folder = tmp_path / "cohort"
    folder.mkdir()
    for name, frame in {"infusions": cohort.infusions, "measurements": cohort.measurements}.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    with pytest.raises(typer.Exit) as stop:
        run_patient_report("models:/car-relapse@champion", folder, 91.0, tmp_path / "r.html", "P000001", tracking_uri)
    assert stop.value.exit_code == 2
    assert "cannot load model" in capsys.readouterr().out


def test_report_bundle_keeps_the_model_and_risk_groups(bundle):  # noqa: F811
    extended = report_bundle(bundle)
    unchanged = {field.name for field in dataclasses.fields(bundle)} - {"horizons_days", "n_top_factors"}
    assert all(getattr(extended, name) is getattr(bundle, name) for name in unchanged)


def test_out_may_be_a_folder_for_one_patient(bundle, tables, tmp_path):  # noqa: F811
    patient = _eligible_patient(tables)
    written = write_reports(ModelFacts("m", bundle), tables, 91.0, tmp_path, patient)
    assert written == [tmp_path / f"{patient}.html"]


def test_cli_missing_folder_is_exit_2_without_traceback(tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["report", "--input", str(tmp_path / "none"), "--patient", "P1", "--as-of-day", "91",
                                      "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 2
    assert "none" in result.output and "Traceback" not in result.output
