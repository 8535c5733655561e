"""The data contract: validate and normalise a cohort (infusions, measurements, outcomes).

One core, :func:`check_tables`, works on column arrays (one array of cells per declared column) and
returns typed columns, the normalised measurements and every problem, without a per-row Python
loop (numpy over whole columns; lab text through the vectorised parser of ``features.labtext``).
:func:`validate_cohort` (cohort folders, training, batch scoring) and the served model
(``models.serving``, whose request parser emits columns) both go through it. It runs, in order:

1. **Columns** (per table): every required column present, no column name twice, no column of
   dates or booleans where numbers or text go (a Parquet ``bool`` ``age_years``), else
   :class:`ContractError` in both modes (a table like that cannot be read row by row). Unknown
   extra columns are kept and listed in the report; absent optional columns are listed too. An
   extra infusions column named as the as-of day column (batch scoring, ``as_of_day_column``) is
   checked and typed like a declared one (``features.schema.AS_OF_DAY``).
2. **Types** (per cell): text, float, nullable integer and boolean coercion; a cell that does not
   coerce (a word for a number, ``true`` for a number, a list for a value) is a row problem
   ("wrong type").
3. **Schema** (per cell): allowed values, ranges and missingness from ``features.schema``
   (every number has a finite, plausible range there).
4. **Lab values** (measurements): parsing and unit normalisation by ``features.labtext``.
5. **Cross-row and cross-table rules** (see :data:`OUTCOME_RULES`, duplicate patients, unknown
   patients, measurements after the last follow-up, duplicate measurements: an exact copy of a
   measurement (same patient, day, specimen, assay, unit and result) is collapsed into one and
   counted; the same patient, day, specimen, assay and unit with another result is a row problem
   on every copy).

``on_error="fail"`` raises one :class:`ContractError` listing the problems as
``file, row N, column C: reason``. ``on_error="quarantine"`` drops the offending rows and records
each of them in the :class:`DataReport`. A problem in a patient's ``infusions`` or ``outcomes`` row
quarantines the whole patient (their rows in every table, reason "patient quarantined"), because
the patient's baseline or outcome can no longer be trusted and tables must stay consistent; a
problem in a single measurement row drops that row only.

Each problem has a ``reason`` (with the offending value, for files and reports) and a ``detail``
(the same without the value, for answers that must not echo patient values).

The pandera schemas of ``features.schema`` declare the same rules; they are the test oracle of
this module, not run here.

Row numbers: for a source file ending in ``.csv`` the row number is the file's line number
(the header is line 1, so the first data row is row 2); for Parquet files and in-memory frames it
is the 0-based row position.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Group
from rich.table import Table
from rich.text import Text

from features.coercion import column_type_problem, typed_column, typed_columns
from features.labtext import lab_results
from features.schema import AS_OF_DAY, ASSAYS, CANONICAL_UNITS, COLUMNS_BY_TABLE, REMISSION_RESPONSES, SPECIMENS

__all__ = [
    "ON_ERROR_MODES",
    "PATIENT_QUARANTINED",
    "MAX_ERROR_LINES",
    "OUTCOME_RULES",
    "ContractError",
    "CheckedTables",
    "check_tables",
    "frame_columns",
    "TableReport",
    "DataReport",
    "ValidatedCohort",
    "display_row",
    "validate_cohort",
]

ON_ERROR_MODES = ("fail", "quarantine")
PATIENT_QUARANTINED = "patient quarantined"
MAX_ERROR_LINES = 200
_PROBLEM_COLUMNS = ["table", "position", "column", "kind", "reason", "detail", "patient_id", "cascade"]
_UNREADABLE = "cohort cannot be read under the data contract"


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
    rows: np.ndarray,
    column: str | None,
    kind: str,
    reasons: Any,
    patient_ids: Any,
    detail: Any = None,
    cascade: bool = False,
) -> pd.DataFrame | None:
    """A frame of problems (one per row position in ``rows``); None when there are none.

    ``reasons`` (with the offending values) and ``detail`` (without them; default: the kind) are
    one text for all rows or one text per row.
    """
    if not len(rows):
        return None
    return pd.DataFrame(
        {
            "table": table,
            "position": np.asarray(rows, dtype=np.int64),
            "column": column,
            "kind": kind,
            "reason": reasons if isinstance(reasons, str) else np.asarray(reasons, dtype=object),
            "detail": (kind if detail is None else detail) if detail is None or isinstance(detail, str)
            else np.asarray(detail, dtype=object),
            "patient_id": np.asarray(patient_ids, dtype=object),
            "cascade": cascade,
        },
        columns=_PROBLEM_COLUMNS,
    )


_NO_PROBLEMS = pd.DataFrame({name: pd.Series(dtype=object) for name in _PROBLEM_COLUMNS})


def _concat_problems(frames: list[pd.DataFrame | None]) -> pd.DataFrame:
    present = [frame for frame in frames if frame is not None and len(frame)]
    if not present:
        return _NO_PROBLEMS.copy()  # building an empty frame costs more than copying one
    return present[0] if len(present) == 1 else pd.concat(present, ignore_index=True)


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
def _duplicate_column_names(frame: pd.DataFrame, source: str) -> list[str]:
    """A column name given twice: a frame that cannot be read column by column."""
    return [f"{source}, column {column}: appears {count} times (each column name must be unique)"
            for column, count in pd.Series(frame.columns).value_counts(sort=False).items() if count > 1]


def _column_problems(tables: Mapping[str, Mapping[str, Any]], sources: Mapping[str, str]) -> list[str]:
    """Missing required columns, and columns whose type cannot hold their declared kind."""
    lines = []
    for name, columns in tables.items():
        for spec in COLUMNS_BY_TABLE[name]:
            if spec.name not in columns:
                if spec.required:
                    lines.append(f"{sources[name]}, column {spec.name}: required column is missing")
                continue
            problem = column_type_problem(spec, getattr(columns[spec.name], "dtype", None))
            if problem is not None:
                lines.append(f"{sources[name]}, column {spec.name}: {problem}")
    return lines


def _column_lists(name: str, frame: pd.DataFrame) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Unknown extra columns and absent optional columns of a table."""
    declared = [spec.name for spec in COLUMNS_BY_TABLE[name]]
    unknown = tuple(str(c) for c in frame.columns if c not in declared)
    absent = tuple(spec.name for spec in COLUMNS_BY_TABLE[name] if not spec.required and spec.name not in frame)
    return unknown, absent


