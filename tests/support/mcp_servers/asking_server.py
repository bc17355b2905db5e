"""A real MCP server (mcp SDK `MCPServer`) that asks things of its client and tells it things: sampling, elicitation
and roots requests; progress, log and tools/list_changed notifications; audio content; an `idempotentHint` tool;
server instructions. Served over stdio (default) or streamable HTTP (`--http --port N`).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel

server = MCPServer("asking", instructions="Always call `summarize` before answering.")
WAV = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA="  # a 44-byte empty WAV file


@server.tool()
async def summarize(text: str, ctx: Context) -> str:
    """Summarize the text with the client's model (sampling)."""
    result = await ctx.session.create_message(
        [types.SamplingMessage(role="user", content=types.TextContent(type="text", text=f"Summarize: {text}"))],
        max_tokens=50,
        system_prompt="You summarize.",
        model_preferences=types.ModelPreferences(hints=[types.ModelHint(name="no-such-model")]),
    )
    content = result.content
    return f"summary ({result.model}): {getattr(content, 'text', '')}"


@server.tool()
async def summarize_once(text: str, flag: str, ctx: Context) -> str:
    """Sample; the first time (while the file `flag` does not exist) create `flag` and hang, so that a test can kill
    flowctl after the sampling answer is journaled."""
    result = await ctx.session.create_message(
        [types.SamplingMessage(role="user", content=types.TextContent(type="text", text=f"Summarize: {text}"))],
        max_tokens=50,
    )
    if not os.path.exists(flag):
        with open(flag, "w", encoding="utf-8"):
            pass
        time.sleep(600)
    return f"summary: {getattr(result.content, 'text', '')}"


class Confirm(BaseModel):
    name: str
    count: int = 1


@server.tool()
async def book(what: str, ctx: Context) -> str:
    """Ask a person for a name and a count (elicitation)."""
    answer = await ctx.elicit(f"Who books {what}?", Confirm)
    if answer.action == "accept":
        return f"booked {what} for {answer.data.name} x{answer.data.count}"
    return f"not booked: {answer.action}"


@server.tool()
async def roots(ctx: Context) -> str:
    """The client's roots (roots/list)."""
    listed = await ctx.session.list_roots()
    return " ".join(f"{root.name}={root.uri}" for root in listed.roots)


@server.tool()
async def work(steps: int, ctx: Context, gate: str = "") -> str:
    """`steps` steps, each reported as progress. With `gate`, paced by the test instead of a timer: before step k the
    server creates `gate`/ready-k and waits for `gate`/go-k (gives up after 60 s)."""
    import anyio

    for step in range(1, steps + 1):
        if gate:
            Path(gate, f"ready-{step}").touch()
            with anyio.fail_after(60):
                while not Path(gate, f"go-{step}").exists():
                    await anyio.sleep(0.01)
        await ctx.report_progress(step, steps, f"step {step}")
    return f"worked {steps} steps"


@server.tool()
async def chatty(ctx: Context) -> str:
    """Log a message at each level from debug to error."""
    for level in ("debug", "info", "warning", "error"):
        await ctx.log(level, f"a {level} message", logger_name="chatty")
    return "logged"


@server.tool()
async def grow(ctx: Context) -> str:
    """Add the tool `grown` and tell the client its tools changed."""
    if "grown" not in {tool.name for tool in await server.list_tools()}:
        server.add_tool(lambda: "grown here", name="grown", description="Exists once `grow` ran.")
    await ctx.session.send_tool_list_changed()  # the notification of a handshake (2025) session
    return "grew"


@server.tool()
def voice() -> list[types.TextContent | types.AudioContent]:
    """A caption and a short WAV recording."""
    return [
        types.TextContent(type="text", text="a recording"),
        types.AudioContent(type="audio", data=WAV, mimeType="audio/wav"),
    ]


@server.tool(annotations=types.ToolAnnotations(idempotentHint=True))
def lookup(key: str) -> str:
    """Annotated idempotent: safe to call again."""
    return f"value of {key}"


@server.tool()
def pid() -> int:
    return os.getpid()


@server.tool()
async def stall(started: str) -> str:
    """Create the file `started`, then never answer nor report progress (until the client goes away)."""
    import anyio

    Path(started).touch()
    await anyio.sleep_forever()
    return "never"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--tag", default="")
    options = parser.parse_args()
    if options.http:
        server.run("streamable-http", host="127.0.0.1", port=options.port)
    else:
        server.run()
