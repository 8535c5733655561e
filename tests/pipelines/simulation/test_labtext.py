"""Lab-style writing of results, read back by the project's parser (features.labtext)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.labtext import normalise_lab_values
from pipelines.simulation.labtext import format_results, format_significant


def _read_back(rows, assay: str) -> pd.DataFrame:
    n = rows.value.shape[0]
    return normalise_lab_values(pd.Series(rows.value), pd.Series(rows.unit), pd.Series([assay] * n),
                                pd.Series(rows.detection_limit))


def test_format_significant_styles():
    values = np.array([0.000123456, 0.0612])
    assert format_significant(values).tolist() == ["0.000123", "0.0612"]
    assert format_significant(values, 2, "E").tolist() == ["1.2E-04", "6.1E-02"]
    assert format_significant(values, 2, "%").tolist() == ["0.012%", "6.1%"]


@pytest.mark.parametrize("assay, limit", [("flow_mrd", 1e-4), ("ngs_mrd", 1e-6)])
def test_mrd_results_round_trip_through_the_parser(assay, limit):
    rng = np.random.default_rng(0)
    n = 4000
    value = 10.0 ** rng.uniform(-8, -0.5, n)
    detected = value >= limit
    loq = np.full(n, limit * 5) if assay == "ngs_mrd" else None
    rows = format_results(value, detected, np.full(n, limit), "fraction", "percent", np.full(n, 0.5), rng, loq)
    parsed = _read_back(rows, assay)
    assert parsed["error_kind"].isna().all()
    quantified = ~parsed["censored"].to_numpy()
    np.testing.assert_allclose(parsed["value"].to_numpy()[quantified], value[quantified], rtol=0.06)
    assert np.all(parsed["censored"].to_numpy()[~detected])
    np.testing.assert_allclose(parsed.loc[~detected, "value"], limit, rtol=1e-9)
    below_loq = parsed["detected_below_loq"].to_numpy()
    assert below_loq.any() == (loq is not None)
    assert np.all(detected[below_loq])


def test_b_cells_in_percent_of_lymphocytes_and_censored_counts():
    rng = np.random.default_rng(1)
    value = np.array([0.05, 0.5, 12.0] * 200)
    rows = format_results(value, value >= 0.1, np.full(value.shape, 0.1), "pct_lymphocytes", "pct_lymphocytes",
                          np.full(value.shape, 0.5), rng)
    parsed = _read_back(rows, "b_cell_count")
    assert parsed["error_kind"].isna().all()
    assert (parsed["unit"] == "pct_lymphocytes").all()
    censored = parsed["censored"].to_numpy()
    np.testing.assert_array_equal(censored, value < 0.1)
    np.testing.assert_allclose(parsed["value"].to_numpy()[~censored], value[~censored], rtol=0.01)
