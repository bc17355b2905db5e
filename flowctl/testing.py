"""`flowctl test`: pipelines tested in isolation, with scripted models and tools, offline and without an API key.

A test file (`NAME.test.yaml`, or any `*.test.yaml`) names a pipeline and lists cases; each case gives inputs,
scripted model replies and tool results (a fixture file and/or inline rules), optional external signals, and
expectations on the run's status, outputs, state, events, steps and error. The user reference is docs/testing.md.

Stages, in plain sight: load every test file with the hardened loader and check it (problems are diagnostics with
file:line:col, exit 2) → compile each pipeline once → run each case with `run_graph` on an in-memory store →
compare the outcome with the expectations → report (text or JSON). Exit codes: 0 all passed, 1 any failed, 2 usage
problem or invalid files.

Only click is imported at module level, so registering the command keeps `flowctl --version` fast.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_CASE_TIMEOUT = 60.0
TEST_FILE_SUFFIXES = (".test.yaml", ".test.yml")
_SKIP_DIRS = {"node_modules", "__pycache__", "venv"}

_FILE_KEYS = ("pipeline", "description", "fixture", "inputs", "cases")
_CASE_KEYS = (
    "name",
    "description",
    "inputs",
    "fixture",
    "responses",
    "default",
    "tools",
    "signals",
    "timeout",
    "expect",
)
_SIGNAL_KEYS = ("event", "data", "after")
_EXPECT_KEYS = ("status", "outputs", "state", "events", "steps", "error")
_EVENT_KEYS = ("name", "data", "source")
_RUN_STATUSES = ("succeeded", "failed")
_STEP_STATUSES = ("succeeded", "failed", "skipped", "pending")
_STEP_FIELDS = ("status", "output", "error", "attempts")
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}
REGEX_PREFIX = "=~ "


# --- matchers: what an expectation compiles to ------------------------------------------------------------------


class Pattern:
    """An expected value. `check` returns mismatches as (path, message) pairs; empty when the value matches."""

    def check(self, actual: Any, path: str) -> list[tuple[str, str]]:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Exact(Pattern):
    value: Any

    def check(self, actual: Any, path: str) -> list[tuple[str, str]]:
        return [] if _same(self.value, actual) else [(path, f"expected {_show(self.value)}, got {_show(actual)}")]


@dataclass(frozen=True, slots=True)
class MapPattern(Pattern):
    """Subset match: every expected key must be present and match; other keys are ignored. `{}` matches `{}` only."""

    items: tuple[tuple[str, Pattern], ...]

    def check(self, actual: Any, path: str) -> list[tuple[str, str]]:
        if not isinstance(actual, dict):
            return [(path, f"expected a mapping, got {_show(actual)}")]
        if not self.items and actual:  # `{}` means an empty mapping, not "any mapping"
            return [(path, f"expected an empty mapping, got {_show(actual)}")]
        problems: list[tuple[str, str]] = []
        for key, pattern in self.items:
            where = _join(path, key)
            if key not in actual:
                known = ", ".join(map(repr, list(actual)[:10])) or "none"
                problems.append((where, f"missing (keys present: {known})"))
            else:
                problems.extend(pattern.check(actual[key], where))
        return problems


@dataclass(frozen=True, slots=True)
class ListPattern(Pattern):
    """Same length, and each element matches (elements that are mappings match as subsets)."""

    items: tuple[Pattern, ...]

    def check(self, actual: Any, path: str) -> list[tuple[str, str]]:
        if not isinstance(actual, list | tuple):
            return [(path, f"expected a list, got {_show(actual)}")]
        if len(actual) != len(self.items):
            return [(path, f"expected a list of {len(self.items)} item(s), got {len(actual)}: {_show(actual)}")]
        problems: list[tuple[str, str]] = []
        for i, (pattern, value) in enumerate(zip(self.items, actual, strict=True)):
            problems.extend(pattern.check(value, f"{path}[{i}]"))
        return problems


@dataclass(frozen=True, slots=True)
class Operators(Pattern):
    """`{$op: arg, ...}` (all must hold) or the `"=~ regex"` shorthand."""

    ops: tuple[tuple[str, Any], ...]

    def check(self, actual: Any, path: str) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        for op, arg in self.ops:
            problems.extend(_OPERATORS[op](arg, actual, path))
        return problems


def _op_regex(pattern: re.Pattern[str], actual: Any, path: str) -> list[tuple[str, str]]:
    if not isinstance(actual, str):
        return [(path, f"expected a string matching /{pattern.pattern}/, got {_show(actual)}")]
    if pattern.search(actual) is None:
        return [(path, f"expected a match for /{pattern.pattern}/, got {_show(actual)}")]
    return []


def _op_compare(symbol: str) -> Any:
    compare = {
        "$gt": lambda a, b: a > b,
        "$gte": lambda a, b: a >= b,
        "$lt": lambda a, b: a < b,
        "$lte": lambda a, b: a <= b,
    }[symbol]
    shown = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[symbol]

    def check(limit: Any, actual: Any, path: str) -> list[tuple[str, str]]:
        if not _is_number(actual):
            return [(path, f"expected a number {shown} {limit}, got {_show(actual)}")]
        return [] if compare(actual, limit) else [(path, f"expected a number {shown} {limit}, got {_show(actual)}")]

    return check


def _op_len(pattern: Pattern, actual: Any, path: str) -> list[tuple[str, str]]:
    if not isinstance(actual, str | list | tuple | dict):
        return [(path, f"expected something with a length, got {_show(actual)}")]
    return pattern.check(len(actual), f"{path} (length)")


def _op_contains(pattern: Pattern, actual: Any, path: str) -> list[tuple[str, str]]:
    if isinstance(actual, str) and isinstance(pattern, Exact) and isinstance(pattern.value, str):
        if pattern.value in actual:
            return []
        return [(path, f"expected a string containing {_show(pattern.value)}, got {_show(actual)}")]
    if isinstance(actual, list | tuple):
        if any(not pattern.check(item, path) for item in actual):
            return []
        return [(path, f"expected a list with an item matching {_describe(pattern)}, got {_show(actual)}")]
    return [(path, f"expected a list or a string to search, got {_show(actual)}")]


def _op_type(names: tuple[str, ...], actual: Any, path: str) -> list[tuple[str, str]]:
    for name in names:
        ok = isinstance(actual, _TYPES[name]) and not (name in ("number", "integer") and isinstance(actual, bool))
        if ok:
            return []
    return [(path, f"expected type {' or '.join(names)}, got {_show(actual)}")]


def _op_any(_arg: Any, _actual: Any, _path: str) -> list[tuple[str, str]]:
    return []


def _op_eq(value: Any, actual: Any, path: str) -> list[tuple[str, str]]:
    return Exact(value).check(actual, path)


def _op_ne(value: Any, actual: Any, path: str) -> list[tuple[str, str]]:
    return [(path, f"expected anything but {_show(value)}")] if _same(value, actual) else []


def _op_not(pattern: Pattern, actual: Any, path: str) -> list[tuple[str, str]]:
    return [] if pattern.check(actual, path) else [(path, f"expected no match for {_describe(pattern)}")]


_OPERATORS: dict[str, Any] = {
    "$regex": _op_regex,
    "$eq": _op_eq,
    "$ne": _op_ne,
    "$gt": _op_compare("$gt"),
    "$gte": _op_compare("$gte"),
    "$lt": _op_compare("$lt"),
    "$lte": _op_compare("$lte"),
    "$len": _op_len,
    "$contains": _op_contains,
    "$type": _op_type,
    "$any": _op_any,
    "$not": _op_not,
}


def _describe(pattern: Pattern) -> str:
    if isinstance(pattern, Exact):
        return _show(pattern.value)
    if isinstance(pattern, Operators):
        return ", ".join(
            f"/{a.pattern}/" if op == "$regex" else f"{op} {_describe(a) if isinstance(a, Pattern) else a}"
            for op, a in pattern.ops
        )
    return type(pattern).__name__


# --- the test file model ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Signal:
    event: str
    data: Any
    after: float


@dataclass(slots=True)
class Expect:
    status: str
    outputs: Pattern | None = None
    state: Pattern | None = None
    events: list[tuple[str, Pattern | None]] = field(default_factory=list)  # (name, pattern of the whole event)
    steps: dict[str, Pattern] = field(default_factory=dict)
    error: Pattern | None = None


@dataclass(slots=True)
class Case:
    file: str
    name: str
    line: int
    graph: Any  # the compiled pipeline (flowctl.dsl.ir.Graph), shared by the cases that test it
    inputs: dict[str, Any]
    fixture: Any  # a scripted Fixture (never None: an unscripted model call must fail, not reach a real API)
    signals: list[Signal]
    expect: Expect
    timeout: float

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}"


@dataclass(slots=True)
class CaseResult:
    case: Case
    passed: bool
    duration: float
    run_id: str = ""
    run_status: str = ""
    error: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.case.file,
            "name": self.case.name,
            "line": self.case.line,
            "status": "passed" if self.passed else "failed",
            "duration": round(self.duration, 4),
            "run_id": self.run_id,
            "run_status": self.run_status,
            "error": self.error or None,
            "failures": [{"path": p, "message": m} for p, m in self.failures],
        }


# --- finding and loading test files -----------------------------------------------------------------------------


def find_test_files(paths: tuple[str, ...]) -> list[Path]:
    """Named files are taken as given; folders are searched for `*.test.yaml` (hidden folders and venvs skipped)."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if not path.is_dir():
            files.append(path)
            continue
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
            files.extend(Path(root) / n for n in sorted(names) if n.endswith(TEST_FILE_SUFFIXES))
    unique: dict[str, Path] = {}
    for file in files:
        unique.setdefault(str(file.resolve()), file)
    return list(unique.values())


