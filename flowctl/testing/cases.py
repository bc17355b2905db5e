"""The test-file model and its loading: Signal/Expect/Case/CaseResult, finding test files, checking them into cases.

Every problem in a test file is a Diagnostic with file:line:col (the `_Checker` compiles expected values into
`matchers` patterns as it goes); each pipeline is validated and compiled once (`_PipelineCache`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowctl.dsl.paths import is_file
from flowctl.testing.matchers import OPERATORS, TYPES, Exact, ListPattern, MapPattern, Operators, Pattern, is_number

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
_EXPECT_KEYS = ("status", "outputs", "state", "events", "steps", "calls", "error")
_CALL_KEYS = ("agent", "system", "prompt", "step", "reply", "tools", "error")
_EVENT_KEYS = ("name", "data", "source")
_RUN_STATUSES = ("succeeded", "failed")
_STEP_STATUSES = ("succeeded", "failed", "skipped", "pending")
_STEP_FIELDS = ("status", "output", "error", "attempts")
REGEX_PREFIX = "=~ "


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
    calls: list[Pattern] | None = None  # every model call of the run tree: {agent, system, prompt, …}
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


def find_test_files(paths: tuple[str, ...]) -> list[tuple[Path, Path]]:
    """Each test file with the folder its `pipeline:` and `fixture:` paths must stay in: the folder it was found in
    (the widest, when several PATHS find it), or its own folder when named. Named files are taken as given; folders
    are searched for `*.test.yaml` (hidden folders and venvs skipped)."""
    found: list[tuple[Path, Path]] = []
    for name in paths:
        path = Path(name)
        if not path.is_dir():
            found.append((path, path.parent))
            continue
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
            found.extend((Path(root) / n, path) for n in sorted(names) if n.endswith(TEST_FILE_SUFFIXES))
    unique: dict[str, tuple[Path, Path]] = {}
    for file, top in found:
        key = str(file.resolve())
        if key not in unique or unique[key][1].resolve().is_relative_to(top.resolve()):
            unique[key] = (unique[key][0] if key in unique else file, top)
    return list(unique.values())


class _Checker:
    """Turns one loaded test file into Cases, collecting every problem as a Diagnostic with its position."""

    def __init__(self, doc: Any, path: Path, top: Path, pipelines: _PipelineCache) -> None:
        from flowctl.dsl import catalogue

        self.cat = catalogue
        self.doc = doc
        self.map = doc.source_map
        self.path = path
        self.base = path.parent
        self.top = top  # the folder tree its file references must stay in
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
        from flowctl.dsl.compile import DURATION_HINT, checked_duration

        try:
            seconds = checked_duration(value)
        except ValueError as exc:
            self.problem(path, str(exc), DURATION_HINT)
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
            if target is None or not is_file(target):
                hint = f"or add {target.name} next to this file" if target is not None else ""
                self.diagnostics.append(self.cat.missing_key(self.span(()), "pipeline", "the test file"))
                self.diagnostics[-1] = _with_hint(self.diagnostics[-1], hint)
                return None
            if self.confined(target.name, (), "pipeline path") is None:  # a symlink pointing out
                return None
        elif not isinstance(ref, str):
            self.wrong_type(("pipeline",), "a file path", ref)
            return None
        else:
            target = self.confined(ref, ("pipeline",), "pipeline path")
            if target is None:
                return None
            if not is_file(target):
                self.problem(("pipeline",), f"pipeline file not found: {ref!r} (relative to {self.base})")
                return None
        graph, errors = self.pipelines.get(target)
        if graph is None:
            where = ("pipeline",) if ref is not None else ()
            self.problem(where, f"pipeline {_display(target)} is invalid ({errors} error(s)); no case can run")
        return graph

    def fixture_file(self, ref: Any, path: tuple[Any, ...]) -> Any:
        from flowctl.interpreter.providers.scripted import FixtureError, load_fixture

        if ref is None:
            return None
        if not isinstance(ref, str):
            self.wrong_type(path, "a fixture file path", ref)
            return None
        target = self.confined(ref, path, "fixture path")
        if target is None:
            return None
        if not is_file(target):
            self.problem(path, f"fixture file not found: {ref!r} (relative to {self.base})")
            return None
        try:
            return load_fixture(target)
        except FixtureError as exc:
            self.diagnostics.extend(exc.diagnostics)
            return None

    def confined(self, ref: str, path: tuple[Any, ...], what: str) -> Path | None:
        """The file `ref` names, or None (reported) when it leaves the folder tree the test file was found in: its
        contents would be quoted in diagnostics (flowctl/dsl/paths.py)."""
        from flowctl.dsl.paths import confine

        target = confine(self.top, self.base, ref)
        if target is None:
            folder = f"the folder searched for test files ({_display(self.top)})"
            if self.top == self.path.parent:
                folder = "the test file's folder (name a folder that holds both to test it: `flowctl test FOLDER`)"
            self.diagnostics.append(self.cat.path_escape(self.span(path), ref, what, folder))
        return target

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
        from flowctl.interpreter.providers.scripted import Fixture, FixtureError, parse_fixture

        inline = {key: data[key] for key in ("responses", "default", "tools") if key in data}
        if not inline:
            return base if base is not None else Fixture(self.doc.file)
        try:
            own = parse_fixture(inline, self.map.subtree(path))
        except FixtureError as exc:
            self.diagnostics.extend(exc.diagnostics)
            return None
        return own if base is None else own.over(base)

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
        if "calls" in data:
            expect.calls = self.calls(data["calls"], (*path, "calls"))
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

    def calls(self, raw: Any, path: tuple[Any, ...]) -> list[Pattern]:
        if not isinstance(raw, list):
            self.wrong_type(path, "a list of expected model calls ({agent, system, prompt, …})", raw)
            return []
        calls: list[Pattern] = []
        for i, item in enumerate(raw):
            data = self.mapping(item, (*path, i), _CALL_KEYS, "an expected model call")
            pattern = self.pattern(data, (*path, i)) if data is not None else None
            if pattern is not None:
                calls.append(pattern)
        return calls

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
            if op not in OPERATORS:
                hint = self.cat.did_you_mean(op, OPERATORS) or "operators: " + ", ".join(OPERATORS)
                self.problem(where, f"unknown operator {op!r}", hint, key=True)
            elif op == "$regex":
                regex = self.regex(arg, where) if isinstance(arg, str) else None
                if not isinstance(arg, str):
                    self.wrong_type(where, "a string", arg)
                if regex is not None:
                    ops.append((op, regex))
            elif op in ("$gt", "$gte", "$lt", "$lte"):
                if is_number(arg):
                    ops.append((op, arg))
                else:
                    self.wrong_type(where, "a number", arg)
            elif op == "$type":
                names = (arg,) if isinstance(arg, str) else tuple(arg) if isinstance(arg, list) else ()
                bad = [n for n in names if n not in TYPES] if names else [repr(arg)]
                if bad:
                    self.problem(where, f"unknown type {bad[0]!r}", "types: " + ", ".join(TYPES))
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


def load_cases(
    files: list[tuple[Path, Path]], selector: str | None
) -> tuple[list[Case], list[tuple[Any, str | None]], int]:
    """Every case of every file (as `find_test_files` gives them: with the folder their references must stay in;
    selected by `selector`, a lowercase substring of `FILE::NAME`), the problems found (diagnostic, source text) and
    the number of cases left out by the selector."""
    from flowctl.dsl.diagnostics import finalize, has_errors
    from flowctl.dsl.loader import load_file

    pipelines = _PipelineCache()
    cases: list[Case] = []
    problems: list[tuple[Any, str | None]] = []
    total = 0
    for path, top in files:
        doc = load_file(path, _display(path))
        if doc.data is None or has_errors(doc.diagnostics):
            problems.extend((d, doc.source) for d in finalize(doc.diagnostics))
            continue
        checker = _Checker(doc, path, top, pipelines)
        everything = checker.cases()
        total += len(everything)
        selected = [c for c in everything if selector is None or selector in c.id.lower()]
        cases.extend(selected)
        problems.extend((d, doc.source if d.span.file == doc.file else None) for d in finalize(checker.diagnostics))
    problems = pipelines.diagnostics + problems
    return cases, problems, total - len(cases)


# --- small helpers ----------------------------------------------------------------------------------------------


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
