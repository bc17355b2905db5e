"""The `openai` LLM provider: OpenAI, or any OpenAI-compatible server, through the official SDK.

Stage: interpreter (providers). Chat completions are always streamed, because streaming is what makes a
cut-off answer visible (no `finish_reason`), and turns every fault the SDK lets through silently (a
chunk that is not JSON, an HTML page with status 200, an empty `choices`, tool-call arguments cut at
max_tokens) into a typed `MalformedResponse`. The SDK client never retries (`max_retries=0`): the
interpreter's policies own retries so that each attempt is journaled.

`timeout` (per request, else per model) bounds connecting and each silence while reading: a stalled
server fails after `timeout` seconds however long a healthy stream runs; the step policy's timeout
bounds the whole call. This module and openai_clients.py are the only ones that import `openai`.

Per-call costs are kept near the bare SDK client's (bench/README.md, "provider"): the TLS context (tens of ms to load
the CA store) is built once per process and shared by every client; providers with the same endpoint, key and timeout
on the same event loop share one SDK client (openai_clients.py: an httpx client is bound to the loop it runs on); the
client's own timeout is the model's, so a request only carries one when it differs; the stream is closed under a
shielded scope only when it did not end by itself. Each piece of text is handed on to a watcher when one is set
(`streaming.py`).

The request goes through the SDK client's own `post` (its documented way to reach any endpoint) rather than
`chat.completions.create`, and chunks arrive as the decoded JSON objects (`AsyncStream[object]`) rather than
pydantic models: the body flowctl builds is already plain JSON, so the SDK's walk of it against its parameter types
changes nothing, and the chunks are checked here field by field anyway. The two together were about half of the bare
client's CPU time per call (bench/README.md, "provider"). Everything else is the SDK's own: authentication, headers,
the timeout, the SSE decoder, status errors and error events inside a stream.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import openai

from flowctl.dsl.ir import ModelDef
from flowctl.dsl.variables import expand
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
    ToolCallRequest,
    ToolSpec,
    Usage,
    parse_structured_output,
)
from flowctl.interpreter.providers.openai_clients import Endpoint, acquire, release, release_and_close, running_loop
from flowctl.interpreter.providers.streaming import TEXT_SINK, TextSink

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_PLACEHOLDER_KEY = "not-needed"
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})
_RESERVED_PARAMS = frozenset({"model", "messages", "tools", "stream", "stream_options", "response_format"})
_CONTEXT_WORDS = re.compile(r"context.length|context.window|maximum context|too many tokens", re.I)
_MAX_QUOTED = 300
MAX_TOKEN_COUNT = 10**12  # a usage number above this is not a token count (and would overflow cost arithmetic)


# --- configuration ------------------------------------------------------------------------------


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Expand `${VAR}` and `${VAR:-default}` (default when unset or empty); unset without default fails."""
    return expand(text, env, lambda name: ProviderError(f"base_url refers to ${{{name}}}, but {name} is not set"))


def resolve_endpoint(model: ModelDef, env: Mapping[str, str]) -> Endpoint:
    """base_url: the model's (expanded), else OPENAI_BASE_URL, else OpenAI; the key from api_key_env."""
    base_url = expand_vars(model.base_url, env) if model.base_url else None
    base_url = base_url or env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    host = _host_of(base_url)
    key = env.get(model.api_key_env)
    if not key:
        if _is_local(base_url):
            key = LOCAL_PLACEHOLDER_KEY
        else:
            raise AuthError(
                f"no API key for model {model.model!r} at {host}: set {model.api_key_env} "
                f"(the model's api_key_env) to your API key"
            )
    return Endpoint(base_url=base_url, host=host, api_key=key, key_env=model.api_key_env)


def _host_of(url: str) -> str:
    """host[:port] only: never user info, so a URL with credentials cannot leak into messages."""
    parts = urlsplit(url)
    host = parts.hostname or url
    return f"{host}:{parts.port}" if parts.port else host


