"""Schemas of the car-relapse data contract (pandera, pandas backend) and its category constants.

Every column of the three input tables (``infusions``, ``measurements``, ``outcomes``) and of the
normalised measurement table is declared exactly once here, as a :class:`ColumnSpec`. The pandera
schemas, the required / optional column lists and the column tables of ``docs/data_contract.md``
are all derived from these declarations, so code and documentation cannot drift apart.

Raw tables are validated *after* type coercion (see ``features.contract``): the schemas check
dtypes, allowed values, ranges and missingness; unknown extra columns are allowed (``strict=False``)
so that they can be kept and reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa

__all__ = [
    "SEXES",
    "BLINATUMOMAB_STATUSES",
    "CNS_STATUSES",
    "COSTIMS",
    "SPECIMENS",
    "MRD_ASSAYS",
    "ANTIGEN_ASSAYS",
    "ASSAYS",
    "RAW_UNITS",
    "CANONICAL_UNITS",
    "UNIT_CONVERSIONS",
    "PERCENT_UNIT_BY_ASSAY",
    "DEFAULT_DETECTION_LIMIT_BY_ASSAY",
    "MAX_VALUE_BY_CANONICAL_UNIT",
    "RESPONSES",
    "REMISSION_RESPONSES",
    "EVENTS",
    "PHENOTYPES",
    "SITES_OF_RELAPSE",
    "TABLES",
    "BOOL_WORDS",
    "MAX_DAY",
    "ColumnSpec",
    "INFUSION_COLUMNS",
    "MEASUREMENT_COLUMNS",
    "OUTCOME_COLUMNS",
    "NORMALISED_MEASUREMENT_COLUMNS",
    "COLUMNS_BY_TABLE",
    "required_columns",
    "optional_columns",
    "build_schema",
    "INFUSIONS_SCHEMA",
    "MEASUREMENTS_SCHEMA",
    "OUTCOMES_SCHEMA",
    "NORMALISED_MEASUREMENTS_SCHEMA",
    "SCHEMA_BY_TABLE",
    "AS_OF_DAY",
    "columns_markdown",
    "units_markdown",
]

# --- categories -------------------------------------------------------------------------------
SEXES = ("F", "M")
BLINATUMOMAB_STATUSES = ("naive", "responder", "nonresponder")
CNS_STATUSES = ("CNS1", "CNS2", "CNS3")
COSTIMS = ("4-1BB", "CD28")

SPECIMENS = ("BM", "PB", "CSF")
MRD_ASSAYS = ("flow_mrd", "ngs_mrd", "pcr_mrd")
ANTIGEN_ASSAYS = ("cd19_pct_blasts", "cd22_pct_blasts")
ASSAYS = MRD_ASSAYS + ("b_cell_count",) + ANTIGEN_ASSAYS + ("car_copies",)

RAW_UNITS = ("fraction", "percent", "cells/uL", "pct_lymphocytes", "pct_blasts", "copies/ug")
CANONICAL_UNITS = ("fraction", "cells/uL", "pct_lymphocytes", "pct_blasts", "copies/ug")

# assay -> {raw unit: (canonical unit, factor raw -> canonical)}; a unit not listed for an assay
# is an error for that row.
_MRD_UNITS = {"fraction": ("fraction", 1.0), "percent": ("fraction", 0.01)}
UNIT_CONVERSIONS: dict[str, dict[str, tuple[str, float]]] = {
    **{assay: _MRD_UNITS for assay in MRD_ASSAYS},
    "b_cell_count": {"cells/uL": ("cells/uL", 1.0), "pct_lymphocytes": ("pct_lymphocytes", 1.0)},
    **{assay: {"pct_blasts": ("pct_blasts", 1.0)} for assay in ANTIGEN_ASSAYS},
    "car_copies": {"copies/ug": ("copies/ug", 1.0)},
}
# the raw unit a "%" in the lab text stands for (None: a "%" is an error for that assay)
PERCENT_UNIT_BY_ASSAY: dict[str, str | None] = {
    **{assay: "percent" for assay in MRD_ASSAYS},
    "b_cell_count": "pct_lymphocytes",
    **{assay: "pct_blasts" for assay in ANTIGEN_ASSAYS},
    "car_copies": None,
}
# default detection limit (canonical unit: fraction of nucleated cells) when a row gives none
DEFAULT_DETECTION_LIMIT_BY_ASSAY: dict[str, float] = {
    "flow_mrd": 1e-4,
    "pcr_mrd": 1e-5,
    "ngs_mrd": 1e-6,
}
# largest possible value in each canonical unit (the lower bound is always 0): physical bounds for
# fractions and percentages; for counts a finite bound far above anything measured (1e5 B cells/uL
# is 100e9/L; 1e7 CAR copies/ug of DNA is about 60 copies in each of the ~150,000 cells in a ug),
# so that a unit mix-up or a corrupted number is refused rather than scored
MAX_VALUE_BY_CANONICAL_UNIT: dict[str, float] = {
    "fraction": 1.0,
    "cells/uL": 1e5,
    "pct_lymphocytes": 100.0,
    "pct_blasts": 100.0,
    "copies/ug": 1e7,
}

RESPONSES = ("CR", "CRi", "NR")
REMISSION_RESPONSES = ("CR", "CRi")
EVENTS = ("relapse", "death", "hsct", "none")
PHENOTYPES = ("CD19_pos", "CD19_neg", "lineage_switch")
SITES_OF_RELAPSE = ("medullary", "extramedullary", "combined")

TABLES = ("infusions", "measurements", "outcomes")

MAX_DAY = 7300.0
"""Latest plausible day since infusion (20 years): days, follow-up and as-of days beyond it are refused."""
_EARLIEST_MEASUREMENT_DAY = -365.0  # pre-infusion results up to a year before (screening, apheresis)

BOOL_WORDS: dict[str, bool] = {
    "true": True, "t": True, "yes": True, "y": True, "1": True, "1.0": True,
    "false": False, "f": False, "no": False, "n": False, "0": False, "0.0": False,
}
"""Text of a boolean cell (after stripping blanks and lower-casing) -> value."""


# --- column declarations -------------------------------------------------------------------------
ColumnKind = Literal["str", "float", "int", "bool", "category", "text_or_number"]


@dataclass(frozen=True)
class ColumnSpec:
    """One column of the data contract.

    Parameters
    ----------
    name : str
        Column name, as written in the file.
    kind : {"str", "float", "int", "bool", "category", "text_or_number"}
        Logical type. ``int`` uses pandas' nullable ``Int64``; ``bool`` is ``boolean`` (nullable) or ``bool``
        (non-nullable);
        ``text_or_number`` is the raw lab ``value`` (a number or lab text, parsed by
        ``features.labtext``).
    meaning : str
        Unit or meaning, as written in the documentation.
    allowed : tuple of str, optional
        Allowed values (missing values are governed by ``nullable``).
    min_value, max_value : float, optional
        Inclusive range.
    positive : bool
        Strictly greater than zero.
    nullable : bool
        Whether a value may be missing.
    required : bool
        Whether the column must be present (``False``: an optional column).
    """

    name: str
    kind: ColumnKind
    meaning: str
    allowed: tuple[str, ...] | None = None
    min_value: float | None = None
    max_value: float | None = None
    positive: bool = False
    nullable: bool = True
    required: bool = True

    @property
    def pandas_dtype(self) -> str | None:
        """The pandas dtype of the column after coercion (``None``: not checked)."""
        if self.kind == "bool" and not self.nullable:
            return "bool"
        return {
            "str": "object",
            "float": "float64",
            "int": "Int64",
            "bool": "boolean",
            "category": "category",
            "text_or_number": None,
        }[self.kind]

    def checks(self) -> list[pa.Check]:
        """Pandera checks of allowed values and range; each carries a readable ``error``."""
        checks = []
        if self.kind == "str":
            checks.append(pa.Check(_all_text, name="is_text", error="must be text"))
        if self.allowed is not None and self.kind != "category":
            allowed_text = ", ".join(self.allowed)
            checks.append(pa.Check.isin(self.allowed, name="not_allowed", error=f"not one of {allowed_text}"))
        if self.positive:
            checks.append(pa.Check.gt(0, name="out_of_range", error="must be > 0"))
        if self.min_value is not None and self.max_value is not None:
            error = f"must be in [{_fmt(self.min_value)}, {_fmt(self.max_value)}]"
            checks.append(pa.Check.in_range(self.min_value, self.max_value, name="out_of_range", error=error))
        elif self.min_value is not None:
            checks.append(pa.Check.ge(self.min_value, name="out_of_range", error=f"must be >= {_fmt(self.min_value)}"))
        elif self.max_value is not None:
            checks.append(pa.Check.le(self.max_value, name="out_of_range", error=f"must be <= {_fmt(self.max_value)}"))
        return checks

    def constraint_text(self) -> str:
        """Allowed values / range / positivity, as written in the documentation."""
        parts = []
        if self.allowed is not None:
            parts.append(" / ".join(f"`{value}`" for value in self.allowed))
        if self.positive:
            parts.append("> 0")
        if self.min_value is not None and self.max_value is not None:
            parts.append(f"{_fmt(self.min_value)} to {_fmt(self.max_value)}")
        elif self.min_value is not None:
            parts.append(f">= {_fmt(self.min_value)}")
        elif self.max_value is not None:
            parts.append(f"<= {_fmt(self.max_value)}")
        return "; ".join(parts)


def _all_text(values: pd.Series) -> bool:
    """Whether every non-missing value is a Python string (C-speed type inference, no row loop)."""
    return pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty")


def _fmt(number: float) -> str:
    return f"{number:g}"


def _bool(name: str, meaning: str) -> ColumnSpec:
    return ColumnSpec(name, "bool", meaning)


def _pct(name: str, meaning: str, **kwargs) -> ColumnSpec:
    return ColumnSpec(name, "float", meaning, min_value=0.0, max_value=100.0, **kwargs)


_PATIENT_ID = ColumnSpec("patient_id", "str", "patient identifier", nullable=False)

INFUSION_COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("patient_id", "str", "patient identifier, unique within the table", nullable=False),
    ColumnSpec("site", "str", "center name", required=False),
    ColumnSpec("age_years", "float", "age at infusion, years", min_value=0.0, max_value=40.0),
    ColumnSpec("sex", "str", "sex", allowed=SEXES),
    _bool("down_syndrome", "Down syndrome"),
    _bool("kmt2a_rearranged", "KMT2A rearrangement"),
    _bool("tp53_altered", "TP53 alteration"),
    _bool("hypodiploid", "hypodiploid karyotype"),
    _bool("ph_positive", "Philadelphia chromosome positive"),
    ColumnSpec("prior_lines", "int", "number of prior therapy lines", min_value=0, max_value=20),
    ColumnSpec("prior_crs", "int", "number of prior complete remissions", min_value=0, max_value=10),
    _bool("prior_hsct", "prior allogeneic stem cell transplant"),
    ColumnSpec("blinatumomab", "str", "blinatumomab history", allowed=BLINATUMOMAB_STATUSES),
    _bool("inotuzumab_prior", "prior inotuzumab"),
    _pct("bm_blasts_pct", "% of nucleated marrow cells before lymphodepletion"),
    ColumnSpec("cns_status", "str", "CNS status", allowed=CNS_STATUSES),
    _bool("active_non_cns_emd", "active non-CNS extramedullary disease at infusion"),
    _pct("cd19_antigen_load_pct", "% of BM cells CD19+ (blasts + B cells)"),
    _bool("cd19_dim_pre", "CD19-dim blasts before infusion"),
    _pct("cd22_pct_pre", "% of blasts CD22+"),
    ColumnSpec("product", "str", "product name"),
    ColumnSpec("costim", "str", "costimulatory domain", allowed=COSTIMS),
    ColumnSpec("cell_dose_per_kg", "float", "CAR+ T cells per kg", min_value=1e4, max_value=1e9),
    ColumnSpec("fludarabine_auc", "float", "fludarabine exposure AUC, mg*h/L", min_value=0.0, max_value=100.0,
               required=False),
)

MEASUREMENT_COLUMNS: tuple[ColumnSpec, ...] = (
    _PATIENT_ID,
    ColumnSpec("day", "float", "days since infusion; negative = before", min_value=_EARLIEST_MEASUREMENT_DAY,
               max_value=MAX_DAY, nullable=False),
    ColumnSpec("specimen", "str", "specimen", allowed=SPECIMENS, nullable=False),
    ColumnSpec("assay", "str", "assay", allowed=ASSAYS, nullable=False),
    ColumnSpec("value", "text_or_number", "number or lab text (see the lab-text grammar)", nullable=False),
    ColumnSpec("unit", "str", "unit of value (may be empty, see the lab-text grammar)", allowed=RAW_UNITS),
    ColumnSpec("detection_limit", "float", "detection limit, in the row's unit", positive=True,
               max_value=max(MAX_VALUE_BY_CANONICAL_UNIT.values()), required=False),
)

OUTCOME_COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("patient_id", "str", "patient identifier, unique within the table", nullable=False),
    ColumnSpec("response", "str", "response assessed about day 28", allowed=RESPONSES),
    ColumnSpec("response_day", "float", "day of response assessment", min_value=0.0, max_value=365.0),
    ColumnSpec("event", "str", "first event after infusion", allowed=EVENTS, nullable=False),
    ColumnSpec("event_day", "float", "day of the first event; empty when event is none", min_value=0.0,
               max_value=MAX_DAY),
    ColumnSpec("last_followup_day", "float", "last follow-up day, >= event_day", min_value=0.0,
               max_value=MAX_DAY, nullable=False),
    ColumnSpec("relapse_phenotype", "str", "relapse phenotype; only when event is relapse", allowed=PHENOTYPES),
    ColumnSpec("relapse_site", "str", "relapse site; only when event is relapse", allowed=SITES_OF_RELAPSE),
)

NORMALISED_MEASUREMENT_COLUMNS: tuple[ColumnSpec, ...] = (
    _PATIENT_ID,
    ColumnSpec("day", "float", "days since infusion; negative = before", min_value=_EARLIEST_MEASUREMENT_DAY,
               max_value=MAX_DAY, nullable=False),
    ColumnSpec("specimen", "category", "specimen", allowed=SPECIMENS, nullable=False),
    ColumnSpec("assay", "category", "assay", allowed=ASSAYS, nullable=False),
    ColumnSpec(
        "value", "float", "value in the canonical unit; when censored, the detection limit (NaN if unknown)",
        min_value=0.0,
    ),
    ColumnSpec("censored", "bool", "True = below the detection limit (true value is lower)", nullable=False),
    ColumnSpec("detection_limit", "float", "detection limit in the canonical unit; NaN when unknown", positive=True),
    ColumnSpec("unit", "str", "canonical unit", allowed=CANONICAL_UNITS, nullable=False),
    ColumnSpec(
        "detected_below_loq", "bool",
        "True = detected but below the limit of quantitation (also censored=True)", nullable=False,
    ),
)

AS_OF_DAY = ColumnSpec("as_of_day", "float", "prediction day, days since infusion (only measurements up to it are used)",
                       min_value=0.0, max_value=MAX_DAY, nullable=False)
"""The as-of day of a scoring request or of batch scoring (a request field, not a table column)."""

COLUMNS_BY_TABLE: dict[str, tuple[ColumnSpec, ...]] = {
    "infusions": INFUSION_COLUMNS,
    "measurements": MEASUREMENT_COLUMNS,
    "outcomes": OUTCOME_COLUMNS,
    "normalised_measurements": NORMALISED_MEASUREMENT_COLUMNS,
}


def required_columns(table: str) -> tuple[str, ...]:
    """Names of the columns that must be present in ``table``.

    Parameters
    ----------
    table : str
        A key of :data:`COLUMNS_BY_TABLE`.

    Returns
    -------
    tuple of str
        In declaration order.
    """
    return tuple(spec.name for spec in COLUMNS_BY_TABLE[table] if spec.required)


def optional_columns(table: str) -> tuple[str, ...]:
    """Names of the declared columns of ``table`` that may be absent (see :func:`required_columns`)."""
    return tuple(spec.name for spec in COLUMNS_BY_TABLE[table] if not spec.required)


# --- pandera schemas ------------------------------------------------------------------------------
def _normalised_frame_checks() -> list[pa.Check]:
    """Cross-column rules of the normalised measurement table (row-wise boolean results)."""

    def unit_matches_assay(frame: pd.DataFrame) -> pd.Series:
        matches = np.zeros(len(frame), dtype=bool)
        for assay, units in UNIT_CONVERSIONS.items():
            rows = (frame["assay"] == assay).to_numpy()
            canonical = [canon for canon, _ in units.values()]
            matches[rows] = frame["unit"].to_numpy()[rows].astype(object) == canonical[0]
            for other in canonical[1:]:
                matches[rows] |= frame["unit"].to_numpy()[rows].astype(object) == other
        return pd.Series(matches, index=frame.index)

    def value_within_unit_bound(frame: pd.DataFrame) -> pd.Series:
        bound = frame["unit"].map(MAX_VALUE_BY_CANONICAL_UNIT).astype(float)
        return frame["value"].isna() | (frame["value"] <= bound)

    def censored_value_is_limit(frame: pd.DataFrame) -> pd.Series:
        same = (frame["value"] == frame["detection_limit"]) | (frame["value"].isna() & frame["detection_limit"].isna())
        return ~frame["censored"].astype(bool) | same

    def loq_is_censored(frame: pd.DataFrame) -> pd.Series:
        return ~frame["detected_below_loq"].astype(bool) | frame["censored"].astype(bool)

    return [
        pa.Check(unit_matches_assay, name="unit_matches_assay", error="unit is not a canonical unit of the assay"),
        pa.Check(value_within_unit_bound, name="value_within_unit_bound", error="value above the unit's bound"),
        pa.Check(censored_value_is_limit, name="censored_value_is_limit", error="censored value != detection limit"),
        pa.Check(loq_is_censored, name="loq_is_censored", error="detected_below_loq without censored"),
    ]


def build_schema(table: str) -> pa.DataFrameSchema:
    """Build the pandera schema of ``table`` from its column declarations.

    Parameters
    ----------
    table : {"infusions", "measurements", "outcomes", "normalised_measurements"}

    Returns
    -------
    pandera.pandas.DataFrameSchema
        Non-strict (extra columns allowed), no coercion: it validates already-typed frames.
    """
    columns = {}
    for spec in COLUMNS_BY_TABLE[table]:
        dtype = spec.pandas_dtype
        if spec.kind == "category":
            dtype = pd.CategoricalDtype(list(spec.allowed or ()))
        columns[spec.name] = pa.Column(
            dtype, checks=spec.checks(), nullable=spec.nullable, required=spec.required, coerce=False
        )
    checks = _normalised_frame_checks() if table == "normalised_measurements" else None
    return pa.DataFrameSchema(columns, checks=checks, strict=False, name=table)


INFUSIONS_SCHEMA = build_schema("infusions")
MEASUREMENTS_SCHEMA = build_schema("measurements")
OUTCOMES_SCHEMA = build_schema("outcomes")
NORMALISED_MEASUREMENTS_SCHEMA = build_schema("normalised_measurements")
SCHEMA_BY_TABLE: dict[str, pa.DataFrameSchema] = {
    "infusions": INFUSIONS_SCHEMA,
    "measurements": MEASUREMENTS_SCHEMA,
    "outcomes": OUTCOMES_SCHEMA,
    "normalised_measurements": NORMALISED_MEASUREMENTS_SCHEMA,
}


# --- documentation ---------------------------------------------------------------------------------
def columns_markdown(table: str) -> str:
    """The column table of ``table`` in Markdown, as embedded in ``docs/data_contract.md``.

    Parameters
    ----------
    table : str
        A key of :data:`COLUMNS_BY_TABLE`.

    Returns
    -------
    str
        A Markdown table: column, type, unit / meaning, allowed values, missing allowed, required.
    """
    lines = [
        "| column | type | unit / meaning | allowed | missing allowed | column required |",
        "|---|---|---|---|---|---|",
    ]
    for spec in COLUMNS_BY_TABLE[table]:
        dtype = "str" if spec.kind == "str" else (spec.pandas_dtype or "str or float")
        lines.append(
            f"| `{spec.name}` | {dtype} | {spec.meaning} | {spec.constraint_text()} | "
            f"{'yes' if spec.nullable else 'no'} | {'yes' if spec.required else 'no (optional column)'} |"
        )
    return "\n".join(lines)


def units_markdown() -> str:
    """The units table of ``docs/data_contract.md``: per assay its units, conversions and bounds.

    Returns
    -------
    str
        A Markdown table: assay, raw units accepted, canonical unit(s), what a ``%`` in the text
        means, the largest possible value per canonical unit and the default detection limit.
    """
    lines = [
        "| assay | raw units accepted | canonical unit | a `%` in the text means | largest possible value "
        "(canonical) | default detection limit (canonical) |",
        "|---|---|---|---|---|---|",
    ]
    for assay, conversions in UNIT_CONVERSIONS.items():
        canonical = list(dict.fromkeys(unit for unit, _ in conversions.values()))
        bounds = ", ".join(f"{_fmt(MAX_VALUE_BY_CANONICAL_UNIT[unit])} {unit}" for unit in canonical)
        limit = DEFAULT_DETECTION_LIMIT_BY_ASSAY.get(assay)
        lines.append(
            f"| `{assay}` | {', '.join(f'`{unit}`' for unit in conversions)} | "
            f"{', '.join(f'`{unit}`' for unit in canonical)} | "
            f"{'error' if PERCENT_UNIT_BY_ASSAY[assay] is None else f'`{PERCENT_UNIT_BY_ASSAY[assay]}`'} | "
            f"{bounds} | {'none (NaN)' if limit is None else _fmt(limit)} |"
        )
    return "\n".join(lines)
