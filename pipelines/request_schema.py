"""Write the JSON Schema of one patient of a scoring request to ``docs/request_schema.json``.

    make request-schema              # = python -m pipelines.request_schema docs/request_schema.json

The schema is generated from the data contract by ``models.request_schema`` and logged with every
model; a test keeps the documented copy in step.
"""

from __future__ import annotations

import sys
from pathlib import Path

from models.request_schema import request_schema_text

__all__ = ["REGENERATE_COMMAND", "main"]

REGENERATE_COMMAND = "make request-schema"


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.request_schema [OUT]``: write the schema (default ``docs/request_schema.json``)."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path("docs/request_schema.json")
    out.write_text(request_schema_text(), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
