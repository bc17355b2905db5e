"""The scripted fixture: its format, the rules that match requests, and the parser that validates it.

`flowctl run FILE --scripted FIXTURE` answers every model from FIXTURE; a model may also declare
`provider: scripted` with `fixture: PATH`. The user reference is docs/scripted.md. The fixture format (YAML or JSON):

    # flowctl scripted fixture
    responses:                    # rules, tried in order; the first that matches and is not used up answers
      - agent: sentiment          # match keys, all optional: agent, step, model (exact or glob like "per_task*"),
        reply: "Positive."        #   prompt (a regex searched in the last user message)
      - step: plan                # `reply:` is reused every time the rule matches
        replies:                  # `replies:` are used in turn; when used up the rule stops matching (falls through)
          - json: {tasks: [{name: a}, {name: b}]}    # structured: content is the JSON text
          - "plain text"
      - agent: researcher
        replies:
          - tool_calls: [{name: get_current_time, arguments: {timezone: UTC}}]  # arguments: mapping or raw JSON text
          - "It is noon."
      - agent: flaky
        replies:
          - {error: rate_limit, retry_after: 0.01}  # rate_limit, quota, auth, bad_request, context_length,
          - "recovered"                             #   unavailable, timeout, malformed (+ optional `message`)
        latency: 50ms             # simulated latency per reply of this rule; a reply may carry its own `latency`
    default: "ok"                 # optional reply when nothing matches; without it, an unmatched request fails
    tools:                        # optional scripted MCP tool results (servers named here are not started)
      time.get_current_time: {value: {datetime: "2026-01-01T12:00:00Z"}}  # one result, reused
      files.read_file: [{text: "a"}, {error: "no such file"}]             # results used in turn

A reply is a string (its content) or a mapping with one of `content`, `json`, `tool_calls`, `error` (`content` may
accompany `tool_calls`), plus optional `latency` and `usage: {input_tokens, output_tokens}`. Usage not given is
estimated as len(text) // 4 (at least 1) of the request's message contents and of the reply, so token accounting
and budgets are exercised offline. A tool result is a mapping of `value` and/or `text`, or `error` (a tool-reported
error), or `fault` (server_crashed, tool_timeout, server_start: a transport fault), plus optional `latency`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowctl.dsl import catalogue as cat
from flowctl.dsl.compile import DURATION_HINT, checked_duration
from flowctl.dsl.diagnostics import Diagnostic, Span, finalize, has_errors
from flowctl.dsl.loader import JsonPath, SourceMap, load_file
from flowctl.interpreter.errors import (
    AuthError,
    BadRequest,
    ContextTooLong,
    FlowctlError,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExhausted,
    RateLimited,
)
from flowctl.interpreter.providers.llm import CompletionRequest, Message

ERROR_KINDS: dict[str, type[ProviderError]] = {
    "rate_limit": RateLimited,
    "quota": QuotaExhausted,
    "auth": AuthError,
    "bad_request": BadRequest,
    "context_length": ContextTooLong,
    "unavailable": ProviderUnavailable,
    "timeout": ProviderTimeout,
    "malformed": MalformedResponse,
}
TOOL_FAULTS = ("server_crashed", "tool_timeout", "server_start")

_TOP_KEYS = ("responses", "default", "tools")
_RULE_KEYS = ("agent", "step", "model", "prompt", "reply", "replies", "latency")
_REPLY_KINDS = ("content", "json", "tool_calls", "error")
_REPLY_KEYS = (*_REPLY_KINDS, "message", "retry_after", "latency", "usage")
_CALL_KEYS = ("name", "arguments")
_USAGE_KEYS = ("input_tokens", "output_tokens")
_TOOL_KEYS = ("value", "text", "error", "fault", "latency")


class FixtureError(FlowctlError):
    """A fixture file is unusable. Lists every problem at once, each as `file:line:col: message`."""

    code = "invalid-fixture"

    def __init__(self, file: str, diagnostics: list[Diagnostic]) -> None:
        lines = [_diagnostic_line(d) for d in diagnostics]
        count = f"{len(lines)} problem{'s' if len(lines) != 1 else ''}"
        super().__init__(
            f"invalid scripted fixture {file} ({count}):\n  " + "\n  ".join(lines), span=_first(diagnostics)
        )
        self.file = file
        self.diagnostics = diagnostics


# --- the fixture ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    name: str
    arguments: str  # raw JSON text, as a model would send it (may be deliberately broken)


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer: content, structured JSON, tool calls, or an error kind."""

    span: Span
    content: str | None = None
    json_text: str | None = None
    tool_calls: tuple[ScriptedCall, ...] = ()
    error: str | None = None
    message: str | None = None
    retry_after: float | None = None
    latency: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def text(self) -> str | None:
        return self.json_text if self.json_text is not None else self.content


