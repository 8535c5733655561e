"""Survival and competing-risks estimators, evaluation, explanation and the MLflow pyfunc wrapper."""
