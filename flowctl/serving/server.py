"""The MCP server of `flowctl serve`: one tool per pipeline, over stdio or streamable HTTP (the SDK's low-level
`Server`, so that each tool's input and output schemas are exactly the pipeline's).

A tool call is a run, journaled in the run store like any (`flowctl runs`, `show`, `logs`, `resume` see it), started
with the Python API's `flowctl.api.run`. While it runs, a `Reporter` of the call's own hands what happens to a
forwarder task that talks to the client:
- progress: a `notifications/progress` per step that starts, finishes or is retried, and per progress notification
  of the MCP servers the steps call (fan-out items excepted), when the client sent a progress token; the progress
  value counts those notifications, with no total;
- a `wait` step (or anything else that waits for an event): a client that declared elicitation is asked for the
  event's data with an elicitation form; its answer is delivered as a signal (as `flowctl signal` does). A decline
  or cancel cancels the run (resumable) and the call returns an error that says how to go on. A client without
  elicitation — or on a 2026-07-28 connection, which has no server-to-client requests during a call — is told, in a
  progress message and on stderr, the `flowctl signal` command that releases the wait, and the call waits;
- an elicitation that an MCP server used by the pipeline sends (which makes the run wait for the `elicitation`
  event when no person is at a terminal, see docs/agents.md) is passed on to the client as it was asked — its message
  and requested schema — and the client's answer (accept with content, decline, cancel) goes back to that server;
- a `notifications/cancelled` from the client cancels the call's task, and so the run: it is marked cancelled and
  stays resumable.
"""

from __future__ import annotations

import json
import math
import shlex
import socket
import sys
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from flowctl import __version__
from flowctl.interpreter.reporting import Reporter, Retry
from flowctl.serving.tools import ServedPipeline

RUN_META = "io.flowctl/run"  # the `_meta` key of a tool result that names the run it was


@dataclass(slots=True)
class ServeOptions:
    """What every call shares: the pipelines, the store (a path or URL, opened per call), the fixture that answers
    models offline (`--scripted`), the environment runs see, and where log lines go."""

    pipelines: list[ServedPipeline]
    store: str
    store_flag: str = ""  # what a printed command must add to reach the store (` --store X`)
    scripted: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class _Note:
    """What the call's reporter hands the forwarder: a progress line, or a wait for an event."""

    text: str
    run_id: str = ""
    path: str = ""
    event: str = ""  # set for a wait
    asked: Asked | None = None  # set for a wait that answers an MCP server's elicitation


@dataclass(frozen=True, slots=True)
class Asked:
    """An elicitation a server the pipeline uses sent it, which the run waits for (`elicitation` event)."""

    server: str
    message: str
    schema: dict[str, Any]


ELICITATION_EVENT = "elicitation"  # what a run waits for while a server's elicitation is unanswered (docs/agents.md)


def _shown(path: str) -> bool:
    return "[" not in path  # fan-out items would be thousands of notifications; their step's own are enough


