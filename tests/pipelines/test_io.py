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


# --- what cannot be a table is refused with the file and the reason, before any row is read ---------------
def test_a_folder_named_like_a_table_is_refused(raw_cohort, tmp_path):
    write_cohort_folder(tmp_path, raw_cohort["infusions"], raw_cohort["measurements"], file_format="csv")
    (tmp_path / "outcomes.csv").mkdir()  # once silently skipped: the cohort read as having no outcomes
    with pytest.raises(CohortIOError, match=r"outcomes.csv: is a folder, not a table file"):
        read_cohort_folder(tmp_path)


def test_a_semicolon_delimited_file_is_named_as_such(raw_cohort, tmp_path):
    write_cohort_folder(tmp_path, **raw_cohort, file_format="csv")
    raw_cohort["measurements"].to_csv(tmp_path / "measurements.csv", sep=";", index=False)
    with pytest.raises(CohortIOError, match=r"measurements.csv: the header is one column \('patient_id;day;.*'\): "
                                            r"the file looks semicolon-delimited; .*\(delimiter ','\)"):
        read_cohort_folder(tmp_path)


def test_a_tab_delimited_file_is_named_as_such(tmp_path):
    path = tmp_path / "infusions.csv"
    path.write_text("patient_id\tage_years\nP1\t7\n")
    with pytest.raises(CohortIOError, match="looks tab-delimited"):
        read_table(path)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_duplicate_column_names_are_refused_not_renamed(raw_cohort, tmp_path, suffix):
    """pandas would read a second ``value`` column as ``value.1``: an unknown column, silently."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / f"measurements{suffix}"
    frame = raw_cohort["measurements"]
    if suffix == ".csv":
        path.write_text(frame.to_csv(index=False).replace("unit,detection_limit", "value,detection_limit", 1))
    else:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table.rename_columns([*table.column_names[:-1], "value"]), path)
    with pytest.raises(CohortIOError, match=r"column name\(s\) 'value' appear more than once"):
        read_table(path)


def test_a_parquet_column_of_lists_is_refused(raw_cohort, tmp_path):
    frame = raw_cohort["measurements"].assign(value=[[0.1, 0.2]] * len(raw_cohort["measurements"]))
    frame.to_parquet(tmp_path / "measurements.parquet")
    with pytest.raises(CohortIOError, match=r"column\(s\) value \(list<element: double>\) hold lists or records"):
        read_table(tmp_path / "measurements.parquet")


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_written_tables_are_private_files(raw_cohort, tmp_path, file_format):
    import stat

    existing = tmp_path / f"infusions.{file_format}"
    existing.write_text("")
    existing.chmod(0o644)
    for path in write_cohort_folder(tmp_path, **raw_cohort, file_format=file_format).values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
