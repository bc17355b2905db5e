"""A fast local OpenAI-compatible server for the provider benchmark: POST /v1/chat/completions, answered at once.

Unlike tests/support/openai_server.py (scriptable, one request per connection, in a thread of the test process), this
one is built to cost the client as little as possible, so the benchmark measures the client side: asyncio streams in
a process of its own (no GIL shared with the measured event loop), HTTP/1.1 keep-alive, a listen backlog for 1,000
concurrent connections, and a fixed answer ("ok") streamed as Server-Sent Events the way OpenAI streams it (role,
content, finish, usage when `stream_options.include_usage` asks, `[DONE]`), one HTTP chunk per event. A request
without `stream: true` gets one JSON chat completion.

    python bench/openai_local.py          # prints `http://127.0.0.1:PORT/v1`, then serves until killed
    python bench/openai_local.py --latency 0.05   # each answer after 50 ms (an I/O-bound model, bench/scale_workers.py)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

ANSWER = "ok"
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\n%s\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _events(body: dict[str, Any], number: int) -> bytes:
    model = body.get("model") or "bench-model"
    envelope = {
        "id": f"chatcmpl-{number}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return _chunk(b"data: " + json.dumps({**envelope, "choices": choices, **extra}).encode() + b"\n\n")

    out = [
        event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
        event([{"index": 0, "delta": {"content": ANSWER}, "finish_reason": None}]),
        event([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
    ]
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append(event([], usage={"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}))
    out.append(_chunk(b"data: [DONE]\n\n"))
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def _completion(body: dict[str, Any], number: int) -> bytes:
    message = {"role": "assistant", "content": ANSWER}
    payload = {
        "id": f"chatcmpl-{number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "bench-model",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    }
    return json.dumps(payload).encode()


class _Server:
    def __init__(self, latency: float = 0.0) -> None:
        self.requests = 0
        self.latency = latency

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                length = int(headers.get("content-length") or 0)
                data = await reader.readexactly(length) if length else b"{}"
                self.requests += 1
                body = json.loads(data)
                if self.latency:
                    await asyncio.sleep(self.latency)
                close = headers.get("connection", "").lower() == "close"
                extra = b"Connection: close\r\n" if close else b""
                if body.get("stream"):
                    writer.write(_HEAD % (b"text/event-stream", extra + b"Transfer-Encoding: chunked\r\n"))
                    writer.write(_events(body, self.requests))
                else:
                    payload = _completion(body, self.requests)
                    writer.write(_HEAD % (b"application/json", extra + b"Content-Length: %d\r\n" % len(payload)))
                    writer.write(payload)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its connection
        finally:
            writer.close()


async def _main(latency: float) -> None:
    server = await asyncio.start_server(_Server(latency).serve, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        latency = float(sys.argv[sys.argv.index("--latency") + 1]) if "--latency" in sys.argv else 0.0
        asyncio.run(_main(latency))
    except KeyboardInterrupt:
        sys.exit(0)