def frame_columns(name: str, frame: pd.DataFrame) -> dict[str, Any]:
    """The declared columns of a raw frame as arrays (what :func:`check_tables` takes).

    Parameters
    ----------
    name : str
        Table name (``infusions``, ``measurements``, ``outcomes``).
    frame : pandas.DataFrame
        The raw table (unique column names).

    Returns
    -------
    dict of str to array
        Declared column present in ``frame`` -> its cells (a numpy or pandas array).
    """
    return {spec.name: frame[spec.name].array for spec in COLUMNS_BY_TABLE[name] if spec.name in frame.columns}


# --- steps 2 to 5 over column arrays: the core ------------------------------------------------------------
_SPECIMEN_TYPE = pd.CategoricalDtype(list(SPECIMENS))
_ASSAY_TYPE = pd.CategoricalDtype(list(ASSAYS))


@dataclass(frozen=True)
class CheckedTables:
    """What :func:`check_tables` found: typed columns, normalised measurements, problems.

    Attributes
    ----------
    typed : dict of str to dict of str to array
        Per table, the typed declared columns of every row (see :attr:`TypedColumn.values`).
    normalised : dict of str to array
        The normalised measurement columns (``NORMALISED_MEASUREMENT_COLUMNS`` but ``patient_id`` and
        ``day``, which are in ``typed``) of every row; rows with a problem hold NaN / None.
    problems : pandas.DataFrame
        One line per problem: ``table``, ``position`` (0-based row), ``column``, ``kind``,
        ``reason`` (names the value), ``detail`` (does not), ``patient_id``, ``cascade``.
    collapsed : numpy.ndarray of bool
        Measurement rows that repeat an earlier row exactly (same patient, day, specimen, assay,
        unit and result); they carry no problem and are left out of the output.
    """

    typed: dict[str, dict[str, Any]]
    normalised: dict[str, np.ndarray]
    problems: pd.DataFrame
    collapsed: np.ndarray

    def typed_frame(self, table: str, keep: np.ndarray) -> pd.DataFrame:
        """The typed declared columns of the kept rows (``keep``: boolean mask), in contract order."""
        columns = self.typed[table]
        return pd.DataFrame({name: values[keep] for name, values in columns.items()},
                            index=pd.RangeIndex(int(keep.sum())))

    def measurements_frame(self, keep: np.ndarray) -> pd.DataFrame:
        """The normalised measurements of the kept rows (``NORMALISED_MEASUREMENT_COLUMNS``)."""
        typed = self.typed["measurements"]
        normalised = self.normalised
        return pd.DataFrame(
            {
                "patient_id": typed["patient_id"][keep],
                "day": typed["day"][keep],
                "specimen": pd.Categorical.from_codes(normalised["specimen"][keep], dtype=_SPECIMEN_TYPE),
                "assay": pd.Categorical.from_codes(normalised["assay"][keep], dtype=_ASSAY_TYPE),
                **{name: normalised[name][keep] for name in ("value", "censored", "detection_limit", "unit",
                                                             "detected_below_loq")},
            },
            index=pd.RangeIndex(int(keep.sum())),
        )


