"""pipelines.spark: the registered model scores in Spark (local mode) exactly as batch scoring does.

Needs the ``spark`` extra and Java; skipped with the reason otherwise. ``make setup`` leaves the
extra out (pyspark is a 456 MB download); ``make spark`` adds it, and CI (``.ci/run``) does so
before ``make test``, so CI runs these tests.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from models.serving import ERROR_COLUMN
from pipelines.api import score_frames
from pipelines.pyfunc_model import log_scoring_model
from pipelines.simulate import simulate_cohort
from pipelines.tracking import init_store
from tests.models.test_serving import bundle  # noqa: F401  (shared fitted-bundle fixture)

pytest.importorskip("pyspark", reason="pyspark is not installed (pip install .[spark])")
if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
    pytest.skip("Spark needs Java (17 or later): no java on PATH and no JAVA_HOME", allow_module_level=True)

from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from pipelines.spark import request_frame, score_requests_in_spark  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
AS_OF_DAY = 91.0


@pytest.fixture(scope="module")
def model_uri(bundle, tmp_path_factory):  # noqa: F811
    """The scoring model logged as training logs it and registered as ``car-relapse@champion``, in a
    store of its own (the current tracking URI while the module runs); yields (model URI, tracking URI)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('spark_store')}/mlflow.db"
    init_store(uri)
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # as the recipe's MLFLOW_TRACKING_URI does (earlier tests may have set another)
    with mlflow.start_run():
        info = log_scoring_model(bundle)
    version = mlflow.register_model(info.model_uri, "car-relapse").version
    MlflowClient(tracking_uri=uri).set_registered_model_alias("car-relapse", "champion", version)
    yield info.model_uri, uri
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


@pytest.fixture(scope="module")
def spark():
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors run this project's Python
    session = (SparkSession.builder.master("local[1]").appName("car-relapse-tests")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "1").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def tables():
    """40 simulated patients; one without any measurement row, one with an unreadable lab value."""
    cohort = simulate_cohort(40, 99)
    infusions, measurements = cohort.infusions, cohort.measurements
    unmeasured, broken = infusions["patient_id"].iloc[3], infusions["patient_id"].iloc[7]
    measurements = measurements.loc[measurements["patient_id"] != unmeasured].reset_index(drop=True)
    measurements.loc[measurements.index[measurements["patient_id"] == broken][1], "value"] = "twelve"
    return infusions, measurements, unmeasured, broken


def _by_patient(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("patient_id").reset_index(drop=True)


def test_spark_scores_equal_batch_scoring_and_a_bad_patient_gets_an_error_record(spark, model_uri, tables):
    uri, tracking_uri = model_uri
    infusions, measurements, unmeasured, broken = tables
    requests = request_frame(spark.createDataFrame(infusions), spark.createDataFrame(measurements), AS_OF_DAY)
    answers = _by_patient(score_requests_in_spark(spark, uri, requests.repartition(3)).toPandas())
    assert len(answers) == len(infusions)
    bad = answers.loc[answers[ERROR_COLUMN].notna()]
    assert bad["patient_id"].tolist() == [broken], bad[ERROR_COLUMN].tolist()
    assert bad[ERROR_COLUMN].iloc[0].startswith("measurements[") and ".value:" in bad[ERROR_COLUMN].iloc[0]
    assert bad.drop(columns=["patient_id", ERROR_COLUMN]).isna().all(axis=None)
    batch = score_frames(uri, infusions, measurements, AS_OF_DAY, tracking_uri=tracking_uri)
    assert broken in set(batch.rejects["patient_id"]) and unmeasured in set(batch.scores["patient_id"])
    expected = _by_patient(batch.scores.loc[batch.scores["patient_id"] != broken])
    scored = answers.loc[answers[ERROR_COLUMN].isna()].drop(columns=[ERROR_COLUMN]).reset_index(drop=True)
    pd.testing.assert_frame_equal(scored, expected, check_exact=True, check_dtype=False)


def _documented_recipe() -> str:
    """The Python block of the "Scoring in Spark" section of docs/usage.md."""
    section = (ROOT / "docs" / "usage.md").read_text().split("## Scoring in Spark", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_documented_recipe_scores_the_registered_model_like_batch_scoring(spark, model_uri, tables, tmp_path):
    _, tracking_uri = model_uri
    infusions, measurements, _, broken = tables
    (tmp_path / "cohort").mkdir()
    infusions.to_parquet(tmp_path / "cohort" / "infusions.parquet")
    measurements.to_parquet(tmp_path / "cohort" / "measurements.parquet")
    # the JVM resolves relative paths against the folder it started in, not Python's: make them absolute
    recipe = _documented_recipe().replace('"cohort/', f'"{tmp_path}/cohort/').replace('"scores.parquet"',
                                                                                    f'"{tmp_path}/scores.parquet"')
    namespace: dict = {}
    exec(compile(recipe, "docs/usage.md (Scoring in Spark)", "exec"), namespace)
    assert namespace["errors"].toPandas()["patient_id"].tolist() == [broken]
    written = _by_patient(pd.read_parquet(tmp_path / "scores.parquet"))
    batch = score_frames("models:/car-relapse@champion", infusions, measurements, 91, tracking_uri=tracking_uri)
    expected = _by_patient(batch.scores.loc[batch.scores["patient_id"] != broken])
    scored = written.loc[written[ERROR_COLUMN].isna()].drop(columns=[ERROR_COLUMN]).reset_index(drop=True)
    pd.testing.assert_frame_equal(scored, expected, check_exact=True, check_dtype=False)


def test_null_measurement_arrays_get_error_records_and_never_fail_the_job(spark, model_uri, tables):
    uri, _ = model_uri
    infusions, measurements, _, broken = tables
    requests = request_frame(spark.createDataFrame(infusions), spark.createDataFrame(measurements), AS_OF_DAY)
    null = F.lit(None).cast(requests.schema["measurements"].dataType)
    first = infusions["patient_id"].iloc[0]
    one_null = requests.withColumn("measurements", F.when(F.col("patient_id") == first, null)
                                   .otherwise(F.col("measurements")))
    answers = _by_patient(score_requests_in_spark(spark, uri, one_null).toPandas()).set_index("patient_id")
    assert answers.loc[first, ERROR_COLUMN].startswith("measurements: must be a list")
    assert answers[ERROR_COLUMN].notna().sum() == 2  # the null one and the unreadable value
    assert answers.drop(index=[first, broken])[ERROR_COLUMN].isna().all()
    # a batch of patients none of whom can be scored is answered, not refused (the job goes on)
    all_null = requests.withColumn("measurements", null).coalesce(1)
    errors = score_requests_in_spark(spark, uri, all_null).select("patient_id", ERROR_COLUMN).toPandas()
    assert len(errors) == len(infusions) and errors[ERROR_COLUMN].str.startswith("measurements: must be a list").all()
