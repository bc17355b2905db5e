"""A real MCP server (mcp SDK `MCPServer`) for the pool's tests: arithmetic plus tools that fail,
stall, crash and report process state, served over stdio (default), streamable HTTP or SSE.

    python calc_server.py                      # stdio
    python calc_server.py --http --port 8123   # streamable HTTP at http://127.0.0.1:8123/mcp
    python calc_server.py --sse --port 8123    # SSE at http://127.0.0.1:8123/sse
    python calc_server.py --tag MARKER         # any mode: a marker tests find in /proc/*/cmdline
    python calc_server.py --http --port 8123 --token T [--client ID:SECRET]   # (--sse too)
        # streamable HTTP that answers 401 without `Authorization: Bearer T` (403 for `Bearer forbidden`); with
        # --client it is also its own OAuth authorization server, issuing T for the client-credentials grant

With CALC_STARTS=FILE in its environment, each process appends its pid to FILE when it starts.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
from typing import Any
from urllib.parse import parse_qs

from mcp import MCPError
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("calc")
_calls = {"counter": 0}


@server.tool()
def add(a: float, b: float) -> float:
    """Add two numbers (structured result)."""
    return a + b


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool(structured_output=False)
def fail(message: str) -> str:
    """Report a tool error as an `is_error` result, as TypeScript servers do."""
    raise ToolError(message)


@server.tool(structured_output=False)
def fail_rpc(message: str) -> str:
    """Report a tool error as a JSON-RPC error response (a raised MCPError)."""
    raise MCPError(code=-32000, message=message)


@server.tool()
def slow(seconds: float, started: str = "") -> str:
    """Sleep, then answer: lets tests exceed the read timeout. With `started`, first create that file, so a test
    knows the call is in progress without guessing how long getting there takes."""
    if started:
        with open(started, "w", encoding="utf-8") as out:
            out.write(str(os.getpid()))
    time.sleep(seconds)
    return f"slept {seconds}"


@server.tool()
def meet(mine: str, other: str) -> str:
    """A rendezvous: create the file `mine`, then wait until `other` exists. Two calls meet only when they run at the
    same time, so a test proves concurrency without timing anything. Gives up after 60 s ("alone")."""
    with open(mine, "w", encoding="utf-8"):
        pass
    deadline = time.monotonic() + 60
    while not os.path.exists(other):
        if time.monotonic() > deadline:
            return "alone"
        time.sleep(0.01)
    return "met"


@server.tool()
def crash() -> str:
    """Kill the process mid-call, without answering."""
    os._exit(3)


@server.tool()
def crash_once(path: str) -> str:
    """Kill the process mid-call the first time (when `path` does not exist yet); answer on later calls."""
    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as out:
            out.write(str(os.getpid()))
        os._exit(3)
    return "survived"


@server.tool()
def counter() -> int:
    """How many times this tool was called in this process: one process means one count."""
    _calls["counter"] += 1
    return _calls["counter"]


@server.tool()
def pid() -> int:
    """The server's process id, so tests can check it is gone after shutdown."""
    return os.getpid()


@server.tool()
def append(path: str, text: str) -> str:
    """Append one line to a file: a side effect tests can count across processes (and resumes)."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(text + "\n")
    return f"appended to {path}"


@server.tool()
def env(name: str) -> str:
    """An environment variable of the server process ("<unset>" when absent)."""
    return os.environ.get(name, "<unset>")


Scope = dict[str, Any]


def guarded(app: Any, token: str, client: str | None, base: str) -> Any:
    """An ASGI app: `app` behind a bearer token, plus (with `client`) the OAuth discovery documents and a token
    endpoint for the client-credentials grant, which hands out `token`."""
    metadata = {
        "/.well-known/oauth-protected-resource": {"resource": f"{base}/mcp", "authorization_servers": [base]},
        "/.well-known/oauth-protected-resource/mcp": {"resource": f"{base}/mcp", "authorization_servers": [base]},
        "/.well-known/oauth-authorization-server": {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "response_types_supported": ["code"],
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        },
    }

    async def send_json(send: Any, status: int, body: Any, headers: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
        data = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), *headers],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def issue(receive: Any, send: Any, scope: Scope) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        headers = dict(scope["headers"])
        given = f"{form.get('client_id', '')}:{form.get('client_secret', '')}"
        basic = headers.get(b"authorization", b"").decode()
        if basic.startswith("Basic "):
            given = base64.b64decode(basic[6:]).decode()
        if form.get("grant_type") != "client_credentials" or given.replace("%3A", ":") != client:
            await send_json(send, 401, {"error": "invalid_client"})
            return
        await send_json(send, 200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})

    async def asgi(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        path = scope["path"]
        if client is not None and path in metadata:
            await send_json(send, 200, metadata[path])
            return
        if client is not None and path == "/token":
            await issue(receive, send, scope)
            return
        given = dict(scope["headers"]).get(b"authorization", b"").decode()
        if given == "Bearer forbidden":
            await send_json(send, 403, {"error": "forbidden"})
            return
        if given != f"Bearer {token}":
            challenge = f'Bearer resource_metadata="{base}/.well-known/oauth-protected-resource/mcp"'
            await send_json(send, 401, {"error": "unauthorized"}, [(b"www-authenticate", challenge.encode())])
            return
        await app(scope, receive, send)

    return asgi


def _count_read(what: str) -> None:
    """With CALC_READS=FILE, one line per resource read or prompt get: tests count what a resume asks again."""
    reads = os.environ.get("CALC_READS")
    if reads:
        with open(reads, "a", encoding="utf-8") as out:
            out.write(what + "\n")


@server.resource("calc://guide", mime_type="text/markdown")
def guide() -> str:
    """How calc rounds."""
    _count_read("guide")
    return "# calc\nResults are rounded to 2 decimals."


@server.resource("calc://tables/{n}", mime_type="text/plain")
def table(n: str) -> str:
    """The multiplication table of n."""
    _count_read(f"table {n}")
    return " ".join(str(int(n) * i) for i in range(1, 4))


@server.prompt()
def style(tone: str) -> str:
    """The system prompt for answers in a tone."""
    _count_read(f"style {tone}")
    return f"Answer in a {tone} tone."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP at /mcp")
    parser.add_argument("--sse", action="store_true", help="serve SSE at /sse")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--tag", help="ignored: a marker tests look for in the process list")
    parser.add_argument("--token", help="with --http: require `Authorization: Bearer TOKEN`")
    parser.add_argument("--client", help="with --token: ID:SECRET of an OAuth client that may get the token")
    args = parser.parse_args()
    starts = os.environ.get("CALC_STARTS")
    if starts:  # tests count the processes started: one line per start
        with open(starts, "a", encoding="utf-8") as out:
            out.write(f"{os.getpid()}\n")
    if (args.http or args.sse) and args.token:
        import uvicorn

        inner = server.streamable_http_app(host="127.0.0.1") if args.http else server.sse_app(host="127.0.0.1")
        app = guarded(inner, args.token, args.client, f"http://127.0.0.1:{args.port}")
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    elif args.http:
        server.run("streamable-http", host="127.0.0.1", port=args.port)
    elif args.sse:
        server.run("sse", host="127.0.0.1", port=args.port)
    else:
        server.run()


if __name__ == "__main__":
    main()
