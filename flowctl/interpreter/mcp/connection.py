"""One MCP server session: what to launch (with `${VAR}` expanded), the task that holds the session for its whole
life, and what it knows when the server fails: start errors, refused credentials (401/403), crashes told from tool
errors, exit code and stderr tail. Credentials: `auth.bearer` as a header, or the SDK's OAuth client-credentials flow.
McpPool (mcp_pool.py) owns the sessions; the stdio process and the HTTP client are transports.py.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, suppress
from dataclasses import dataclass
from typing import IO
from urllib.parse import urlsplit

import anyio
import httpx2
import mcp_types
from mcp import ClientSession, MCPError
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.stdio import get_default_environment
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from flowctl.dsl.ir import ClientCredentials, ServerDef, Transport
from flowctl.dsl.variables import expand
from flowctl.interpreter.errors import ServerAuthError, ServerCrashed, ServerStartError
from flowctl.interpreter.mcp.requests import ServerRequests
from flowctl.interpreter.mcp.transports import (
    KILL_GRACE_SECONDS,
    STOP_GRACE_SECONDS,
    CommandNotFound,
    HttpSettings,
    HttpState,
    StdioState,
    Streams,
    resolve_command,
    sse,
    stdio_transport,
    streamable_http,
)
from flowctl.interpreter.tools import ToolSpec

STDERR_TAIL_LINES = 20
PROBE_TIMEOUT_SECONDS = 2.0  # ping that tells a dropped HTTP connection from a tool's -32000 error
CLOSE_TIMEOUT_SECONDS = 5.0  # for a graceful close (HTTP session DELETE); stdio shutdown is bounded anyway
CLIENT_INFO = mcp_types.Implementation(name="flowctl", version="0.1.0")


@dataclass(frozen=True, slots=True)
class Launch:
    """What to start, with `${VAR}` already expanded (so a missing variable fails before any process runs)."""

    transport: Transport
    command: str | None
    args: tuple[str, ...]
    env: dict[str, str]
    cwd: str | None
    url: str | None
    headers: dict[str, str]  # `auth.bearer` included, as `Authorization: Bearer …`
    client_credentials: ClientCredentials | None = None


class _MemoryTokens:
    """OAuth tokens for one session, in memory (a run never writes a token anywhere)."""

    def __init__(self) -> None:
        self._tokens: OAuthToken | None = None
        self._client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self._tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self._tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self._client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self._client = client_info


class Connection:
    """One server session, owned by the task running `run()`; other tasks use `session` meanwhile."""

    def __init__(self, server: ServerDef, launch: Launch, on_tools_changed: Callable[[], None] = lambda: None) -> None:
        self.server = server
        self.launch = launch
        self.requests = ServerRequests(server, on_tools_changed)  # what the server asks of us, and tells us
        self.instructions: str | None = None  # from `initialize`
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
        self._stdio = StdioState()
        self.http = HttpState()
        self.tools: list[ToolSpec] | None = None  # every page of tools/list, once listed (McpPool owns it)

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
                session = ClientSession(read, write, client_info=CLIENT_INFO, **self.requests.session_callbacks())
                await stack.enter_async_context(session)
                initialized = await session.initialize()
                self.instructions = initialized.instructions
                if self.server.log_level is not None and initialized.capabilities.logging is not None:
                    with suppress(MCPError), warnings.catch_warnings():  # 2026-07-28 servers take it per request
                        warnings.simplefilter("ignore")
                        await session.set_logging_level(self.server.log_level)  # type: ignore[arg-type]
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
            return stdio_transport(argv, env, launch.cwd, errlog, self._stdio, self._wake)
        assert launch.url is not None
        server = self.server
        settings = HttpSettings(
            headers=launch.headers,
            read_timeout=server.read_timeout,
            connect_timeout=server.http_timeout,
            stream_timeout=server.stream_timeout,
            auth=_oauth(launch.url, launch.client_credentials),
            terminate_on_close=server.terminate_on_close,
        )
        if launch.transport is Transport.SSE:
            return sse(launch.url, settings, self.http)
        return streamable_http(launch.url, settings, self.http)

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
        if self.http.refused is not None:
            return self.auth_error("initialize")
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
            cause = describe(self.failure) if self.failure else "closed the connection at start"
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

    def auth_error(self, what: str) -> ServerAuthError:
        """The server refused our credentials (HTTP 401/403): say which server, where, and what to set."""
        server, launch = self.server, self.launch
        status = self.http.refused
        where = f" (at {_safe_url(launch.url)})" if launch.url else ""
        if status == 403:
            cause = "HTTP 403 Forbidden: the credentials were accepted but do not allow this"
            hint = "check the permissions (scopes) of the token or client flowctl uses"
        else:
            cause = "HTTP 401 Unauthorized"
            if launch.client_credentials is not None:
                hint = "check `auth.client_credentials` (client id, secret, scope, issuer)"
            elif server.bearer is not None:
                hint = "the token `auth.bearer` reads was refused: check the variable it names"
            elif any(name.lower() == "authorization" for name in server.headers):
                hint = "the `Authorization` header was refused: check the variable it reads"
            else:
                hint = (
                    "give it credentials: `auth: {bearer: ${TOKEN}}`, an `Authorization` header or "
                    "`auth: {client_credentials: …}`"
                )
        given = launch.client_credentials is not None or bool(launch.headers)  # headers may carry an API key
        refused = "refused flowctl's credentials" if given else "requires credentials, and none were given,"
        return ServerAuthError(
            f"server {server.name!r} {refused} during {what}: {cause}{where}; {hint}",
            span=server.span,
        )

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
        cause = f" ({describe(self.failure)})" if self.failure is not None else ""
        return ServerCrashed(
            f"server {self.server.name!r} went away during {tool!r}{code}{cause}; outcome unknown{self._evidence()}",
            idempotent=idempotent,
            span=self.server.span,
        )


def launch_for(server: ServerDef, env: Mapping[str, str]) -> Launch:
    """Expand `${VAR}` in every launch and connection setting: command, args, cwd, env, url, headers and auth."""

    def expand(value: str, where: str) -> str:
        return expand_vars(value, env, server=server, where=where)

    headers = {name: expand(value, f"headers.{name}") for name, value in server.headers.items()}
    if server.bearer is not None:
        headers["Authorization"] = f"Bearer {expand(server.bearer, 'auth.bearer')}"
    credentials = server.client_credentials
    if credentials is not None:
        credentials = ClientCredentials(
            client_id=expand(credentials.client_id, "auth.client_credentials.client_id"),
            client_secret=expand(credentials.client_secret, "auth.client_credentials.client_secret"),
            scope=expand(credentials.scope, "auth.client_credentials.scope") if credentials.scope else None,
            issuer=expand(credentials.issuer, "auth.client_credentials.issuer") if credentials.issuer else None,
            auth_method=credentials.auth_method,
        )
    return Launch(
        transport=server.transport,
        command=expand(server.command, "command") if server.command is not None else None,
        args=tuple(expand(arg, f"args[{i}]") for i, arg in enumerate(server.args)),
        env={name: expand(value, f"env.{name}") for name, value in server.env.items()},
        cwd=expand(server.cwd, "cwd") if server.cwd is not None else None,
        url=expand(server.url, "url") if server.url is not None else None,
        headers=headers,
        client_credentials=credentials,
    )


def _oauth(url: str, credentials: ClientCredentials | None) -> httpx2.Auth | None:
    """The SDK's client-credentials provider: discovers the authorization server from the MCP server's 401 and
    fetches a token (kept in memory for this session)."""
    if credentials is None:
        return None
    with warnings.catch_warnings():  # without `issuer` the SDK warns on stderr; docs/agents.md says why to give one
        warnings.simplefilter("ignore")
        return ClientCredentialsOAuthProvider(
            server_url=url,
            storage=_MemoryTokens(),
            client_id=credentials.client_id,
            client_secret=credentials.client_secret,
            token_endpoint_auth_method="client_secret_post"
            if credentials.auth_method == "client_secret_post"
            else "client_secret_basic",
            scope=credentials.scope,
            issuer=credentials.issuer,
        )


def expand_vars(value: str, env: Mapping[str, str], *, server: ServerDef, where: str) -> str:
    """`${VAR}` → env[VAR]; `${VAR:-default}` (or `${VAR:default}`) → default when VAR is unset or empty (as in sh).

    An unset variable without a default is a ServerStartError naming it (not retryable: a config error).
    """

    def unset(name: str) -> ServerStartError:
        error = ServerStartError(
            f"server {server.name!r}: environment variable {name!r} (used in {where}) is not set", span=server.span
        )
        error.retryable = False
        return error

    return expand(value, env, unset)


def _tail(errlog: IO[bytes]) -> str:
    """The last STDERR_TAIL_LINES lines the server wrote to stderr."""
    with suppress(OSError, ValueError):
        size = errlog.seek(0, os.SEEK_END)
        errlog.seek(max(0, size - 64 * 1024))
        text = errlog.read().decode("utf-8", errors="replace")
        return "\n".join(text.rstrip().splitlines()[-STDERR_TAIL_LINES:])
    return ""


def _safe_url(url: str) -> str:
    """scheme://host[:port]/path: a URL fit for messages (credentials live in user info and query strings)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def describe(exc: BaseException) -> str:
    """A one-line cause, looking inside exception groups for the first real error."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
