"""MCP: the pool of server connections for a run (mcp_pool: one session per server, shared; connection: one
session's life; transports: the stdio process and streamable HTTP), and tool resolution for `validate
--resolve-tools`."""
