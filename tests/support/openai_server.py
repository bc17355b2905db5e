"""A real, scriptable OpenAI-compatible HTTP server for tests (POST /v1/chat/completions).

It runs on 127.0.0.1 with an ephemeral port in a background thread, answers each request with the next
item of a queue the test sets up, and records every request it receives. Requests asking for
`stream: true` get Server-Sent Events (the way OpenAI streams); others get one JSON chat completion.

Scripting API
-------------
    from tests.support.openai_server import running_openai_server, reply, call, error, raw

    with running_openai_server() as server:
        server.enqueue(
            reply(tool_calls=[call("search", {"q": "flowctl"})], usage=(12, 4)),  # 1st request
            reply("found it"),                                                     # 2nd request
        )
        ...  # point the client at server.base_url ("http://127.0.0.1:PORT/v1")
        assert server.bodies[1]["messages"][-1]["role"] == "tool"
        assert server.request_count == 2

Queue items, served in order (one per request):
- `Reply` (build with `reply(...)`): content, tool calls, usage, finish_reason; stream faults via
  `finish_reason=None` (no finish chunk), `malformed_chunk=True` (a chunk that is not JSON),
  `done=False` (no `[DONE]`), `delay` (seconds before answering), `stall` (seconds mid-stream),
  `cut_after=N` (the connection drops after N chunks, in the middle of a body declared longer: what a proxy
  or a crashing server does; the client sees a protocol error, not a clean end).
  Tool-call `arguments` may be a dict (JSON-encoded) or raw text, e.g. truncated `'{"q": "fl'`.
- `HttpReply` (build with `error(...)` or `raw(...)`): any status, headers and body, e.g.
  `error(429, "slow down", headers={"Retry-After": "3"})`, `error(429, "...", code="insufficient_quota")`,
  `raw("<html>oops</html>", content_type="text/html")` (an HTML page with status 200).
- `RawStream`: a 200 event stream whose `data:` payloads are given verbatim (e.g. an error event).
- a callable `(body: dict) -> queue item`, for answers computed from the request.
An empty queue answers 400 `script exhausted`, so a test that sends more requests than it scripted fails
loudly instead of retrying.

From another process (CLI end-to-end tests):
    python -m tests.support.openai_server --port 0 --script script.json [--record requests.jsonl]
prints `http://127.0.0.1:PORT/v1` on its first stdout line, then serves until killed. The script is a
JSON list; each item is `{"content": ..., "tool_calls": [{"name": ..., "arguments": ...}], "usage": [in,
out], "finish_reason": ..., ...}` (a `Reply`) or `{"status": ..., "body": ..., "headers": {...}}` (an
`HttpReply`). `--record` appends each request body as one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_AUTO = "auto"


@dataclass(frozen=True)
class ToolCall:
    """One tool call the scripted model makes. `arguments` is sent verbatim when it is a string."""

    name: str
    arguments: str | Mapping[str, Any] = "{}"
    id: str | None = None

    def arguments_text(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)


@dataclass(frozen=True)
class Reply:
    """A chat completion: streamed or not, as the request asks. Fault knobs default to a clean answer."""

    content: str | None = None
    tool_calls: Sequence[ToolCall] = ()
    usage: tuple[Any, Any] | None = (10, 5)  # (prompt_tokens, completion_tokens), sent as given; None: no usage
    finish_reason: str | None = _AUTO  # "auto": tool_calls or stop; None: never sent
    model: str | None = None  # None: echo the requested model
    delay: float = 0.0  # seconds to wait before the status line
    stall: float = 0.0  # seconds to wait after the first streamed chunk
    malformed_chunk: bool = False  # send a chunk that is not valid JSON after the first one
    done: bool = True  # send the final `data: [DONE]`
    cut_after: int | None = None  # drop the connection after this many chunks (the body was declared longer)

    def resolved_finish_reason(self) -> str | None:
        if self.finish_reason != _AUTO:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"


@dataclass(frozen=True)
class HttpReply:
    """A verbatim HTTP response: status, headers and body (a dict is sent as JSON)."""

    status: int
    body: str | bytes | Mapping[str, Any] = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    delay: float = 0.0


@dataclass(frozen=True)
class RawStream:
    """A 200 event stream whose `data:` payloads are sent verbatim, one event each."""

    events: Sequence[str]
    done: bool = True


Script = Reply | HttpReply | RawStream | Callable[[dict[str, Any]], "Reply | HttpReply | RawStream"]


@dataclass(frozen=True)
class RecordedRequest:
    """What the server received: path, headers (lower-cased names) and the JSON body."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def reply(content: str | None = None, *, tool_calls: Sequence[ToolCall] = (), **options: Any) -> Reply:
    """A scripted answer: text, tool calls, or both; `options` are the other `Reply` fields."""
    return Reply(content=content, tool_calls=tuple(tool_calls), **options)


