"""The features job: arguments, config plumbing, output files and the CLI on a tiny raw cohort."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.build_features import (
    FeaturesJobError,
    builder_options,
    event_summary,
    landmark_set_from_config,
    parse_landmarks,
    write_landmark_set,
)
from pipelines.cli import app
from pipelines.config import FeaturesConfig
from pipelines.io import write_cohort_folder


def raw_infusions() -> pd.DataFrame:
    n = 3
    return pd.DataFrame({
        "patient_id": ["A", "B", "C"], "site": ["s1", "s1", "s2"], "age_years": [10.0, 15.0, 4.0],
        "sex": ["F", "M", "F"], "down_syndrome": [False] * n, "kmt2a_rearranged": [False, False, True],
        "tp53_altered": [False] * n, "hypodiploid": [False] * n, "ph_positive": [False] * n,
        "prior_lines": [2, 3, 1], "prior_crs": [1, 2, 1], "prior_hsct": [False, True, False],
        "blinatumomab": ["naive", "nonresponder", "naive"], "inotuzumab_prior": [False] * n,
        "bm_blasts_pct": [2.0, 60.0, 8.0], "cns_status": ["CNS1", "CNS1", "CNS2"],
        "active_non_cns_emd": [False] * n, "cd19_antigen_load_pct": [30.0, 10.0, 50.0],
        "cd19_dim_pre": [False] * n, "cd22_pct_pre": [90.0, 80.0, 95.0], "product": ["tisa"] * n,
        "costim": ["4-1BB"] * n, "cell_dose_per_kg": [2e6] * n,
    })


def raw_measurements() -> pd.DataFrame:
    rows = [
        ("A", 28, "BM", "flow_mrd", "<0.01%", None, None),
        ("A", 28, "PB", "b_cell_count", "<1", "cells/uL", 1.0),
        ("A", 63, "PB", "b_cell_count", "35", "cells/uL", 1.0),
        ("A", 91, "BM", "flow_mrd", "0.06%", None, None),
        ("B", 28, "BM", "ngs_mrd", "1.2E-05", "fraction", 1e-6),
    ]
    return pd.DataFrame(rows, columns=["patient_id", "day", "specimen", "assay", "value", "unit", "detection_limit"])


def raw_outcomes() -> pd.DataFrame:
    return pd.DataFrame({
        "patient_id": ["A", "B", "C"], "response": ["CR", "CR", "NR"], "response_day": [28.0, 27.0, 28.0],
        "event": ["relapse", "none", "none"], "event_day": [120.0, None, None],
        "last_followup_day": [200.0, 1000.0, 60.0], "relapse_phenotype": ["CD19_pos", None, None],
        "relapse_site": ["medullary", None, None],
    })


@pytest.fixture
def cohort_folder(tmp_path):
    folder = tmp_path / "cohort"
    write_cohort_folder(folder, raw_infusions(), raw_measurements(), raw_outcomes(), file_format="csv")
    return folder


def test_parse_landmarks():
    assert parse_landmarks("0, 28,91.5") == [0.0, 28.0, 91.5]
    for bad, reason in [("", "at least one"), ("0,x", "not a comma-separated"), ("-7", ">= 0"), ("28,28", "repeated")]:
        with pytest.raises(FeaturesJobError, match=reason):
            parse_landmarks(bad)


def test_builder_options_follow_the_config():
    config = FeaturesConfig(bca_recovery_cells_per_ul=20.0, bca_recovery_pct_lymphocytes=2.0)
    assert builder_options(config) == {"bca": {"recovery_cells_per_ul": 20.0, "recovery_pct_lymphocytes": 2.0}}
    assert builder_options(FeaturesConfig(builders=["baseline", "mrd"])) == {}


def test_unknown_builder_in_config_is_a_clear_error():
    with pytest.raises(FeaturesJobError, match="features.builders: unknown feature builder 'mdr'"):
        landmark_set_from_config(raw_infusions(), raw_measurements(), raw_outcomes(), FeaturesConfig(builders=["mdr"]))


def test_event_summary_counts_rows_and_events_per_landmark():
    frame = pd.DataFrame({"landmark_day": [0.0, 0.0, 0.0, 28.0], "event": ["none", "hsct", "hsct", "relapse_CD19_neg"]})
    summary = event_summary(frame)
    assert summary.loc[0.0].to_dict() == {"rows": 3, "none": 1, "relapse_CD19_neg": 0, "hsct": 2}
    assert list(summary.columns) == ["rows", "none", "relapse_CD19_neg", "hsct"]  # EVENT_CODES order


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_written_set_round_trips(tmp_path, suffix):
    frame = pd.DataFrame({"patient_id": ["A"], "landmark_day": [28.0], "time": [10.0], "event": ["none"],
                          "bm_flow_mrd_log10_last": [float("nan")]})
    out = tmp_path / "sub" / f"set{suffix}"
    write_landmark_set(frame, out)
    back = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out)
    pd.testing.assert_frame_equal(back, frame)
    with pytest.raises(FeaturesJobError, match="must end in .parquet or .csv"):
        write_landmark_set(frame, tmp_path / "set.xlsx")


def test_cli_builds_the_set_from_lab_text(cohort_folder, tmp_path):
    out = tmp_path / "set.parquet"
    result = CliRunner().invoke(app, ["features", "--input", str(cohort_folder), "--landmarks", "0,28,91",
                                      "--horizon-days", "365", "--out", str(out)])
    assert result.exit_code == 0, result.output
    built = pd.read_parquet(out).set_index(["landmark_day", "patient_id"])
    assert sorted(built.index) == [(0.0, "A"), (0.0, "B"), (28.0, "A"), (28.0, "B"), (91.0, "A"), (91.0, "B")]
    assert built.loc[(91.0, "A"), "bm_flow_mrd_log10_last"] == pytest.approx(math.log10(6e-4))
    assert built.loc[(28.0, "A"), "bm_flow_mrd_log10_last"] == pytest.approx(-4.0)  # "<0.01%"
    assert built.loc[(28.0, "A"), "bm_flow_mrd_last_censored"] == 1.0
    assert built.loc[(91.0, "A"), "bca_loss_day_upper"] == 63.0
    assert (built.loc[(91.0, "A"), "time"], built.loc[(91.0, "A"), "event"]) == (29.0, "relapse_CD19_pos")
    assert built.loc[(28.0, "B"), "bm_ngs_mrd_log10_last"] == pytest.approx(math.log10(1.2e-5))
    assert "day 91" in result.output and "relapse_CD19_pos" in result.output


def test_cli_quarantine_prints_the_data_report(tmp_path):
    broken = raw_measurements()
    broken.loc[3, "value"] = "0,06%"  # A's day-91 flow MRD: a decimal comma
    write_cohort_folder(tmp_path / "bad", raw_infusions(), broken, raw_outcomes(), file_format="csv")
    out = tmp_path / "set.csv"
    args = ["features", "--input", str(tmp_path / "bad"), "--landmarks", "91", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--on-error", "quarantine"])
    assert result.exit_code == 0, result.output
    assert "unparseable value: value" in result.output and "measurements.csv, row 5" in result.output
    built = pd.read_csv(out).set_index("patient_id")
    assert built.loc["A", "bm_flow_mrd_log10_last"] == pytest.approx(-4.0)  # day-91 row gone: day-28 "<0.01%"


def test_cli_output_that_cannot_be_written_exits_2(cohort_folder, tmp_path):
    (tmp_path / "set.csv").mkdir()
    result = CliRunner().invoke(app, ["features", "--input", str(cohort_folder), "--out", str(tmp_path / "set.csv")])
    assert result.exit_code == 2
    assert "cannot write" in result.output and "Traceback" not in result.output


def test_cli_bad_input_exits_2_with_the_reason(cohort_folder, tmp_path):
    runner = CliRunner()
    broken = raw_measurements()
    broken.loc[1, "value"] = "lots"
    write_cohort_folder(tmp_path / "bad", raw_infusions(), broken, raw_outcomes(), file_format="csv")
    cases = [
        (["--input", str(tmp_path / "bad")], "measurements.csv, row 3"),
        (["--input", str(tmp_path / "missing")], "cohort folder not found"),
        (["--input", str(cohort_folder), "--landmarks", "x"], "--landmarks"),
        (["--input", str(cohort_folder), "--on-error", "ignore"], "--on-error"),
    ]
    for arguments, reason in cases:
        result = runner.invoke(app, ["features", *arguments, "--out", str(tmp_path / "set.csv")])
        assert result.exit_code == 2, result.output
        assert reason in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "set.csv").exists()
