"""Hints that name the usual cause of a mistake (the golden corpus records messages; hints are asserted here)."""

from __future__ import annotations

from pathlib import Path

from flowctl.dsl.catalogue import with_characters
from flowctl.dsl.frontend import FrontEnd

GOLDEN = Path(__file__).parent / "golden" / "invalid"


def _hints_by_line() -> dict[int, str]:
    result = FrontEnd().process(GOLDEN / "message_hints.yaml")
    return {d.span.line: d.hint for d in result.diagnostics}


def test_each_mistake_gets_the_hint_that_names_its_cause() -> None:
    hints = _hints_by_line()
    assert hints[7] == "an input is a small JSON schema: write `topic: {type: string}`"
    assert hints[8] == "an input is a small JSON schema: write `count: {type: integer}`"
    assert "`event: NAME`, `failed: STEP`, `completed: STEP` or `when: EXPR`" in hints[13]
    assert hints[17] == "did you mean 'fetch'?"
    assert hints[18] == "compare with `==`; a single `=` is not a comparison"
    assert "{% raw %}" in hints[19]
    assert "if `{{ name }}` is meant as text, wrap it in `{% raw %}" in hints[20]


def test_look_alike_characters_are_named() -> None:
    assert with_characters("unknown step 'fеtch'", "fеtch") == (
        "unknown step 'fеtch' ('fеtch' contains U+0435 CYRILLIC SMALL LETTER IE)"
    )
    assert with_characters("unknown step 'fetch'", "fetch") == "unknown step 'fetch'"
    assert "U+00A0 NO-BREAK SPACE" in with_characters("x", "a\xa0b")


def test_a_real_template_error_gets_no_raw_hint(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        'flowctl: 1\nname: p\nagents:\n  w: {instruction: x}\nsteps:\n  - {id: a, agent: w, prompt: "{{ x }"}\n'
    )
    [diagnostic] = FrontEnd().process(path).diagnostics
    assert diagnostic.hint == ""
