"""Integers past Python's 4,300-digit conversion limit are a diagnostic wherever flowctl reads YAML — a pipeline, a
scripted fixture, a `flowctl test` file — and in a template literal; never a ValueError."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowctl.dsl import catalogue as cat
from flowctl.dsl.frontend import FrontEnd
from flowctl.dsl.loader import MAX_INT_DIGITS, load_text
from flowctl.interpreter.providers.scripted import FixtureError, load_fixture
from flowctl.testing.cases import load_cases

LONG = "7" * (MAX_INT_DIGITS + 1)


def test_a_long_integer_value_is_a_diagnostic_at_the_value() -> None:
    doc = load_text(f"flowctl: 1\nname: x\nconcurrency: {LONG}\n", "p.yaml")
    [diagnostic] = doc.diagnostics
    assert (diagnostic.code, diagnostic.span.line, diagnostic.span.col) == (cat.NUMBER_TOO_LONG, 3, 14)


def test_a_long_integer_key_is_a_non_string_key() -> None:
    # a plain key is at most 1,024 characters to YAML; an explicit `? key` has no such limit
    [diagnostic] = load_text(f"flowctl: 1\n? {LONG}\n: x\n", "p.yaml").diagnostics
    assert diagnostic.code == cat.YAML_NON_STRING_KEY
    assert len(diagnostic.message) < 120


def test_the_limit_is_flowctls_own() -> None:
    longest = "-" + "9" * MAX_INT_DIGITS
    assert load_text(f"n: {longest}\n", "p.yaml").data == {"n": int(longest)}
    assert load_text(f"n: '{LONG}'\n", "p.yaml").data == {"n": LONG}  # quoted, it is text


def test_a_long_integer_literal_in_a_template_is_a_template_diagnostic(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f'flowctl: 1\nname: x\nsteps:\n  - {{id: a, set: {{}}, when: "{LONG} > 1"}}\n', "utf-8")
    [diagnostic] = FrontEnd().process(path).diagnostics
    assert (diagnostic.code, diagnostic.span.line) == (cat.TEMPLATE_SYNTAX, 4)
    assert "too many digits" in diagnostic.message


def test_a_long_integer_in_a_fixture_is_a_fixture_problem(tmp_path: Path) -> None:
    path = tmp_path / "f.fixture.yaml"
    path.write_text(f"responses:\n  - agent: a\n    replies:\n      - {{json: {{score: {LONG}}}}}\n", "utf-8")
    with pytest.raises(FixtureError) as caught:
        load_fixture(path)
    assert [d.code for d in caught.value.diagnostics] == [cat.NUMBER_TOO_LONG]


def test_a_long_integer_in_a_test_file_is_a_problem_and_no_case_runs(tmp_path: Path) -> None:
    path = tmp_path / "p.test.yaml"
    path.write_text(f"cases:\n  - name: a\n    expect: {{outputs: {{n: {LONG}}}}}\n", "utf-8")
    cases, problems, _ = load_cases([(path, path.parent)], None)
    assert cases == []
    assert [d.code for d, _ in problems] == [cat.NUMBER_TOO_LONG]
