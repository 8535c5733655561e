"""Survival and competing-risks estimators, evaluation, explanation and the MLflow pyfunc wrapper.

Import from the submodules (``models.factory.make_model``, ``models.evaluation.evaluate_sources``,
``models.explain.top_factors`` ...): the package itself imports nothing heavy. See docs/models.md.
"""

__all__: list[str] = []
