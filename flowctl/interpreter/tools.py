"""The tool port: how the interpreter reaches MCP servers. The real implementation is `mcp.mcp_pool.McpPool`; the
scripted one is `providers.scripted.ScriptedToolPool`.

One pool per run: it owns one session per server, started lazily and shared by every agent and tool step that names
the server, and closes them all at the end of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from flowctl.dsl.ir import ServerDef


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model: `name` is unambiguous across servers (see the tool loop in engine/agent.py)."""

    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A tool's answer. `value` is the structured content when the server sent it, else the text. `parts`: the
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
