"""Distributed batch scoring in Spark: the registered model as a Spark UDF (``mlflow.pyfunc.spark_udf``).

Needs the ``spark`` extra (``pip install .[spark]``), Java 17 or later, and ``PYSPARK_PYTHON``
pointing at the Python this project is installed in (the executors load the model there; see
docs/usage.md, "Scoring in Spark"). Two steps, each one function:

1. :func:`request_frame`: the infusions and measurements tables (Spark DataFrames with the data
   contract's columns) -> one row per patient in the served model's request shape: the infusions
   columns, ``as_of_day`` and ``measurements`` as ``array<struct<day, specimen, assay, value, unit,
   detection_limit>>``. A patient without measurement rows gets an empty array (no measurements),
   never a null one.
2. :func:`score_requests_in_spark`: the registered model applied to those rows, one output row per
   patient with the served model's columns and ``error``. It runs with ``on_error="records"``: a
   patient that cannot be scored (a bad value, a null ``measurements`` array in a hand-made request
   frame) gets an error record naming the field and the others are scored; no Spark task fails
   for a patient's data. Missing values are Spark nulls (as the served model's JSON nulls).

The numbers are those of ``car-relapse score`` for the same tables and day: the UDF runs the served
model's own code (``models.serving``) on each batch of patients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.serving import MEASUREMENT_FIELDS
from pipelines.pyfunc_model import EVERY_PATIENT

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = ["request_frame", "score_requests_in_spark"]


def request_frame(infusions: DataFrame, measurements: DataFrame, as_of_day: float | Column) -> DataFrame:
    """One request row per patient of the infusions table: its columns, ``as_of_day``, ``measurements``.

    Parameters
    ----------
    infusions, measurements : pyspark.sql.DataFrame
        Raw tables of the data contract (lab text as written is fine: the model's data contract
        parses it). Measurement columns outside the contract are not sent.
    as_of_day : float or pyspark.sql.Column
        Days since infusion, for every patient or per row (a column of ``infusions``).

    Returns
    -------
    pyspark.sql.DataFrame
        ``measurements`` holds each patient's rows sorted by day (then specimen, assay, ...);
        empty for a patient without any.
    """
    from pyspark.sql import functions as F

    fields = [name for name in MEASUREMENT_FIELDS if name in measurements.columns]
    per_patient = measurements.groupBy("patient_id").agg(
        F.sort_array(F.collect_list(F.struct(*fields))).alias("measurements"))
    none_measured = F.array().cast(per_patient.schema["measurements"].dataType)
    as_of = as_of_day if isinstance(as_of_day, F.Column) else F.lit(float(as_of_day))
    return infusions.join(per_patient, "patient_id", "left").select(
        *infusions.columns, as_of.cast("double").alias("as_of_day"),
        F.coalesce(F.col("measurements"), none_measured).alias("measurements"))


def score_requests_in_spark(spark: SparkSession, model_uri: str, requests: DataFrame) -> DataFrame:
    """Score request rows with the model at ``model_uri``; one output row per request row.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
    model_uri : str
        ``models:/car-relapse@champion``, ``runs:/<run id>/model`` ... (resolved on the driver with
        the current MLflow tracking URI).
    requests : pyspark.sql.DataFrame
        Rows in the request shape (:func:`request_frame`, or built by hand).

    Returns
    -------
    pyspark.sql.DataFrame
        The served model's output columns (``models.serving.score_tables``'s) and ``error``: null
        for a scored patient, each field and problem for one that is not (its scores null).
    """
    import mlflow
    from pyspark.sql import functions as F

    score = mlflow.pyfunc.spark_udf(spark, model_uri, env_manager="local", params={"on_error": EVERY_PATIENT})
    return _missing_as_null(requests.select(score(F.struct(*requests.columns)).alias("scores")).select("scores.*"))


def _missing_as_null(scores: DataFrame) -> DataFrame:
    """Missing values as Spark nulls, as the served model answers them (JSON null).

    ``spark_udf`` casts a text column that holds some missing values with ``str``, so they arrive as
    the text ``'None'`` (``error`` of every scored patient, ``risk_group`` of an error record), and
    a missing number arrives as NaN. ``patient_id`` is left as it is (an id may be any text).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, StringType

    def restored(field):
        column = F.col(field.name)
        if isinstance(field.dataType, StringType) and field.name != "patient_id":
            return F.when(column != "None", column).alias(field.name)
        if isinstance(field.dataType, DoubleType):
            return F.when(~F.isnan(column), column).alias(field.name)
        return column

    return scores.select(*(restored(field) for field in scores.schema.fields))