def check_tables(tables: Mapping[str, Mapping[str, Any]], n_rows: Mapping[str, int],
                 sources: Mapping[str, str] | None = None) -> CheckedTables:
    """Check raw tables given as column arrays against the data contract (steps 1 to 5).

    Parameters
    ----------
    tables : mapping of str to mapping of str to array
        ``infusions``, ``measurements`` and optionally ``outcomes``: declared column -> cells
        (numpy or pandas arrays of one length; any cell types). Unknown columns are not given.
    n_rows : mapping of str to int
        Rows of each table.
    sources : mapping of str to str, optional
        Table -> name shown in messages (file name; default the table name).

    Returns
    -------
    CheckedTables

    Raises
    ------
    ContractError
        A required column is missing, or a column cannot hold its kind (dates, booleans for numbers).
    """
    sources = {name: str((sources or {}).get(name, name)) for name in tables}
    lines = _column_problems(tables, sources)
    if lines:
        raise ContractError(lines, header=_UNREADABLE)
    problems = _Problems(n_rows)
    typed, declaration = {}, []
    for name, columns in tables.items():  # every "wrong type" first, then the declarations' checks
        typed[name], coercion, checks = _typed_table(name, columns, n_rows[name])
        problems.add(coercion)
        declaration += checks
    problems.add(declaration)
    normalised, lab = _normalise_measurements(typed["measurements"], problems.good("measurements"))
    problems.add(lab)
    patients = _PatientCodes.of(typed)
    problems.add(_cross_table_problems(typed, patients, problems.good("measurements"),
                                       problems.good("outcomes") if "outcomes" in typed else None))
    collapsed, conflicts = _duplicate_measurements(typed["measurements"], normalised, patients,
                                                   problems.good("measurements"), sources["measurements"])
    problems.add([conflicts])
    return CheckedTables(typed=typed, normalised=normalised, problems=_concat_problems(problems.frames),
                         collapsed=collapsed)


class _Problems:
    """The problem frames found so far, and the rows of each table they concern."""

    def __init__(self, n_rows: Mapping[str, int]):
        self.frames: list[pd.DataFrame | None] = []
        self._bad = {name: np.zeros(n, dtype=bool) for name, n in n_rows.items()}

    def add(self, frames: list[pd.DataFrame | None]) -> None:
        for frame in frames:
            if frame is not None and len(frame):
                self.frames.append(frame)
                for table, positions in frame.groupby("table", sort=False)["position"]:
                    self._bad[table][positions.to_numpy(dtype=np.int64)] = True

    def good(self, table: str) -> np.ndarray:
        """Rows of ``table`` without a problem so far."""
        return ~self._bad[table]


def _typed_table(name: str, columns: Mapping[str, Any], n_rows: int) -> tuple[dict[str, Any], list, list]:
    """Typed columns of a table (contract order), its coercion problems and its declaration problems."""
    typed: dict[str, Any] = {}
    coercion: list[pd.DataFrame | None] = []
    declaration: list[pd.DataFrame | None] = []
    checked = typed_columns(COLUMNS_BY_TABLE[name], columns, n_rows)
    ids = checked["patient_id"].values
    for column, result in checked.items():
        typed[column] = result.values
        for problem in result.problems:
            target = coercion if problem.kind == "wrong type" else declaration
            target.append(_problems(name, problem.rows, column, problem.kind, problem.reasons, ids[problem.rows],
                                    problem.detail))
    return typed, coercion, declaration


