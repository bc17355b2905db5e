"""Positions are where an editor shows them, and the text renderer stays readable on any line."""

from __future__ import annotations

from pathlib import Path

from flowctl.dsl import catalogue as cat
from flowctl.dsl.diagnostics import MAX_SHOWN_LINE, Span, render_text
from flowctl.dsl.frontend import FrontEnd
from flowctl.dsl.loader import load_text


def test_values_after_a_yaml_only_line_break_keep_the_editor_lines() -> None:
    text = 'flowctl: 1\ndescription: "a\u2028b\u2029c\x85d"\nname: x\nsteps: []\n'
    doc = load_text(text, "p.yaml")
    assert doc.diagnostics == []
    assert (doc.source_map.value(("name",)).line, doc.source_map.value(("name",)).col) == (3, 7)
    assert doc.source_map.key(("steps",)).line == 4


def test_the_rendered_source_line_is_the_editor_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text('flowctl: 1\nname: x\ndescription: "a\u2028b"\nsteps:\n  - {id: a, agent: nobody}\n', "utf-8")
    front = FrontEnd()
    result = front.process(path)
    [diagnostic] = [d for d in result.diagnostics if d.code == cat.UNKNOWN_AGENT]
    assert diagnostic.span.line == 5
    assert "5 |   - {id: a, agent: nobody}" in render_text(diagnostic, result.doc.source)


def test_an_error_at_the_end_of_the_text_is_inside_the_file() -> None:
    for text in ("flowctl: 1\nname: [a, b\n", "flowctl: 1\nname: [a, b", "flowctl: 1\nname: [a, b\r\n"):
        [diagnostic] = load_text(text, "p.yaml").diagnostics
        assert (diagnostic.span.line, diagnostic.span.col) == (2, 12), repr(text)


def test_a_very_long_line_is_shown_as_a_window_around_the_column() -> None:
    line = "x" * 100_000 + "HERE" + "y" * 100_000
    diagnostic = cat.invalid_value(Span("p.yaml", 1, 100_001, 1, 100_005), "bad")
    rendered = render_text(diagnostic, line + "\n").splitlines()
    source, caret = rendered[1], rendered[2]
    assert len(source) < MAX_SHOWN_LINE + 20 and len(caret) < MAX_SHOWN_LINE + 20
    assert source[caret.index("^") : caret.index("^") + 4] == "HERE"
    assert caret.strip() == "^~~~"


def test_a_short_line_is_shown_whole() -> None:
    diagnostic = cat.invalid_value(Span("p.yaml", 1, 7, 1, 10), "bad")
    assert render_text(diagnostic, "name: abc\n").splitlines()[1:] == ["   1 | name: abc", "             ^~~"]