def call(name: str, arguments: str | Mapping[str, Any] = "{}", id: str | None = None) -> ToolCall:
    """A scripted tool call; a dict `arguments` is JSON-encoded, a string is sent as is."""
    return ToolCall(name=name, arguments=arguments, id=id)


def error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    type: str | None = None,
    headers: Mapping[str, str] | None = None,
    delay: float = 0.0,
) -> HttpReply:
    """An OpenAI-shaped error response: `{"error": {"message", "type", "code", "param"}}`."""
    body = {"error": {"message": message, "type": type or code, "code": code, "param": None}}
    return HttpReply(status=status, body=body, headers=dict(headers or {}), delay=delay)


def raw(
    body: str | bytes,
    *,
    status: int = 200,
    content_type: str = "text/html",
    headers: Mapping[str, str] | None = None,
) -> HttpReply:
    """A non-JSON response, such as the HTML page a misconfigured proxy returns with status 200."""
    return HttpReply(status, body, dict(headers or {}), content_type)


class OpenAIServer:
    """The running server's handle: script it with `enqueue`, inspect what it received."""

    def __init__(self, httpd: ThreadingHTTPServer) -> None:
        self._httpd = httpd
        self._lock = threading.Lock()
        self._queue: deque[Script] = deque()
        self._ids = itertools.count(1)
        self.requests: list[RecordedRequest] = []
        self.stopping = threading.Event()
        self.record_path: Path | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies received, in order."""
        with self._lock:
            return [r.body for r in self.requests]

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def pending(self) -> int:
        """Scripted responses not yet served."""
        with self._lock:
            return len(self._queue)

    def enqueue(self, *items: Script) -> None:
        """Append responses; each request takes the next one."""
        with self._lock:
            self._queue.extend(items)

    def next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def take(self, request: RecordedRequest, *, serve: bool = True) -> Script | None:
        """Record the request and pop its scripted response (None once the script is exhausted)."""
        with self._lock:
            self.requests.append(request)
            if self.record_path is not None:
                with self.record_path.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(request.body) + "\n")
            return self._queue.popleft() if serve and self._queue else None

    def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the server stops, so stalls never delay teardown."""
        if seconds > 0:
            self.stopping.wait(seconds)


