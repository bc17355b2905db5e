"""A fault server: answers the first line on stdin (`initialize`) with non-JSON text on stdout, never with MCP, and
exits: the client fails at once whatever the machine's speed (never_initializes.py is the one that times out)."""

import sys

print("Starting server v1.2 ...", flush=True)
sys.stdin.readline()
print("hello, this is not JSON-RPC", flush=True)
