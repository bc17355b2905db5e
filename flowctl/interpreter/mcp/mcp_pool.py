"""The MCP tool pool: the interpreter's ToolPool over real MCP servers (stdio, SSE, streamable HTTP).

One pool per run, one session per server per pool, started lazily and shared by every caller. Each session
lives in its own long-lived task inside a task group the pool owns (`async with McpPool() as pool:`), because
the mcp SDK's transports and sessions are async context managers that must be entered and exited by one task;
callers talk to the session object from their own tasks.

Stdio servers run under a small transport of our own rather than `mcp.stdio_client`: the SDK's keeps the process
to itself, and flowctl needs its exit code (start failures and crashes name it) and the moment its stdout closes
(to tell a crash from a tool error). Its shutdown follows the SDK's: close stdin, wait, then kill the process group.

This is the only module that imports `mcp` (~0.6 s): `flowctl validate` never loads it.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import urlsplit

import anyio
import anyio.abc
import httpx2
import mcp_types
from mcp import ClientSession, MCPError
from mcp.client.sse import sse_client
from mcp.client.stdio import get_default_environment
from mcp.client.streamable_http import streamable_http_client
from mcp.os.posix.utilities import terminate_posix_process_tree
from mcp.shared.message import SessionMessage

from flowctl.dsl.ir import ServerDef, Transport
from flowctl.dsl.variables import expand
from flowctl.interpreter.clock import SYSTEM_CLOCK, Clock
from flowctl.interpreter.concurrency import primary_error
from flowctl.interpreter.errors import ServerCrashed, ServerStartError, ToolCallError, ToolTimeout
from flowctl.interpreter.tools import ToolResult, ToolSpec

MAX_SESSIONS_PER_SERVER = 2  # the first start and one restart after a crash
STDERR_TAIL_LINES = 20
STOP_GRACE_SECONDS = 2.0  # after stdin closes, before the process group is signalled
KILL_GRACE_SECONDS = 2.0  # between SIGTERM and SIGKILL
PROBE_TIMEOUT_SECONDS = 2.0  # ping that tells a dropped HTTP connection from a tool's -32000 error
CLOSE_TIMEOUT_SECONDS = 5.0  # for a graceful close (HTTP session DELETE); stdio shutdown is bounded anyway
CLIENT_INFO = mcp_types.Implementation(name="flowctl", version="0.1.0")


ServerKey = tuple[str, str]
Streams = tuple[Any, Any]  # (read stream, write stream) as the SDK's transports yield them


class McpPool:
    """ToolPool over real MCP servers; use as `async with McpPool() as pool:` (it owns the session tasks).

    `env` is what `${VAR}` in a server's env, url and headers expands from (default: os.environ).
    """

    def __init__(self, env: Mapping[str, str] | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self._env: Mapping[str, str] = os.environ if env is None else env
        self._clock = clock  # read timeouts (startup and shutdown bounds stay on real time: they guard processes)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._connections: dict[ServerKey, _Connection] = {}  # the current one per server
        self._every_connection: list[_Connection] = []  # crashed ones too: aclose waits for all
        self._starts: dict[ServerKey, int] = {}
        self._tools: dict[ServerKey, list[ToolSpec]] = {}
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
        """The server's tools filtered by `allowed_tools`; listed once per run (a lock keeps it once)."""
        key = _key(server)
        async with self._list_locks.setdefault(key, anyio.Lock()):
            if key not in self._tools:
                connection = await self._connect(server)
                self._tools[key] = await self._fetch_tools(connection)
        tools = self._tools[key]
        if server.allowed_tools is None:
            return list(tools)
        return [tool for tool in tools if tool.name in server.allowed_tools]

    async def call_tool(self, server: ServerDef, tool: str, arguments: dict[str, Any]) -> ToolResult:
        """Call a tool; tool errors come back as is_error results, transport faults raise ToolError kinds.

        Only the request runs under the read timeout: telling a crash from a tool error may take a
        moment (waiting for the process to exit) and must not turn into a timeout.
        """
        connection = await self._connect(server)
        idempotent = tool in server.idempotent_tools
        result: mcp_types.CallToolResult | None = None
        try:
            with self._clock.move_on_after(server.read_timeout):
                result = await connection.session.call_tool(tool, arguments)
        except MCPError as exc:
            if await connection.is_lost(exc):
                raise await connection.crash_error(tool, idempotent) from exc
            return ToolResult(text=exc.message, value=exc.message, is_error=True)
        except Exception as exc:
            if await connection.is_lost(None):
                raise await connection.crash_error(tool, idempotent) from exc
            raise ToolCallError(
                f"{_who(server, tool)} gave an invalid answer: {_describe(exc)}", span=server.span
            ) from exc
        if result is None:
            raise ToolTimeout(
                f"{_who(server, tool)} did not answer within {server.read_timeout:g}s (outcome unknown)",
                idempotent=idempotent,
                span=server.span,
            )
        return _tool_result(result)

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

    async def _connect(self, server: ServerDef) -> _Connection:
        """The server's live session, started on first use (and once more after a crash)."""
        connection = self._current(server)
        await connection.ready.wait()
        if connection.start_error is not None:
            raise _copy(connection.start_error)  # one instance per raise: tracebacks are per task
        return connection

    def _current(self, server: ServerDef) -> _Connection:
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
        launch = _launch_for(server, self._env)  # raises ServerStartError for an unset variable
        connection = _Connection(server, launch)
        self._connections[key] = connection
        self._every_connection.append(connection)
        self._starts[key] = self._starts.get(key, 0) + 1
        self._task_group.start_soon(connection.run, name=f"mcp server {server.name}")
        return connection

    async def _fetch_tools(self, connection: _Connection) -> list[ToolSpec]:
        """Every page of tools/list; the whole listing is bounded by the server's read timeout."""
        server = connection.server
        tools: list[ToolSpec] | None = None
        try:
            with self._clock.move_on_after(server.read_timeout):
                tools = await _list_all_tools(connection.session)
        except Exception as exc:
            if await connection.is_lost(exc if isinstance(exc, MCPError) else None):
                raise await connection.crash_error("tools/list", idempotent=True) from exc
            raise ToolCallError(
                f"server {server.name!r}: tools/list failed: {_describe(exc)}", span=server.span
            ) from exc
        if tools is None:
            raise ToolTimeout(
                f"server {server.name!r}: tools/list did not answer within {server.read_timeout:g}s",
                idempotent=True,
                span=server.span,
            )
        return tools


