"""A fault server: answers every line on stdin with non-JSON text on stdout, never with MCP."""

import sys

print("Starting server v1.2 ...", flush=True)
for _line in sys.stdin:
    print("hello, this is not JSON-RPC", flush=True)