class _Checker:
    """Turns one loaded test file into Cases, collecting every problem as a Diagnostic with its position."""

    def __init__(self, doc: Any, path: Path, pipelines: _PipelineCache) -> None:
        from flowctl.dsl import catalogue

        self.cat = catalogue
        self.doc = doc
        self.map = doc.source_map
        self.path = path
        self.base = path.parent
        self.pipelines = pipelines
        self.diagnostics: list[Any] = []

    # helpers -------------------------------------------------------------------------------------------------

    def span(self, path: tuple[Any, ...]) -> Any:
        return self.map.value(path)

    def problem(self, path: tuple[Any, ...], message: str, hint: str = "", *, key: bool = False) -> None:
        span = self.map.key(path) if key else self.map.value(path)
        self.diagnostics.append(self.cat.invalid_value(span, message, hint))

    def wrong_type(self, path: tuple[Any, ...], expected: str, value: Any) -> None:
        self.diagnostics.append(self.cat.wrong_type(self.span(path), f"{expected} for {_where(path)}", _kind(value)))

    def mapping(self, value: Any, path: tuple[Any, ...], allowed: tuple[str, ...], where: str) -> dict | None:
        if not isinstance(value, dict):
            self.wrong_type(path, "a mapping", value)
            return None
        for key in value:
            if key not in allowed:
                self.diagnostics.append(self.cat.unknown_key(self.map.key((*path, key)), key, allowed, where))
        return value

    def duration(self, value: Any, path: tuple[Any, ...], default: float) -> float:
        from flowctl.dsl.compile import parse_duration

        if value is None:
            return default
        try:
            if isinstance(value, bool):
                raise ValueError
            seconds = parse_duration(value)
        except ValueError:
            self.problem(path, f"not a duration: {value!r}", "use 500ms, 30s, 5m, 1h or a number of seconds")
            return default
        return default if seconds is None else seconds

    # the file ------------------------------------------------------------------------------------------------

    def cases(self) -> list[Case]:
        top = self.mapping(self.doc.data, (), _FILE_KEYS, "the test file")
        if top is None:
            return []
        graph = self.pipeline(top)
        base_fixture = self.fixture_file(top.get("fixture"), ("fixture",))
        shared_inputs = top.get("inputs") or {}
        if not isinstance(shared_inputs, dict):
            self.wrong_type(("inputs",), "a mapping of input values", shared_inputs)
            shared_inputs = {}
        raw_cases = top.get("cases")
        if not isinstance(raw_cases, list) or not raw_cases:
            if "cases" not in top:
                self.diagnostics.append(self.cat.missing_key(self.span(()), "cases", "the test file"))
            else:
                self.wrong_type(("cases",), "a non-empty list of cases", raw_cases)
            return []
        cases: list[Case] = []
        seen: dict[str, Any] = {}
        for i, raw in enumerate(raw_cases):
            case = self.case(raw, ("cases", i), graph, base_fixture, shared_inputs)
            if case is None:
                continue
            if case.name in seen:
                first = seen[case.name]
                self.diagnostics.append(self.cat.duplicate_id(self.span(("cases", i, "name")), case.name, first))
                continue
            seen[case.name] = self.span(("cases", i, "name"))
            cases.append(case)
        return cases

    def pipeline(self, top: dict[str, Any]) -> Any:
        ref = top.get("pipeline")
        if ref is None:
            target = _default_pipeline(self.path)
            if target is None or not target.is_file():
                hint = f"or add {target.name} next to this file" if target is not None else ""
                self.diagnostics.append(self.cat.missing_key(self.span(()), "pipeline", "the test file"))
                self.diagnostics[-1] = _with_hint(self.diagnostics[-1], hint)
                return None
        elif not isinstance(ref, str):
            self.wrong_type(("pipeline",), "a file path", ref)
            return None
        else:
            target = self.base / ref
            if not target.is_file():
                self.problem(("pipeline",), f"pipeline file not found: {ref!r} (relative to {self.base})")
                return None
        graph, errors = self.pipelines.get(target)
        if graph is None:
            where = ("pipeline",) if ref is not None else ()
            self.problem(where, f"pipeline {_display(target)} is invalid ({errors} error(s)); no case can run")
        return graph

    def fixture_file(self, ref: Any, path: tuple[Any, ...]) -> Any:
        from flowctl.interpreter.scripted import FixtureError, load_fixture

        if ref is None:
            return None
        if not isinstance(ref, str):
            self.wrong_type(path, "a fixture file path", ref)
            return None
        target = self.base / ref
        if not target.is_file():
            self.problem(path, f"fixture file not found: {ref!r} (relative to {self.base})")
            return None
        try:
            return load_fixture(target)
        except FixtureError as exc:
            self.diagnostics.extend(exc.diagnostics)
            return None

    # one case ------------------------------------------------------------------------------------------------

    def case(
        self, raw: Any, path: tuple[Any, ...], graph: Any, base_fixture: Any, shared: dict[str, Any]
    ) -> Case | None:
        data = self.mapping(raw, path, _CASE_KEYS, "a test case")
        if data is None:
            return None
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            if "name" not in data:
                self.diagnostics.append(self.cat.missing_key(self.span(path), "name", "a test case"))
            else:
                self.wrong_type((*path, "name"), "a non-empty string", name)
            return None
        inputs = data.get("inputs") or {}
        if not isinstance(inputs, dict):
            self.wrong_type((*path, "inputs"), "a mapping of input values", inputs)
            inputs = {}
        fixture = base_fixture
        if "fixture" in data:
            fixture = self.fixture_file(data["fixture"], (*path, "fixture"))
        fixture = self.inline_fixture(data, path, fixture)
        expect = self.expect(data.get("expect"), (*path, "expect"), graph)
        signals = self.signals(data.get("signals"), (*path, "signals"))
        timeout = self.duration(data.get("timeout"), (*path, "timeout"), DEFAULT_CASE_TIMEOUT)
        if graph is None or expect is None or fixture is None:
            return None
        return Case(
            file=self.doc.file,
            name=name,
            line=self.span(path).line,
            graph=graph,
            inputs={**shared, **inputs},
            fixture=fixture,
            signals=signals,
            expect=expect,
            timeout=timeout,
        )

    def inline_fixture(self, data: dict[str, Any], path: tuple[Any, ...], base: Any) -> Any:
        """Inline `responses`/`default`/`tools` are tried before the fixture file's rules and override its tools."""
        from flowctl.interpreter.scripted import Fixture, FixtureError, _Parser

        inline = {key: data[key] for key in ("responses", "default", "tools") if key in data}
        if not inline:
            return base if base is not None else Fixture(self.doc.file)
        try:
            own = _Parser(_sub_map(self.map, path)).fixture(inline)
        except FixtureError as exc:
            self.diagnostics.extend(exc.diagnostics)
            return None
        if base is None:
            return own
        import dataclasses

        shifted = tuple(dataclasses.replace(r, index=r.index + len(own.rules)) for r in base.rules)
        return Fixture(
            f"{self.doc.file} + {base.file}",
            own.rules + shifted,
            own.default if own.default is not None else base.default,
            {**base.tools, **own.tools},
        )

    def signals(self, raw: Any, path: tuple[Any, ...]) -> list[Signal]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.wrong_type(path, "a list of signals", raw)
            return []
        signals = []
        for i, item in enumerate(raw):
            data = self.mapping(item, (*path, i), _SIGNAL_KEYS, "a signal")
            if data is None:
                continue
            if not isinstance(data.get("event"), str) or not data["event"]:
                self.diagnostics.append(self.cat.missing_key(self.span((*path, i)), "event", "a signal"))
                continue
            signals.append(Signal(data["event"], data.get("data"), self.duration(data.get("after"), (*path, i), 0.0)))
        return signals

    # expectations --------------------------------------------------------------------------------------------

    def expect(self, raw: Any, path: tuple[Any, ...], graph: Any) -> Expect | None:
        data = {} if raw is None else self.mapping(raw, path, _EXPECT_KEYS, "expect")
        if data is None:
            return None
        status = data.get("status", "failed" if "error" in data else "succeeded")
        if status not in _RUN_STATUSES:
            self.problem((*path, "status"), f"unknown run status {status!r}", "use succeeded or failed")
        expect = Expect(status)
        if "outputs" in data:
            expect.outputs = self.names_pattern(data["outputs"], (*path, "outputs"), graph, "outputs")
        if "state" in data:
            expect.state = self.names_pattern(data["state"], (*path, "state"), graph, "state")
        if "events" in data:
            expect.events = self.events(data["events"], (*path, "events"))
        if "steps" in data:
            expect.steps = self.steps(data["steps"], (*path, "steps"), graph)
        if "error" in data:
            error = data["error"]
            if isinstance(error, str) and not error.startswith(REGEX_PREFIX):
                expect.error = Operators((("$contains", Exact(error)),))
            else:
                expect.error = self.pattern(error, (*path, "error"))
        return expect

    def names_pattern(self, raw: Any, path: tuple[Any, ...], graph: Any, what: str) -> Pattern | None:
        """`outputs:`/`state:` patterns, whose top-level names must exist in the pipeline (did-you-mean)."""
        if not isinstance(raw, dict):
            self.wrong_type(path, f"a mapping of {what} names to expected values", raw)
            return None
        if graph is not None:
            known = [name for name, _ in graph.root.outputs] if what == "outputs" else list(graph.root.state)
            for name in raw:
                if name not in known:
                    self.diagnostics.append(
                        self.cat.unknown_key(self.map.key((*path, name)), name, known, f"the pipeline's {what}")
                    )
        return self.pattern(raw, path)

    def events(self, raw: Any, path: tuple[Any, ...]) -> list[tuple[str, Pattern | None]]:
        if not isinstance(raw, list):
            self.wrong_type(path, "a list of event names (or {name, data, source} mappings)", raw)
            return []
        events: list[tuple[str, Pattern | None]] = []
        for i, item in enumerate(raw):
            if isinstance(item, str):
                events.append((item, None))
                continue
            data = self.mapping(item, (*path, i), _EVENT_KEYS, "an expected event")
            if data is None:
                continue
            if not isinstance(data.get("name"), str):
                self.diagnostics.append(self.cat.missing_key(self.span((*path, i)), "name", "an expected event"))
                continue
            events.append((data["name"], self.pattern(data, (*path, i))))
        return events

    def steps(self, raw: Any, path: tuple[Any, ...], graph: Any) -> dict[str, Pattern]:
        if not isinstance(raw, dict):
            self.wrong_type(path, "a mapping of step ids to a status or {status, output, error, attempts}", raw)
            return {}
        known = [s.id for s in graph.root.all_steps()] if graph is not None else None
        steps: dict[str, Pattern] = {}
        for step_id, value in raw.items():
            where = (*path, step_id)
            if known is not None and step_id not in known:
                self.diagnostics.append(
                    self.cat.unknown_key(self.map.key(where), step_id, known, "the pipeline's steps")
                )
                continue
            if isinstance(value, str) and not value.startswith(REGEX_PREFIX):
                if value not in _STEP_STATUSES:
                    self.problem(where, f"unknown step status {value!r}", "use " + ", ".join(_STEP_STATUSES))
                    continue
                steps[step_id] = MapPattern((("status", Exact(value)),))
                continue
            data = self.mapping(value, where, _STEP_FIELDS, f"the expectations of step {step_id!r}")
            if data is not None:
                status = data.get("status")
                if isinstance(status, str) and not status.startswith(REGEX_PREFIX) and status not in _STEP_STATUSES:
                    self.problem((*where, "status"), f"unknown step status {status!r}")
                pattern = self.pattern(data, where)
                if pattern is not None:
                    steps[step_id] = pattern
        return steps

    def pattern(self, raw: Any, path: tuple[Any, ...]) -> Pattern | None:
        """Compile an expected value: `=~ regex` strings, `{$op: arg}` mappings, subset mappings, lists, scalars."""
        if isinstance(raw, str) and raw.startswith(REGEX_PREFIX):
            regex = self.regex(raw[len(REGEX_PREFIX) :], path)
            return Operators((("$regex", regex),)) if regex is not None else None
        if isinstance(raw, dict):
            operators = [k for k in raw if isinstance(k, str) and k.startswith("$")]
            if operators:
                return self.operators(raw, path, operators)
            items = [(key, self.pattern(value, (*path, key))) for key, value in raw.items()]
            return MapPattern(tuple((k, p) for k, p in items if p is not None))
        if isinstance(raw, list):
            elements = [self.pattern(value, (*path, i)) for i, value in enumerate(raw)]
            return ListPattern(tuple(p if p is not None else Operators((("$any", True),)) for p in elements))
        if isinstance(raw, float) and math.isnan(raw):
            self.problem(path, "NaN never equals anything; use {$type: number}")
            return None
        return Exact(raw)

    def operators(self, raw: dict[str, Any], path: tuple[Any, ...], operators: list[str]) -> Pattern | None:
        if len(operators) != len(raw):
            plain = [k for k in raw if k not in operators]
            self.problem(
                path, f"a mapping cannot mix operators ({', '.join(operators)}) with keys ({', '.join(plain)})"
            )
            return None
        ops: list[tuple[str, Any]] = []
        for op, arg in raw.items():
            where = (*path, op)
            if op not in _OPERATORS:
                hint = self.cat.did_you_mean(op, _OPERATORS) or "operators: " + ", ".join(_OPERATORS)
                self.problem(where, f"unknown operator {op!r}", hint, key=True)
            elif op == "$regex":
                regex = self.regex(arg, where) if isinstance(arg, str) else None
                if not isinstance(arg, str):
                    self.wrong_type(where, "a string", arg)
                if regex is not None:
                    ops.append((op, regex))
            elif op in ("$gt", "$gte", "$lt", "$lte"):
                if _is_number(arg):
                    ops.append((op, arg))
                else:
                    self.wrong_type(where, "a number", arg)
            elif op == "$type":
                names = (arg,) if isinstance(arg, str) else tuple(arg) if isinstance(arg, list) else ()
                bad = [n for n in names if n not in _TYPES] if names else [repr(arg)]
                if bad:
                    self.problem(where, f"unknown type {bad[0]!r}", "types: " + ", ".join(_TYPES))
                else:
                    ops.append((op, names))
            elif op in ("$len", "$contains", "$not"):
                sub = self.pattern(arg, where)
                if sub is not None:
                    ops.append((op, sub))
            else:  # $eq, $ne (literal values, no operators inside), $any
                ops.append((op, arg))
        return Operators(tuple(ops)) if len(ops) == len(raw) else None

    def regex(self, text: str, path: tuple[Any, ...]) -> re.Pattern[str] | None:
        try:
            return re.compile(text)
        except re.error as exc:
            self.problem(path, f"not a valid regular expression: {exc}")
            return None