class _Handler(BaseHTTPRequestHandler):
    """Serves one request per connection (`Connection: close`), so streams end on a clean EOF."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def do_POST(self) -> None:
        body = self._read_body()
        record = RecordedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        state = self.server.state
        if not self.path.rstrip("/").endswith("/chat/completions"):
            state.take(record, serve=False)
            self._send_http(error(404, f"openai_server: no route {self.path}"))
            return
        item = state.take(record)
        if item is None:
            message = f"openai_server: script exhausted (request #{state.request_count})"
            self._send_http(error(400, message, code="script_exhausted"))
            return
        if callable(item):
            item = item(body)
        self._dispatch(item, body)

    def _read_body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        try:
            parsed = json.loads(data or b"{}")
        except json.JSONDecodeError:
            return {"_raw": data.decode("utf-8", "replace")}
        return parsed if isinstance(parsed, dict) else {"_raw": parsed}

    def _dispatch(self, item: Reply | HttpReply | RawStream, body: dict[str, Any]) -> None:
        try:
            if isinstance(item, HttpReply):
                self._send_http(item)
            elif isinstance(item, RawStream):
                self._send_raw_stream(item)
            elif body.get("stream"):
                self._send_stream(item, body)
            else:
                self._send_completion(item, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test); nothing to do

    # --- plain responses ------------------------------------------------------------------------

    def _send_http(self, item: HttpReply) -> None:
        self.server.state.pause(item.delay)
        data = item.body
        if isinstance(data, Mapping):
            data = json.dumps(data)
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.send_response(item.status)
        self.send_header("Content-Type", item.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        for name, value in item.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_completion(self, item: Reply, body: dict[str, Any]) -> None:
        message: dict[str, Any] = {"role": "assistant", "content": item.content}
        if item.tool_calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": c.name, "arguments": args}}
                for cid, c, args in self._calls(item)
            ]
        payload = self._envelope(item, body, "chat.completion")
        choice = {"index": 0, "message": message, "finish_reason": item.resolved_finish_reason()}
        payload["choices"] = [choice]
        if item.usage is not None:
            payload["usage"] = _usage(item.usage)
        text = json.dumps(payload)
        if item.malformed_chunk:
            text = text[: len(text) // 2]
        self._send_http(HttpReply(200, text, delay=item.delay))

    # --- streams --------------------------------------------------------------------------------

    def _start_stream(self, declared_length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        if declared_length is not None:
            self.send_header("Content-Length", str(declared_length))
        self.end_headers()

    def _event(self, payload: str) -> None:
        self.wfile.write(f"data: {payload}\n\n".encode())
        self.wfile.flush()

    def _send_raw_stream(self, item: RawStream) -> None:
        self._start_stream()
        for payload in item.events:
            self._event(payload)
        if item.done:
            self._event("[DONE]")

    def _send_stream(self, item: Reply, body: dict[str, Any]) -> None:
        state = self.server.state
        state.pause(item.delay)
        self._start_stream(None if item.cut_after is None else 1_000_000)
        for index, chunk in enumerate(self._chunks(item, body)):
            if index == item.cut_after:
                return  # the handler ends and the connection closes, short of the declared length
            self._event(json.dumps(chunk))
            if index == 0:
                if item.malformed_chunk:
                    self._event('{"id": "chatcmpl-broken", "choices": [{"delta": {"cont')
                state.pause(item.stall)
        if item.done:
            self._event("[DONE]")

    def _chunks(self, item: Reply, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Role, content in two pieces, each tool call (arguments in two pieces), finish, usage."""
        envelope = self._envelope(item, body, "chat.completion.chunk")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return {**envelope, "choices": [choice]}

        yield chunk({"role": "assistant", "content": None if item.tool_calls else ""})
        for piece in _halves(item.content or ""):
            yield chunk({"content": piece})
        for index, (cid, c, args) in enumerate(self._calls(item)):
            head = {"index": index, "id": cid, "type": "function"}
            yield chunk({"tool_calls": [{**head, "function": {"name": c.name, "arguments": ""}}]})
            for piece in _halves(args):
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        finish = item.resolved_finish_reason()
        if finish is not None:
            yield chunk({}, finish)
        if item.usage is not None and (body.get("stream_options") or {}).get("include_usage"):
            yield {**envelope, "choices": [], "usage": _usage(item.usage)}

    def _envelope(self, item: Reply, body: dict[str, Any], kind: str) -> dict[str, Any]:
        number = self.server.state.next_id()
        model = item.model or body.get("model") or "scripted"
        return {"id": f"chatcmpl-{number}", "object": kind, "created": int(time.time()), "model": model}

    def _calls(self, item: Reply) -> Iterator[tuple[str, ToolCall, str]]:
        for index, c in enumerate(item.tool_calls):
            yield c.id or f"call_{index + 1}", c, c.arguments_text()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: OpenAIServer


def _usage(usage: tuple[Any, Any]) -> dict[str, Any]:
    prompt, completion = usage
    total = prompt + completion if all(isinstance(n, int | float) for n in usage) else None
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def _halves(text: str) -> list[str]:
    """Split text in two pieces (fewer when short) so clients must join stream deltas."""
    middle = len(text) // 2
    return [piece for piece in (text[:middle], text[middle:]) if piece]


def _start(port: int = 0) -> tuple[_Server, threading.Thread]:
    httpd = _Server(("127.0.0.1", port), _Handler)
    httpd.state = OpenAIServer(httpd)
    # A short poll interval keeps `shutdown()` (which waits for the next poll) fast at teardown.
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), name="openai-server", daemon=True)
    thread.start()
    return httpd, thread


@contextmanager
def running_openai_server(port: int = 0) -> Iterator[OpenAIServer]:
    """Start the server for the duration of the block; stalled handlers are woken on exit."""
    httpd, thread = _start(port)
    try:
        yield httpd.state
    finally:
        httpd.state.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --- running from another process ---------------------------------------------------------------


def script_item_from_json(data: Mapping[str, Any]) -> Reply | HttpReply:
    """Build a queue item from its JSON form (see the module docstring)."""
    if "status" in data:
        fields = {k: data[k] for k in ("body", "headers", "content_type", "delay") if k in data}
        return HttpReply(status=int(data["status"]), **fields)
    options = dict(data)
    calls = [call(c["name"], c.get("arguments", "{}"), c.get("id")) for c in options.pop("tool_calls", [])]
    if "usage" in options and options["usage"] is not None:
        options["usage"] = tuple(options["usage"])
    return Reply(tool_calls=tuple(calls), **options)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a JSON script until killed; print the base URL first so the parent can connect."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--script", type=Path, help="JSON list of scripted responses")
    parser.add_argument("--record", type=Path, help="append each request body as a JSON line")
    args = parser.parse_args(argv)
    with running_openai_server(args.port) as server:
        server.record_path = args.record
        if args.script is not None:
            items = json.loads(args.script.read_text(encoding="utf-8"))
            server.enqueue(*(script_item_from_json(item) for item in items))
        print(server.base_url, flush=True)
        with suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
