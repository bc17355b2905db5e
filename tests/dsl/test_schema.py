"""Stage 2, schema: the shipped JSON schema and the diagnostics `validate_schema` derives from it."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from flowctl.dsl.diagnostics import Diagnostic
from flowctl.dsl.loader import LoadedDocument, SourceMap, load_text
from flowctl.dsl.schema import STEP_KINDS, load_schema, schema_text, step_kinds, validate_schema

FULL_PIPELINE = """\
# yaml-language-server: $schema=./pipeline.schema.json
flowctl: 1
name: full.example-1
description: Every step kind and every top-level block.
inputs:
  text: {type: string, minLength: 1, description: The text.}
  tz: {type: string, default: UTC}
  limits:
    type: object
    properties:
      max: {type: integer, minimum: 1, maximum: 100}
      tags: {type: array, items: {type: string, pattern: "^[a-z]+$"}}
    required: [max]
  mode: {type: [string, "null"], enum: [fast, slow, null], default: fast}
outputs:
  summary: "{{ steps.summary.output }}"
  literal: [1, 2, 3]
models:
  default:
    provider: openai
    model: gpt-4o-mini
    base_url: "${OPENAI_BASE_URL}"
    api_key_env: OPENAI_API_KEY
    temperature: 0.2
    max_tokens: 800
    top_p: 1
    seed: 7
    timeout: 60s
    circuit_breaker: {failure_threshold: 5, reset_after: 30s}
    price: {input_per_mtok: 0.15, output_per_mtok: 0.60}
  offline: {provider: scripted, fixture: ./fixtures/run.json}
servers:
  time: {command: uvx, args: [mcp-server-time], env: {TZ: UTC}, transport: stdio, read_timeout_seconds: 60}
  docs: {url: "https://docs.example.com/mcp", headers: {Authorization: "Bearer ${DOCS_TOKEN}"}}
agents:
  writer: {instruction: You write one short paragraph., model: default}
  analyst:
    instruction: "Analyse {{ inputs.text }}"
    servers: [time, docs]
    tools: [time.get_current_time, search]
    max_iterations: 5
    output_schema: {type: object, properties: {score: {type: number}}}
  router: {instruction: Pick branches., model: offline}
state:
  log: {reducer: append, default: []}
  facts: {reducer: merge}
  last: {}
concurrency: 8
defaults:
  retry: {max_attempts: 3, backoff: exponential, initial_delay: 1s, max_delay: 30s, jitter: true}
  timeout: 2m
  on_error: fail
pipelines:
  shard_process:
    description: Process one shard.
    inputs: {chunk: {type: array}}
    outputs: {count: "{{ inputs.chunk | length }}"}
    state: {seen: {reducer: replace, default: 0}}
    steps:
      - {id: count, set: {seen: "{{ inputs.chunk | length }}"}}
    finally:
      - {id: done, emit: {event: shard_done}}
steps:
  - id: now
    tool: time.get_current_time
    args: {timezone: "{{ inputs.tz }}"}
    timeout: 10s
    deadline: 1.5
    retry: {max_attempts: 2}
  - id: guide
    resource: {server: docs, uri: "docs://{page}", arguments: {page: "{{ inputs.tz }}"}}
    for_each: [a, b]
  - id: summary
    agent: writer
    prompt: "Summarise: {{ inputs.text }}"
    needs: [now]
    when: "inputs.text | length > 0"
    set: {log: "{{ output }}"}
    emit: {event: summarised, data: {text: "{{ output }}"}}
    fallback: {model: offline}
    on_error: continue
    default: ""
    description: The summary.
  - id: analyses
    parallel:
      - {id: sentiment, agent: analyst, prompt: "{{ inputs.text }}"}
      - id: entities
        agent: analyst
        prompt: "{{ inputs.text }}"
        fallback: {steps: [{id: fb, set: {last: x}}]}
    join: {at_least: 1}
    max_concurrency: 4
  - id: per_item
    pipeline: shard_process
    for_each: "{{ [[1], [2]] }}"
    as: chunk
    inputs: {chunk: "{{ chunk }}"}
    max_concurrency: 5
    join: collect
  - {id: literal_fan, tool: docs.search, for_each: [a, b], args: "{{ {'q': item} }}"}
  - {id: child_file, pipeline: ./children/closure.yaml, inputs: "{{ steps.per_item.output }}"}
  - id: analyse
    route:
      rules:
        - {when: "inputs.text | length < 200", choose: rapid}
        - {when: "false", choose: [rapid, detailed]}
      agent: router
      prompt: "Pick the analyses for: {{ inputs.text[:300] }}"
      multiple: true
      default: detailed
      on_unknown: report
    branches:
      rapid: [{id: quick, agent: analyst, prompt: "..."}]
      detailed: [{id: deep, agent: analyst, prompt: "..."}]
  - id: refine
    loop:
      max_iterations: 4
      until: "steps.judge.output.score >= 8"
      steps:
        - {id: draft, agent: writer, prompt: "{{ loop.previous.draft | default('') }}"}
        - {id: judge, agent: analyst, prompt: "Score: {{ steps.draft.output }}"}
  - id: approval
    wait: {event: approved, timeout: 1h, match: "event.data.request_id == run.id"}
    on_error: continue
    default: {approved: false}
  - {id: announce, emit: {event: ingested, data: {count: "{{ steps.per_item.output | length }}"}}}
  - {id: record, set: {log: validated}, when: true}
