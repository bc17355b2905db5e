"""McpPool against real MCP servers over real transports: stdio, streamable HTTP and SSE.

The servers live in tests/support/mcp_servers; `mcp-server-time` is the PyPI reference server installed in the
venv. Timeouts are short so the whole module stays fast.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowctl.dsl.diagnostics import Span
from flowctl.dsl.ir import ServerDef, Transport
from flowctl.interpreter.clock import ManualClock
from flowctl.interpreter.errors import ServerCrashed, ServerStartError, ToolTimeout
from flowctl.interpreter.mcp.mcp_pool import McpPool
from flowctl.interpreter.tools import ToolPool, ToolResult
from tests.support.net import free_port, wait_listening

SERVERS = Path(__file__).resolve().parents[1] / "support" / "mcp_servers"
CALC = str(SERVERS / "calc_server.py")
SPAN = Span("pipeline.yaml", 1, 1)


def stdio(name: str, script: str | Path, **overrides: Any) -> ServerDef:
    """A stdio server running one of the support scripts with this interpreter."""
    options: dict[str, Any] = {"startup_timeout": 60.0, "read_timeout": 60.0} | overrides
    return ServerDef(name, Transport.STDIO, SPAN, command=sys.executable, args=(str(script),), **options)


def calc(**overrides: Any) -> ServerDef:
    return stdio("calc", CALC, **overrides)


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not count: it has exited, only its exit status remains)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children() -> set[int]:
    """Pids of live child processes of this test process."""
    me = str(os.getpid())
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[1] == me and fields[0] != "Z":
                found.add(int(entry.name))
    return found


async def server_pid(pool: McpPool, server: ServerDef) -> int:
    result = await pool.call_tool(server, "pid", {})
    return int(result.value["result"])


@pytest.fixture(scope="module")
def http_calc() -> Iterator[str]:
    """calc over streamable HTTP in its own process; yields the endpoint URL."""
    with serve_calc("--http", "/mcp") as url:
        yield url


@pytest.fixture(scope="module")
def sse_calc() -> Iterator[str]:
    with serve_calc("--sse", "/sse") as url:
        yield url


@contextmanager
def serve_calc(flag: str, path: str) -> Iterator[str]:
    """Run calc as an HTTP server on a free port until the block ends."""
    port = free_port()
    cmd = [sys.executable, CALC, flag, "--port", str(port)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        process.kill()
        process.wait(timeout=60)


# --- happy paths over each transport ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_stdio_lists_tools_and_calls_them() -> None:
    server = calc()
    async with McpPool() as pool:
        assert isinstance(pool, ToolPool)
        tools = {tool.name: tool for tool in await pool.list_tools(server)}
        assert {"add", "echo", "fail", "slow", "crash", "counter", "env"} <= tools.keys()
        assert tools["add"].input_schema["required"] == ["a", "b"]
        assert "Add two numbers" in tools["add"].description

        added = await pool.call_tool(server, "add", {"a": 2, "b": 3})
        assert added == ToolResult(text="5.0", value={"result": 5.0}, is_error=False)
        echoed = await pool.call_tool(server, "echo", {"text": "héllo\nworld"})
        assert echoed.text == "héllo\nworld"
        assert echoed.value == {"result": "héllo\nworld"}
        big = "x" * 3_000_000  # one JSON line far longer than a pipe read
        assert (await pool.call_tool(server, "echo", {"text": big})).text == big


@pytest.mark.anyio
async def test_tool_errors_come_back_as_error_results_both_ways() -> None:
    server = calc()
    async with McpPool() as pool:
        reported = await pool.call_tool(server, "fail", {"message": "disk full"})
        assert reported.is_error
        assert "disk full" in reported.text
        assert reported.value == reported.text  # no structured content: the text

        raised = await pool.call_tool(server, "fail_rpc", {"message": "quota exceeded"})
        assert raised == ToolResult(text="quota exceeded", value="quota exceeded", is_error=True)

        unknown = await pool.call_tool(server, "no_such_tool", {})
        assert unknown.is_error
        assert "no_such_tool" in unknown.text
        # the session survived all three
        assert (await pool.call_tool(server, "add", {"a": 1, "b": 1})).value == {"result": 2.0}


@pytest.mark.anyio
async def test_streamable_http(http_calc: str) -> None:
    server = ServerDef("remote", Transport.STREAMABLE_HTTP, SPAN, url=http_calc, read_timeout=60.0)
    async with McpPool() as pool:
        assert "add" in {tool.name for tool in await pool.list_tools(server)}
        assert (await pool.call_tool(server, "add", {"a": 20, "b": 22})).value == {"result": 42.0}
        failed = await pool.call_tool(server, "fail_rpc", {"message": "nope"})
        assert failed == ToolResult(text="nope", value="nope", is_error=True)


@pytest.mark.anyio
async def test_http_server_dying_mid_call_is_a_crash(tmp_path: Path) -> None:
    with serve_calc("--http", "/mcp") as url:  # a server of its own: this test kills it
        await _crash_remote(ServerDef("remote", Transport.STREAMABLE_HTTP, SPAN, url=url, read_timeout=60.0), tmp_path)


async def _crash_remote(server: ServerDef, tmp_path: Path) -> None:
    started = tmp_path / "started"
    async with McpPool() as pool:
        assert (await pool.call_tool(server, "add", {"a": 1, "b": 1})).value == {"result": 2.0}
        remote_pid = int((await pool.call_tool(server, "pid", {})).value["result"])
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(_kill_when, started.exists, remote_pid)  # once the server is inside the call
            with pytest.raises(ServerCrashed, match="'remote' went away during 'slow'"):
                await pool.call_tool(server, "slow", {"seconds": 60, "started": str(started)})
        with pytest.raises(ServerStartError, match="ConnectError"):  # the restart finds nothing listening
            await pool.call_tool(server, "add", {"a": 1, "b": 1})


async def _kill_when(condition: Callable[[], object], pid: int) -> None:
    await until(condition)
    os.kill(pid, signal.SIGKILL)


@pytest.mark.anyio
async def test_sse_with_expanded_url_and_headers(sse_calc: str) -> None:
    port = sse_calc.split(":")[2].split("/")[0]
    server = ServerDef(
        "legacy",
        Transport.SSE,
        SPAN,
        url="http://127.0.0.1:${CALC_PORT}/sse",
        headers={"Authorization": "Bearer ${TOKEN:-anonymous}"},
    )
    async with McpPool(env={"CALC_PORT": port}) as pool:
        assert (await pool.call_tool(server, "echo", {"text": "over sse"})).text == "over sse"


@pytest.mark.anyio
async def test_reference_time_server_over_stdio() -> None:
    command = str(Path(sys.executable).parent / "mcp-server-time")
    server = ServerDef("time", Transport.STDIO, SPAN, command=command, startup_timeout=60.0)
    async with McpPool() as pool:
        assert {"get_current_time", "convert_time"} <= {t.name for t in await pool.list_tools(server)}
        result = await pool.call_tool(server, "get_current_time", {"timezone": "UTC"})
    assert not result.is_error
    assert result.value["timezone"] == "UTC"
    assert result.value["datetime"].endswith("+00:00")
    assert set(result.value) >= {"timezone", "datetime", "is_dst"}


# --- configuration --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_allowed_tools_filter_the_listing() -> None:
    server = calc(allowed_tools=("add", "echo", "not_offered_by_server"))
    async with McpPool() as pool:
        assert sorted(tool.name for tool in await pool.list_tools(server)) == ["add", "echo"]


@pytest.mark.anyio
async def test_env_is_expanded_and_only_named_variables_are_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCTL_TEST_SECRET", "must-not-leak")
    monkeypatch.setenv("FLOWCTL_TEST_TOKEN", "t0k3n")
    env = {"GREETING": "${FLOWCTL_TEST_TOKEN}", "MODE": "${FLOWCTL_TEST_MODE:-fast}", "LITERAL": "a=b"}
    server = calc(env=env)
    async with McpPool() as pool:

        async def read(name: str) -> str:
            return (await pool.call_tool(server, "env", {"name": name})).text

        assert await read("GREETING") == "t0k3n"
        assert await read("MODE") == "fast"
        assert await read("LITERAL") == "a=b"
        assert await read("FLOWCTL_TEST_SECRET") == "<unset>"
        assert await read("PATH") == os.environ["PATH"]  # the SDK's safe default set still comes along


@pytest.mark.anyio
async def test_unset_variable_fails_before_any_process_starts() -> None:
    server = calc(env={"API_KEY": "${FLOWCTL_TEST_MISSING}"})
    before = children()
    async with McpPool(env={}) as pool:
        with pytest.raises(ServerStartError) as caught:
            await pool.call_tool(server, "add", {"a": 1, "b": 2})
        assert children() == before
    assert "FLOWCTL_TEST_MISSING" in caught.value.message
    assert "'calc'" in caught.value.message
    assert not caught.value.retryable


# --- servers that fail to start -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_server_exiting_at_start_reports_exit_code_and_stderr() -> None:
    server = stdio("broken", SERVERS / "exits_at_start.py")
    async with McpPool() as pool:
        with pytest.raises(ServerStartError) as caught:
            await pool.list_tools(server)
    message = caught.value.message
    assert "'broken'" in message
    assert "exited with code 7" in message
    assert "fatal: config missing" in message
    assert "loading config" in message  # earlier stderr lines too, not only the last
    assert caught.value.span == SPAN


@pytest.mark.anyio
async def test_server_that_never_initializes_hits_the_startup_timeout() -> None:
    server = stdio("mute", SERVERS / "never_initializes.py", startup_timeout=1.0)
    async with McpPool() as pool:
        with pytest.raises(ServerStartError) as caught:
            await pool.call_tool(server, "add", {"a": 1, "b": 2})
    assert "'mute'" in caught.value.message
    assert "did not answer initialize within 1s" in caught.value.message


@pytest.mark.anyio
async def test_server_printing_garbage_on_stdout_fails_clearly() -> None:
    server = stdio("noisy", SERVERS / "garbage_stdout.py", startup_timeout=60.0)  # it exits: no timeout involved
    async with McpPool() as pool:
        with pytest.raises(ServerStartError) as caught:
            await pool.list_tools(server)
    message = caught.value.message
    assert "'noisy'" in message
    assert "non-JSON-RPC lines on stdout" in message
    assert "hello, this is not JSON-RPC" in message and "Starting server v1.2 ..." in message


@pytest.mark.anyio
async def test_missing_command_is_a_start_error() -> None:
    server = ServerDef("ghost", Transport.STDIO, SPAN, command="/nonexistent/flowctl-mcp-server")
    async with McpPool() as pool:
        with pytest.raises(ServerStartError, match="'ghost' failed to start: FileNotFoundError"):
            await pool.list_tools(server)


# --- faults mid-run -------------------------------------------------------------------------------------------


async def timed_out_call(pool: McpPool, clock: ManualClock, server: ServerDef, tmp_path: Path) -> ToolTimeout:
    """Call `slow` and let its read timeout pass on the clock once the server is inside the call."""
    started = tmp_path / f"started-{len(list(tmp_path.iterdir()))}"
    caught: list[ToolTimeout] = []

    async def call() -> None:
        with pytest.raises(ToolTimeout) as raised:
            await pool.call_tool(server, "slow", {"seconds": 1.5, "started": str(started)})
        caught.append(raised.value)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await until(started.exists)
        assert clock.pending == [server.read_timeout]
        clock.advance(server.read_timeout)
    return caught[0]


@pytest.mark.anyio
async def test_slow_call_times_out_and_retryability_follows_idempotent_tools(tmp_path: Path) -> None:
    plain = calc(read_timeout=0.5)
    idempotent = calc(read_timeout=0.5, idempotent_tools=("slow",))
    clock = ManualClock()  # the read timeout fires when the test says, whatever the machine's speed
    async with McpPool(clock=clock) as pool:
        caught = await timed_out_call(pool, clock, plain, tmp_path)
        assert "'slow'" in caught.message and "did not answer within 0.5s" in caught.message
        assert not caught.retryable
        # same file and name: the same session, whose policy fields come from the ServerDef passed in
        assert (await timed_out_call(pool, clock, idempotent, tmp_path)).retryable
        # the session is still good after a timeout
        assert (await pool.call_tool(plain, "echo", {"text": "still here"})).text == "still here"


@pytest.mark.anyio
async def test_crash_mid_call_restarts_once_then_gives_up() -> None:
    server = calc(idempotent_tools=("crash",))
    async with McpPool() as pool:
        first_pid = await server_pid(pool, server)
        with pytest.raises(ServerCrashed) as caught:
            await pool.call_tool(server, "crash", {})
        assert "'calc'" in caught.value.message
        assert "exit code 3" in caught.value.message
        assert caught.value.retryable  # crash is listed in idempotent_tools
        assert not alive(first_pid)

        second_pid = await server_pid(pool, server)  # restarted on the next call
        assert second_pid != first_pid
        assert (await pool.call_tool(server, "counter", {})).value == {"result": 1}

        with pytest.raises(ServerCrashed):
            await pool.call_tool(server, "crash", {})
        with pytest.raises(ServerStartError, match="not restarted again") as gave_up:
            await pool.call_tool(server, "add", {"a": 1, "b": 2})
        assert not gave_up.value.retryable
    assert not alive(second_pid)


@pytest.mark.anyio
async def test_server_that_died_while_idle_is_restarted_transparently() -> None:
    server = calc()
    async with McpPool() as pool:
        first_pid = await server_pid(pool, server)
        os.kill(first_pid, signal.SIGKILL)
        await until(lambda: not pool.is_up(server))  # the pool noticed (a call before that fails: no guessing)
        assert (await pool.call_tool(server, "counter", {})).value == {"result": 1}
        assert await server_pid(pool, server) != first_pid


@pytest.mark.anyio
async def test_crash_of_non_idempotent_tool_is_not_retryable() -> None:
    async with McpPool() as pool:
        with pytest.raises(ServerCrashed) as caught:
            await pool.call_tool(calc(), "crash", {})
    assert not caught.value.retryable


# --- sharing and cleanup --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_first_calls_share_one_process() -> None:
    server = calc()
    before = children()
    counts: list[int] = []
    async with McpPool() as pool:

        async def count() -> None:
            counts.append((await pool.call_tool(server, "counter", {})).value["result"])

        async with anyio.create_task_group() as task_group:
            for _ in range(10):
                task_group.start_soon(count)
        assert sorted(counts) == list(range(1, 11))  # one process saw all ten calls
        assert len(children() - before) == 1
        # another pipeline file naming a server "calc" is another server
        other = ServerDef("calc", Transport.STDIO, Span("other.yaml", 1, 1), command=sys.executable, args=(CALC,))
        assert (await pool.call_tool(other, "counter", {})).value == {"result": 1}
        assert len(children() - before) == 2
    assert children() == before


@pytest.mark.anyio
async def test_aclose_stops_every_server_and_is_idempotent() -> None:
    before = children()
    async with McpPool() as pool:
        pids = [await server_pid(pool, calc()), await server_pid(pool, stdio("twin", CALC))]
        assert all(alive(pid) for pid in pids)
        await pool.aclose()
        assert not any(alive(pid) for pid in pids)
        await pool.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await pool.call_tool(calc(), "add", {"a": 1, "b": 2})
    assert children() == before


async def until(condition: Callable[[], object], limit: float = 60.0) -> None:
    """Wait for a condition another process brings about; `limit` is a safety net, never reached when things work."""
    with anyio.fail_after(limit):
        while not condition():
            await anyio.sleep(0.01)


async def cancel_when(condition: Callable[[], object], scope: anyio.CancelScope) -> None:
    await until(condition)
    scope.cancel()


@pytest.mark.anyio
async def test_cancellation_mid_call_leaves_no_process(tmp_path: Path) -> None:
    before = children()
    started = tmp_path / "started"
    with anyio.CancelScope() as scope:
        async with McpPool() as pool, anyio.create_task_group() as tg:
            tg.start_soon(cancel_when, started.exists, scope)  # cancelled once the server is inside the call
            await pool.call_tool(calc(read_timeout=60.0), "slow", {"seconds": 60, "started": str(started)})
    assert scope.cancelled_caught
    assert not alive(int(started.read_text()))
    assert children() == before


@pytest.mark.anyio
async def test_cancellation_during_startup_leaves_no_process() -> None:
    before = children()
    with anyio.CancelScope() as scope:
        async with McpPool() as pool, anyio.create_task_group() as tg:
            tg.start_soon(cancel_when, lambda: children() - before, scope)  # cancelled once the process runs
            await pool.list_tools(stdio("mute", SERVERS / "never_initializes.py", startup_timeout=60.0))
    assert scope.cancelled_caught
    assert children() == before


@pytest.mark.anyio
async def test_pool_requires_its_context_manager() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await McpPool().list_tools(calc())


def test_commands_are_found_on_path_then_beside_flowctls_python(tmp_path: Path) -> None:
    from flowctl.interpreter.mcp.transports import CommandNotFound, resolve_command

    tool = tmp_path / "my-server"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert resolve_command("my-server", str(tmp_path), None) == str(tool)
    # not on the server's PATH, but installed in flowctl's own environment (where `pip install` puts servers)
    assert resolve_command("mcp-server-time", "/nonexistent", None) == str(
        Path(sys.executable).parent / "mcp-server-time"
    )
    assert resolve_command("./relative/path", "/nonexistent", None) == "./relative/path"
    with pytest.raises(CommandNotFound, match="'no-such-server' was not found on PATH"):
        resolve_command("no-such-server", "/nonexistent", None)


@pytest.mark.anyio
async def test_a_missing_command_is_a_clear_start_error_that_is_not_retried() -> None:
    server = ServerDef("ghost", Transport.STDIO, SPAN, command="no-such-mcp-server-xyz", startup_timeout=5.0)
    async with McpPool() as pool:
        with pytest.raises(ServerStartError) as caught:
            await pool.call_tool(server, "anything", {})
    assert "server 'ghost' cannot start: command 'no-such-mcp-server-xyz' was not found" in str(caught.value)
    assert caught.value.retryable is False
