"""The run-config reference (``docs/config.md``), generated from the pydantic model in ``pipelines.config``.

Every key of :class:`pipelines.config.RunConfig` is listed once, in the model's order, with its
type, default, allowed values and description, so the page cannot drift from the code (a test
compares the file with :func:`config_reference_markdown`). Regenerate it with::

    make config-reference          # = python -m pipelines.config_reference docs/config.md
"""

from __future__ import annotations

import json
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipelines.config import RunConfig

__all__ = ["REGENERATE_COMMAND", "config_keys", "config_reference_markdown", "main"]

REGENERATE_COMMAND = "make config-reference"

_INTRO = f"""\
# Run configuration reference

<!-- Generated from pipelines/config.py by `{REGENERATE_COMMAND}`; do not edit by hand. -->

A run config is a YAML file (`configs/default.yaml` runs the embedded synthetic cohort;
`configs/own_cohort.yaml` is a commented starting point for your own cohort). Every key is
optional: a key left out takes the default below. Unknown keys and wrong types are errors that
name the key, so a typo never passes silently; `car-relapse check-config --config FILE` checks a
file without running anything (exit code 2 and every problem listed when it is not usable).

Paths: a relative `data.input_dir` is relative to the folder of the config file, not to the
folder the command runs in. Where runs go (`tracking`) is kept apart from what the run does; the
command's `--tracking-uri` and the `MLFLOW_TRACKING_URI` environment variable override
`tracking.tracking_uri`.
"""


def _section_model(field: FieldInfo) -> type[BaseModel] | None:
    """The config model of a field that is a section of its own (``data.synthetic``), else None."""
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _type_text(annotation: Any) -> str:
    """A reader's name for a field type: ``number``, ``list of numbers``, ``path or null`` ..."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "text"
    if origin in (Union, types.UnionType):
        named = [_type_text(arg) for arg in args if arg is not type(None)]
        return " or ".join(named) + (" or null" if type(None) in args else "")
    if origin is list:
        item = _type_text(args[0]) if args else "value"
        return f"list of {item}" if item.endswith(("s", "ext")) else f"list of {item}s"
    if origin is dict:
        value = _type_text(args[1]) if len(args) > 1 else "value"
        return f"mapping of name to {value}"
    simple = {float: "number", int: "integer", bool: "true / false", str: "text", Path: "path", dict: "mapping"}
    return simple.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _literal_values(annotation: Any) -> tuple[Any, ...]:
    """The allowed values of a ``Literal`` (also inside ``list[Literal[...]]``), else empty."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return args
    if origin is list and args:
        return _literal_values(args[0])
    return ()


_BOUNDS = ((annotated_types.Ge, "ge", ">="), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "<="),
           (annotated_types.Lt, "lt", "<"))


def _allowed_text(field: FieldInfo) -> str:
    """Allowed values (``Literal``) and declared bounds (``ge``, ``gt``, ``min_length`` ...)."""
    values = _literal_values(field.annotation)
    parts = [" / ".join(f"`{value}`" for value in values)] if values else []
    for constraint in field.metadata:
        for kind, attribute, sign in _BOUNDS:
            if isinstance(constraint, kind):
                parts.append(f"{sign} {getattr(constraint, attribute):g}")
        if isinstance(constraint, annotated_types.MinLen):
            parts.append(f"at least {constraint.min_length} item(s)" if field.annotation is not str
                         else "not empty")
    return ", ".join(parts)


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "(required)"
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        default = default.model_dump(mode="json")
    elif isinstance(default, Path):
        default = str(default)
    return f"`{json.dumps(default)}`"


def _cell(text: str) -> str:
    """One Markdown table cell: a single line; ``|`` and a ``<`` that would open an HTML tag are escaped."""
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", " ".join(text.split()).replace("|", "\\|"))


def config_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every leaf key of a config model, dotted (``data.synthetic.seed``), with its pydantic field.

    Parameters
    ----------
    model : pydantic model class
        Default: the whole run config.
    prefix : str
        Dotted path of ``model`` itself.

    Yields
    ------
    (str, FieldInfo)
    """
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if (section := _section_model(field)) is not None:
            yield from config_keys(section, f"{key}.")
        else:
            yield key, field


def _section(model: type[BaseModel], title: str, level: int) -> list[str]:
    doc = " ".join((model.__doc__ or "").split())
    lines = [f"{'#' * level} `{title}`", "", doc, "", "| key | type | default | allowed | meaning |",
             "|---|---|---|---|---|"]
    nested = []
    for name, field in model.model_fields.items():
        if (section := _section_model(field)) is not None:
            nested.append((section, f"{title}.{name}"))
            lines.append(f"| `{name}` | section | | | see `{title}.{name}` below |")
            continue
        lines.append(f"| `{name}` | {_type_text(field.annotation)} | {_cell(_default_text(field))} | "
                     f"{_cell(_allowed_text(field))} | {_cell(field.description or '')} |")
    lines.append("")
    for sub_model, sub_title in nested:
        lines += _section(sub_model, sub_title, level + 1)
    return lines


def _names_section() -> list[str]:
    """The names the cross-section checks (``check_config``) accept, from the registries they read."""
    from features.registry import available_builders
    from models.evaluation import SELECTION_METRICS
    from models.factory import BASELINE_NAME, MODEL_NAMES

    def listed(names) -> str:
        return ", ".join(f"`{name}`" for name in names)

    return [
        "## Names",
        "",
        "Checked across sections before any data is read (`check-config` and every job):",
        "",
        f"- `models.candidates`: {listed(MODEL_NAMES)}; `models.params` may also hold `{BASELINE_NAME}` "
        "(the clinicians' rule);",
        f"- `features.builders`: {listed(available_builders())} (or a `module:function` import path);",
        f"- `evaluation.selection_metric` and the keys of `registry.thresholds` / `registry.max_thresholds`: "
        f"{listed(SELECTION_METRICS)};",
        "- `registry.risk_group_horizon_days` and `evaluation.shap_horizon_days`: one of "
        "`evaluation.horizons_days`.",
        "",
    ]


def config_reference_markdown() -> str:
    """The whole ``docs/config.md`` page: an introduction, then one table per config section.

    Returns
    -------
    str
        Markdown, ending with a newline.
    """
    lines = [_INTRO]
    for name, field in RunConfig.model_fields.items():
        section = _section_model(field)
        if section is None:
            raise TypeError(f"RunConfig.{name}: top-level keys must be sections (config models)")
        lines += _section(section, name, 2)
    lines += _names_section()
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.config_reference [OUT]``: write the reference (default ``docs/config.md``)."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path("docs/config.md")
    out.write_text(config_reference_markdown())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
