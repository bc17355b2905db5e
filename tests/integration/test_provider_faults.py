"""Provider faults through a pipeline: what the step's retry policy does with each, what the run reports, and that
a broken answer is never journaled as a completed call.
"""

from __future__ import annotations

import json
import time

import pytest

from flowctl.interpreter.store import RunStatus
from tests.integration.helpers import Flow
from tests.support.openai_server import RawStream, call, error, raw, reply

pytestmark = pytest.mark.anyio


async def test_rate_limit_is_retried_after_the_servers_retry_after(flow: Flow) -> None:
    flow.llm.enqueue(error(429, "slow down", code="rate_limit_exceeded", headers={"Retry-After": "1"}), reply("ok"))
    started = time.monotonic()
    result = await flow.run("one_agent.yaml", attempts=3)
    elapsed = time.monotonic() - started
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert result.outcome.outputs == {"text": "ok"}
    assert flow.llm.request_count == 2
    assert elapsed >= 1.0  # the policy's own delay is 10ms: the wait is the server's Retry-After
    assert result.step("write").attempts == 2


async def test_server_error_is_retried(flow: Flow) -> None:
    flow.llm.enqueue(error(500, "internal error"), error(503, "overloaded"), reply("ok"))
    result = await flow.run("one_agent.yaml", attempts=3)
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert flow.llm.request_count == 3
    assert result.call_keys() == ["write/llm#0"]


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "bad-request"), (401, "auth-error"), (403, "auth-error"), (404, "bad-request")],
)
async def test_client_errors_are_not_retried(flow: Flow, status: int, code: str) -> None:
    flow.llm.enqueue(error(status, "nope"), reply("never sent"))
    result = await flow.run("one_agent.yaml", attempts=3)
    assert result.outcome.status is RunStatus.FAILED
    assert result.cause == code
    assert flow.llm.request_count == 1
    assert "after 1 attempt(s)" in result.error
    assert f"({status})" in result.error


async def test_quota_exhausted_is_not_retried(flow: Flow) -> None:
    flow.llm.enqueue(error(429, "You exceeded your current quota", code="insufficient_quota"), reply("no"))
    result = await flow.run("one_agent.yaml", attempts=3)
    assert result.cause == "quota-exhausted"
    assert flow.llm.request_count == 1


async def test_context_length_error_names_the_model_and_is_not_retried(flow: Flow) -> None:
    flow.llm.enqueue(
        error(400, "This model's maximum context length is 8192 tokens", code="context_length_exceeded"),
        reply("never sent"),
    )
    result = await flow.run("one_agent.yaml", attempts=3)
    assert result.cause == "context-too-long"
    assert "'gpt-faults'" in result.error
    assert "maximum context length" in result.error
    assert flow.llm.request_count == 1


BROKEN = {
    "no-finish-reason": reply("half an answ", finish_reason=None),
    "malformed-chunk": reply("hello", malformed_chunk=True),
    "truncated-tool-arguments": reply(tool_calls=[call("add", '{"a": 1, "b"')], finish_reason="length"),
    "html-200": raw("<html><body>Welcome to the captive portal</body></html>"),
    "no-choices": RawStream([json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 1, "choices": []})]),
}


@pytest.mark.parametrize("fault", list(BROKEN), ids=list(BROKEN))
async def test_broken_answer_is_a_typed_error_and_never_journaled(flow: Flow, fault: str) -> None:
    flow.llm.enqueue(BROKEN[fault])
    result = await flow.run("one_agent.yaml", attempts=1)
    assert result.outcome.status is RunStatus.FAILED
    assert result.cause == "malformed-response"
    assert "'gpt-faults'" in result.error
    assert result.outcome.outputs is None
    assert result.store.lookup_call(result.outcome.run_id, "write/llm#0") is None
    assert result.call_keys() == []
    step = result.step("write")
    assert step.status.value == "failed" and step.output is None


@pytest.mark.parametrize("fault", ["no-finish-reason", "html-200"])
async def test_broken_answer_is_retried_and_only_the_good_one_is_journaled(flow: Flow, fault: str) -> None:
    flow.llm.enqueue(BROKEN[fault], reply("whole"))
    result = await flow.run("one_agent.yaml", attempts=2)
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert result.outcome.outputs == {"text": "whole"}
    assert flow.llm.request_count == 2
    record = result.store.lookup_call(result.outcome.run_id, "write/llm#0")
    assert record is not None and record.result["content"] == "whole"


async def test_stalled_server_times_out_per_the_models_timeout(flow: Flow) -> None:
    flow.llm.enqueue(reply("late", delay=10))
    started = time.monotonic()
    result = await flow.run("one_agent.yaml", attempts=1)
    assert result.cause == "provider-timeout"
    assert "2s" in result.error
    assert time.monotonic() - started < 5
