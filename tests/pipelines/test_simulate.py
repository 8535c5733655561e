"""Tests of the synthetic cohort as a whole: format, determinism, mechanism, ground truth, oracle."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.contract import validate_cohort
from features.labtext import normalise_lab_values
from pipelines.io import read_cohort_folder
from pipelines.simulate import SimulationError, run_simulate, simulate_cohort
from pipelines.simulation.params import DEFAULT_SITES

INFUSION_COLUMNS = [
    "patient_id", "site", "age_years", "sex", "down_syndrome", "kmt2a_rearranged", "tp53_altered", "hypodiploid",
    "ph_positive", "prior_lines", "prior_crs", "prior_hsct", "blinatumomab", "inotuzumab_prior", "bm_blasts_pct",
    "cns_status", "active_non_cns_emd", "cd19_antigen_load_pct", "cd19_dim_pre", "cd22_pct_pre", "product",
    "costim", "cell_dose_per_kg", "fludarabine_auc",
]
OUTCOME_COLUMNS = ["patient_id", "response", "response_day", "event", "event_day", "last_followup_day",
                   "relapse_phenotype", "relapse_site"]
MEASUREMENT_COLUMNS = ["patient_id", "day", "specimen", "assay", "value", "unit", "detection_limit"]
ORACLE_PARTS = ["cif_CD19_pos", "cif_CD19_neg", "cif_lineage_switch", "cif_death", "cif_hsct", "event_free"]


@pytest.fixture(scope="module")
def cohort():
    """A small cohort shared by the fast tests."""
    return simulate_cohort(1500, seed=11)


@pytest.fixture(scope="module")
def large_cohort():
    """The one large cohort (with oracle) for the statistical consistency tests."""
    return simulate_cohort(5000, seed=12, with_oracle=True)


@pytest.fixture(scope="module")
def parsed(cohort):
    """Measurements with parsed value / censored (features.labtext) next to the raw columns."""
    m = cohort.measurements
    values = normalise_lab_values(m["value"], m["unit"], m["assay"], m["detection_limit"])
    return pd.concat([m[["patient_id", "day", "specimen", "assay"]], values], axis=1)


def _merged(cohort) -> pd.DataFrame:
    return cohort.infusions.merge(cohort.outcomes, on="patient_id").merge(cohort.ground_truth, on="patient_id")


# --- format -----------------------------------------------------------------------------------------
def test_tables_have_the_documented_columns(cohort):
    assert list(cohort.infusions.columns) == INFUSION_COLUMNS
    assert list(cohort.outcomes.columns) == OUTCOME_COLUMNS
    assert list(cohort.measurements.columns) == MEASUREMENT_COLUMNS
    assert cohort.infusions["patient_id"].is_unique
    assert cohort.infusions["site"].nunique() == 7
    expected = {"car_persistence_day", "crossing_day_CD19_pos", "crossing_day_CD19_neg",
                "crossing_day_lineage_switch", "true_event", "true_event_day"}
    for months in (6, 12, 24):
        expected |= {f"true_cif_relapse_{p}_{months}m" for p in ("CD19_pos", "CD19_neg", "lineage_switch")}
        expected |= {f"true_cif_{c}_{months}m" for c in ("relapse", "death", "hsct")}
    assert expected <= set(cohort.ground_truth.columns)


def test_every_result_parses_and_shares_of_lab_text_are_realistic(cohort, parsed):
    assert parsed["error_kind"].isna().all(), parsed.loc[parsed["error_kind"].notna(), "error_reason"].head()
    text = cohort.measurements["value"].astype(str)
    mrd = cohort.measurements["assay"].isin(["flow_mrd", "ngs_mrd"]).to_numpy()
    quantified = mrd & ~parsed["censored"].to_numpy()
    with_percent_or_exponent = text.str.contains("%|E", regex=True).to_numpy()
    share = with_percent_or_exponent[quantified].mean()
    assert 0.1 < share < 0.5
    assert text.isin(["NEG", "negative"]).any() and text.str.startswith("<").any()
    assert (text == "detected <LOQ").any()


def test_censored_results_are_never_zero(cohort, parsed):
    censored = parsed["censored"].to_numpy()
    raw = pd.to_numeric(cohort.measurements["value"], errors="coerce")
    assert not (raw[censored] == 0).any()
    assert (parsed.loc[censored, "value"] > 0).all()
    assert (parsed.loc[censored, "value"] == parsed.loc[censored, "detection_limit"]).all()
    mrd = parsed["assay"].isin(["flow_mrd", "ngs_mrd"])
    assert (parsed.loc[mrd, "value"] > 0).all()


def test_about_ten_percent_have_no_ngs_rows(cohort):
    with_ngs = cohort.measurements.loc[cohort.measurements["assay"] == "ngs_mrd", "patient_id"].unique()
    share_without = 1.0 - len(with_ngs) / len(cohort.infusions)
    assert 0.05 < share_without < 0.2


def test_nothing_is_observed_after_the_first_event_or_last_followup(cohort):
    m = cohort.measurements.merge(cohort.outcomes, on="patient_id")
    assert (m["day"] <= m["last_followup_day"]).all()
    with_event = m["event"] != "none"
    assert (m.loc[with_event, "day"] <= m.loc[with_event, "event_day"]).all()
    non_responders = m["response"] == "NR"
    assert (m.loc[non_responders, "day"] <= m.loc[non_responders, "response_day"]).all()


def test_outcomes_are_consistent(cohort):
    out = cohort.outcomes
    relapse = out["event"] == "relapse"
    assert out.loc[relapse, "relapse_phenotype"].notna().all()
    assert out.loc[~relapse, ["relapse_phenotype", "relapse_site"]].isna().all().all()
    assert (out.loc[out["response"] == "NR", "event"] != "relapse").all()
    assert (out.loc[relapse, "event_day"] > out.loc[relapse, "response_day"]).all()
    assert (out["last_followup_day"] >= out["event_day"].fillna(0)).all()
    assert out.loc[out["event"] == "none", "event_day"].isna().all()


def test_same_seed_same_cohort_and_other_seed_other_cohort(cohort):
    again = simulate_cohort(1500, seed=11)
    for name, frame in cohort.tables().items():
        pd.testing.assert_frame_equal(frame, again.tables()[name])
    pd.testing.assert_frame_equal(cohort.ground_truth, again.ground_truth)
    other = simulate_cohort(1500, seed=12)
    assert not cohort.outcomes["event"].equals(other.outcomes["event"])


def test_asking_for_the_oracle_or_no_true_cifs_does_not_change_the_tables():
    plain = simulate_cohort(200, seed=5)
    with_oracle = simulate_cohort(200, seed=5, with_oracle=True)
    without_cifs = simulate_cohort(200, seed=5, with_true_cifs=False)
    for name, frame in plain.tables().items():
        pd.testing.assert_frame_equal(frame, with_oracle.tables()[name])
        pd.testing.assert_frame_equal(frame, without_cifs.tables()[name])
    latent_columns = list(without_cifs.ground_truth.columns)
    assert not any(column.startswith("true_cif_") for column in latent_columns)
    pd.testing.assert_frame_equal(without_cifs.ground_truth, plain.ground_truth[latent_columns])


# --- mechanism --------------------------------------------------------------------------------------
def _first_detectable_day(parsed: pd.DataFrame, specimen: str, assay: str) -> pd.Series:
    rows = parsed[(parsed["specimen"] == specimen) & (parsed["assay"] == assay) & (parsed["day"] > 0)]
    detectable = rows[~rows["censored"] | rows["detected_below_loq"]]
    return detectable.groupby("patient_id")["day"].min()


def test_log_mrd_rises_before_relapse(cohort, parsed):
    relapse = cohort.outcomes.loc[cohort.outcomes["event"] == "relapse", ["patient_id", "event_day"]]
    ngs = parsed[(parsed["assay"] == "ngs_mrd") & (parsed["day"] > 0)].merge(relapse, on="patient_id")
    before = ngs[ngs["day"] < ngs["event_day"]].sort_values("day")
    quantified = before[~before["censored"]]
    series = quantified.groupby(["patient_id", "specimen"])["value"].agg(["first", "last", "count"])
    series = series[series["count"] >= 2]
    assert len(series) >= 20
    assert (series["last"] > series["first"]).mean() > 0.8


def test_ngs_detects_before_flow_on_the_same_marrow(cohort, parsed):
    ngs = _first_detectable_day(parsed, "BM", "ngs_mrd")
    flow = _first_detectable_day(parsed, "BM", "flow_mrd")
    both = ngs.index.intersection(flow.index)
    assert len(both) >= 30
    assert (ngs[both] <= flow[both]).mean() > 0.9
    assert (ngs[both] < flow[both]).mean() > 0.3


def test_blood_is_positive_while_the_marrow_is_negative_mostly_with_extramedullary_disease(cohort, parsed):
    """PB/BM discordance is not drawn: it comes from EM disease shedding into blood (and patchy marrow)."""
    pb = parsed[(parsed["specimen"] == "PB") & (parsed["assay"] == "flow_mrd") & ~parsed["censored"]]
    bm = parsed[(parsed["specimen"] == "BM") & (parsed["assay"] == "flow_mrd") & parsed["censored"]]
    discordant = set(pb.merge(bm, on=["patient_id", "day"])["patient_id"])
    data = _merged(cohort).assign(discordant=lambda d: d["patient_id"].isin(discordant))
    assert data["discordant"].sum() >= 10
    em_at_infusion = data["active_non_cns_emd"] | data["cns_status"].isin(["CNS2", "CNS3"])
    assert data.loc[em_at_infusion, "discordant"].mean() > 4 * data.loc[~em_at_infusion, "discordant"].mean()
    relapse_site = data.loc[data["discordant"] & (data["event"] == "relapse"), "relapse_site"]
    assert relapse_site.isin(["extramedullary", "combined"]).mean() > 0.5


def test_pre_infusion_marrow_mrd_matches_the_reported_blasts(cohort, parsed):
    work_up = parsed[(parsed["day"] < 0) & (parsed["specimen"] == "BM") & (parsed["assay"] == "flow_mrd")]
    data = work_up.merge(cohort.infusions[["patient_id", "bm_blasts_pct"]], on="patient_id")
    high = data[data["bm_blasts_pct"] >= 5]
    log_ratio = np.log10(high["value"]) - np.log10(high["bm_blasts_pct"] / 100.0)
    assert len(high) > 300
    assert abs(np.median(log_ratio)) < 0.15 and (np.abs(log_ratio) < 0.6).mean() > 0.95


def test_cd19_negative_relapse_under_the_car_and_cd19_positive_after_its_loss(cohort):
    data = _merged(cohort)
    relapse = data[data["event"] == "relapse"]
    under_car = relapse["event_day"] < relapse["car_persistence_day"]
    negative = relapse["relapse_phenotype"] == "CD19_neg"
    positive = relapse["relapse_phenotype"] == "CD19_pos"
    assert negative.sum() >= 30 and positive.sum() >= 30
    assert under_car[negative].mean() > 0.5
    assert under_car[positive].mean() < 0.05


def test_lineage_switch_is_mostly_kmt2a(cohort):
    data = _merged(cohort)
    switch = data["relapse_phenotype"] == "lineage_switch"
    assert switch.sum() >= 5
    assert data.loc[switch, "kmt2a_rearranged"].mean() > 0.5
    assert data["kmt2a_rearranged"].mean() < 0.15


def test_no_response_is_likelier_with_high_burden_blinatumomab_failure_and_emd(large_cohort):
    data = _merged(large_cohort)
    nonresponse = data["response"] == "NR"
    high_burden = data["bm_blasts_pct"] >= 5
    assert nonresponse[high_burden].mean() > 3 * nonresponse[~high_burden].mean()
    blina = data["blinatumomab"]
    assert nonresponse[blina == "nonresponder"].mean() > 3 * nonresponse[blina == "naive"].mean()
    emd = data["active_non_cns_emd"]
    assert nonresponse[emd].mean() > nonresponse[~emd].mean() + 0.02


def test_cd19_negative_relapse_is_driven_by_burden_and_cd19_dim_blasts(large_cohort):
    """Latent relapses of responders (ground truth, no censoring): more CD19-negative escape with
    high burden (more cells, more variants) and CD19-dim blasts (a sizeable pre-existing subclone)."""
    data = _merged(large_cohort)
    responders = data[data["true_response"]]
    negative = responders["true_relapse_phenotype"] == "CD19_neg"
    high_burden = responders["bm_blasts_pct"] >= 5
    assert negative[high_burden].mean() > 2 * negative[~high_burden].mean()
    dim = responders["cd19_dim_pre"].fillna(False).astype(bool)
    with_blasts = responders["bm_blasts_pct"] > 0
    assert negative[dim & with_blasts].mean() > 2 * negative[~dim & with_blasts].mean()


def test_consolidative_hsct_follows_the_center_policy(large_cohort):
    """HSCT is decided at visits with each center's policy as a multiplier (params.DEFAULT_SITES)."""
    data = _merged(large_cohort)
    responders = data[data["true_response"]]
    hsct = (responders["true_event"] == "hsct").groupby(responders["site"]).mean()
    policy = {site.name: site.hsct_policy for site in DEFAULT_SITES}
    most, least = max(policy, key=policy.get), min(policy, key=policy.get)
    assert hsct[most] > 2.5 * hsct[least]
    assert np.corrcoef([policy[site] for site in hsct.index], hsct.to_numpy())[0, 1] > 0.8


