"""MCP: the pool of server connections (one per server per run), the tool port, and tool resolution for
`validate --resolve-tools`."""
