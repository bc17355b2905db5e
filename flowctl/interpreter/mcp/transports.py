"""The transports under an MCP session: a stdio server as a process of our own (spawned in its own process group,
its pipes bridged to the session's streams, stopped the way the SDK stops it), and streamable HTTP and SSE with our
headers, credentials and timeouts, watching for a server that refuses the credentials (401/403).

Stdio servers run under this small transport rather than `mcp.stdio_client`: the SDK's keeps the process to itself,
and flowctl needs its exit code (start failures and crashes name it) and the moment its stdout closes (to tell a
crash from a tool error). Its shutdown follows the SDK's: close stdin, wait, then kill the process group. On Linux
the process also dies with flowctl when flowctl cannot stop it (SIGKILL, OOM killer): PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc
import httpx2
import mcp_types
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.os.posix.utilities import terminate_posix_process_tree
from mcp.shared.message import SessionMessage

STOP_GRACE_SECONDS = 2.0  # after stdin closes, before the process group is signalled
KILL_GRACE_SECONDS = 2.0  # between SIGTERM and SIGKILL

Streams = tuple[Any, Any]  # (read stream, write stream) as the SDK's transports yield them


@dataclass
class StdioState:
    """What the stdio transport learns about its process: the pid, whether stdout closed, bad lines."""

    process: anyio.abc.Process | None = None
    stdout_closed: anyio.Event = field(default_factory=anyio.Event)
    bad_lines: list[str] = field(default_factory=list)


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
async def stdio_transport(
    argv: list[str],
    env: dict[str, str],
    cwd: str | None,
    errlog: IO[bytes],
    state: StdioState,
    wake: anyio.Event,
) -> AsyncIterator[Streams]:
    """Spawn a stdio server in its own process group and bridge its pipes to the session's streams."""
    with anyio.CancelScope(shield=True):  # a cancel landing right after the spawn would leak the process
        process = await _spawn(argv, env, cwd, errlog)
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


async def _spawn(argv: list[str], env: dict[str, str], cwd: str | None, errlog: IO[bytes]) -> anyio.abc.Process:
    """The server process, in its own process group; on Linux it gets SIGTERM when flowctl dies, however it dies
    (SIGTERM rather than SIGKILL so a launcher such as `npx` can pass it on to the server it started)."""
    preexec = _die_with_parent() if sys.platform == "linux" else None
    if preexec is not None:
        from anyio._core._eventloop import get_async_backend

        try:  # anyio's asyncio backend hands extra keywords to subprocess.Popen
            return await get_async_backend().open_process(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errlog,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except TypeError:  # another backend: no preexec hook there
            pass
    return await anyio.open_process(argv, env=env, cwd=cwd, stderr=errlog, start_new_session=True)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec function asking the kernel to SIGTERM the child when its parent dies (None without libc's prctl)."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # flowctl died between fork and prctl: the signal will never come
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


@cache
def _prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


async def _pump_stdout(
    process: anyio.abc.Process,
    sink: anyio.abc.ObjectSendStream[SessionMessage | Exception],
    state: StdioState,
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


def _parse_line(raw: bytes, state: StdioState) -> SessionMessage | None:
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


@dataclass
class HttpState:
    """What the HTTP transports learn from the responses: whether the server refused our credentials (401/403)."""

    refused: int | None = None  # 401 or 403 when the latest answer was one (an OAuth flow may follow and succeed)

    async def watch(self, response: httpx2.Response) -> None:
        """An httpx response hook: the SDK turns a 401 into an anonymous JSON-RPC error, so note it here."""
        if response.status_code in (401, 403):
            self.refused = response.status_code
        elif response.status_code < 300:
            self.refused = None


@dataclass(frozen=True)
class HttpSettings:
    """How to talk to a remote server: headers, credentials and the timeouts."""

    headers: dict[str, str]
    read_timeout: float  # the per-call idle timeout (bounds every request; progress notifications reset it)
    connect_timeout: float | None = None  # connect/write/pool (default 30 s)
    stream_timeout: float | None = None  # how long a stream may stay silent (default: no limit of httpx's own)
    auth: httpx2.Auth | None = None
    terminate_on_close: bool = True


def _timeout(settings: HttpSettings) -> httpx2.Timeout:
    """No read timeout of httpx's own unless `stream_timeout` asks for one: every request is bounded by ours (a tool
    call's idle timeout, held while flowctl answers the server's elicitation, which may take a person hours)."""
    return httpx2.Timeout(settings.connect_timeout or 30.0, read=settings.stream_timeout)


@asynccontextmanager
async def streamable_http(url: str, settings: HttpSettings, state: HttpState) -> AsyncIterator[Streams]:
    """streamable_http_client with our headers, credentials and timeouts, watching for refused credentials."""
    async with (
        httpx2.AsyncClient(
            headers=settings.headers,
            timeout=_timeout(settings),
            auth=settings.auth,
            event_hooks={"response": [state.watch]},
        ) as client,
        streamable_http_client(url, http_client=client, terminate_on_close=settings.terminate_on_close) as streams,
    ):
        yield streams


@asynccontextmanager
async def sse(url: str, settings: HttpSettings, state: HttpState) -> AsyncIterator[Streams]:
    """sse_client with our headers, credentials and timeouts, watching for refused credentials."""

    def client(
        headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None, auth: httpx2.Auth | None = None
    ) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(headers=headers, timeout=timeout, auth=auth, event_hooks={"response": [state.watch]})

    read = _timeout(settings).read
    async with sse_client(
        url,
        headers=settings.headers,
        timeout=settings.connect_timeout or 30.0,
        sse_read_timeout=read if read is not None else 300.0,
        httpx_client_factory=client,
        auth=settings.auth,
    ) as streams:
        yield streams