async def _list_all_tools(session: ClientSession) -> list[ToolSpec]:
    tools: list[ToolSpec] = []
    cursor: str | None = None
    while True:
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(ToolSpec(t.name, t.description or "", t.input_schema) for t in page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


# --- one server session ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Launch:
    """What to start, with `${VAR}` already expanded (so a missing variable fails before any process runs)."""

    transport: Transport
    command: str | None
    args: tuple[str, ...]
    env: dict[str, str]
    cwd: str | None
    url: str | None
    headers: dict[str, str]


@dataclass
class _StdioState:
    """What the stdio transport learns about its process: the pid, whether stdout closed, bad lines."""

    process: anyio.abc.Process | None = None
    stdout_closed: anyio.Event = field(default_factory=anyio.Event)
    bad_lines: list[str] = field(default_factory=list)


class _Connection:
    """One server session, owned by the task running `run()`; other tasks use `session` meanwhile."""

    def __init__(self, server: ServerDef, launch: _Launch) -> None:
        self.server = server
        self.launch = launch
        self.ready = anyio.Event()  # started, or failed to start
        self.ended = anyio.Event()  # the transport is closed and the process reaped
        self.start_error: ServerStartError | None = None
        self.exit_code: int | None = None
        self.stderr_tail = ""
        self.failure: BaseException | None = None
        self._session: ClientSession | None = None
        self._wake = anyio.Event()  # stop requested, or the server went away
        self._life: anyio.CancelScope | None = None
        self._stopping = False
        self._lost = False
        self._stdio = _StdioState()

    @property
    def session(self) -> ClientSession:
        assert self._session is not None, "session used before it started"
        return self._session

    @property
    def usable(self) -> bool:
        """Starting or running: not failed, crashed or stopped."""
        gone = self._lost or self._stdio.stdout_closed.is_set() or self.ended.is_set()
        return not (gone or self._stopping or self.start_error is not None)

    def stop(self) -> None:
        """Ask the session task to close; a session still starting is cancelled outright."""
        self._stopping = True
        self._wake.set()
        if self._session is None and self._life is not None:
            self._life.cancel()

    async def run(self) -> None:
        """The session's whole life; never raises (a failure must not cancel the pool's other sessions)."""
        errlog = tempfile.TemporaryFile()  # noqa: SIM115 - closed in `finally` after the tail is read
        timed_out = False
        try:
            timed_out = await self._serve(errlog)
        except Exception as exc:
            self.failure = exc
        finally:
            self._lost = True
            self._finish(errlog, timed_out)

    async def _serve(self, errlog: IO[bytes]) -> bool:
        """Open, initialize within the startup timeout, then hold the session until woken.

        Returns whether the startup timeout expired. One scope spans the whole life (a scope cannot end
        while contexts entered in it stay open): its deadline is the startup timeout, disarmed once
        initialized, then re-armed to bound the close.
        """
        if self._stopping:
            return False
        deadline = anyio.current_time() + self.server.startup_timeout
        with anyio.CancelScope(deadline=deadline) as self._life:
            async with AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._open_transport(errlog))
                session = ClientSession(read, write, client_info=CLIENT_INFO)
                await stack.enter_async_context(session)
                await session.initialize()
                self._life.deadline = math.inf
                self._session = session
                self.ready.set()
                await self._wake.wait()
                self._life.deadline = anyio.current_time() + CLOSE_TIMEOUT_SECONDS
        return self._life.cancelled_caught and self._session is None and not self._stopping

    def _open_transport(self, errlog: IO[bytes]) -> AbstractAsyncContextManager[Streams]:
        launch = self.launch
        if launch.transport is Transport.STDIO:
            assert launch.command is not None
            env = get_default_environment() | launch.env
            argv = [resolve_command(launch.command, env.get("PATH"), launch.cwd), *launch.args]
            return _stdio_transport(argv, env, launch.cwd, errlog, self._stdio, self._wake)
        assert launch.url is not None
        if launch.transport is Transport.SSE:
            return sse_client(launch.url, headers=launch.headers)
        return _streamable_http(launch.url, launch.headers, self.server.read_timeout)

    def _finish(self, errlog: IO[bytes], timed_out: bool) -> None:
        """Record exit code and stderr tail, close the log, and wake everyone waiting."""
        process = self._stdio.process
        self.exit_code = None if process is None else process.returncode
        self.stderr_tail = _tail(errlog)
        errlog.close()
        if self._session is None:
            self.start_error = self._start_error(timed_out)
        self.ready.set()
        self.ended.set()

    def _start_error(self, timed_out: bool) -> ServerStartError:
        server = self.server
        if timed_out:
            cause = f"did not answer initialize within {server.startup_timeout:g}s"
        elif self._stopping and self.failure is None:
            cause = "the pool closed before it finished starting"
        elif self.exit_code is not None:
            cause = f"exited with code {self.exit_code} before answering initialize"
        elif isinstance(self.failure, CommandNotFound):
            error = ServerStartError(f"server {server.name!r} cannot start: {self.failure}", span=server.span)
            error.retryable = False  # a configuration problem: trying again cannot help
            return error
        else:
            cause = _describe(self.failure) if self.failure else "closed the connection at start"
        if self.launch.url is not None:  # a remote server: say where we tried (never user info or the query)
            cause = f"{cause} (at {_safe_url(self.launch.url)})"
        return ServerStartError(f"server {server.name!r} failed to start: {cause}{self._evidence()}", span=server.span)

    def _evidence(self) -> str:
        """Exit code context for humans: non-JSON stdout lines and the stderr tail."""
        parts = []
        if self._stdio.bad_lines:
            shown = "\n".join(f"  {line}" for line in self._stdio.bad_lines)
            parts.append(f"\nnon-JSON-RPC lines on stdout (is it printing logs to stdout?):\n{shown}")
        if self.stderr_tail:
            lines = self.stderr_tail.splitlines()
            shown = "\n".join(f"  {line}" for line in lines)
            parts.append(f"\nstderr (last {len(lines)} lines):\n{shown}")
        return "".join(parts)

    async def is_lost(self, error: MCPError | None) -> bool:
        """Whether the server is gone (crash) rather than the tool failing.

        Stdio knows for sure (stdout closed or the task ended). Over HTTP a dropped stream surfaces as
        CONNECTION_CLOSED (-32000), a code servers also use for their own errors, so a ping decides.
        """
        if self._lost or self._stdio.stdout_closed.is_set():
            self._lost = True
            return True
        if error is None or error.code != mcp_types.CONNECTION_CLOSED:
            return False
        if self.launch.transport is Transport.STDIO or await self._answers_ping():
            return False
        self._lost = True
        self.stop()
        return True

    async def _answers_ping(self) -> bool:
        with anyio.move_on_after(PROBE_TIMEOUT_SECONDS):
            with suppress(Exception):
                await self.session.send_ping()
                return True
        return False

    async def crash_error(self, tool: str, idempotent: bool) -> ServerCrashed:
        """ServerCrashed naming the tool, exit code and stderr tail (waits briefly for the process to end)."""
        self.stop()
        with anyio.move_on_after(STOP_GRACE_SECONDS + KILL_GRACE_SECONDS + 1.0):
            await self.ended.wait()
        code = f" (exit code {self.exit_code})" if self.exit_code is not None else ""
        cause = f" ({_describe(self.failure)})" if self.failure is not None else ""
        return ServerCrashed(
            f"server {self.server.name!r} went away during {tool!r}{code}{cause}; outcome unknown{self._evidence()}",
            idempotent=idempotent,
            span=self.server.span,
        )


