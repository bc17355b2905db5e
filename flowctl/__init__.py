"""flowctl: a declarative YAML workflow DSL with an async interpreter for LLM agents and MCP tools.

For Python embedders: `open_store(url, access=...)` opens the run store a path or URL names (see
`flowctl.interpreter.persistence.locate`).
"""

from flowctl.interpreter.persistence.locate import open_store

__version__ = "0.1.0"

__all__ = ["__version__", "open_store"]
