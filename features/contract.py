"""The data contract: validate and normalise a cohort (infusions, measurements, outcomes).

:func:`validate_cohort` runs, in order:

1. **Columns** (per table): every required column present, else :class:`ContractError` in both
   modes (a table without a required column cannot be interpreted row by row). Unknown extra
   columns are kept and listed in the report; absent optional columns are listed too.
2. **Types** (per cell): text, float, nullable integer and boolean coercion; a cell that does not
   coerce is a row problem ("wrong type").
3. **Schema** (per cell): allowed values, ranges and missingness from ``features.schema``.
4. **Lab values** (measurements): parsing and unit normalisation by ``features.labtext``.
5. **Cross-row and cross-table rules** (see :data:`OUTCOME_RULES`, duplicates, unknown patients,
   measurements after the last follow-up).

``on_error="fail"`` raises one :class:`ContractError` listing the problems as
``file, row N, column C: reason``. ``on_error="quarantine"`` drops the offending rows and records
each of them in the :class:`DataReport`. A problem in a patient's ``infusions`` or ``outcomes`` row
quarantines the whole patient (their rows in every table, reason "patient quarantined"), because
the patient's baseline or outcome can no longer be trusted and tables must stay consistent; a
problem in a single measurement row drops that row only.

Scoring a few patients (no outcomes, small tables) first tries the accept-only fast path of
``features.contract_fast``: when it proves the tables clean it returns the same frames the steps
above would, and the report and quarantine frames are built here as for any clean cohort;
otherwise (anything it is not sure of) the steps above run, so every problem is reported by them.

Row numbers: for a source file ending in ``.csv`` the row number is the file's line number
(the header is line 1, so the first data row is row 2); for Parquet files and in-memory frames it
is the 0-based row position.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from rich.console import Group
from rich.table import Table
from rich.text import Text

from features.contract_fast import BOOL_WORDS, clean_small_cohort
from features.labtext import MAX_EXACT_INTEGER, normalise_lab_values
from features.schema import (
    ASSAYS,
    COLUMNS_BY_TABLE,
    NORMALISED_MEASUREMENT_COLUMNS,
    NORMALISED_MEASUREMENTS_SCHEMA,
    REMISSION_RESPONSES,
    SCHEMA_BY_TABLE,
    SPECIMENS,
    ColumnSpec,
)

__all__ = [
    "ON_ERROR_MODES",
    "PATIENT_QUARANTINED",
    "MAX_ERROR_LINES",
    "OUTCOME_RULES",
    "ContractError",
    "TableReport",
    "DataReport",
    "ValidatedCohort",
    "display_row",
    "validate_cohort",
]

ON_ERROR_MODES = ("fail", "quarantine")
PATIENT_QUARANTINED = "patient quarantined"
MAX_ERROR_LINES = 200
_PROBLEM_COLUMNS = ["table", "position", "column", "kind", "reason", "patient_id", "cascade"]


def display_row(source: str, position: int) -> int:
    """The row number a user sees: CSV line number (header = line 1), else the 0-based position.

    Parameters
    ----------
    source : str
        Source file name (``measurements.csv``) or table name for in-memory frames.
    position : int
        0-based row position in the table as given.

    Returns
    -------
    int
    """
    return int(position) + 2 if str(source).lower().endswith(".csv") else int(position)


class ContractError(ValueError):
    """A cohort that violates the data contract.

    Attributes
    ----------
    lines : list of str
        Every problem as ``file, row N, column C: reason`` (table-level problems have no row).
    """

    def __init__(self, lines: list[str], header: str = "cohort violates the data contract"):
        self.lines = list(lines)
        shown = self.lines[:MAX_ERROR_LINES]
        more = len(self.lines) - len(shown)
        text = [f"{header}: {len(self.lines)} problem(s)", *(f"  {line}" for line in shown)]
        if more:
            text.append(f"  ... and {more} more")
        super().__init__("\n".join(text))


# --- problems -------------------------------------------------------------------------------------
def _problems(
    table: str,
    rows: pd.Index,
    column: str | None,
    kind: str,
    reasons: Any,
    patient_ids: Any,
    cascade: bool = False,
) -> pd.DataFrame:
    """A frame of problems (one per row position in ``rows``)."""
    if not len(rows):  # the common case; the same empty frame as for no problems at all
        return _concat_problems([])
    return pd.DataFrame(
        {
            "table": table,
            "position": np.asarray(rows, dtype=np.int64),
            "column": column,
            "kind": kind,
            "reason": np.asarray(reasons, dtype=object) if not isinstance(reasons, str) else reasons,
            "patient_id": np.asarray(patient_ids, dtype=object),
            "cascade": cascade,
        },
        columns=_PROBLEM_COLUMNS,
    )


_NO_PROBLEMS = pd.DataFrame({name: pd.Series(dtype=object) for name in _PROBLEM_COLUMNS})


def _concat_problems(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [frame for frame in frames if len(frame)]
    if not frames:
        return _NO_PROBLEMS.copy()  # building an empty frame costs more than copying one
    return pd.concat(frames, ignore_index=True)


def _problem_lines(problems: pd.DataFrame, sources: Mapping[str, str]) -> list[str]:
    """``file, row N, column C: reason`` for each problem (sorted by table order and row)."""
    order = {name: i for i, name in enumerate(COLUMNS_BY_TABLE)}
    ranked = problems.assign(_t=problems["table"].map(order)).sort_values(["_t", "position"], kind="stable")
    lines = []
    for table, position, column, reason in ranked[["table", "position", "column", "reason"]].itertuples(index=False):
        source = sources[table]
        where = [source] + ([] if pd.isna(position) else [f"row {display_row(source, position)}"])
        where += [] if column is None or pd.isna(column) else [f"column {column}"]
        lines.append(f"{', '.join(where)}: {reason}")
    return lines


# --- step 1: columns ------------------------------------------------------------------------------
def _check_columns(tables: Mapping[str, pd.DataFrame], sources: Mapping[str, str]) -> None:
    """Raise :class:`ContractError` when a required column is missing (fatal in both modes)."""
    lines = []
    for name, frame in tables.items():
        for spec in COLUMNS_BY_TABLE[name]:
            if spec.required and spec.name not in frame.columns:
                lines.append(f"{sources[name]}, column {spec.name}: required column is missing")
    if lines:
        raise ContractError(lines, header="cohort cannot be read under the data contract")


def _column_lists(name: str, frame: pd.DataFrame) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Unknown extra columns and absent optional columns of a table."""
    declared = [spec.name for spec in COLUMNS_BY_TABLE[name]]
    unknown = tuple(str(c) for c in frame.columns if c not in declared)
    absent = tuple(spec.name for spec in COLUMNS_BY_TABLE[name] if not spec.required and spec.name not in frame)
    return unknown, absent