def test_relapse_sites_include_extramedullary_and_combined(cohort):
    sites = cohort.outcomes["relapse_site"].value_counts(normalize=True)
    assert sites["medullary"] > 0.5
    assert sites["extramedullary"] > 0.05 and sites["combined"] > 0.03


def test_b_cells_recover_only_after_car_loss(cohort, parsed):
    b_cells = parsed[(parsed["assay"] == "b_cell_count") & (parsed["day"] > 0)]
    data = b_cells.merge(cohort.ground_truth[["patient_id", "car_persistence_day"]], on="patient_id")
    threshold = np.where(data["unit"] == "pct_lymphocytes", 1.0, 10.0)
    recovered = ~data["censored"] & (data["value"] >= threshold)
    under_car = data["day"] < data["car_persistence_day"]
    assert recovered[under_car].mean() < 0.01
    assert recovered[data["day"] > data["car_persistence_day"] + 60].mean() > 0.8


# --- ground truth and oracle ------------------------------------------------------------------------
def _aalen_johansen_relapse(time: np.ndarray, relapse: np.ndarray, other: np.ndarray, horizon: float) -> float:
    """Cumulative incidence of relapse by ``horizon`` (competing other events, right censoring)."""
    order = np.argsort(time)
    time, relapse, other = time[order], relapse[order], other[order]
    at_risk, survival, incidence = len(time), 1.0, 0.0
    for t in np.unique(time[time <= horizon]):
        here = time == t
        d_relapse, d_other = relapse[here].sum(), other[here].sum()
        incidence += survival * d_relapse / at_risk
        survival *= 1.0 - (d_relapse + d_other) / at_risk
        at_risk -= here.sum()
    return incidence


