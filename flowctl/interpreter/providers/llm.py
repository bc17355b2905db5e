"""The LLM provider port: a small protocol every model backend implements, and its request/response types.

Built-ins: `openai` (the official SDK; OpenAI or any OpenAI-compatible server; `openai_provider` here) and `scripted`
(deterministic fixtures for offline runs and CI; `scripted` here). Providers never retry on their own: the
interpreter's policies own retries, so that every attempt is journaled.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from flowctl.interpreter.tools import ToolSpec

# The request digest's JSON form, built once (json.dumps with options builds an encoder per call, ~0.7 µs).
_DIGEST_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)
_ascii_string = json.encoder.encode_basestring_ascii  # how that encoder writes a str (it is ensure_ascii)
_string = json.encoder.encode_basestring  # how json.dumps(ensure_ascii=False) writes a str


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    id: str
    name: str
    arguments: str  # raw JSON text as the model produced it; parsed (and checked) by the tool loop


# Messages, requests and responses are values: never changed once made. They are not `frozen` because a
# frozen dataclass's __init__ costs ~0.3 µs more per object, and every model call makes several of them.
@dataclass(slots=True)
class Message:
    role: str  # system | user | assistant | tool
    content: str | None = None
    tool_calls: tuple[ToolCallRequest, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    # content parts beside the text, in OpenAI chat format ({"type": "image_url", …}, {"type": "input_audio", …}):
    # when present, `content` is sent as a list (the text first, as a text part)
    parts: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        content: Any = self.content
        if self.parts:
            content = ([{"type": "text", "text": self.content}] if self.content else []) + list(self.parts)
        data: dict[str, Any] = {"role": self.role, "content": content}
        if self.tool_calls:
            data["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            data["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            data["name"] = self.name
        return data


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens)


@dataclass(slots=True)
class CompletionRequest:
    model: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    output_schema: dict[str, Any] | None = None  # ask for JSON matching this schema
    params: dict[str, Any] = field(default_factory=dict)  # temperature, max_tokens, top_p, seed
    timeout: float = 60.0
    # Who is asking: lets the scripted provider match fixtures by agent/step. Not sent to real providers.
    agent: str = ""
    step: str = ""
    # `to_json()` as the digest encodes it (sorted, compact JSON), once `digest()` has: the transcript keeps it as is
    canonical: str | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [m.to_json() for m in self.messages],
            "tools": [
                {"name": t.name, "description": t.description, "input_schema": t.input_schema} for t in self.tools
            ],
            "output_schema": self.output_schema,
            "params": self.params,
        }

    def digest(self) -> str:
        """A stable hash of what is sent (journal and cache key); excludes timeouts and routing hints.

        The hash is of `to_json()` as sorted, compact, ASCII JSON, and must stay byte for byte what it is: resumed
        runs compare it with journaled digests. The common request (plain messages, no tools) is written out by
        hand here, ~1 µs cheaper than building the dicts and encoding them; anything else takes the encoder.
        """
        text = None if self.tools else self._plain_digest_text()
        if text is None:
            text = _DIGEST_ENCODER.encode(self.to_json())
        self.canonical = text
        return hashlib.sha256(text.encode()).hexdigest()

    def _plain_digest_text(self) -> str | None:
        """`to_json()` encoded as the digest encoder would, for a request without tools; None when a message is not
        plain (it has more than content and role) or a value is odd (a non-str content or model: the encoder's
        `default` decides those)."""
        try:
            # {"messages":[{"content":…,"role":…},…],"model":…,"output_schema":…,"params":…,"tools":[]}
            messages = []
            for m in self.messages:
                if m.tool_calls or m.tool_call_id is not None or m.name is not None or m.parts:
                    return None
                content = "null" if m.content is None else _ascii_string(m.content)
                messages.append(f'{{"content":{content},"role":{_ascii_string(m.role)}}}')
            schema = "null" if self.output_schema is None else _DIGEST_ENCODER.encode(self.output_schema)
            params = "{}" if type(self.params) is dict and not self.params else _DIGEST_ENCODER.encode(self.params)
            # f-strings: one copy of the text, where `+` copied it once per piece
            return (
                f'{{"messages":[{",".join(messages)}],"model":{_ascii_string(self.model)},"output_schema":{schema},'
                f'"params":{params},"tools":[]}}'
            )
        except TypeError:
            return None


@dataclass(slots=True)
class CompletionResponse:
    content: str | None
    tool_calls: tuple[ToolCallRequest, ...] = ()
    usage: Usage = Usage()
    finish_reason: str = "stop"
    model: str = ""
    # `journal_text()` once made: the journal and the transcript both keep it (a response is not changed once made)
    journaled: str | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in self.tool_calls],
            "usage": {"input_tokens": self.usage.input_tokens, "output_tokens": self.usage.output_tokens},
            "finish_reason": self.finish_reason,
            "model": self.model,
        }

    def journal_text(self) -> str:
        """`to_json()` as JSON text, for the journal. The common answer (text, no tool calls) is written out by hand:
        ~1 µs less per LLM call than building the dict and encoding it, which a fan-out of thousands feels."""
        if self.journaled is not None:
            return self.journaled
        self.journaled = text = self._journal_text()
        return text

    def _journal_text(self) -> str:
        content, usage = self.content, self.usage
        if not self.tool_calls and type(usage.input_tokens) is int and type(usage.output_tokens) is int:
            finish, model = self.finish_reason, self.model
            if type(finish) is str and type(model) is str and (content is None or type(content) is str):
                # an f-string, not `%`: str % parses its format on every call (~4 times slower, measured)
                return (
                    f'{{"content": {"null" if content is None else _string(content)}, "tool_calls": [], '
                    f'"usage": {{"input_tokens": {usage.input_tokens}, "output_tokens": {usage.output_tokens}}}, '
                    f'"finish_reason": {_string(finish)}, "model": {_string(model)}}}'
                )
        return json.dumps(self.to_json(), ensure_ascii=False, default=str)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompletionResponse:
        usage = data.get("usage") or {}
        return cls(
            content=data.get("content"),
            tool_calls=tuple(ToolCallRequest(c["id"], c["name"], c["arguments"]) for c in data.get("tool_calls", [])),
            usage=Usage(int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))),
            finish_reason=data.get("finish_reason", "stop"),
            model=data.get("model", ""),
        )


@runtime_checkable
class LLMProvider(Protocol):
    """One model backend. Raises flowctl.interpreter.errors.ProviderError subclasses, never SDK exceptions. May set
    a class attribute `provider_name` (e.g. "openai"): what watchers are told answered; else the model's `provider:`.
    May hand on its answer's text as it arrives (providers/streaming.py)."""

    def complete(self, request: CompletionRequest) -> Awaitable[CompletionResponse]:
        """The model's answer (an `async def` is fine; so is anything awaitable, such as a future)."""
        ...

    async def aclose(self) -> None: ...


def parse_structured_output(text: str | None, schema: dict[str, Any], where: str, *, note: str = "") -> Any:
    """Parse a structured answer and check it against the agent's output schema; every way it can be wrong is an
    OutputSchemaMismatch (retryable: the model may do better next time). Model output is untrusted, so JSON nested
    deeper than Python can decode is a mismatch too, never a crash. One function for every provider and the agent.
    """
    import jsonschema

    from flowctl.interpreter.errors import OutputSchemaMismatch

    try:
        value = json.loads(text or "")
        validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(schema)
        problem = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except ValueError as exc:
        raise OutputSchemaMismatch(f"output of {where} is not valid JSON{note}: {exc}") from None
    except RecursionError:
        raise OutputSchemaMismatch(f"output of {where} is JSON nested too deeply to read") from None
    if problem is not None:
        raise OutputSchemaMismatch(
            f"output of {where} does not match the output schema: at {problem.json_path}: {problem.message}"
        )
    return value