def _is_local(url: str) -> bool:
    hostname = urlsplit(url).hostname or ""
    return hostname in _LOCAL_HOSTS or hostname.endswith(".localhost")


# --- the provider -------------------------------------------------------------------------------


class OpenAIProvider:
    """An `LLMProvider` over the OpenAI SDK. Its client is taken on first use from the clients shared on the running
    event loop (`openai_clients.acquire`), and given back by `aclose`."""

    provider_name = "openai"

    def __init__(self, model: ModelDef, env: Mapping[str, str] | None = None) -> None:
        self.model = model
        self._env: Mapping[str, str] = os.environ if env is None else env
        self._endpoint: Endpoint | None = None
        self._client: openai.AsyncOpenAI | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop `_client` belongs to (None: not shared)

    @property
    def endpoint(self) -> Endpoint:
        """Resolved on first use, so a model that is never called never needs a key."""
        if self._endpoint is None:
            self._endpoint = resolve_endpoint(self.model, self._env)
        return self._endpoint

    def _get_client(self) -> openai.AsyncOpenAI:
        loop = running_loop()
        if self._client is None or loop is not self._loop:
            if self._client is not None:  # used on another event loop before: its client cannot follow
                release(self._client, self._loop)  # bound to that loop: dropped, not closed from this one
            self._client = acquire(self.endpoint, self.model.timeout, loop)
            self._loop = loop
        return self._client

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        """One streamed chat completion; every failure becomes a ProviderError subclass."""
        client = self._get_client()
        endpoint = self.endpoint
        key = endpoint.api_key
        call = _Call(request.model or self.model.model, endpoint, request.timeout)
        try:
            response = await self._stream(client, request, call)
        except ProviderError as exc:
            raise _redacted(exc, key) from None
        except (openai.OpenAIError, ValueError) as exc:  # ValueError: the SDK's SSE decoder (JSON, UTF-8, int digits)
            mapped = _redacted(map_error(exc, call), key)
            # The SDK's own message may quote the server's echo of the key: then drop it.
            raise mapped from (None if key in str(exc) else exc)
        except _WatcherFailed as failed:  # the watcher's own error, not the model's: passed on as it is
            raise failed.error from None
        if request.output_schema is not None and not response.tool_calls:
            try:
                check_output(response, request.output_schema, call)
            except OutputSchemaMismatch as exc:
                # paid for: callers may count it; and the answer itself, for the transcript
                exc.usage, exc.response = response.usage, response  # type: ignore[attr-defined]
                raise
        return response

    async def _stream(self, client: openai.AsyncOpenAI, request: CompletionRequest, call: _Call) -> CompletionResponse:
        options: openai.RequestOptions = {"security": {"bearer_auth": True}}  # as `chat.completions.create` asks
        if request.timeout != self.model.timeout:  # the client's timeout is the model's: else the SDK builds none
            options["timeout"] = request.timeout
        stream: openai.AsyncStream[object] = await client.post(
            "/chat/completions",
            body=request_body(request, call.model),
            cast_to=object,
            options=options,
            stream=True,
            stream_cls=openai.AsyncStream[object],
        )
        collector = _Collector(headers=stream.response.headers, sink=TEXT_SINK.get())
        try:
            async for chunk in stream:
                collector.add(chunk)
        except openai.APITimeoutError:
            raise  # a silence longer than `timeout`: a timeout, mapped as such
        except openai.APIConnectionError as exc:
            # the server answered and was streaming: the connection dropped, it did not fail to connect
            raise _stream_cut(exc, call, collector.events) from exc
        finally:
            # A stream read to its end has closed its response (and handed the connection back); one that stopped
            # early (an error, a cancellation) is closed here, shielded so a cancelled call still frees it.
            if not stream.response.is_closed:
                with anyio.move_on_after(1, shield=True):
                    await stream.close()
        return collector.finish(call)

    async def aclose(self) -> None:
        """Give the client back (the last provider sharing it closes it); a later call takes one again."""
        client, self._client = self._client, None
        if client is not None:
            loop, self._loop = self._loop, None
            await release_and_close(client, loop)