def test_true_incidence_matches_the_realised_relapses(large_cohort):
    data = _merged(large_cohort)
    responders = data[data["response"].isin(["CR", "CRi"])]
    time = np.where(responders["event"] == "none", responders["last_followup_day"], responders["event_day"])
    relapse = (responders["event"] == "relapse").to_numpy()
    other = responders["event"].isin(["death", "hsct"]).to_numpy()
    for months, horizon in ((6, 182.0), (12, 365.0)):
        observed = _aalen_johansen_relapse(time, relapse, other, horizon)
        truth = responders[f"true_cif_relapse_{months}m"].mean()
        assert abs(truth - observed) < 0.03, (months, truth, observed)


def test_true_cifs_are_probabilities(large_cohort):
    truth = large_cohort.ground_truth
    defined = truth[truth["true_cif_relapse_6m"].notna()]
    assert len(defined) > 0.9 * len(truth)
    for months in (6, 12, 24):
        causes = defined[[f"true_cif_{c}_{months}m" for c in ("relapse", "death", "hsct")]]
        assert causes.min().min() >= 0.0 and causes.sum(axis=1).max() <= 1.0 + 1e-12
    for cause in ("relapse_CD19_pos", "relapse_CD19_neg", "relapse_lineage_switch", "death", "hsct"):
        six, twelve, twenty_four = (defined[f"true_cif_{cause}_{m}m"] for m in (6, 12, 24))
        assert (six <= twelve + 1e-12).all() and (twelve <= twenty_four + 1e-12).all(), cause


