"""Eligibility: is a patient in the models' population at an as-of day, as far as the outcomes show?

A model predicts relapse for patients **in remission and event-free** at the day of the prediction
(``features.landmarks``: the landmark risk set). Scoring any other patient gives numbers, but not
numbers the model was built for; batch scoring and the patient report therefore say, per patient:

- ``yes``: in remission (CR/CRi assessed by the day; at day 0 a later remission counts, as in the
  landmark-0 risk set) with no relapse, death or HSCT on or before the day, and follow-up reaching
  the day (a last follow-up on the day itself is enough: the patient was seen event-free then; the
  training risk set also needs follow-up *after* the day, for a target);
- ``no``: an event on or before the day, no remission, or remission not yet assessed by the day;
- ``unknown``: no outcomes table, no outcomes row for the patient, no response or response day
  recorded, an event without a day, or follow-up ending before the day.

The conditions are the risk set's own (:func:`features.landmarks.risk_set_conditions`); this module
only words them. Each patient may have its own as-of day.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from features.landmarks import risk_set_conditions
from features.schema import REMISSION_RESPONSES

__all__ = ["ELIGIBLE", "NOT_ELIGIBLE", "UNKNOWN", "ELIGIBILITY_COLUMNS", "NO_OUTCOMES", "eligibility_at"]

ELIGIBLE, NOT_ELIGIBLE, UNKNOWN = "yes", "no", "unknown"
ELIGIBILITY_COLUMNS = ("eligible", "eligibility_reason")
NO_OUTCOMES = "no outcomes table"


_JUDGEMENTS: dict[str, tuple[str, str]] = {  # the first condition that fails -> status, reason
    "no_row": (UNKNOWN, "no outcomes row: remission and events are not recorded"),
    "event": (NOT_ELIGIBLE, "{event} on day {event_day}"),
    "event_undated": (UNKNOWN, "{event} recorded without its day"),
    "no_response": (UNKNOWN, "response not recorded"),
    "no_remission": (NOT_ELIGIBLE, "no remission (response {response})"),
    "no_response_day": (UNKNOWN, "{response} recorded without its response_day"),
    "not_yet_assessed": (NOT_ELIGIBLE, "remission not yet assessed by day {day} (assessed on day {response_day})"),
    "follow_up": (UNKNOWN, "follow-up ends on day {last_followup_day}, before day {day}"),
    "at_infusion": (ELIGIBLE, "{response} on day {response_day}; at infusion the risk is among patients who reach "
                              "remission"),
    "eligible": (ELIGIBLE, "{response} on day {response_day}, event-free through day {day}"),
}
_WORDED = ("event", "event_day", "response", "response_day", "last_followup_day")


def _judgement(kind: str, row: dict, day: float) -> tuple[str, str]:
    """Status and reason of one patient whose first failing condition is ``kind``."""
    status, reason = _JUDGEMENTS[kind]
    words = {name: f"{value:g}" if isinstance(value, float) else value for name, value in row.items()}
    return status, reason.format(**words, day=f"{day:g}")


def eligibility_at(outcomes: pd.DataFrame | None, patient_ids: Sequence[str] | pd.Index | pd.Series,
                   as_of_day: float | Sequence[float] | np.ndarray) -> pd.DataFrame:
    """Whether each patient is in the model's population at its as-of day (module docstring).

    Parameters
    ----------
    outcomes : DataFrame or None
        Validated outcomes table (``features.contract.validate_cohort``); None when there is none
        (every patient ``unknown``, reason :data:`NO_OUTCOMES`).
    patient_ids : sequence of str
        The patients, in the order wanted.
    as_of_day : float or array-like of float
        Days since infusion: one for every patient, or one per patient of ``patient_ids``.

    Returns
    -------
    DataFrame
        Indexed by ``patient_id`` (``patient_ids`` order): ``eligible`` (:data:`ELIGIBLE`,
        :data:`NOT_ELIGIBLE` or :data:`UNKNOWN`) and ``eligibility_reason``.
    """
    index = pd.Index([str(pid) for pid in patient_ids], name="patient_id")
    days = np.broadcast_to(np.asarray(as_of_day, dtype=float), (len(index),))
    if outcomes is None:
        return pd.DataFrame({"eligible": UNKNOWN, "eligibility_reason": NO_OUTCOMES}, index=index,
                            columns=list(ELIGIBILITY_COLUMNS))
    outcomes = outcomes.assign(patient_id=outcomes["patient_id"].astype(str))
    conditions, aligned = risk_set_conditions(outcomes, index, days)
    recorded = index.isin(outcomes["patient_id"])
    undated = np.isnan(aligned["event_day"].to_numpy(dtype=float, na_value=np.nan))
    in_cr = aligned["response"].isin(REMISSION_RESPONSES).to_numpy()
    kinds = np.select(
        [~recorded, ~conditions.event_free & ~undated, ~conditions.event_free, aligned["response"].isna().to_numpy(),
         ~in_cr, ~conditions.in_remission & aligned["response_day"].isna().to_numpy(), ~conditions.in_remission,
         ~conditions.followed_to],
        ["no_row", "event", "event_undated", "no_response", "no_remission", "no_response_day", "not_yet_assessed",
         "follow_up"],
        np.where(days <= 0, "at_infusion", "eligible"),
    )
    rows = aligned.loc[:, list(_WORDED)].to_dict("records")
    judged = [_judgement(kind, row, day) for kind, row, day in zip(kinds, rows, days)]
    return pd.DataFrame(judged, columns=list(ELIGIBILITY_COLUMNS), index=index)
