"""Streaming a model's text to watchers (providers/streaming.py): the OpenAI provider against the local server, the
scripted provider, and the pieces' contract (in order, joined they are the answer)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowctl.dsl.diagnostics import Span
from flowctl.dsl.ir import ModelDef
from flowctl.interpreter.errors import ProviderUnavailable, RateLimited
from flowctl.interpreter.providers.llm import CompletionRequest, Message
from flowctl.interpreter.providers.openai_provider import OpenAIProvider
from flowctl.interpreter.providers.scripted import Fixture, ScriptedProvider
from flowctl.interpreter.providers.streaming import TEXT_SINK, stream_text, streaming_to, word_pieces

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `tests` is not a package on pytest's default path
    sys.path.insert(0, str(REPO))

from tests.support.openai_server import OpenAIServer, call, reply, running_openai_server  # noqa: E402

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with running_openai_server() as running:
        yield running


def model_def(base_url: str, **overrides: Any) -> ModelDef:
    fields: dict[str, Any] = {"base_url": base_url, "timeout": TIMEOUT, **overrides}
    return ModelDef(name="main", provider="openai", model="gpt-test", span=Span("p.yaml", 3, 5), **fields)


@pytest.fixture
async def provider(server: OpenAIServer) -> AsyncIterator[OpenAIProvider]:
    llm = OpenAIProvider(model_def(server.base_url), env={})
    yield llm
    await llm.aclose()


def ask(text: str = "hi") -> CompletionRequest:
    return CompletionRequest(model="gpt-test", messages=(Message("user", text),), timeout=TIMEOUT)


# --- the OpenAI provider ------------------------------------------------------------------------------------------


async def test_text_deltas_reach_the_sink_in_order(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply("Streaming works, one piece after another."))
    pieces: list[str] = []
    with streaming_to(pieces.append):
        response = await provider.complete(ask())
    assert len(pieces) == 2  # the server sends the text in two deltas
    assert "".join(pieces) == response.content == "Streaming works, one piece after another."


async def test_no_sink_no_streaming(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply("quiet"))
    assert TEXT_SINK.get() is None
    assert (await provider.complete(ask())).content == "quiet"


async def test_tool_calls_are_not_streamed_as_text(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply("Let me look.", tool_calls=[call("search", {"q": "x"})]))
    pieces: list[str] = []
    with streaming_to(pieces.append):
        response = await provider.complete(ask())
    assert "".join(pieces) == response.content == "Let me look."
    assert [c.name for c in response.tool_calls] == ["search"]


async def test_a_cut_stream_has_streamed_what_came_before(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(reply("first half, then nothing", cut_after=2))  # role chunk, first text delta, then the cut
    pieces: list[str] = []
    with streaming_to(pieces.append), pytest.raises(ProviderUnavailable, match="cut after 2 chunk"):
        await provider.complete(ask())
    assert pieces == ["first half, "]


async def test_a_failing_sink_fails_the_call_with_its_own_error(server: OpenAIServer, provider: OpenAIProvider) -> None:
    def broken(piece: str) -> None:
        raise ValueError("the watcher broke")  # a ValueError from the SDK's decoder would be a MalformedResponse

    server.enqueue(reply("text"))
    with streaming_to(broken), pytest.raises(ValueError, match="the watcher broke"):
        await provider.complete(ask())


async def test_concurrent_calls_stream_to_their_own_sinks(server: OpenAIServer, provider: OpenAIProvider) -> None:
    server.enqueue(lambda body: reply(f"answer to {body['messages'][-1]['content']}"))
    server.enqueue(lambda body: reply(f"answer to {body['messages'][-1]['content']}"))
    seen: dict[str, list[str]] = {"a": [], "b": []}

    async def one(name: str) -> None:
        with streaming_to(seen[name].append):
            assert (await provider.complete(ask(name))).content == f"answer to {name}"

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "a")
        tg.start_soon(one, "b")
    assert {name: "".join(pieces) for name, pieces in seen.items()} == {"a": "answer to a", "b": "answer to b"}


# --- clients shared per event loop --------------------------------------------------------------------------------


async def test_providers_with_the_same_endpoint_share_a_client(server: OpenAIServer) -> None:
    first = OpenAIProvider(model_def(server.base_url), env={})
    second = OpenAIProvider(model_def(server.base_url), env={})
    other = OpenAIProvider(model_def(server.base_url, timeout=7.0), env={})
    server.enqueue(reply("1"), reply("2"), reply("3"))
    for llm in (first, second, other):
        await llm.complete(ask())
    client = first._client
    assert client is not None and second._client is client and other._client is not client
    await first.aclose()
    assert not client.is_closed()  # the second provider still uses it
    await second.aclose()
    assert client.is_closed()
    await other.aclose()


def test_each_event_loop_has_its_own_client(server: OpenAIServer) -> None:
    llm = OpenAIProvider(model_def(server.base_url), env={})
    server.enqueue(reply("one"), reply("two"))
    clients = []

    async def complete() -> str | None:
        response = await llm.complete(ask())
        clients.append(llm._client)
        return response.content

    assert anyio.run(complete) == "one"
    assert anyio.run(complete) == "two"  # a client bound to the first loop would fail here
    assert clients[0] is not clients[1]
    anyio.run(llm.aclose)
    assert clients[1] is not None and clients[1].is_closed()


# --- the scripted provider ----------------------------------------------------------------------------------------


def scripted(data: dict[str, Any]) -> ScriptedProvider:
    return ScriptedProvider(Fixture.from_data(data, file="<test>"))


async def test_scripted_answer_streams_once() -> None:
    pieces: list[str] = []
    with streaming_to(pieces.append):
        response = await scripted({"default": "all at once"}).complete(ask())
    assert pieces == ["all at once"] == [response.content]


async def test_scripted_latency_streams_word_by_word() -> None:
    text = "one two  three\nfour"
    pieces: list[str] = []
    with streaming_to(pieces.append):
        response = await scripted({"default": {"content": text, "latency": 0.02}}).complete(ask())
    assert pieces == ["one ", "two  ", "three\n", "four"]
    assert "".join(pieces) == response.content == text


async def test_scripted_errors_and_tool_calls_stream_nothing() -> None:
    pieces: list[str] = []
    llm = scripted(
        {
            "responses": [
                {"step": "err", "reply": {"error": "rate_limit"}},
                {"step": "tool", "reply": {"tool_calls": [{"name": "search", "arguments": {}}]}},
            ]
        }
    )
    with streaming_to(pieces.append):
        with pytest.raises(RateLimited):
            await llm.complete(CompletionRequest("m", (Message("user", "x"),), step="err"))
        await llm.complete(CompletionRequest("m", (Message("user", "x"),), step="tool"))
    assert pieces == []


async def test_scripted_sink_failure_fails_the_call() -> None:
    def broken(piece: str) -> None:
        raise RuntimeError("watcher down")

    with streaming_to(broken), pytest.raises(RuntimeError, match="watcher down"):
        await scripted({"default": {"content": "a b c", "latency": 0.01}}).complete(ask())


# --- the helpers --------------------------------------------------------------------------------------------------


def test_stream_text_goes_to_the_current_sink_only() -> None:
    pieces: list[str] = []
    stream_text("nobody hears this")
    with streaming_to(pieces.append):
        stream_text("a")
        stream_text("")  # nothing to hand on
        with streaming_to(None):
            stream_text("muted")
        stream_text("b")
    assert pieces == ["a", "b"]
    assert TEXT_SINK.get() is None


@given(st.text(alphabet=st.sampled_from(["a", "b", " ", "\n", "\t", "é"]), max_size=40))
def test_word_pieces_join_to_the_text(text: str) -> None:
    pieces = word_pieces(text)
    assert "".join(pieces) == text
    assert all(pieces)
    assert len(pieces) == max(len(text.split()), 1 if text else 0)
