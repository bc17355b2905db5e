"""`flowctl serve` passes what an MCP server inside the served pipeline sends on to its own client: an elicitation,
as it was asked (and the client's answer back to that server), and progress. Needs the MCP client side of issue 15
(the reporter's `elicitation` and `tool_progress` hooks, the `elicitation` signal a run waits for): skipped until it
is in."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters

import flowctl
from flowctl.interpreter.reporting import Reporter
from tests.serving.test_serve import stdio_session

ROOT = Path(__file__).parents[2]
SERVERS = ROOT / "tests" / "support" / "mcp_servers"
BOOKING = Path(__file__).parent / "pipelines" / "asking" / "booking.yaml"

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        not hasattr(Reporter, "elicitation") or not (SERVERS / "asking_server.py").exists(),
        reason="needs the MCP client's elicitation support (issue 15 §1)",
    ),
]


def served(tmp_path: Path, template: Path = BOOKING) -> Path:
    pipeline = tmp_path / template.name
    text = template.read_text().replace("@PYTHON@", sys.executable).replace("@SERVERS@", str(SERVERS))
    pipeline.write_text(text)
    return pipeline


@pytest.mark.parametrize(
    ("action", "content", "result"),
    [
        ("accept", {"name": "Ana", "count": 2}, "booked a table for Ana x2"),
        ("decline", None, "not booked: decline"),
    ],
)
async def test_a_servers_elicitation_reaches_the_client_and_its_answer_the_server(
    tmp_path: Path, action: str, content: dict[str, Any] | None, result: str
) -> None:
    store = tmp_path / "runs.db"
    asked: list[types.ElicitRequestParams] = []

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(action=action, content=content)  # type: ignore[arg-type]

    async with stdio_session(store, served(tmp_path), elicitation_callback=answer) as session:
        called = await session.call_tool("booking", {"what": "a table"})
    assert not called.is_error, called.content
    assert called.structured_content == {"result": result}
    (request,) = asked
    assert request.message.startswith("Who books a table?") and "'asking'" in request.message
    assert isinstance(request, types.ElicitRequestFormParams)
    assert set(request.requested_schema["properties"]) == {"name", "count"}
    (run,) = flowctl.list_runs(store=store)
    assert run["status"] == "succeeded"


async def test_a_servers_progress_reaches_the_client(tmp_path: Path) -> None:
    messages: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    working = served(tmp_path, BOOKING.with_name("working.yaml"))
    async with stdio_session(tmp_path / "runs.db", working) as session:
        called = await session.call_tool("working", {}, progress_callback=on_progress)
    assert called.structured_content == {"result": "worked 3 steps"}
    assert [m for m in messages if "asking.work" in m] == [f"step call: asking.work {i}/3: step {i}" for i in (1, 2, 3)]


async def test_on_the_2026_protocol_a_servers_elicitation_reaches_the_client_through_input_required(
    tmp_path: Path,
) -> None:
    asked: list[types.ElicitRequestParams] = []

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params)
        return types.ElicitResult(action="accept", content={"name": "Ana", "count": 2})

    store = tmp_path / "runs.db"
    args = ["-m", "flowctl", "serve", str(served(tmp_path)), "--store", str(store)]
    params = StdioServerParameters(command=sys.executable, args=args, cwd=str(ROOT))
    async with Client(params, elicitation_callback=answer) as client:
        assert client.protocol_version == "2026-07-28"
        with anyio.fail_after(60):
            called = await client.call_tool("booking", {"what": "a table"})
    assert called.structured_content == {"result": "booked a table for Ana x2"}, called.content
    (request,) = asked
    assert request.message.startswith("Who books a table?") and "'asking'" in request.message