@dataclass(frozen=True, slots=True)
class Rule:
    """A `responses:` entry: match keys (None = any) and its replies."""

    index: int
    span: Span
    replies: tuple[Reply, ...]
    repeat: bool  # `reply:` (reused forever) rather than `replies:` (used in turn)
    agent: str | None = None
    step: str | None = None
    model: str | None = None
    prompt: re.Pattern[str] | None = None
    latency: float | None = None

    def matches(self, request: CompletionRequest) -> bool:
        return (
            _glob(self.agent, request.agent)
            and _glob(self.step, request.step)
            and _glob(self.model, request.model)
            and (self.prompt is None or self.prompt.search(last_user_text(request.messages)) is not None)
        )

    def describe(self) -> str:
        keys = [f"{k} {v!r}" for k, v in (("agent", self.agent), ("step", self.step), ("model", self.model)) if v]
        if self.prompt is not None:
            keys.append(f"prompt /{self.prompt.pattern}/")
        return f"responses[{self.index}]" + (f" ({', '.join(keys)})" if keys else "") + f" at {self.span}"


@dataclass(frozen=True, slots=True)
class ToolScript:
    """One scripted tool result, or a transport fault to raise."""

    span: Span
    text: str = ""
    value: Any = None
    is_error: bool = False
    fault: str | None = None
    latency: float | None = None


@dataclass(frozen=True, slots=True)
class ToolEntry:
    """A `tools:` entry: one result reused forever, or a list used in turn."""

    server: str
    tool: str
    results: tuple[ToolScript, ...]
    repeat: bool

    @property
    def key(self) -> str:
        return f"{self.server}.{self.tool}"


@dataclass(frozen=True, slots=True)
class Fixture:
    """A parsed, validated fixture. Immutable: consumption state lives in ScriptedProvider / ScriptedToolPool."""

    file: str
    rules: tuple[Rule, ...] = ()
    default: Reply | None = None
    tools: dict[str, ToolEntry] = field(default_factory=dict)

    @classmethod
    def from_data(cls, data: Any, file: str = "<fixture>") -> Fixture:
        """Build from plain Python data (same format as the file); problems raise FixtureError at `file:1:1`."""
        return parse_fixture(data, SourceMap(file))

    def over(self, base: Fixture) -> Fixture:
        """This fixture layered over `base`: its rules are tried first, its default and tools win."""
        shifted = tuple(dataclasses.replace(rule, index=rule.index + len(self.rules)) for rule in base.rules)
        return Fixture(
            f"{self.file} + {base.file}",
            self.rules + shifted,
            self.default if self.default is not None else base.default,
            {**base.tools, **self.tools},
        )


def load_fixture(path: str | Path) -> Fixture:
    """Load a YAML or JSON fixture through the hardened loader, so every problem has file:line:col."""
    doc = load_file(path)
    if has_errors(doc.diagnostics):
        raise FixtureError(doc.file, finalize(doc.diagnostics))
    return parse_fixture(doc.data, doc.source_map)


def parse_fixture(data: Any, source_map: SourceMap) -> Fixture:
    """Validate loaded fixture data; `source_map` places its problems (FixtureError, every problem at once)."""
    return _Parser(source_map).fixture(data)


