"""The error reference: every catalogue code has an example that produces it, and docs/errors.md is up to date."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowctl.dsl import catalogue as cat
from flowctl.dsl.errors_doc import EXAMPLES, example_diagnostics, render_errors_doc

DOC = Path(__file__).parents[2] / "docs" / "errors.md"


def test_every_code_has_an_example() -> None:
    assert set(EXAMPLES) == set(cat.CODES)


@pytest.mark.parametrize("code", sorted(cat.CODES))
def test_the_example_produces_its_code_and_nothing_else(code: str) -> None:
    diagnostics, _ = example_diagnostics(code)
    assert diagnostics, f"the example for {code} is valid"
    assert {d.code for d in diagnostics} == {code}


def test_docs_errors_md_is_the_rendered_reference() -> None:
    """If this fails, regenerate: `python -m flowctl.dsl.errors_doc > docs/errors.md`."""
    assert DOC.read_text(encoding="utf-8") == render_errors_doc()


def test_every_code_has_an_entry_with_summary_and_fix() -> None:
    text = render_errors_doc()
    for code, info in cat.CODES.items():
        entry = text.split(f"### `{code}`\n", 1)[1].split("\n### ", 1)[0]
        assert info.summary in entry
        assert f"**Fix:** {info.fix}" in entry
        assert f"[{code}]" in entry  # the rendered diagnostic itself


def test_rendering_is_deterministic() -> None:
    assert render_errors_doc() == render_errors_doc()
