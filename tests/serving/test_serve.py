"""`flowctl serve`, called by the mcp SDK's client over stdio and streamable HTTP (a real `flowctl serve` subprocess
each time): tools described from the pipelines, results with structured content, runs journaled and resumable,
progress notifications, `wait` steps forwarded as elicitation (accepted, declined, or released by `flowctl signal`
for a client without elicitation), cancellation from the client, and a flowctl pipeline calling a served one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
import pytest
from mcp.client.client import Client
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

import flowctl
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore

HERE = Path(__file__).parent / "pipelines"
GREET = HERE / "greet.yaml"
APPROVAL = HERE / "approval.yaml"
FIXTURE = HERE / "serving.fixture.yaml"
ROOT = Path(__file__).parents[2]
BOUND = 60  # seconds: a generous bound on each wait, so that a hang fails the test instead of the suite

pytestmark = pytest.mark.anyio


def serve_args(store: Path, *targets: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return ["-m", "flowctl", "serve", *map(str, targets), "--scripted", str(FIXTURE), "--store", str(store), *extra]


@asynccontextmanager
async def stdio_session(
    store: Path, *targets: Path, env: dict[str, str] | None = None, **client: Any
) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=sys.executable, args=serve_args(store, *targets), cwd=str(ROOT), env=env)
    with open(os.devnull, "w") as quiet:
        async with stdio_client(params, errlog=quiet) as (read, write), ClientSession(read, write, **client) as session:
            await session.initialize()
            yield session


@asynccontextmanager
async def http_server(store: Path, *targets: Path) -> AsyncIterator[tuple[str, list[str]]]:
    """`flowctl serve --transport http --port 0`; yields its URL (from the line it prints) and its stderr lines."""
    argv = [sys.executable, *serve_args(store, *targets, extra=("--transport", "http", "--port", "0"))]
    process = await anyio.open_process(argv, cwd=str(ROOT), stdout=subprocess.DEVNULL)
    lines: list[str] = []
    url = anyio.Event()
    found: list[str] = []

    async def read(stream: anyio.abc.ByteReceiveStream) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                lines.append(line.decode())
                if "http://" in lines[-1] and not url.is_set():
                    found.append(lines[-1].split(" at ", 1)[1].split(": ", 1)[0])
                    url.set()
        url.set()  # the server exited before it listened: its stderr says why

    try:
        async with anyio.create_task_group() as tg:
            assert process.stderr is not None
            tg.start_soon(read, process.stderr)
            with anyio.fail_after(BOUND):
                await url.wait()
            assert found, "\n".join(lines)
            yield found[0], lines
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(BOUND):
                assert await process.wait() in (0, -signal.SIGTERM)
            tg.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def http_session(url: str, **client: Any) -> AsyncIterator[ClientSession]:
    async with streamable_http_client(url) as (read, write), ClientSession(read, write, **client) as session:
        await session.initialize()
        yield session


def answer(action: str, data: str | None = None) -> Any:
    """An elicitation callback that answers every request the same way, and keeps the requests."""
    asked: list[types.ElicitRequestParams] = []

    async def callback(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(action=action, content={"data": data} if data is not None else None)  # type: ignore[arg-type]

    callback.asked = asked  # type: ignore[attr-defined]
    return callback


async def test_tools_are_the_pipelines_and_a_call_is_a_journaled_run(tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, message))

    async with stdio_session(store, HERE) as session:
        listed = (await session.list_tools()).tools
        tools = {t.name: t for t in listed}
        assert sorted(tools) == ["approval", "greet"]  # the folder's pipelines; caller/ (a subfolder) is not served
        greet = tools["greet"]
        assert greet.description == "Greets someone by name, in a given tone."
        assert greet.input_schema == {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "description": "Who to greet."},
                "tone": {"type": "string", "enum": ["warm", "formal"], "default": "warm"},
            },
            "required": ["name"],
            "additionalProperties": False,
        }
        assert greet.output_schema is not None and greet.output_schema["required"] == ["greeting", "length"]
        assert tools["approval"].output_schema is None
        result = await session.call_tool("greet", {"name": "Ada"}, progress_callback=on_progress)
    assert not result.is_error, result.content
    assert result.structured_content == {"greeting": "Hello, Ada!", "length": 11}
    assert isinstance(result.content[0], types.TextContent)
    assert json.loads(result.content[0].text) == result.structured_content
    run_id = result.meta["io.flowctl/run"]["run_id"] if result.meta else None
    assert [(r["run_id"], r["status"], r["pipeline"]) for r in flowctl.list_runs(store=store)] == [
        (run_id, "succeeded", "greet")
    ]
    messages = [m for _, m in progress]
    assert messages[0] == f"run {run_id} started"
    assert "step hello started" in messages and "step hello succeeded" in messages
    assert [v for v, _ in progress] == sorted({v for v, _ in progress})  # strictly increasing


async def test_tools_carry_a_title_and_the_hints_serve_declares(tmp_path: Path) -> None:
    """`serve:` gives the title and annotations; the title defaults to the name as words, and a pipeline that declares
    no MCP server (it can only call models) is read-only unless it says otherwise."""
    server = "servers:\n  files: {command: mcp-server-filesystem, args: [/srv]}\n"
    steps = "steps:\n  - {id: sync, tool: files.list_directory, args: {path: /srv}}\n"
    declared = tmp_path / "publish.yaml"
    hints = "serve:\n  title: Publish the draft\n  read_only: false\n  destructive: false\n  idempotent: true\n"
    declared.write_text(f"flowctl: 1\nname: publish\n{hints}  open_world: false\n{server}{steps}")
    undeclared = tmp_path / "sync.yaml"
    undeclared.write_text(f"flowctl: 1\nname: sync_files-now\n{server}{steps}")
    async with stdio_session(tmp_path / "runs.db", GREET, APPROVAL, declared, undeclared) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
    greet, approval, publish, sync = (tools[n] for n in ("greet", "approval", "publish", "sync_files-now"))
    assert (greet.title, approval.title, publish.title, sync.title) == (
        "Greet someone",
        "Approval",
        "Publish the draft",
        "Sync files now",
    )
    assert greet.annotations == types.ToolAnnotations(readOnlyHint=True, openWorldHint=False)
    assert approval.annotations == types.ToolAnnotations(readOnlyHint=True)
    assert publish.annotations == types.ToolAnnotations(
        readOnlyHint=False, destructiveHint=False, idempotentHint=True, openWorldHint=False
    )
    assert sync.annotations is None  # it may modify anything its server can: the client's cautious defaults apply


async def test_bad_arguments_and_unknown_tools(tmp_path: Path) -> None:
    secret = "tok-3f9a8b7c6d5e4f"
    async with stdio_session(tmp_path / "runs.db", GREET, env={"DEPLOY_TOKEN": secret}) as session:
        bad = await session.call_tool("greet", {"name": "Ada", "tone": secret, "extra": 1})
        assert bad.is_error
        text = bad.content[0].text if isinstance(bad.content[0], types.TextContent) else ""
        assert "unknown input 'extra'" in text and "'tone'" in text
        assert secret not in text and "***" in text  # masked as `flowctl run` masks what it prints
        with pytest.raises(MCPError, match="unknown tool 'nope'"):
            await session.call_tool("nope", {})
    assert flowctl.list_runs(store=tmp_path / "runs.db") == []  # refused inputs journal nothing


async def test_streamable_http_with_a_wait_answered_by_elicitation(tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    accept = answer("accept", '{"by": "ana"}')
    async with http_server(store, GREET, APPROVAL) as (url, lines):
        assert url.startswith("http://127.0.0.1:") and url.endswith("/mcp")
        async with http_session(url, elicitation_callback=accept) as session:
            greeted: dict[str, Any] = {}

            async def greet(tone: str) -> None:
                greeted[tone] = (await session.call_tool("greet", {"name": "Ada", "tone": tone})).structured_content

            async with anyio.create_task_group() as tg:  # two calls at once: two runs
                tg.start_soon(greet, "formal")
                tg.start_soon(greet, "warm")
            approved = await session.call_tool("approval", {})
    assert greeted == {
        "formal": {"greeting": "Good day, Ada.", "length": 14},
        "warm": {"greeting": "Hello, Ada!", "length": 11},
    }
    assert not approved.is_error, approved.content
    assert approved.structured_content == {"approval": {"by": "ana"}, "published": "published"}
    (asked,) = accept.asked
    assert "'approved'" in asked.message and "'approval'" in asked.message
    statuses = sorted((r["pipeline"], r["status"]) for r in flowctl.list_runs(store=store))
    assert statuses == [("approval", "succeeded"), ("greet", "succeeded"), ("greet", "succeeded")]
    assert any("approval: run" in line and "succeeded" in line for line in lines)


async def test_a_declined_elicitation_cancels_the_run_which_resumes(tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    async with stdio_session(store, APPROVAL, elicitation_callback=answer("decline")) as session:
        result = await session.call_tool("approval", {})
    assert result.is_error
    run_id = result.meta["io.flowctl/run"]["run_id"] if result.meta else ""
    text = result.content[0].text if isinstance(result.content[0], types.TextContent) else ""
    assert f"run {run_id} is cancelled" in text and f"flowctl signal {run_id} approved --data JSON" in text
    assert flowctl.read_run(run_id, store=store)["status"] == "cancelled"
    flowctl.signal(run_id, "approved", {"by": "ana"}, store=store)
    resumed = await flowctl.resume(run_id, store=store)
    assert resumed.outputs == {"approval": {"by": "ana"}, "published": "published"}


async def test_without_elicitation_the_call_waits_for_flowctl_signal(tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    told = anyio.Event()
    messages: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")
        if "releases it" in (message or ""):
            told.set()

    async with stdio_session(store, APPROVAL) as session, anyio.create_task_group() as tg:
        results: list[types.CallToolResult] = []

        async def call() -> None:
            results.append(await session.call_tool("approval", {}, progress_callback=on_progress))

        tg.start_soon(call)
        with anyio.fail_after(BOUND):
            await told.wait()
        (hint,) = [m for m in messages if "releases it" in m]
        command = hint.split("`")[1]
        assert command.startswith("flowctl signal r-") and command.endswith(f"approved --data JSON --store {store}")
        run_id = command.split()[2]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "flowctl",
                "signal",
                run_id,
                "approved",
                "--data",
                '{"by": "ana"}',
                "--store",
                store,
            ],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
    (result,) = results
    assert result.structured_content == {"approval": {"by": "ana"}, "published": "published"}


async def test_a_client_cancel_cancels_the_run_which_stays_resumable(tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    waiting = anyio.Event()
    run_ids: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        if message and message.startswith("run "):
            run_ids.append(message.split()[1])
        if message and "releases it" in message:
            waiting.set()

    async with stdio_session(store, APPROVAL, GREET) as session:
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: session.call_tool("approval", {}, progress_callback=on_progress))
                await waiting.wait()
                tg.cancel_scope.cancel()  # the SDK sends notifications/cancelled
        (run_id,) = run_ids
        with anyio.fail_after(BOUND):  # the server marks the run cancelled once it has the notification
            while flowctl.read_run(run_id, store=store)["status"] != "cancelled":
                await anyio.sleep(0.05)
        again = await session.call_tool("greet", {"name": "Ada"})  # the server goes on serving
        assert not again.is_error
    flowctl.signal(run_id, "approved", {"by": "ana"}, store=store)
    resumed = await flowctl.resume(run_id, store=store)
    assert resumed.status is flowctl.RunStatus.SUCCEEDED and resumed.calls_replayed == 1


async def test_a_flowctl_pipeline_calls_a_pipeline_served_by_flowctl(tmp_path: Path) -> None:
    template = (HERE / "caller" / "caller.yaml").read_text()
    served_store = tmp_path / "served.db"
    caller = tmp_path / "caller.yaml"
    caller.write_text(
        template.replace("@PYTHON@", sys.executable)
        .replace("@GREET@", str(GREET))
        .replace("@FIXTURE@", str(FIXTURE))
        .replace("@STORE@", str(served_store))
    )
    outcome = await flowctl.run(caller, {"who": "Ada"}, store=tmp_path / "caller.db")
    assert outcome.status is flowctl.RunStatus.SUCCEEDED, outcome.error
    assert outcome.outputs == {"greeting": "Good day, Ada.", "length": 14}
    (served,) = flowctl.list_runs(store=served_store)
    assert (served["pipeline"], served["status"], served["inputs"]) == (
        "greet",
        "succeeded",
        {"name": "Ada", "tone": "formal"},
    )


async def test_a_client_of_the_2026_protocol_calls_tools_and_is_told_how_to_release_a_wait(tmp_path: Path) -> None:
    """A client that negotiates with `server/discover` (protocol 2026-07-28) gets the same tools and results. One
    that cannot answer elicitation is told which `flowctl signal` releases a wait."""
    store = tmp_path / "runs.db"
    told = anyio.Event()
    hints: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        if message and "releases it" in message:
            hints.append(message.split("`")[1])
            told.set()

    params = StdioServerParameters(command=sys.executable, args=serve_args(store, HERE), cwd=str(ROOT))
    with open(os.devnull, "w") as quiet:
        async with (
            stdio_client(params, errlog=quiet) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.discover()
            assert session.protocol_version == "2026-07-28"
            greeted = await session.call_tool("greet", {"name": "Ada"})
            assert greeted.structured_content == {"greeting": "Hello, Ada!", "length": 11}
            async with anyio.create_task_group() as tg:
                results: list[types.CallToolResult] = []

                async def call() -> None:
                    results.append(await session.call_tool("approval", {}, progress_callback=on_progress))

                tg.start_soon(call)
                with anyio.fail_after(BOUND):
                    await told.wait()
                run_id = hints[0].split()[2]
                flowctl.signal(run_id, "approved", {"by": "ana"}, store=store)
    assert results[0].structured_content == {"approval": {"by": "ana"}, "published": "published"}


async def test_on_the_2026_protocol_a_wait_is_an_input_required_result_answered_by_the_client(tmp_path: Path) -> None:
    """2026-07-28 has no server-to-client requests during a call: the call returns an InputRequiredResult carrying
    the elicitation, the run waits on in the server, and the client's retry (the SDK's `Client` drives it) with the
    answer and the request_state delivers the event; the same call then returns the run's result."""
    store = tmp_path / "runs.db"
    accept = answer("accept", '{"by": "ana"}')
    params = StdioServerParameters(command=sys.executable, args=serve_args(store, HERE), cwd=str(ROOT))
    async with Client(params, elicitation_callback=accept) as client:
        assert client.protocol_version == "2026-07-28"
        with anyio.fail_after(BOUND):
            first = await client.session.call_tool("approval", {}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult) and first.request_state
        (request,) = (first.input_requests or {}).values()
        assert isinstance(request, types.ElicitRequest)
        assert "waits at step 'approval' for the event 'approved'" in request.params.message
        (run,) = flowctl.list_runs(store=store)
        assert run["status"] == "running"  # the run waits on in the server while the client is asked
        assert first.meta is not None and first.meta["io.flowctl/run"] == {"run_id": run["run_id"], "status": "waiting"}
        with pytest.raises(MCPError, match="unknown request_state"):
            await client.session.call_tool("approval", {}, request_state="forged", allow_input_required=True)
        answered = {"event": types.ElicitResult(action="accept", content={"data": '{"by": "ana"}'})}
        with anyio.fail_after(BOUND):  # the retry by hand: the answer and the state
            second = await client.session.call_tool(
                "approval", {}, input_responses=answered, request_state=first.request_state, allow_input_required=True
            )
        assert isinstance(second, types.CallToolResult) and not second.is_error, second
        assert second.structured_content == {"approval": {"by": "ana"}, "published": "published"}
        with anyio.fail_after(BOUND):
            done = await client.call_tool("approval", {})  # driven by the SDK: asked, answered, called again
        assert not done.is_error, done.content
        assert done.structured_content == {"approval": {"by": "ana"}, "published": "published"}
        assert len(accept.asked) == 1  # type: ignore[attr-defined]
    assert [r["status"] for r in flowctl.list_runs(store=store)] == ["succeeded", "succeeded"]