def _category_codes(values: np.ndarray, categories: tuple[str, ...]) -> np.ndarray:
    codes = np.full(len(values), -1, dtype=np.int8)
    for code, category in enumerate(categories):  # the few categories, each a vectorised comparison
        codes[values == category] = code
    return codes


def _normalise_measurements(typed: Mapping[str, Any], good: np.ndarray) -> tuple[dict[str, np.ndarray], list]:
    """Lab values of the rows without a problem so far: normalised columns of every row, lab problems."""
    n_rows = len(good)
    rows = np.flatnonzero(good)
    limits = typed.get("detection_limit")
    results = lab_results(typed["value"][rows], typed["unit"][rows], typed["assay"][rows],
                          None if limits is None else limits[rows])
    normalised = {
        "specimen": _category_codes(typed["specimen"], SPECIMENS),
        "assay": _category_codes(typed["assay"], ASSAYS),
        "value": np.full(n_rows, np.nan), "censored": np.zeros(n_rows, dtype=bool),
        "detection_limit": np.full(n_rows, np.nan), "unit": np.full(n_rows, None, dtype=object),
        "detected_below_loq": np.zeros(n_rows, dtype=bool),
    }
    for name in ("value", "censored", "detection_limit", "unit", "detected_below_loq"):
        normalised[name][rows] = getattr(results, name)
    problems = []
    if results.bad.any():
        ids = typed["patient_id"]
        bad = np.flatnonzero(results.bad)
        keys = pd.MultiIndex.from_arrays([results.error_column[bad], results.error_kind[bad]])
        for (column, kind), members in pd.Series(bad).groupby(keys, sort=False):
            at = members.to_numpy()
            problems.append(_problems("measurements", rows[at], column, kind, results.error_reason[at],
                                      ids[rows[at]], results.error_detail[at]))
    return normalised, problems


@dataclass(frozen=True)
class _PatientCodes:
    """Patient ids of every table as codes of one factorisation (-1: missing id)."""

    codes: dict[str, np.ndarray]
    n_patients: int

    @classmethod
    def of(cls, typed: Mapping[str, Mapping[str, Any]]) -> _PatientCodes:
        names = list(typed)
        ids = [np.asarray(typed[name]["patient_id"], dtype=object) for name in names]
        codes, uniques = pd.factorize(np.concatenate(ids)) if sum(map(len, ids)) else (np.array([], int), [])
        bounds = np.cumsum([0] + [len(part) for part in ids])
        return cls({name: codes[bounds[i]:bounds[i + 1]] for i, name in enumerate(names)}, len(uniques))

    def present_in(self, table: str) -> np.ndarray:
        """Per code (and a last entry for -1, False): whether the patient has a row in ``table``."""
        present = np.zeros(self.n_patients + 1, dtype=bool)
        codes = self.codes[table]
        present[codes[codes >= 0]] = True
        return present

    def counts(self, table: str) -> np.ndarray:
        codes = self.codes[table]
        return np.append(np.bincount(codes[codes >= 0], minlength=self.n_patients), 0)


def _cross_table_problems(typed: Mapping[str, Mapping[str, Any]], patients: _PatientCodes, good_measurements: np.ndarray,
                          good_outcomes: np.ndarray | None) -> list:
    """Duplicate and unknown patients; with outcomes, the outcome rules (rows without a problem so far)
    and measurements after the last follow-up (both tables' rows without a problem so far)."""
    ids = {name: columns["patient_id"] for name, columns in typed.items()}
    problems = [
        _duplicate_problems("infusions", ids["infusions"], patients),
        _membership_problems("measurements", ids["measurements"], patients, "infusions", "unknown patient"),
    ]
    if good_outcomes is not None:
        outcomes = pd.DataFrame(typed["outcomes"])
        problems += [
            _duplicate_problems("outcomes", ids["outcomes"], patients),
            _membership_problems("outcomes", ids["outcomes"], patients, "infusions", "unknown patient"),
            _membership_problems("infusions", ids["infusions"], patients, "outcomes", "no outcome row"),
            _outcome_rule_problems(outcomes[good_outcomes]),
            _after_followup_problems(typed["measurements"], good_measurements, patients, outcomes, good_outcomes),
        ]
    return problems


