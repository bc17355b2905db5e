"""Property tests: the front end never raises on any input; it answers with located, catalogued diagnostics.

(a) arbitrary text and bytes go through the loader and the whole front end;
(b) arbitrary JSON-like documents, and valid skeletons with random plausible steps, are dumped to YAML and validated.
When a document has no errors, it must also compile and draw;
(c) the example pipelines, fixtures and test files in `pipelines/`, mutated (a value replaced, deleted, wrapped in a
list, a key renamed, odd text inserted): validate, the fixture loader and the test-file loader give diagnostics only,
at positions inside the file.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowctl.dsl.catalogue import CODES, UNKNOWN_EVENT
from flowctl.dsl.characters import editor_lines
from flowctl.dsl.diagnostics import Diagnostic
from flowctl.dsl.draw import to_dot, to_mermaid
from flowctl.dsl.frontend import FileResult, FrontEnd
from flowctl.dsl.loader import load_text
from flowctl.dsl.schema import validate_schema

# FLOWCTL_FUZZ_EXAMPLES=5000 makes a longer fuzz run of the same properties.
SETTINGS = settings(
    max_examples=int(os.environ.get("FLOWCTL_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_counter = itertools.count()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("property")


def assert_well_formed(diagnostics: list[Diagnostic]) -> None:
    for diagnostic in diagnostics:
        assert diagnostic.code in CODES, diagnostic
        assert diagnostic.span.line >= 1 and diagnostic.span.col >= 1, diagnostic
        assert diagnostic.message


def process_bytes(folder: Path, data: bytes) -> FileResult:
    path = folder / f"p{next(_counter)}.yaml"
    path.write_bytes(data)
    result = FrontEnd().process(path)
    assert_well_formed(result.diagnostics)
    if result.graph is not None:
        to_mermaid(result.graph)
        to_dot(result.graph)
    return result


# --- (a) arbitrary text and bytes -------------------------------------------------------------------------------

YAMLISH = st.text(
    alphabet=st.sampled_from([*"abcdeflowctl:-_ {}[]\"'|>&*!%@`#?,.\n\t 0123456789~\\", "\x00", "é", "\x07"]),
    max_size=120,
)


@SETTINGS
@given(text=st.one_of(st.text(max_size=200), YAMLISH))
def test_load_text_never_raises(text: str) -> None:
    doc = load_text(text, "p.yaml")
    assert_well_formed(doc.diagnostics)
    assert_well_formed(validate_schema(doc))


@SETTINGS
@given(data=st.one_of(st.binary(max_size=200), YAMLISH.map(lambda t: t.encode("utf-8"))))
def test_front_end_never_raises_on_bytes(scratch: Path, data: bytes) -> None:
    process_bytes(scratch, data)


# --- (b) JSON-like documents ------------------------------------------------------------------------------------

KEYS = st.sampled_from(
    ["flowctl", "name", "steps", "id", "agent", "tool", "needs", "on", "inputs", "state", "agents", "x", "loop"]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=12),
    st.sampled_from(["{{ steps.a.output }}", "{{ x", "${X}", "a.b", "1h", "yes", "3.10"]),
)
JSONISH = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.one_of(KEYS, st.text(max_size=6)), children, max_size=4)
    ),
    max_leaves=20,
)


class _NoAliases(yaml.SafeDumper):
    """Write shared objects out in full: an alias would stop validation at the loader."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(document: Any) -> bytes:
    return yaml.dump(document, Dumper=_NoAliases, allow_unicode=True, sort_keys=False).encode("utf-8")


@SETTINGS
@given(document=JSONISH)
def test_arbitrary_documents_never_raise(scratch: Path, document: Any) -> None:
    process_bytes(scratch, dump(document))


IDS = st.sampled_from(["a", "b", "c", "d", "loop", "on"])
TEMPLATES = st.sampled_from(
    [
        "plain",
        "{{ inputs.topic }}",
        "{{ inputs.nope }}",
        "{{ steps.a.output }}",
        "{{ steps.b.status }}",
        "{{ steps.zz.output }}",
        "{{ state.log }}",
        "{{ item }} {{ index }}",
        "{{ loop.iteration }}",
        "{{ event.data }}",
        "{{ run.id }}",
        "{% if x %}",
        "{{ output }}",
    ]
)
EXPRESSIONS = st.sampled_from(["true", "steps.a.output == 1", "state.log | length > 2", "(", "loop.iteration > 2"])


EXTRA_KEYS = st.sampled_from(["needs", "when", "for_each", "as", "timeout", "retry", "on_error", "default"])


def _leaf_step(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["agent", "tool", "set", "emit", "wait", "pipeline"]))
    body: dict[str, Any] = {
        "agent": {"agent": draw(st.sampled_from(["writer", "nobody"])), "prompt": draw(TEMPLATES)},
        "tool": {"tool": draw(st.sampled_from(["time.now", "now", "zz.now"])), "args": {"q": draw(TEMPLATES)}},
        "set": {"set": {draw(st.sampled_from(["log", "nope"])): draw(TEMPLATES)}},
        "emit": {"emit": {"event": draw(st.sampled_from(["go", "stop"])), "data": draw(TEMPLATES)}},
        "wait": {"wait": {"event": draw(st.sampled_from(["go", "never"])), "match": draw(EXPRESSIONS)}},
        "pipeline": {"pipeline": draw(st.sampled_from(["child", "missing", "./nope.yaml", "../out.yaml"]))},
    }[kind]
    return body


