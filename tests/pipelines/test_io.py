"""Tests of pipelines.io: cohort folders in CSV and Parquet."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.io import CohortIOError, read_cohort_folder, read_table, write_cohort_folder, write_table


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_round_trip_keeps_lab_text_and_ids(raw_cohort, tmp_path, file_format):
    raw_cohort["infusions"].loc[0, "patient_id"] = "007"
    written = write_cohort_folder(tmp_path, **raw_cohort, file_format=file_format)
    assert sorted(p.name for p in written.values()) == sorted(f"{t}.{file_format}" for t in raw_cohort)
    files = read_cohort_folder(tmp_path)
    assert files.source_names == {t: f"{t}.{file_format}" for t in raw_cohort}
    for table, frame in raw_cohort.items():
        pd.testing.assert_frame_equal(files.tables[table], frame, check_dtype=False)
    assert files.tables["measurements"]["value"].tolist()[:3] == ["45%", "<0.01%", "1.2E-05"]
    assert files.tables["infusions"]["patient_id"].iloc[0] == "007"


def test_csv_columns_are_read_as_text(tmp_path):
    path = tmp_path / "measurements.csv"
    path.write_text("patient_id,day,value\n001,28,0.06\n002,-3,\n")
    frame = read_table(path)
    assert frame["patient_id"].tolist() == ["001", "002"]
    assert frame["value"].iloc[0] == "0.06" and pd.isna(frame["value"].iloc[1])
    assert frame["day"].tolist() == ["28", "-3"]


def test_mixed_value_column_is_written_as_text_in_parquet(tmp_path):
    frame = pd.DataFrame({"value": pd.Series([6e-4, "<0.01%", None, 1.2e-5], dtype=object)})
    back = read_table(write_table(frame, tmp_path / "m.parquet"))
    assert back["value"].tolist()[:2] == ["0.0006", "<0.01%"]
    assert pd.isna(back["value"].iloc[2])
    assert float(back["value"].iloc[3]) == 1.2e-5  # str(float) round-trips exactly


def test_outcomes_are_optional_and_ground_truth_is_not_loaded(raw_cohort, tmp_path):
    write_cohort_folder(tmp_path, raw_cohort["infusions"], raw_cohort["measurements"], file_format="csv")
    pd.DataFrame({"patient_id": ["P1"], "true_event": ["relapse"]}).to_parquet(tmp_path / "ground_truth.parquet")
    pd.DataFrame({"patient_id": ["P1"]}).to_parquet(tmp_path / "oracle.parquet")
    files = read_cohort_folder(tmp_path)
    assert set(files.tables) == {"infusions", "measurements"}


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CohortIOError, match="cohort folder not found: .*nowhere"):
        read_cohort_folder(tmp_path / "nowhere")


def test_missing_required_table_is_a_clear_error(raw_cohort, tmp_path):
    write_table(raw_cohort["infusions"], tmp_path / "infusions.csv")
    expected = r"missing table 'measurements' \(expected measurements.csv or measurements.parquet\)"
    with pytest.raises(CohortIOError, match=expected):
        read_cohort_folder(tmp_path)


def test_two_files_for_one_table_are_refused(raw_cohort, tmp_path):
    write_cohort_folder(tmp_path, **raw_cohort, file_format="csv")
    write_table(raw_cohort["infusions"], tmp_path / "infusions.parquet")
    with pytest.raises(CohortIOError, match="both infusions.csv and infusions.parquet exist"):
        read_cohort_folder(tmp_path)


def test_write_refuses_to_leave_stale_tables(raw_cohort, tmp_path):
    write_cohort_folder(tmp_path, **raw_cohort, file_format="csv")
    with pytest.raises(CohortIOError, match="already holds infusions.csv, measurements.csv, outcomes.csv"):
        write_cohort_folder(tmp_path, **raw_cohort, file_format="parquet")
    with pytest.raises(CohortIOError, match="already holds outcomes.csv"):
        write_cohort_folder(tmp_path, raw_cohort["infusions"], raw_cohort["measurements"], file_format="csv")
    write_cohort_folder(tmp_path, **raw_cohort, file_format="csv")  # overwriting the same files is fine


def test_unsupported_extension_and_unreadable_file(tmp_path):
    with pytest.raises(CohortIOError, match="unsupported file type '.xlsx'"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.xlsx")
    broken = tmp_path / "infusions.parquet"
    broken.write_text("not parquet")
    with pytest.raises(CohortIOError, match="infusions.parquet: cannot read parquet file"):
        read_table(broken)
    with pytest.raises(CohortIOError, match="file not found"):
        read_table(tmp_path / "absent.csv")