# --- validation -------------------------------------------------------------------------------------------------


class _Parser:
    """Turns fixture data into a Fixture, collecting every problem before raising one FixtureError."""

    def __init__(self, source_map: SourceMap) -> None:
        self.map = source_map
        self.diagnostics: list[Diagnostic] = []

    def fixture(self, data: Any) -> Fixture:
        top = self.mapping(data, (), _TOP_KEYS, "fixture")
        if top is None:
            raise FixtureError(self.map.file, self.diagnostics)
        rules = self.rules(top.get("responses"))
        default = self.reply(top["default"], ("default",)) if top.get("default") is not None else None
        tools = self.tools(top.get("tools"))
        if self.diagnostics:
            raise FixtureError(self.map.file, finalize(self.diagnostics))
        return Fixture(self.map.file, rules, default, tools)

    # helpers -------------------------------------------------------------------------------------------------

    def problem(self, path: JsonPath, message: str, hint: str = "") -> None:
        self.diagnostics.append(cat.invalid_value(self.map.value(path), f"{_where(path)}: {message}", hint))

    def wrong_type(self, path: JsonPath, expected: str, value: Any) -> None:
        span = self.map.value(path)
        self.diagnostics.append(cat.wrong_type(span, f"{expected} for {_where(path)}", _type_name(value)))

    def mapping(self, value: Any, path: JsonPath, allowed: Iterable[str], where: str) -> dict[str, Any] | None:
        """The value as a mapping with only `allowed` keys (unknown keys are reported with a did-you-mean)."""
        label = f"{where} {_where(path)}" if path else _where(path)
        if not isinstance(value, dict):
            self.diagnostics.append(cat.wrong_type(self.map.value(path), f"a mapping for {label}", _type_name(value)))
            return None
        allowed = tuple(allowed)
        for key in value:
            if key not in allowed:
                self.diagnostics.append(cat.unknown_key(self.map.key((*path, key)), key, allowed, label))
        return value

    def string(self, value: Any, path: JsonPath) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.wrong_type(path, "a string", value)
            return None
        return value

    def duration(self, value: Any, path: JsonPath) -> float | None:
        try:
            return checked_duration(value)
        except ValueError as exc:
            self.problem(path, str(exc), DURATION_HINT)
            return None

    def count(self, value: Any, path: JsonPath) -> int | None:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            self.wrong_type(path, "a non-negative integer", value)
            return None
        return value

    # responses -----------------------------------------------------------------------------------------------

    def rules(self, value: Any) -> tuple[Rule, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.wrong_type(("responses",), "a list of rules", value)
            return ()
        rules = (self.rule(item, ("responses", i), i) for i, item in enumerate(value))
        return tuple(rule for rule in rules if rule is not None)

    def rule(self, value: Any, path: JsonPath, index: int) -> Rule | None:
        data = self.mapping(value, path, _RULE_KEYS, "rule")
        if data is None:
            return None
        replies, repeat = self.rule_replies(data, path)
        return Rule(
            index=index,
            span=self.map.value(path),
            replies=replies,
            repeat=repeat,
            agent=self.string(data.get("agent"), (*path, "agent")),
            step=self.string(data.get("step"), (*path, "step")),
            model=self.string(data.get("model"), (*path, "model")),
            prompt=self.regex(data.get("prompt"), (*path, "prompt")),
            latency=self.duration(data.get("latency"), (*path, "latency")),
        )

    def rule_replies(self, data: dict[str, Any], path: JsonPath) -> tuple[tuple[Reply, ...], bool]:
        if ("reply" in data) == ("replies" in data):
            self.problem(path, "a rule needs exactly one of `reply` (reused) or `replies` (used in turn)")
            return (), True
        if "reply" in data:
            reply = self.reply(data["reply"], (*path, "reply"))
            return ((reply,) if reply else ()), True
        items = data["replies"]
        if not isinstance(items, list) or not items:
            self.wrong_type((*path, "replies"), "a non-empty list of replies", items)
            return (), False
        replies = (self.reply(item, (*path, "replies", i)) for i, item in enumerate(items))
        return tuple(r for r in replies if r is not None), False

    def regex(self, value: Any, path: JsonPath) -> re.Pattern[str] | None:
        text = self.string(value, path)
        if text is None:
            return None
        try:
            return re.compile(text)
        except re.error as exc:
            self.problem(path, f"not a valid regular expression: {exc}")
            return None

    def reply(self, value: Any, path: JsonPath) -> Reply | None:
        span = self.map.value(path)
        if isinstance(value, str):
            return Reply(span, content=value)
        if not isinstance(value, dict):
            self.wrong_type(path, "a reply (a string or a mapping)", value)
            return None
        data = self.mapping(value, path, _REPLY_KEYS, "reply")
        if data is None:
            return None
        kinds = [k for k in _REPLY_KINDS if k in data]
        if len(kinds) != 1 and sorted(kinds) != ["content", "tool_calls"]:
            found = ", ".join(kinds) or "none"
            self.problem(path, f"a reply needs one of `content`, `json`, `tool_calls`, `error` (found: {found})")
            return None
        return Reply(
            span,
            content=self.string(data.get("content"), (*path, "content")),
            json_text=self.json_text(data, path),
            tool_calls=self.tool_calls(data.get("tool_calls"), (*path, "tool_calls")),
            error=self.error_kind(data.get("error"), (*path, "error")),
            message=self.string(data.get("message"), (*path, "message")),
            retry_after=self.duration(data.get("retry_after"), (*path, "retry_after")),
            latency=self.duration(data.get("latency"), (*path, "latency")),
            **self.usage(data.get("usage"), (*path, "usage")),
        )

    def json_text(self, data: dict[str, Any], path: JsonPath) -> str | None:
        if "json" not in data:
            return None
        try:
            return json.dumps(data["json"], ensure_ascii=False, allow_nan=False)
        except ValueError as exc:
            self.problem((*path, "json"), f"cannot be written as JSON: {exc}")
            return None

    def error_kind(self, value: Any, path: JsonPath) -> str | None:
        kind = self.string(value, path)
        if kind is not None and kind not in ERROR_KINDS:
            hint = cat.did_you_mean(kind, ERROR_KINDS) or "error kinds: " + ", ".join(ERROR_KINDS)
            self.problem(path, f"unknown error kind {kind!r}", hint)
            return None
        return kind

    def tool_calls(self, value: Any, path: JsonPath) -> tuple[ScriptedCall, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not value:
            self.wrong_type(path, "a non-empty list of tool calls", value)
            return ()
        calls = (self.tool_call(item, (*path, i)) for i, item in enumerate(value))
        return tuple(c for c in calls if c is not None)

    def tool_call(self, value: Any, path: JsonPath) -> ScriptedCall | None:
        data = self.mapping(value, path, _CALL_KEYS, "tool call")
        if data is None:
            return None
        if "name" not in data:
            self.diagnostics.append(cat.missing_key(self.map.value(path), "name", _where(path)))
        name = self.string(data.get("name"), (*path, "name"))
        arguments = self.arguments(data.get("arguments", {}), (*path, "arguments"))
        return ScriptedCall(name, arguments) if name is not None and arguments is not None else None

    def arguments(self, value: Any, path: JsonPath) -> str | None:
        """Raw JSON text: a string is sent verbatim (so a fixture can send broken arguments), a mapping as JSON."""
        if isinstance(value, str):
            return value
        if not isinstance(value, dict):
            self.wrong_type(path, "a mapping or a JSON string", value)
            return None
        return json.dumps(value, ensure_ascii=False)

    def usage(self, value: Any, path: JsonPath) -> dict[str, int | None]:
        if value is None:
            return {}
        data = self.mapping(value, path, _USAGE_KEYS, "usage")
        if data is None:
            return {}
        return {key: self.count(data.get(key), (*path, key)) for key in _USAGE_KEYS}

    # tools -----------------------------------------------------------------------------------------------------

    def tools(self, value: Any) -> dict[str, ToolEntry]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.wrong_type(("tools",), "a mapping of `server.tool` to results", value)
            return {}
        entries = (self.tool_entry(key, item, ("tools", key)) for key, item in value.items())
        return {entry.key: entry for entry in entries if entry is not None}

    def tool_entry(self, key: str, value: Any, path: JsonPath) -> ToolEntry | None:
        server, _, tool = key.partition(".")
        if not server or not tool:
            hint = "name it `server.tool`, e.g. time.get_current_time"
            self.diagnostics.append(cat.invalid_value(self.map.key(path), f"tools: bad key {key!r}", hint))
            return None
        if isinstance(value, list):
            if not value:
                self.wrong_type(path, "a result or a non-empty list of results", value)
                return None
            results = (self.tool_result(item, (*path, i)) for i, item in enumerate(value))
            return ToolEntry(server, tool, tuple(r for r in results if r is not None), repeat=False)
        result = self.tool_result(value, path)
        return ToolEntry(server, tool, (result,) if result else (), repeat=True)

    def tool_result(self, value: Any, path: JsonPath) -> ToolScript | None:
        data = self.mapping(value, path, _TOOL_KEYS, "tool result")
        if data is None:
            return None
        latency = self.duration(data.get("latency"), (*path, "latency"))
        span = self.map.value(path)
        if "fault" in data:
            return self.tool_fault(data, path, span, latency)
        if "error" in data:
            text = self.string(data["error"], (*path, "error"))
            return ToolScript(span, text or "", text or "", is_error=True, latency=latency)
        if "value" not in data and "text" not in data:
            self.problem(path, "a tool result needs `value` and/or `text`, or `error`, or `fault`")
            return None
        text = self.string(data.get("text"), (*path, "text"))
        result_value = data.get("value", text)
        if text is None:
            text = result_value if isinstance(result_value, str) else json.dumps(result_value, ensure_ascii=False)
        return ToolScript(span, text, result_value, latency=latency)

    def tool_fault(self, data: dict[str, Any], path: JsonPath, span: Span, latency: float | None) -> ToolScript | None:
        fault = self.string(data["fault"], (*path, "fault"))
        if fault is not None and fault not in TOOL_FAULTS:
            hint = cat.did_you_mean(fault, TOOL_FAULTS) or "faults: " + ", ".join(TOOL_FAULTS)
            self.problem((*path, "fault"), f"unknown fault {fault!r}", hint)
            return None
        return ToolScript(span, fault=fault, latency=latency) if fault else None


# --- small helpers ----------------------------------------------------------------------------------------------


def _glob(pattern: str | None, value: str) -> bool:
    """Exact first, so names holding glob characters (`per_task[0]`) still match themselves."""
    return pattern is None or pattern == value or (_has_magic(pattern) and fnmatch.fnmatchcase(value, pattern))


@functools.cache
def _has_magic(pattern: str) -> bool:
    """Whether a pattern has glob characters: one without them matches only itself (no regex needed)."""
    return any(c in pattern for c in "*?[")


def last_user_text(messages: tuple[Message, ...]) -> str:
    return next((m.content or "" for m in reversed(messages) if m.role == "user"), "")


def _where(path: JsonPath) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return text or "the fixture"


def _type_name(value: Any) -> str:
    names: Mapping[type, str] = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list"}
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    return names.get(type(value), type(value).__name__)


def _diagnostic_line(diagnostic: Diagnostic) -> str:
    hint = f" ({diagnostic.hint})" if diagnostic.hint else ""
    return f"{diagnostic.span}: {diagnostic.message}{hint} [{diagnostic.code}]"


def _first(diagnostics: list[Diagnostic]) -> Span | None:
    return diagnostics[0].span if diagnostics else None