async def test_on_the_2026_protocol_over_streamable_http_a_wait_is_answered_through_input_required(
    tmp_path: Path,
) -> None:
    store = tmp_path / "runs.db"
    accept = answer("accept", '{"by": "ana"}')
    async with http_server(store, APPROVAL) as (url, _), Client(url, elicitation_callback=accept) as client:
        assert client.protocol_version == "2026-07-28"
        with anyio.fail_after(BOUND):
            done = await client.call_tool("approval", {})
    assert done.structured_content == {"approval": {"by": "ana"}, "published": "published"}, done.content
    assert len(accept.asked) == 1  # type: ignore[attr-defined]


async def test_on_the_2026_protocol_an_answer_to_a_wait_released_meanwhile_is_not_sent_again(tmp_path: Path) -> None:
    """While the client is asked, `flowctl signal` releases the wait: the client's answer then delivers nothing (it
    would be an event no step waits for, which a later wait of the same name could take), and the call goes on."""
    store = tmp_path / "runs.db"
    params = StdioServerParameters(command=sys.executable, args=serve_args(store, APPROVAL), cwd=str(ROOT))
    async with Client(params, elicitation_callback=answer("accept", "{}")) as client:
        with anyio.fail_after(BOUND):
            first = await client.session.call_tool("approval", {}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult)
        (run,) = flowctl.list_runs(store=store)
        flowctl.signal(run["run_id"], "approved", {"by": "ana"}, store=store)

        def released() -> bool:
            steps = flowctl.read_run(run["run_id"], store=store)["steps"]
            return any(step["path"] == "approval" and step["status"] == "succeeded" for step in steps)

        with anyio.fail_after(BOUND):
            while not released():
                await anyio.sleep(0.05)
        answered = {"event": types.ElicitResult(action="accept", content={"data": '{"by": "bo"}'})}
        with anyio.fail_after(BOUND):
            done = await client.session.call_tool(
                "approval", {}, input_responses=answered, request_state=first.request_state, allow_input_required=True
            )
    assert isinstance(done, types.CallToolResult) and done.structured_content == {
        "approval": {"by": "ana"},
        "published": "published",
    }, done
    reader = SqliteRunStore(store)
    try:
        assert [s.name for s in reader.signals(run["run_id"])] == ["approved"]
    finally:
        reader.close()


