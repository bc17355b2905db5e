"""Golden corpus: invalid pipelines with their exact diagnostics, and valid pipelines that must compile cleanly.

- `golden/invalid/NAME.yaml` must produce exactly the diagnostics listed in `golden/invalid/NAME.expected`, one per
  line, in the form `line:col: code: message` (no file name, so the corpus can move).
- `golden/invalid/children/` holds the child files those pipelines name (all valid except `broken.yaml`).
- `golden/valid/**.yaml` (children included) and every pipeline in `pipelines/` must have no errors and compile.

To regenerate the expectations after an intended change, run

    FLOWCTL_UPDATE_GOLDEN=1 .venv/bin/pytest tests/dsl/test_golden.py

and review the diff of every `.expected` file line by line before committing it: positions must point at the token
the message names (the key for unknown keys, the value for references).

The expectations come from PyYAML's libyaml (C) parser. Without libyaml, `yaml-syntax` messages are worded
differently, so those lines are then compared on position and code only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from flowctl.dsl import catalogue as cat
from flowctl.dsl.diagnostics import Diagnostic, Severity
from flowctl.dsl.frontend import FileResult, FrontEnd
from flowctl.dsl.ir import Graph
from flowctl.dsl.loader import MAX_FILE_BYTES

GOLDEN = Path(__file__).parent / "golden"
INVALID = GOLDEN / "invalid"
VALID = GOLDEN / "valid"
PIPELINES = Path(__file__).parents[2] / "pipelines"
UPDATE = os.environ.get("FLOWCTL_UPDATE_GOLDEN") == "1"

INVALID_FILES = sorted(INVALID.glob("*.yaml"))
VALID_FILES = sorted(VALID.rglob("*.yaml"))


def golden_line(diagnostic: Diagnostic) -> str:
    return f"{diagnostic.span.line}:{diagnostic.span.col}: {diagnostic.code}: {diagnostic.message}"


class _EveryVariable(dict[str, str]):
    """An environment that sets every variable: valid pipelines are checked where their `${VAR}`s are set."""

    def __contains__(self, name: object) -> bool:
        return True


def process(path: Path, env: Mapping[str, str] | None = None) -> FileResult:
    """Each file gets its own front end, so it is the root of its own folder tree. Invalid pipelines are checked in
    an empty environment (so `unset-variable` is the same everywhere), valid ones where every variable is set."""
    return FrontEnd(env={} if env is None else env).process(path)


def _comparable(line: str) -> str:
    if yaml.__with_libyaml__ or f": {cat.YAML_SYNTAX}: " not in line:
        return line
    return line.split(f": {cat.YAML_SYNTAX}: ")[0] + f": {cat.YAML_SYNTAX}"


# --- invalid pipelines ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", INVALID_FILES, ids=lambda p: p.stem)
def test_invalid_pipeline_gives_the_expected_diagnostics(path: Path) -> None:
    actual = [golden_line(d) for d in process(path).diagnostics]
    expected_file = path.with_suffix(".expected")
    if UPDATE:
        expected_file.write_text("".join(line + "\n" for line in actual), encoding="utf-8")
    assert expected_file.exists(), f"{expected_file.name} is missing: run with FLOWCTL_UPDATE_GOLDEN=1"
    expected = expected_file.read_text(encoding="utf-8").splitlines()
    assert expected, f"{expected_file.name} is empty: an invalid pipeline must produce diagnostics"
    assert [_comparable(x) for x in actual] == [_comparable(x) for x in expected]


def test_the_corpus_is_large_and_every_expectation_has_its_pipeline() -> None:
    assert len(INVALID_FILES) >= 45
    orphans = [p.name for p in INVALID.glob("*.expected") if not p.with_suffix(".yaml").exists()]
    assert orphans == []


def test_the_corpus_exercises_every_code_in_the_catalogue() -> None:
    seen = {d.code for path in INVALID_FILES for d in process(path).diagnostics}
    # these two need a missing file and a 1 MB file, tested below instead of committed
    assert seen | {cat.FILE_UNREADABLE, cat.FILE_TOO_LARGE} == set(cat.CODES)


def test_a_file_over_the_size_cap_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("flowctl: 1\nname: huge\n" + "#" * MAX_FILE_BYTES, encoding="utf-8")
    size = path.stat().st_size
    assert [golden_line(d) for d in process(path).diagnostics] == [
        f"1:1: file-too-large: file is {size} bytes; the limit is {MAX_FILE_BYTES} bytes"
    ]


def test_a_missing_file_is_unreadable(tmp_path: Path) -> None:
    result = process(tmp_path / "missing.yaml")
    assert [(d.code, d.span.line, d.span.col) for d in result.diagnostics] == [(cat.FILE_UNREADABLE, 1, 1)]
    assert "No such file or directory" in result.diagnostics[0].message


# Hints are not part of the .expected format; the ones that carry the point of a case are checked here.
HINTS = {
    "unknown_key_top_level": ["did you mean 'description'?", "did you mean 'steps'?"],
    "unknown_key_step": [
        "did you mean 'retry'?",
        "did you mean 'timeout'?",
        "did you mean 'max_attempts'?",
        "did you mean 'multiple'?",
    ],
    "unknown_key_agent": [
        "",
        "did you mean 'model'?",
        "give it one of: instruction, instruction_file",
        "did you mean 'instruction'?",
        "did you mean 'max_iterations'?",
    ],
    "unknown_key_server": ["did you mean 'args'?", "did you mean 'read_timeout_seconds'?"],
    "unknown_key_parallel_branch": ["did you mean 'when'?"],
    "unknown_agent": ["did you mean 'writer'?", "did you mean 'writer'?", "known agents: 'writer'"],
    "unknown_step_needs": ["did you mean 'fetch'?"],
    "unknown_pipeline": ["did you mean 'execute_task'?"],
    "unknown_tool": ["did you mean 'get_current_time'?"],
    "undefined_step_field": ["did you mean 'steps.draft.output'?"],
    "undefined_run_field": ["did you mean 'run.started_at'?"],
    "route_default_without_branch": ["did you mean 'detailed'?", "known branches: 'rapid'"],
    "unknown_step_kind": [
        "did you mean 'agent' instead of 'agnet'?",
        "give it one of: agent, tool, resource, parallel, pipeline, route, loop, wait, emit, set",
    ],
    "bad_enum": [
        "did you mean 'openai'?",
        "did you mean 'stdio'?",
        "did you mean 'append'?",
        "did you mean 'continue'?",
        "",
        "",
    ],
    "non_string_key": ["quote it: '1'", "quote it: 'true'", "quote it: '2'", "quote it: '~'"],
}


@pytest.mark.parametrize("name", sorted(HINTS))
def test_hints_carry_did_you_mean_and_quote_it(name: str) -> None:
    assert [d.hint for d in process(INVALID / f"{name}.yaml").diagnostics] == HINTS[name]


def test_quote_it_hints_show_the_text_as_written() -> None:
    hints = [d.hint for d in process(INVALID / "wrong_type_quote_hint.yaml").diagnostics]
    assert hints[:4] == ["quote it: '3.10'", "quote it: 'true'", "quote it: '1.0'", "quote it: '42'"]


def test_unknown_events_are_warnings_and_do_not_stop_compiling() -> None:
    result = process(INVALID / "unknown_event.yaml")
    assert {d.severity for d in result.diagnostics} == {Severity.WARNING}
    assert isinstance(result.graph, Graph)


def test_the_on_key_is_a_string_key() -> None:
    diagnostics = process(INVALID / "on_key.yaml").diagnostics
    assert [d.message for d in diagnostics] == ["unknown key 'on' in the pipeline", "unknown key 'on' in step 'a'"]


def test_child_files_are_valid_except_the_broken_one() -> None:
    for path in sorted((INVALID / "children").glob("*.yaml")):
        result = process(path)
        if path.name == "broken.yaml":
            assert [d.code for d in result.diagnostics] == [cat.UNKNOWN_AGENT]
        else:
            assert result.diagnostics == [], path.name


# --- valid pipelines --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", VALID_FILES, ids=lambda p: str(p.relative_to(VALID)))
def test_valid_pipeline_has_no_diagnostics_and_compiles(path: Path) -> None:
    result = process(path, _EveryVariable())
    assert [str(d) for d in result.diagnostics] == []
    assert isinstance(result.graph, Graph)


def test_the_valid_corpus_covers_every_composition() -> None:
    assert len([p for p in VALID_FILES if p.parent == VALID]) >= 8
    kinds = set()
    for path in VALID_FILES:
        graph = process(path).graph
        assert graph is not None
        for pipeline in (graph.root, *graph.pipelines.values()):
            kinds |= {step.kind.value for step in pipeline.all_steps()}
    assert kinds == {"agent", "tool", "resource", "parallel", "pipeline", "route", "loop", "wait", "emit", "set"}


def test_valid_children_are_compiled_into_the_parent_graph() -> None:
    graph = process(VALID / "nested.yaml").graph
    assert graph is not None
    assert sorted(Path(key).name for key in graph.children) == ["closure.yaml", "summarise.yaml"]


_MARKER = re.compile(r"^flowctl\s*:", re.MULTILINE)


def example_pipelines() -> list[Path]:
    """YAML files in `pipelines/` with a top-level `flowctl:` key (fixtures and other YAML are skipped)."""
    if not PIPELINES.is_dir():
        return []
    found = [*PIPELINES.rglob("*.yaml"), *PIPELINES.rglob("*.yml")]
    visible = [p for p in found if not any(part.startswith(".") for part in p.relative_to(PIPELINES).parts)]
    return sorted(p for p in visible if _MARKER.search(p.read_text(encoding="utf-8", errors="replace")))


def test_every_example_pipeline_validates_without_errors() -> None:
    examples = example_pipelines()
    assert PIPELINES.is_dir() or examples == []
    failures = {
        str(path.relative_to(PIPELINES)): [str(d) for d in result.diagnostics if d.severity is Severity.ERROR]
        for path in examples
        if (result := process(path)).graph is None
    }
    assert failures == {}