class _PipelineCache:
    """Each pipeline is validated and compiled once; its diagnostics are kept for the report."""

    def __init__(self) -> None:
        self.graphs: dict[str, tuple[Any, int]] = {}
        self.diagnostics: list[tuple[Any, str | None]] = []  # (diagnostic, source text)

    def get(self, path: Path) -> tuple[Any, int]:
        from flowctl.dsl.diagnostics import Severity
        from flowctl.dsl.frontend import load_pipeline

        key = str(path.resolve())
        if key not in self.graphs:
            graph, diagnostics, front = load_pipeline(path)
            sources = front.sources()
            errors = [d for d in diagnostics if d.severity is Severity.ERROR]
            if graph is None:
                self.diagnostics.extend((d, sources.get(d.span.file)) for d in errors)
            self.graphs[key] = (graph, len(errors))
        return self.graphs[key]


def load_cases(files: list[Path], selector: str | None) -> tuple[list[Case], list[tuple[Any, str | None]], int]:
    """Every case of every file (selected by `selector`, a lowercase substring of `FILE::NAME`), the problems found
    (diagnostic, source text) and the number of cases left out by the selector."""
    from flowctl.dsl.diagnostics import finalize, has_errors
    from flowctl.dsl.loader import load_file

    pipelines = _PipelineCache()
    cases: list[Case] = []
    problems: list[tuple[Any, str | None]] = []
    total = 0
    for path in files:
        doc = load_file(path, _display(path))
        if doc.data is None or has_errors(doc.diagnostics):
            problems.extend((d, doc.source) for d in finalize(doc.diagnostics))
            continue
        checker = _Checker(doc, path, pipelines)
        everything = checker.cases()
        total += len(everything)
        selected = [c for c in everything if selector is None or selector in c.id.lower()]
        cases.extend(selected)
        problems.extend((d, doc.source if d.span.file == doc.file else None) for d in finalize(checker.diagnostics))
    problems = pipelines.diagnostics + problems
    return cases, problems, total - len(cases)