class _CallReporter(Reporter):
    """Turns the run's events into notes for the forwarder (reporters are called synchronously, inside the run)."""

    def __init__(self, send: MemoryObjectSendStream[_Note]) -> None:
        self.send = send
        self.run_id: str | None = None
        self.asked: dict[tuple[str, str], Asked] = {}  # (run, step) → the elicitation its next wait answers

    def _note(self, note: _Note) -> None:
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.send.send_nowait(note)

    def run_started(self, run_id: str, pipeline: str, resumed: bool) -> None:
        if self.run_id is None:
            self.run_id = run_id
            self._note(_Note(f"run {run_id} started"))

    def step_started(self, run_id: str, path: str, kind: str, attempt: int) -> None:
        if _shown(path):
            self._note(_Note(f"step {path} started" + (f" (attempt {attempt})" if attempt > 1 else "")))

    def step_finished(self, run_id: str, path: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        if _shown(path):
            self._note(_Note(f"step {path} {status}" + (f": {error}" if error else "")))

    def step_retrying(self, run_id: str, path: str, retry: Retry) -> None:
        if _shown(path):
            self._note(_Note(f"step {path}: {retry.describe()}"))

    def tool_progress(
        self, run_id: str, path: str, server: str, tool: str, progress: float, total: float | None, message: str
    ) -> None:
        """An MCP server's progress on a tool call of a step, passed on as a line of the call's progress."""
        if _shown(path):
            done = f"{progress:g}/{total:g}" if total else f"{progress:g}"
            self._note(_Note(f"step {path}: {server}.{tool} {done}" + (f": {message}" if message else "")))

    def elicitation(
        self, run_id: str, path: str, server: str, message: str, schema: dict[str, Any], on_terminal: bool
    ) -> None:
        """A server asks; unattended, a wait for the `elicitation` event of the same step follows."""
        if not on_terminal:
            self.asked[(run_id, path)] = Asked(server, message, schema)

    def waiting(self, run_id: str, path: str, event: str) -> None:
        asked = self.asked.pop((run_id, path), None) if event == ELICITATION_EVENT else None
        self._note(_Note(f"step {path} waits for the event {event!r}", run_id, path, event, asked))


@dataclass(slots=True)
class _Call:
    """One tool call's shared state: its run, and why the server ended it (a declined elicitation)."""

    served: ServedPipeline
    run_id: str | None = None
    declined: str | None = None
    progress: int = 0


class PipelineServer:
    """The handlers of the MCP server: tools/list and tools/call."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.by_name = {p.name: p for p in options.pipelines}

    def server(self) -> Server[Any]:
        names = ", ".join(sorted(self.by_name))
        return Server(
            "flowctl",
            version=__version__,
            instructions=f"flowctl pipelines offered as tools ({names}); each call is a journaled, resumable run.",
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
        )

    async def list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        tools = [
            types.Tool(
                name=p.name,
                title=p.title,
                description=p.description,
                input_schema=p.input_schema,
                output_schema=p.output_schema,
                annotations=types.ToolAnnotations.model_validate(p.annotations) if p.annotations else None,
            )
            for p in self.options.pipelines
        ]
        return types.ListToolsResult(tools=tools)

    async def call_tool(self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> Any:
        from flowctl.api import run
        from flowctl.interpreter.errors import FlowctlError
        from flowctl.interpreter.persistence.store_errors import StoreError

        served = self.by_name.get(params.name)
        if served is None:
            offered = ", ".join(sorted(self.by_name))
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name!r} (this server offers {offered})")
        call = _Call(served)
        send, receive = anyio.create_memory_object_stream[_Note](math.inf)
        reporter = _CallReporter(send)
        outcome = None
        refused: str | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._forward, ctx, receive, call, reporter, tg.cancel_scope)
            try:
                outcome = await run(
                    served.graph,
                    params.arguments or {},
                    store=self.options.store,
                    scripted=self.options.scripted,
                    reporter=reporter,
                    env=self.options.env,
                )
            except (FlowctlError, StoreError) as exc:  # inputs the pipeline refuses, a store that cannot keep it
                refused = str(exc)
            finally:
                send.close()  # the forwarder delivers the notes left, drops the elicitations still open, and ends
        if refused is not None:
            return _error(self._masked(served, refused), reporter.run_id)
        if outcome is None:  # the forwarder ended the run: the client declined an elicitation
            return _error(call.declined or "the run was cancelled", reporter.run_id, "cancelled")
        self.options.log(f"{served.name}: run {outcome.run_id} {outcome.status.value}")
        store = self.options.store_flag
        if outcome.error is not None:
            message = (
                f"run {outcome.run_id} failed: {outcome.error}. Inspect it with `flowctl show {outcome.run_id}{store}`"
                f", resume it with `flowctl resume {outcome.run_id}{store}`."
            )
            return _error(self._masked(served, message), outcome.run_id, outcome.status.value)
        # what a client is given is masked as what `flowctl run` prints (secrets of the server's environment)
        outputs = self._masked(served, json.loads(json.dumps(outcome.outputs or {}, default=str)))
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(outputs, ensure_ascii=False))],
            structured_content=outputs,
            _meta={RUN_META: {"run_id": outcome.run_id, "status": outcome.status.value}},
        )

    def _masked(self, served: ServedPipeline, value: Any) -> Any:
        from flowctl.interpreter.redact import redactor_for

        redactor = redactor_for([served.graph], self.options.env)
        return redactor.redact_text(value) if isinstance(value, str) else redactor.redact(value)

    async def _forward(
        self,
        ctx: ServerRequestContext[Any],
        receive: MemoryObjectReceiveStream[_Note],
        call: _Call,
        reporter: _CallReporter,
        run_scope: anyio.CancelScope,
    ) -> None:
        async with anyio.create_task_group() as waits:
            async for note in receive:
                if note.event:
                    waits.start_soon(self._wait, ctx, note, call, run_scope)
                else:
                    if call.run_id is None and reporter.run_id is not None:
                        call.run_id = reporter.run_id
                        self.options.log(f"{call.served.name}: run {call.run_id} started")
                    await self._progress(ctx, call, note.text)
            waits.cancel_scope.cancel()  # the run ended: nothing waits for an answer any more

    async def _progress(self, ctx: ServerRequestContext[Any], call: _Call, text: str) -> None:
        call.progress += 1
        try:
            await ctx.session.report_progress(call.progress, None, text)
        except Exception as exc:  # a client gone or refusing: the run goes on
            self.options.log(f"{call.served.name}: progress not delivered: {exc!r}")

    async def _wait(
        self, ctx: ServerRequestContext[Any], note: _Note, call: _Call, run_scope: anyio.CancelScope
    ) -> None:
        """Ask the client for the event's data; without elicitation, say which signal releases the wait."""
        from flowctl.api import signal

        root = note.run_id.split("/", 1)[0]
        data = "'{…}'" if note.asked is not None else "JSON"
        command = f"flowctl signal {root} {shlex.quote(note.event)} --data {data}{self.options.store_flag}"
        capabilities = ctx.session.client_capabilities
        if capabilities is None or capabilities.elicitation is None or not ctx.session.can_send_request:
            text = f"step {note.path} waits for the event {note.event!r}: `{command}` releases it"
            self.options.log(f"{call.served.name}: {text}")
            await self._progress(ctx, call, text)
            return
        await self._progress(ctx, call, note.text)
        if note.asked is not None:
            await self._forward_elicitation(ctx, note, note.asked, call, root, command)
            return
        message = (
            f"The pipeline {call.served.name!r} (run {root}) waits at step {note.path!r} for the event "
            f"{note.event!r}. Accept to send it; `data` is its payload as JSON (empty: none)."
        )
        schema = {
            "type": "object",
            "properties": {"data": {"type": "string", "title": "data (JSON)", "description": "the event's payload"}},
        }
        try:
            answer = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
        except Exception as exc:  # the client failed to answer: the wait stays, `flowctl signal` can still release it
            self.options.log(f"{call.served.name}: elicitation failed ({exc!r}); `{command}` releases the wait")
            return
        if answer.action != "accept":
            call.declined = (
                f"the client answered {answer.action!r} to the event {note.event!r} that step {note.path!r} waits "
                f"for: run {root} is cancelled; send the event with `{command}` and resume it with "
                f"`flowctl resume {root}{self.options.store_flag}`"
            )
            self.options.log(f"{call.served.name}: {call.declined}")
            run_scope.cancel()
            return
        signal(root, note.event, _payload((answer.content or {}).get("data")), store=self.options.store)

    async def _forward_elicitation(
        self, ctx: ServerRequestContext[Any], note: _Note, asked: Asked, call: _Call, root: str, command: str
    ) -> None:
        """A server's elicitation inside the run, passed to the client as it was asked (message and schema); the
        client's answer, whatever it is, goes back to the server through the `elicitation` signal."""
        from flowctl.api import signal

        where = f"asked by the MCP server {asked.server!r}, in step {note.path!r} of {call.served.name!r}"
        message = f"{asked.message}\n({where})"
        try:
            answer = await ctx.session.elicit_form(message, asked.schema, related_request_id=ctx.request_id)
        except Exception as exc:  # the client failed to answer: `flowctl signal` can still answer the server
            self.options.log(f"{call.served.name}: elicitation failed ({exc!r}); `{command}` answers it")
            return
        data = (answer.content or {}) if answer.action == "accept" else {"action": answer.action}
        signal(root, ELICITATION_EVENT, data, store=self.options.store)


def _payload(text: Any) -> Any:
    """The form's `data` field: JSON text, parsed; empty is no data; text that is not JSON stays text."""
    if not isinstance(text, str):
        return text
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _error(message: str, run_id: str | None, status: str = "failed") -> types.CallToolResult:
    meta = {RUN_META: {"run_id": run_id, "status": status}} if run_id else None
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True, _meta=meta)