def _duplicate_problems(name: str, ids: np.ndarray, patients: _PatientCodes) -> pd.DataFrame | None:
    codes = patients.codes[name]
    counts = patients.counts(name)[codes]
    rows = np.flatnonzero((codes >= 0) & (counts > 1))
    reasons = [f"patient_id {pid!r} appears {int(n)} times" for pid, n in zip(ids[rows], counts[rows])]
    return _problems(name, rows, "patient_id", "duplicate patient_id", reasons, ids[rows],
                     f"duplicate patient_id (appears more than once in {name})")


def _membership_problems(name: str, ids: np.ndarray, patients: _PatientCodes, other: str,
                         kind: str) -> pd.DataFrame | None:
    """Rows whose patient_id is not among the ids of table ``other``."""
    codes = patients.codes[name]
    rows = np.flatnonzero((codes >= 0) & ~patients.present_in(other)[codes])
    reasons = [f"patient_id {pid!r} has no row in {other}" for pid in ids[rows]]
    return _problems(name, rows, "patient_id", kind, reasons, ids[rows], f"patient_id has no row in {other}")


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
        frames.append(_problems("outcomes", bad.index.to_numpy(), column, kind, reasons, bad["patient_id"]))
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


def _after_followup_problems(measurements: Mapping[str, Any], good_measurements: np.ndarray,
                             patients: _PatientCodes, outcomes: pd.DataFrame,
                             good_outcomes: np.ndarray) -> pd.DataFrame | None:
    """Measurements dated after their patient's last follow-up (first outcomes row of the patient)."""
    codes = patients.codes["outcomes"]
    rows = np.flatnonzero(good_outcomes & (codes >= 0))
    known, first = np.unique(codes[rows], return_index=True)
    last_day = np.full(patients.n_patients + 1, np.nan)
    last_day[known] = outcomes["last_followup_day"].to_numpy(dtype=float)[rows[first]]
    day, ids = measurements["day"], measurements["patient_id"]
    last = last_day[patients.codes["measurements"]]
    with np.errstate(invalid="ignore"):
        late = np.flatnonzero(good_measurements & (day > last))
    reasons = [f"day {_fmt_day(day[i])} is after last_followup_day {_fmt_day(last[i])} of patient {ids[i]!r}"
               for i in late]
    return _problems("measurements", late, "day", "measurement after last follow-up", reasons, ids[late],
                     "measurement after the patient's last follow-up")


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise equality where NaN equals NaN."""
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _duplicate_measurements(measurements: Mapping[str, Any], normalised: Mapping[str, np.ndarray],
                            patients: _PatientCodes, good: np.ndarray,
                            source: str) -> tuple[np.ndarray, pd.DataFrame | None]:
    """Exact copies among the rows without a problem (collapsed: every copy after the first) and
    conflicting copies (same patient, day, specimen, assay and unit, another result: each a problem).

    Rows are sorted by (patient, day, specimen/assay/unit, position); neighbours with the same key
    form a group; a group whose results are not all equal conflicts.
    """
    collapsed = np.zeros(len(good), dtype=bool)
    rows = np.flatnonzero(good)
    if len(rows) < 2:
        return collapsed, None
    unit = _category_codes(normalised["unit"][rows], CANONICAL_UNITS).astype(np.int64)
    kind = (normalised["specimen"][rows].astype(np.int64) * len(ASSAYS) + normalised["assay"][rows]) \
        * (len(CANONICAL_UNITS) + 1) + unit
    patient, day = patients.codes["measurements"][rows], measurements["day"][rows]
    order = np.lexsort((rows, kind, day, patient))
    patient, day, kind = patient[order], day[order], kind[order]
    same_key = (patient[1:] == patient[:-1]) & (day[1:] == day[:-1]) & (kind[1:] == kind[:-1])
    if not same_key.any():  # the usual case
        return collapsed, None
    result = [normalised[name][rows][order] for name in ("value", "censored", "detection_limit", "detected_below_loq")]
    same_result = (_same(result[0][1:], result[0][:-1]) & (result[1][1:] == result[1][:-1])
                   & _same(result[2][1:], result[2][:-1]) & (result[3][1:] == result[3][:-1]))
    group = np.concatenate([[0], np.cumsum(~same_key)])
    conflicting_group = np.zeros(group[-1] + 1, dtype=bool)
    conflicting_group[group[1:][same_key & ~same_result]] = True
    sorted_rows = rows[order]
    collapsed[sorted_rows[np.concatenate([[False], same_key]) & ~conflicting_group[group]]] = True
    conflicting = conflicting_group[group]
    return collapsed, _conflict_problems(measurements["patient_id"], sorted_rows[conflicting],
                                         group[conflicting], source)


def _conflict_problems(ids: np.ndarray, rows: np.ndarray, groups: np.ndarray, source: str) -> pd.DataFrame | None:
    members: dict[int, list[int]] = {}
    for row, group in zip(rows.tolist(), groups.tolist()):
        members.setdefault(group, []).append(row)
    reasons = [
        "conflicts with row(s) "
        + ", ".join(str(display_row(source, other)) for other in members[group] if other != row)
        + " (same patient, day, specimen, assay and unit; another result)"
        for row, group in zip(rows.tolist(), groups.tolist())
    ]
    return _problems("measurements", rows, "value", "conflicting duplicate", reasons, ids[rows],
                     "another measurement of the same day, specimen, assay and unit has another result")


def _cascade_problems(problems: pd.DataFrame, ids: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Quarantine every row of a patient whose infusions or outcomes row has a problem."""
    if not len(problems):
        return _concat_problems([])
    own = problems[problems["table"].isin(["infusions", "outcomes"]) & problems["patient_id"].notna()]
    first = own.drop_duplicates("patient_id").set_index("patient_id")
    causes = (first["table"] + ": " + first["kind"]).to_dict()
    known = set(pd.Series(ids["infusions"]).dropna())
    causes = {pid: cause for pid, cause in causes.items() if pid in known}
    frames = []
    for table, table_ids in ids.items():
        flagged = problems.loc[problems["table"] == table, "position"].to_numpy(dtype=np.int64)
        hit = pd.Series(table_ids).isin(causes.keys()).to_numpy()
        hit[flagged] = False
        rows = np.flatnonzero(hit)
        reasons = [f"patient {pid!r} quarantined ({causes[pid]})" for pid in table_ids[rows]]
        frames.append(_problems(table, rows, "patient_id", PATIENT_QUARANTINED, reasons, table_ids[rows],
                                cascade=True))
    return _concat_problems(frames)


