"""The tool port: how the interpreter reaches MCP servers. The real implementation is `mcp.mcp_pool.McpPool`; the
scripted one is `providers.scripted.ScriptedToolPool`.

One pool per run: it owns one session per server, started lazily and shared by every agent and tool step that names
the server, and closes them all at the end of the run.

What a server asks of flowctl while a tool call runs (sampling, elicitation, progress, log messages) goes to the
`ToolCallHooks` the caller lends the call through `TOOL_HOOKS` (the engine sets it around each call; the pool reads it
in the calling task): the pool speaks MCP, the engine answers with models, the journal and people.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from flowctl.dsl.ir import ServerDef


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model: `name` is unambiguous across servers (see the tool loop in engine/agent.py)."""

    name: str
    description: str
    input_schema: dict[str, Any]
    idempotent: bool = False  # the server annotated it `idempotentHint: true`: counts as one of `idempotent_tools`


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A tool's answer. `value` is the structured content when the server sent it, else the text — or, when the
    result holds more than text, `{"text": …, "content": [the blocks]}` (a `tool:` step's output). `parts`: the
    content blocks as the server sent them (text, images, audio, resource links…, as MCP JSON), for transcripts;
    empty when they are just the text."""

    text: str
    value: Any
    is_error: bool = False
    parts: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = {"text": self.text, "value": self.value, "is_error": self.is_error}
        if self.parts:
            data["parts"] = list(self.parts)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ToolResult:
        parts = tuple(data.get("parts") or ())
        return cls(data.get("text", ""), data.get("value"), bool(data.get("is_error", False)), parts)


@dataclass(frozen=True, slots=True)
class SamplingRequest:
    """A server's `sampling/createMessage`, in plain data. `messages`: [{"role", "content": [MCP content blocks]}]."""

    messages: tuple[dict[str, Any], ...]
    max_tokens: int
    system_prompt: str | None = None
    temperature: float | None = None
    stop_sequences: tuple[str, ...] = ()
    model_hints: tuple[str, ...] = ()  # modelPreferences.hints[].name, most preferred first


@dataclass(frozen=True, slots=True)
class SamplingAnswer:
    text: str
    model: str
    stop_reason: str = "endTurn"  # endTurn | maxTokens | stopSequence


@dataclass(frozen=True, slots=True)
class ElicitationRequest:
    """A server's `elicitation/create`: a message for a person and the JSON schema of the answer it wants."""

    message: str
    schema: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ElicitationAnswer:
    action: str  # accept | decline | cancel
    content: dict[str, Any] | None = None


class ToolCallHooks(Protocol):
    """What the caller of a tool call answers for the server while the call runs."""

    def progress(self, server: ServerDef, tool: str, progress: float, total: float | None, message: str | None) -> None:
        """A progress notification for the call."""

    def log(self, server: ServerDef, level: str, logger: str | None, data: Any) -> None:
        """A log message of the server (`notifications/message`) at or above its `log_level`."""

    async def sample(self, server: ServerDef, request: SamplingRequest) -> SamplingAnswer:
        """Answer a sampling request with a model (raises FlowctlError when it cannot)."""
        ...

    async def elicit(self, server: ServerDef, request: ElicitationRequest) -> ElicitationAnswer:
        """Answer an elicitation request (a person, a signal, or the server's declared policy)."""
        ...


# The hooks of the tool call the current task is making (set by the engine around `ToolPool.call_tool`).
TOOL_HOOKS: ContextVar[ToolCallHooks | None] = ContextVar("flowctl_tool_hooks", default=None)


@runtime_checkable
class ToolPool(Protocol):
    async def list_tools(self, server: ServerDef) -> list[ToolSpec]:
        """The server's tools (names as the server spells them), filtered by its `allowed_tools`; cached per run."""
        ...

    async def call_tool(self, server: ServerDef, tool: str, arguments: dict[str, Any]) -> ToolResult:
        """Call one tool. A tool-reported error returns ToolResult(is_error=True) — never raises for it;
        transport faults raise ServerStartError / ServerCrashed / ToolTimeout (flowctl.interpreter.errors)."""
        ...

    async def read_resource(self, server: ServerDef, uri: str) -> list[dict[str, Any]]:
        """Read one resource: its contents as MCP JSON (`uri`, `mimeType`, `text` or base64 `blob`)."""
        ...

    async def get_prompt(self, server: ServerDef, name: str, arguments: dict[str, str]) -> list[dict[str, Any]]:
        """Get one prompt with its arguments: its messages as `{role, text}`."""
        ...

    async def aclose(self) -> None:
        """Close every session and make sure no server process is left running."""
        ...