triggers:
  - id: recover
    failed: now
    once: true
    steps:
      - {id: fallback_source, agent: writer, prompt: "Use the cached copy instead."}
  - {id: on_done, completed: summary, steps: [{id: note, set: {facts: {done: true}}}]}
  - {id: on_event, event: ingested, steps: [{id: ack, emit: {event: acked}}]}
  - id: big_batch
    when: "state.log | length > 1000"
    steps:
      - {id: shard, pipeline: shard_process, for_each: "{{ state.log | batch(100) | list }}", as: chunk}
finally:
  - {id: cleanup, agent: writer, prompt: "Run ended: {{ run.status }}"}
"""


def check(text: str) -> list[Diagnostic]:
    """Load YAML text (which must load cleanly) and validate it against the schema."""
    doc = load_text(textwrap.dedent(text), "p.yaml")
    assert doc.diagnostics == [], doc.diagnostics
    return validate_schema(doc)


def only(diagnostics: list[Diagnostic]) -> Diagnostic:
    assert len(diagnostics) == 1, [str(d) for d in diagnostics]
    return diagnostics[0]


def at(diagnostic: Diagnostic) -> tuple[str, int, int]:
    return diagnostic.code, diagnostic.span.line, diagnostic.span.col


def minimal(steps: str, extra: str = "") -> str:
    """A valid pipeline around the given `steps:` block (indented two spaces under `steps:`)."""
    return f"flowctl: 1\nname: t\n{extra}steps:\n{textwrap.indent(textwrap.dedent(steps), '  ')}"


# --- the schema itself ----------------------------------------------------------------------------------------


def test_schema_is_valid_draft_2020_12() -> None:
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"] and schema["description"]
    Draft202012Validator.check_schema(schema)


def _property_schemas(node: Any, where: str = "#") -> Iterator[tuple[str, Any]]:
    """Every (location, schema) declared under a `properties` keyword, anywhere in the schema."""
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            yield f"{where}/properties/{name}", sub
        for key, sub in node.items():
            if key == "properties":
                for name, prop in sub.items():
                    yield from _property_schemas(prop, f"{where}/properties/{name}")
            else:
                yield from _property_schemas(sub, f"{where}/{key}")
    elif isinstance(node, list):
        for index, sub in enumerate(node):
            yield from _property_schemas(sub, f"{where}/{index}")


def test_every_property_has_a_description_for_editors() -> None:
    undocumented = [
        where for where, sub in _property_schemas(load_schema()) if "description" not in sub and "/if/" not in where
    ]
    assert undocumented == []


def test_every_step_kind_has_a_closed_definition() -> None:
    defs = load_schema()["$defs"]
    common = {"id", "needs", "when", "set", "emit", "retry", "timeout", "deadline", "fallback"}
    common |= {"on_error", "default", "description"}
    for kind in STEP_KINDS:
        definition = defs[f"{kind}Step"]
        assert definition["additionalProperties"] is False
        assert {"id", kind} <= set(definition["required"])
        assert common <= set(definition["properties"])
    fan_out = {"for_each", "as", "max_concurrency", "join"}
    for kind in STEP_KINDS:
        has_fan_out = fan_out <= set(defs[f"{kind}Step"]["properties"])
        assert has_fan_out == (kind in {"agent", "tool", "resource", "pipeline"}), kind


def test_every_pattern_has_words_for_messages() -> None:
    from flowctl.dsl.schema import _PATTERN_TEXT

    patterns = {m for m in _walk_values(load_schema(), "pattern")}
    assert patterns <= set(_PATTERN_TEXT)


def _walk_values(node: Any, keyword: str) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, sub in node.items():
            if key == keyword and isinstance(sub, str):
                yield sub
            elif key != "properties" or not isinstance(sub, dict):
                yield from _walk_values(sub, keyword)
            else:
                for prop in sub.values():
                    yield from _walk_values(prop, keyword)
    elif isinstance(node, list):
        for sub in node:
            yield from _walk_values(sub, keyword)


def test_schema_text_is_the_shipped_json() -> None:
    assert '"$id"' in schema_text()


# --- valid documents ------------------------------------------------------------------------------------------


def _kinds_used(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if "id" in node and any(kind in node for kind in STEP_KINDS):
            found.update(step_kinds(node))
        for sub in node.values():
            found |= _kinds_used(sub)
    elif isinstance(node, list):
        for sub in node:
            found |= _kinds_used(sub)
    return found


def test_full_pipeline_with_every_step_kind_is_valid() -> None:
    doc = load_text(FULL_PIPELINE, "full.yaml")
    assert doc.diagnostics == []
    assert _kinds_used(doc.data) == set(STEP_KINDS)
    assert validate_schema(doc) == []


def test_mcp_block_with_mcp_agent_fields_is_accepted() -> None:
    text = """\
        flowctl: 1
        name: fetcher
        mcp:
          servers:
            fetch:
              name: fetch
              description: Fetch web pages
              command: uvx
              args: [mcp-server-fetch]
              transport: stdio
              read_timeout_seconds: 120
              http_timeout_seconds: 30
              read_transport_sse_timeout_seconds: 300
              terminate_on_close: true
              auth: {api_key: "${KEY}"}
              roots: [{uri: "file:///tmp", name: tmp, server_uri_alias: "file:///data"}]
              env: {DEBUG: "1"}
            remote: {url: "https://example.com/mcp", transport: sse, headers: {X-Token: "${TOKEN}"}}
        steps:
          - {id: get, tool: fetch.fetch, args: {url: "https://example.com"}}
        """
    assert check(text) == []


def test_emit_and_set_are_common_keys_unless_they_are_alone() -> None:
    text = minimal(
        """\
        - {id: a, agent: w, prompt: p, emit: {event: e}, set: {k: 1}}
        - {id: b, emit: {event: e}, set: {k: 1}}
        - {id: c, set: {k: 1}}
        """
    )
    assert check(text) == []


# --- unknown keys ---------------------------------------------------------------------------------------------


def test_unknown_top_level_key_points_at_the_key_with_did_you_mean() -> None:
    diagnostic = only(check("flowctl: 1\nname: t\ndescripton: x\nsteps:\n  - {id: a, set: {k: 1}}\n"))
    assert at(diagnostic) == ("unknown-key", 3, 1)
    assert diagnostic.message == "unknown key 'descripton' in the pipeline"
    assert diagnostic.hint == "did you mean 'description'?"


def test_unknown_key_in_a_nested_parallel_step() -> None:
    text = minimal(
        """\
        - id: fan
          parallel:
            - {id: a, agent: w, prompt: x}
            - id: b
              agent: w
              promtp: y
        """
    )
    diagnostics = check(text)
    unknown = [d for d in diagnostics if d.code == "unknown-key"]
    assert at(only(unknown)) == ("unknown-key", 9, 9)
    assert unknown[0].message == "unknown key 'promtp' in step 'b'"
    assert unknown[0].hint == "did you mean 'prompt'?"
    missing = only([d for d in diagnostics if d.code == "missing-key"])
    assert missing.message == "missing one of 'prompt' or 'prompt_file' in step 'b'"


def test_fan_out_keys_are_unknown_on_a_parallel_step() -> None:
    text = minimal("- {id: p, parallel: [{id: a, set: {k: 1}}], for_each: [1]}\n")
    diagnostic = only(check(text))
    assert diagnostic.code == "unknown-key"
    assert diagnostic.message == "unknown key 'for_each' in step 'p'"


def test_unknown_keys_in_servers_and_agents_name_the_entry() -> None:
    text = minimal(
        "- {id: a, set: {k: 1}}\n",
        extra="servers:\n  time: {comand: uvx}\nagents:\n  writer: {instruction: hi, servres: [time]}\n",
    )
    messages = sorted(d.message for d in check(text))
    assert "unknown key 'comand' in server 'time'" in messages
    assert "unknown key 'servres' in agent 'writer'" in messages
    assert "missing one of 'command' or 'url' in server 'time'" in messages


# --- required keys and the version ----------------------------------------------------------------------------


def test_missing_name() -> None:
    diagnostic = only(check("flowctl: 1\nsteps:\n  - {id: a, set: {k: 1}}\n"))
    assert at(diagnostic) == ("missing-key", 1, 1)
    assert diagnostic.message == "missing required key 'name' in the pipeline"


def test_missing_version_is_reported_and_checking_goes_on() -> None:
    diagnostics = check("name: t\nsteps: []\n")
    assert [d.code for d in diagnostics] == ["missing-key", "invalid-value"]
    assert "'flowctl'" in diagnostics[0].message


def test_unsupported_version_stops_further_checks() -> None:
    diagnostic = only(check("flowctl: 2\nnome: t\nsteps: 3\n"))
    assert at(diagnostic) == ("unsupported-version", 1, 10)
    assert "2" in diagnostic.message


def test_loop_without_bound_is_an_unbounded_loop() -> None:
    diagnostic = only(check(minimal("- {id: l, loop: {steps: [{id: a, set: {k: 1}}]}}\n")))
    assert at(diagnostic) == ("unbounded-loop", 4, 13)


# --- types and values -----------------------------------------------------------------------------------------


def test_wrong_type_suggests_quoting_a_number() -> None:
    diagnostic = only(check("flowctl: 1\nname: 3.10\nsteps:\n  - {id: a, set: {k: 1}}\n"))
    assert at(diagnostic) == ("wrong-type", 2, 7)
    assert diagnostic.message == "expected a string, got a number (3.10)"
    assert diagnostic.hint == "quote it: '3.10'"


def test_a_wrong_type_is_one_diagnostic() -> None:
    diagnostic = only(check(minimal("- {id: a, set: {k: 1}, on_error: 3}\n")))
    assert diagnostic.code == "wrong-type"
    assert diagnostic.message == "expected a string, got an integer (3)"


def test_needs_as_a_string_suggests_a_list() -> None:
    diagnostic = only(check(minimal("- {id: a, set: {k: 1}}\n- {id: b, set: {k: 1}, needs: a}\n")))
    assert at(diagnostic) == ("wrong-type", 5, 33)
    assert diagnostic.hint == "write it as a list: ['a']"


def test_bad_join_policy_lists_the_choices() -> None:
    text = minimal("- id: p\n  parallel: [{id: a, set: {k: 1}}]\n  join: sometimes\n")
    diagnostic = only(check(text))
    assert at(diagnostic) == ("invalid-value", 6, 11)
    assert "'sometimes'" in diagnostic.message
    assert "one of 'all', 'collect' or 'first'" in diagnostic.message


def test_bad_enum_has_did_you_mean() -> None:
    diagnostic = only(check(minimal("- {id: a, set: {k: 1}, on_error: contnue}\n")))
    assert diagnostic.message == "invalid value 'contnue' for 'on_error': expected 'fail' or 'continue'"
    assert diagnostic.hint == "did you mean 'continue'?"


def test_bad_duration() -> None:
    diagnostic = only(check(minimal("- id: a\n  set: {k: 1}\n  timeout: 5 minutes\n")))
    assert at(diagnostic) == ("invalid-value", 6, 14)
    assert "'5 minutes'" in diagnostic.message
    assert "a duration such as 500ms, 30s, 5m, 1h" in diagnostic.message


def test_durations_accept_units_and_seconds() -> None:
    steps = "".join(f"- {{id: s{i}, set: {{k: 1}}, timeout: {d}}}\n" for i, d in enumerate(["500ms", 1.5, 0]))
    assert check(minimal(steps)) == []


def test_bad_step_id_pattern() -> None:
    diagnostic = only(check(minimal("- {id: 2bad, set: {k: 1}}\n")))
    assert at(diagnostic) == ("invalid-value", 4, 10)
    assert "'2bad'" in diagnostic.message
    assert "not starting with a digit" in diagnostic.message


def test_bad_input_name_points_at_the_key() -> None:
    diagnostic = only(check(minimal("- {id: a, set: {k: 1}}\n", extra="inputs:\n  my-input: {type: string}\n")))
    assert at(diagnostic) == ("invalid-value", 4, 3)
    assert "'my-input'" in diagnostic.message


def test_servers_and_mcp_together_are_refused() -> None:
    extra = "servers: {a: {command: x}}\nmcp:\n  servers: {b: {command: y}}\n"
    diagnostic = only(check(minimal("- {id: a, set: {k: 1}}\n", extra=extra)))
    assert at(diagnostic) == ("invalid-value", 4, 1)


# --- step kinds and triggers ----------------------------------------------------------------------------------


def test_step_without_kind() -> None:
    diagnostic = only(check(minimal("- id: a\n  agnet: writer\n  prompt: hi\n")))
    assert at(diagnostic) == ("unknown-step-kind", 4, 5)
    assert diagnostic.hint == "did you mean 'agent' instead of 'agnet'?"


def test_step_with_two_kinds_is_one_diagnostic() -> None:
    diagnostic = only(check(minimal("- id: a\n  agent: w\n  tool: t.x\n")))
    assert at(diagnostic) == ("multiple-step-kinds", 6, 5)  # the second kind key, `tool:`
    assert "'agent', 'tool'" in diagnostic.message


def test_trigger_needs_exactly_one_condition() -> None:
    extra_none = "triggers:\n  - {id: t, steps: [{id: b, set: {k: 1}}]}\n"
    none = only(check(minimal("- {id: a, set: {k: 1}}\n", extra=extra_none)))
    assert none.code == "missing-key"
    assert none.message == "missing one of 'event', 'failed', 'completed' or 'when' in trigger 't'"
    extra_two = "triggers:\n  - {id: t, event: e, failed: a, steps: [{id: b, set: {k: 1}}]}\n"
    two = only(check(minimal("- {id: a, set: {k: 1}}\n", extra=extra_two)))
    assert at(two) == ("invalid-value", 4, 23)
    assert "several of 'event' and 'failed'" in two.message


# --- robustness -----------------------------------------------------------------------------------------------


def _deep_steps(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {"flowctl": 1, "name": "n", "steps": []}
    current = root["steps"]
    for index in range(depth):
        inner: list[Any] = []
        current.append({"id": f"s{index}", "parallel": inner})
        current = inner
    return root


ODD_DATA = [
    None,
    [],
    "text",
    3.5,
    True,
    {},
    {1: 2, None: 3},
    {"flowctl": 1, "steps": [None, 1, "x", [], {"id": None}, {1: 2}, {"agent": {}, "tool": []}]},
    {"flowctl": 1, "name": "n", "steps": {"a": 1}, "triggers": {"x": 1}, "pipelines": [1], "mcp": "x"},
    {"flowctl": 1, "name": "n", "steps": [{"id": "a", "route": [], "branches": {"x": {}}, "loop": 5}]},
    {"flowctl": 1, "name": float("nan"), "steps": [{"id": "a", "set": {"x": float("inf")}, "timeout": -1}]},
    {"flowctl": 1, "name": "n", "steps": [{"id": "a", "agent": "w", "prompt": object(), "needs": [{}, {}]}]},
    {"flowctl": "1"},
    _deep_steps(3000),
]


@pytest.mark.parametrize("data", ODD_DATA, ids=lambda d: type(d).__name__)
def test_validate_schema_never_raises(data: Any) -> None:
    doc = LoadedDocument("odd.yaml", "", data, SourceMap("odd.yaml"), [])
    diagnostics = validate_schema(doc)
    assert all(isinstance(d, Diagnostic) for d in diagnostics)
    assert (data is None) == (diagnostics == [])


def test_results_are_sorted_and_deterministic() -> None:
    text = minimal("- {id: 2bad, agnet: x}\n- {id: b, set: 3, timeout: soon}\n", extra="nmae: x\n")
    first = check(text)
    assert first == check(text)
    assert first == sorted(first, key=lambda d: d.sort_key)
