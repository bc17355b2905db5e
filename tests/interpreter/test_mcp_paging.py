"""A server that pages `tools/list`: a direct tool call lists every page once per session (not once per call), and
the structured content of a tool on a later page is validated against its output schema."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from flowctl.dsl.diagnostics import Span
from flowctl.dsl.ir import ServerDef, Transport
from flowctl.interpreter.errors import ToolCallError
from flowctl.interpreter.mcp.mcp_pool import McpPool

PAGING = str(Path(__file__).resolve().parents[1] / "support" / "mcp_servers" / "paging_server.py")

pytestmark = pytest.mark.anyio


def paging(lists: Path) -> ServerDef:
    env = {"PAGING_LISTS": str(lists)}
    return ServerDef("paging", Transport.STDIO, Span("p.yaml", 1, 1), command=sys.executable, args=(PAGING,), env=env)


async def test_calls_list_every_page_once_and_validate_structured_output(tmp_path: Path) -> None:
    lists = tmp_path / "lists.txt"
    server = paging(lists)
    async with McpPool() as pool:
        for text in ("a", "abc", "abcdef"):
            assert (await pool.call_tool(server, "measure", {"text": text})).value == {"length": len(text)}
        assert [t.name for t in await pool.list_tools(server)] == ["hello", "measure", "misreport"]
        with pytest.raises(ToolCallError) as caught:
            await pool.call_tool(server, "misreport", {})
    assert "Invalid structured content returned by tool misreport" in caught.value.message
    assert lists.read_text().split() == ["0", "1", "2"]  # one listing of the three pages for the whole session
