"""A fault server: prints the values of the environment variables named in its arguments on stderr, as a server that
echoes its configuration when it fails would, and exits 3 before speaking MCP."""

import os
import sys

for name in sys.argv[1:]:
    if not name.startswith("--"):
        print(f"auth failed: {name}={os.environ.get(name, '<unset>')}", file=sys.stderr)
sys.exit(3)
