"""flowctl: a declarative YAML workflow DSL with an async interpreter for LLM agents and MCP tools."""

__version__ = "0.1.0"
