"""Tests of pipelines.score and ``car-relapse score``: chunking, rejects (with file row numbers),
outputs, the argument checks before the model loads, exit codes, file modes, plain-text messages."""

from __future__ import annotations

import stat

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import pipelines.score as score_module
from features.contract import validate_cohort
from features.eligibility import eligibility_at
from models.serving import score_tables
from pipelines.cli import app
from pipelines.io import write_table
from pipelines.score import _patient_chunks, rejects_path, run_score, score_cohort
from pipelines.simulate import simulate_cohort
from tests.models.test_serving import bundle  # noqa: F401  (shared fitted-bundle fixture)

runner = CliRunner()


@pytest.fixture(scope="module")
def cohort():
    simulated = simulate_cohort(30, 123)
    return simulated.infusions, simulated.measurements


def _write_folder(folder, infusions, measurements, suffix=".csv"):
    write_table(infusions, folder / f"infusions{suffix}")
    write_table(measurements, folder / f"measurements{suffix}")
    return folder


@pytest.fixture
def loaded(bundle, monkeypatch):  # noqa: F811
    """``car-relapse score`` with the test bundle instead of a registered model (calls are counted)."""
    calls = []

    def load(model_uri, tracking_uri=None):
        calls.append(model_uri)
        return bundle

    monkeypatch.setattr(score_module, "load_scoring_bundle", load)
    return calls


def _score(*args: str):
    return runner.invoke(app, ["score", "--model", "models:/test@champion", *args])


def test_chunks_cover_every_measurement_once(cohort):
    valid = validate_cohort(*cohort)
    seen = 0
    for chunk, chunk_measurements, rows in _patient_chunks(valid.infusions, valid.measurements, 7):
        assert len(chunk) <= 7 and chunk["patient_id"].tolist() == valid.infusions["patient_id"].iloc[rows].tolist()
        assert set(chunk_measurements["patient_id"]) <= set(chunk["patient_id"])
        seen += len(chunk_measurements)
    assert seen == len(valid.measurements)


def test_rejects_carry_csv_line_numbers_and_reasons(bundle, cohort, tmp_path):  # noqa: F811
    infusions, measurements = cohort
    bad_measurements = measurements.copy().astype({"value": object})
    bad_measurements.loc[5, "value"] = "lots"
    orphan = bad_measurements.iloc[[0]].assign(patient_id="NOBODY")
    bad_measurements = pd.concat([bad_measurements, orphan], ignore_index=True)
    bad_infusions = pd.concat([infusions, infusions.iloc[[3]]], ignore_index=True)
    folder = _write_folder(tmp_path, bad_infusions, bad_measurements)
    scores, rejects, patients_in, _ = score_cohort(bundle, folder, 91.0, chunk_size=8)
    assert patients_in == len(bad_infusions)
    duplicated_id = infusions["patient_id"].iloc[3]
    assert duplicated_id not in set(scores["patient_id"])
    assert len(scores) == len(infusions) - 1
    lines = {(t, r) for t, r in zip(rejects["table"], rejects["row"])}
    assert ("measurements", 5 + 2) in lines  # CSV line = position + 2 (header is line 1)
    assert ("measurements", len(bad_measurements) - 1 + 2) in lines
    assert ("infusions", 3 + 2) in lines and ("infusions", len(bad_infusions) - 1 + 2) in lines
    unparsable = rejects[(rejects["table"] == "measurements") & (rejects["row"] == 7)]
    assert "lots" in unparsable["reason"].iloc[0]


def test_chunk_size_does_not_change_the_numbers(bundle, cohort, tmp_path):  # noqa: F811
    folder = _write_folder(tmp_path, *cohort, suffix=".parquet")
    small, _, _, _ = score_cohort(bundle, folder, 91.0, chunk_size=4)
    large, _, _, _ = score_cohort(bundle, folder, 91.0, chunk_size=1000)
    pd.testing.assert_frame_equal(small, large, check_exact=True)


