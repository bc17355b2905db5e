"""`flowctl serve` passes an elicitation that an MCP server inside the served pipeline sends on to its own client,
as it was asked, and the client's answer back to that server. Needs the MCP client side of issue 15 (the reporter's
`elicitation` hook and the `elicitation` signal a run waits for): skipped until it is in."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

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


def served(tmp_path: Path) -> Path:
    pipeline = tmp_path / "booking.yaml"
    text = BOOKING.read_text().replace("@PYTHON@", sys.executable).replace("@SERVERS@", str(SERVERS))
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