class _WatcherFailed(Exception):
    """A text sink raised: carries its error out of the stream untouched (not taken for a malformed stream)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True, slots=True)
class _Call:
    """What messages name: the model, the host, and the timeout in force."""

    model: str
    endpoint: Endpoint
    timeout: float

    @property
    def where(self) -> str:
        return f"model {self.model!r} at {self.endpoint.host}"


# --- the request --------------------------------------------------------------------------------


def request_body(request: CompletionRequest, model: str) -> dict[str, Any]:
    """The JSON body of a streamed chat completion with usage. The step's `params` go in as they are (a server
    ignores or refuses what it does not know), except those flowctl sets itself."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [m.to_json() for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.tools:
        body["tools"] = [_tool_json(t) for t in request.tools]
    if request.output_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": request.output_schema, "strict": False},
        }
    for name, value in request.params.items():
        if name not in _RESERVED_PARAMS:
            body[name] = value
    return body


def _tool_json(tool: ToolSpec) -> dict[str, Any]:
    function = {"name": tool.name, "description": tool.description, "parameters": tool.input_schema}
    return {"type": "function", "function": function}


# --- the response -------------------------------------------------------------------------------


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _Collector:
    """Joins stream chunks into one response and notices what is missing at the end; hands each piece of text to
    `sink` (a watcher) as it arrives."""

    headers: Mapping[str, str]  # the response's: read only to say what came instead of a stream
    sink: TextSink | None = None
    events: int = 0
    saw_choice: bool = False
    content: list[str] = field(default_factory=list)
    calls: dict[int, _PartialCall] = field(default_factory=dict)
    slots: dict[int | None, int] = field(default_factory=dict)  # the stream's `index` → the call it continues
    finish_reason: str | None = None
    model: str = ""
    usage: Usage | None = None

    def add(self, chunk: object) -> None:
        """One decoded stream event: a chunk object, read with a check of every field it uses."""
        self.events += 1
        if type(chunk) is not dict:
            raise MalformedResponse(f"stream event is not a chat completion chunk: {_quote(repr(chunk))}")
        model = chunk.get("model")
        if model and isinstance(model, str):
            self.model = model
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = _usage(usage)
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise MalformedResponse(f"stream chunk has 'choices' of type {type(choices).__name__}")
        for choice in choices:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        self.saw_choice = True
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise MalformedResponse("stream chunk has a 'delta' that is not an object")
        if isinstance(delta.get("content"), str):
            self.content.append(delta["content"])
            if self.sink is not None and delta["content"]:
                _tell(self.sink, delta["content"])
        parts = delta.get("tool_calls") or []
        if not isinstance(parts, list):
            raise MalformedResponse(f"stream chunk has 'tool_calls' of type {type(parts).__name__}")
        for part in parts:
            self._add_call_part(part)
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])

    def _add_call_part(self, part: object) -> None:
        if not isinstance(part, dict):
            raise MalformedResponse("stream chunk has a tool call that is not an object")
        function = part.get("function") or {}
        if not isinstance(function, dict):
            raise MalformedResponse("stream chunk has a tool call whose 'function' is not an object")
        call_id = _text(part.get("id"))
        partial = self.calls.setdefault(self._slot(part.get("index"), call_id), _PartialCall())
        partial.id = partial.id or call_id
        partial.name = partial.name or _text(function.get("name"))
        partial.arguments.append(_text(function.get("arguments")))

    def _slot(self, index: object, call_id: str) -> int:
        """Which call a tool-call delta continues. Pieces without an id continue the call last seen at their
        `index`; a new id starts a new call even at a used index, because some servers (Ollama) send `index` 0
        for every call of a turn, or no index at all, and joining those would merge several calls into one."""
        key = index if isinstance(index, int) else None
        slot = self.slots.get(key)
        if slot is None:
            slot = index if isinstance(index, int) and index not in self.calls else self._next_slot()
        elif call_id and self.calls[slot].id and self.calls[slot].id != call_id:
            slot = self._next_slot()
        self.slots[key] = slot
        return slot

    def _next_slot(self) -> int:
        return max(self.calls) + 1 if self.calls else 0

    def finish(self, call: _Call) -> CompletionResponse:
        """Refuse what is not a whole answer; else build the response."""
        self._check_complete(call)
        tool_calls = tuple(self._tool_call(i, p, call) for i, p in sorted(self.calls.items()))
        if self.finish_reason == "length":
            _check_arguments(tool_calls, call)
        return CompletionResponse(
            content="".join(self.content) or None,
            tool_calls=tool_calls,
            usage=self.usage or Usage(),
            finish_reason=self.finish_reason or "stop",
            model=self.model or call.model,
        )

    def _check_complete(self, call: _Call) -> None:
        if self.events == 0:
            kind = self.headers.get("content-type", "").split(";")[0].strip() or "no content type"
            raise MalformedResponse(
                f"{call.where} did not send an event stream (got {kind}); is the base URL an OpenAI-compatible API?"
            )
        if not self.saw_choice:
            raise MalformedResponse(f"{call.where} answered with no choices")
        if self.finish_reason is None:
            raise MalformedResponse(f"the stream from {call.where} ended without a finish_reason (cut off)")

    def _tool_call(self, index: int, partial: _PartialCall, call: _Call) -> ToolCallRequest:
        if not partial.name:
            raise MalformedResponse(f"{call.where} sent tool call #{index} without a name")
        call_id = partial.id or f"call_{index}"
        return ToolCallRequest(id=call_id, name=partial.name, arguments="".join(partial.arguments))