# --- running ----------------------------------------------------------------------------------------------------


async def run_case(case: Case, verbose: bool = False) -> CaseResult:
    """Run one case on a fresh in-memory store and compare the outcome with its expectations."""
    import anyio

    from flowctl.interpreter.errors import FlowctlError
    from flowctl.interpreter.progress import LineReporter, Reporter
    from flowctl.interpreter.runner import RunOptions, run_graph
    from flowctl.interpreter.sqlite_store import SqliteRunStore, new_run_id

    started = time.monotonic()
    run_id = new_run_id()
    reporter = LineReporter() if verbose else Reporter()
    options = RunOptions(scripted=case.fixture, reporter=reporter)
    store = SqliteRunStore(":memory:")
    outcome: Any = None
    error: FlowctlError | None = None
    try:
        with anyio.fail_after(case.timeout):
            async with anyio.create_task_group() as tg:
                for signal in case.signals:
                    tg.start_soon(_send_signal, store, run_id, signal)
                try:
                    outcome = await run_graph(case.graph, case.inputs, store, options, run_id=run_id)
                except FlowctlError as exc:  # invalid inputs: nothing ran
                    error = exc
                tg.cancel_scope.cancel()
    except TimeoutError:
        result = CaseResult(case, False, time.monotonic() - started, run_id, "timeout")
        result.failures.append(("run", f"did not finish within the case timeout of {case.timeout:g}s"))
        return result
    finally:
        store.close()
    failures = compare(case.expect, outcome, error)
    run_error = outcome.error if outcome is not None else error
    return CaseResult(
        case,
        not failures,
        time.monotonic() - started,
        run_id,
        outcome.status.value if outcome is not None else "failed",
        str(run_error) if run_error is not None else "",
        failures,
    )


