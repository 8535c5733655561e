"""The README keeps its promises: two commands, both real Makefile targets, and the data contract."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from features.schema import columns_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _indented_commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and line.strip()]


def test_readme_holds_exactly_the_two_commands():
    assert _indented_commands(README) == ["make run", "make test"]
    assert "```" not in README, "commands are shown as indented blocks only"


def test_both_commands_are_makefile_targets_that_set_themselves_up():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("run", "test"):
        match = re.search(rf"^{target}: (.+)$", makefile, flags=re.MULTILINE)
        assert match is not None, f"Makefile has no '{target}' target"
        assert "$(STAMP)" in match.group(1), f"'make {target}' must depend on the set-up step"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.MULTILINE)


@pytest.mark.parametrize("table", ["infusions", "measurements", "outcomes"])
def test_readme_documents_every_column_of_the_contract(table):
    assert columns_markdown(table) in README, f"README's {table} table is out of date with features/schema.py"
