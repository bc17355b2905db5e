"""Provider faults through a pipeline: what the step's retry policy does with each, what the run reports, and that
a broken answer is never journaled as a completed call.
"""

from __future__ import annotations

import io
import json
from typing import Any

import anyio
import pytest

from flowctl.interpreter.clock import ManualClock
from flowctl.interpreter.engine.policies import RETRY_AFTER_CAP
from flowctl.interpreter.persistence.store import RunStatus
from flowctl.progress import LineReporter
from tests.integration.helpers import Flow, Result
from tests.support.openai_server import RawStream, call, error, raw, reply

pytestmark = pytest.mark.anyio


async def run_with_clock(flow: Flow, clock: ManualClock, waits: list[float], **options: Any) -> tuple[Result, str]:
    """Run one_agent.yaml on a ManualClock: each time the run parks on the clock, check the wait it asks for (the
    backoff) is the next of `waits` and let that much virtual time pass. Returns the result and the progress text."""
    progress = io.StringIO()
    results: list[Result] = []

    async def run() -> None:
        results.append(await flow.run("one_agent.yaml", clock=clock, reporter=LineReporter(progress), **options))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        for wait in waits:
            await clock.parked(1)
            assert clock.pending == [wait]
            clock.advance(wait)
    return results[0], progress.getvalue()


@pytest.mark.parametrize("status", [429, 500, 503, 408, 409])
@pytest.mark.parametrize("header", [{"Retry-After": "3"}, {"retry-after-ms": "3000"}], ids=["seconds", "ms"])
async def test_retry_after_is_honoured_on_every_retryable_status(
    flow: Flow, status: int, header: dict[str, str]
) -> None:
    flow.llm.enqueue(error(status, "Rate limit exceeded.", headers=header), reply("ok"))
    clock = ManualClock()
    # the policy's own delay is 10 ms: the 3 s wait is the server's
    result, progress = await run_with_clock(flow, clock, [3.0], attempts=3)
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert flow.llm.request_count == 2
    assert result.step("write").attempts == 2
    assert f"  ↻ write attempt 2/3 after {status}, retrying in 3s: " in progress
    # the server's text and the hint are joined into one sentence ("Rate limit exceeded.; retry after" before)
    assert "Rate limit exceeded (the server asks to retry after 3s)" in progress


async def test_a_retry_after_longer_than_the_cap_waits_the_cap(flow: Flow) -> None:
    flow.llm.enqueue(error(503, "come back in an hour", headers={"Retry-After": "3600"}), reply("ok"))
    result, progress = await run_with_clock(flow, ManualClock(), [RETRY_AFTER_CAP], attempts=2)
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert "retrying in 60s" in progress


async def test_the_failure_message_names_the_wait_the_server_asked_for(flow: Flow) -> None:
    flow.llm.enqueue(error(429, "Rate limit exceeded.", code="rate_limit_exceeded", headers={"Retry-After": "3"}))
    result = await flow.run("one_agent.yaml", attempts=1)
    assert result.cause == "rate-limited"
    assert result.error.endswith("(429): Rate limit exceeded (the server asks to retry after 3s)")


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
    flow.llm.enqueue(reply("late", delay=10))  # answering after 10 s would make the run succeed
    result = await flow.run("one_agent.yaml", attempts=1)
    assert result.cause == "provider-timeout"
    assert "2s" in result.error


async def test_a_stream_cut_in_the_middle_is_reported_as_cut_not_as_a_connection_failure(flow: Flow) -> None:
    flow.llm.enqueue(reply("a whole sentence", cut_after=2), reply("whole"))
    progress = io.StringIO()
    result = await flow.run("one_agent.yaml", attempts=2, reporter=LineReporter(progress))
    assert result.outcome.outputs == {"text": "whole"}  # retried, and only the whole answer journaled
    assert result.call_keys() == ["write/llm#0"]
    retry = next(line for line in progress.getvalue().splitlines() if "↻" in line)
    assert "attempt 2/2 after provider-unavailable" in retry
    assert "the stream from model 'gpt-faults' at 127.0.0.1:" in retry
    assert retry.endswith("was cut after 2 chunk(s) (RemoteProtocolError)")
    assert "cannot connect" not in retry


@pytest.mark.parametrize(
    ("usage", "counted"),
    [((-5, 7), (0, 7)), ((2.5, 3.0), (0, 3)), ((10**20, 7), (0, 7)), (("12", None), (0, 0))],
    ids=["negative", "fractional", "huge", "not-numbers"],
)
async def test_usage_numbers_that_cannot_be_token_counts_count_as_zero(
    flow: Flow, usage: tuple[Any, Any], counted: tuple[int, int]
) -> None:
    flow.llm.enqueue(reply("ok", usage=usage))
    result = await flow.run("one_agent.yaml", attempts=1)
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert (result.outcome.input_tokens, result.outcome.output_tokens) == counted


async def test_a_usage_number_past_pythons_digit_limit_is_a_malformed_answer_not_a_crash(flow: Flow) -> None:
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    answer = json.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]})
    usage = json.dumps({**chunk, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
    flow.llm.enqueue(RawStream([answer, usage.replace('"prompt_tokens": 1', '"prompt_tokens": ' + "9" * 5000)]))
    result = await flow.run("one_agent.yaml", attempts=1)
    assert result.outcome.status is RunStatus.FAILED
    assert result.cause == "malformed-response"
    assert "holds a number longer than 4,300 digits" in result.error
    assert "set_int_max_str_digits" not in result.error