# --- report ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableReport:
    """Rows in, out, quarantined and collapsed for one table, with reasons, examples and column notes.

    ``reasons`` maps ``"kind: column"`` to the number of rows with that problem (a row with two
    problems counts under both, so the counts may sum to more than ``rows_quarantined``).
    ``rows_collapsed`` counts exact duplicate rows merged into their first copy (measurements).
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
    rows_collapsed: int = 0

    def __post_init__(self) -> None:
        if self.rows_in != self.rows_out + self.rows_quarantined + self.rows_collapsed:  # nothing lost silently
            raise RuntimeError(
                f"{self.table}: rows in ({self.rows_in}) != rows out ({self.rows_out}) "
                f"+ quarantined ({self.rows_quarantined}) + collapsed ({self.rows_collapsed})"
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
                    "rows_collapsed": int(t.rows_collapsed),
                    "reasons": {k: int(v) for k, v in t.reasons.items()},
                    "examples": list(t.examples),
                    "unknown_columns": list(t.unknown_columns),
                    "absent_optional_columns": list(t.absent_optional_columns),
                }
                for name, t in self.tables.items()
            },
        }

    def render(self) -> Group:
        """The report for the terminal (every cell plain text: file and column names are never markup).

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
            cells = (t.table, t.source, str(t.rows_in), str(t.rows_out), str(t.rows_quarantined),
                     ", ".join(t.unknown_columns) or "-")
            summary.add_row(*(Text(cell) for cell in cells))
        parts: list[Any] = [summary, Text(f"patients: {self.patients_in} in, {self.patients_out} out, "
                                          f"{self.patients_in - self.patients_out} quarantined")]
        reasons = Table(title="Quarantine reasons")
        for header in ("table", "reason", "rows"):
            reasons.add_column(header, justify="right" if header == "rows" else "left")
        for t in self.tables.values():
            for reason, count in t.reasons.items():
                reasons.add_row(Text(t.table), Text(reason), Text(str(count)))
        if reasons.row_count:
            parts += [reasons, Text("Examples:")]
            parts += [Text(f"  {line}") for t in self.tables.values() for line in t.examples]
        parts += [Text(f"note: {note}") for note in self.notes]
        return Group(*parts)


