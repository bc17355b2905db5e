"""What an MCP server asks of flowctl, and what it tells it, during a session: sampling, elicitation and roots
requests; progress, log and list-changed notifications. Each becomes plain data for the `ToolCallHooks` of the tool
call it belongs to (tools.py), and the hooks' answer becomes the MCP result.

A server request names no tool call (over stdio nothing relates them), so it goes to the newest call in flight on
the session; log messages outside any call go to the hooks of the last call made. With no call at all a sampling or
elicitation request is refused. While a sampling or elicitation answer is pending the call's idle timeout is held:
a person may take an hour to answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types
from mcp.client.session import ClientRequestContext

from flowctl.dsl.ir import ServerDef
from flowctl.interpreter.errors import FlowctlError
from flowctl.interpreter.tools import ElicitationRequest, SamplingRequest, ToolCallHooks

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


@dataclass
class Activity:
    """A tool call's signs of life: progress and pending server requests keep its idle timeout from firing."""

    tool: str
    hooks: ToolCallHooks | None
    poked: anyio.Event = field(default_factory=anyio.Event)
    held: int = 0  # sampling/elicitation answers pending

    def poke(self) -> None:
        self.poked.set()


class ServerRequests:
    """The session's callbacks for one server connection (ClientSession's sampling/elicitation/roots/logging/message
    callbacks), routed to the tool calls in flight."""

    def __init__(self, server: ServerDef, on_tools_changed: Callable[[], None]) -> None:
        self.server = server
        self.on_tools_changed = on_tools_changed
        self.calls: list[Activity] = []
        self.last_hooks: ToolCallHooks | None = None

    # --- the calls in flight ---------------------------------------------------------------------------------

    def begin(self, activity: Activity) -> None:
        self.calls.append(activity)
        if activity.hooks is not None:
            self.last_hooks = activity.hooks

    def end(self, activity: Activity) -> None:
        self.calls.remove(activity)

    def _current(self) -> Activity | None:
        return self.calls[-1] if self.calls else None

    # --- ClientSession callbacks ------------------------------------------------------------------------------

    def session_callbacks(self) -> dict[str, Any]:
        callbacks: dict[str, Any] = {
            "sampling_callback": self.sampling,
            "elicitation_callback": self.elicitation,
            "logging_callback": self.logging,
            "message_handler": self.message,
        }
        if self.server.roots:
            callbacks["list_roots_callback"] = self.list_roots
        if self.server.log_level is not None:
            callbacks["log_level"] = self.server.log_level
        return callbacks

    async def sampling(
        self, context: ClientRequestContext, params: mcp_types.CreateMessageRequestParams
    ) -> mcp_types.CreateMessageResult | mcp_types.ErrorData:
        activity = self._current()
        if activity is None or activity.hooks is None:
            return _refused("sampling is answered only during a tool call of a flowctl step")
        hints = (params.model_preferences.hints or []) if params.model_preferences else []
        request = SamplingRequest(
            messages=tuple(
                message.model_dump(mode="json", by_alias=True, exclude_none=True) for message in params.messages
            ),
            max_tokens=params.max_tokens,
            system_prompt=params.system_prompt,
            temperature=params.temperature,
            stop_sequences=tuple(params.stop_sequences or ()),
            model_hints=tuple(hint.name for hint in hints if hint.name),
        )
        activity.held += 1
        try:
            answer = await activity.hooks.sample(self.server, request)
        except FlowctlError as exc:
            return _refused(f"flowctl could not sample: {exc.message}")
        finally:
            activity.held -= 1
            activity.poke()
        return mcp_types.CreateMessageResult(
            role="assistant",
            content=mcp_types.TextContent(type="text", text=answer.text),
            model=answer.model,
            stop_reason=answer.stop_reason,
        )

    async def elicitation(
        self, context: ClientRequestContext, params: mcp_types.ElicitRequestParams
    ) -> mcp_types.ElicitResult | mcp_types.ErrorData:
        activity = self._current()
        if activity is None or activity.hooks is None:
            return _refused("elicitation is answered only during a tool call of a flowctl step")
        schema = getattr(params, "requested_schema", None)
        if schema is None:  # URL mode: a person would open a page; unattended runs decline
            url = getattr(params, "url", "")
            request = ElicitationRequest(f"{params.message} (open {url})", {})
        else:
            request = ElicitationRequest(params.message, _plain(schema))
        activity.held += 1
        try:
            answer = await activity.hooks.elicit(self.server, request)
        except FlowctlError as exc:
            return _refused(f"flowctl could not elicit: {exc.message}")
        finally:
            activity.held -= 1
            activity.poke()
        return mcp_types.ElicitResult(action=answer.action, content=answer.content)  # type: ignore[arg-type]

    async def list_roots(self, context: ClientRequestContext) -> mcp_types.ListRootsResult:
        return mcp_types.ListRootsResult(
            roots=[mcp_types.Root(uri=uri, name=name) for uri, name in self.server.roots]  # type: ignore[arg-type]
        )

    async def logging(self, params: mcp_types.LoggingMessageNotificationParams) -> None:
        if not _at_least(params.level, self.server.log_level):
            return
        activity = self._current()
        hooks = activity.hooks if activity is not None else self.last_hooks
        if hooks is not None:
            hooks.log(self.server, params.level, params.logger, params.data)

    async def message(self, message: Any) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self.on_tools_changed()
        await anyio.lowlevel.checkpoint()

    def progress_for(self, activity: Activity) -> Any:  # mcp's ProgressFnT
        """The progress callback of one call: restarts its idle timeout and tells its hooks."""

        async def progress(value: float, total: float | None, message: str | None) -> None:
            activity.poke()
            if activity.hooks is not None:
                activity.hooks.progress(self.server, activity.tool, value, total, message)

        return progress


def _at_least(level: str, floor: str | None) -> bool:
    if floor is None:
        return True
    try:
        return LOG_LEVELS.index(level) >= LOG_LEVELS.index(floor)
    except ValueError:
        return True


def _plain(schema: Any) -> dict[str, Any]:
    if hasattr(schema, "model_dump"):
        return dict(schema.model_dump(mode="json", by_alias=True, exclude_none=True))
    return dict(schema) if isinstance(schema, dict) else {}


def _refused(message: str) -> mcp_types.ErrorData:
    return mcp_types.ErrorData(code=mcp_types.INVALID_REQUEST, message=message)
