"""Stage 3, checks: scoping rules and positions the golden corpus does not show on its own."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from flowctl.dsl import catalogue as cat
from flowctl.dsl.checks import CheckContext, check_document
from flowctl.dsl.diagnostics import Diagnostic
from flowctl.dsl.frontend import FrontEnd
from flowctl.dsl.index import build_index
from flowctl.dsl.loader import load_text
from flowctl.dsl.schema import validate_schema

Check = Callable[..., list[Diagnostic]]


@pytest.fixture
def check(tmp_path: Path) -> Check:
    """Validate YAML text as `p.yaml` in a scratch folder (with optional extra files); its diagnostics."""

    def check_(text: str, files: dict[str, str] | None = None) -> list[Diagnostic]:
        for name, content in (files or {}).items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(textwrap.dedent(content), encoding="utf-8")
        path = tmp_path / "p.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return FrontEnd().process(path).diagnostics

    return check_


def at(diagnostics: list[Diagnostic]) -> list[tuple[str, int, int]]:
    return [(d.code, d.span.line, d.span.col) for d in diagnostics]


HEAD = "flowctl: 1\nname: t\nagents:\n  w: {instruction: hi}\n"


# --- scopes that are allowed ------------------------------------------------------------------------------------


def test_loop_bodies_read_later_steps_and_until_reads_the_body(check: Check) -> None:
    text = HEAD + textwrap.dedent(
        """\
        steps:
          - id: refine
            loop:
              max_iterations: 3
              until: "steps.judge.output > 7 and loop.iteration > 1"
              steps:
                - {id: draft, agent: w, prompt: "{{ steps.judge.output }} {{ loop.previous.draft }}"}
                - {id: judge, agent: w, prompt: "{{ steps.draft.output }}"}
          - {id: after, agent: w, prompt: "{{ steps.draft.output }} {{ steps.refine.output }}"}
        """
    )
    assert check(text) == []


def test_triggers_finally_and_outputs_may_read_any_step(check: Check) -> None:
    text = HEAD + textwrap.dedent(
        """\
        steps:
          - {id: a, agent: w, prompt: hi, emit: {event: go, data: "{{ output }}"}}
          - {id: b, agent: w, prompt: hi}
        triggers:
          - id: t
            event: go
            steps: [{id: c, agent: w, prompt: "{{ steps.b.output }} {{ event.data }}"}]
        finally:
          - {id: d, agent: w, prompt: "{{ steps.c.status }} {{ run.status }}"}
        outputs:
          all: "{{ [steps.a.output, steps.c.output, steps.d.output] }}"
        """
    )
    assert check(text) == []


def test_the_item_variable_reaches_fallback_steps(check: Check) -> None:
    text = HEAD + textwrap.dedent(
        """\
        steps:
          - id: each
            agent: w
            for_each: [1, 2]
            as: n
            prompt: "{{ n }}"
            fallback:
              steps: [{id: fb, agent: w, prompt: "{{ n }} at {{ index }}"}]
        """
    )
    assert check(text) == []


def test_event_is_defined_in_a_wait_match(check: Check) -> None:
    text = HEAD + "steps:\n  - {id: a, wait: {event: go, match: 'event.data.id == run.id'}}\n"
    text += "  - {id: b, emit: {event: go}}\n"
    assert check(text) == []


def test_output_is_only_defined_in_set_and_emit(check: Check) -> None:
    text = HEAD + "state:\n  s: {}\nsteps:\n  - {id: a, agent: w, prompt: '{{ output }}', set: {s: '{{ output }}'}}\n"
    assert at(check(text)) == [(cat.UNDEFINED_VARIABLE, 8, 35)]


def test_bracket_references_are_located(check: Check) -> None:
    text = HEAD + "steps:\n  - {id: a, agent: w, prompt: \"{{ steps['zz'].output }}\"}\n"
    (diagnostic,) = check(text)
    assert (diagnostic.code, diagnostic.span.col, diagnostic.span.end_col) == (cat.UNKNOWN_STEP, 35, 53)


# --- definitions ------------------------------------------------------------------------------------------------


def test_the_builtin_model_is_called_default(check: Check) -> None:
    text = "flowctl: 1\nname: t\nagents:\n  w: {instruction: hi, model: default}\n"
    text += "steps:\n  - {id: a, agent: w, prompt: hi, fallback: {model: default}}\n"
    assert check(text) == []


def test_agent_instructions_read_only_what_every_pipeline_using_the_agent_declares(check: Check) -> None:
    text = textwrap.dedent(
        """\
        flowctl: 1
        name: t
        inputs: {tone: {type: string}, audience: {type: string}}
        state: {notes: {}}
        pipelines:
          child:
            inputs: {audience: {type: string}}
            state: {notes: {}}
            steps: [{id: inner, agent: w, prompt: hi}]
        agents:
          w: {instruction: "{{ inputs.audience }} {{ state.notes }} {{ inputs.tone }}"}
          idle: {instruction: "{{ inputs.tone }} {{ inputs.nowhere }}"}
        steps:
          - {id: a, agent: w, prompt: hi}
          - {id: b, pipeline: child, inputs: {audience: all}}
        """
    )
    # `tone` exists in the root but not in `child`, which also renders w's instruction; an agent no step uses is
    # checked against every pipeline of the file
    tone, nowhere = check(text)
    assert (tone.message, tone.span.line) == ("undefined variable 'inputs.tone'", 11)
    assert tone.hint == "known names: 'inputs.audience'"
    assert (nowhere.message, nowhere.span.line) == ("undefined variable 'inputs.nowhere'", 12)


def test_agent_tool_entries_are_checked_only_against_servers_that_list_their_tools(check: Check) -> None:
    text = textwrap.dedent(
        """\
        flowctl: 1
        name: t
        servers:
          open: {command: uvx}
          closed: {command: uvx, allowed_tools: [read, files.list]}
        agents:
          w:
            instruction: hi
            servers: [open, closed]
            tools: [open.anything, closed.read, files.list, closed.write, other.tool]
        steps:
          - {id: a, agent: w, prompt: hi}
        """
    )
    (diagnostic,) = check(text)
    assert (diagnostic.code, diagnostic.message) == (cat.UNKNOWN_TOOL, "server 'closed' has no tool 'write'")
    assert diagnostic.hint == "known tools: 'files.list', 'read'"


def test_undeclared_inputs_say_where_to_declare_them(check: Check) -> None:
    (diagnostic,) = check(HEAD + "steps:\n  - {id: a, agent: w, prompt: '{{ inputs.topic }}'}\n")
    assert diagnostic.hint == "no inputs are declared; declare it under `inputs:`"


# --- cycles -----------------------------------------------------------------------------------------------------


def test_a_cycle_is_reported_once_from_its_first_definition_despite_duplicate_ids(check: Check) -> None:
    text = "flowctl: 1\nname: t\nsteps:\n"
    text += "  - {id: a, set: {}, needs: [c]}\n  - {id: b, set: {}, needs: [a]}\n  - {id: c, set: {}, needs: [b]}\n"
    text += "  - {id: a, set: {}}\n"
    diagnostics = check(text)
    assert [d.message for d in diagnostics] == [
        "dependency cycle: a -> c -> b -> a",
        "duplicate id 'a' (first defined at line 4)",
    ]
    assert at(diagnostics)[0] == (cat.DEPENDENCY_CYCLE, 4, 22)


def test_child_files_including_each_other(check: Check) -> None:
    files = {"children/b.yaml": "flowctl: 1\nname: b\nsteps:\n  - {id: back, pipeline: ../p.yaml}\n"}
    diagnostics = check("flowctl: 1\nname: a\nsteps:\n  - {id: down, pipeline: ./children/b.yaml}\n", files)
    assert at(diagnostics) == [(cat.CHILD_INVALID, 4, 26)]


def test_the_child_reports_the_whole_include_cycle(tmp_path: Path) -> None:
    (tmp_path / "children").mkdir()
    (tmp_path / "children" / "b.yaml").write_text("flowctl: 1\nname: b\nsteps:\n  - {id: back, pipeline: ../a.yaml}\n")
    (tmp_path / "a.yaml").write_text("flowctl: 1\nname: a\nsteps:\n  - {id: down, pipeline: ./children/b.yaml}\n")
    front = FrontEnd()
    front.process(tmp_path / "a.yaml")
    child = front.process(tmp_path / "children" / "b.yaml")
    assert [d.message for d in child.diagnostics] == ["dependency cycle: a.yaml -> children/b.yaml -> a.yaml"]


# --- templates --------------------------------------------------------------------------------------------------


def test_braces_in_an_expression_get_a_hint(check: Check) -> None:
    (diagnostic,) = check("flowctl: 1\nname: t\nsteps:\n  - {id: a, set: {}, when: '{{ true }}'}\n")
    assert diagnostic.code == cat.TEMPLATE_SYNTAX
    assert "without `{{ }}`" in diagnostic.hint


@pytest.mark.parametrize(
    ("prompt", "line", "col"),
    [
        ("|\n      one\n      two {{ x }\n", 10, 7),  # literal block: the template's own line
        ("|-\n      one\n      {% if %}\n", 10, 7),
        (">\n      one\n      two {{ x }\n", 8, 13),  # folded block: lines are folded, point at the value
        ('"one\\ntwo {{ x }"\n', 8, 13),  # escaped newline in a quoted string
    ],
)
def test_template_syntax_lines(check: Check, prompt: str, line: int, col: int) -> None:
    diagnostics = check(HEAD + "steps:\n  - id: a\n    agent: w\n    prompt: " + prompt)
    assert at(diagnostics) == [(cat.TEMPLATE_SYNTAX, line, col)]


def test_checks_still_run_when_the_schema_found_errors(check: Check) -> None:
    text = HEAD + "stepz: 1\nsteps:\n  - {id: a, agent: nobody, prompt: hi, timeout: soon}\n"
    assert sorted(d.code for d in check(text)) == [cat.INVALID_VALUE, cat.UNKNOWN_AGENT, cat.UNKNOWN_KEY]


def test_an_unbounded_loop_is_reported_once_by_one_stage() -> None:
    text = "flowctl: 1\nname: t\nsteps:\n  - id: l\n    loop:\n      steps: [{id: a, set: {}}]\n"
    doc = load_text(text, "p.yaml")
    index = build_index(doc.data)
    assert index is not None
    assert check_document(CheckContext(doc, index)) == []
    assert at(validate_schema(doc)) == [(cat.UNBOUNDED_LOOP, 5, 5)]


def test_the_checks_see_the_document_without_the_values_the_schema_refused() -> None:
    from flowctl.dsl.check_context import without_rejected

    data = {"triggers": 5, "steps": [{"id": "a", "needs": 3}, {"id": "b"}], "name": "x"}
    rejected = frozenset({("triggers",), ("steps", 0, "needs"), ("steps", 1), ("steps", 1, "id")})
    assert without_rejected(data, rejected) == {"steps": [{"id": "a"}, None], "name": "x"}
    assert data["triggers"] == 5 and data["steps"][0]["needs"] == 3  # the document itself is left as it is
    assert without_rejected(data, frozenset()) is data
