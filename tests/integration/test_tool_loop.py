"""The agent tool loop in a pipeline: tool naming across servers, allow-lists, concurrent tool calls, malformed
arguments, the iteration bound, tool errors, and tool results as data.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from flowctl.dsl.diagnostics import Span
from flowctl.dsl.ir import ServerDef, Transport
from flowctl.interpreter.engine.agent import MAX_BAD_ARGUMENTS, name_tools
from flowctl.interpreter.persistence.store import RunStatus
from flowctl.interpreter.tools import ToolSpec
from tests.integration.helpers import Flow
from tests.support.openai_server import RawStream, call, reply

pytestmark = pytest.mark.anyio


def offered(body: dict[str, Any]) -> set[str]:
    return {tool["function"]["name"] for tool in body.get("tools", [])}


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m["role"] == "tool"]


async def test_tools_with_the_same_name_on_two_servers_are_prefixed_and_routed(flow: Flow) -> None:
    flow.llm.enqueue(
        reply(tool_calls=[call("calc_a__pid", id="a"), call("calc_b__pid", id="b"), call("add", {"a": 1, "b": 2})]),
        reply("done"),
    )
    result = await flow.run("tool_loop.yaml", agent="both")
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    names = offered(flow.llm.bodies[0])
    assert {"calc_a__echo", "calc_b__echo", "calc_a__pid", "calc_b__pid", "add", "slow"} <= names
    assert not names & {"echo", "pid", "calc_b__add"}  # ambiguous names never bare; calc_b offers only echo, pid
    replies = tool_messages(flow.llm.bodies[1])
    assert [m["tool_call_id"] for m in replies] == ["a", "b", "call_3"]
    pid_a, pid_b = int(replies[0]["content"]), int(replies[1]["content"])
    assert pid_a != pid_b  # each prefixed name reached its own server
    assert replies[2]["content"] == "3.0"


async def test_allow_list_limits_what_the_model_is_offered_and_can_call(flow: Flow) -> None:
    flow.llm.enqueue(
        reply(tool_calls=[call("echo", {"text": "hi"}), call("pid")]),
        reply("done"),
    )
    result = await flow.run("tool_loop.yaml", agent="narrow")
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert offered(flow.llm.bodies[0]) == {"add", "echo"}  # echo is unambiguous once calc_a's is not offered
    echo, pid = tool_messages(flow.llm.bodies[1])
    assert echo["content"] == "hi"
    assert pid["content"].startswith("error: unknown tool 'pid'; available: add, echo")


async def test_tool_calls_of_one_turn_run_concurrently(flow: Flow) -> None:
    # each call waits for the other to start: they meet only if they run at the same time (no timing involved)
    one, two = str(flow.tmp_path / "one"), str(flow.tmp_path / "two")
    flow.llm.enqueue(
        reply(tool_calls=[call("meet", {"mine": one, "other": two}), call("meet", {"mine": two, "other": one})]),
        reply("both done"),
    )
    result = await flow.run("tool_loop.yaml", agent="both")
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert [m["content"] for m in tool_messages(flow.llm.bodies[1])] == ["met", "met"]


async def test_malformed_tool_arguments_go_back_to_the_model_which_recovers(flow: Flow) -> None:
    flow.llm.enqueue(
        reply(tool_calls=[call("add", '{"a": 1, "b": ')]),
        reply(tool_calls=[call("add", "[1, 2]")]),
        reply(tool_calls=[call("add", {"a": 1, "b": 2})]),
        reply("3"),
    )
    result = await flow.run("tool_loop.yaml", agent="both")
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert result.outcome.outputs == {"answer": "3"}
    first = tool_messages(flow.llm.bodies[1])[0]["content"]
    assert first.startswith("error: the arguments for add are invalid JSON")
    second = tool_messages(flow.llm.bodies[2])[1]["content"]
    assert second.startswith("error: the arguments for add are a JSON list, not an object")
    assert tool_messages(flow.llm.bodies[3])[2]["content"] == "3.0"
    assert [k for k in result.call_keys() if "tool:" in k] == ["work/turn#5/tool:calc_a.add#0"]


async def test_malformed_tool_arguments_are_bounded_and_fail_the_step_for_good(flow: Flow) -> None:
    flow.llm.enqueue(*[reply(tool_calls=[call("add", "{oops")]) for _ in range(MAX_BAD_ARGUMENTS + 1)])
    result = await flow.run("tool_loop.yaml", agent="both")
    assert result.outcome.status is RunStatus.FAILED
    assert result.cause == "malformed-response"
    assert f"{MAX_BAD_ARGUMENTS + 1} times (the limit is {MAX_BAD_ARGUMENTS})" in result.error
    assert "'add'" in result.error
    assert flow.llm.request_count == MAX_BAD_ARGUMENTS + 1  # not retried, though the step allows 3 attempts
    assert result.step("work").attempts == 1


async def test_max_iterations_bounds_the_loop_and_names_the_last_tools(flow: Flow) -> None:
    flow.llm.enqueue(
        reply(tool_calls=[call("add", {"a": 1, "b": 1})]),
        reply(tool_calls=[call("echo", {"text": "again"}), call("counter")]),
        reply("never requested"),
    )
    result = await flow.run("tool_loop.yaml", agent="bounded")
    assert result.outcome.status is RunStatus.FAILED
    assert result.cause == "max-iterations"
    assert "max_iterations=2" in result.error
    assert "calc_a.add" in result.error and "calc_a.echo" in result.error and "calc_a.counter" in result.error
    assert flow.llm.request_count == 2
    assert result.step("work").attempts == 1


async def test_tool_results_are_data_never_rendered(flow: Flow) -> None:
    template = "{{ inputs.secret }}"
    flow.llm.enqueue(reply(tool_calls=[call("calc_a__echo", {"text": template})]), reply(template))
    result = await flow.run("tool_loop.yaml", agent="both")
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert flow.llm.bodies[0]["messages"][1]["content"] == "Work on it. (The secret is hunter2.)"  # prompts render
    assert tool_messages(flow.llm.bodies[1])[0]["content"] == template  # tool results do not
    assert result.outcome.outputs == {"answer": template}  # nor do model answers


async def test_tool_errors_reach_the_model_as_error_messages(flow: Flow) -> None:
    flow.llm.enqueue(
        reply(tool_calls=[call("fail", {"message": "disk full"}), call("fail_rpc", {"message": "no such row"})]),
        reply("sorry, the disk is full"),
    )
    result = await flow.run("tool_loop.yaml", agent="both")
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    reported, rpc = (m["content"] for m in tool_messages(flow.llm.bodies[1]))
    assert reported.startswith("error: ") and "disk full" in reported
    assert rpc.startswith("error: ") and "no such row" in rpc
    assert result.outcome.outputs == {"answer": "sorry, the disk is full"}


async def test_allow_list_entry_matching_no_tool_fails_the_step_before_any_model_call(flow: Flow) -> None:
    result = await flow.run("tool_loop.yaml", agent="typo")
    assert result.outcome.status is RunStatus.FAILED
    assert result.cause == "tool-call-error"
    assert "agent 'typo': `tools:` names 'ad', which none of its servers (calc_a, calc_b) offers" in result.error
    assert "calc_a.add" in result.error  # what is offered, to spot the typo
    assert result.step("work").attempts == 1
    assert flow.llm.request_count == 0


def test_tool_names_are_openai_safe_and_distinct() -> None:
    span = Span("p.yaml", 1, 1)
    one, two = ServerDef("one", Transport.STDIO, span), ServerDef("two.v2", Transport.STDIO, span)
    long_name = "x" * 80

    def spec(name: str) -> ToolSpec:
        return ToolSpec(name, "", {"type": "object"})

    found = [(one, spec("files.read")), (one, spec("files_read")), (one, spec(long_name)), (two, spec(long_name))]
    found += [(one, spec("get")), (two, spec("get"))]
    names = list(name_tools(found))
    assert names[:2] == ["files_read", "files_read_2"]  # '.' is not allowed; the clash gets a suffix
    assert all(len(n) <= 64 and re.fullmatch(r"[A-Za-z0-9_-]+", n) for n in names)
    assert len(set(names)) == len(names)
    assert names[-2:] == ["one__get", "two_v2__get"]
    tools = name_tools(found)
    assert (tools["two_v2__get"].server.name, tools["two_v2__get"].name) == ("two.v2", "get")


def ollama_style_stream(with_index: bool) -> RawStream:
    """Two tool calls streamed the way Ollama does: each whole in one chunk, both at index 0 (or with no index)."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return json.dumps(
            {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}
        )

    def tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        part = {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
        return {"index": 0, **part} if with_index else part

    return RawStream(
        [
            chunk({"role": "assistant", "tool_calls": [tool_call("call_a", "add", {"a": 1, "b": 2})]}),
            chunk({"tool_calls": [tool_call("call_b", "calc_a__echo", {"text": "second"})]}),
            chunk({}, "tool_calls"),
        ]
    )


@pytest.mark.parametrize("with_index", [True, False], ids=["all-index-0", "no-index"])
async def test_tool_calls_streamed_with_reused_or_missing_indexes_stay_separate(flow: Flow, with_index: bool) -> None:
    flow.llm.enqueue(ollama_style_stream(with_index), reply("done"))
    result = await flow.run("tool_loop.yaml", agent="both")
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assistant = flow.llm.bodies[1]["messages"][2]
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_a", "call_b"]
    assert [(m["tool_call_id"], m["content"]) for m in tool_messages(flow.llm.bodies[1])] == [
        ("call_a", "3.0"),
        ("call_b", "second"),
    ]
