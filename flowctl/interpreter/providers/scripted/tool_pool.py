"""The scripted tool pool: a ToolPool answering MCP tool calls from a fixture's `tools:` (see fixture.py for the
format); the servers it scripts are never started."""

from __future__ import annotations

from typing import Any

from flowctl.dsl.ir import ServerDef
from flowctl.interpreter.clock import SYSTEM_CLOCK, Clock
from flowctl.interpreter.errors import ServerCrashed, ServerStartError, ToolCallError, ToolTimeout
from flowctl.interpreter.providers.scripted.fixture import Fixture, ToolScript
from flowctl.interpreter.tools import ToolResult, ToolSpec


class ScriptedToolPool:
    """A ToolPool answering from the fixture's `tools:`; the servers it scripts are never started."""

    def __init__(self, fixture: Fixture, clock: Clock = SYSTEM_CLOCK) -> None:
        self.fixture = fixture
        self.clock = clock
        self.calls = 0
        self.calls_by_tool: dict[str, int] = {key: 0 for key in fixture.tools}
        self._used: dict[str, int] = {}

    def scripted_servers(self) -> set[str]:
        return {entry.server for entry in self.fixture.tools.values()}

    async def list_tools(self, server: ServerDef) -> list[ToolSpec]:
        """The scripted tools of `server` in fixture order, filtered by its `allowed_tools` like the real pool."""
        return [
            ToolSpec(entry.tool, f"scripted tool {entry.key}", {"type": "object"})
            for entry in self.fixture.tools.values()
            if entry.server == server.name and (server.allowed_tools is None or entry.tool in server.allowed_tools)
        ]

    async def call_tool(self, server: ServerDef, tool: str, arguments: dict[str, Any]) -> ToolResult:
        """The next scripted result; an unscripted or used-up tool is a tool-reported error, never an exception."""
        self.calls += 1
        key = f"{server.name}.{tool}"
        script = self._take(key)  # synchronous: no await between the check and the consume
        if isinstance(script, ToolResult):
            return script
        if script.latency:
            await self.clock.sleep(script.latency)
        if script.fault is not None:
            raise _tool_fault(script, server, tool)
        return ToolResult(text=script.text, value=script.value, is_error=script.is_error)

    async def read_resource(self, server: ServerDef, uri: str) -> list[dict[str, Any]]:
        raise _not_scripted(server, f"resource {uri!r}")

    async def get_prompt(self, server: ServerDef, name: str, arguments: dict[str, str]) -> list[dict[str, Any]]:
        raise _not_scripted(server, f"prompt {name!r}")

    async def aclose(self) -> None:
        """Nothing to close: no server was started."""

    def _take(self, key: str) -> ToolScript | ToolResult:
        entry = self.fixture.tools.get(key)
        if entry is None or not entry.results:
            return ToolResult(text=f"no scripted result for {key}", value=None, is_error=True)
        used = 0 if entry.repeat else self._used.get(key, 0)
        if used >= len(entry.results):
            text = f"scripted results for {key} are used up ({len(entry.results)} given in {self.fixture.file})"
            return ToolResult(text=text, value=None, is_error=True)
        if not entry.repeat:
            self._used[key] = used + 1
        self.calls_by_tool[key] += 1
        return entry.results[used]


def _tool_fault(script: ToolScript, server: ServerDef, tool: str) -> Exception:
    """The transport fault a script asks for; retryable as the real one would be (idempotent tools only)."""
    idempotent = tool in server.idempotent_tools
    where = f"scripted {script.fault} for tool {tool!r} of server {server.name!r} (at {script.span})"
    if script.fault == "server_start":
        return ServerStartError(where)
    if script.fault == "tool_timeout":
        return ToolTimeout(where, idempotent=idempotent)
    return ServerCrashed(where, idempotent=idempotent)


def _not_scripted(server: ServerDef, what: str) -> ToolCallError:
    """Fixtures script tool calls only: a resource or prompt of a scripted server is a clear step error."""
    return ToolCallError(
        f"server {server.name!r} is scripted by the fixture, which scripts tools only: its {what} cannot be read "
        "(remove the server from the fixture's `tools:` to use the real server)",
        span=server.span,
    )