async def serve_stdio(options: ServeOptions, stopped: Callable[[int], Any]) -> None:
    """Serve over this process's stdin and stdout until the client closes stdin. On SIGINT or SIGTERM, calls in
    flight are cancelled (their runs marked cancelled, resumable) and `stopped(signum)` is called: the SDK's stdin
    reader, a thread no signal interrupts, would otherwise hold the process until stdin closes."""
    import signal

    server = PipelineServer(options).server()
    async with stdio_server() as (read, write):
        with anyio.CancelScope() as serving:
            signums: list[int] = []

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        signums.append(signum)
                        serving.cancel()
                        return

            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_on_signal)
                await server.run(read, write, server.create_initialization_options())
                tg.cancel_scope.cancel()
        if signums:
            stopped(signums[0])


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: any free port), bound before the server starts so that its address can be
    printed first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


async def serve_http(options: ServeOptions, sock: socket.socket, host: str) -> None:
    """Serve streamable HTTP at `/mcp` on a bound socket until SIGINT/SIGTERM (uvicorn's graceful shutdown: calls
    in flight are cancelled, so their runs are marked cancelled and stay resumable)."""
    import uvicorn

    app = PipelineServer(options).server().streamable_http_app(host=host)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    await uvicorn.Server(config).serve(sockets=[sock])