def test_oracle_rows_sum_to_one_and_match_ground_truth_at_infusion(large_cohort):
    oracle = large_cohort.oracle
    assert set(oracle["landmark_day"]) == {0.0, 28.0, 91.0, 182.0, 365.0}
    assert set(oracle["horizon_days"]) == {182.0, 365.0, 730.0}
    at_risk = oracle[oracle["in_risk_set"]]
    np.testing.assert_allclose(at_risk[ORACLE_PARTS].sum(axis=1), 1.0)
    assert oracle.loc[~oracle["in_risk_set"], ORACLE_PARTS].isna().all().all()
    shrinking = oracle.groupby("landmark_day")["in_risk_set"].mean()
    assert shrinking.is_monotonic_decreasing
    # landmark 0 and the ground truth estimate the same CIFs with independent Monte Carlo draws
    at_infusion = at_risk[(at_risk["landmark_day"] == 0.0) & (at_risk["horizon_days"] == 365.0)]
    truth = large_cohort.ground_truth.set_index("patient_id").loc[at_infusion["patient_id"]]
    oracle_relapse = at_infusion[["cif_CD19_pos", "cif_CD19_neg", "cif_lineage_switch"]].sum(axis=1).to_numpy()
    truth_relapse = truth["true_cif_relapse_12m"].to_numpy()
    assert abs(oracle_relapse.mean() - truth_relapse.mean()) < 0.01
    assert np.corrcoef(oracle_relapse, truth_relapse)[0, 1] > 0.9
    np.testing.assert_allclose(at_infusion["cif_hsct"].mean(), truth["true_cif_hsct_12m"].mean(), atol=0.01)