# --- transports ----------------------------------------------------------------------------------------------


class CommandNotFound(Exception):
    """A stdio server's command is neither on PATH nor installed beside flowctl."""


def resolve_command(command: str, path: str | None, cwd: str | None) -> str:
    """The executable to start: `command` on the server's PATH, else beside flowctl's own Python.

    Servers installed with pip into flowctl's environment (`pip install mcp-server-time`) then work without the
    environment being activated, the way `uvx` finds them.
    """
    if "/" in command:
        return command
    found = shutil.which(command, path=path)
    if found is not None:
        return found
    beside = Path(sys.executable).parent / command
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    raise CommandNotFound(
        f"command {command!r} was not found on PATH nor in {beside.parent}; install it (for a Python server, "
        f"`pip install` it into this environment) or give its full path in `command:`"
    )


@asynccontextmanager
async def _stdio_transport(
    argv: list[str],
    env: dict[str, str],
    cwd: str | None,
    errlog: IO[bytes],
    state: _StdioState,
    wake: anyio.Event,
) -> AsyncIterator[Streams]:
    """Spawn a stdio server in its own process group and bridge its pipes to the session's streams."""
    with anyio.CancelScope(shield=True):  # a cancel landing right after the spawn would leak the process
        process = await anyio.open_process(argv, env=env, cwd=cwd, stderr=errlog, start_new_session=True)
    state.process = process
    to_session, from_server = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    to_server, from_session = anyio.create_memory_object_stream[SessionMessage](0)
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(_pump_stdout, process, to_session, state, wake)
        task_group.start_soon(_pump_stdin, process, from_session)
        try:
            yield from_server, to_server
        finally:
            with anyio.CancelScope(shield=True):
                await _stop_process(process)
                for stream in (from_server, to_server, to_session, from_session):
                    await stream.aclose()
            task_group.cancel_scope.cancel()


