"""The MCP client beyond tool calls, against a real server that asks things of flowctl and tells it things
(tests/support/mcp_servers/asking_server.py): sampling, elicitation (policy, signal), roots, progress as an idle
timeout, logging, tools/list_changed, idempotentHint, server instructions, and images/audio reaching the model.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading
import time
from typing import Any

import anyio
import pytest

from flowctl.dsl.frontend import load_pipeline
from flowctl.interpreter.clock import SYSTEM_CLOCK, Clock, ManualClock
from flowctl.interpreter.mcp.mcp_pool import McpPool
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus
from flowctl.interpreter.reporting import Reporter
from flowctl.interpreter.runner import RunOptions, run_graph
from flowctl.progress_sinks import JsonlReporter, MultiReporter
from tests.integration.helpers import PYTHON, Flow, Result, until
from tests.support.openai_server import Reply, call, reply

pytestmark = pytest.mark.anyio


class Seen(Reporter):
    """Records what the MCP hooks report."""

    def __init__(self) -> None:
        self.progress: list[tuple[str, str, float, float | None, str]] = []
        self.logs: list[tuple[str, str, Any]] = []
        self.asked: list[tuple[str, str, dict[str, Any]]] = []
        self.on_elicitation: Any = None

    def tool_progress(
        self, run_id: str, path: str, server: str, tool: str, progress: float, total: float | None, message: str
    ) -> None:
        self.progress.append((path, tool, progress, total, message))

    def server_log(self, run_id: str, path: str, server: str, level: str, logger: str, data: Any) -> None:
        self.logs.append((level, logger, data))

    def elicitation(
        self, run_id: str, path: str, server: str, message: str, schema: dict[str, Any], on_terminal: bool
    ) -> None:
        self.asked.append((run_id, message, schema))
        if self.on_elicitation is not None:
            self.on_elicitation(run_id)


def values(**extra: Any) -> dict[str, Any]:
    defaults = {"read_timeout": 60, "elicitation": "ask", "sampling": "", "prompt": "Go.", "concurrency": 16}
    return defaults | extra


async def run_agent(flow: Flow, *replies: Any, reporter: Reporter | None = None, **extra: Any) -> Result:
    flow.llm.enqueue(*replies)
    return await flow.run("asking.yaml", reporter=reporter, **values(**extra))


async def run_tool(
    flow: Flow,
    tool: str,
    args: str,
    reporter: Reporter | None = None,
    clock: Clock = SYSTEM_CLOCK,
    **extra: Any,
) -> Result:
    return await flow.run("asking_tool.yaml", reporter=reporter, clock=clock, **values(tool=tool, args=args, **extra))


def echo_last_tool(body: dict[str, Any]) -> Reply:
    return reply([m for m in body["messages"] if m["role"] == "tool"][-1]["content"])


# --- sampling -------------------------------------------------------------------------------------------------------


async def test_sampling_is_answered_by_the_calling_agents_model_journaled_and_counted(flow: Flow) -> None:
    result = await run_agent(
        flow,
        reply(tool_calls=[call("summarize", {"text": "a long story"})]),
        reply("short", usage=(7, 3)),
        echo_last_tool,
    )
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert result.outcome.outputs == {"answer": "summary (gpt-main): short"}
    sampled = flow.llm.bodies[1]
    assert sampled["model"] == "gpt-main"  # the hint names no model of the pipeline: the agent's model answers
    assert sampled["max_tokens"] == 50
    assert sampled["messages"] == [
        {"role": "system", "content": "You summarize."},
        {"role": "user", "content": "Summarize: a long story"},
    ]
    assert "ask/turn#1/tool:asking.summarize#0/llm#0" in result.call_keys()
    assert (result.outcome.input_tokens, result.outcome.output_tokens) == (10 + 7 + 10, 5 + 3 + 5)
    assert result.outcome.cost == pytest.approx((27 * 1.0 + 13 * 2.0) / 1e6)


async def test_sampling_uses_the_model_the_server_block_names(flow: Flow) -> None:
    result = await run_agent(
        flow,
        reply(tool_calls=[call("summarize", {"text": "x"})]),
        reply("tiny"),
        echo_last_tool,
        sampling="    sampling: {model: sampler, max_concurrency: 1}",
        concurrency=1,  # the tool call's slot covers its sampling: one slot is enough
    )
    assert result.outcome.outputs == {"answer": "summary (gpt-sampler): tiny"}
    assert flow.llm.bodies[1]["model"] == "gpt-sampler"


def test_a_resumed_run_replays_the_sampling_answer_instead_of_paying_again(flow: Flow) -> None:
    """flowctl is SIGKILLed inside a tool call, after the server's sampling request was answered: the resumed run
    calls the tool again, and its sampling request is answered from the journal (the model is not asked again)."""
    flow.llm.enqueue(reply("short"))
    flag = flow.tmp_path / "flag"
    path = flow.pipeline("asking_tool.yaml", **values(tool="summarize_once", args=f"{{text: x, flag: '{flag}'}}"))
    db = flow.tmp_path / "runs.db"
    process = subprocess.Popen(
        [PYTHON, "-m", "flowctl", "run", str(path), "--store", str(db), "--quiet"],
        env=os.environ | flow.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():  # the server got its sampling answer (journaled before it was sent back)
            assert process.poll() is None and time.monotonic() < deadline, "the tool never sampled"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
    assert flow.llm.request_count == 1
    graph, _, _ = load_pipeline(path)
    assert graph is not None
    store = SqliteRunStore(db)
    flow.stores.append(store)
    run_id = store.list_runs()[0].run_id
    resumed = anyio.run(lambda: run_graph(graph, {}, store, RunOptions(env=flow.env()), run_id=run_id, resuming=True))
    assert resumed.status is RunStatus.SUCCEEDED, resumed.error
    assert resumed.outputs == {"result": "summary: short"}
    assert flow.llm.request_count == 1


# --- elicitation ----------------------------------------------------------------------------------------------------


async def test_elicitation_policies_decline_and_auto(flow: Flow) -> None:
    declined = await run_tool(flow, "book", "{what: a table}", elicitation="decline")
    assert declined.outcome.outputs == {"result": "not booked: decline"}
    auto = await run_tool(flow, "book", "{what: a table}", elicitation="auto")  # `name` has no default: declined
    assert auto.outcome.outputs == {"result": "not booked: decline"}


async def test_unattended_elicitation_waits_for_a_signal_and_is_not_asked_again_on_resume(flow: Flow) -> None:
    seen = Seen()

    def answer(run_id: str) -> None:  # from another connection, as `flowctl signal` would
        def send() -> None:
            store = SqliteRunStore(flow.tmp_path / "runs.db")
            try:
                if len(seen.asked) == 1:
                    store.send_signal(run_id, "elicitation", {"name": 7})  # not a string: refused, asked again
                else:
                    store.send_signal(run_id, "elicitation", {"name": "Ana", "count": 2})
            finally:
                store.close()

        threading.Thread(target=send).start()

    seen.on_elicitation = answer
    result = await run_tool(flow, "book", "{what: a table}", reporter=seen)
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert result.outcome.outputs == {"result": "booked a table for Ana x2"}
    assert seen.asked[0][1] == "Who books a table?"
    assert set(seen.asked[0][2]["properties"]) == {"name", "count"}
    assert "refused" in seen.asked[1][1]
    assert "call/tool:asking.book#0/wait#0" in result.call_keys()
    shown = subprocess.run(
        [PYTHON, "-m", "flowctl", "logs", result.outcome.run_id, "--store", str(result.store.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "wait for 'elicitation'" in shown.stdout and "released by 'elicitation' from signal" in shown.stdout


# --- roots, progress, logging ---------------------------------------------------------------------------------------


async def test_roots_are_sent_as_file_uris(flow: Flow) -> None:
    result = await run_tool(flow, "roots", "{}")
    data = (flow.tmp_path / "data").resolve().as_uri()
    assert result.outcome.outputs == {"result": f"data={data}"}


# On virtual time the clock holds only the call's idle timeout: no elicitation, so no signal poller.
QUIET: dict[str, Any] = {"read_timeout": 2, "elicitation": "decline"}


async def test_progress_restarts_the_idle_timeout_and_is_reported(flow: Flow) -> None:
    """On virtual time, paced by the test: before each step 1.5 s of a 2 s idle timeout pass, then the server reports
    progress; 18 s of work in all. Each progress must restart the timeout in full, or the second step times out."""
    seen = Seen()
    clock = ManualClock()
    gate = flow.tmp_path / "gate"
    gate.mkdir()
    results: list[Result] = []

    async def run() -> None:
        results.append(await run_tool(flow, "work", f"{{steps: 12, gate: '{gate}'}}", seen, clock=clock, **QUIET))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        for step in range(1, 13):
            await until((gate / f"ready-{step}").exists)  # the server is inside the call, before step
            await until(lambda done=step - 1: len(seen.progress) == done)  # flowctl has the previous progress
            await clock.parked(1)
            assert clock.pending == [2.0]  # the idle timeout, restarted in full by that progress (or the call)
            clock.advance(1.5)
            assert not results  # 1.5 s of silence is not a timeout
            (gate / f"go-{step}").touch()
    result = results[0]
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert result.outcome.outputs == {"result": "worked 12 steps"}
    assert [p[2] for p in seen.progress] == list(range(1, 13))
    assert seen.progress[-1] == ("call", "work", 12, 12, "step 12")
    assert clock.monotonic() == 18.0


async def test_a_call_silent_for_longer_than_the_idle_timeout_times_out(flow: Flow) -> None:
    clock = ManualClock()
    started = flow.tmp_path / "started"
    results: list[Result] = []

    async def run() -> None:
        args = f"{{started: '{started}'}}"
        results.append(await run_tool(flow, "stall", args, clock=clock, **QUIET | {"read_timeout": 0.5}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await until(started.exists)  # the server is inside the call, and will never answer
        await clock.parked(1)
        assert clock.pending == [0.5]
        clock.advance(0.4)
        await clock.parked(1)
        assert clock.pending == [pytest.approx(0.1)] and not results  # not yet
        clock.advance(0.1)
    result = results[0]
    assert result.outcome.status is RunStatus.FAILED
    assert result.cause == "tool-timeout"
    assert "server 'asking' tool 'stall' did not answer within 0.5s nor report progress" in result.error


async def test_log_messages_at_or_above_the_level_reach_the_reporter_and_the_event_log(flow: Flow) -> None:
    seen = Seen()
    events = flow.tmp_path / "events.jsonl"
    jsonl = JsonlReporter(str(events))
    result = await run_tool(flow, "chatty", "{}", reporter=MultiReporter([seen, jsonl]))
    jsonl.close()
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    logged = [(e["level"], e["data"]) for e in lines if e.get("type", e.get("event")) == "server_log"]
    assert logged == [("warning", "a warning message"), ("error", "a error message")], lines
    shown = subprocess.run(
        [PYTHON, "-m", "flowctl", "logs", result.outcome.run_id, "--store", str(result.store.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "log warning from server asking/chatty" in shown.stdout
    assert "a error message" in shown.stdout and "a info message" not in shown.stdout
    assert seen.logs == [("warning", "chatty", "a warning message"), ("error", "chatty", "a error message")]


# --- tools, instructions, media -------------------------------------------------------------------------------------


async def test_list_changed_offers_the_new_tool_on_the_next_turn_and_instructions_join_the_system_message(
    flow: Flow,
) -> None:
    result = await run_agent(flow, reply(tool_calls=[call("grow")]), reply(tool_calls=[call("grown")]), echo_last_tool)
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert result.outcome.outputs == {"answer": "grown here"}
    first, second = flow.llm.bodies[0], flow.llm.bodies[1]
    assert "grown" not in [t["function"]["name"] for t in first["tools"]]
    assert "grown" in [t["function"]["name"] for t in second["tools"]]
    system = first["messages"][0]["content"]
    assert system.startswith("You help.") and "Always call `summarize` before answering." in system


async def test_audio_reaches_the_model_as_an_input_audio_part(flow: Flow) -> None:
    result = await run_agent(flow, reply(tool_calls=[call("voice", id="c1")]), reply("heard"))
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    messages = flow.llm.bodies[1]["messages"]
    tool, media = messages[-2], messages[-1]
    assert tool["role"] == "tool" and tool["content"].startswith("a recording\n[audio audio/wav,")
    assert media["role"] == "user"
    assert media["content"][0] == {"type": "text", "text": "Media returned by the tool call c1 (voice):"}
    assert media["content"][1]["type"] == "input_audio"
    assert media["content"][1]["input_audio"]["format"] == "wav"


async def test_idempotent_hint_counts_as_idempotent(flow: Flow) -> None:
    path = flow.pipeline("asking_tool.yaml", **values(tool="lookup", args="{key: k}"))
    graph, _, _ = load_pipeline(path)
    assert graph is not None
    server = graph.servers["asking"]
    async with McpPool() as pool:
        tools = {t.name: t for t in await pool.list_tools(server)}
    assert tools["lookup"].idempotent and not tools["pid"].idempotent


def test_on_a_terminal_an_elicitation_is_a_form(flow: Flow) -> None:
    """`flowctl run` in a pseudo-terminal: the server's elicitation becomes questions there, answered there."""
    import pty

    path = flow.pipeline("asking_tool.yaml", **values(tool="book", args="{what: a table}"))
    db = flow.tmp_path / "runs.db"
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [PYTHON, "-m", "flowctl", "run", str(path), "--store", str(db), "--output", "json"],
        env=os.environ | flow.env() | {"TERM": "xterm"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    seen = b""

    def until(text: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 60
        while text not in seen:
            assert time.monotonic() < deadline, f"no {text!r} on the terminal; saw {seen[-2000:]!r}"
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                seen += os.read(master, 4096)
            except OSError:  # the terminal closed: the process ended
                raise AssertionError(f"no {text!r} on the terminal; saw {seen[-2000:]!r}") from None

    try:
        until(b"asks: Who books a table?")
        until(b"Name (string): ")  # the schema's titles (pydantic's)
        os.write(master, b"Ana\n")
        until(b"Count (integer) [1]: ")
        os.write(master, b"3\n")
        until(b"booked a table for Ana x3")
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
        os.close(master)
