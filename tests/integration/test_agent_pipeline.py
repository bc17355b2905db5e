"""Agent steps end to end: the real interpreter sends each request through the real openai SDK over HTTP to the
local OpenAI-compatible server, runs the tool loop against a real MCP server, and records usage and cost.
"""

from __future__ import annotations

import pytest

from flowctl.interpreter.persistence.store import RunStatus
from tests.integration.helpers import KEY, Flow
from tests.support.openai_server import call, reply, running_openai_server

pytestmark = pytest.mark.anyio


async def test_agent_step_sends_instruction_prompt_and_params_and_runs_the_tool_loop(flow: Flow) -> None:
    llm = flow.llm
    llm.enqueue(
        reply(tool_calls=[call("add", {"a": 2, "b": 3}, id="call_add")], usage=(100, 20)),
        reply("5", usage=(130, 2)),
    )
    with running_openai_server() as local:
        local.enqueue(reply("The sum is 5.", usage=(40, 8)))
        env = flow.env(LOCAL_LLM=local.base_url, LOCAL_KEY="sk-local-abc")
        result = await flow.run("two_models.yaml", {"a": 2, "b": 3}, env=env)

        assert result.outcome.status is RunStatus.SUCCEEDED, result.error
        assert result.outcome.outputs == {"sum": "5", "sentence": "The sum is 5."}

        # the default model: instruction → system, rendered prompt → user, the model's parameters, MCP tools
        first = llm.bodies[0]
        assert first["model"] == "gpt-integration"
        assert first["messages"] == [
            {"role": "system", "content": "You add numbers with the calculator and answer with the sum only."},
            {"role": "user", "content": "What is 2 + 3?"},
        ]
        assert (first["temperature"], first["max_tokens"], first["seed"]) == (0.2, 200, 7)
        assert first["stream"] is True
        offered = {tool["function"]["name"]: tool["function"] for tool in first["tools"]}
        assert {"add", "echo", "pid"} <= offered.keys()
        assert offered["add"]["parameters"]["required"] == ["a", "b"]
        assert llm.requests[0].headers["authorization"] == f"Bearer {KEY}"

        # the tool call went to the real calc server and its result came back as a tool message
        second = llm.bodies[1]["messages"]
        assert second[2]["role"] == "assistant"
        assert second[2]["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 2, "b": 3}'}
        assert second[3] == {"role": "tool", "content": "5.0", "tool_call_id": "call_add"}
        assert llm.request_count == 2

        # the second model: its own base_url (from ${LOCAL_LLM}), key variable and parameters
        assert local.request_count == 1
        body = local.bodies[0]
        assert body["model"] == "local-llama"
        assert (body["temperature"], body["top_p"]) == (0.9, 0.5)
        assert "max_tokens" not in body and "tools" not in body
        assert body["messages"][1] == {"role": "user", "content": "Announce the sum 5."}
        assert local.requests[0].headers["authorization"] == "Bearer sk-local-abc"

    # usage per step and per run, cost from each model's price table
    add, say = result.step("add"), result.step("say")
    assert (add.input_tokens, add.output_tokens) == (230, 22)
    assert (say.input_tokens, say.output_tokens) == (40, 8)
    outcome = result.outcome
    assert (outcome.input_tokens, outcome.output_tokens) == (270, 30)
    expected_cost = (230 * 1.5 + 22 * 6 + 40 * 0.5 + 8 * 1) / 1e6
    assert outcome.cost == pytest.approx(expected_cost)
    record = result.store.get_run(outcome.run_id)
    assert record is not None
    assert (record.input_tokens, record.output_tokens) == (270, 30)
    assert record.cost == pytest.approx(expected_cost)
    assert result.call_keys() == ["add/llm#0", "add/llm#2", "add/turn#1/tool:calc.add#0", "say/llm#0"]


async def test_missing_base_url_variable_fails_the_step_clearly(flow: Flow) -> None:
    flow.llm.enqueue(reply(tool_calls=[call("add", {"a": 1, "b": 1})]), reply("2"))
    result = await flow.run("two_models.yaml", {"a": 1, "b": 1})  # LOCAL_LLM is not set
    assert result.outcome.status is RunStatus.FAILED
    assert "LOCAL_LLM is not set" in result.error
    assert result.step("add").status.value == "succeeded"


async def test_structured_output_is_the_parsed_object(flow: Flow) -> None:
    flow.llm.enqueue(reply('{"title": "Dune", "pages": 412}'))
    result = await flow.run("structured.yaml")
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert result.outcome.outputs == {"title": "Dune", "pages": 412}
    assert result.step("extract").output == {"title": "Dune", "pages": 412}
    body = flow.llm.bodies[0]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["title", "pages"]


@pytest.mark.parametrize(
    "bad",
    ['{"title": "Dune", "pages": "many"}', "Dune, 412 pages", '{"title": "Dune"}'],
    ids=["wrong-type", "not-json", "missing-key"],
)
async def test_structured_output_mismatch_is_retried_and_the_second_answer_wins(flow: Flow, bad: str) -> None:
    flow.llm.enqueue(reply(bad), reply('{"title": "Dune", "pages": 412}'))
    result = await flow.run("structured.yaml")
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert result.outcome.outputs == {"title": "Dune", "pages": 412}
    assert flow.llm.request_count == 2
    assert result.step("extract").attempts == 2
    assert result.call_keys() == ["extract/llm#0"]  # only the good answer was journaled
    assert (result.outcome.input_tokens, result.outcome.output_tokens) == (20, 10)  # both answers were paid for


async def test_structured_output_mismatch_twice_fails_with_a_typed_error(flow: Flow) -> None:
    flow.llm.enqueue(reply('{"title": 1}'), reply('{"title": "Dune", "pages": 0}'))
    result = await flow.run("structured.yaml")
    assert result.outcome.status is RunStatus.FAILED
    assert result.cause == "output-schema-mismatch"
    assert "after 2 attempt(s)" in result.error
    assert "pages" in result.error
    assert result.call_keys() == []
    error = result.step("extract").error
    assert error is not None and error["cause"] == "output-schema-mismatch"
