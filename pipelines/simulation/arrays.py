"""Small array helpers shared by the simulation modules: rows of array dataclasses, columns, hazards."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

import numpy as np

__all__ = ["NO_VALUE", "take_rows", "as_column", "expit", "smooth_below", "first_true_index", "sample_decaying_hazard"]

NO_VALUE = np.array(None, dtype=object)
"""A missing value for ``np.where`` (an object array rather than ``None``, which numpy's type stubs reject)."""

T = TypeVar("T", bound="DataclassInstance")


def take_rows(record: T, rows: np.ndarray) -> T:
    """Select (or repeat) rows of every array field of a (nested) dataclass of per-patient arrays.

    Parameters
    ----------
    record : dataclass instance
        Fields are numpy arrays whose first axis is the patient, or dataclasses of such arrays;
        other fields are copied unchanged.
    rows : ndarray of int
        Row indices (may repeat, e.g. for Monte Carlo replicates).

    Returns
    -------
    Same type as ``record``.
    """
    values = {}
    for spec in dataclasses.fields(record):
        value = getattr(record, spec.name)
        if isinstance(value, np.ndarray):
            values[spec.name] = value[rows]
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            values[spec.name] = take_rows(value, rows)
    return dataclasses.replace(record, **values)


def as_column(values: np.ndarray | float, like: np.ndarray) -> np.ndarray | float:
    """Per-patient values (shape (n,)) as a column when ``like`` is 2-d (patients x times).

    Scalars, and any values when ``like`` is 1-d, are returned unchanged, so one formula serves
    one day per patient and a grid of days per patient.
    """
    if np.ndim(values) == 1 and np.ndim(like) == 2:
        return np.asarray(values)[:, None]
    return values


def expit(x: np.ndarray) -> np.ndarray:
    """Logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def smooth_below(value: np.ndarray, threshold: float, smoothness_log: float) -> np.ndarray:
    """Smooth indicator (0..1) that ``value`` lies below ``threshold``, on the log scale.

    Parameters
    ----------
    value : ndarray
        Positive values (e.g. CD19 antigen load in %, fludarabine AUC).
    threshold : float
        Where the indicator is 0.5.
    smoothness_log : float
        Width of the transition in natural-log units.
    """
    return expit((np.log(threshold) - np.log(np.maximum(value, 1e-12))) / smoothness_log)


def first_true_index(mask: np.ndarray) -> np.ndarray:
    """Column index of the first True of each row of a 2-d boolean array; -1 when none."""
    any_true = mask.any(axis=1)
    return np.where(any_true, mask.argmax(axis=1), -1)


def sample_decaying_hazard(total: np.ndarray | float, tau: float, rng: np.random.Generator, n: int,
                           after_day: np.ndarray | float = 0.0, end_day: np.ndarray | float = np.inf) -> np.ndarray:
    """Event time under the hazard ``total / tau * exp(-t / tau)`` on ``[0, end_day)``, given none by ``after_day``.

    The expected number of events over ``[0, inf)`` is ``total``. Closed-form inversion of the
    cumulative hazard.

    Parameters
    ----------
    total : float or ndarray
        Integrated hazard over all time.
    tau : float
        Decay time (days).
    rng : numpy.random.Generator
        The random stream.
    n : int
        Number of draws.
    after_day : float or ndarray
        Condition on no event up to this day.
    end_day : float or ndarray
        The hazard is zero from this day on (e.g. CAR loss).

    Returns
    -------
    ndarray
        Event day, ``inf`` when no event occurs.
    """
    start = np.exp(-np.asarray(after_day, dtype=float) / tau)
    end = np.exp(-np.minimum(np.asarray(end_day, dtype=float), 1e9) / tau)
    draw = rng.exponential(1.0, n) / np.maximum(np.asarray(total, dtype=float), 1e-300)
    occurs = draw < start - end
    with np.errstate(divide="ignore", invalid="ignore"):
        day = -tau * np.log(start - draw)
    return np.where(occurs, day, np.inf)
