"""Acceptance: every MCP client feature of issue 15 §1 against the reference server
`@modelcontextprotocol/server-everything`, over stdio and streamable HTTP, with the real interpreter and a local
OpenAI-compatible model server (tests/support/openai_server.py).

Covered: image content reaching the model and kept in step outputs, resource links and embedded blobs kept whole,
sampling answered by the agent's model (journaled, counted), elicitation by policy and by signal, roots, progress
(the idle timeout and the reporter), logging at a chosen level, tools registered after `initialize` offered through
tools/list_changed, the tool annotations, and the server's instructions in the agent's system message. And the
resources and prompts of issue 15: an agent given a listed resource and a URI template's expansion as context, a
server prompt as an agent's instruction and as a step's prompt, the `resource:` step (text and binary), and
`resolve_tools` (and `flowctl validate --resolve-tools`) accepting those references and flagging an unknown prompt,
argument or resource at its YAML line.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowctl.dsl.diagnostics import Severity, finalize
from flowctl.dsl.frontend import load_pipeline
from flowctl.interpreter.clock import SYSTEM_CLOCK, Clock, ManualClock
from flowctl.interpreter.mcp.mcp_pool import McpPool
from flowctl.interpreter.mcp.resolve import resolve_tools
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus
from flowctl.interpreter.reporting import Reporter
from flowctl.interpreter.runner import RunOptions, RunOutcome, run_graph
from tests.integration.helpers import until
from tests.mcp_acceptance.conftest import REPO, Endpoint
from tests.support.openai_server import OpenAIServer, Reply, call, reply

pytestmark = pytest.mark.anyio
KEY = "sk-acceptance-0123456789abcdef"


class Seen(Reporter):
    def __init__(self) -> None:
        self.progress: list[tuple[float, float | None]] = []
        self.logs: list[tuple[str, Any]] = []
        self.asked: list[str] = []
        self.answer: dict[str, Any] | None = None
        self.store_path: Path | None = None

    def tool_progress(
        self, run_id: str, path: str, server: str, tool: str, progress: float, total: float | None, message: str
    ) -> None:
        self.progress.append((progress, total))

    def server_log(self, run_id: str, path: str, server: str, level: str, logger: str, data: Any) -> None:
        self.logs.append((level, data))

    def elicitation(
        self, run_id: str, path: str, server: str, message: str, schema: dict[str, Any], on_terminal: bool
    ) -> None:
        self.asked.append(message)
        answer, store_path = self.answer, self.store_path
        assert answer is not None and store_path is not None

        def send() -> None:  # from another connection, as `flowctl signal` does
            store = SqliteRunStore(store_path)
            try:
                store.send_signal(run_id, "elicitation", answer)
            finally:
                store.close()

        threading.Thread(target=send).start()


def pipeline(endpoint: Endpoint, steps: str, server_extra: str = "") -> str:
    return f"""flowctl: 1
name: everything
models:
  default: {{model: gpt-acc, price: {{input_per_mtok: 1.0, output_per_mtok: 1.0}}}}
servers:
  everything:
    {endpoint.block}
    read_timeout_seconds: 60
{server_extra}
agents:
  helper: {{instruction: You help., servers: [everything]}}