async def _pump_stdout(
    process: anyio.abc.Process,
    sink: anyio.abc.ObjectSendStream[SessionMessage | Exception],
    state: _StdioState,
    wake: anyio.Event,
) -> None:
    """Server stdout → session, one JSON-RPC message per line; non-JSON lines are kept for error messages.

    `stdout_closed` is set before the session's stream closes, so a caller woken by CONNECTION_CLOSED
    always sees it.
    """
    assert process.stdout is not None
    try:
        async with sink:
            try:
                partial: list[bytes] = []  # pieces of a line longer than one chunk (no quadratic joins)
                async for chunk in process.stdout:
                    *lines, rest = chunk.split(b"\n")
                    if lines:
                        lines[0], partial = b"".join([*partial, lines[0]]), []
                    for line in lines:
                        message = _parse_line(line, state)
                        if message is not None:
                            await sink.send(message)
                    partial.append(rest)
            finally:
                state.stdout_closed.set()
                wake.set()
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        pass  # our own shutdown closed a stream under the read


def _parse_line(raw: bytes, state: _StdioState) -> SessionMessage | None:
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        return SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(text, by_name=False))
    except ValueError:
        state.bad_lines = [*state.bad_lines[-4:], text[:200]]
        return None


async def _pump_stdin(process: anyio.abc.Process, source: anyio.abc.ObjectReceiveStream[SessionMessage]) -> None:
    """Session → server stdin, one JSON line per message."""
    assert process.stdin is not None
    with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        async with source:
            async for message in source:
                data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                await process.stdin.send(data.encode())


