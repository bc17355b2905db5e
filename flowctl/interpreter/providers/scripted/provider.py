"""The scripted provider: an LLMProvider answering every request from a fixture's rules (see fixture.py for the
format), for offline runs and CI.

A watcher streaming the text (`providers/streaming.py`) gets a reply's text once, when it is answered, or word by
word over the scripted latency (on the system clock; once after it on another clock, which keeps a ManualClock's
timers those of the latency alone).

Rules are picked and consumed synchronously (no await between the check and the consume), so the concurrent calls of
one run see consistent sequences and counters. Replies are picked in call order; for reproducible runs, script
concurrent branches by agent or step rather than by sequence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from flowctl.interpreter.clock import SYSTEM_CLOCK, Clock
from flowctl.interpreter.errors import OutputSchemaMismatch, ProviderError
from flowctl.interpreter.providers.llm import (
    CompletionRequest,
    CompletionResponse,
    Message,
    ToolCallRequest,
    Usage,
    parse_structured_output,
)
from flowctl.interpreter.providers.scripted.fixture import (
    ERROR_KINDS,
    Fixture,
    Reply,
    Rule,
    ScriptedCall,
    last_user_text,
)
from flowctl.interpreter.providers.streaming import TEXT_SINK, TextSink, word_pieces


class NoScriptedReply(ProviderError):
    """No rule matches a request and the fixture has no `default:` (not retryable: the fixture must change)."""

    code = "no-scripted-reply"


class ScriptedProvider:
    """An LLMProvider answering from a Fixture. Share one instance across models so sequences stay in order."""

    provider_name = "scripted"  # what watchers are told answered (OpenTelemetry's gen_ai.provider.name, --events)

    def __init__(self, fixture: Fixture, clock: Clock = SYSTEM_CLOCK) -> None:
        self.fixture = fixture
        self.clock = clock  # scripted latency passes on this clock (a ManualClock makes it virtual)
        self.calls = 0  # every complete() call, answered or not
        self.calls_by_rule: dict[int, int] = {rule.index: 0 for rule in fixture.rules}
        self.default_calls = 0
        self._used: dict[int, int] = {}  # replies consumed per rule index (for `replies:` rules)

    def complete(self, request: CompletionRequest) -> Awaitable[CompletionResponse]:
        """The scripted answer, after the scripted latency.

        On asyncio this is not a coroutine but a future that a timer completes: what `asyncio.sleep` does, without
        its coroutine and this method's (offline runs and CI fan out thousands of scripted calls, and each frame
        costs every one of them). Cancelling the caller cancels the future; the timer then finds it done.
        """
        reply, rule = self._take(request)  # synchronous: nothing runs between matching and consuming
        latency = reply.latency if reply.latency is not None else (rule.latency if rule else None)
        sink = TEXT_SINK.get()
        if sink is not None and (reply.error is not None or not reply.text):
            sink = None  # nothing to stream
        if self.clock is not SYSTEM_CLOCK:
            return self._complete_later(request, reply, rule, latency, sink)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # another anyio backend (trio)
            return self._complete_later(request, reply, rule, latency, sink)
        future: asyncio.Future[CompletionResponse] = loop.create_future()
        if latency:
            if sink is not None:
                pieces = word_pieces(reply.text or "")
                for i, piece in enumerate(pieces):  # spread over the latency, the last before the answer
                    loop.call_later(latency * i / len(pieces), _stream_piece, future, sink, piece)
            loop.call_later(latency, self._settle, future, request, reply, rule)
        else:
            if sink is not None:
                sink(reply.text or "")
            self._settle(future, request, reply, rule)
        return future

    def _settle(
        self, future: asyncio.Future[CompletionResponse], request: CompletionRequest, reply: Reply, rule: Rule | None
    ) -> None:
        if future.done():  # the caller was cancelled meanwhile
            return
        try:
            future.set_result(_answer(request, reply, rule, self.fixture.file))
        except Exception as exc:  # a scripted error, or an answer that does not match the output schema
            future.set_exception(exc)

    async def _complete_later(
        self, request: CompletionRequest, reply: Reply, rule: Rule | None, latency: float | None, sink: TextSink | None
    ) -> CompletionResponse:
        if latency:
            await self.clock.sleep(latency)
        if sink is not None:
            sink(reply.text or "")
        return _answer(request, reply, rule, self.fixture.file)

    async def aclose(self) -> None:
        """Nothing to release."""

    def unused_rules(self) -> list[Rule]:
        """Rules that never answered: a fixture drifting away from its pipeline (useful in `flowctl test`)."""
        return [rule for rule in self.fixture.rules if self.calls_by_rule[rule.index] == 0]

    def _take(self, request: CompletionRequest) -> tuple[Reply, Rule | None]:
        self.calls += 1
        used_up: list[Rule] = []
        for rule in self.fixture.rules:
            if not rule.replies or not rule.matches(request):
                continue
            reply = self._next_reply(rule)
            if reply is None:
                used_up.append(rule)
                continue
            self.calls_by_rule[rule.index] += 1
            return reply, rule
        if self.fixture.default is not None:
            self.default_calls += 1
            return self.fixture.default, None
        raise NoScriptedReply(_no_match_message(request, self.fixture, used_up))

    def _next_reply(self, rule: Rule) -> Reply | None:
        if rule.repeat:
            return rule.replies[0]
        used = self._used.get(rule.index, 0)
        if used >= len(rule.replies):
            return None
        self._used[rule.index] = used + 1
        return rule.replies[used]


def _stream_piece(future: asyncio.Future[CompletionResponse], sink: TextSink, piece: str) -> None:
    """One word of a scripted answer to its watcher, unless the call is over (cancelled, or failed by a watcher);
    a watcher's error fails the call, as it would with a real provider."""
    if future.done():
        return
    try:
        sink(piece)
    except Exception as exc:
        future.set_exception(exc)