# --- step 2: types --------------------------------------------------------------------------------
def _coerce_text(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty") and values.dtype == object:
        return values, pd.Series(False, index=values.index)
    text = values.astype(object)
    present = text.notna()
    text[present] = text[present].astype(str)
    return text, pd.Series(False, index=values.index)


def _to_numbers(values: pd.Series) -> pd.Series:
    """``pd.to_numeric(errors="coerce")``, once per distinct value for text columns (days repeat)."""
    if values.dtype != object:
        return pd.to_numeric(values, errors="coerce").astype(float)
    codes, distinct = pd.factorize(values)
    table = np.append(pd.to_numeric(pd.Series(distinct, dtype=object), errors="coerce").to_numpy(dtype=float), np.nan)
    return pd.Series(table[codes], index=values.index)


def _coerce_float(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    if isinstance(values.dtype, np.dtype) and values.dtype.kind in "fi":  # already numbers: only inf is bad
        numbers = values.astype(float)
        bad = np.isinf(numbers.to_numpy())
        return (numbers.where(~bad) if bad.any() else numbers), pd.Series(bad, index=values.index)
    numbers = _to_numbers(values)
    bad = (values.notna() & numbers.isna()) | np.isinf(numbers)
    return numbers.where(~bad), bad


def _coerce_int(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    numbers, bad = _coerce_float(values)
    # beyond 2**53 a float is no longer an exact integer (and beyond int64 it cannot be cast at all)
    bad = bad | (numbers.notna() & ((numbers != numbers.round()) | (numbers.abs() > MAX_EXACT_INTEGER)))
    return numbers.where(~bad).astype("Int64"), bad


def _coerce_bool(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    if pd.api.types.is_bool_dtype(values.dtype):
        return values.astype("boolean"), pd.Series(False, index=values.index)
    words = values.astype(str).str.strip().str.lower().map(BOOL_WORDS)
    bad = values.notna() & words.isna()
    return words.where(~bad).astype("boolean"), bad


_COERCERS: dict[str, Callable[[pd.Series], tuple[pd.Series, pd.Series]]] = {
    "str": _coerce_text,
    "float": _coerce_float,
    "int": _coerce_int,
    "bool": _coerce_bool,
}
_TYPE_WORDS = {"float": "a number", "int": "an integer", "bool": "a boolean (true/false)"}


def _coerce_table(name: str, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Coerce declared columns to their types; cells that do not coerce become row problems."""
    typed = frame.copy()
    problems = []
    for spec in COLUMNS_BY_TABLE[name]:
        if spec.name not in frame.columns or spec.kind not in _COERCERS:
            continue
        typed[spec.name], bad = _COERCERS[spec.kind](frame[spec.name])
        if bad.any():
            rows = frame.index[bad.to_numpy()]
            reasons = [f"{value!r} is not {_TYPE_WORDS[spec.kind]}" for value in frame.loc[rows, spec.name]]
            problems.append(_problems(name, rows, spec.name, "wrong type", reasons, _ids(frame, rows)))
    return typed, _concat_problems(problems)


def _ids(frame: pd.DataFrame, rows: pd.Index) -> np.ndarray:
    return frame.loc[rows, "patient_id"].astype(object).to_numpy()


# --- step 3: schema -------------------------------------------------------------------------------
_CHECK_KINDS = {
    "not_nullable": "missing value",
    "not_allowed": "value not allowed",
    "out_of_range": "value out of range",
}


def _expected_dtype(spec: ColumnSpec) -> Any:
    if spec.kind == "category":
        return pd.CategoricalDtype(list(spec.allowed or ()))
    return spec.pandas_dtype


def _dtype_matches(spec: ColumnSpec, values: pd.Series) -> bool:
    expected = _expected_dtype(spec)
    if isinstance(expected, pd.CategoricalDtype):
        return (isinstance(values.dtype, pd.CategoricalDtype) and not values.dtype.ordered
                and list(values.dtype.categories) == list(expected.categories))
    return expected is None or str(values.dtype) == expected


def _values_pass(spec: ColumnSpec, present: pd.Series) -> bool:
    """Whether the non-missing values pass the column's checks (:meth:`ColumnSpec.checks`)."""
    if spec.kind == "str" and pd.api.types.infer_dtype(present, skipna=True) not in ("string", "empty"):
        return False
    if spec.allowed is not None and spec.kind != "category" and not present.isin(spec.allowed).all():
        return False
    if spec.kind in ("str", "category", "text_or_number") or not len(present):
        return True
    numbers = present.to_numpy(dtype=float)
    low, high = spec.min_value, spec.max_value
    return bool(
        (not spec.positive or (numbers > 0).all())
        and (low is None or (numbers >= low).all())
        and (high is None or (numbers <= high).all())
    )


def _certainly_valid(schema_name: str, typed: pd.DataFrame) -> bool:
    """True only when the table's pandera schema would find no problem (the fast path).

    Evaluates the same declarations (dtype, missingness, allowed values, ranges, frame-level
    checks) directly on the arrays, which costs far less than pandera's machinery for a few
    rows. False means "not sure": the caller then runs pandera, so problems are always reported
    by the one full path, with its wording.
    """
    for spec in COLUMNS_BY_TABLE[schema_name]:
        if spec.name not in typed.columns:
            if spec.required:
                return False
            continue
        values = typed[spec.name]
        if not _dtype_matches(spec, values):
            return False
        missing = values.isna().to_numpy()
        if missing.any() and not spec.nullable:
            return False
        if not _values_pass(spec, values[~missing] if missing.any() else values):
            return False
    checks = SCHEMA_BY_TABLE[schema_name].checks
    return all(bool(np.all(check(typed).check_passed)) for check in checks)


def _schema_problems(name: str, typed: pd.DataFrame) -> pd.DataFrame:
    """Run the table's pandera schema lazily and turn its failure cases into row problems."""
    if _certainly_valid(name, typed):
        return _concat_problems([])
    try:
        SCHEMA_BY_TABLE[name].validate(typed, lazy=True, inplace=True)  # no coercion: nothing modified
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
    else:
        return _concat_problems([])
    table_level = cases[cases["index"].isna()]
    if len(table_level):  # a dtype left wrong by coercion: a bug in this module, not in the data
        raise RuntimeError(f"{name}: schema failed at table level after coercion:\n{table_level}")
    names = _check_names(SCHEMA_BY_TABLE[name])
    cases = cases.drop_duplicates(["index", "column", "check"])
    frames = []
    for (column, check), group in cases.groupby(["column", "check"], sort=False):
        kind = _CHECK_KINDS.get(names.get((column, check), check), "invalid value")
        rows = pd.Index(group["index"].astype(np.int64))
        reasons: str | list[str] = "value is missing" if kind == "missing value" else [
            f"{value!r} {check}" for value in group["failure_case"]]
        frames.append(_problems(name, rows, column, kind, reasons, _ids(typed, rows)))
    return _concat_problems(frames)


def _check_names(schema: pa.DataFrameSchema) -> dict[tuple[str, str], str]:
    """(column, error text) -> check name, to classify pandera failure cases."""
    names = {}
    for column_name, column in schema.columns.items():
        names[(column_name, "not_nullable")] = "not_nullable"
        for check in column.checks:
            names[(column_name, check.error)] = check.name
    return names


# --- step 4: lab values ---------------------------------------------------------------------------
def _normalise_measurements(typed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse lab values of rows that passed the schema; return normalised rows and row problems."""
    limits = typed["detection_limit"] if "detection_limit" in typed else None
    parsed = normalise_lab_values(typed["value"], typed["unit"], typed["assay"], limits)
    bad = parsed["error_kind"].notna()
    problems = [
        _problems("measurements", group.index, column, kind, group["error_reason"], _ids(typed, group.index))
        for (column, kind), group in parsed[bad].groupby(["error_column", "error_kind"], sort=False)
    ]
    declared = {spec.name for spec in COLUMNS_BY_TABLE["measurements"]}
    extras = [c for c in typed.columns if c not in declared]
    normalised = pd.DataFrame(
        {
            "patient_id": typed["patient_id"],
            "day": typed["day"],
            "specimen": pd.Categorical(typed["specimen"], categories=SPECIMENS),
            "assay": pd.Categorical(typed["assay"], categories=ASSAYS),
            **{spec.name: parsed[spec.name] for spec in NORMALISED_MEASUREMENT_COLUMNS[4:]},
        },
        index=typed.index,
    )
    normalised["censored"] = normalised["censored"].astype(bool)
    normalised["detected_below_loq"] = normalised["detected_below_loq"].astype(bool)
    normalised = pd.concat([normalised, typed[extras]], axis=1)
    return normalised[~bad.to_numpy()], _concat_problems(problems)


# --- step 5: cross-row and cross-table rules ------------------------------------------------------
def _duplicate_problems(name: str, ids: pd.Series) -> pd.DataFrame:
    counts = ids.map(ids.value_counts())
    duplicated = ids.notna() & (counts > 1)
    rows = ids.index[duplicated.to_numpy()]
    reasons = [f"patient_id {pid!r} appears {int(n)} times" for pid, n in zip(ids[rows], counts[rows])]
    return _problems(name, rows, "patient_id", "duplicate patient_id", reasons, ids[rows])


def _membership_problems(
    name: str, ids: pd.Series, known: pd.Series, other: str, kind: str
) -> pd.DataFrame:
    """Rows whose patient_id is not among ``known`` ids of table ``other``."""
    missing = ids.notna() & ~ids.isin(set(known.dropna()))
    rows = ids.index[missing.to_numpy()]
    reasons = [f"patient_id {pid!r} has no row in {other}" for pid in ids[rows]]
    return _problems(name, rows, "patient_id", kind, reasons, ids[rows])


def _fmt_day(day: float) -> str:
    return f"{day:g}"


OUTCOME_RULES: tuple[tuple[str, str, Callable[[pd.DataFrame], pd.Series], Callable[[Any], str]], ...] = (
    ("event_day", "missing event day",
     lambda o: (o["event"] != "none") & o["event_day"].isna(),
     lambda r: f"event {r.event!r} has no event_day"),
    ("event_day", "event day without event",
     lambda o: (o["event"] == "none") & o["event_day"].notna(),
     lambda r: f"event_day {_fmt_day(r.event_day)} given but event is 'none'"),
    ("event_day", "event after last follow-up",
     lambda o: o["event_day"] > o["last_followup_day"],
     lambda r: f"event_day {_fmt_day(r.event_day)} is after last_followup_day {_fmt_day(r.last_followup_day)}"),
    ("response_day", "response after last follow-up",
     lambda o: o["response_day"] > o["last_followup_day"],
     lambda r: f"response_day {_fmt_day(r.response_day)} is after last_followup_day "
     f"{_fmt_day(r.last_followup_day)}"),
    ("event", "relapse in NR patient",
     lambda o: (o["event"] == "relapse") & (o["response"] == "NR"),
     lambda r: "relapse recorded for a patient with response NR (never in remission)"),
    ("event_day", "relapse before response",
     lambda o: (o["event"] == "relapse") & (o["event_day"] < o["response_day"]),
     lambda r: f"relapse on day {_fmt_day(r.event_day)} precedes the response assessment on day "
     f"{_fmt_day(r.response_day)}"),
    ("relapse_phenotype", "phenotype without relapse",
     lambda o: (o["event"] != "relapse") & o["relapse_phenotype"].notna(),
     lambda r: f"relapse_phenotype {r.relapse_phenotype!r} given but event is {r.event!r}"),
    ("relapse_site", "site without relapse",
     lambda o: (o["event"] != "relapse") & o["relapse_site"].notna(),
     lambda r: f"relapse_site {r.relapse_site!r} given but event is {r.event!r}"),
)
"""Row rules of the outcomes table: (column at fault, kind, violation mask, reason of a row)."""


def _outcome_rule_problems(outcomes: pd.DataFrame) -> pd.DataFrame:
    frames = []
    for column, kind, violated, reason_of in OUTCOME_RULES:
        mask = violated(outcomes).fillna(False).astype(bool)
        bad = outcomes[mask.to_numpy()]
        reasons = [reason_of(row) for row in bad.itertuples(index=False)]
        frames.append(_problems("outcomes", bad.index, column, kind, reasons, bad["patient_id"]))
    return _concat_problems(frames)


def _outcome_notes(outcomes: pd.DataFrame | None) -> list[str]:
    """Kept rows whose missing values matter downstream, counted so that none goes unnoticed.

    Relapses with unknown phenotype or site stay (event ``relapse_unknown``); patients without a
    response, or in remission without a response day, stay in the cohort but can never enter a
    landmark risk set (``features.landmarks``), which the note says.
    """
    if outcomes is None:
        return []
    relapses = outcomes[outcomes["event"] == "relapse"]
    counts = {
        f"relapse(s) without {column} (kept; the value is unknown)": relapses[column].isna().sum()
        for column in ("relapse_phenotype", "relapse_site")
    }
    counts["patient(s) without response (kept; in no landmark risk set)"] = outcomes["response"].isna().sum()
    remission = outcomes["response"].isin(REMISSION_RESPONSES)
    counts["patient(s) in CR/CRi without response_day (kept; in no landmark risk set after day 0)"] = (
        remission & outcomes["response_day"].isna()
    ).sum()
    return [f"outcomes: {int(n)} {what}" for what, n in counts.items() if n]


def _after_followup_problems(measurements: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    last_day = measurements["patient_id"].map(outcomes.drop_duplicates("patient_id").set_index("patient_id")
                                              ["last_followup_day"])
    late = (measurements["day"] > last_day).to_numpy()
    rows = measurements.index[late]
    reasons = [
        f"day {_fmt_day(day)} is after last_followup_day {_fmt_day(last)} of patient {pid!r}"
        for day, last, pid in zip(measurements.loc[rows, "day"], last_day[rows], measurements.loc[rows, "patient_id"])
    ]
    return _problems("measurements", rows, "day", "measurement after last follow-up", reasons,
                     measurements.loc[rows, "patient_id"])


def _cascade_problems(problems: pd.DataFrame, ids: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Quarantine every row of a patient whose infusions or outcomes row has a problem."""
    if not len(problems):
        return _concat_problems([])
    own = problems[problems["table"].isin(["infusions", "outcomes"]) & problems["patient_id"].notna()]
    first = own.drop_duplicates("patient_id").set_index("patient_id")
    causes = (first["table"] + ": " + first["kind"]).to_dict()
    causes = {pid: cause for pid, cause in causes.items() if pid in set(ids["infusions"].dropna())}
    frames = []
    for table, table_ids in ids.items():
        flagged = set(problems.loc[problems["table"] == table, "position"])
        hit = table_ids.isin(causes.keys()) & ~table_ids.index.isin(list(flagged))
        rows = table_ids.index[hit.to_numpy()]
        reasons = [f"patient {pid!r} quarantined ({causes[pid]})" for pid in table_ids[rows]]
        frames.append(_problems(table, rows, "patient_id", PATIENT_QUARANTINED, reasons, table_ids[rows], True))
    return _concat_problems(frames)


# --- report ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableReport:
    """Rows in, out and quarantined for one table, with reasons, examples and column notes.

    ``reasons`` maps ``"kind: column"`` to the number of rows with that problem (a row with two
    problems counts under both, so the counts may sum to more than ``rows_quarantined``).
    """

    table: str
    source: str
    rows_in: int
    rows_out: int
    rows_quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)
    examples: tuple[str, ...] = ()
    unknown_columns: tuple[str, ...] = ()
    absent_optional_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.rows_in != self.rows_out + self.rows_quarantined:  # nothing may be lost silently
            raise RuntimeError(
                f"{self.table}: rows in ({self.rows_in}) != rows out ({self.rows_out}) "
                f"+ quarantined ({self.rows_quarantined})"
            )


@dataclass(frozen=True)
class DataReport:
    """What happened to every row and patient of a cohort during validation."""

    on_error: str
    tables: dict[str, TableReport]
    patients_in: int
    patients_out: int
    quarantined_patients: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-serialisable dictionary.

        Returns
        -------
        dict
            ``on_error``, patients in / out, quarantined patient ids, notes, and per table its
            source, row counts, reasons, examples and column lists.
        """
        return {
            "on_error": self.on_error,
            "patients_in": int(self.patients_in),
            "patients_out": int(self.patients_out),
            "quarantined_patients": list(self.quarantined_patients),
            "notes": list(self.notes),
            "tables": {
                name: {
                    "source": t.source,
                    "rows_in": int(t.rows_in),
                    "rows_out": int(t.rows_out),
                    "rows_quarantined": int(t.rows_quarantined),
                    "reasons": {k: int(v) for k, v in t.reasons.items()},
                    "examples": list(t.examples),
                    "unknown_columns": list(t.unknown_columns),
                    "absent_optional_columns": list(t.absent_optional_columns),
                }
                for name, t in self.tables.items()
            },
        }

    def render(self) -> Group:
        """The report for the terminal.

        Returns
        -------
        rich.console.Group
            A summary table, the quarantine reasons with examples, and the notes.
        """
        summary = Table(title=f"Data report (on_error={self.on_error})")
        for header in ("table", "source", "rows in", "rows out", "quarantined", "unknown columns"):
            numeric = header.startswith(("rows", "quar"))
            summary.add_column(header, justify="right" if numeric else "left", no_wrap=header != "unknown columns")
        for t in self.tables.values():
            summary.add_row(t.table, t.source, str(t.rows_in), str(t.rows_out), str(t.rows_quarantined),
                            ", ".join(t.unknown_columns) or "-")
        parts: list[Any] = [summary, Text(f"patients: {self.patients_in} in, {self.patients_out} out, "
                                          f"{self.patients_in - self.patients_out} quarantined")]
        reasons = Table(title="Quarantine reasons")
        for header in ("table", "reason", "rows"):
            reasons.add_column(header, justify="right" if header == "rows" else "left")
        for t in self.tables.values():
            for reason, count in t.reasons.items():
                reasons.add_row(t.table, reason, str(count))
        if reasons.row_count:
            parts += [reasons, Text("Examples:")]
            parts += [Text(f"  {line}") for t in self.tables.values() for line in t.examples]
        parts += [Text(f"note: {note}") for note in self.notes]
        return Group(*parts)


def _reason_key(kind: str, column: Any) -> str:
    return kind if column is None or pd.isna(column) else f"{kind}: {column}"


def _table_report(
    name: str, frame: pd.DataFrame, rows_out: int, problems: pd.DataFrame, sources: Mapping[str, str],
    max_examples: int,
) -> TableReport:
    unknown, absent = _column_lists(name, frame)
    mine = problems[problems["table"] == name] if len(problems) else problems
    if not len(mine):  # nothing to count (the usual case when scoring a few patients)
        return TableReport(table=name, source=sources[name], rows_in=len(frame), rows_out=rows_out,
                           rows_quarantined=0, unknown_columns=unknown, absent_optional_columns=absent)
    keys = [_reason_key(kind, column) for kind, column in zip(mine["kind"], mine["column"])]
    mine = mine.assign(_key=keys).drop_duplicates(["_key", "position"])
    reasons = {key: int(n) for key, n in mine["_key"].value_counts(sort=False).items()}
    examples = mine.groupby("_key", sort=False).head(max_examples)
    return TableReport(
        table=name,
        source=sources[name],
        rows_in=len(frame),
        rows_out=rows_out,
        rows_quarantined=int(mine["position"].nunique()),
        reasons=reasons,
        examples=tuple(_problem_lines(examples, sources)),
        unknown_columns=unknown,
        absent_optional_columns=absent,
    )


# --- the whole contract ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ValidatedCohort:
    """A cohort that satisfies the data contract.

    Attributes
    ----------
    infusions : pandas.DataFrame
        Typed infusions (declared columns in contract order, then unknown extra columns).
    measurements : pandas.DataFrame
        Normalised measurements (``features.schema.NORMALISED_MEASUREMENT_COLUMNS``, then extras).
    outcomes : pandas.DataFrame or None
        Typed outcomes, or None when none were given (batch scoring).
    report : DataReport
        Rows and patients in / out / quarantined, with reasons.
    quarantined : dict of str to pandas.DataFrame
        The quarantined raw rows of each table with ``row`` (as the user sees it) and
        ``quarantine_reasons``; empty frames in ``fail`` mode.
    """

    infusions: pd.DataFrame
    measurements: pd.DataFrame
    outcomes: pd.DataFrame | None
    report: DataReport
    quarantined: dict[str, pd.DataFrame]


def _without(frame: pd.DataFrame, positions: pd.Series) -> pd.DataFrame:
    """``frame`` without the rows at ``positions`` (no copy when there are none)."""
    if not len(positions):
        return frame
    return frame.drop(index=pd.unique(positions), errors="ignore")


def _row_level(raw: Mapping[str, pd.DataFrame]) -> tuple[dict, dict, list[pd.DataFrame]]:
    """Coercion and schema checks per table: all rows typed, rows without problems, problems."""
    typed_all, good, problems = {}, {}, []
    for name, frame in raw.items():
        typed, coercion = _coerce_table(name, frame)
        typed_all[name] = typed
        candidates = _without(typed, coercion["position"])
        schema = _schema_problems(name, candidates)
        good[name] = _without(candidates, schema["position"])
        problems += [coercion, schema]
    return typed_all, good, problems


def _cross_table_problems(
    typed_all: Mapping[str, pd.DataFrame], good: Mapping[str, pd.DataFrame], normalised: pd.DataFrame
) -> list[pd.DataFrame]:
    ids = {name: frame["patient_id"] for name, frame in typed_all.items()}
    problems = [
        _duplicate_problems("infusions", ids["infusions"]),
        _membership_problems("measurements", ids["measurements"], ids["infusions"], "infusions", "unknown patient"),
    ]
    if "outcomes" in ids:
        problems += [
            _duplicate_problems("outcomes", ids["outcomes"]),
            _membership_problems("outcomes", ids["outcomes"], ids["infusions"], "infusions", "unknown patient"),
            _membership_problems("infusions", ids["infusions"], ids["outcomes"], "outcomes", "no outcome row"),
            _outcome_rule_problems(good["outcomes"]),
            _after_followup_problems(normalised, good["outcomes"]),
        ]
    return problems


def _output_frame(name: str, frame: pd.DataFrame, drop: pd.Series) -> pd.DataFrame:
    declared = [spec.name for spec in COLUMNS_BY_TABLE[name] if spec.name in frame.columns]
    extras = [c for c in frame.columns if c not in declared]
    return _without(frame, drop)[declared + extras].reset_index(drop=True)


_NO_QUARANTINE_TEMPLATES: dict[tuple, pd.DataFrame] = {}
_MAX_NO_QUARANTINE_TEMPLATES = 64


def _no_quarantined_rows(raw: pd.DataFrame) -> pd.DataFrame:
    """The empty quarantine frame of a table (copied from one built once per columns and dtypes).

    Only plain numpy dtypes are cached: pandas' extension dtypes may compare equal while
    differing (unordered categories in another order).
    """
    dtypes = raw.dtypes.tolist()
    if not all(isinstance(dtype, np.dtype) for dtype in dtypes):
        return _empty_quarantine_frame(raw)
    key = (tuple((type(name), name) for name in raw.columns), tuple(dtypes))
    template = _NO_QUARANTINE_TEMPLATES.get(key)
    if template is None:
        template = _empty_quarantine_frame(raw)
        if len(_NO_QUARANTINE_TEMPLATES) < _MAX_NO_QUARANTINE_TEMPLATES:
            _NO_QUARANTINE_TEMPLATES[key] = template
    return template.copy()


def _empty_quarantine_frame(raw: pd.DataFrame) -> pd.DataFrame:
    rows = raw.iloc[:0].copy()
    rows.insert(0, "row", [])
    rows["quarantine_reasons"] = np.array([], dtype=object)
    return rows.reset_index(drop=True)


def _quarantined_rows(name: str, raw: pd.DataFrame, problems: pd.DataFrame, source: str) -> pd.DataFrame:
    mine = problems[problems["table"] == name] if len(problems) else problems
    if not len(mine):  # the usual case: no quarantined row, same empty frame without the group-by
        return _no_quarantined_rows(raw)
    reasons = mine.groupby("position", sort=True)["reason"].agg("; ".join)
    rows = raw.loc[reasons.index].copy()
    rows.insert(0, "row", [display_row(source, p) for p in reasons.index])
    rows["quarantine_reasons"] = reasons.to_numpy()
    return rows.reset_index(drop=True)


def validate_cohort(
    infusions: pd.DataFrame,
    measurements: pd.DataFrame,
    outcomes: pd.DataFrame | None = None,
    *,
    on_error: str = "fail",
    source_names: Mapping[str, str] | None = None,
    max_examples: int = 5,
) -> ValidatedCohort:
    """Validate, type and normalise a cohort against the data contract.

    Parameters
    ----------
    infusions, measurements : pandas.DataFrame
        Raw tables as read from the cohort folder (any dtypes; CSV columns may be text).
    outcomes : pandas.DataFrame, optional
        Raw outcomes; None for batch scoring (outcome-based checks are then skipped).
    on_error : {"fail", "quarantine"}
        Raise :class:`ContractError` on any problem, or drop and report the offending rows.
    source_names : mapping of str to str, optional
        Table name -> file name shown in messages (``"measurements.csv"``); a ``.csv`` name makes
        row numbers CSV line numbers, otherwise they are 0-based positions.
    max_examples : int
        Example lines kept in the report per table and reason.

    Returns
    -------
    ValidatedCohort

    Raises
    ------
    ContractError
        A required column is missing (both modes), or any row problem in ``fail`` mode.
    ValueError
        ``on_error`` is not one of :data:`ON_ERROR_MODES`.
    """
    if on_error not in ON_ERROR_MODES:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR_MODES)}, got {on_error!r}")
    raw = {"infusions": infusions, "measurements": measurements}
    if outcomes is not None:
        raw["outcomes"] = outcomes
    sources = {name: str((source_names or {}).get(name, name)) for name in raw}
    clean = clean_small_cohort(infusions, measurements) if outcomes is None else None
    if clean is not None:  # a few certainly clean patients (scoring): the same result, far faster
        outputs = {"infusions": clean[0], "measurements": clean[1]}
        return _finish(raw, outputs, _concat_problems([]), sources, on_error, max_examples)
    raw = {name: frame.reset_index(drop=True) for name, frame in raw.items()}
    _check_columns(raw, sources)
    typed_all, good, problems = _row_level(raw)
    normalised, lab_problems = _normalise_measurements(good["measurements"])
    problems = _concat_problems(problems + [lab_problems] + _cross_table_problems(typed_all, good, normalised))
    if on_error == "fail" and len(problems):
        raise ContractError(_problem_lines(problems, sources))
    patient_ids = {name: frame["patient_id"] for name, frame in typed_all.items()}
    problems = _concat_problems([problems, _cascade_problems(problems, patient_ids)])
    return _assemble(raw, good, normalised, problems, sources, on_error, max_examples)


def _assemble(
    raw: Mapping[str, pd.DataFrame],
    good: Mapping[str, pd.DataFrame],
    normalised: pd.DataFrame,
    problems: pd.DataFrame,
    sources: Mapping[str, str],
    on_error: str,
    max_examples: int,
) -> ValidatedCohort:
    """Drop quarantined rows, check the normalised table, and build the report."""
    drop = {name: problems.loc[problems["table"] == name, "position"] for name in raw}
    outputs = {name: _output_frame(name, good[name], drop[name]) for name in raw if name != "measurements"}
    measurements = _without(normalised, drop["measurements"]).reset_index(drop=True)
    if not _certainly_valid("normalised_measurements", measurements):  # an internal guarantee
        NORMALISED_MEASUREMENTS_SCHEMA.validate(measurements, inplace=True)
    outputs["measurements"] = measurements
    return _finish(raw, outputs, problems, sources, on_error, max_examples)


def _finish(
    raw: Mapping[str, pd.DataFrame],
    outputs: Mapping[str, pd.DataFrame],
    problems: pd.DataFrame,
    sources: Mapping[str, str],
    on_error: str,
    max_examples: int,
) -> ValidatedCohort:
    """The report and the quarantined rows of the output tables, as a :class:`ValidatedCohort`."""
    tables = {
        name: _table_report(name, raw[name], len(outputs[name]), problems, sources, max_examples) for name in raw
    }
    patients_in = raw["infusions"]["patient_id"].dropna().astype(str).unique()
    kept = set(outputs["infusions"]["patient_id"])
    report = DataReport(
        on_error=on_error,
        tables=tables,
        patients_in=len(patients_in),
        patients_out=len(kept),
        quarantined_patients=tuple(sorted(set(patients_in) - kept)),
        notes=tuple(_outcome_notes(outputs.get("outcomes"))),
    )
    quarantined = {name: _quarantined_rows(name, raw[name], problems, sources[name]) for name in raw}
    return ValidatedCohort(outputs["infusions"], outputs["measurements"], outputs.get("outcomes"), report, quarantined)
