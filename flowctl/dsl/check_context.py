"""What every semantic check reads: the loaded document, its index, and how child pipeline files are resolved.

Shared by the check units in `checks.py` and `template_checks.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowctl.dsl.characters import editor_lines
from flowctl.dsl.diagnostics import Diagnostic, Span
from flowctl.dsl.index import DocIndex, StepInfo
from flowctl.dsl.kinds import refs
from flowctl.dsl.loader import JsonPath, LoadedDocument


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """What the checks need to know about a child pipeline file."""

    path: str
    inputs: dict[str, Any]
    error_count: int
    parent_state: tuple[str, ...] = ()  # the caller's state keys it reads and updates


# (reference as written in the pipeline, the file it is written in) → ChildInfo, or a Diagnostic-producing problem
ChildResolver = Callable[[str, Span], "ChildInfo | Diagnostic"]


@dataclass(slots=True)
class CheckContext:
    doc: LoadedDocument
    index: DocIndex
    resolve_child: ChildResolver | None = None
    # (this file's folder, the root pipeline's folder that file references must stay in); None: not checked
    folders: tuple[Path, Path] | None = None
    emitted_events: set[str] = field(default_factory=set)
    texts: dict[str, str] = field(default_factory=dict)  # prompt files read (prompt_files.py), by their spans' name
    env: Mapping[str, str] | None = None  # the environment `${VAR}` is checked against (None: not checked)
    _lines: list[str] | None = None
    _file_lines: dict[str, list[str]] = field(default_factory=dict)

    @property
    def lines(self) -> list[str]:
        """The source split into lines once (template positions are looked up per reference)."""
        if self._lines is None:
            self._lines = editor_lines(self.doc.source)
        return self._lines

    def lines_of(self, file: str) -> list[str]:
        """The lines of the pipeline file, or of a prompt file it names."""
        if file not in self.texts:
            return self.lines
        lines = self._file_lines.get(file)
        if lines is None:
            lines = self._file_lines[file] = editor_lines(self.texts[file])
        return lines

    def span(self, path: JsonPath) -> Span:
        return self.doc.source_map.value(path)

    def key_span(self, path: JsonPath) -> Span:
        return self.doc.source_map.key(path)


def agent_refs(step: StepInfo) -> Iterator[tuple[str, JsonPath]]:
    """The agents a step names: its kind's (see kinds.py), then its fallback's."""
    yield from refs(step.kind, step.raw, step.path, "agent")
    fallback = step.raw.get("fallback")
    if isinstance(fallback, dict) and isinstance(fallback.get("agent"), str):
        yield fallback["agent"], (*step.path, "fallback", "agent")


_REMOVED = object()


def without_rejected(data: Any, rejected: frozenset[JsonPath]) -> Any:
    """`data` without the values the schema refused for their type: a refused mapping entry is dropped, a refused
    list item becomes None (so later items keep their paths). The semantic checks run on this, so each may trust
    the type of any value it finds (`triggers: 5` is reported once, by the schema). Only the refused values'
    ancestors are copied; the document itself is left as it is."""
    if not rejected:
        return data
    trie: dict[Any, Any] = {}
    for path in sorted(rejected, key=len):  # an ancestor's removal covers its descendants
        node = trie
        for part in path:
            if _REMOVED in node:
                break
            node = node.setdefault(part, {})
        else:
            node.clear()
            node[_REMOVED] = True
    return _pruned(data, trie)


def _pruned(value: Any, trie: dict[Any, Any]) -> Any:
    if _REMOVED in trie:
        return _REMOVED
    if isinstance(value, dict):
        out = {k: (_pruned(v, trie[k]) if k in trie else v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not _REMOVED}
    if isinstance(value, list):
        items = [_pruned(v, trie[i]) if i in trie else v for i, v in enumerate(value)]
        return [None if v is _REMOVED else v for v in items]
    return value