def test_one_absurd_value_loses_one_patient_not_the_batch(bundle, cohort, tmp_path, loaded):  # noqa: F811
    """A fludarabine AUC of 1e300 passed the contract and crashed scoring for every patient."""
    infusions, measurements = cohort
    absurd = infusions.copy()
    absurd.loc[4, "fludarabine_auc"] = 1e300
    folder = _write_folder(tmp_path / "cohort", absurd, measurements, suffix=".parquet")
    output = tmp_path / "out" / "scores.parquet"
    result = _score("--input", str(folder), "--as-of-day", "91", "--output", str(output))
    assert result.exit_code == 0, result.output
    scores, rejects = pd.read_parquet(output), pd.read_csv(rejects_path(output))
    assert len(scores) == len(infusions) - 1 and infusions["patient_id"].iloc[4] not in set(scores["patient_id"])
    reasons = rejects.loc[rejects["table"] == "infusions", "reason"].tolist()
    assert reasons == ["1e+300 must be in [0, 100]"]
    expected, _, _, _ = score_cohort(bundle, _write_folder(tmp_path / "clean", infusions.drop(index=4), measurements,
                                                           suffix=".parquet"), 91.0)
    pd.testing.assert_frame_equal(scores, expected, check_exact=True)


def test_outputs_are_private_files(cohort, tmp_path, loaded):
    folder = _write_folder(tmp_path / "cohort", *cohort)
    output = tmp_path / "scores.csv"
    output.write_text("old")
    output.chmod(0o644)  # an existing, world-readable file is replaced by a private one
    result = _score("--input", str(folder), "--as-of-day", "91", "--output", str(output))
    assert result.exit_code == 0, result.output
    for path in (output, rejects_path(output)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_on_error_fail_scores_nothing_and_exits_2(cohort, tmp_path, loaded):
    infusions, measurements = cohort
    bad = measurements.copy().astype({"value": object})
    bad.loc[3, "value"] = "[/i]lots"  # also: a cell that looks like rich markup is printed as it is
    folder = _write_folder(tmp_path / "cohort", infusions, bad)
    output = tmp_path / "scores.csv"
    result = _score("--input", str(folder), "--as-of-day", "91", "--output", str(output), "--on-error", "fail")
    assert result.exit_code == 2
    assert "measurements.csv, row 5, column value: cannot parse lab value '[/i]lots'" in result.stderr
    assert not output.exists() and "Traceback" not in result.output
    result = _score("--input", str(folder), "--as-of-day", "91", "--output", str(output))
    assert result.exit_code == 0 and "rejected: 1 row(s), 0 patient(s) not scored" in result.stdout


def test_no_patient_scored_exits_2_and_writes_every_reason(cohort, tmp_path, loaded):
    infusions, measurements = cohort
    folder = _write_folder(tmp_path / "cohort", infusions.assign(sex="Q"), measurements)
    output = tmp_path / "scores.csv"
    result = _score("--input", str(folder), "--as-of-day", "91", "--output", str(output))
    assert result.exit_code == 2
    assert "no patient could be scored" in result.stderr
    assert (pd.read_csv(rejects_path(output))["table"] == "infusions").sum() == len(infusions)


def test_a_boolean_column_where_numbers_go_is_refused_by_name(cohort, tmp_path, loaded):
    """Parquet booleans were read as numbers: ``age_years`` True became 1.0 years."""
    infusions, measurements = cohort
    folder = _write_folder(tmp_path / "cohort", infusions.assign(age_years=True), measurements, suffix=".parquet")
    result = _score("--input", str(folder), "--as-of-day", "91", "--output", str(tmp_path / "s.csv"))
    assert result.exit_code == 2
    assert "infusions.parquet, column age_years: holds booleans (bool); expected numbers" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--input", "{tmp}/nowhere"), "cohort folder not found"),
        (("--input", "{tmp}/only_infusions"), "missing table 'measurements'"),
        (("--input", "{tmp}/x[/bad]"), "cohort folder not found: {tmp}/x[/bad]"),
        (("--input", "{tmp}/cohort", "--as-of-day", "nan"), "--as-of-day: nan is not a finite number"),
        (("--input", "{tmp}/cohort", "--as-of-day", "-1"), "--as-of-day: -1.0 must be in [0, 7300]"),
        (("--input", "{tmp}/cohort", "--output", "{tmp}/scores.xlsx"), "must end in .csv or .parquet"),
        (("--input", "{tmp}/cohort", "--output", "{tmp}/a_file/scores.csv"), "--output: cannot create the folder"),
        (("--input", "{tmp}/cohort", "--on-error", "ignore"), "--on-error must be one of fail, quarantine"),
        (("--input", "{tmp}/cohort", "--as-of-day-column", "visit_day"), "--as-of-day and --as-of-day-column exclude"),
    ],
)
def test_arguments_are_checked_before_the_model_is_loaded(cohort, tmp_path, loaded, arguments, message):
    _write_folder(tmp_path / "cohort", *cohort)
    write_table(cohort[0], tmp_path / "only_infusions" / "infusions.csv")
    (tmp_path / "a_file").write_text("not a folder")
    defaults = {"--as-of-day": "91", "--output": str(tmp_path / "scores.csv")}
    given = [argument.format(tmp=tmp_path) for argument in arguments]
    extra = [item for key, value in defaults.items() if key not in given for item in (key, value)]
    result = _score(*given, *extra)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message.format(tmp=tmp_path) in result.stderr
    assert loaded == [] and "Traceback" not in result.output


