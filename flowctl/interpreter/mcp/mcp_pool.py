"""The MCP tool pool: the interpreter's ToolPool over real MCP servers (stdio, SSE, streamable HTTP).

One pool per run, one session per server per pool, started lazily and shared by every caller. Each session
lives in its own long-lived task inside a task group the pool owns (`async with McpPool() as pool:`), because
the mcp SDK's transports and sessions are async context managers that must be entered and exited by one task;
callers talk to the session object from their own tasks. One session's life is connection.py; the stdio
process and the HTTP client under it are transports.py.

This module, connection.py, requests.py and transports.py are the only ones that import `mcp` (~0.6 s):
`flowctl validate` never loads them.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import anyio.abc
import mcp_types
from mcp import ClientSession, MCPError

from flowctl.dsl.ir import ServerDef
from flowctl.interpreter.clock import SYSTEM_CLOCK, Clock
from flowctl.interpreter.concurrency import primary_error
from flowctl.interpreter.errors import ServerStartError, ToolCallError, ToolTimeout
from flowctl.interpreter.mcp.connection import Connection, describe, launch_for
from flowctl.interpreter.mcp.requests import Activity
from flowctl.interpreter.tools import TOOL_HOOKS, ToolResult, ToolSpec

MAX_SESSIONS_PER_SERVER = 2  # the first start and one restart after a crash

ServerKey = tuple[str, str]
T = TypeVar("T")


class McpPool:
    """ToolPool over real MCP servers; use as `async with McpPool() as pool:` (it owns the session tasks).

    `env` is what `${VAR}` in a server's env, url and headers expands from (default: os.environ).
    """

    def __init__(self, env: Mapping[str, str] | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self._env: Mapping[str, str] = os.environ if env is None else env
        self._clock = clock  # read timeouts (startup and shutdown bounds stay on real time: they guard processes)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._connections: dict[ServerKey, Connection] = {}  # the current one per server
        self._every_connection: list[Connection] = []  # crashed ones too: aclose waits for all
        self._starts: dict[ServerKey, int] = {}
        self._idempotent: dict[ServerKey, frozenset[str]] = {}  # tools annotated `idempotentHint: true`
        self._generations: dict[ServerKey, int] = {}  # bumped by notifications/tools/list_changed
        self._list_locks: dict[ServerKey, anyio.Lock] = {}
        self._closed = False

    async def __aenter__(self) -> Self:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._task_group is not None
        try:
            await self.aclose()
        finally:
            task_group, self._task_group = self._task_group, None
            try:
                result = await task_group.__aexit__(exc_type, exc, tb)
            except BaseExceptionGroup as group:  # anyio groups what passes through: the caller wants it whole
                error = primary_error(group)
                if isinstance(error, anyio.get_cancelled_exc_class()):
                    raise
                raise error from None
        return result

    # --- ToolPool -----------------------------------------------------------------------------------------

    async def list_tools(self, server: ServerDef) -> list[ToolSpec]:
        """The server's tools filtered by `allowed_tools`; listed once per session (a lock keeps it once)."""
        tools = await self._listing(await self._connect(server))
        if server.allowed_tools is None:
            return list(tools)
        return [tool for tool in tools if tool.name in server.allowed_tools]

    async def call_tool(self, server: ServerDef, tool: str, arguments: dict[str, Any]) -> ToolResult:
        """Call a tool; tool errors come back as is_error results, transport faults raise ToolError kinds.

        Only the request runs under the read timeout: telling a crash from a tool error may take a
        moment (waiting for the process to exit) and must not turn into a timeout.
        """
        connection = await self._connect(server)
        # The SDK validates structured output against the schema from its own tools/list, which reads one page
        # only (and lists again on every call for a tool on a later page): every page is listed once here first.
        await self._listing(connection)
        idempotent = tool in server.idempotent_tools or tool in self._idempotent.get(_key(server), ())
        result: mcp_types.CallToolResult | None = None
        activity = Activity(tool, TOOL_HOOKS.get())
        requests = connection.requests
        requests.begin(activity)
        try:
            progress = requests.progress_for(activity)
            result = await self._idle_bounded(
                lambda: connection.session.call_tool(tool, arguments, progress_callback=progress),
                server.read_timeout,
                activity,
            )
        except MCPError as exc:
            if connection.http.refused is not None:  # a token that expired or was revoked mid-run
                raise connection.auth_error(f"tool {tool!r}") from exc
            if await connection.is_lost(exc):
                raise await connection.crash_error(tool, idempotent) from exc
            return ToolResult(text=exc.message, value=exc.message, is_error=True)
        except Exception as exc:
            if await connection.is_lost(None):
                raise await connection.crash_error(tool, idempotent) from exc
            raise ToolCallError(
                f"{_who(server, tool)} gave an invalid answer: {describe(exc)}", span=server.span
            ) from exc
        finally:
            requests.end(activity)
        if result is None:
            raise ToolTimeout(
                f"{_who(server, tool)} did not answer within {server.read_timeout:g}s nor report progress "
                "(outcome unknown)",
                idempotent=idempotent,
                span=server.span,
            )
        return _tool_result(result)

    async def read_resource(self, server: ServerDef, uri: str) -> list[dict[str, Any]]:
        """resources/read: each content as MCP JSON (`uri`, `mimeType`, and `text` or base64 `blob`)."""
        result = await self._request(server, f"resources/read {uri!r}", lambda s: s.read_resource(uri))
        return [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in result.contents]

    async def get_prompt(self, server: ServerDef, name: str, arguments: dict[str, str]) -> list[dict[str, Any]]:
        """prompts/get: the prompt's messages as `{role, text}` (other content kept as its text or a marker)."""
        result = await self._request(server, f"prompts/get {name!r}", lambda s: s.get_prompt(name, arguments))
        return [{"role": str(m.role), "text": _block_text(m.content)} for m in result.messages]

    async def list_context(self, server: ServerDef) -> dict[str, Any]:
        """What `validate --resolve-tools` checks resources and prompts against: resource URIs, URI templates and
        prompts with their arguments (every page; a server without the capability lists none)."""
        session = (await self._connect(server)).session
        found: dict[str, Any] = {"resources": [], "templates": [], "prompts": {}}
        capabilities = session.server_capabilities
        if capabilities is not None and capabilities.resources is not None:
            found["resources"] = [r.uri for r in await _pages(server, "resources/list", session.list_resources)]
            templates = await _pages(server, "resources/templates/list", session.list_resource_templates)
            found["templates"] = [t.uri_template for t in templates]
        if capabilities is not None and capabilities.prompts is not None:
            for prompt in await _pages(server, "prompts/list", session.list_prompts):
                found["prompts"][prompt.name] = {a.name: bool(a.required) for a in prompt.arguments or ()}
        return found

    async def _request(self, server: ServerDef, what: str, send: Any) -> Any:
        """One request other than a tool call, with the call's timeout and its faults told apart."""
        connection = await self._connect(server)
        result = None
        try:
            with self._clock.move_on_after(server.read_timeout):
                result = await send(connection.session)
        except Exception as exc:
            if connection.http.refused is not None:
                raise connection.auth_error(what) from exc
            if await connection.is_lost(exc if isinstance(exc, MCPError) else None):
                raise await connection.crash_error(what, idempotent=True) from exc
            cause = exc.message if isinstance(exc, MCPError) else describe(exc)
            raise ToolCallError(f"server {server.name!r}: {what} failed: {cause}", span=server.span) from exc
        if result is None:
            raise ToolTimeout(
                f"server {server.name!r}: {what} did not answer within {server.read_timeout:g}s",
                idempotent=True,
                span=server.span,
            )
        return result

    async def _idle_bounded(self, call: Callable[[], Awaitable[T]], idle: float, activity: Activity) -> T | None:
        """The call's answer, or None when it went `idle` seconds without a sign of life (progress, or the end of a
        sampling/elicitation answer; none is expected while one is pending)."""
        outcome: list[T] = []
        failure: list[BaseException] = []
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                try:
                    outcome.append(await call())
                except Exception as exc:  # raised below, outside the task group (no exception group)
                    failure.append(exc)
                tg.cancel_scope.cancel()

            tg.start_soon(run)
            while True:
                activity.poked = anyio.Event()
                with self._clock.move_on_after(idle) as scope:
                    await activity.poked.wait()
                if scope.cancelled_caught and not activity.held:
                    tg.cancel_scope.cancel()
                    break
        if failure:
            raise failure[0]
        return outcome[0] if outcome else None

    def tools_generation(self, server: ServerDef) -> int:
        """How many times the server said its tools changed (`notifications/tools/list_changed`) in this run."""
        return self._generations.get(_key(server), 0)

    async def instructions(self, server: ServerDef) -> str | None:
        """The server's `instructions` from `initialize` (starting it if need be)."""
        return (await self._connect(server)).instructions

    def _tools_changed(self, key: ServerKey) -> None:
        self._generations[key] = self._generations.get(key, 0) + 1
        connection = self._connections.get(key)
        if connection is not None:  # listed again on next use
            connection.tools = None

    def is_up(self, server: ServerDef) -> bool:
        """Whether the server's session is started or starting and not known to be gone (crashed, exited, stopped):
        lets a caller wait for the pool to notice a server's exit instead of guessing how long that takes."""
        connection = self._connections.get(_key(server))
        return connection is not None and connection.usable

    async def aclose(self) -> None:
        """Stop every session and wait until each server process is gone; safe to call twice."""
        self._closed = True
        with anyio.CancelScope(shield=True):
            for connection in self._every_connection:
                connection.stop()
            for connection in self._every_connection:
                await connection.ended.wait()

    # --- sessions -----------------------------------------------------------------------------------------

    async def _listing(self, connection: Connection) -> list[ToolSpec]:
        """Every page of the session's tools/list, fetched once per session, and again after the server said its
        tools changed (`notifications/tools/list_changed`)."""
        if connection.tools is not None:  # the common case: no lock, no checkpoint per call
            return connection.tools
        key = _key(connection.server)
        async with self._list_locks.setdefault(key, anyio.Lock()):
            tools = connection.tools
            if tools is None:
                generation = self._generations.get(key, 0)
                tools = await self._fetch_tools(connection)
                self._idempotent[key] = frozenset(t.name for t in tools if t.idempotent)
                if generation == self._generations.get(key, 0):  # else changed meanwhile: list again next time
                    connection.tools = tools
        return tools

    async def _connect(self, server: ServerDef) -> Connection:
        """The server's live session, started on first use (and once more after a crash)."""
        connection = self._current(server)
        await connection.ready.wait()
        if connection.start_error is not None:
            raise _copy(connection.start_error)  # one instance per raise: tracebacks are per task
        return connection

    def _current(self, server: ServerDef) -> Connection:
        """Find or start the server's connection. No await here: concurrent first uses start it once."""
        if self._closed:
            raise RuntimeError("McpPool is closed")
        if self._task_group is None:
            raise RuntimeError("use McpPool as `async with McpPool() as pool:`")
        key = _key(server)
        connection = self._connections.get(key)
        if connection is not None and connection.usable:
            return connection
        if self._starts.get(key, 0) >= MAX_SESSIONS_PER_SERVER:
            assert connection is not None
            raise _gave_up(server, connection)
        launch = launch_for(server, self._env)  # raises ServerStartError for an unset variable
        connection = Connection(server, launch, lambda: self._tools_changed(key))
        self._connections[key] = connection
        self._every_connection.append(connection)
        self._starts[key] = self._starts.get(key, 0) + 1
        self._task_group.start_soon(connection.run, name=f"mcp server {server.name}")
        return connection

    async def _fetch_tools(self, connection: Connection) -> list[ToolSpec]:
        """Every page of tools/list; the whole listing is bounded by the server's read timeout."""
        server = connection.server
        tools: list[ToolSpec] | None = None
        try:
            with self._clock.move_on_after(server.read_timeout):
                tools = await _list_all_tools(connection.session)
        except Exception as exc:
            if connection.http.refused is not None:
                raise connection.auth_error("tools/list") from exc
            if await connection.is_lost(exc if isinstance(exc, MCPError) else None):
                raise await connection.crash_error("tools/list", idempotent=True) from exc
            raise ToolCallError(
                f"server {server.name!r}: tools/list failed: {describe(exc)}", span=server.span
            ) from exc
        if tools is None:
            raise ToolTimeout(
                f"server {server.name!r}: tools/list did not answer within {server.read_timeout:g}s",
                idempotent=True,
                span=server.span,
            )
        return tools