steps:
{steps}
"""


async def run(
    tmp_path: Path, llm: OpenAIServer, text: str, reporter: Reporter | None = None, clock: Clock = SYSTEM_CLOCK
) -> tuple[RunOutcome, SqliteRunStore]:
    path = tmp_path / "everything.yaml"
    path.write_text(text, encoding="utf-8")
    graph, diagnostics, _ = load_pipeline(path)
    assert graph is not None, [str(d) for d in diagnostics if d.severity is Severity.ERROR]
    store = SqliteRunStore(tmp_path / "runs.db")
    env = {"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": KEY}
    outcome = await run_graph(graph, {}, store, RunOptions(env=env, reporter=reporter or Reporter(), clock=clock))
    return outcome, store


def tool_step(tool: str, args: str = "{}") -> str:
    return (
        f'  - id: call\n    tool: everything.{tool}\n    args: {args}\noutputs:\n  out: "{{{{ steps.call.output }}}}"'
    )


def agent_step() -> str:
    return '  - id: ask\n    agent: helper\n    prompt: Go.\noutputs:\n  out: "{{ steps.ask.output }}"'


def echo_last_tool(body: dict[str, Any]) -> Reply:
    return reply([m for m in body["messages"] if m["role"] == "tool"][-1]["content"])


# --- content kept whole ---------------------------------------------------------------------------------------------


async def test_an_image_reaches_the_model_as_an_image_url_part(
    tmp_path: Path, llm: OpenAIServer, endpoint: Endpoint
) -> None:
    llm.enqueue(reply(tool_calls=[call("get-tiny-image", id="img1")]), reply("a logo"))
    outcome, store = await run(tmp_path, llm, pipeline(endpoint, agent_step()))
    store.close()
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    messages = llm.bodies[1]["messages"]
    tool, media = messages[-2], messages[-1]
    assert "[image image/png," in tool["content"]
    assert media["role"] == "user"
    image = media["content"][1]
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith("data:image/png;base64,iVBOR")


async def test_a_tool_step_keeps_images_resource_links_and_blobs_whole(
    tmp_path: Path, llm: OpenAIServer, endpoint: Endpoint
) -> None:
    image, _ = await run(tmp_path, llm, pipeline(endpoint, tool_step("get-tiny-image")))
    assert image.outputs is not None, image.error
    blocks = image.outputs["out"]["content"]
    assert any(b["type"] == "image" and b["mimeType"] == "image/png" and len(b["data"]) > 100 for b in blocks)

    links, _ = await run(tmp_path, llm, pipeline(endpoint, tool_step("get-resource-links", "{count: 2}")))
    assert links.outputs is not None, links.error
    found = [b for b in links.outputs["out"]["content"] if b["type"] == "resource_link"]
    assert len(found) == 2
    assert all(b["uri"].startswith("demo://resource/") and b["name"] and b["mimeType"] for b in found)
    assert f"[resource_link {found[0]['name']} {found[0]['uri']}" in links.outputs["out"]["text"]

    blob, store = await run(
        tmp_path, llm, pipeline(endpoint, tool_step("get-resource-reference", "{resourceType: Blob, resourceId: 1}"))
    )
    store.close()
    assert blob.outputs is not None, blob.error
    embedded = [b for b in blob.outputs["out"]["content"] if b["type"] == "resource"]
    assert embedded and embedded[0]["resource"]["blob"] and embedded[0]["resource"]["uri"].startswith("demo://")


# --- sampling -------------------------------------------------------------------------------------------------------


async def test_sampling_is_answered_by_the_agents_model_and_journaled(
    tmp_path: Path, llm: OpenAIServer, endpoint: Endpoint
) -> None:
    llm.enqueue(
        reply(tool_calls=[call("trigger-sampling-request", {"prompt": "a haiku", "maxTokens": 20})]),
        reply("five seven five", usage=(4, 6)),
        echo_last_tool,
    )
    outcome, store = await run(tmp_path, llm, pipeline(endpoint, agent_step()))
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    sampled = llm.bodies[1]
    assert sampled["model"] == "gpt-acc"
    assert sampled["max_tokens"] == 20 and sampled["temperature"] == 0.7
    assert sampled["messages"][0] == {"role": "system", "content": "You are a helpful test server."}
    assert sampled["messages"][1]["content"].endswith("a haiku")
    assert "five seven five" in str(outcome.outputs)
    assert (outcome.input_tokens, outcome.output_tokens) == (10 + 4 + 10, 5 + 6 + 5)
    with sqlite3.connect(store.path) as conn:
        keys = [row[0] for row in conn.execute("SELECT key FROM calls WHERE run_id = ?", (outcome.run_id,))]
    store.close()
    assert "ask/turn#1/tool:everything.trigger-sampling-request#0/llm#0" in keys


# --- elicitation ----------------------------------------------------------------------------------------------------


async def test_elicitation_by_policy_and_by_signal(tmp_path: Path, llm: OpenAIServer, endpoint: Endpoint) -> None:
    declined, _ = await run(
        tmp_path, llm, pipeline(endpoint, tool_step("trigger-elicitation-request"), "    elicitation: {mode: decline}")
    )
    assert "User declined" in str(declined.outputs), declined.error

    seen = Seen()
    seen.store_path = tmp_path / "runs.db"
    seen.answer = {"name": "Ana Lima", "check": True}
    signalled, store = await run(tmp_path, llm, pipeline(endpoint, tool_step("trigger-elicitation-request")), seen)
    store.close()
    assert signalled.status is RunStatus.SUCCEEDED, signalled.error
    assert seen.asked == ["Please provide inputs for the following fields:"]
    assert "User provided the requested information" in str(signalled.outputs)
    assert "Ana Lima" in str(signalled.outputs)


# --- roots, progress, logging, list_changed, annotations ------------------------------------------------------------


async def test_roots_are_sent(tmp_path: Path, llm: OpenAIServer, endpoint: Endpoint) -> None:
    roots = "    roots: [{uri: ./data, name: data}, {uri: 'file:///srv/shared', name: shared}]"
    outcome, store = await run(tmp_path, llm, pipeline(endpoint, tool_step("get-roots-list"), roots))
    store.close()
    text = str(outcome.outputs)
    assert "data" in text and (tmp_path / "data").resolve().as_uri() in text, outcome.error
    assert "file:///srv/shared" in text


async def test_progress_keeps_a_long_call_alive_and_is_reported(
    tmp_path: Path, llm: OpenAIServer, endpoint: Endpoint
) -> None:
    """On virtual time, whatever the server's real pace: each time progress has come since time last moved, the 2 s
    idle timeout must be pending in full (restarted), and 1.5 s of it pass. Without the restart the second move
    would time the call out."""
    seen = Seen()
    clock = ManualClock()
    # no elicitation, so no signal poller: the idle timeout is the clock's only timer
    tool = tool_step("trigger-long-running-operation", "{duration: 3, steps: 12}")
    text = pipeline(endpoint, tool, "    elicitation: {mode: decline}")
    text = text.replace("read_timeout_seconds: 60", "read_timeout_seconds: 2")
    results: list[RunOutcome] = []

    async def drive() -> None:
        handled = 0
        while True:
            await until(lambda done=handled: len(seen.progress) > done)
            await clock.parked(1)
            assert clock.pending == [2.0]
            handled = len(seen.progress)
            clock.advance(1.5)

    async with anyio.create_task_group() as tg:

        async def run_it() -> None:
            outcome, store = await run(tmp_path, llm, text, seen, clock)
            store.close()
            results.append(outcome)
            tg.cancel_scope.cancel()  # stops drive(), which may be waiting for a timer the finished call never sets

        tg.start_soon(drive)
        tg.start_soon(run_it)
    (outcome,) = results
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    assert "Long running operation completed" in str(outcome.outputs)
    assert [p for p, _ in seen.progress] == list(range(1, 13)) and seen.progress[-1][1] == 12


async def test_log_messages_reach_the_reporter_at_the_chosen_level(
    tmp_path: Path, llm: OpenAIServer, endpoint: Endpoint
) -> None:
    seen = Seen()
    # the first simulated message comes at once, at a random level; `debug` lets every level through
    outcome, store = await run(
        tmp_path, llm, pipeline(endpoint, tool_step("toggle-simulated-logging"), "    log_level: debug"), seen
    )
    store.close()
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    assert any("-level message" in str(data) or "level-message" in str(data) for _, data in seen.logs), seen.logs


async def test_conditional_tools_and_annotations(endpoint: Endpoint, tmp_path: Path, llm: OpenAIServer) -> None:
    """Tools server-everything registers once it knows the client's capabilities (sampling, elicitation, roots) are
    offered, announced by tools/list_changed; `idempotentHint` is read."""
    path = tmp_path / "everything.yaml"
    path.write_text(pipeline(endpoint, tool_step("echo", "{message: hi}"), "    roots: [{uri: ./data}]"))
    graph, _, _ = load_pipeline(path)
    assert graph is not None
    async with McpPool() as pool:
        server = graph.servers["everything"]
        tools = {t.name: t for t in await pool.list_tools(server)}
        # over stdio it announces each of them with notifications/tools/list_changed, which the pool counts (an agent
        # lists the tools again before its next turn when the count moved); over HTTP it sends them before the
        # client's GET stream is open, so they are lost (the listing has them anyway)
        if endpoint.transport == "stdio":
            assert pool.tools_generation(server) >= 1
    for name in ("trigger-sampling-request", "trigger-elicitation-request", "get-roots-list"):
        assert name in tools
    assert tools["echo"].idempotent  # annotated idempotentHint: true
    assert not tools["trigger-sampling-request"].idempotent  # annotated idempotentHint: false


async def test_server_instructions_join_the_agents_system_message(
    tmp_path: Path, llm: OpenAIServer, endpoint: Endpoint
) -> None:
    llm.enqueue(reply("ok"), reply("ok"))
    with_them, store = await run(tmp_path, llm, pipeline(endpoint, agent_step(), "    include_instructions: true"))
    store.close()
    assert with_them.status is RunStatus.SUCCEEDED, with_them.error
    system = llm.bodies[0]["messages"][0]["content"]
    assert system.startswith("You help.\n\nInstructions of the MCP server 'everything':\n")
    assert "Everything Server" in system
    without, store = await run(tmp_path, llm, pipeline(endpoint, agent_step()))
    store.close()
    assert without.status is RunStatus.SUCCEEDED, without.error
    assert llm.bodies[1]["messages"][0]["content"] == "You help."


# --- resources and prompts ------------------------------------------------------------------------------------------

DOC = "demo://resource/static/document/instructions.md"  # one of the files of its docs/, listed as a resource
TEXT = "demo://resource/dynamic/text/{resourceId}"  # a URI template (not listed: read through the template only)


def context_pipeline(endpoint: Endpoint, agents: str, steps: str) -> str:
    return f"""flowctl: 1
