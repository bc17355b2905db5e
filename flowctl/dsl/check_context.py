"""What every semantic check reads: the loaded document, its index, and how child pipeline files are resolved.

Shared by the check units in `checks.py` and `template_checks.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flowctl.dsl.characters import editor_lines
from flowctl.dsl.diagnostics import Diagnostic, Span
from flowctl.dsl.index import DocIndex, StepInfo
from flowctl.dsl.loader import JsonPath, LoadedDocument


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """What the checks need to know about a child pipeline file."""

    path: str
    inputs: dict[str, Any]
    error_count: int


# (reference as written in the pipeline, the file it is written in) → ChildInfo, or a Diagnostic-producing problem
ChildResolver = Callable[[str, Span], "ChildInfo | Diagnostic"]


@dataclass(slots=True)
class CheckContext:
    doc: LoadedDocument
    index: DocIndex
    resolve_child: ChildResolver | None = None
    emitted_events: set[str] = field(default_factory=set)
    _lines: list[str] | None = None

    @property
    def lines(self) -> list[str]:
        """The source split into lines once (template positions are looked up per reference)."""
        if self._lines is None:
            self._lines = editor_lines(self.doc.source)
        return self._lines

    def span(self, path: JsonPath) -> Span:
        return self.doc.source_map.value(path)

    def key_span(self, path: JsonPath) -> Span:
        return self.doc.source_map.key(path)


def agent_refs(step: StepInfo) -> Iterator[tuple[str, JsonPath]]:
    raw = step.raw
    if step.kind == "agent" and isinstance(raw.get("agent"), str):
        yield raw["agent"], (*step.path, "agent")
    route = raw.get("route")
    if step.kind == "route" and isinstance(route, dict) and isinstance(route.get("agent"), str):
        yield route["agent"], (*step.path, "route", "agent")
    fallback = raw.get("fallback")
    if isinstance(fallback, dict) and isinstance(fallback.get("agent"), str):
        yield fallback["agent"], (*step.path, "fallback", "agent")
