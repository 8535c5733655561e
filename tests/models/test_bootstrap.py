"""Patient bootstrap: rows of a patient move together; percentile intervals."""

from __future__ import annotations

import numpy as np
import pytest

from models.bootstrap import PatientBootstrap, percentile_interval


def test_rows_of_one_patient_share_their_draw_count():
    patients = np.array(["a", "b", "a", "c", "b", "a"])
    bootstrap = PatientBootstrap(patients, n_bootstrap=50, random_state=0)
    counts = bootstrap.multiplicities(np.arange(6))
    assert counts.shape == (50, 6)
    np.testing.assert_array_equal(counts[:, 0], counts[:, 2])
    np.testing.assert_array_equal(counts[:, 1], counts[:, 4])
    # each resample draws 3 patients
    np.testing.assert_array_equal(counts[:, [0, 1, 3]].sum(axis=1), 3)
    np.testing.assert_array_equal(bootstrap.multiplicities(np.array([False, True, False, False, False, False]))[:, 0],
                                  counts[:, 1])


def test_percentile_interval_ignores_nan_and_covers_the_middle():
    values = np.concatenate([np.arange(1000, dtype=float), [np.nan]])
    low, high = percentile_interval(values)
    assert low == pytest.approx(24.975) and high == pytest.approx(974.025)
    assert np.isnan(percentile_interval(np.array([np.nan]))[0])