def test_unknown_model_exits_2_with_a_clear_error(tracking_uri, cohort, tmp_path):
    folder = _write_folder(tmp_path / "cohort", *cohort)
    result = runner.invoke(app, ["score", "--model", "models:/nothing@champion", "--input", str(folder),
                                 "--as-of-day", "91", "--output", str(tmp_path / "s.csv"),
                                 "--tracking-uri", tracking_uri])
    assert result.exit_code == 2
    assert "cannot load model 'models:/nothing@champion'" in result.stderr


def test_rejects_file_sits_beside_the_output(tmp_path):
    assert rejects_path(tmp_path / "out" / "scores.parquet") == tmp_path / "out" / "scores.rejects.csv"


def test_run_score_returns_the_summary(cohort, tmp_path, loaded):
    infusions, measurements = cohort
    doubled = pd.concat([measurements, measurements.iloc[:4]], ignore_index=True)  # the same rows appended twice
    folder = _write_folder(tmp_path / "cohort", infusions, doubled)
    summary = run_score("models:/test@champion", folder, 91.0, tmp_path / "scores.parquet", chunk_size=9)
    assert (summary.patients_in, summary.patients_scored, summary.rejected_rows) == (len(infusions),) * 2 + (0,)
    assert summary.collapsed_rows == 4
    assert np.isfinite(summary.seconds) and loaded == ["models:/test@champion"]


# --- eligibility and per-patient as-of days ---------------------------------------------------------------
@pytest.fixture(scope="module")
def followed():
    simulated = simulate_cohort(30, 7)
    return simulated.infusions, simulated.measurements, simulated.outcomes


def test_without_an_as_of_day_the_command_says_what_to_give(cohort, tmp_path, loaded):
    folder = _write_folder(tmp_path / "cohort", *cohort)
    result = _score("--input", str(folder), "--output", str(tmp_path / "s.csv"))
    assert result.exit_code == 2 and "give --as-of-day DAY" in result.stderr and loaded == []


