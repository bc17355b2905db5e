"""A real MCP server (the mcp SDK's low-level `Server`) that pages `tools/list`: one tool per page, the last two with an
output schema. `measure` answers structured content that matches its schema, `misreport` content that does not.
With PAGING_LISTS=FILE in its environment, it appends one line to FILE per `tools/list` request, so tests count them.
Served over stdio.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

LENGTH = {"type": "object", "required": ["length"], "properties": {"length": {"type": "number"}}}
PAGES = [
    types.Tool(name="hello", description="Say hello.", input_schema={"type": "object"}),
    types.Tool(
        name="measure",
        description="The length of a text.",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        output_schema=LENGTH,
    ),
    types.Tool(
        name="misreport",
        description="A length, as a string (against its own schema).",
        input_schema={"type": "object"},
        output_schema=LENGTH,
    ),
]


async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    counter = os.environ.get("PAGING_LISTS")
    if counter:
        with open(counter, "a", encoding="utf-8") as out:
            out.write(f"{params.cursor if params and params.cursor else 0}\n")
    page = int(params.cursor) if params and params.cursor else 0
    more = str(page + 1) if page + 1 < len(PAGES) else None
    return types.ListToolsResult(tools=[PAGES[page]], next_cursor=more)


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    arguments = params.arguments or {}
    if params.name == "hello":
        return types.CallToolResult(content=[types.TextContent(type="text", text="hello")])
    if params.name == "measure":
        length = len(str(arguments.get("text", "")))
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=str(length))], structured_content={"length": length}
        )
    return types.CallToolResult(
        content=[types.TextContent(type="text", text="five")], structured_content={"length": "five"}
    )


server = Server("paging", on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