async def _send_signal(store: Any, run_id: str, signal: Signal) -> None:
    """Deliver an external signal the way `flowctl signal` does: through the run store, once the run exists."""
    import anyio

    await anyio.sleep(signal.after)
    while store.get_run(run_id) is None:
        await anyio.sleep(0.005)
    store.send_signal(run_id, signal.event, signal.data)


def compare(expect: Expect, outcome: Any, error: Any) -> list[tuple[str, str]]:
    """Every difference between the expectations and the outcome, as (path, message)."""
    failures: list[tuple[str, str]] = []
    status = outcome.status.value if outcome is not None else "failed"
    run_error = outcome.error if outcome is not None else error
    if status != expect.status:
        detail = f": {_first_line(str(run_error))}" if run_error is not None else ""
        failures.append(("status", f"expected {expect.status!r}, got {status!r}{detail}"))
    if expect.error is not None:
        if run_error is None:
            failures.append(("error", f"expected an error matching {_describe(expect.error)}, but the run had none"))
        elif isinstance(expect.error, MapPattern):  # {code, message, cause, step, ...}
            failures.extend(expect.error.check(_error_json(run_error), "error"))
        else:
            failures.extend(expect.error.check(str(run_error), "error"))
    if outcome is None:  # invalid inputs: nothing ran, every step is still pending
        from types import SimpleNamespace

        outcome = SimpleNamespace(outputs=None, state={}, events=[], steps={})
    if expect.outputs is not None:
        if outcome.outputs is None:
            failures.append(("outputs", "the run produced no outputs (it failed before computing them)"))
        else:
            failures.extend(expect.outputs.check(outcome.outputs, "outputs"))
    if expect.state is not None:
        failures.extend(expect.state.check(outcome.state, "state"))
    failures.extend(_compare_events(expect.events, outcome.events))
    for step_id, pattern in expect.steps.items():
        record = outcome.steps.get(step_id, {"status": "pending", "output": None, "error": None, "attempts": 0})
        failures.extend(pattern.check(record, f"steps.{step_id}"))
    return failures


