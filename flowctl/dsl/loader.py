"""Stage 1, load: YAML text → plain Python document + SourceMap, hardened against hostile input.

We build the document from the parser's event stream rather than PyYAML's composer, because that lets us refuse
aliases, excessive depth and duplicate keys *before* any tree exists, needs no recursion (the pure-Python composer
hits RecursionError near depth 500), and gives a position for every key and value.

Scalars resolve by the YAML 1.2 core schema: only `true`/`false` are booleans (so `on:`/`yes`/`no` stay strings), no
dates, no sexagesimal or YAML 1.1 octal numbers.
"""

from __future__ import annotations

import bisect
import codecs
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowctl.dsl import catalogue as cat
from flowctl.dsl.characters import EDITOR_LINE_BREAK, YAML_ONLY_BREAKS, char_name, first_unusual_space
from flowctl.dsl.diagnostics import Diagnostic, Span

# The C parser gives the same events and marks, about 4x faster; we only use its events (no constructor runs).
_EVENT_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# libyaml 0.2.6 (bundled since PyYAML 6.0.2's wheels) refuses flow nesting past 1000 in its scanner, which reads all
# the brackets ahead before the parser hands us the 65th level; older releases and the pure-Python parser have no
# such limit. So that depth is judged by our own walk on every release, the pure-Python parser decides then.
_LIBYAML_DEPTH_PROBLEM = "maximum nesting depth"

MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 64

JsonPath = tuple[str | int, ...]


@dataclass(slots=True)
class SourceMap:
    """Where each part of the document came from: a JSON path → the span of its value (and of its key)."""

    file: str
    values: dict[JsonPath, Span] = field(default_factory=dict)
    keys: dict[JsonPath, Span] = field(default_factory=dict)
    # the source text of plain scalars that resolved to a non-string (for "quote it: '3.10'" hints)
    raw: dict[JsonPath, str] = field(default_factory=dict)
    # block scalars (`|`, `>`): their text starts on the line after the span's line
    blocks: set[JsonPath] = field(default_factory=set)

    def value(self, path: JsonPath) -> Span:
        """The span of the value at `path`, or of the nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            span = self.values.get(path[:end])
            if span is not None:
                return span
        return Span(self.file, 1, 1)

    def key(self, path: JsonPath) -> Span:
        """The span of the key that introduces `path` (falls back to the value's span)."""
        return self.keys.get(path) or self.value(path)

    def subtree(self, prefix: JsonPath) -> SourceMap:
        """The part of the map under `prefix`, re-rooted: a parser of that part (a fixture inlined in a test file)
        reports positions in this document."""
        n = len(prefix)
        part = SourceMap(self.file)
        part.values = {p[n:]: s for p, s in self.values.items() if p[:n] == prefix}
        part.keys = {p[n:]: s for p, s in self.keys.items() if p[:n] == prefix}
        return part


@dataclass(slots=True)
class LoadedDocument:
    file: str
    source: str
    data: Any
    source_map: SourceMap
    diagnostics: list[Diagnostic]


# YAML 1.2 core schema resolution for plain scalars.
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT10 = re.compile(r"^[-+]?[0-9]+$")
_INT8 = re.compile(r"^0o[0-7]+$")
_INT16 = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")
_STANDARD_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}


# Python refuses to convert longer decimal integers (`sys.set_int_max_str_digits`, 4,300 by default) and the
# conversion is quadratic: the loader refuses them itself, with the same limit whatever the interpreter's setting.
MAX_INT_DIGITS = 4300


class NumberTooLong(ValueError):
    """A plain scalar that resolves to an integer with more than MAX_INT_DIGITS digits."""

    def __init__(self, digits: int) -> None:
        super().__init__(f"an integer with {digits} digits")
        self.digits = digits


def resolve_plain_scalar(text: str) -> Any:
    """The value of a plain (unquoted) scalar; raises NumberTooLong for an integer past MAX_INT_DIGITS digits."""
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT10.match(text):
        digits = len(text.lstrip("+-"))
        if digits > MAX_INT_DIGITS:
            raise NumberTooLong(digits)
        return int(text)
    if _INT8.match(text):
        return int(text[2:], 8)
    if _INT16.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    if _INF.match(text):
        return float("-inf") if text.startswith("-") else float("inf")
    if _NAN.match(text):
        return float("nan")
    return text


