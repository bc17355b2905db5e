"""The step-kind registry (flowctl/dsl/kinds.py) and everything that must agree with it: the JSON schema, the
compiler, the interpreter's handlers, the golden corpus and the reference in docs/dsl.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flowctl.dsl import ir
from flowctl.dsl.frontend import FrontEnd
from flowctl.dsl.index import build_index
from flowctl.dsl.kinds import KINDS, STEP_KINDS, step_kind, step_kinds
from flowctl.dsl.loader import load_file
from flowctl.dsl.schema import load_schema
from flowctl.interpreter.engine.handlers import HANDLERS

ROOT = Path(__file__).parents[2]
VALID = ROOT / "tests" / "dsl" / "golden" / "valid"


def _compiled_kinds() -> dict[str, set[type]]:
    """The body types each kind compiled to across the valid golden corpus."""
    found: dict[str, set[type]] = {}
    for path in sorted(VALID.rglob("*.yaml")):
        result = FrontEnd().process(path)
        assert result.graph is not None, path
        for pipeline in (result.graph.root, *result.graph.pipelines.values()):
            for step in pipeline.all_steps():
                found.setdefault(step.kind.value, set()).add(type(step.body))
    return found


def _golden_kinds() -> set[str]:
    kinds: set[str] = set()
    for path in VALID.rglob("*.yaml"):
        index = build_index(load_file(path).data)
        for pipeline in index.pipelines() if index else ():
            kinds.update(step.kind for step in pipeline.ordered)
    return kinds


def test_every_kind_has_a_schema_definition_a_compiler_a_handler_a_golden_case_and_a_doc_section() -> None:
    defs = load_schema()["$defs"]
    docs = (ROOT / "docs" / "dsl.md").read_text(encoding="utf-8")
    compiled = _compiled_kinds()
    golden = _golden_kinds()
    handler_kinds = {kind.value for kind in HANDLERS}
    problems = []
    for name, spec in KINDS.items():
        if spec.schema_def not in defs or name not in defs[spec.schema_def]["required"]:
            problems.append(f"{name}: no schema definition $defs/{spec.schema_def} requiring {name!r}")
        if compiled.get(name) != {spec.body}:
            problems.append(f"{name}: compiled to {compiled.get(name)}, the registry says {spec.body.__name__}")
        if name not in handler_kinds:
            problems.append(f"{name}: no handler in flowctl/interpreter/engine/handlers.py")
        if name not in golden:
            problems.append(f"{name}: no valid golden case in tests/dsl/golden/valid")
        if not re.search(rf"^### {re.escape(name)} step\b", docs, re.MULTILINE):
            problems.append(f"{name}: no '### {name} step' section in docs/dsl.md")
    assert problems == []
    # ...and nothing on either side that the registry does not declare
    assert handler_kinds == set(STEP_KINDS)
    assert {kind.value for kind in ir.NodeKind} == set(STEP_KINDS)
    assert {name for name in defs if name.endswith("Step")} == {spec.schema_def for spec in KINDS.values()}


def _dispatch_chain(node: dict) -> list[str]:
    """The kinds the schema's `step` definition dispatches on, in its if/then/else order."""
    order = []
    while "if" in node:
        order.append(node["if"]["required"][0])
        assert node["then"] == {"$ref": f"#/$defs/{KINDS[order[-1]].schema_def}"}
        node = node["else"]
    assert [alt["required"][0] for alt in node["anyOf"]] == list(STEP_KINDS)
    return order


def test_the_schema_dispatches_on_the_kinds_in_the_registry_order() -> None:
    assert _dispatch_chain(dict(load_schema()["$defs"]["step"])) == list(STEP_KINDS)
    primary = [name for name, spec in KINDS.items() if spec.primary]
    assert STEP_KINDS[: len(primary)] == tuple(primary), "primary kinds come first: `emit`/`set` decide only alone"


@pytest.mark.parametrize("kind", STEP_KINDS)
def test_a_step_is_of_its_one_kind_key_and_emit_or_set_only_decide_alone(kind: str) -> None:
    assert step_kind({"id": "s", kind: None}) == kind
    if KINDS[kind].primary:
        assert step_kind({"id": "s", kind: None, "emit": {}, "set": {}}) == kind
    assert step_kind({"id": "s", "emit": {}, "set": {}}) == "emit"  # `set` on an emit step is its state update
    others = [k for k, spec in KINDS.items() if spec.primary and k != kind]
    if KINDS[kind].primary:
        assert step_kinds({"id": "s", kind: None, others[0]: None}) == sorted([kind, others[0]], key=STEP_KINDS.index)


def test_fan_out_keys_are_where_the_registry_says() -> None:
    defs = load_schema()["$defs"]
    for name, spec in KINDS.items():
        assert ("for_each" in defs[spec.schema_def]["properties"]) == spec.fan_out, name