def _compare_events(expected: list[tuple[str, Pattern | None]], actual: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Expected events must occur in this order; other events may come between them."""
    position = 0
    for i, (name, pattern) in enumerate(expected):
        while position < len(actual):
            event = actual[position]
            position += 1
            if event["name"] == name and (pattern is None or not pattern.check(event, "")):
                break
        else:
            seen = ", ".join(e["name"] for e in actual) or "none"
            after = f" after {expected[i - 1][0]!r}" if i else ""
            what = f"{name!r}" + (f" with {_describe_event(pattern)}" if pattern is not None else "")
            return [(f"events[{i}]", f"expected event {what}{after}; events in order: {seen}")]
    return []


def _describe_event(pattern: Pattern) -> str:
    if isinstance(pattern, MapPattern):
        return ", ".join(f"{k} {_describe(p)}" for k, p in pattern.items if k != "name") or "any payload"
    return _describe(pattern)


# --- reporting --------------------------------------------------------------------------------------------------


def _render_text(results: list[CaseResult], deselected: int) -> None:
    current = None
    for result in results:
        if result.case.file != current:
            current = result.case.file
            click.echo(current)
        mark = "✓" if result.passed else "✗"
        click.echo(f"  {mark} {result.case.name} ({result.duration:.2f}s)")
        if result.passed:
            continue
        click.echo(f"      at {result.case.file}:{result.case.line}, run {result.run_id} {result.run_status}")
        for path, message in result.failures:
            click.echo(f"      {path}: {message}")
        if result.error and not any(p in ("status", "error") for p, _ in result.failures):
            click.echo(f"      run error: {_first_line(result.error)}")
    if deselected:
        click.echo(f"({deselected} case(s) deselected by -k)")


def _summary(results: list[CaseResult]) -> str:
    passed = sum(r.passed for r in results)
    return f"{passed} passed, {len(results) - passed} failed"


def _report_problems(problems: list[tuple[Any, str | None]], fmt: str) -> None:
    from flowctl.dsl.diagnostics import render_text

    if fmt == "json":
        click.echo(json.dumps({"errors": [d.to_json() for d, _ in problems]}, indent=2))
        return
    for diagnostic, source in problems:
        click.echo(render_text(diagnostic, source), err=True)
    click.echo(f"{len(problems)} problem(s) in test files or pipelines; no case was run", err=True)


@click.command("test")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one document with every case (the summary line goes to stderr).",
)
@click.option("-k", "pattern", metavar="PATTERN", help="Only cases whose FILE::NAME contains PATTERN (any case).")
@click.option("-v", "--verbose", is_flag=True, help="Show each run's progress on stderr.")
def test_command(paths: tuple[str, ...], fmt: str, pattern: str | None, verbose: bool) -> None:
    """Run pipeline test cases (`*.test.yaml`) with scripted models and tools, offline.

    PATHS are test files or folders (searched for *.test.yaml); default: the current folder.
    Exit codes: 0 all passed, 1 a case failed, 2 invalid test files or pipelines, or nothing to run.
    """
    import anyio

    files = find_test_files(paths or (".",))
    if not files:
        raise click.UsageError("no test files found (test files are named *.test.yaml)")
    selector = pattern.lower() if pattern else None
    cases, problems, deselected = load_cases(files, selector)
    if problems:
        _report_problems(problems, fmt)
        sys.exit(EXIT_USAGE)
    if not cases:
        click.echo("no test cases selected" + (f" by -k {pattern!r}" if pattern else ""), err=True)
        sys.exit(EXIT_USAGE)

    async def run_all() -> list[CaseResult]:
        return [await run_case(case, verbose) for case in cases]

    results = anyio.run(run_all)
    summary = _summary(results)
    if fmt == "json":
        passed = sum(r.passed for r in results)
        document = {
            "cases": [r.to_json() for r in results],
            "passed": passed,
            "failed": len(results) - passed,
            "deselected": deselected,
        }
        click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=str))
        click.echo(summary, err=True)
    else:
        _render_text(results, deselected)
        click.echo(summary)
    sys.exit(EXIT_OK if all(r.passed for r in results) else EXIT_FAILED)


# --- small helpers ----------------------------------------------------------------------------------------------


def _same(expected: Any, actual: Any) -> bool:
    """Equality that does not confuse booleans with numbers (YAML `1` must not match `true`)."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(_same(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list) and isinstance(actual, list | tuple):
        return len(expected) == len(actual) and all(_same(a, b) for a, b in zip(expected, actual, strict=True))
    return bool(expected == actual)


def _error_json(error: Any) -> dict[str, Any]:
    return error.to_json() if hasattr(error, "to_json") else {"code": type(error).__name__, "message": str(error)}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _show(value: Any, limit: int = 160) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _join(path: str, key: str) -> str:
    simple = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) is not None
    return (f"{path}.{key}" if path else key) if simple else f"{path}[{json.dumps(key)}]"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _where(path: tuple[Any, ...]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return text or "the test file"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict):
        return "a mapping"
    return {int: "integer", float: "number", str: "string", list: "list"}.get(type(value), type(value).__name__)


def _display(path: Path) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def _default_pipeline(path: Path) -> Path | None:
    """`NAME.test.yaml` tests `NAME.yaml` next to it when the file names no `pipeline:`."""
    for suffix in TEST_FILE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)] + ".yaml")
    return None


def _with_hint(diagnostic: Any, hint: str) -> Any:
    import dataclasses

    return dataclasses.replace(diagnostic, hint=hint)


def _sub_map(source_map: Any, prefix: tuple[Any, ...]) -> Any:
    """The part of a SourceMap under `prefix`, re-rooted, so a fixture parser reports positions in the test file."""
    from flowctl.dsl.loader import SourceMap

    n = len(prefix)
    sub = SourceMap(source_map.file)
    sub.values = {p[n:]: s for p, s in source_map.values.items() if p[:n] == prefix}
    sub.keys = {p[n:]: s for p, s in source_map.keys.items() if p[:n] == prefix}
    return sub


__all__ = ["Case", "CaseResult", "compare", "find_test_files", "load_cases", "run_case", "test_command"]
