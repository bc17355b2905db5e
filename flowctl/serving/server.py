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
  elicitation is told, in a progress message and on stderr, the `flowctl signal` command that releases the wait, and
  the call waits. A 2026-07-28 connection has no server-to-client requests during a call: there the call returns an
  `InputRequiredResult` carrying the elicitation, the run goes on waiting in the background (a `_Detached` run,
  owned by `PipelineServer.running()`), and the client's retry with the answer and the `request_state` delivers it
  and picks the run up again;
- an elicitation that an MCP server used by the pipeline sends (which makes the run wait for the `elicitation`
  event when no person is at a terminal, see docs/agents.md) is passed on to the client as it was asked — its message
  and requested schema — and the client's answer (accept with content, decline, cancel) goes back to that server;
- a `notifications/cancelled` from the client cancels the call's task, and so the run: it is marked cancelled and
  stays resumable.
"""

from __future__ import annotations

import json
import math
import secrets
import shlex
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

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
        self.open_waits: set[tuple[str, str]] = set()  # (run, step) of the waits not released yet

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
        self.open_waits.discard((run_id, path))
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
        self.open_waits.add((run_id, path))
        self._note(_Note(f"step {path} waits for the event {event!r}", run_id, path, event, asked))


@dataclass(slots=True)
class _Call:
    """One tool call's shared state: its run, and why the server ended it (a declined elicitation)."""

    served: ServedPipeline
    run_id: str | None = None
    declined: str | None = None
    progress: int = 0


MAX_PENDING = 1000  # unanswered InputRequiredResults kept (answered ones are dropped at once)
INPUT_KEY = "event"  # the key of the one input request an InputRequiredResult carries (a wait's event)


@dataclass(eq=False, slots=True)
class _Detached:
    """A call's run on a 2026-07-28 connection: it outlives each request of the call, which ends with the run's result
    or, when the run waits for an event, with an InputRequiredResult the client answers by calling again."""

    call: _Call
    reporter: _CallReporter
    send: MemoryObjectSendStream[_Note]
    receive: MemoryObjectReceiveStream[_Note]
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)  # cancels the run
    ended: anyio.Event = field(default_factory=anyio.Event)
    outcome: Any = None
    refused: str | None = None
    asked: _Note | None = None  # the wait the client was last asked about