def test_each_patient_is_scored_at_the_day_of_its_column(bundle, followed, tmp_path, loaded):  # noqa: F811
    infusions, measurements, outcomes = followed
    days = np.where(np.arange(len(infusions)) % 3, 63.0, 182.0)
    folder = _write_folder(tmp_path / "cohort", infusions.assign(visit_day=days), measurements)
    write_table(outcomes, folder / "outcomes.csv")
    output = tmp_path / "scores.csv"
    result = _score("--input", str(folder), "--as-of-day-column", "visit_day", "--output", str(output))
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(output, dtype={"model_version": str})
    assert scores["as_of_day"].tolist() == days.tolist()
    assert list(scores.columns[:4]) == ["patient_id", "as_of_day", "eligible", "eligibility_reason"]
    series = pd.Series(days, index=infusions["patient_id"].astype(str).to_numpy())
    expected = score_tables(bundle, infusions, measurements, series, outcomes=outcomes).scores
    assert scores["patient_id"].tolist() == expected["patient_id"].tolist()
    assert np.allclose(scores["cif_relapse_365d"], expected["cif_relapse_365d"], rtol=0, atol=1e-12)
    judged = eligibility_at(outcomes, infusions["patient_id"], days)
    assert scores["eligible"].tolist() == judged["eligible"].tolist() and {"yes", "no"} <= set(scores["eligible"])
    assert scores["eligibility_reason"].tolist() == judged["eligibility_reason"].tolist()


def test_a_bad_day_in_the_column_is_a_reject_with_its_line(followed, tmp_path, loaded):
    infusions, measurements, _ = followed
    days = np.full(len(infusions), 91.0, dtype=object)
    days[2], days[5] = "soon", None
    folder = _write_folder(tmp_path / "cohort", infusions.assign(visit_day=days), measurements)
    output = tmp_path / "scores.csv"
    result = _score("--input", str(folder), "--as-of-day-column", "visit_day", "--output", str(output))
    assert result.exit_code == 0, result.output
    scores, rejects = pd.read_csv(output), pd.read_csv(rejects_path(output))
    assert len(scores) == len(infusions) - 2 and (scores["as_of_day"] == 91.0).all()
    lines = rejects[rejects["table"] == "infusions"]
    assert lines["row"].tolist() == [2 + 2, 5 + 2]  # CSV lines
    assert lines["reason"].tolist() == ["as-of day: 'soon' is not a number", "as-of day: value is missing"]
    assert (scores["eligibility_reason"] == "no outcomes table").all() and (scores["eligible"] == "unknown").all()
    result = _score("--input", str(folder), "--as-of-day-column", "visit_day", "--output", str(output),
                    "--on-error", "fail")
    assert result.exit_code == 2
    assert "infusions.csv, row 4, column visit_day: as-of day: 'soon' is not a number" in result.stderr


def test_an_absent_as_of_day_column_exits_2_by_name(cohort, tmp_path, loaded):
    folder = _write_folder(tmp_path / "cohort", *cohort)
    result = _score("--input", str(folder), "--as-of-day-column", "visit", "--output", str(tmp_path / "s.csv"))
    assert result.exit_code == 2 and "infusions.csv, column visit: as-of day column is missing" in result.stderr


def test_outcomes_in_the_folder_are_validated_like_the_other_tables(followed, tmp_path, loaded):
    infusions, measurements, outcomes = followed
    folder = _write_folder(tmp_path / "cohort", infusions, measurements)
    write_table(outcomes.iloc[1:], folder / "outcomes.csv")  # the first patient has no outcomes row
    output = tmp_path / "scores.csv"
    result = _score("--input", str(folder), "--as-of-day", "91", "--output", str(output))
    assert result.exit_code == 0, result.output
    scores, rejects = pd.read_csv(output), pd.read_csv(rejects_path(output))
    first = infusions["patient_id"].iloc[0]
    assert first not in set(scores["patient_id"]) and len(scores) == len(infusions) - 1
    assert rejects.loc[rejects["table"] == "infusions", "reason"].tolist() == [f"patient_id {first!r} has no row in outcomes"]
