"""The scripted provider and tool pool: matching, sequences, errors, latency, usage, and fixture diagnostics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowctl.dsl.diagnostics import Span
from flowctl.dsl.ir import ServerDef, Transport
from flowctl.interpreter.errors import (
    AuthError,
    BadRequest,
    ContextTooLong,
    MalformedResponse,
    OutputSchemaMismatch,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
    ServerCrashed,
    ServerStartError,
    ToolTimeout,
)
from flowctl.interpreter.providers.llm import CompletionRequest, LLMProvider, Message, ToolCallRequest
from flowctl.interpreter.providers.scripted import (
    Fixture,
    FixtureError,
    NoScriptedReply,
    ScriptedProvider,
    ScriptedToolPool,
    load_fixture,
)
from flowctl.interpreter.tools import ToolPool, ToolResult

pytestmark = pytest.mark.anyio


def request(
    prompt: str = "hello",
    *,
    agent: str = "",
    step: str = "",
    model: str = "gpt-4o-mini",
    schema: dict[str, Any] | None = None,
    history: tuple[Message, ...] = (),
) -> CompletionRequest:
    messages = (Message("system", "be brief"), *history, Message("user", prompt))
    return CompletionRequest(model, messages, output_schema=schema, agent=agent, step=step)


def provider(data: dict[str, Any]) -> ScriptedProvider:
    return ScriptedProvider(Fixture.from_data(data))


def write(tmp_path: Path, text: str, name: str = "fixture.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def server(name: str, allowed: tuple[str, ...] | None = None, idempotent: tuple[str, ...] = ()) -> ServerDef:
    return ServerDef(
        name, Transport.STDIO, Span("p.yaml", 1, 1), command="x", allowed_tools=allowed, idempotent_tools=idempotent
    )


# --- matching ---------------------------------------------------------------------------------------------------


async def test_matches_by_agent_step_model_and_prompt() -> None:
    p = provider(
        {
            "responses": [
                {"agent": "sentiment", "reply": "by agent"},
                {"step": "per_task*", "reply": "by step glob"},
                {"step": "per_task[0]", "reply": "unreachable: the glob above matches first"},
                {"model": "gpt-4o", "reply": "by model"},
                {"prompt": r"(?i)\brefund\b", "reply": "by prompt"},
                {"agent": "research*", "step": "dig", "reply": "by agent glob and step"},
            ],
            "default": "default",
        }
    )
    assert (await p.complete(request(agent="sentiment"))).content == "by agent"
    assert (await p.complete(request(step="per_task[3]"))).content == "by step glob"
    assert (await p.complete(request(model="gpt-4o"))).content == "by model"
    assert (await p.complete(request(model="gpt-4o-mini"))).content == "default"
    assert (await p.complete(request("I want a REFUND now"))).content == "by prompt"
    assert (await p.complete(request(agent="researcher", step="dig"))).content == "by agent glob and step"
    assert (await p.complete(request(agent="researcher", step="other"))).content == "default"


async def test_exact_names_with_glob_characters_match_themselves() -> None:
    p = provider({"responses": [{"step": "per_task[0]", "reply": "first item"}], "default": "other"})
    assert (await p.complete(request(step="per_task[0]"))).content == "first item"
    assert (await p.complete(request(step="per_task0"))).content == "first item"  # still a glob too
    assert (await p.complete(request(step="per_task[1]"))).content == "other"


async def test_prompt_is_searched_in_the_last_user_message_only() -> None:
    p = provider({"responses": [{"prompt": "weather", "reply": "sunny"}], "default": "no"})
    old = (Message("user", "what is the weather"), Message("assistant", "?"))
    assert (await p.complete(request("and tomorrow?", history=old))).content == "no"
    assert (await p.complete(request("the weather tomorrow?", history=old))).content == "sunny"


async def test_rule_order_sequences_and_fall_through() -> None:
    p = provider(
        {
            "responses": [
                {"agent": "writer", "replies": ["draft 1", {"content": "draft 2"}]},
                {"agent": "writer", "reply": "final"},
            ]
        }
    )
    answers = [(await p.complete(request(agent="writer"))).content for _ in range(4)]
    assert answers == ["draft 1", "draft 2", "final", "final"]
    assert p.calls == 4
    assert p.calls_by_rule == {0: 2, 1: 2}
    assert p.unused_rules() == []


async def test_default_reply_and_counters() -> None:
    p = provider({"responses": [{"agent": "a", "reply": "a"}], "default": {"json": {"ok": True}}})
    response = await p.complete(request(agent="b"))
    assert json.loads(response.content or "") == {"ok": True}
    assert p.default_calls == 1
    assert p.calls_by_rule == {0: 0}
    assert [rule.index for rule in p.unused_rules()] == [0]


async def test_no_match_names_agent_step_model_fixture_and_used_up_rules(tmp_path: Path) -> None:
    path = write(tmp_path, 'responses:\n  - agent: writer\n    replies: ["one"]\n  - prompt: "x+"\n    reply: x\n')
    p = ScriptedProvider(load_fixture(path))
    await p.complete(request(agent="writer"))
    with pytest.raises(NoScriptedReply) as caught:
        await p.complete(request("please", agent="writer", step="edit"))
    message = str(caught.value)
    assert "agent 'writer'" in message
    assert "step 'edit'" in message
    assert "model 'gpt-4o-mini'" in message
    assert str(path) in message
    assert "no `default:`" in message
    assert f"matched but used up (1 replies): responses[0] (agent 'writer') at {path}:2:5" in message
    assert "last user message: 'please'" in message
    assert not caught.value.retryable
    assert p.calls == 2


# --- replies ----------------------------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"tasks": {"type": "array", "items": {"type": "string"}}},
    "required": ["tasks"],
}


async def test_json_reply_is_json_text_and_matches_schema() -> None:
    p = provider({"responses": [{"reply": {"json": {"tasks": ["a", "b"]}}}]})
    response = await p.complete(request(schema=SCHEMA))
    assert json.loads(response.content or "") == {"tasks": ["a", "b"]}
    assert response.finish_reason == "stop"
    assert response.model == "gpt-4o-mini"


async def test_output_schema_mismatch_is_raised_like_the_real_provider() -> None:
    p = provider({"responses": [{"agent": "planner", "replies": [{"json": {"tasks": "nope"}}, "not json"]}]})
    with pytest.raises(OutputSchemaMismatch, match=r"does not match the output schema: at \$\.tasks"):
        await p.complete(request(agent="planner", schema=SCHEMA))
    with pytest.raises(OutputSchemaMismatch, match="is not valid JSON"):
        await p.complete(request(agent="planner", schema=SCHEMA))
    assert OutputSchemaMismatch.retryable


async def test_without_schema_json_is_not_checked() -> None:
    p = provider({"responses": [{"reply": {"json": [1, 2]}}]})
    assert (await p.complete(request())).content == "[1, 2]"


async def test_tool_calls_with_mapping_and_raw_arguments() -> None:
    p = provider(
        {
            "responses": [
                {
                    "reply": {
                        "content": "let me check",
                        "tool_calls": [
                            {"name": "get_current_time", "arguments": {"timezone": "UTC"}},
                            {"name": "convert_time", "arguments": '{"time": "12:'},
                            {"name": "ping"},
                        ],
                    }
                }
            ]
        }
    )
    response = await p.complete(request())
    assert response.content == "let me check"
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls == (
        ToolCallRequest("call_1", "get_current_time", '{"timezone": "UTC"}'),
        ToolCallRequest("call_2", "convert_time", '{"time": "12:'),
        ToolCallRequest("call_3", "ping", "{}"),
    )


async def test_tool_call_ids_continue_after_earlier_calls_in_the_conversation() -> None:
    p = provider({"responses": [{"reply": {"tool_calls": [{"name": "t", "arguments": {}}]}}]})
    earlier = (
        Message("assistant", None, (ToolCallRequest("call_1", "t", "{}"), ToolCallRequest("call_2", "t", "{}"))),
        Message("tool", "r", tool_call_id="call_1"),
        Message("tool", "r", tool_call_id="call_2"),
    )
    response = await p.complete(request(history=earlier))
    assert [c.id for c in response.tool_calls] == ["call_3"]


async def test_tool_calls_skip_schema_check() -> None:
    p = provider({"responses": [{"reply": {"tool_calls": [{"name": "t"}]}}]})
    response = await p.complete(request(schema=SCHEMA))
    assert response.tool_calls[0].name == "t"


@pytest.mark.parametrize(
    ("kind", "error_class", "retryable"),
    [
        ("rate_limit", RateLimited, True),
        ("quota", QuotaExhausted, False),
        ("auth", AuthError, False),
        ("bad_request", BadRequest, False),
        ("context_length", ContextTooLong, False),
        ("unavailable", ProviderUnavailable, True),
        ("timeout", ProviderTimeout, True),
        ("malformed", MalformedResponse, True),
    ],
)
async def test_error_kinds_map_to_typed_errors(kind: str, error_class: type[ProviderError], retryable: bool) -> None:
    p = provider({"responses": [{"agent": "flaky", "replies": [{"error": kind}, "recovered"]}]})
    with pytest.raises(error_class) as caught:
        await p.complete(request(agent="flaky", step="s1"))
    assert type(caught.value) is error_class
    assert caught.value.retryable is retryable
    assert "agent 'flaky'" in str(caught.value)
    assert "responses[0]" in str(caught.value)
    assert (await p.complete(request(agent="flaky"))).content == "recovered"


async def test_rate_limit_carries_retry_after_and_custom_message() -> None:
    p = provider(
        {
            "responses": [
                {
                    "replies": [
                        {"error": "rate_limit", "retry_after": 0.25},
                        {"error": "rate_limit", "retry_after": "2s"},
                    ]
                },
                {"reply": {"error": "context_length", "message": "context of gpt-4o-mini exceeded"}},
            ]
        }
    )
    with pytest.raises(RateLimited) as first:
        await p.complete(request())
    with pytest.raises(RateLimited) as second:
        await p.complete(request())
    with pytest.raises(ContextTooLong, match="context of gpt-4o-mini exceeded"):
        await p.complete(request())
    assert first.value.retry_after == 0.25
    assert second.value.retry_after == 2.0


# --- latency and usage ------------------------------------------------------------------------------------------


async def test_latency_of_rule_and_reply_delays_the_answer() -> None:
    p = provider({"responses": [{"latency": "50ms", "replies": ["rule latency", {"content": "own", "latency": 0.08}]}]})
    for expected in (0.05, 0.08):
        start = anyio.current_time()
        await p.complete(request())
        assert anyio.current_time() - start >= expected * 0.95


async def test_concurrent_calls_consume_each_reply_once() -> None:
    replies = [f"r{i}" for i in range(20)]
    p = provider({"responses": [{"latency": "10ms", "replies": replies}], "default": "extra"})
    answers: list[str] = []

    async def call() -> None:
        answers.append((await p.complete(request())).content or "")

    async with anyio.create_task_group() as group:
        for _ in range(25):
            group.start_soon(call)
    assert sorted(answers) == sorted([*replies, *["extra"] * 5])
    assert (p.calls, p.calls_by_rule, p.default_calls) == (25, {0: 20}, 5)


async def test_usage_is_estimated_from_text_lengths() -> None:
    p = provider({"responses": [{"reply": "x" * 40}]})
    response = await p.complete(request("u" * 92))  # "be brief" (8) + 92 = 100 chars
    assert (response.usage.input_tokens, response.usage.output_tokens) == (25, 10)


async def test_usage_estimate_is_at_least_one_and_can_be_given() -> None:
    p = provider(
        {"responses": [{"replies": ["", {"content": "hi", "usage": {"input_tokens": 1000, "output_tokens": 7}}]}]}
    )
    first = await p.complete(CompletionRequest("m", ()))
    assert (first.usage.input_tokens, first.usage.output_tokens) == (1, 1)
    second = await p.complete(request())
    assert (second.usage.input_tokens, second.usage.output_tokens) == (1000, 7)


async def test_partial_usage_estimates_the_rest() -> None:
    p = provider({"responses": [{"reply": {"content": "y" * 8, "usage": {"input_tokens": 5}}}]})
    response = await p.complete(request())
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 2)


async def test_satisfies_the_provider_protocol() -> None:
    p = provider({"default": "ok"})
    assert isinstance(p, LLMProvider)
    await p.aclose()


# --- fixture files ----------------------------------------------------------------------------------------------


def fixture_error(tmp_path: Path, text: str, name: str = "fixture.yaml") -> tuple[str, str]:
    path = write(tmp_path, text, name)
    with pytest.raises(FixtureError) as caught:
        load_fixture(path)
    assert caught.value.code == "invalid-fixture"
    return str(caught.value), str(path)


def test_loads_the_documented_example(tmp_path: Path) -> None:
    text = Path(__file__).resolve().parents[2].joinpath("docs", "scripted.md").read_text()
    block = re.search(r"## The format at a glance\n\n```yaml\n(.*?)```", text, re.S)
    assert block is not None
    fixture = load_fixture(write(tmp_path, block.group(1)))
    assert [rule.agent for rule in fixture.rules] == ["sentiment", None, "researcher", "flaky"]
    assert fixture.rules[3].latency == 0.05
    assert set(fixture.tools) == {"time.get_current_time", "files.read_file"}


def test_unknown_key_has_position_and_did_you_mean(tmp_path: Path) -> None:
    message, path = fixture_error(tmp_path, "responses:\n  - agent: a\n    reply: x\n    lantency: 5ms\n")
    assert f"{path}:4:5: unknown key 'lantency' in rule responses[0] (did you mean 'latency'?)" in message


def test_bad_error_kind_has_position_and_did_you_mean(tmp_path: Path) -> None:
    message, path = fixture_error(tmp_path, "responses:\n  - replies:\n      - {error: rate_limited}\n")
    assert f"{path}:3:17: responses[0].replies[0].error: unknown error kind 'rate_limited'" in message
    assert "did you mean 'rate_limit'?" in message


def test_bad_duration_has_position(tmp_path: Path) -> None:
    message, path = fixture_error(tmp_path, "responses:\n  - reply: x\n    latency: soon\n")
    assert f"{path}:3:14: responses[0].latency: not a duration: 'soon'" in message


def test_non_mapping_file(tmp_path: Path) -> None:
    message, path = fixture_error(tmp_path, "- reply: x\n")
    assert f"{path}:1:1: expected a mapping for the fixture, got list" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        "responses:\n"
        "  - agent: a\n"
        "    replys: [x]\n"
        "  - replies:\n"
        "      - {error: nope}\n"
        "      - {content: x, latency: -1}\n"
        "      - 42\n"
        "      - {content: a, json: b}\n"
        "      - {tool_calls: [{arguments: 3}]}\n"
        "  - {reply: x, prompt: '('}\n"
        "defualt: x\n"
        "tools:\n"
        "  nodot: {text: a}\n"
        "  s.t: [{valeu: 1}]\n"
        "  s.u: {fault: crash}\n"
    )
    message, path = fixture_error(tmp_path, text)
    expected = [
        f"{path}:2:5: responses[0]: a rule needs exactly one of `reply`",
        f"{path}:3:5: unknown key 'replys'",
        f"{path}:5:17: responses[1].replies[0].error: unknown error kind 'nope'",
        f"{path}:6:31: responses[1].replies[1].latency: a duration cannot be negative",
        f"{path}:7:9: expected a reply (a string or a mapping) for responses[1].replies[2], got integer",
        f"{path}:8:9: responses[1].replies[3]: a reply needs one of `content`, `json`, `tool_calls`, `error`",
        f"{path}:9:23: missing required key 'name'",
        f"{path}:9:35: expected a mapping or a JSON string for responses[1].replies[4].tool_calls[0].arguments",
        f"{path}:10:24: responses[2].prompt: not a valid regular expression",
        f"{path}:11:1: unknown key 'defualt' in the fixture (did you mean 'default'?)",
        f"{path}:13:3: tools: bad key 'nodot'",
        f"{path}:14:10: unknown key 'valeu' in tool result tools.s.t[0] (did you mean 'value'?)",
        f"{path}:15:16: tools.s.u.fault: unknown fault 'crash'",
    ]
    for line in expected:
        assert line in message, line
    assert "(14 problems)" in message


def test_json_fixture_positions(tmp_path: Path) -> None:
    text = '{\n  "responses": [\n    {"agent": "a", "reply": "x", "stepp": "s"}\n  ]\n}\n'
    message, path = fixture_error(tmp_path, text, "fixture.json")
    assert f"{path}:3:34: unknown key 'stepp' in rule responses[0] (did you mean 'step'?)" in message


def test_json_fixture_loads(tmp_path: Path) -> None:
    data = {"responses": [{"agent": "a", "replies": [{"json": {"x": 1}}]}], "default": "ok"}
    fixture = load_fixture(write(tmp_path, json.dumps(data), "fixture.json"))
    assert fixture.rules[0].replies[0].json_text == '{"x": 1}'


def test_yaml_syntax_errors_and_missing_files_are_fixture_errors(tmp_path: Path) -> None:
    message, path = fixture_error(tmp_path, "responses: [\n")
    assert f"{path}:1:13" in message
    with pytest.raises(FixtureError, match=r"missing\.yaml"):
        load_fixture(tmp_path / "missing.yaml")


def test_from_data_reports_paths() -> None:
    with pytest.raises(FixtureError) as caught:
        Fixture.from_data({"responses": [{"reply": {"error": "quota", "retry_after": "later"}}]}, file="<test>")
    assert "<test>:1:1: responses[0].reply.retry_after: not a duration: 'later'" in str(caught.value)
    assert caught.value.span == Span("<test>", 1, 1)


# --- tools ------------------------------------------------------------------------------------------------------

TOOLS = {
    "tools": {
        "time.get_current_time": {"value": {"datetime": "2026-01-01T12:00:00Z"}},
        "time.convert_time": {"text": "12:00"},
        "files.read_file": [{"text": "a"}, {"error": "no such file"}],
        "files.stat": {"value": 3, "text": "three"},
        "search.query": [{"fault": "tool_timeout"}, {"fault": "server_crashed"}, {"fault": "server_start"}],
        "slow.wait": {"text": "done", "latency": "50ms"},
    }
}


async def test_tool_pool_results_in_turn_and_errors() -> None:
    pool = ScriptedToolPool(Fixture.from_data(TOOLS))
    assert isinstance(pool, ToolPool)
    time = server("time")
    now = await pool.call_tool(time, "get_current_time", {"timezone": "UTC"})
    assert now == ToolResult('{"datetime": "2026-01-01T12:00:00Z"}', {"datetime": "2026-01-01T12:00:00Z"})
    assert await pool.call_tool(time, "get_current_time", {}) == now  # a single result is reused
    assert await pool.call_tool(time, "convert_time", {}) == ToolResult("12:00", "12:00")
    files = server("files")
    assert await pool.call_tool(files, "stat", {}) == ToolResult("three", 3)
    assert await pool.call_tool(files, "read_file", {}) == ToolResult("a", "a")
    assert await pool.call_tool(files, "read_file", {}) == ToolResult("no such file", "no such file", is_error=True)
    used_up = await pool.call_tool(files, "read_file", {})
    assert used_up.is_error
    assert "used up" in used_up.text
    assert pool.calls_by_tool["files.read_file"] == 2
    assert pool.calls == 7
    await pool.aclose()


async def test_tool_pool_unscripted_tool_is_a_tool_error() -> None:
    pool = ScriptedToolPool(Fixture.from_data(TOOLS))
    result = await pool.call_tool(server("files"), "write_file", {})
    assert result == ToolResult("no scripted result for files.write_file", None, is_error=True)


async def test_tool_pool_lists_scripted_tools_filtered_by_allowed_tools() -> None:
    pool = ScriptedToolPool(Fixture.from_data(TOOLS))
    assert pool.scripted_servers() == {"time", "files", "search", "slow"}
    tools = await pool.list_tools(server("time"))
    assert [t.name for t in tools] == ["get_current_time", "convert_time"]
    assert tools[0].input_schema == {"type": "object"}
    assert [t.name for t in await pool.list_tools(server("time", allowed=("convert_time",)))] == ["convert_time"]
    assert await pool.list_tools(server("other")) == []


async def test_tool_pool_faults_and_latency() -> None:
    pool = ScriptedToolPool(Fixture.from_data(TOOLS))
    with pytest.raises(ToolTimeout) as timeout:
        await pool.call_tool(server("search", idempotent=("query",)), "query", {})
    assert timeout.value.retryable
    with pytest.raises(ServerCrashed) as crashed:
        await pool.call_tool(server("search"), "query", {})
    assert not crashed.value.retryable
    with pytest.raises(ServerStartError):
        await pool.call_tool(server("search"), "query", {})
    start = anyio.current_time()
    assert (await pool.call_tool(server("slow"), "wait", {})).text == "done"
    assert anyio.current_time() - start >= 0.05 * 0.95
