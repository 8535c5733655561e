"""The registered model: a thin MLflow pyfunc around ``models.serving``.

MLflow logs this file as *model code* (models-from-code): on load it runs the file, which ends with
``mlflow.models.set_model(CarRelapseModel())``. ``load_context`` unpickles the fitted
:class:`models.serving.ScoringBundle`; ``predict`` hands the typed request records to
:func:`models.serving.score_records` and turns a :class:`models.serving.ScoringInputError` into an
MLflow "invalid parameter value" error, which the scoring server answers with HTTP 400 naming the
problem (and keeps serving).

The input signature comes from the ``predict`` type hint ``list[PatientRecord]`` (pydantic, built
from the data contract). MLflow validates requests against it in strict mode: a missing required
field, a wrong type, an unknown field, or 2.5 sent for an integer field is a 400, never a silent
cast. The scoring server then accepts only the ``{"inputs": [...]}`` request format.

This file must import nothing from ``pipelines``: the model ships only ``features/`` and
``models/`` as code, so it loads on a machine where this project is not installed.
"""

from __future__ import annotations

from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import cloudpickle
import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from models.serving import EXAMPLE_PATIENT, MicroBatcher, PatientRecord, ScoringBundle, ScoringInputError, score_records

__all__ = ["BUNDLE_ARTIFACT", "CarRelapseModel", "save_bundle", "load_bundle", "pip_requirements", "log_scoring_model"]

BUNDLE_ARTIFACT = "scoring_bundle"
_SHIPPED_PACKAGES = ("features", "models")
# what the shipped code (features/, models/) and this file import; keep in step with their imports
_REQUIRED_DISTRIBUTIONS = (
    "mlflow",
    "cloudpickle",
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "scikit-learn",
    "scikit-survival",
    "xgboost-cpu",
    "shap",
    "pandera",
    "pydantic",
    "matplotlib",
    "rich",
)


def save_bundle(bundle: ScoringBundle, path: Path) -> Path:
    """Pickle a scoring bundle (cloudpickle) to ``path``."""
    path = Path(path)
    with open(path, "wb") as handle:
        cloudpickle.dump(bundle, handle)
    return path


def load_bundle(path: Path | str) -> ScoringBundle:
    """Unpickle a scoring bundle written by :func:`save_bundle`."""
    with open(path, "rb") as handle:
        return cloudpickle.load(handle)


class CarRelapseModel(mlflow.pyfunc.PythonModel):
    """Relapse and phenotype risk for patients in the data contract, as of a given day."""

    def load_context(self, context) -> None:
        """Load the fitted scoring bundle shipped as an artifact; concurrent requests share calls."""
        self._bundle = load_bundle(context.artifacts[BUNDLE_ARTIFACT])
        self._score = MicroBatcher(partial(score_records, self._bundle))

    def predict(self, context, model_input: list[PatientRecord], params: Optional[dict[str, Any]] = None) -> pd.DataFrame:
        """One output row per patient (see ``models.serving.score_records``); missing values are None."""
        try:
            scores = self._score(model_input)
        except ScoringInputError as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from None
        return scores.astype(object).where(scores.notna(), None)  # missing -> JSON null, not NaN


def pip_requirements() -> list[str]:
    """Pinned requirements of the served model: the installed versions of what it imports."""
    pins = []
    for distribution in _REQUIRED_DISTRIBUTIONS:
        try:
            pins.append(f"{distribution}=={metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def log_scoring_model(bundle_path: Path, name: str = "model", input_example: Optional[list] = None):
    """Log the pyfunc (model code + bundle + shipped packages) in the active run.

    Parameters
    ----------
    bundle_path : Path
        File written by :func:`save_bundle`.
    name : str
        Name of the logged model within the run.
    input_example : list of dict, optional
        Request records; default :data:`models.serving.EXAMPLE_PATIENT` (a made-up patient, so
        no patient data is stored with the model).

    Returns
    -------
    mlflow.models.model.ModelInfo
    """
    project = Path(__file__).resolve().parents[1]
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).resolve()),
        artifacts={BUNDLE_ARTIFACT: str(bundle_path)},
        code_paths=[str(project / package) for package in _SHIPPED_PACKAGES],
        input_example=input_example if input_example is not None else [EXAMPLE_PATIENT],
        pip_requirements=pip_requirements(),
    )


mlflow.models.set_model(CarRelapseModel())