class _Positions:
    """Turns the parser's marks into positions as an editor shows them. YAML breaks lines at U+0085, U+2028 and
    U+2029 too, which editors show inline; only in a text that has one are marks recomputed from their index."""

    __slots__ = ("_starts", "file", "marks_are_right", "text")

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self.marks_are_right = not any(c in text for c in YAML_ONLY_BREAKS)
        self._starts: list[int] | None = None

    def at_index(self, index: int) -> tuple[int, int]:
        """1-based (line, column) of a character index, never past the last line (the end of the text, after its
        final line break, is shown at the end of the last line)."""
        if self._starts is None:
            self._starts = [0, *(m.end() for m in EDITOR_LINE_BREAK.finditer(self.text))]
        starts = self._starts
        index = max(0, min(index, len(self.text)))
        line = bisect.bisect_right(starts, index)
        if line > 1 and starts[line - 1] == len(self.text):  # after the final line break
            line -= 1
            return line, len(EDITOR_LINE_BREAK.sub("", self.text[starts[line - 1] :])) + 1
        return line, index - starts[line - 1] + 1

    def point(self, mark: Any) -> tuple[int, int]:
        if self.marks_are_right and mark.index < len(self.text):
            return mark.line + 1, mark.column + 1
        return self.at_index(mark.index)

    def span(self, start: Any, end: Any) -> Span:
        if self.marks_are_right:  # the common case: as the parser counts
            return Span(self.file, start.line + 1, start.column + 1, end.line + 1, end.column + 1)
        (line, col), (end_line, end_col) = self.point(start), self.point(end)
        return Span(self.file, line, col, end_line, end_col)


class _Frame:
    """A mapping or sequence being built, with what we need to place its next child."""

    __slots__ = ("container", "first_key_span", "path", "pending_key")

    def __init__(self, container: dict[str, Any] | list[Any], path: JsonPath) -> None:
        self.container = container
        self.path = path
        self.pending_key: str | None = None
        self.first_key_span: dict[str, Span] = {}


class _Builder:
    def __init__(self, file: str, positions: _Positions) -> None:
        self.file = file
        self.positions = positions
        self.source_map = SourceMap(file)
        self.diagnostics: list[Diagnostic] = []
        self.stack: list[_Frame] = []
        self.root: Any = None
        self.documents = 0

    def child_path(self) -> JsonPath | None:
        """The path of the value about to be added, or None when it is a mapping key."""
        if not self.stack:
            return ()
        frame = self.stack[-1]
        if isinstance(frame.container, list):
            return (*frame.path, len(frame.container))
        if frame.pending_key is None:
            return None
        return (*frame.path, frame.pending_key)

    def add_value(self, value: Any, span: Span, path: JsonPath) -> None:
        self.source_map.values[path] = span
        if not self.stack:
            self.root = value
            return
        frame = self.stack[-1]
        if isinstance(frame.container, list):
            frame.container.append(value)
        else:
            assert frame.pending_key is not None
            frame.container[frame.pending_key] = value
            frame.pending_key = None

    def add_key(self, event: yaml.ScalarEvent, span: Span) -> None:
        frame = self.stack[-1]
        key = event.value
        if not event.style and not isinstance(_resolved_or_number(key), str):
            self.diagnostics.append(cat.yaml_non_string_key(span, key if len(key) <= 60 else key[:59] + "…"))
        first = frame.first_key_span.get(key)
        if first is not None:
            self.diagnostics.append(cat.yaml_duplicate_key(span, key, first))
        else:
            frame.first_key_span[key] = span
        self.source_map.keys[(*frame.path, key)] = span
        frame.pending_key = key

    def check_tag(self, event: Any, span: Span) -> None:
        tag = getattr(event, "tag", None)
        if tag and tag != "!" and tag not in _STANDARD_TAGS:
            self.diagnostics.append(cat.yaml_tag(span, _written_tag(tag)))

    def handle(self, event: Any) -> bool:
        """Consume one event; False stops loading (a fatal problem was reported)."""
        span = self.positions.span(event.start_mark, event.end_mark)
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                self.diagnostics.append(cat.yaml_multiple_documents(span))
                return False
            return True
        if isinstance(event, yaml.AliasEvent):
            self.diagnostics.append(cat.yaml_alias(span))
            return False
        if getattr(event, "anchor", None):
            self.diagnostics.append(cat.yaml_alias(span))
            return False
        if isinstance(event, yaml.ScalarEvent):
            self.check_tag(event, span)
            path = self.child_path()
            if path is None:
                self.add_key(event, span)
            else:
                value: Any = event.value
                if event.style in ("|", ">"):
                    self.source_map.blocks.add(path)
                if not event.style and event.implicit[0]:
                    try:
                        value = resolve_plain_scalar(event.value)
                    except NumberTooLong as exc:  # kept as its text, so later stages see an ordinary value
                        self.diagnostics.append(cat.number_too_long(span, exc.digits, MAX_INT_DIGITS))
                    if not isinstance(value, str):
                        self.source_map.raw[path] = event.value
                self.add_value(value, span, path)
            return True
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            self.check_tag(event, span)
            if len(self.stack) >= MAX_DEPTH:
                self.diagnostics.append(cat.yaml_too_deep(span, MAX_DEPTH))
                return False
            path = self.child_path()
            if path is None:  # a mapping or sequence used as a key
                self.diagnostics.append(cat.yaml_complex_key(span))
                return False
            container: dict[str, Any] | list[Any] = {} if isinstance(event, yaml.MappingStartEvent) else []
            self.add_value(container, span, path)
            self.stack.append(_Frame(container, path))
            return True
        if isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            self.stack.pop()
        return True