async def _stop_process(process: anyio.abc.Process) -> None:
    """Close stdin, give the server STOP_GRACE_SECONDS to exit, then kill its whole process group.

    Polls `returncode` rather than `wait()`: on asyncio `wait()` also waits for pipe EOF, which a
    grandchild holding the pipe would delay forever.
    """
    assert process.stdin is not None and process.stdout is not None
    with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        await process.stdin.aclose()
    await _wait_exit(process, STOP_GRACE_SECONDS)
    if process.returncode is None or _group_alive(process.pid):
        await terminate_posix_process_tree(process, KILL_GRACE_SECONDS)
        await _wait_exit(process, KILL_GRACE_SECONDS)
    with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        await process.stdout.aclose()
    with anyio.move_on_after(1.0):
        await process.aclose()


async def _wait_exit(process: anyio.abc.Process, timeout: float) -> None:
    with anyio.move_on_after(timeout):
        while process.returncode is None:
            await anyio.sleep(0.01)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the server's group (its children included) still runs (EPERM: maybe)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@asynccontextmanager
async def _streamable_http(url: str, headers: dict[str, str], read_timeout: float) -> AsyncIterator[Streams]:
    """streamable_http_client with our headers; httpx's read timeout outlasts the per-call one."""
    timeout = httpx2.Timeout(30.0, read=max(300.0, read_timeout + 30.0))
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as client,
        streamable_http_client(url, http_client=client) as streams,
    ):
        yield streams


# --- helpers --------------------------------------------------------------------------------------------------


def _key(server: ServerDef) -> ServerKey:
    return (server.span.file, server.name)


def _launch_for(server: ServerDef, env: Mapping[str, str]) -> _Launch:
    """Expand `${VAR}` in env values, headers and url; `command` and `args` stay literal."""

    def expand(value: str, where: str) -> str:
        return expand_vars(value, env, server=server, where=where)

    return _Launch(
        transport=server.transport,
        command=server.command,
        args=server.args,
        env={name: expand(value, f"env.{name}") for name, value in server.env.items()},
        cwd=server.cwd,
        url=expand(server.url, "url") if server.url is not None else None,
        headers={name: expand(value, f"headers.{name}") for name, value in server.headers.items()},
    )


def expand_vars(value: str, env: Mapping[str, str], *, server: ServerDef, where: str) -> str:
    """`${VAR}` → env[VAR]; `${VAR:-default}` → default when VAR is unset or empty (as in sh).

    An unset variable without a default is a ServerStartError naming it (not retryable: a config error).
    """

    def unset(name: str) -> ServerStartError:
        error = ServerStartError(
            f"server {server.name!r}: environment variable {name!r} (used in {where}) is not set", span=server.span
        )
        error.retryable = False
        return error

    return expand(value, env, unset)


def _tool_result(result: mcp_types.CallToolResult) -> ToolResult:
    """Text blocks joined; value is the structured content when sent, else that text (never JSON-decoded)."""
    text = "\n".join(_block_text(block) for block in result.content)
    value = result.structured_content if result.structured_content is not None else text
    return ToolResult(text=text, value=value, is_error=bool(result.is_error))


def _block_text(block: Any) -> str:
    text = getattr(block, "text", None)
    if isinstance(text, str):
        return text
    resource_text = getattr(getattr(block, "resource", None), "text", None)
    if isinstance(resource_text, str):
        return resource_text
    return f"[{getattr(block, 'type', 'content')}]"


def _tail(errlog: IO[bytes]) -> str:
    """The last STDERR_TAIL_LINES lines the server wrote to stderr."""
    with suppress(OSError, ValueError):
        size = errlog.seek(0, os.SEEK_END)
        errlog.seek(max(0, size - 64 * 1024))
        text = errlog.read().decode("utf-8", errors="replace")
        return "\n".join(text.rstrip().splitlines()[-STDERR_TAIL_LINES:])
    return ""


def _gave_up(server: ServerDef, connection: _Connection) -> ServerStartError:
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
    copy = ServerStartError(error.message, span=error.span)
    copy.retryable = error.retryable
    return copy


def _safe_url(url: str) -> str:
    """scheme://host[:port]/path: a URL fit for messages (credentials live in user info and query strings)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def _who(server: ServerDef, tool: str) -> str:
    return f"server {server.name!r} tool {tool!r}"


def _describe(exc: BaseException) -> str:
    """A one-line cause, looking inside exception groups for the first real error."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