def _tell(sink: TextSink, piece: str) -> None:
    try:
        sink(piece)
    except Exception as exc:
        raise _WatcherFailed(exc) from exc


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _usage(data: dict[str, Any]) -> Usage:
    return Usage(
        input_tokens=token_count(data.get("prompt_tokens")), output_tokens=token_count(data.get("completion_tokens"))
    )


def token_count(value: object) -> int:
    """A usage number the server sent, if it can be a token count (a whole number from 0 to MAX_TOKEN_COUNT);
    anything else (negative, fractional, a string, a 5,000-digit number) counts as unknown: 0."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_COUNT:
        return value
    return 0


def _check_arguments(tool_calls: tuple[ToolCallRequest, ...], call: _Call) -> None:
    """At finish_reason 'length', arguments that do not parse were cut off: the answer is broken.

    Otherwise bad arguments are the tool loop's business (it tells the model)."""
    for tool_call in tool_calls:
        try:
            json.loads(tool_call.arguments or "{}")
        except ValueError:
            raise MalformedResponse(
                f"{call.where} stopped at max_tokens (finish_reason 'length') inside the "
                f"arguments of tool call {tool_call.name!r}; raise max_tokens"
            ) from None


def check_output(response: CompletionResponse, schema: dict[str, Any], call: _Call) -> None:
    """Structured output: the content must be JSON matching the schema (it stays JSON text)."""
    cut = " (cut off at max_tokens)" if response.finish_reason == "length" else ""
    parse_structured_output(response.content, schema, call.where, note=f"{cut}; got {_quote(response.content or '')}")


# --- errors -------------------------------------------------------------------------------------


def map_error(exc: BaseException, call: _Call) -> ProviderError:
    """Translate an SDK (or decoding) failure into the flowctl error tree."""
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeout(f"{call.where} did not answer within {call.timeout:g}s (timeout)")
    if isinstance(exc, openai.APIConnectionError):
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
        return ProviderUnavailable(f"cannot connect to {call.where} ({cause})")
    if isinstance(exc, openai.APIStatusError):
        return _map_status(exc, call)
    if isinstance(exc, openai.APIError):
        return _map_stream_error(exc, call)
    if isinstance(exc, ValueError):  # JSONDecodeError / UnicodeDecodeError / int digit limit from the SSE decoder
        return MalformedResponse(f"{call.where} sent a stream chunk that cannot be decoded: {_decode_problem(exc)}")
    return ProviderError(f"openai client error for {call.where}: {exc}")