def _reason_key(kind: str, column: Any) -> str:
    return kind if column is None or pd.isna(column) else f"{kind}: {column}"


def _table_report(
    name: str, frame: pd.DataFrame, rows_out: int, rows_collapsed: int, problems: pd.DataFrame,
    sources: Mapping[str, str], max_examples: int,
) -> TableReport:
    unknown, absent = _column_lists(name, frame)
    mine = problems[problems["table"] == name] if len(problems) else problems
    if not len(mine):  # nothing to count
        return TableReport(table=name, source=sources[name], rows_in=len(frame), rows_out=rows_out,
                           rows_quarantined=0, unknown_columns=unknown, absent_optional_columns=absent,
                           rows_collapsed=rows_collapsed)
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
        rows_collapsed=rows_collapsed,
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
        Normalised measurements (``features.schema.NORMALISED_MEASUREMENT_COLUMNS``, then extras),
        exact duplicates collapsed into their first copy.
    outcomes : pandas.DataFrame or None
        Typed outcomes, or None when none were given (batch scoring).
    report : DataReport
        Rows and patients in / out / quarantined / collapsed, with reasons.
    quarantined : dict of str to pandas.DataFrame
        The quarantined raw rows of each table with ``row`` (as the user sees it) and
        ``quarantine_reasons``; empty frames in ``fail`` mode.
    """

    infusions: pd.DataFrame
    measurements: pd.DataFrame
    outcomes: pd.DataFrame | None
    report: DataReport
    quarantined: dict[str, pd.DataFrame]


def _quarantined_rows(name: str, raw: pd.DataFrame, problems: pd.DataFrame, source: str) -> pd.DataFrame:
    mine = problems[problems["table"] == name] if len(problems) else problems
    if not len(mine):
        rows = raw.iloc[:0].copy()
        rows.insert(0, "row", np.array([], dtype=np.int64))
        rows["quarantine_reasons"] = np.array([], dtype=object)
        return rows.reset_index(drop=True)
    reasons = mine.groupby("position", sort=True)["reason"].agg("; ".join)
    rows = raw.iloc[reasons.index.to_numpy(dtype=np.int64)].copy()
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
    as_of_day_column: str | None = None,
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
    as_of_day_column : str, optional
        An extra column of ``infusions`` holding each patient's as-of day (batch scoring). It is
        required, checked like the declared columns against ``features.schema.AS_OF_DAY`` (a
        number of days in [0, 7300], not missing; a bad value is a row problem of the patient),
        and typed (float) in the output. It may not be a declared column.

    Returns
    -------
    ValidatedCohort

    Raises
    ------
    ContractError
        A column problem (both modes: a required column missing, a column name twice, a column of
        dates or booleans where they do not belong, an ``as_of_day_column`` that is absent or
        declared), or any row problem in ``fail`` mode.
    ValueError
        ``on_error`` is not one of :data:`ON_ERROR_MODES`.
    """
    if on_error not in ON_ERROR_MODES:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR_MODES)}, got {on_error!r}")
    raw = {"infusions": infusions, "measurements": measurements}
    if outcomes is not None:
        raw["outcomes"] = outcomes
    sources = {name: str((source_names or {}).get(name, name)) for name in raw}
    lines = [line for name, frame in raw.items() for line in _duplicate_column_names(frame, sources[name])]
    if lines:
        raise ContractError(lines, header=_UNREADABLE)
    if as_of_day_column is not None:
        _check_as_of_day_column(infusions, as_of_day_column, sources["infusions"])
    checked = check_tables({name: frame_columns(name, frame) for name, frame in raw.items()},
                           {name: len(frame) for name, frame in raw.items()}, sources)
    problems, typed_extras = checked.problems, {}
    if as_of_day_column is not None:
        typed_extras[as_of_day_column], as_of_problems = _as_of_days(infusions, as_of_day_column,
                                                                     checked.typed["infusions"]["patient_id"])
        problems = _concat_problems([problems, *as_of_problems])
    if on_error == "fail" and len(problems):
        raise ContractError(_problem_lines(problems, sources))
    ids = {name: columns["patient_id"] for name, columns in checked.typed.items()}
    problems = _concat_problems([problems, _cascade_problems(problems, ids)])
    return _assemble(raw, checked, problems, sources, on_error, max_examples, typed_extras)