def test_oracle_matches_realised_latent_events_after_each_landmark(large_cohort):
    truth = large_cohort.ground_truth.set_index("patient_id")
    oracle = large_cohort.oracle
    for landmark in (91.0, 182.0):
        rows = oracle[(oracle["landmark_day"] == landmark) & (oracle["horizon_days"] == 365.0) & oracle["in_risk_set"]]
        latent = truth.loc[rows["patient_id"]]
        relapsed = (latent["true_event"] == "relapse") & (latent["true_event_day"] <= landmark + 365.0)
        predicted = rows[["cif_CD19_pos", "cif_CD19_neg", "cif_lineage_switch"]].sum(axis=1).mean()
        assert abs(predicted - relapsed.mean()) < 0.04, (landmark, predicted, relapsed.mean())


def test_oracle_is_more_informative_later(large_cohort):
    """After CAR loss the oracle's relapse risk is higher than while the CAR persists."""
    truth = large_cohort.ground_truth.set_index("patient_id")
    rows = large_cohort.oracle
    rows = rows[(rows["landmark_day"] == 91.0) & (rows["horizon_days"] == 365.0) & rows["in_risk_set"]]
    car_lost = truth.loc[rows["patient_id"], "car_persistence_day"].to_numpy() <= 91.0
    relapse = rows["cif_CD19_pos"].to_numpy()
    assert relapse[car_lost].mean() > 2.0 * relapse[~car_lost].mean()


# --- files ------------------------------------------------------------------------------------------
def test_tables_pass_the_data_contract_strictly(cohort):
    validated = validate_cohort(cohort.infusions, cohort.measurements, cohort.outcomes, on_error="fail")
    assert len(validated.measurements) == len(cohort.measurements)


@pytest.mark.parametrize("file_format", ["parquet", "csv"])
def test_run_simulate_writes_a_cohort_folder_that_reads_back_valid(tmp_path, file_format):
    folder = tmp_path / "cohort"
    run_simulate(300, seed=3, out_dir=folder, with_oracle=True, file_format=file_format)
    for name in ("infusions", "measurements", "outcomes"):
        assert (folder / f"{name}.{file_format}").is_file()
    assert (folder / "ground_truth.parquet").is_file() and (folder / "oracle.parquet").is_file()
    files = read_cohort_folder(folder)
    assert len(files.tables["infusions"]) == 300
    validate_cohort(files.tables["infusions"], files.tables["measurements"], files.tables["outcomes"],
                    on_error="fail", source_names=files.source_names)


def test_run_simulate_rejects_bad_arguments(tmp_path):
    with pytest.raises(SimulationError, match="format"):
        run_simulate(10, seed=1, out_dir=tmp_path, file_format="xlsx")
    with pytest.raises(SimulationError, match="n_patients"):
        simulate_cohort(0, seed=1)