def _answer(request: CompletionRequest, reply: Reply, rule: Rule | None, file: str) -> CompletionResponse:
    """The response for a reply, or the typed error it scripts."""
    if reply.error is not None:
        raise _scripted_error(request, reply, _source(rule, file))
    tool_calls = _tool_calls(request.messages, reply.tool_calls) if reply.tool_calls else ()
    text = reply.text
    response = CompletionResponse(
        text,
        tool_calls,
        _usage(request, reply, text, tool_calls),
        "tool_calls" if tool_calls else "stop",
        request.model,
    )
    if request.output_schema is not None and not tool_calls:
        try:
            _check_output(response.content, request.output_schema, f"{_who(request)} ({_source(rule, file)})")
        except OutputSchemaMismatch as exc:
            exc.usage, exc.response = response.usage, response  # type: ignore[attr-defined]  # as openai's does
            raise
    return response


def _source(rule: Rule | None, file: str) -> str:
    """Where a reply comes from, for messages (built only when one is needed)."""
    return rule.describe() if rule else f"`default:` of {file}"


def _scripted_error(request: CompletionRequest, reply: Reply, source: str) -> ProviderError:
    kind = reply.error or ""
    message = reply.message or f"scripted {kind} error for {_who(request)}"
    return ERROR_KINDS[kind](f"{message} ({source})", retry_after=reply.retry_after)


def _tool_calls(messages: tuple[Message, ...], calls: tuple[ScriptedCall, ...]) -> tuple[ToolCallRequest, ...]:
    """Ids `call_<n>` numbered after the conversation's earlier tool calls: unique and independent of scheduling."""
    earlier = sum(len(m.tool_calls) for m in messages)
    return tuple(ToolCallRequest(f"call_{earlier + i + 1}", c.name, c.arguments) for i, c in enumerate(calls))


def _usage(
    request: CompletionRequest, reply: Reply, text: str | None, tool_calls: tuple[ToolCallRequest, ...]
) -> Usage:
    # Estimate only what the reply does not fix, from lengths: the same as estimate_tokens of the joined text,
    # without building it.
    input_tokens, output_tokens = reply.input_tokens, reply.output_tokens
    if input_tokens is None:
        length = 0
        for message in request.messages:
            if message.content:
                length += len(message.content)
        input_tokens = length // 4 or 1
    if output_tokens is None:
        length = len(text) if text else 0
        for call in tool_calls:
            length += len(call.name) + len(call.arguments)
        output_tokens = length // 4 or 1
    return Usage(input_tokens, output_tokens)


def estimate_tokens(text: str) -> int:
    """About four characters a token: good enough to exercise budgets and cost reports offline."""
    return max(1, len(text) // 4)


def _check_output(content: str | None, schema: dict[str, Any], where: str) -> None:
    """Structured output is checked the way the real provider checks it, so fixtures can exercise the failure."""
    parse_structured_output(content, schema, where)


def _no_match_message(request: CompletionRequest, fixture: Fixture, used_up: list[Rule]) -> str:
    lines = [f"no scripted reply for {_who(request)} in {fixture.file}: no rule matches and there is no `default:`"]
    if any(rule.prompt is not None for rule in fixture.rules):
        lines.append(f"last user message: {_excerpt(last_user_text(request.messages))}")
    lines.extend(f"matched but used up ({len(rule.replies)} replies): {rule.describe()}" for rule in used_up)
    return "\n  ".join(lines)


def _who(request: CompletionRequest) -> str:
    parts = [f"agent {request.agent!r}" if request.agent else "no agent"]
    if request.step:
        parts.append(f"step {request.step!r}")
    parts.append(f"model {request.model!r}")
    return ", ".join(parts)


def _excerpt(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
