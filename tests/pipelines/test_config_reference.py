"""docs/config.md is generated from the pydantic run config and kept in step with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import RunConfig
from pipelines.config_reference import REGENERATE_COMMAND, config_keys, config_reference_markdown, main

ROOT = Path(__file__).resolve().parents[2]


def test_docs_config_md_is_in_step_with_the_config_model():
    written = (ROOT / "docs" / "config.md").read_text()
    assert written == config_reference_markdown(), (
        f"docs/config.md is out of date with pipelines/config.py: run `{REGENERATE_COMMAND}` and commit the result"
    )


def test_every_config_key_has_a_description():
    missing = [key for key, field in config_keys() if not (field.description or "").strip()]
    assert not missing, (f"config keys without a description (add Field(..., description=...) in pipelines/config.py, "
                         f"then run `{REGENERATE_COMMAND}`): {missing}")


def test_every_leaf_key_appears_in_its_section_table():
    page = config_reference_markdown()
    keys = [key for key, _ in config_keys()]
    assert "data.synthetic.n_patients" in keys and "tracking.artifact_location" in keys
    for key in keys:
        section, _, name = key.rpartition(".")
        start = page.index(f"# `{section}`\n")
        end = page.find("\n#", start + 1)
        assert f"\n| `{name}` |" in page[start:end if end > 0 else None], f"{key} is not in the table of {section}"


def test_types_defaults_bounds_and_choices_are_rendered():
    page = config_reference_markdown()
    assert "| `n_patients` | integer | `5000` | >= 50 |" in page
    assert "| `on_error` | text | `\"quarantine\"` | `fail` / `quarantine` |" in page
    assert "| `bca_recovery_pct_lymphocytes` | number | `1.0` | > 0, <= 100 |" in page
    assert "| `input_dir` | path or null | `null` |" in page
    assert "| `thresholds` | mapping of name to number | `{\"uno_c\": 0.65}` |" in page
    assert "&lt;db folder>" in page, "a '<' would start an HTML tag in Markdown"


def test_names_checked_across_sections_are_listed():
    from models.factory import MODEL_NAMES

    page = config_reference_markdown()
    names_section = page[page.index("## Names"):]
    for name in MODEL_NAMES:
        assert f"`{name}`" in names_section


def test_the_generator_writes_the_page(tmp_path):
    out = tmp_path / "config.md"
    assert main([str(out)]) == 0
    assert out.read_text() == config_reference_markdown()


@pytest.mark.parametrize("section", list(RunConfig.model_fields))
def test_every_section_has_a_heading(section):
    assert f"## `{section}`" in config_reference_markdown()
