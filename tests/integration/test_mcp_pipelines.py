"""MCP servers in pipelines: one process per server per run shared by every agent and tool step, stdio and
streamable HTTP side by side, the third-party `mcp-server-time`, and server faults as the run reports them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowctl.interpreter.persistence.store import RunStatus
from tests.integration.helpers import CALC, Flow
from tests.support.net import free_port, wait_listening
from tests.support.openai_server import Reply, call, reply

pytestmark = pytest.mark.anyio

TIME_SERVER = Path(sys.executable).parent / "mcp-server-time"


def last_tool_result(body: dict[str, Any]) -> Reply:
    """A scripted final answer that repeats the last tool message: proves the tool result reached the model."""
    tool = [m for m in body["messages"] if m["role"] == "tool"][-1]
    return reply(tool["content"])


async def test_two_agents_and_a_tool_step_share_one_server_process(flow: Flow) -> None:
    def pid_then_report(body: dict[str, Any]) -> Reply:
        """The two agents run concurrently: answer each request by where its conversation is."""
        if any(m["role"] == "tool" for m in body["messages"]):
            return last_tool_result(body)
        return reply(tool_calls=[call("pid")])

    flow.llm.enqueue(*[pid_then_report] * 4)
    result = await flow.run("shared_server.yaml")
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    outputs = result.outcome.outputs
    assert outputs is not None
    assert outputs["one"] == outputs["two"] == str(outputs["direct"])
    assert outputs["counted"] == 1  # calc's per-process counter: the first call in that process
    starts = (flow.tmp_path / "starts.txt").read_text().split()
    assert starts == [str(outputs["direct"])]  # exactly one process started, the one that answered
    second = next(b for b in flow.llm.bodies if b["messages"][0]["content"].endswith("too."))
    assert [t["function"]["name"] for t in second["tools"]] == ["pid"]


REMOTE = {"streamable_http": ("--http", "/mcp"), "sse": ("--sse", "/sse")}


@pytest.fixture(params=list(REMOTE))
def remote_calc(request: pytest.FixtureRequest, marker: str) -> Iterator[tuple[str, str]]:
    """calc over streamable HTTP or SSE in its own process (tagged with the test's marker): (transport, url)."""
    flag, path = REMOTE[request.param]
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(CALC), flag, "--port", str(port), "--tag", marker],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, process)
        yield request.param, f"http://127.0.0.1:{port}{path}"
    finally:
        process.kill()
        process.wait(timeout=60)


async def test_remote_and_stdio_servers_in_one_pipeline(flow: Flow, remote_calc: tuple[str, str]) -> None:
    transport, url = remote_calc
    flow.llm.enqueue(
        reply(
            tool_calls=[
                call("add", {"a": 2, "b": 2}),
                call("local__echo", {"text": "from stdio"}),
                call("remote__echo", {"text": "from http"}),
            ]
        ),
        reply("4, from stdio"),
    )
    result = await flow.run("http_and_stdio.yaml", env=flow.env(CALC_URL=url), transport=transport)
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert result.outcome.outputs == {"answer": "4, from stdio", "direct": 42.0}
    names = {t["function"]["name"] for t in flow.llm.bodies[0]["tools"]}
    assert {"add", "local__echo", "remote__echo"} <= names  # local offers only echo: `add` is unambiguous
    assert "echo" not in names and "local__add" not in names
    contents = [m["content"] for m in flow.llm.bodies[1]["messages"] if m["role"] == "tool"]
    assert contents == ["4.0", "from stdio", "from http"]
    keys = result.call_keys()
    assert {"both/turn#1/tool:remote.add#0", "both/turn#2/tool:local.echo#0", "both/turn#3/tool:remote.echo#0"} <= set(
        keys
    )


async def test_unreachable_http_server_fails_the_run_naming_where(flow: Flow) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    result = await flow.run("http_and_stdio.yaml", env=flow.env(CALC_URL=url), transport="streamable_http")
    assert result.outcome.status is RunStatus.FAILED
    assert result.cause == "server-start-error"
    assert "server 'remote' failed to start: ConnectError" in result.error
    assert f"(at {url})" in result.error
    assert flow.llm.request_count == 0


async def test_third_party_time_server_over_stdio(flow: Flow) -> None:
    assert TIME_SERVER.exists(), "mcp-server-time is a dev dependency (pip install -e '.[dev]')"
    flow.llm.enqueue(
        reply(tool_calls=[call("get_current_time", {"timezone": "Asia/Tokyo"})]),
        last_tool_result,
    )
    result = await flow.run("time_server.yaml", time_server=TIME_SERVER)
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    names = {t["function"]["name"] for t in flow.llm.bodies[0]["tools"]}
    assert {"get_current_time", "convert_time"} <= names
    tool_message = next(m for m in flow.llm.bodies[1]["messages"] if m["role"] == "tool")
    answer = json.loads(tool_message["content"])
    assert answer["timezone"] == "Asia/Tokyo"
    assert answer["datetime"].endswith("+09:00")
    outputs = result.outcome.outputs
    assert outputs is not None and json.loads(outputs["answer"]) == answer


async def test_server_exiting_at_start_fails_the_run_with_exit_code_and_stderr(flow: Flow) -> None:
    result = await flow.run("broken_server.yaml")
    assert result.outcome.status is RunStatus.FAILED
    assert result.cause == "server-start-error"
    # the step may retry (3 attempts): the server is started once more, then flowctl gives up on it
    assert result.step("use").attempts == 3
    assert "server 'broken' is not restarted again: it failed 2 times in this run" in result.error
    assert "exited with code 7" in result.error
    assert "fatal: config missing" in result.error  # the stderr tail
    assert flow.llm.request_count == 0


async def test_server_crash_mid_call_is_not_retried_unless_idempotent(flow: Flow) -> None:
    guard = flow.tmp_path / "crashed-once"
    flow.llm.enqueue(reply(tool_calls=[call("crash_once", {"path": str(guard)})]), reply("never asked"))
    result = await flow.run("crash.yaml", idempotent="")
    assert result.outcome.status is RunStatus.FAILED
    assert result.cause == "server-crashed"
    assert "exit code 3" in result.error and "'crash_once'" in result.error
    assert "after 1 attempt(s)" in result.error
    assert guard.exists()
    assert flow.llm.request_count == 1
    assert [k for k in result.call_keys() if "tool:" in k] == []


async def test_server_crash_mid_call_of_an_idempotent_tool_is_retried(flow: Flow) -> None:
    guard = flow.tmp_path / "crashed-once"
    flow.llm.enqueue(reply(tool_calls=[call("crash_once", {"path": str(guard)})]), reply("it survived"))
    result = await flow.run("crash.yaml", idempotent="crash_once")
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert result.outcome.outputs == {"answer": "it survived"}
    assert result.step("use").attempts == 2
    # the second attempt replayed the model's journaled tool call instead of asking again
    assert flow.llm.request_count == 2
    assert [m["content"] for m in flow.llm.bodies[1]["messages"] if m["role"] == "tool"] == ["survived"]
    assert len((flow.tmp_path / "starts.txt").read_text().split()) == 2  # the crashed server was restarted once