def _check_as_of_day_column(infusions: pd.DataFrame, column: str, source: str) -> None:
    """The as-of day column is an extra column present in the infusions table."""
    if column in {spec.name for spec in COLUMNS_BY_TABLE["infusions"]}:
        raise ContractError([f"{source}, column {column}: is a declared column of infusions; the as-of day must be "
                             "a column of its own"], header=_UNREADABLE)
    if column not in infusions.columns:
        raise ContractError([f"{source}, column {column}: as-of day column is missing"], header=_UNREADABLE)


def _as_of_days(infusions: pd.DataFrame, column: str, ids: np.ndarray) -> tuple[np.ndarray, list]:
    """Typed as-of days of the infusions column (``features.schema.AS_OF_DAY``) and their row problems."""
    spec = dataclasses.replace(AS_OF_DAY, name=column)
    typed = typed_column(spec, infusions[column].array)
    problems = [_problems("infusions", problem.rows, column, problem.kind,
                          [f"as-of day: {reason}" for reason in problem.reasons], ids[problem.rows],
                          problem.detail) for problem in typed.problems]
    return np.asarray(typed.values, dtype=float), problems


def _assemble(raw: Mapping[str, pd.DataFrame], checked: CheckedTables, problems: pd.DataFrame,
              sources: Mapping[str, str], on_error: str, max_examples: int,
              typed_extras: Mapping[str, np.ndarray]) -> ValidatedCohort:
    """Output tables without the quarantined and collapsed rows, the report and the quarantined rows.

    ``typed_extras``: extra infusions columns checked and typed by the caller (the as-of day column).
    """
    quarantined = {name: np.zeros(len(frame), dtype=bool) for name, frame in raw.items()}
    for name, positions in problems.groupby("table")["position"] if len(problems) else ():
        quarantined[name][positions.to_numpy(dtype=np.int64)] = True
    collapsed = checked.collapsed & ~quarantined["measurements"]
    outputs = {}
    for name, frame in raw.items():
        keep = ~quarantined[name] & (~collapsed if name == "measurements" else True)
        table = checked.measurements_frame(keep) if name == "measurements" else checked.typed_frame(name, keep)
        extras = [column for column in frame.columns if column not in {spec.name for spec in COLUMNS_BY_TABLE[name]}]
        for column in extras:  # unknown columns are kept as given, after the declared ones
            cells = typed_extras[column] if name == "infusions" and column in typed_extras else frame[column].to_numpy()
            table[column] = cells[keep]
        outputs[name] = table
    tables = {name: _table_report(name, raw[name], len(outputs[name]), int(collapsed.sum()) if name == "measurements"
                                  else 0, problems, sources, max_examples) for name in raw}
    patients_in = pd.Series(checked.typed["infusions"]["patient_id"]).dropna().unique()
    kept = set(outputs["infusions"]["patient_id"])
    notes = _outcome_notes(outputs.get("outcomes"))
    notes += [f"infusions: column {column} read as each patient's as-of day" for column in typed_extras]
    if collapsed.any():
        notes.append(f"measurements: {int(collapsed.sum())} exact duplicate row(s) collapsed into their first copy "
                     "(same patient, day, specimen, assay, unit and result)")
    report = DataReport(
        on_error=on_error, tables=tables, patients_in=len(patients_in), patients_out=len(kept),
        quarantined_patients=tuple(sorted(set(patients_in) - kept)), notes=tuple(notes),
    )
    rows = {name: _quarantined_rows(name, frame, problems, sources[name]) for name, frame in raw.items()}
    return ValidatedCohort(outputs["infusions"], outputs["measurements"], outputs.get("outcomes"), report, rows)
