"""A fault server: complains on stderr and exits 7 before speaking MCP."""

import sys

print("loading config from ./server.toml", file=sys.stderr)
print("fatal: config missing", file=sys.stderr)
sys.exit(7)
