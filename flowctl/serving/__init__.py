"""`flowctl serve`: pipelines offered to MCP clients as tools (`tools.py`: what a client is told about them, without
the SDK; `server.py`: the MCP server over stdio or streamable HTTP, one journaled run per tool call)."""