@st.composite
def steps(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    composite = ["parallel", "route", "loop"] if depth < 2 else []
    kind = draw(st.sampled_from(["leaf", "leaf", *composite]))
    step: dict[str, Any] = {"id": draw(IDS)}
    if kind == "leaf":
        step.update(_leaf_step(draw))
    elif kind == "parallel":
        step["parallel"] = draw(st.lists(steps(depth + 1), min_size=1, max_size=3))
        step["join"] = draw(st.sampled_from(["all", "first", "bogus", {"at_least": 1}]))
    elif kind == "route":
        step["route"] = {"rules": [{"when": draw(EXPRESSIONS), "choose": draw(st.sampled_from(["x", "y"]))}]}
        step["branches"] = {"x": draw(st.lists(steps(depth + 1), min_size=1, max_size=2))}
    else:
        loop: dict[str, Any] = {"steps": draw(st.lists(steps(depth + 1), min_size=1, max_size=2))}
        if draw(st.booleans()):
            loop["max_iterations"] = draw(st.integers(0, 3))
        step["loop"] = loop
    step.update(draw(st.dictionaries(EXTRA_KEYS, SCALARS, max_size=2)))
    if draw(st.booleans()):
        step["needs"] = draw(st.lists(IDS, max_size=2))
    return step


SKELETON = {
    "flowctl": 1,
    "name": "prop",
    "inputs": {"topic": {"type": "string"}},
    "state": {"log": {"reducer": "append"}},
    "agents": {"writer": {"instruction": "You write."}},
    "servers": {"time": {"command": "uvx"}},
    "pipelines": {"child": {"steps": [{"id": "inner", "set": {}}]}},
}


@SETTINGS
@given(
    body=st.lists(steps(), min_size=1, max_size=4),
    triggers=st.lists(
        st.fixed_dictionaries(
            {"id": IDS, "event": st.sampled_from(["go", "nope"]), "steps": st.lists(steps(1), min_size=1, max_size=2)}
        ),
        max_size=2,
    ),
)
def test_skeletons_with_random_steps_never_raise(
    scratch: Path, body: list[dict[str, Any]], triggers: list[dict[str, Any]]
) -> None:
    document = {**SKELETON, "steps": body, **({"triggers": triggers} if triggers else {})}
    process_bytes(scratch, dump(document))


# --- well-formed documents compile and draw ---------------------------------------------------------------------

CLEAN_TEXT = st.sampled_from(["plain", "{{ inputs.topic }}", "{{ run.id }}", "{{ state.log | length }}"])
CLEAN_LEAVES = st.one_of(
    st.builds(lambda p: {"agent": "writer", "prompt": p}, CLEAN_TEXT),
    st.builds(lambda p: {"tool": "time.now", "args": {"q": p}}, CLEAN_TEXT),
    st.builds(lambda p: {"set": {"log": p}}, CLEAN_TEXT),
    st.just({"emit": {"event": "go", "data": "{{ run.id }}"}}),
    st.just({"wait": {"event": "go", "match": "true", "timeout": "1s"}}),
    st.just({"pipeline": "child", "for_each": [1, 2], "join": "collect"}),
)


def clean_steps() -> st.SearchStrategy[dict[str, Any]]:
    """Steps the checks accept (ids are made unique afterwards), nested parallel groups, routes and loops."""
    return st.recursive(
        CLEAN_LEAVES,
        lambda inner: st.one_of(
            st.builds(lambda b: {"parallel": b, "join": "all"}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(
                lambda b: {"route": {"rules": [{"when": "true", "choose": "x"}], "default": "x"}, "branches": {"x": b}},
                st.lists(inner, min_size=1, max_size=2),
            ),
            st.builds(
                lambda b: {"loop": {"max_iterations": 2, "until": "true", "steps": b}},
                st.lists(inner, min_size=1, max_size=2),
            ),
        ),
        max_leaves=8,
    )


def _number(step: Any, ids: itertools.count) -> Any:
    """Give every step a unique id, depth first."""
    if isinstance(step, dict):
        for key in ("parallel",):
            if key in step:
                step[key] = [_number(s, ids) for s in step[key]]
        if "branches" in step:
            step["branches"] = {k: [_number(s, ids) for s in v] for k, v in step["branches"].items()}
        if "loop" in step:
            step["loop"]["steps"] = [_number(s, ids) for s in step["loop"]["steps"]]
        return {"id": f"s{next(ids)}", **step}
    return step


@SETTINGS
@given(body=st.lists(clean_steps(), min_size=1, max_size=4))
def test_well_formed_documents_compile_and_draw(scratch: Path, body: list[dict[str, Any]]) -> None:
    ids = itertools.count()
    document = {**SKELETON, "steps": [_number(s, ids) for s in body]}
    result = process_bytes(scratch, dump(document))
    assert [str(d) for d in result.diagnostics if d.code != UNKNOWN_EVENT] == []  # a lone wait is only a warning
    assert result.graph is not None


# --- (c) mutated example pipelines, fixtures and test files ------------------------------------------------------

EXAMPLES = Path(__file__).parents[2] / "pipelines"
EXAMPLE_PIPELINES = sorted(p for p in EXAMPLES.glob("*.yaml") if not p.name.endswith((".fixture.yaml", ".test.yaml")))
ODD_TEXT = st.sampled_from(
    [
        *("\u2028", "\u2029", "\x85", "\xa0", "\ufeff", "\x00", "{{", "}}", "{%", "${", "${X", "${X:y}", ":", "- "),
        *("\t", "&a", "*a", "!!python/object", "fеtch", "9" * 5000, "'", '"', "\n  ", "#", "[", "{"),
    ]
)
REPLACEMENTS = st.one_of(
    SCALARS,
    JSONISH,
    ODD_TEXT,
    st.sampled_from(["inputs.items", "inputs", "steps", "{{ loop.index }}", "{% for x in y %}{{ x }}", "5"]),
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*path, i))
    return found


def _mutated(document: Any, path: tuple[Any, ...], action: str, replacement: Any) -> Any:
    if not path:
        return replacement
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "wrap":
        parent[last] = [parent[last]]
    elif action == "rename" and isinstance(parent, dict):
        parent[f"{last}{replacement}" if isinstance(replacement, str) else "x"] = parent.pop(last)
    else:
        parent[last] = replacement
    return document


@pytest.fixture(scope="module")
def examples_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples folder copied, so mutated pipelines sit beside the children and fixtures they name."""
    import shutil

    target = tmp_path_factory.mktemp("examples") / "pipelines"
    shutil.copytree(EXAMPLES, target)
    return target


@SETTINGS
@given(
    example=st.sampled_from(EXAMPLE_PIPELINES),
    choice=st.integers(0, 10_000),
    action=st.sampled_from(["replace", "replace", "delete", "wrap", "rename"]),
    replacement=REPLACEMENTS,
)
def test_mutated_example_pipelines_give_only_diagnostics(
    examples_copy: Path, example: Path, choice: int, action: str, replacement: Any
) -> None:
    document = load_text(example.read_text("utf-8"), example.name).data
    paths = _paths(document)
    mutated = _mutated(document, paths[choice % len(paths)], action, replacement)
    path = examples_copy / f"m{next(_counter)}.yaml"
    path.write_bytes(dump(mutated))
    result = FrontEnd().process(path)
    assert_well_formed(result.diagnostics)


@SETTINGS
@given(example=st.sampled_from(EXAMPLE_PIPELINES), offset=st.integers(0, 100_000), insert=ODD_TEXT)
def test_example_pipelines_with_odd_text_inserted_give_only_diagnostics(
    examples_copy: Path, example: Path, offset: int, insert: str
) -> None:
    text = example.read_text("utf-8")
    at = offset % (len(text) + 1)
    path = examples_copy / f"t{next(_counter)}.yaml"
    written = text[:at] + insert + text[at:]
    path.write_text(written, "utf-8")
    result = FrontEnd().process(path)
    assert_well_formed(result.diagnostics)
    lines = max(1, len(editor_lines(written)))  # every position is on a line an editor shows
    assert all(d.span.line <= lines for d in result.diagnostics if d.span.file == result.doc.file)


FIXTURES_AND_TESTS = sorted(EXAMPLES.glob("*.fixture.yaml")) + sorted(EXAMPLES.glob("*.test.yaml"))


@SETTINGS
@given(
    example=st.sampled_from(FIXTURES_AND_TESTS),
    choice=st.integers(0, 10_000),
    action=st.sampled_from(["replace", "replace", "delete", "wrap", "rename"]),
    replacement=REPLACEMENTS,
)
def test_mutated_fixtures_and_test_files_give_only_diagnostics(
    examples_copy: Path, example: Path, choice: int, action: str, replacement: Any
) -> None:
    from flowctl.interpreter.providers.scripted import FixtureError, load_fixture
    from flowctl.testing.cases import load_cases

    document = load_text(example.read_text("utf-8"), example.name).data
    paths = _paths(document)
    mutated = _mutated(document, paths[choice % len(paths)], action, replacement)
    suffix = ".fixture.yaml" if example.name.endswith(".fixture.yaml") else ".test.yaml"
    path = examples_copy / f"f{next(_counter)}{suffix}"
    path.write_bytes(dump(mutated))
    if suffix == ".fixture.yaml":
        try:
            load_fixture(path)
        except FixtureError as error:
            assert_well_formed(error.diagnostics)
    else:
        _, problems, _ = load_cases([(path, path.parent)], None)
        assert_well_formed([d for d, _ in problems])
