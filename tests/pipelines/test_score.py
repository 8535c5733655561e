"""Tests of pipelines.score: chunking, rejects (with file row numbers), outputs, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import typer

from pipelines.io import write_table
from pipelines.score import _patient_chunks, rejects_path, run_score, score_cohort
from pipelines.simulate import simulate_cohort
from tests.models.test_serving import bundle  # noqa: F401  (shared fitted-bundle fixture)


@pytest.fixture(scope="module")
def cohort():
    simulated = simulate_cohort(30, 123)
    return simulated.infusions, simulated.measurements


def _write_folder(folder, infusions, measurements, suffix=".csv"):
    write_table(infusions, folder / f"infusions{suffix}")
    write_table(measurements, folder / f"measurements{suffix}")
    return folder


def test_chunks_cover_every_measurement_once(cohort):
    infusions, measurements = cohort
    seen = []
    for chunk, chunk_measurements, _rows, measurement_rows in _patient_chunks(infusions, measurements, 7):
        assert len(chunk) <= 7
        assert set(chunk_measurements["patient_id"]) <= set(chunk["patient_id"])
        assert (measurements.iloc[measurement_rows]["patient_id"].to_numpy() == chunk_measurements["patient_id"]).all()
        seen.append(measurement_rows)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(measurements)))


def test_rejects_carry_csv_line_numbers_and_reasons(bundle, cohort, tmp_path):  # noqa: F811
    infusions, measurements = cohort
    bad_measurements = measurements.copy().astype({"value": object})
    bad_measurements.loc[5, "value"] = "lots"
    orphan = bad_measurements.iloc[[0]].assign(patient_id="NOBODY")
    bad_measurements = pd.concat([bad_measurements, orphan], ignore_index=True)
    bad_infusions = pd.concat([infusions, infusions.iloc[[3]]], ignore_index=True)
    folder = _write_folder(tmp_path, bad_infusions, bad_measurements)
    scores, rejects, patients_in = score_cohort(bundle, folder, 91.0, chunk_size=8)
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
    small, _, _ = score_cohort(bundle, folder, 91.0, chunk_size=4)
    large, _, _ = score_cohort(bundle, folder, 91.0, chunk_size=1000)
    pd.testing.assert_frame_equal(small, large, check_exact=True)


def test_bad_output_suffix_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(typer.Exit) as stop:
        run_score("models:/x@champion", tmp_path, 91.0, tmp_path / "scores.xlsx")
    assert stop.value.exit_code == 2  # bad input
    assert "must end in .csv or .parquet" in capsys.readouterr().out


def test_unknown_model_is_a_clear_error(tracking_uri, tmp_path, capsys):
    with pytest.raises(typer.Exit) as stop:
        run_score("models:/nothing@champion", tmp_path, 91.0, tmp_path / "s.csv", tracking_uri=tracking_uri)
    assert stop.value.exit_code == 2  # bad input: no such model
    assert "cannot load model 'models:/nothing@champion'" in capsys.readouterr().out


def test_rejects_file_sits_beside_the_output(tmp_path):
    assert rejects_path(tmp_path / "out" / "scores.parquet") == tmp_path / "out" / "scores.rejects.csv"
