"""The scripted provider and tool pool: deterministic LLM replies and MCP tool results from a fixture, for offline
runs and CI (`flowctl run FILE --scripted FIXTURE`, `flowctl test`). The user reference is docs/scripted.md.

fixture.py: the fixture format, its parser and its matching rules; provider.py: the LLMProvider; tool_pool.py: the
ToolPool. The names below are this package's face: import them from here.
"""

from flowctl.interpreter.providers.scripted.fixture import Fixture, FixtureError, load_fixture, parse_fixture
from flowctl.interpreter.providers.scripted.provider import NoScriptedReply, ScriptedProvider
from flowctl.interpreter.providers.scripted.tool_pool import ScriptedToolPool

__all__ = [
    "Fixture",
    "FixtureError",
    "NoScriptedReply",
    "ScriptedProvider",
    "ScriptedToolPool",
    "load_fixture",
    "parse_fixture",
]
