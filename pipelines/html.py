"""Self-contained HTML pages (the run report, the per-patient report): templates, figures, tables.

A page needs no network to open: the CSS is inline (``templates/base.html.j2``) and every figure is
embedded as a PNG data URI. Templates are Jinja2 with autoescaping, so text from data or config
(patient ids, model names, folder names) is shown as text, never interpreted as markup.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["figure_data_uri", "markdown_html", "render_page", "table_rows"]


def figure_data_uri(figure, dpi: int = 90) -> str:
    """A matplotlib Figure as a ``data:image/png;base64,...`` URI (for an ``<img src>``)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else f"{value:.{digits}f}"
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def table_rows(frame: pd.DataFrame, columns: Sequence[str] | None = None, digits: int = 3) -> dict[str, Any]:
    """A DataFrame as ``{"columns": [...], "rows": [[text, ...], ...]}`` for the templates' table macro.

    Floats get ``digits`` decimals (empty when not finite); everything else is shown as text.
    """
    columns = list(columns) if columns is not None else [str(c) for c in frame.columns]
    rows = [[_cell(value, digits) for value in record] for record in frame[columns].itertuples(index=False)]
    return {"columns": columns, "rows": rows}


def markdown_html(text: str) -> str:
    """Markdown (CommonMark with tables) as HTML; raw HTML in the text is escaped, not passed through."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def render_page(template: str, **context: Any) -> str:
    """Render ``pipelines/templates/<template>`` (autoescaped) with ``context``."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    environment = Environment(loader=PackageLoader("pipelines", "templates"), undefined=StrictUndefined,
                              autoescape=select_autoescape(default=True, default_for_string=True))
    return environment.get_template(template).render(**context)