async def test_on_the_2026_protocol_a_declined_wait_cancels_the_run_which_stays_resumable(tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    params = StdioServerParameters(command=sys.executable, args=serve_args(store, APPROVAL), cwd=str(ROOT))
    async with Client(params, elicitation_callback=answer("decline")) as client:
        with anyio.fail_after(BOUND):
            declined = await client.call_tool("approval", {})
    assert declined.is_error
    text = declined.content[0].text if isinstance(declined.content[0], types.TextContent) else ""
    run_id = declined.meta["io.flowctl/run"]["run_id"] if declined.meta else ""
    assert f"run {run_id} is cancelled" in text and f"flowctl resume {run_id}" in text
    assert flowctl.read_run(run_id, store=store)["status"] == "cancelled"
    flowctl.signal(run_id, "approved", {"by": "ana"}, store=store)
    resumed = await flowctl.resume(run_id, store=store)
    assert resumed.status is flowctl.RunStatus.SUCCEEDED


def test_serve_refuses_invalid_pipelines_and_clashing_names(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("flowctl: 1\nname: bad\nsteps:\n  - id: a\n    agent: nobody\n    prompt: hi\n")
    done = subprocess.run([sys.executable, "-m", "flowctl", "serve", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and "nobody" in done.stderr and "Traceback" not in done.stderr
    folder = tmp_path / "twice"
    folder.mkdir()
    for name in ("a.yaml", "b.yaml"):
        (folder / name).write_text(GREET.read_text())
    done = subprocess.run([sys.executable, "-m", "flowctl", "serve", str(folder)], capture_output=True, text=True)
    assert done.returncode == 2 and "the name 'greet' is taken by" in done.stderr


async def test_sigterm_cancels_the_calls_in_flight_and_stops_the_stdio_server(tmp_path: Path) -> None:
    """Spoken to by hand (JSON-RPC lines), so that the test holds the server's process: SIGTERM while a call waits
    leaves its run cancelled (resumable) and the server gone with 143, although its stdin is still open."""
    store = tmp_path / "runs.db"
    process = await anyio.open_process([sys.executable, *serve_args(store, APPROVAL)], cwd=str(ROOT))
    assert process.stdin is not None and process.stdout is not None
    version = "2025-11-25"  # the handshake era: `initialize`
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}},
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "approval", "arguments": {}, "_meta": {"progressToken": "p"}},
        },
    ]
    try:
        for message in messages:
            await process.stdin.send((json.dumps(message) + "\n").encode())
        buffer, run_id = b"", ""
        with anyio.fail_after(BOUND):
            async for chunk in process.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                texts = [json.loads(line).get("params", {}).get("message", "") for line in lines if line.strip()]
                run_id = next((t.split()[1] for t in texts if t.startswith("run ")), run_id)
                if any("releases it" in t for t in texts):
                    break
        assert run_id.startswith("r-")
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(BOUND):
            assert await process.wait() == 143
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert flowctl.read_run(run_id, store=store)["status"] == "cancelled"