async def _pages(server: ServerDef, what: str, list_page: Any) -> list[Any]:
    """Every item of a paginated list request (resources, templates, prompts)."""
    items: list[Any] = []
    cursor: str | None = None
    try:
        while True:
            page = await list_page(params=mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            items.extend(getattr(page, "resources", None) or getattr(page, "resource_templates", None) or [])
            items.extend(getattr(page, "prompts", None) or [])
            cursor = page.next_cursor
            if not cursor:
                return items
    except MCPError as exc:
        raise ToolCallError(f"server {server.name!r}: {what} failed: {exc.message}", span=server.span) from exc


async def _list_all_tools(session: ClientSession) -> list[ToolSpec]:
    tools: list[ToolSpec] = []
    cursor: str | None = None
    while True:
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(
            ToolSpec(t.name, t.description or "", t.input_schema, _idempotent_hint(t.annotations)) for t in page.tools
        )
        cursor = page.next_cursor
        if not cursor:
            return tools


# --- helpers --------------------------------------------------------------------------------------------------


def _idempotent_hint(annotations: mcp_types.ToolAnnotations | None) -> bool:
    return bool(annotations is not None and annotations.idempotent_hint)


def _key(server: ServerDef) -> ServerKey:
    return (server.span.file, server.name)


def _tool_result(result: mcp_types.CallToolResult) -> ToolResult:
    """Text blocks joined (other blocks named); value is the structured content when sent, else that text (never
    JSON-decoded) — or, when there is more than text (images, audio, resources), `{"text", "content"}` with every
    block as MCP JSON, so a `tool:` step's output keeps the data whole."""
    text = "\n".join(_block_text(block) for block in result.content)
    value: Any = result.structured_content if result.structured_content is not None else text
    parts: tuple[dict[str, Any], ...] = ()
    if any(getattr(block, "type", "text") != "text" for block in result.content):  # more than text: keep each block
        parts = tuple(block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content)
        if result.structured_content is None:
            value = {"text": text, "content": list(parts)}
    return ToolResult(text=text, value=value, is_error=bool(result.is_error), parts=parts)


def _block_text(block: Any) -> str:
    """What the model reads for a content block: text as is; anything else named with what identifies it (the data
    itself stays in `parts`, and images and audio reach the model as media: engine/tool_content.py)."""
    text = getattr(block, "text", None)
    if isinstance(text, str):
        return text
    kind = getattr(block, "type", "content")
    mime = getattr(block, "mime_type", None)
    if kind in ("image", "audio"):
        return f"[{kind} {mime or '?'}, {_size(len(getattr(block, 'data', '') or '') * 3 // 4)}]"
    if kind == "resource_link":
        name = getattr(block, "name", "") or ""
        return f"[resource_link {name + ' ' if name else ''}{block.uri}{' ' + mime if mime else ''}]"
    resource = getattr(block, "resource", None)
    if resource is not None:
        resource_text = getattr(resource, "text", None)
        if isinstance(resource_text, str):
            return resource_text
        mime = getattr(resource, "mime_type", None)
        size = len(getattr(resource, "blob", "") or "") * 3 // 4
        return f"[resource {resource.uri}{' ' + mime if mime else ''}, {_size(size)}]"
    return f"[{kind}]"


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.0f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MB"


def _gave_up(server: ServerDef, connection: Connection) -> ServerStartError:
    """The error once a server used up its restart: not retryable, so policies stop asking."""
    last = connection.start_error.message if connection.start_error else "it crashed"
    error = ServerStartError(
        f"server {server.name!r} is not restarted again: it failed {MAX_SESSIONS_PER_SERVER} times in "
        f"this run; last failure: {last}",
        span=server.span,
    )
    error.retryable = False
    return error


def _copy(error: ServerStartError) -> ServerStartError:
    copy = type(error)(error.message, span=error.span)
    copy.retryable = error.retryable
    return copy


def _who(server: ServerDef, tool: str) -> str:
    return f"server {server.name!r} tool {tool!r}"