class PipelineServer:
    """The handlers of the MCP server: tools/list and tools/call."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.by_name = {p.name: p for p in options.pipelines}
        self._runs: anyio.abc.TaskGroup | None = None  # where detached runs live (see `running`)
        self._pending: dict[str, _Detached] = {}  # request_state → the run waiting for the client's answer

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Serve inside this block: the runs of 2026-07-28 calls outlive their requests here, and are cancelled
        (marked cancelled, resumable) when it ends."""
        async with anyio.create_task_group() as runs:
            self._runs = runs
            try:
                yield
            finally:
                self._runs = None
                runs.cancel_scope.cancel()

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
        if params.request_state is not None:
            return await self._answered(ctx, served, params)
        if self._runs is not None and _takes_input_required(ctx):
            return await self._start_detached(ctx, served, params.arguments or {})
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
        return self._result(call, reporter, outcome, refused)

    def _result(self, call: _Call, reporter: _CallReporter, outcome: Any, refused: str | None) -> types.CallToolResult:
        """What a call returns once its run ended (or was refused, or cancelled)."""
        served = call.served
        if refused is not None:
            return _error(self._masked(served, refused), reporter.run_id)
        if outcome is None:  # the server ended the run: the client declined an elicitation, or cancelled
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

    # --- 2026-07-28: a wait becomes an InputRequiredResult ------------------------------------------------------

    async def _start_detached(
        self, ctx: ServerRequestContext[Any], served: ServedPipeline, arguments: dict[str, Any]
    ) -> types.CallToolResult | types.InputRequiredResult:
        send, receive = anyio.create_memory_object_stream[_Note](math.inf)
        run = _Detached(_Call(served), _CallReporter(send), send, receive)
        assert self._runs is not None
        self._runs.start_soon(self._run_detached, run, arguments, name=f"served run of {served.name}")
        return await self._leg(ctx, run)

    async def _run_detached(self, run: _Detached, arguments: dict[str, Any]) -> None:
        from flowctl.api import run as run_pipeline
        from flowctl.interpreter.errors import FlowctlError
        from flowctl.interpreter.persistence.store_errors import StoreError

        try:
            with run.scope:
                try:
                    run.outcome = await run_pipeline(
                        run.call.served.graph,
                        arguments,
                        store=self.options.store,
                        scripted=self.options.scripted,
                        reporter=run.reporter,
                        env=self.options.env,
                    )
                except (FlowctlError, StoreError) as exc:
                    run.refused = str(exc)
        finally:
            run.send.close()
            run.ended.set()

    async def _leg(
        self, ctx: ServerRequestContext[Any], run: _Detached
    ) -> types.CallToolResult | types.InputRequiredResult:
        """One request of a detached call: pass the run's progress on until it ends (its result) or waits for an event
        (an InputRequiredResult asking the client for it; the run waits on in the background)."""
        call = run.call
        try:
            async for note in run.receive:
                if call.run_id is None and run.reporter.run_id is not None:
                    call.run_id = run.reporter.run_id
                    self.options.log(f"{call.served.name}: run {call.run_id} started")
                await self._progress(ctx, call, note.text)
                if note.event:
                    run.asked = note
                    return self._ask(run, secrets.token_urlsafe(24))  # unguessable: only this client can answer
            await run.ended.wait()
        except anyio.get_cancelled_exc_class():
            run.scope.cancel()  # the client cancelled the call: so is its run (resumable)
            raise
        return self._result(call, run.reporter, run.outcome, run.refused)

    async def _answered(
        self, ctx: ServerRequestContext[Any], served: ServedPipeline, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        """A detached call's next request: deliver the client's answer to the wait it was asked about, go on."""
        from flowctl.api import signal

        run = self._pending.pop(params.request_state or "", None)
        if run is None or run.call.served is not served or run.asked is None:
            raise MCPError(
                types.INVALID_PARAMS,
                "unknown request_state: no run of this server waits for it (answered already, or the server "
                "restarted: its runs were cancelled and `flowctl resume` continues them)",
            )
        note, call = run.asked, run.call
        root = note.run_id.split("/", 1)[0]
        answer = (params.input_responses or {}).get(INPUT_KEY)
        action = getattr(answer, "action", None)
        content = getattr(answer, "content", None) or {}
        if (note.run_id, note.path) not in run.reporter.open_waits:
            pass  # released meanwhile (`flowctl signal`): the answer would be an event no step waits for
        elif action is None:  # no answer to the question: ask it again
            return self._ask(run, params.request_state or "")
        elif note.asked is not None:  # an MCP server's elicitation: whatever the answer, it goes back to that server
            data = content if action == "accept" else {"action": action}
            signal(root, ELICITATION_EVENT, data, store=self.options.store)
        elif action == "accept":
            signal(root, note.event, _payload(content.get("data")), store=self.options.store)
        else:
            _, _, command = self._question(call, note)
            call.declined = self._declined(call, note, action, root, command)
            run.scope.cancel()
        return await self._leg(ctx, run)

    def _ask(self, run: _Detached, token: str) -> types.InputRequiredResult:
        """The InputRequiredResult that asks the client for the event the run waits for; `token` is its state."""
        assert run.asked is not None
        self._pending[token] = run  # kept after the run ends too: the client's answer then gets its result
        while len(self._pending) > MAX_PENDING:  # but not for ever for clients that never answer: oldest first
            del self._pending[next(iter(self._pending))]
        message, schema, _ = self._question(run.call, run.asked)
        request = types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))
        meta = {RUN_META: {"run_id": run.asked.run_id.split("/", 1)[0], "status": "waiting"}}
        return types.InputRequiredResult(input_requests={INPUT_KEY: request}, request_state=token, _meta=meta)

    def _question(self, call: _Call, note: _Note) -> tuple[str, dict[str, Any], str]:
        """What the client is asked for a wait (message, form schema) and the command that answers it instead."""
        root = note.run_id.split("/", 1)[0]
        data = "'{…}'" if note.asked is not None else "JSON"
        command = f"flowctl signal {root} {shlex.quote(note.event)} --data {data}{self.options.store_flag}"
        if note.asked is not None:
            where = f"asked by the MCP server {note.asked.server!r}, in step {note.path!r} of {call.served.name!r}"
            return f"{note.asked.message}\n({where})", note.asked.schema, command
        message = (
            f"The pipeline {call.served.name!r} (run {root}) waits at step {note.path!r} for the event "
            f"{note.event!r}. Accept to send it; `data` is its payload as JSON (empty: none)."
        )
        schema = {
            "type": "object",
            "properties": {"data": {"type": "string", "title": "data (JSON)", "description": "the event's payload"}},
        }
        return message, schema, command

    def _declined(self, call: _Call, note: _Note, action: str, root: str, command: str) -> str:
        declined = (
            f"the client answered {action!r} to the event {note.event!r} that step {note.path!r} waits "
            f"for: run {root} is cancelled; send the event with `{command}` and resume it with "
            f"`flowctl resume {root}{self.options.store_flag}`"
        )
        self.options.log(f"{call.served.name}: {declined}")
        return declined

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
        message, schema, command = self._question(call, note)
        capabilities = ctx.session.client_capabilities
        if capabilities is None or capabilities.elicitation is None or not ctx.session.can_send_request:
            text = f"step {note.path} waits for the event {note.event!r}: `{command}` releases it"
            self.options.log(f"{call.served.name}: {text}")
            await self._progress(ctx, call, text)
            return
        await self._progress(ctx, call, note.text)
        if note.asked is not None:
            await self._forward_elicitation(ctx, message, schema, call, root, command)
            return
        try:
            answer = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
        except Exception as exc:  # the client failed to answer: the wait stays, `flowctl signal` can still release it
            self.options.log(f"{call.served.name}: elicitation failed ({exc!r}); `{command}` releases the wait")
            return
        if answer.action != "accept":
            call.declined = self._declined(call, note, answer.action, root, command)
            run_scope.cancel()
            return
        signal(root, note.event, _payload((answer.content or {}).get("data")), store=self.options.store)

    async def _forward_elicitation(
        self,
        ctx: ServerRequestContext[Any],
        message: str,
        schema: dict[str, Any],
        call: _Call,
        root: str,
        command: str,
    ) -> None:
        """A server's elicitation inside the run, passed to the client as it was asked (message and schema); the
        client's answer, whatever it is, goes back to the server through the `elicitation` signal."""
        from flowctl.api import signal

        try:
            answer = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
        except Exception as exc:  # the client failed to answer: `flowctl signal` can still answer the server
            self.options.log(f"{call.served.name}: elicitation failed ({exc!r}); `{command}` answers it")
            return
        data = (answer.content or {}) if answer.action == "accept" else {"action": answer.action}
        signal(root, ELICITATION_EVENT, data, store=self.options.store)


def _takes_input_required(ctx: ServerRequestContext[Any]) -> bool:
    """Whether the call may end with an InputRequiredResult: a 2026-07-28 connection whose client can answer
    elicitation (other clients are told which `flowctl signal` releases a wait)."""
    capabilities = ctx.session.client_capabilities
    modern = ctx.session.protocol_version in MODERN_PROTOCOL_VERSIONS
    return modern and capabilities is not None and capabilities.elicitation is not None


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

    pipelines = PipelineServer(options)
    server = pipelines.server()
    async with stdio_server() as (read, write):
        with anyio.CancelScope() as serving:
            signums: list[int] = []

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        signums.append(signum)
                        serving.cancel()
                        return

            async with pipelines.running(), anyio.create_task_group() as tg:
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

    pipelines = PipelineServer(options)
    app = pipelines.server().streamable_http_app(host=host)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    async with pipelines.running():
        await uvicorn.Server(config).serve(sockets=[sock])
