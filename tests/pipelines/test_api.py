"""pipelines.api: the notebook example of docs/usage.md runs as written, and the API answers like the jobs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from pipelines.api import IN_MEMORY, run_config, score_frames, train_frames
from pipelines.config import ConfigError, RunConfig
from pipelines.io import write_cohort_folder
from pipelines.score import load_scoring_bundle, score_cohort

ROOT = Path(__file__).resolve().parents[2]


def _documented_example() -> str:
    """The Python block of the "Python API" section of docs/usage.md."""
    section = (ROOT / "docs" / "usage.md").read_text().split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_the_documented_example_runs_and_scores_like_batch_scoring(tracking_uri, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_documented_example(), "docs/usage.md (Python API)", "exec"), namespace)
    summary, result, new = namespace["summary"], namespace["result"], namespace["new"]
    assert "rows rejected" in capsys.readouterr().out
    run = MlflowClient(tracking_uri=tracking_uri).get_run(summary.run_id)
    assert run.data.tags["data.source"] == IN_MEMORY and summary.tracking_uri == tracking_uri
    assert run.inputs.dataset_inputs[0].dataset.source_type == "code"
    assert list(result.scores["patient_id"]) == list(new.infusions["patient_id"]) and result.rejects.empty
    folder = tmp_path / "new_patients"
    write_cohort_folder(folder, new.infusions, new.measurements, file_format="csv")
    batch, rejects, _, _ = score_cohort(load_scoring_bundle(summary.model_uri, tracking_uri), folder, 91)
    assert rejects.empty
    assert (batch["eligible"] == "unknown").all() and (batch["eligibility_reason"] == "no outcomes table").all()
    pd.testing.assert_frame_equal(result.scores, batch.drop(columns=["eligible", "eligibility_reason"]),
                                  check_exact=True, check_dtype=False)


def test_run_config_accepts_what_a_notebook_has(tmp_path):
    assert run_config(None) == RunConfig()
    assert run_config({"models": {"candidates": ["xgb_cox"]}}).models.candidates == ["xgb_cox"]
    config = RunConfig.model_validate({"evaluation": {"cv_folds": 3}})
    assert run_config(config) is config
    path = tmp_path / "run.yaml"
    path.write_text("evaluation:\n  cv_folds: 4\n")
    assert run_config(path).evaluation.cv_folds == 4 == run_config(str(path)).evaluation.cv_folds
    with pytest.raises(ValidationError, match="candidatez"):
        run_config({"models": {"candidatez": ["xgb_cox"]}})
    with pytest.raises(ConfigError, match="not found"):
        run_config(tmp_path / "missing.yaml")


def test_train_frames_checks_the_config_before_touching_data_or_store(raw_cohort, tmp_path):
    with pytest.raises(ConfigError, match="selection_metric"):
        train_frames(raw_cohort["infusions"], raw_cohort["measurements"], raw_cohort["outcomes"],
                     config={"evaluation": {"selection_metric": "f1"}},
                     tracking_uri=f"sqlite:///{tmp_path}/never/mlflow.db")
    assert not (tmp_path / "never").exists()


def test_score_frames_names_a_missing_model(tracking_uri, raw_cohort):
    from pipelines.score import ScoreError

    with pytest.raises(ScoreError, match="no-such-model"):
        score_frames("models:/no-such-model@champion", raw_cohort["infusions"], raw_cohort["measurements"], 91,
                     tracking_uri=tracking_uri)


@pytest.mark.parametrize("promote", [False, True])
def test_train_frames_passes_promote_to_the_training_job(raw_cohort, monkeypatch, promote):
    """``train_frames(..., promote=True)`` is ``car-relapse train --promote``."""
    import pipelines.api

    seen = {}
    monkeypatch.setattr(pipelines.api, "train", lambda config, **kwargs: seen.update(kwargs) or "summary")
    assert train_frames(raw_cohort["infusions"], raw_cohort["measurements"], raw_cohort["outcomes"],
                        promote=promote) == "summary"
    assert seen["promote"] is promote and seen["cohort"].description == IN_MEMORY
