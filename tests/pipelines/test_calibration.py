"""Tests of the calibration report, and THE calibration test of the simulator (slow)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from pipelines.calibration import (
    RESULT_COLUMNS,
    TARGETS,
    CalibrationTarget,
    calibration_misses,
    compute_calibration,
    quarantine_summary,
    render_markdown,
    run_calibration,
)
from pipelines.calibration_targets import (
    CoxHazardRatio,
    HazardRatioTolerance,
    KaplanMeierAt,
    NotModeled,
    PointsTolerance,
    Share,
)
from pipelines.simulate import simulate_cohort
from tests.pipelines.test_calibration_targets import contract_infusions, contract_outcomes

CALIBRATION_PATIENTS = 20000
CALIBRATION_SEED = 20261121  # the seed of `make calibration`
OPEN_MISSES = {
    # Added by issue 12 and not met yet; docs/calibration.md shows the gap. The calibration test fails when
    # one of them starts passing (remove it here) or any other figure misses.
    "cr_active_non_cns_emd": "PRWCC CR/CRi 66% with active non-CNS EMD; simulated ~86%",
    "efs_24m_bca_loss_6m": "ELIANA/ENSIGN 24-month EFS 14% after loss of BCA within 6 months; simulated ~36%",
}


def _cohort(n: int, relapse_hazard_ratio: float, seed: int = 0):
    """Infusions, measurements, outcomes: half high burden, relapse after day 28 with a known HR."""
    rng = np.random.default_rng(seed)
    ids = [f"P{i:05d}" for i in range(n)]
    high = np.arange(n) % 2 == 1
    infusions = contract_infusions(ids, bm_blasts_pct=np.where(high, 40.0, 1.0))
    relapse = 28.0 + rng.exponential(400.0 / np.where(high, relapse_hazard_ratio, 1.0))
    censor = rng.uniform(30.0, 1500.0, n)
    relapsed = relapse <= censor
    outcomes = contract_outcomes(ids, np.where(relapsed, "relapse", "none"), np.where(relapsed, relapse, np.nan),
                                 np.minimum(relapse, censor))
    measurements = pd.DataFrame({"patient_id": ids, "day": 28.0, "specimen": "BM", "assay": "ngs_mrd",
                                 "value": "NEG", "unit": "fraction"})
    return infusions, measurements, outcomes


def _known_targets(share_target: float, hr_target: float) -> tuple[CalibrationTarget, ...]:
    hr = CoxHazardRatio("relapse", "responder", ("high_burden",), "high_burden")
    return (
        CalibrationTarget("share_high", "half have high burden", "test", "percentage", share_target,
                          Share("all", "high_burden == 1"), PointsTolerance(5.0)),
        CalibrationTarget("hr_high", "relapse HR of high burden", "test", "hazard_ratio", hr_target, hr,
                          HazardRatioTolerance(0.30)),
        CalibrationTarget("os", "overall survival", "test", "percentage", 90.0, NotModeled("no deaths"),
                          PointsTolerance(5.0)),
    )


def test_targets_have_unique_ids_and_cover_every_figure_of_the_domain_table():
    ids = [target.id for target in TARGETS]
    assert len(ids) == len(set(ids))
    required = {"cr_cri_rate", "efs_6m", "efs_12m", "os_6m", "os_12m", "relapse_share_treated",
                "relapse_responders_36m",
                "relapse_mix_cd19_pos", "relapse_mix_cd19_neg", "relapse_mix_lineage_switch",
                "car_persistence_median_latent", "bca_duration_median_observed", "blasts_above_0_below_5",
                "blasts_ge_50", "death_early", "hsct_in_remission", "efs_hr_high_burden", "efs_12m_low_burden",
                "efs_12m_high_burden", "cd19_neg_hr_high_burden", "cr_blinatumomab_nonresponder",
                "efs_6m_blinatumomab_nonresponder", "efs_hr_blinatumomab_exposure", "efs_hr_active_non_cns_emd",
                "cd19_pos_hr_prior_crs_ge2", "bca_loss_early_hr_low_antigen", "relapse_hr_low_fludarabine_auc",
                "relapse_or_bca_loss_hr_low_fludarabine_auc", "relapse_hr_bca_loss_1y", "relapse_hr_ngs_d28",
                "relapse_hr_ngs_m3", "lineage_switch_hr_kmt2a", "relapse_hr_kmt2a", "relapse_hr_age_ge_18",
                "relapse_hr_male", "relapse_hr_down_syndrome", "relapse_hr_prior_hsct", "pb_mrd_pos_bm_negative",
                "cr_isolated_cns", "os_after_relapse_by_phenotype", "os_hr_prior_lines",
                "cr_active_non_cns_emd", "cr_cns3", "efs_24m_bca_loss_6m"}
    assert required <= set(ids)


def test_not_modeled_targets_say_why():
    for target in TARGETS:
        if not target.modeled:
            assert len(target.analysis.reason) > 20, target.id


def test_hazard_ratio_targets_use_the_hazard_ratio_rule():
    for target in TARGETS:
        if target.statistic == "hazard_ratio" and target.modeled and target.target != 1.0:
            assert isinstance(target.tolerance, HazardRatioTolerance), target.id


def test_known_cohort_passes_and_a_wrong_target_misses():
    infusions, measurements, outcomes = _cohort(4000, relapse_hazard_ratio=2.5)
    results = compute_calibration(infusions, measurements, outcomes, None, _known_targets(50.0, 2.5))
    assert list(results.columns) == list(RESULT_COLUMNS)
    assert results["status"].tolist() == ["pass", "pass", "not modeled"]
    assert results.loc[1, "simulated"] == pytest.approx(2.5, rel=0.12)
    wrong = compute_calibration(infusions, measurements, outcomes, None, _known_targets(70.0, 6.0))
    assert wrong["status"].tolist() == ["miss", "miss", "not modeled"]
    assert not wrong["within_tolerance"].any()
    assert calibration_misses(wrong)["id"].tolist() == ["share_high", "hr_high"]


def test_rows_violating_the_contract_are_quarantined_and_counted():
    infusions, measurements, outcomes = _cohort(400, relapse_hazard_ratio=2.5)
    measurements.loc[3, "value"] = "positive?"
    results = compute_calibration(infusions, measurements, outcomes, None, _known_targets(50.0, 2.5))
    assert "400 of 400 patients analysed" in quarantine_summary(results)
    assert "measurements 1 of 400" in quarantine_summary(results)


def test_rows_needing_ground_truth_are_marked_without_it():
    cohort = simulate_cohort(300, seed=1, with_true_cifs=False)
    targets = tuple(t for t in TARGETS if t.id in ("car_persistence_median_latent", "cr_cri_rate"))
    results = compute_calibration(cohort.infusions, cohort.measurements, cohort.outcomes, None, targets)
    latent, observed = results.set_index("id").loc[["car_persistence_median_latent", "cr_cri_rate"]].to_dict("records")
    assert latent["status"] == "no ground truth" and not latent["within_tolerance"]
    assert observed["status"] in ("pass", "miss") and np.isfinite(observed["simulated"])
    with_truth = compute_calibration(cohort.infusions, cohort.measurements, cohort.outcomes, cohort.ground_truth,
                                     targets)
    responders = cohort.outcomes["response"].isin(["CR", "CRi"]).to_numpy()
    expected = np.median(cohort.ground_truth["car_persistence_day"].to_numpy()[responders])
    assert with_truth.set_index("id").loc["car_persistence_median_latent", "simulated"] == pytest.approx(expected)


def test_markdown_is_date_free_and_shows_target_and_simulated_side_by_side():
    infusions, measurements, outcomes = _cohort(1000, relapse_hazard_ratio=2.5)
    results = compute_calibration(infusions, measurements, outcomes, None, _known_targets(50.0, 2.5))
    text = render_markdown(results, 1000, 7, "car-relapse calibrate --patients 1000 --seed 7 --out x.md")
    assert "`car-relapse calibrate --patients 1000 --seed 7 --out x.md`" in text
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text)
    row = next(line for line in text.splitlines() if line.startswith("| share_high |"))
    assert f"| 50.0 | {results.loc[0, 'simulated']:.1f} |" in row and "PASS" in row
    assert "2 pass, 0 miss, 1 not modeled" in text and "1000 of 1000 patients analysed" in text


def test_run_calibration_writes_report_and_figure(tmp_path):
    out = tmp_path / "docs" / "calibration.md"
    results = run_calibration(400, 3, out)
    text = out.read_text()
    assert len(results) == len(TARGETS)
    assert all(f"| {target.id} |" in text for target in TARGETS)
    assert (tmp_path / "docs" / "figures" / "calibration_efs_by_burden.png").stat().st_size > 1000
    assert run_calibration(400, 3, tmp_path / "again.md").equals(results)


@pytest.mark.slow
def test_simulator_is_calibrated_to_every_modeled_published_figure():
    """THE calibration test: 20,000 simulated patients, every modeled target within its tolerance but the
    :data:`OPEN_MISSES` (which must still miss, so the list cannot go stale)."""
    cohort = simulate_cohort(CALIBRATION_PATIENTS, CALIBRATION_SEED, with_true_cifs=False)
    results = compute_calibration(cohort.infusions, cohort.measurements, cohort.outcomes, cohort.ground_truth)
    assert (results["status"] != "no ground truth").all()
    misses = calibration_misses(results)
    lines = [f"  {row.id}: target {row.target:g}, simulated {row.simulated:.3g}, tolerance {row.tolerance}"
             + (f" ({row.note})" if isinstance(row.note, str) and row.note else "")
             for row in misses.itertuples()]
    unexpected = [line for line, target_id in zip(lines, misses["id"]) if target_id not in OPEN_MISSES]
    assert not unexpected, f"{len(unexpected)} published figures outside tolerance:\n" + "\n".join(unexpected)
    assert set(misses["id"]) == set(OPEN_MISSES), f"open misses now met: {set(OPEN_MISSES) - set(misses['id'])}"
    assert results.attrs["data_report"]["patients_out"] == CALIBRATION_PATIENTS, quarantine_summary(results)


def test_efs_definition_matches_eliana_style_on_the_known_cohort():
    infusions, measurements, outcomes = _cohort(2000, relapse_hazard_ratio=1.0, seed=4)
    outcomes.loc[:199, ["response", "event", "event_day", "relapse_phenotype", "relapse_site"]] = [
        "NR", "none", math.nan, None, None]
    target = CalibrationTarget("efs_0", "EFS at day 0", "test", "percentage", 90.0,
                               KaplanMeierAt("efs", "all", 0.0), PointsTolerance(5.0))
    result = compute_calibration(infusions, measurements, outcomes, None, (target,))
    assert "2000 of 2000 patients analysed" in quarantine_summary(result)
    assert result.loc[0, "simulated"] == pytest.approx(90.0)  # the 10% non-responders fail at day 0
