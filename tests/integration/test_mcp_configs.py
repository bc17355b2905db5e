"""Server configurations users bring, run for real: Claude Desktop / fast-agent blocks with `${VAR}` everywhere, an
optional server that cannot start (the agent runs without its tools, the run says so), a declared server nobody uses
(never started), and a remote server behind a token (refused once, clearly, never retried)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from flowctl.dsl.frontend import load_pipeline
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus
from flowctl.interpreter.reporting import Reporter
from flowctl.interpreter.runner import RunOptions, run_graph
from tests.integration.helpers import CALC, PYTHON, Flow
from tests.support.net import free_port, wait_listening
from tests.support.openai_server import reply

pytestmark = pytest.mark.anyio

TOKEN = "tok-integration-0123456789"


class Warnings(Reporter):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def warning(self, run_id: str, path: str, message: str) -> None:
        self.seen.append((path, message))


async def test_a_pasted_config_runs_with_the_optional_server_left_out_and_the_unused_one_never_started(
    flow: Flow,
) -> None:
    def tools_offered(body: dict[str, Any]) -> Any:
        names = sorted(t["function"]["name"] for t in body.get("tools", []))
        return reply(",".join(names))

    flow.llm.enqueue(tools_offered, tools_offered, tools_offered)
    warnings = Warnings()
    env = flow.env(PYTHON_BIN=PYTHON, CALC_SCRIPT=str(CALC))
    result = await flow.run("brought_config.yaml", env=env, reporter=warnings)
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    outputs = result.outcome.outputs
    assert outputs is not None and "add" in outputs["answer"].split(
        ","
    )  # calc started from ${PYTHON_BIN} ${CALC_SCRIPT}
    assert flow.llm.bodies[0]["model"] == "gpt-brought"  # `${MODEL_NAME:gpt-brought}`: fast-agent's default
    # the optional server: one warning for the run tree (its child run too), naming it and why, and an event
    assert len(warnings.seen) == 1
    path, message = warnings.seen[0]
    assert path == "use"
    assert "optional server 'flaky' is unavailable: agent 'helper' runs without its tools" in message
    assert "exited with code 7" in message
    events = [e for e in result.store.events(result.outcome.run_id) if e.name == "server_unavailable"]
    assert len(events) == 1
    assert result.step("use").attempts == 1


async def test_a_model_variable_that_is_unset_is_never_sent_as_written(flow: Flow) -> None:
    path = flow.tmp_path / "model_var.yaml"
    path.write_text(
        "flowctl: 1\nname: model_var\nmodels:\n  default: {model: '${NO_SUCH_MODEL_VAR}'}\n"
        "agents:\n  a: {instruction: Hi.}\nsteps:\n  - {id: s, agent: a, prompt: Go.}\n"
    )
    graph, _, _ = load_pipeline(path)
    assert graph is not None
    with SqliteRunStore(flow.tmp_path / "m.db") as store:
        outcome = await run_graph(graph, {}, store, RunOptions(env=flow.env(), reporter=Reporter()))
    assert outcome.status is RunStatus.FAILED
    assert "`model` refers to ${NO_SUCH_MODEL_VAR}, but it is not set" in str(outcome.error)
    assert flow.llm.request_count == 0


@pytest.fixture
def guarded_url() -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, str(CALC), "--http", "--port", str(port), "--token", TOKEN]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.kill()
        process.wait(timeout=60)


async def test_a_refused_token_fails_once_naming_the_server_and_is_not_retried(flow: Flow, guarded_url: str) -> None:
    result = await flow.run("guarded_server.yaml", env=flow.env(DOCS_URL=guarded_url, DOCS_TOKEN="wrong-0123456789"))
    assert result.outcome.status is RunStatus.FAILED
    assert result.cause == "server-auth-error"
    assert result.step("direct").attempts == 1
    assert "server 'docs' refused flowctl's credentials" in result.error
    assert "HTTP 401 Unauthorized" in result.error
    assert "wrong-0123456789" not in result.error


async def test_the_right_token_gets_through(flow: Flow, guarded_url: str) -> None:
    result = await flow.run("guarded_server.yaml", env=flow.env(DOCS_URL=guarded_url, DOCS_TOKEN=TOKEN))
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    assert result.outcome.outputs == {"direct": 42.0}