name: everything
models:
  default: {{model: gpt-acc, price: {{input_per_mtok: 1.0, output_per_mtok: 1.0}}}}
servers:
  everything:
    {endpoint.block}
    read_timeout_seconds: 60
agents:
{agents}
steps:
{steps}
"""


READER = f"""  reader:
    instruction: You read.
    resources:
      - {{server: everything, uri: "{DOC}"}}
      - {{server: everything, uri: "{TEXT}", arguments: {{resourceId: 7}}}}"""


async def test_an_agent_is_given_resources_before_its_prompt(
    tmp_path: Path, llm: OpenAIServer, endpoint: Endpoint
) -> None:
    llm.enqueue(reply("read"))
    steps = '  - id: ask\n    agent: reader\n    prompt: Go.\noutputs:\n  out: "{{ steps.ask.output }}"'
    outcome, store = await run(tmp_path, llm, context_pipeline(endpoint, READER, steps))
    store.close()
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    messages = llm.bodies[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "user", "user"]
    assert messages[0]["content"] == "You read."
    assert messages[1]["content"].startswith(f"Resource {DOC} (text/markdown):\n")
    assert "Everything Server" in messages[1]["content"]  # the text of docs/instructions.md
    assert messages[2]["content"].startswith(
        "Resource demo://resource/dynamic/text/7 (text/plain):\nResource 7: This is a plaintext resource created at"
    )
    assert messages[3] == {"role": "user", "content": "Go."}


async def test_a_server_prompt_as_instruction_and_as_a_steps_prompt(
    tmp_path: Path, llm: OpenAIServer, endpoint: Endpoint
) -> None:
    llm.enqueue(reply("sunny"), reply("noted"))
    agents = (
        "  forecaster:\n"
        "    instruction: {server: everything, prompt: args-prompt, arguments: {city: Lisbon, state: Lisboa}}\n"
        "  plain: {instruction: You help.}"
    )
    steps = (
        "  - id: ask\n    agent: forecaster\n    prompt: Go.\n"
        "  - id: simple\n    agent: plain\n    prompt: {server: everything, prompt: simple-prompt}\n"
        'outputs:\n  out: "{{ steps.ask.output }} {{ steps.simple.output }}"'
    )
    outcome, store = await run(tmp_path, llm, context_pipeline(endpoint, agents, steps))
    store.close()
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    assert llm.bodies[0]["messages"] == [
        {"role": "system", "content": "What's weather in Lisbon, Lisboa?"},
        {"role": "user", "content": "Go."},
    ]
    assert llm.bodies[1]["messages"] == [
        {"role": "system", "content": "You help."},
        {"role": "user", "content": "This is a simple prompt without arguments."},
    ]
    assert outcome.outputs == {"out": "sunny noted"}


async def test_a_resource_step_reads_one_resource_as_its_output(
    tmp_path: Path, llm: OpenAIServer, endpoint: Endpoint
) -> None:
    steps = (
        f'  - id: doc\n    resource: {{server: everything, uri: "{DOC}"}}\n'
        f'  - id: text\n    resource: {{server: everything, uri: "{TEXT}", arguments: {{resourceId: 3}}}}\n'
        "  - id: blob\n"
        '    resource: {server: everything, uri: "demo://resource/dynamic/blob/{id}", arguments: {id: 2}}\n'
        'outputs:\n  doc: "{{ steps.doc.output }}"\n  text: "{{ steps.text.output }}"\n'
        '  blob: "{{ steps.blob.output }}"'
    )
    outcome, store = await run(tmp_path, llm, context_pipeline(endpoint, "  {}", steps))
    store.close()
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    assert outcome.outputs is not None
    assert "Everything Server" in outcome.outputs["doc"]
    assert outcome.outputs["text"].startswith("Resource 3: This is a plaintext resource created at")
    blob = outcome.outputs["blob"]
    assert blob[0]["uri"] == "demo://resource/dynamic/blob/2" and blob[0]["blob"]  # not text: the MCP JSON
    assert llm.bodies == []  # no model asked


def test_resolve_tools_accepts_real_references_and_flags_unknown_ones(tmp_path: Path, endpoint: Endpoint) -> None:
    agents = (
        f"{READER}\n"
        "  forecaster:\n"
        "    instruction: {server: everything, prompt: args-prompt, arguments: {city: Lisbon}}\n"
    )
    steps = (
        "  - id: ask\n    agent: reader\n    prompt: {server: everything, prompt: simple-prompt}\n"
        "  - id: fore\n    agent: forecaster\n    prompt: Go.\n"
        f'  - id: text\n    resource: {{server: everything, uri: "{TEXT}", arguments: {{resourceId: 3}}}}'
    )
    path = tmp_path / "good.yaml"
    path.write_text(context_pipeline(endpoint, agents, steps), encoding="utf-8")
    graph, diagnostics, _ = load_pipeline(path)
    assert graph is not None, [str(d) for d in diagnostics]
    assert finalize(resolve_tools(graph, env={})) == []

    bad = (
        context_pipeline(endpoint, agents, steps)
        .replace("prompt: simple-prompt", "prompt: simple-promt")
        .replace("instructions.md", "instructions.txt")
        .replace("arguments: {city: Lisbon}", "arguments: {town: Lisbon}")
    )
    path = tmp_path / "bad.yaml"
    path.write_text(bad, encoding="utf-8")
    graph, diagnostics, _ = load_pipeline(path)
    assert graph is not None, [str(d) for d in diagnostics]
    found = finalize(resolve_tools(graph, env={}))
    lines = bad.splitlines()
    messages = {(d.code, d.severity, d.span.line, d.message) for d in found}
    assert messages == {
        (
            "invalid-value",
            Severity.ERROR,
            next(i for i, line in enumerate(lines, 1) if "instructions.txt" in line),
            "server 'everything' has no resource 'demo://resource/static/document/instructions.txt'",
        ),
        (
            "invalid-value",
            Severity.ERROR,
            next(i for i, line in enumerate(lines, 1) if "town" in line),
            "prompt 'args-prompt' of server 'everything': missing required argument 'city'",
        ),
        (
            "invalid-value",
            Severity.ERROR,
            next(i for i, line in enumerate(lines, 1) if "town" in line),
            "prompt 'args-prompt' of server 'everything': unknown argument 'town'",
        ),
        (
            "invalid-value",
            Severity.ERROR,
            next(i for i, line in enumerate(lines, 1) if "simple-promt" in line),
            "server 'everything' has no prompt 'simple-promt'",
        ),
    }, [str(d) for d in found]
    hints = {d.message: d.hint for d in found}
    assert "simple-prompt" in str(hints["server 'everything' has no prompt 'simple-promt'"])

    # the same through the command line
    command = [sys.executable, "-m", "flowctl.cli", "validate", "--resolve-tools"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    failed = subprocess.run([*command, str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "server 'everything' has no prompt 'simple-promt'" in failed.stdout
    passed = subprocess.run(
        [*command, str(tmp_path / "good.yaml")], capture_output=True, text=True, env=env, timeout=120
    )
    assert passed.returncode == 0, passed.stdout + passed.stderr
