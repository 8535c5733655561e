"""The oracle as a prediction source: long table -> predict_cif layout, joined on patient and landmark."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.base import ModelInputError, cif_column, cif_columns, event_free_column, relapse_column
from models.evaluation import EvaluationSettings, evaluate_sources
from models.metrics import Outcome, uno_c
from models.oracle import ORACLE_CAUSE_COLUMNS, concordance_mcse, mcse_column, oracle_predictions


def _oracle() -> pd.DataFrame:
    rows = []
    for patient, landmark, horizon, base in [("P1", 0.0, 182.0, 0.1), ("P1", 0.0, 365.0, 0.2),
                                             ("P1", 28.0, 182.0, 0.05), ("P1", 28.0, 365.0, 0.15),
                                             ("P2", 0.0, 182.0, 0.3), ("P2", 0.0, 365.0, 0.4)]:
        values = {"cif_CD19_pos": base, "cif_CD19_neg": base / 2, "cif_lineage_switch": 0.0,
                  "cif_death": 0.01, "cif_hsct": 0.02}
        rows.append({"patient_id": patient, "landmark_day": landmark, "horizon_days": horizon, "in_risk_set": True,
                     **values, "event_free": 1.0 - sum(values.values())})
    return pd.DataFrame(rows)


def test_rows_are_joined_on_patient_and_landmark():
    keys = pd.DataFrame({"patient_id": ["P2", "P1", "P3"], "landmark_day": [0.0, 28.0, 0.0]}, index=[10, 11, 12])
    predictions = oracle_predictions(keys, _oracle(), [182.0, 365.0])
    assert list(predictions.columns) == cif_columns([182.0, 365.0])
    assert predictions.index.tolist() == [10, 11, 12]
    assert predictions.loc[10, cif_column("relapse_CD19_pos", 365)] == pytest.approx(0.4)
    assert predictions.loc[11, cif_column("relapse", 182)] == pytest.approx(0.05 + 0.025)
    assert predictions.loc[11, event_free_column(365)] == pytest.approx(1 - 0.15 - 0.075 - 0.03)
    assert predictions.loc[12].isna().all()  # P3 is not in the oracle


def test_missing_horizon_and_bad_sums_are_errors():
    keys = pd.DataFrame({"patient_id": ["P1"], "landmark_day": [0.0]})
    with pytest.raises(ModelInputError, match="horizon 730"):
        oracle_predictions(keys, _oracle(), [730.0])
    broken = _oracle()
    broken.loc[2, "cif_death"] = 0.5
    with pytest.raises(ModelInputError, match="row 2.*sum to 1"):
        oracle_predictions(keys, broken, [182.0])
    with pytest.raises(ModelInputError, match="missing column"):
        oracle_predictions(keys, _oracle().drop(columns=["event_free"]), [182.0])


def test_every_oracle_cause_is_mapped():
    assert sorted(ORACLE_CAUSE_COLUMNS.values()) == sorted(
        ["relapse_CD19_pos", "relapse_CD19_neg", "relapse_lineage_switch", "death", "hsct"])
    assert np.isnan(oracle_predictions(pd.DataFrame({"patient_id": ["P9"], "landmark_day": [0.0]}), _oracle(),
                                       [182.0]).to_numpy()).all()


def _with_errors(oracle: pd.DataFrame) -> pd.DataFrame:
    errors = {f"mcse_{column}": 0.01 for column in ("cif_CD19_pos", "cif_CD19_neg", "cif_lineage_switch",
                                                    "cif_death", "cif_hsct", "event_free")}
    return oracle.assign(**errors, mcse_cif_relapse=0.02, mc_replicates=256)


def test_monte_carlo_standard_errors_travel_with_the_predictions():
    keys = pd.DataFrame({"patient_id": ["P2", "P3"], "landmark_day": [0.0, 0.0]})
    predictions = oracle_predictions(keys, _with_errors(_oracle()), [182.0, 365.0])
    assert list(predictions.columns[:len(cif_columns([182.0, 365.0]))]) == cif_columns([182.0, 365.0])
    assert predictions.loc[0, mcse_column(relapse_column(365))] == pytest.approx(0.02)
    assert predictions.loc[0, mcse_column(cif_column("death", 182))] == pytest.approx(0.01)
    assert predictions.loc[0, mcse_column(event_free_column(182))] == pytest.approx(0.01)
    assert np.isnan(predictions.loc[1, mcse_column(relapse_column(182))])


def _scored_rows(n: int, seed: int):
    rng = np.random.default_rng(seed)
    risk = rng.beta(0.7, 2.0, n)
    relapse_time = rng.exponential(200.0 / (risk + 0.05))
    censor = rng.uniform(100.0, 730.0, n)
    time = np.minimum(relapse_time, censor)
    event = np.where(relapse_time <= censor, "relapse_CD19_pos", "none")
    return risk, Outcome.from_events(time, event), time, event


def test_concordance_mcse_is_the_spread_of_the_c_under_monte_carlo_noise():
    """The perturbation estimate matches the spread of the C over independent noisy estimates."""
    risk, outcome, _, _ = _scored_rows(1500, 0)
    sigma = 0.02 + 0.1 * risk * (1 - risk)
    rng = np.random.default_rng(1)
    noisy = [risk + sigma * rng.standard_normal(risk.size) for _ in range(40)]
    spread = np.std([uno_c(outcome, estimate, 365.0) for estimate in noisy], ddof=1)
    estimates = [concordance_mcse(outcome, estimate, sigma, 365.0, draws=20, random_state=k)["uno_c"]
                 for k, estimate in enumerate(noisy[:5])]
    assert 0.6 * spread < np.mean(estimates) < 1.6 * spread
    assert concordance_mcse(outcome, risk, np.zeros_like(risk), 365.0)["uno_c"] == 0.0


def test_evaluation_reports_the_oracle_monte_carlo_error():
    risk, _, time, event = _scored_rows(600, 2)
    targets = pd.DataFrame({"patient_id": [f"P{i}" for i in range(600)], "landmark_day": np.repeat([0.0, 91.0], 300),
                            "time": time, "event": event})

    def source(errors: bool) -> pd.DataFrame:
        frame = pd.DataFrame({cif_column(cause, h): (risk if cause == "relapse_CD19_pos" else 0.0)
                              for cause in ("relapse_CD19_pos", "relapse_CD19_neg", "relapse_lineage_switch", "death", "hsct")
                              for h in (182.0, 365.0)}, index=targets.index)
        for h in (182.0, 365.0):
            frame[relapse_column(h)] = risk
            if errors:
                frame[mcse_column(relapse_column(h))] = 0.05
        return frame

    result = evaluate_sources(targets, {"oracle": source(True), "model": source(False)},
                              EvaluationSettings(horizons_days=(182.0, 365.0), n_bootstrap=0, reference=None))
    rows = result.metrics[result.metrics["metric"] == "uno_c_mcse"]
    assert set(rows["source"]) == {"oracle"}
    assert set(rows["landmark_day"].astype(str)) == {"0.0", "91.0", "all"}
    assert (rows["value"] > 0).all()
    per_landmark = rows[(rows["landmark_day"].astype(str) != "all") & (rows["horizon_days"] == 365.0)]["value"]
    mean = rows[(rows["landmark_day"].astype(str) == "all") & (rows["horizon_days"] == 365.0)]["value"].item()
    assert mean == pytest.approx(np.sqrt(np.sum(per_landmark ** 2)) / 2)
    mean_error = result.metrics[(result.metrics["metric"] == "cif_mcse_mean")]["value"]
    assert np.allclose(mean_error, 0.05)
