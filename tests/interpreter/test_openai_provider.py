"""OpenAIProvider through the real openai client over real HTTP, against the scripted local server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import openai
import pytest

from flowctl.dsl.diagnostics import Span
from flowctl.dsl.ir import ModelDef
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
)
from flowctl.interpreter.providers.llm import (
    CompletionRequest,
    CompletionResponse,
    LLMProvider,
    Message,
    ToolCallRequest,
    ToolSpec,
    Usage,
)
from flowctl.interpreter.providers.openai_provider import OpenAIProvider, parse_retry_after

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `tests` is not a package on pytest's default path
    sys.path.insert(0, str(REPO))

from tests.support.net import free_port  # noqa: E402
from tests.support.openai_server import (  # noqa: E402
    OpenAIServer,
    RawStream,
    call,
    error,
    raw,
    reply,
    running_openai_server,
)

pytestmark = pytest.mark.anyio

KEY = "sk-test-0123456789abcdef"
TIMEOUT = 0.5
SEARCH = ToolSpec("search", "Search the web", {"type": "object", "properties": {"q": {"type": "string"}}})
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "count": {"type": "integer"}},
    "required": ["title", "count"],
}


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with running_openai_server() as running:
        yield running


def model_def(base_url: str | None, **overrides: Any) -> ModelDef:
    fields: dict[str, Any] = {"base_url": base_url, "timeout": TIMEOUT, **overrides}
    return ModelDef(name="main", provider="openai", model="gpt-test", span=Span("p.yaml", 3, 5), **fields)


@pytest.fixture
async def provider(server: OpenAIServer) -> AsyncIterator[OpenAIProvider]:
    llm = OpenAIProvider(model_def(server.base_url), env={"OPENAI_API_KEY": KEY})
    yield llm
    await llm.aclose()


def ask(text: str = "hi", **fields: Any) -> CompletionRequest:
    return CompletionRequest(model="gpt-test", messages=(Message("user", text),), timeout=TIMEOUT, **fields)


# --- answers ------------------------------------------------------------------------------------


async def test_plain_answer_with_usage(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply("Hello there", usage=(21, 4)))
    response = await provider.complete(ask())
    assert response == CompletionResponse("Hello there", (), Usage(21, 4), "stop", "gpt-test")
    assert isinstance(provider, LLMProvider)


async def test_what_is_sent(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply("ok"))
    params = {"temperature": 0.2, "max_tokens": 64, "top_p": 0.9, "seed": 7, "top_k": 5}
    messages = (Message("system", "be brief"), Message("user", "hi"))
    await provider.complete(CompletionRequest("gpt-test", messages, (SEARCH,), params=params, timeout=TIMEOUT))
    [sent] = server.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    body = sent.body
    assert body["model"] == "gpt-test"
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    function = {"name": "search", "description": "Search the web", "parameters": SEARCH.input_schema}
    assert body["tools"] == [{"type": "function", "function": function}]
    assert (body["temperature"], body["max_tokens"], body["top_p"], body["seed"]) == (0.2, 64, 0.9, 7)
    assert body["top_k"] == 5  # unknown params go through as extra body fields
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert "response_format" not in body


async def test_tool_call_round_trip(server: OpenAIServer, provider: OpenAIProvider) -> None:
    arguments = '{"q": "flowctl \\u00e9",  "limit": 3}'  # odd spacing and escapes must survive verbatim
    server.enqueue(reply(tool_calls=[call("search", arguments, id="call_a")], usage=(30, 9)), reply("Found it."))
    first = await provider.complete(ask("find flowctl", tools=(SEARCH,)))
    assert first.tool_calls == (ToolCallRequest("call_a", "search", arguments),)
    assert (first.content, first.finish_reason, first.usage) == (None, "tool_calls", Usage(30, 9))

    history = (
        Message("user", "find flowctl"),
        Message("assistant", None, tool_calls=first.tool_calls),
        Message("tool", '{"hits": 1}', tool_call_id="call_a", name="search"),
    )
    second = await provider.complete(CompletionRequest("gpt-test", history, (SEARCH,), timeout=TIMEOUT))
    assert second.content == "Found it."
    sent = server.bodies[1]["messages"]
    assert sent[1]["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "search", "arguments": arguments}}
    ]
    assert sent[2] == {"role": "tool", "content": '{"hits": 1}', "tool_call_id": "call_a", "name": "search"}


async def test_several_tool_calls_keep_their_order(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply(tool_calls=[call("search", {"q": "a"}), call("search", {"q": "b"})]))
    response = await provider.complete(ask(tools=(SEARCH,)))
    assert [json.loads(c.arguments)["q"] for c in response.tool_calls] == ["a", "b"]
    assert len({c.id for c in response.tool_calls}) == 2


# --- structured output --------------------------------------------------------------------------


async def test_structured_output_valid(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply('{"title": "Report", "count": 3}'))
    response = await provider.complete(ask(output_schema=SCHEMA))
    assert json.loads(response.content or "") == {"title": "Report", "count": 3}
    assert server.bodies[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA, "strict": False},
    }


async def test_structured_output_not_json(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply("Sure! Here is the report: {title"))
    with pytest.raises(OutputSchemaMismatch, match="not valid JSON") as caught:
        await provider.complete(ask(output_schema=SCHEMA))
    assert caught.value.retryable


async def test_structured_output_schema_mismatch(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply('{"title": "Report", "count": "three"}'))
    with pytest.raises(OutputSchemaMismatch, match=r"at \$\.count: 'three' is not of type 'integer'"):
        await provider.complete(ask(output_schema=SCHEMA))


# --- HTTP errors --------------------------------------------------------------------------------


async def test_rate_limited_with_retry_after(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(error(429, "Rate limit reached", code="rate_limit_exceeded", headers={"Retry-After": "7"}))
    with pytest.raises(RateLimited, match=r"rate limited by model 'gpt-test' at 127\.0\.0\.1") as caught:
        await provider.complete(ask())
    assert (caught.value.retry_after, caught.value.retryable) == (7.0, True)
    assert server.request_count == 1  # the SDK did not retry on its own


async def test_rate_limited_with_retry_after_ms(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(error(429, "slow down", headers={"retry-after-ms": "250"}))
    with pytest.raises(RateLimited) as caught:
        await provider.complete(ask())
    assert caught.value.retry_after == 0.25


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    in_a_minute = parse_retry_after({"retry-after": formatdate(time.time() + 60, usegmt=True)})
    assert in_a_minute is not None and 55 <= in_a_minute <= 61
    assert parse_retry_after({"retry-after": formatdate(time.time() - 60, usegmt=True)}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


async def test_insufficient_quota_is_not_retryable(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(error(429, "You exceeded your current quota", code="insufficient_quota"))
    with pytest.raises(QuotaExhausted, match=r"quota exhausted .* not retried; check billing") as caught:
        await provider.complete(ask())
    assert not caught.value.retryable


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_error(server: OpenAIServer, provider: OpenAIProvider, status: int) -> None:
    server.enqueue(error(status, "Invalid credentials"))
    with pytest.raises(AuthError, match=f"OPENAI_API_KEY \\({status}\\): Invalid credentials"):
        await provider.complete(ask())
    assert server.request_count == 1


async def test_api_key_never_leaks(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(error(401, f"Incorrect API key provided: {KEY}. Find your key at platform.openai.com"))
    with pytest.raises(AuthError) as caught:
        await provider.complete(ask())
    everything = "".join(traceback.format_exception(caught.value))
    assert KEY not in everything
    assert "Incorrect API key provided: ***" in str(caught.value)


async def test_context_too_long_by_code(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(error(400, "Too many tokens in the request", code="context_length_exceeded"))
    with pytest.raises(ContextTooLong, match="too long for model 'gpt-test'") as caught:
        await provider.complete(ask())
    assert not caught.value.retryable


async def test_context_too_long_by_message(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(error(400, "This model's maximum context length is 8192 tokens. However, you requested 9000"))
    with pytest.raises(ContextTooLong, match="gpt-test"):
        await provider.complete(ask())


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_other_client_errors_are_bad_requests(
    server: OpenAIServer, provider: OpenAIProvider, status: int
) -> None:
    server.enqueue(error(status, "unknown parameter 'foo'"))
    with pytest.raises(BadRequest, match=f"rejected the request \\({status}\\): unknown parameter 'foo'"):
        await provider.complete(ask())


async def test_server_error_is_unavailable_and_not_retried(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(error(500, "The server had an error"), reply("never served"))
    with pytest.raises(ProviderUnavailable, match=r"server error \(500\)") as caught:
        await provider.complete(ask())
    assert caught.value.retryable
    assert server.request_count == 1  # max_retries=0


async def test_error_event_inside_stream(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(RawStream(['{"error": {"message": "overloaded", "type": "server_error"}}']))
    with pytest.raises(ProviderUnavailable, match="error inside the stream: overloaded"):
        await provider.complete(ask())


# --- transport faults ---------------------------------------------------------------------------


async def test_stall_before_answer_times_out(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply("too late", delay=3))  # answering after 3 s would make the call succeed
    with pytest.raises(ProviderTimeout, match=r"did not answer within 0\.5s") as caught:
        await provider.complete(ask())
    assert caught.value.retryable
    assert server.request_count == 1


async def test_stall_mid_stream_times_out(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply("a long answer", stall=3))
    with pytest.raises(ProviderTimeout):
        await provider.complete(ask())


async def test_connection_refused() -> None:
    llm = OpenAIProvider(model_def(f"http://127.0.0.1:{free_port()}/v1"), env={})
    try:
        with pytest.raises(ProviderUnavailable, match=r"cannot connect to model 'gpt-test' at 127\.0\.0\.1"):
            await llm.complete(ask())
    finally:
        await llm.aclose()


# --- malformed responses ------------------------------------------------------------------------


async def test_stream_without_finish_reason(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply("half an ans", finish_reason=None, done=False))
    with pytest.raises(MalformedResponse, match="ended without a finish_reason") as caught:
        await provider.complete(ask())
    assert caught.value.retryable


async def test_malformed_chunk(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply("text", malformed_chunk=True))
    with pytest.raises(MalformedResponse, match="stream chunk that cannot be decoded"):
        await provider.complete(ask())


async def test_truncated_tool_arguments(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply(tool_calls=[call("search", '{"q": "flow')], finish_reason="length"))
    with pytest.raises(MalformedResponse, match="inside the arguments of tool call 'search'"):
        await provider.complete(ask(tools=(SEARCH,)))


async def test_truncated_tool_arguments_without_finish(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply(tool_calls=[call("search", '{"q": "flow')], finish_reason=None))
    with pytest.raises(MalformedResponse, match="without a finish_reason"):
        await provider.complete(ask(tools=(SEARCH,)))


async def test_bad_arguments_of_a_finished_answer_go_to_the_tool_loop(
    server: OpenAIServer, provider: OpenAIProvider
) -> None:
    server.enqueue(reply(tool_calls=[call("search", "{not json")]))
    response = await provider.complete(ask(tools=(SEARCH,)))
    assert response.tool_calls[0].arguments == "{not json"


async def test_html_page_with_status_200(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(raw("<html><body>Gateway login</body></html>"))
    with pytest.raises(MalformedResponse, match=r"did not send an event stream \(got text/html\)"):
        await provider.complete(ask())


async def test_empty_choices(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(RawStream(['{"id": "x", "object": "chat.completion.chunk", "model": "m", "choices": []}']))
    with pytest.raises(MalformedResponse, match="no choices"):
        await provider.complete(ask())


async def test_event_that_is_not_a_chunk(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(RawStream(["[1, 2, 3]"]))
    with pytest.raises(MalformedResponse, match="not a chat completion chunk"):
        await provider.complete(ask())


# --- configuration ------------------------------------------------------------------------------


async def test_missing_key_for_remote_url_names_the_variable() -> None:
    llm = OpenAIProvider(model_def("https://api.example.com/v1", api_key_env="ACME_KEY"), env={})
    with pytest.raises(AuthError, match="set ACME_KEY") as caught:
        await llm.complete(ask())
    assert "api.example.com" in str(caught.value)
    await llm.aclose()


async def test_missing_key_for_default_url(server: OpenAIServer) -> None:
    llm = OpenAIProvider(model_def(None), env={})
    with pytest.raises(AuthError, match=r"api\.openai\.com: set OPENAI_API_KEY"):
        await llm.complete(ask())
    assert server.request_count == 0


async def test_local_server_needs_no_key(server: OpenAIServer) -> None:
    server.enqueue(reply("local"))
    llm = OpenAIProvider(model_def(server.base_url.replace("127.0.0.1", "localhost")), env={})
    try:
        assert (await llm.complete(ask())).content == "local"
    finally:
        await llm.aclose()
    assert server.requests[0].headers["authorization"] == "Bearer not-needed"


async def test_base_url_expands_variables(server: OpenAIServer) -> None:
    server.enqueue(reply("a"), reply("b"))
    env = {"LLM_PORT": str(server.port), "OPENAI_API_KEY": KEY}
    templated = OpenAIProvider(model_def("http://127.0.0.1:${LLM_PORT}${LLM_PATH:-/v1}"), env=env)
    from_env = OpenAIProvider(model_def(None), env={"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY})
    try:
        assert (await templated.complete(ask())).content == "a"
        assert (await from_env.complete(ask())).content == "b"
    finally:
        await templated.aclose()
        await from_env.aclose()


async def test_base_url_with_unset_variable() -> None:
    llm = OpenAIProvider(model_def("https://${LLM_HOST}/v1"), env={"OPENAI_API_KEY": KEY})
    with pytest.raises(ProviderError, match=r"\$\{LLM_HOST\}, but LLM_HOST is not set"):
        await llm.complete(ask())


async def test_client_is_built_once_and_closed(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply("1"), reply("2"))
    await provider.complete(ask())
    client = provider._client
    await provider.complete(ask())
    assert provider._client is client is not None
    assert client.max_retries == 0
    await provider.aclose()
    assert client.is_closed()


# --- the test server itself ---------------------------------------------------------------------


async def test_server_answers_non_streaming_requests(server: OpenAIServer) -> None:
    server.enqueue(reply(tool_calls=[call("search", {"q": "x"})], usage=(3, 2)))
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0) as client:
        completion = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    [choice] = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.arguments == '{"q": "x"}'
    assert completion.usage is not None and completion.usage.prompt_tokens == 3


async def test_server_computes_answers_from_the_request(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(lambda body: reply(body["messages"][-1]["content"].upper()))
    assert (await provider.complete(ask("shout"))).content == "SHOUT"
    assert server.pending == 0


async def test_server_reports_an_exhausted_script(server: OpenAIServer, provider: OpenAIProvider) -> None:
    with pytest.raises(BadRequest, match=r"script exhausted \(request #1\)"):
        await provider.complete(ask())


async def test_server_in_another_process(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    record = tmp_path / "requests.jsonl"
    script.write_text(json.dumps([{"content": "from afar", "usage": [5, 1]}, {"status": 503, "body": "down"}]))
    command = [sys.executable, "-m", "tests.support.openai_server", "--script", str(script), "--record", str(record)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        llm = OpenAIProvider(model_def(base_url), env={})
        assert (await llm.complete(ask("hello"))).usage == Usage(5, 1)
        with pytest.raises(ProviderUnavailable, match=r"\(503\): down"):
            await llm.complete(ask())
        await llm.aclose()
    finally:
        process.terminate()
        process.wait(timeout=5)
    bodies = [json.loads(line) for line in record.read_text().splitlines()]
    assert [b["messages"][0]["content"] for b in bodies] == ["hello", "hi"]
