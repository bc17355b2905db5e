"""Diagnostics: the one type every front-end stage reports problems with, and its renderers.

A stage never raises for a user mistake: it appends `Diagnostic`s and carries on, so a user sees every problem at once.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from flowctl.dsl.characters import editor_lines


@dataclass(frozen=True, slots=True, order=True)
class Span:
    """A 1-based source range. `end_line`/`end_col` are exclusive-end positions (0 when unknown)."""

    file: str
    line: int
    col: int
    end_line: int = 0
    end_col: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    message: str
    span: Span
    severity: Severity = Severity.ERROR
    hint: str = ""
    related: tuple[Span, ...] = field(default=())

    def __str__(self) -> str:
        return f"{self.span}: {self.message} [{self.code}]"

    @property
    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.span.file, self.span.line, self.span.col, self.code, self.message)

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.span.file,
            "line": self.span.line,
            "column": self.span.col,
            "end_line": self.span.end_line,
            "end_column": self.span.end_col,
            "severity": self.severity.value,
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
        }


def finalize(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Sort by position and drop exact duplicates, so output is deterministic."""
    unique = {(d.sort_key, d.severity, d.hint): d for d in diagnostics}
    return sorted(unique.values(), key=lambda d: d.sort_key)


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.severity is Severity.ERROR for d in diagnostics)


# A source line longer than this is shown as a window around the column (a minified 200,000-character line must
# not print a 200,000-column caret).
MAX_SHOWN_LINE = 160
_WINDOW_BEFORE = 60


def render_text(diagnostic: Diagnostic, source: str | None) -> str:
    """`file:line:col: message [code]`, then the source line with a caret under the span, then the hint."""
    lines = [f"{diagnostic.span}: {diagnostic.severity.value}: {diagnostic.message} [{diagnostic.code}]"]
    if source is not None and diagnostic.span.line >= 1:
        source_lines = editor_lines(source)
        if diagnostic.span.line <= len(source_lines):
            lines += _source_excerpt(diagnostic.span, source_lines[diagnostic.span.line - 1])
    if diagnostic.hint:
        lines.append(f"  hint: {diagnostic.hint}")
    return "\n".join(lines)


def _source_excerpt(span: Span, line: str) -> list[str]:
    """The line (or a window of it around the column) and a caret line under the span."""
    text = line.expandtabs(1)
    start = min(max(span.col - 1, 0), len(text))
    width = 1
    if span.end_line == span.line and span.end_col > start + 1:
        width = span.end_col - 1 - start
    if len(text) > MAX_SHOWN_LINE:
        first = max(0, start - _WINDOW_BEFORE)
        last = min(len(text), first + MAX_SHOWN_LINE)
        prefix = "…" if first > 0 else ""
        text = prefix + text[first:last] + ("…" if last < len(text) else "")
        start = start - first + len(prefix)
    width = max(1, min(width, len(text) - start))
    gutter = f"{span.line:>4} | "
    return [f"{gutter}{text}", " " * (len(gutter) + start) + "^" + "~" * (width - 1)]


def render_github(diagnostic: Diagnostic) -> str:
    """A GitHub Actions workflow command: shows as an annotation on the pull request."""
    level = "error" if diagnostic.severity is Severity.ERROR else "warning"
    message = diagnostic.message + (f" (hint: {diagnostic.hint})" if diagnostic.hint else "")
    message = message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    span = diagnostic.span
    props = f"file={span.file},line={span.line},col={span.col},title={diagnostic.code}"
    if span.end_line:
        props += f",endLine={span.end_line},endColumn={span.end_col}"
    return f"::{level} {props}::{message}"


def render_json(diagnostics: Iterable[Diagnostic]) -> str:
    return json.dumps([d.to_json() for d in diagnostics], indent=2)