def _resolved_or_number(text: str) -> Any:
    """The plain scalar's value, or 0 for an integer too long to convert (it is a number either way)."""
    try:
        return resolve_plain_scalar(text)
    except NumberTooLong:
        return 0


def _written_tag(tag: str) -> str:
    """The tag as the user wrote it: `!!python/object`, not `tag:yaml.org,2002:python/object`."""
    prefix = "tag:yaml.org,2002:"
    return "!!" + tag[len(prefix) :] if tag.startswith(prefix) else tag


def _byte_span(file: str, raw: bytes, offset: int) -> Span:
    """The 1-based line and column (in characters) of a byte offset into UTF-8-ish bytes."""
    line_start = raw.rfind(b"\n", 0, offset) + 1
    column = len(raw[line_start:offset].decode("utf-8", errors="replace")) + 1
    return Span(file, raw.count(b"\n", 0, offset) + 1, column)


def _decode(raw: bytes, file: str) -> tuple[str | None, Diagnostic | None]:
    """UTF-8 (a BOM is dropped), or UTF-16 with its BOM (what Windows PowerShell writes with `>`), as JSON inputs."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16"), None
        except UnicodeDecodeError as exc:
            return None, cat.not_text(Span(file, 1, 1), f"invalid UTF-16 at byte offset {exc.start}; save it as UTF-8")
    if b"\x00" in raw:
        return None, cat.not_text(_byte_span(file, raw, raw.index(b"\x00")), "it contains NUL bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, cat.not_text(_byte_span(file, raw, exc.start), f"invalid UTF-8 byte at offset {exc.start}")
    return text, None


def decode_lenient(raw: bytes) -> str:
    """Text as `load_file` would read it, with undecodable bytes replaced (a look at a file, not a load)."""
    text, _ = _decode(raw, "")
    return text if text is not None else raw.decode("utf-8", errors="replace")


def _unencodable(text: str, file: str) -> Diagnostic | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        span = Span(file, line, exc.start - (text.rfind("\n", 0, exc.start) + 1) + 1)
        return cat.not_text(span, f"unpaired surrogate {text[exc.start]!r}")
    return None


def _syntax_error(exc: yaml.MarkedYAMLError, positions: _Positions) -> Diagnostic:
    """At the problem, naming the construct being parsed when it started on another line. When the text from that
    construct to the problem holds a character an editor shows as a space or as nothing (a no-break space after
    `key:`, a U+2028 that YAML reads as a line break), point at that character and name it."""
    file = positions.file
    mark = exc.problem_mark or exc.context_mark
    span = Span(file, *positions.point(mark)) if mark else Span(file, 1, 1)
    problem = str(exc.problem or exc.context)
    context = exc.context_mark
    if exc.problem and exc.context and context is not None and mark is not None:
        context_line = positions.point(context)[0]
        if context_line != span.line:
            problem += f" ({exc.context} at line {context_line})"
    hint = ""
    if mark is not None:
        start = min(context.index if context is not None else mark.index, mark.index)
        line_start = positions.text.rfind("\n", 0, start) + 1
        odd = first_unusual_space(positions.text, line_start, mark.index + 1)
        if not positions.marks_are_right:  # a line break only YAML sees, before the problem, is the likelier cause
            breaks = [positions.text.rfind(c, 0, mark.index + 1) for c in YAML_ONLY_BREAKS]
            odd = max(breaks) if max(breaks) >= 0 else odd
        if odd is not None:
            char = positions.text[odd]
            line, column = positions.at_index(odd)
            what = "a line break to YAML, although editors show none" if char in YAML_ONLY_BREAKS else "not a space"
            span = Span(file, line, column, line, column + 1)
            problem += f"; {char_name(char)} here is {what}"
            hint = "replace it with a plain space" if what == "not a space" else "remove it"
    return cat.yaml_syntax(span, problem, hint)


def _reader_error(exc: yaml.reader.ReaderError, text: str, file: str, loader: type) -> Diagnostic:
    """A character YAML refuses (e.g. a control character). The C reader counts bytes, the Python one characters."""
    if loader is yaml.SafeLoader:
        position = len(text[: exc.position].encode("utf-8", errors="surrogatepass"))
    else:
        position = exc.position
    character = exc.character if isinstance(exc.character, str) else chr(exc.character)
    problem = f"character {character!r} is not allowed ({exc.reason})"
    return cat.yaml_syntax(_byte_span(file, text.encode("utf-8", errors="surrogatepass"), position), problem)


def load_text(text: str, file: str, *, event_loader: type | None = None) -> LoadedDocument:
    """Load pipeline YAML from text. Never raises for bad input: problems come back as diagnostics.

    `event_loader` picks the YAML parser (the C one when PyYAML has it); the result is the same with either."""
    loader = event_loader or _EVENT_LOADER
    unencodable = _unencodable(text, file)
    if unencodable is not None:  # lone surrogates: the parser would raise UnicodeEncodeError
        return LoadedDocument(file, text, None, SourceMap(file), [unencodable])
    positions = _Positions(file, text)
    builder = _Builder(file, positions)
    try:
        for event in yaml.parse(text, Loader=loader):
            if not builder.handle(event):
                break
    except yaml.MarkedYAMLError as exc:
        if loader is not yaml.SafeLoader and _LIBYAML_DEPTH_PROBLEM in str(exc.problem):
            return load_text(text, file, event_loader=yaml.SafeLoader)
        builder.diagnostics.append(_syntax_error(exc, positions))
        return LoadedDocument(file, text, None, builder.source_map, builder.diagnostics)
    except yaml.reader.ReaderError as exc:
        builder.diagnostics.append(_reader_error(exc, text, file, loader))
        return LoadedDocument(file, text, None, builder.source_map, builder.diagnostics)
    except yaml.YAMLError as exc:  # anything else the parser may raise
        builder.diagnostics.append(cat.yaml_syntax(Span(file, 1, 1), str(exc).splitlines()[0]))
        return LoadedDocument(file, text, None, builder.source_map, builder.diagnostics)
    if builder.root is None and not builder.diagnostics:
        builder.diagnostics.append(cat.empty_document(file))
    return LoadedDocument(file, text, builder.root, builder.source_map, builder.diagnostics)


def load_file(path: str | Path, display_name: str | None = None) -> LoadedDocument:
    """Load a pipeline file, refusing files over the size cap and files that are not UTF-8 text."""
    path = Path(path)
    name = display_name or str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return LoadedDocument(name, "", None, SourceMap(name), [cat.file_too_large(name, size, MAX_FILE_BYTES)])
        raw = path.read_bytes()
    except OSError as exc:
        return LoadedDocument(name, "", None, SourceMap(name), [cat.file_unreadable(name, exc.strerror or str(exc))])
    text, problem = _decode(raw, name)
    if problem is not None or text is None:
        return LoadedDocument(name, "", None, SourceMap(name), [problem] if problem else [])
    return load_text(text, name)