def _map_status(exc: openai.APIStatusError, call: _Call) -> ProviderError:
    error = _status_error(exc, call, _detail(exc))
    error.status = exc.status_code
    if error.retryable:  # a server asking to wait is heard whatever the status, as the SDK and HTTP do
        error.retry_after = parse_retry_after(exc.response.headers)
        if error.retry_after is not None:
            error.message = f"{error.message.rstrip(' .;:')} (the server asks to retry after {error.retry_after:g}s)"
            error.args = (error.message,)
    return error


def _status_error(exc: openai.APIStatusError, call: _Call, detail: str) -> ProviderError:
    status = exc.status_code
    if status == 429 and "insufficient_quota" in (exc.code, exc.type):
        return QuotaExhausted(f"quota exhausted for {call.where} — not retried; check billing (429): {detail}")
    if status == 429:
        return RateLimited(f"rate limited by {call.where} (429): {detail}")
    if status in (401, 403):
        return AuthError(f"{call.where} refused the API key from {call.endpoint.key_env} ({status}): {detail}")
    if status == 408:
        return ProviderTimeout(f"{call.where} timed out on the server side (408): {detail}")
    if _is_context_error(exc, detail) and status in (400, 413, 422):
        return ContextTooLong(f"the prompt is too long for {call.where} ({status}): {detail}")
    if status >= 500 or status == 409:
        return ProviderUnavailable(f"{call.where} failed with a server error ({status}): {detail}")
    return BadRequest(f"{call.where} rejected the request ({status}): {detail}")


def _stream_cut(exc: openai.APIConnectionError, call: _Call, chunks: int) -> ProviderError:
    cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection lost"
    return ProviderUnavailable(f"the stream from {call.where} was cut after {chunks} chunk(s) ({cause})")


def _decode_problem(exc: ValueError) -> str:
    if "integer string conversion" in str(exc):  # Python's message suggests sys.set_int_max_str_digits: not for users
        return "it holds a number longer than 4,300 digits"
    return str(exc)


def _map_stream_error(exc: openai.APIError, call: _Call) -> ProviderError:
    """An error event inside a 200 stream: classify by its code, else treat as a server fault."""
    detail = _quote(exc.message)
    if "insufficient_quota" in (exc.code, exc.type):
        return QuotaExhausted(f"quota exhausted for {call.where} — not retried; check billing: {detail}")
    if exc.code in ("rate_limit_exceeded", "rate_limit") or exc.type == "rate_limit_error":
        return RateLimited(f"rate limited by {call.where} (in stream): {detail}")
    if _is_context_error(exc, detail):
        return ContextTooLong(f"the prompt is too long for {call.where}: {detail}")
    return ProviderUnavailable(f"{call.where} reported an error inside the stream: {detail}")


def _is_context_error(exc: openai.APIError, detail: str) -> bool:
    return exc.code == "context_length_exceeded" or bool(_CONTEXT_WORDS.search(detail))


def _detail(exc: openai.APIStatusError) -> str:
    """The server's own message (not the SDK's 'Error code: N - ...' wrapper), shortened."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return _quote(body["message"])
    if isinstance(body, str) and body.strip():
        return _quote(body)
    return exc.response.reason_phrase or "no details"


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date.

    `headers` is the response's case-insensitive header mapping (a plain dict needs lower-case names)."""
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return max(millis / 1000, 0.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return max(seconds, 0.0)
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(email.utils.mktime_tz(parsed) - time.time(), 0.0)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_QUOTED else text[: _MAX_QUOTED - 1] + "…"


def _redacted(exc: ProviderError, api_key: str) -> ProviderError:
    """The same error with the API key masked out of its message (servers may echo it)."""
    if api_key and api_key != LOCAL_PLACEHOLDER_KEY and api_key in exc.message:
        exc.message = exc.message.replace(api_key, "***")
        exc.args = (exc.message,)
    return exc
