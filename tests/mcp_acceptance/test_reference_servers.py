"""Acceptance: a Python reference MCP server, `mcp-server-time` (in the dev extra), with the real interpreter over
stdio and the local OpenAI-compatible model server: the model calls its `get_current_time` tool with a timezone and
the tool's real answer reaches the model in the next request.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from flowctl.dsl.diagnostics import Severity
from flowctl.dsl.frontend import load_pipeline
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus
from flowctl.interpreter.runner import RunOptions, run_graph
from tests.support.openai_server import OpenAIServer, call, reply

pytestmark = pytest.mark.anyio
KEY = "sk-acceptance-0123456789abcdef"


async def test_the_time_servers_real_answer_reaches_the_model(tmp_path: Path, llm: OpenAIServer, marker: str) -> None:
    path = tmp_path / "time.yaml"
    path.write_text(
        f"""flowctl: 1
name: clock
models:
  default: {{model: gpt-acc, price: {{input_per_mtok: 1.0, output_per_mtok: 1.0}}}}
servers:
  time:
    command: {json.dumps(sys.executable)}
    args: ["-m", "mcp_server_time"]
    env: {{FLOWCTL_MARKER: "{marker}"}}
agents:
  clock: {{instruction: You tell the time., servers: [time]}}
steps:
  - id: ask
    agent: clock
    prompt: What time is it in Tokyo?
outputs:
  out: "{{{{ steps.ask.output }}}}"
""",
        encoding="utf-8",
    )
    graph, diagnostics, _ = load_pipeline(path)
    assert graph is not None, [str(d) for d in diagnostics if d.severity is Severity.ERROR]
    llm.enqueue(reply(tool_calls=[call("get_current_time", {"timezone": "Asia/Tokyo"}, id="t1")]), reply("late"))
    store = SqliteRunStore(tmp_path / "runs.db")
    try:
        env = {"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": KEY}
        outcome = await run_graph(graph, {}, store, RunOptions(env=env))
    finally:
        store.close()
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    assert outcome.outputs == {"out": "late"}
    offered = {tool["function"]["name"] for tool in llm.bodies[0]["tools"]}
    assert {"get_current_time", "convert_time"} <= offered
    tool = [m for m in llm.bodies[1]["messages"] if m["role"] == "tool"]
    assert len(tool) == 1 and tool[0]["tool_call_id"] == "t1"
    answer = json.loads(tool[0]["content"])
    assert answer["timezone"] == "Asia/Tokyo"
    assert answer["datetime"].endswith("+09:00") and answer["is_dst"] is False  # Japan keeps no summer time
