"""Stage 2, schema: check a loaded document against the shipped JSON schema and report precise diagnostics.

The JSON schema (`flowctl/schemas/pipeline.schema.json`) is the one description of the format: editors use it through
the YAML language server, and this module turns jsonschema's errors into flowctl diagnostics. jsonschema's raw errors
are poor for users: an unknown key is reported at its parent mapping, `oneOf` says "not valid under any of the given
schemas", and one bad value can fail several keywords at once. So we:

- check the `flowctl:` version first, and stop when it is one we cannot read (the rest would be noise);
- find each step's kind ourselves (a step with no kind or several kinds gets one clear diagnostic), while the schema
  dispatches a well-formed step to its kind's definition with an if/then chain, so its errors stay precise;
- point unknown keys at the key itself, with a did-you-mean;
- keep one diagnostic per problem (a wrong type hides the other complaints about the same value).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from flowctl.dsl import catalogue as cat
from flowctl.dsl.diagnostics import Diagnostic, Span, finalize
from flowctl.dsl.kinds import STEP_KINDS, nested_lists, step_kinds
from flowctl.dsl.loader import MAX_DEPTH, JsonPath, LoadedDocument, SourceMap

__all__ = [
    "STEP_KINDS",
    "SchemaResult",
    "check_schema",
    "load_schema",
    "schema_text",
    "step_kinds",
    "validate_schema",
]

_SCHEMA_PACKAGE = "flowctl.schemas"
_SCHEMA_FILE = "pipeline.schema.json"

# What each pattern in the schema means, in words (a test keeps this in step with the schema).
_PATTERN_TEXT = {
    "^[A-Za-z_][A-Za-z0-9_]*$": "letters, digits and '_', not starting with a digit",
    "^[A-Za-z_][A-Za-z0-9_-]*$": "letters, digits, '_' and '-', not starting with a digit or '-'",
    "^[A-Za-z0-9_.-]+$": "letters, digits, '_', '.' and '-'",
    r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$": "a duration such as 500ms, 30s, 5m, 1h, or a number of seconds",
    r"\{\{": 'a list of names, or one template that gives such a list ("{{ services }}")',
}

_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "nothing",
}

# A key of one of these mappings names an entry: `agents.writer` reads as "agent 'writer'".
_ENTRY_NOUNS = {
    "agents": "agent",
    "models": "model",
    "servers": "server",
    "mcpServers": "server",
    "pipelines": "pipeline",
    "inputs": "input",
    "outputs": "output",
    "state": "state key",
    "properties": "property",
    "branches": "branch",
}

_MAX_SHOWN = 60
_SERVER_KEYS_HINT = (
    "a server takes `command`, `args`, `env`, `cwd` (stdio) or `url`, `headers`, `auth` (remote), `transport` (or "
    "`type`), timeouts, `allowed_tools`, `idempotent_tools`, `optional`: see docs/dsl.md#servers"
)


def _is_server(path: JsonPath) -> bool:
    """Whether `path` is one server's definition (under `servers`, `mcp.servers` or `mcpServers`)."""
    return len(path) >= 2 and (path[:-1] in (("servers",), ("mcpServers",), ("mcp", "servers")))


# Type names from other languages, for hints: `n: int` means `n: {type: integer}`.
_TYPE_ALIASES = {"int": "integer", "str": "string", "float": "number", "bool": "boolean", "list": "array"}
_TYPE_ALIASES |= {"dict": "object", "map": "object", "mapping": "object", "text": "string", "number": "number"}


# --- the schema -----------------------------------------------------------------------------------------------


@functools.cache
def schema_text() -> str:
    """The shipped schema as text (what `flowctl schema` prints)."""
    return resources.files(_SCHEMA_PACKAGE).joinpath(_SCHEMA_FILE).read_text(encoding="utf-8")


@functools.cache
def load_schema() -> Mapping[str, Any]:
    """The shipped schema, parsed once. Treat it as read-only: it is shared."""
    return json.loads(schema_text())


@functools.cache
def _validator() -> Draft202012Validator:
    """Compiled once: building a validator costs far more than validating a typical pipeline."""
    return Draft202012Validator(load_schema())


@functools.cache
def _all_step_keys() -> frozenset[str]:
    """Every key some step kind defines (to spot a misspelled kind key in a step that has none)."""
    defs = load_schema()["$defs"]
    return frozenset(key for kind in STEP_KINDS for key in defs[f"{kind}Step"]["properties"])


# --- the entry point ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SchemaResult:
    diagnostics: list[Diagnostic]
    # values the schema refused for their type: the later checks must not see them (see `without_rejected`)
    rejected: frozenset[JsonPath] = frozenset()


def validate_schema(doc: LoadedDocument) -> list[Diagnostic]:
    """Check `doc.data` against the pipeline schema. Never raises for bad input; returns sorted diagnostics."""
    return check_schema(doc).diagnostics


def check_schema(doc: LoadedDocument) -> SchemaResult:
    """`validate_schema`, also naming the values refused for their type."""
    data = doc.data
    if data is None:  # the loader has already said why there is no document
        return SchemaResult([])
    checker = _Checker(doc.source_map)
    if not isinstance(data, dict):
        checker.add(cat.wrong_type(checker.span(()), "a mapping (the pipeline)", _got(data, None)))
        return checker.result()
    if not checker.check_version(data):
        return checker.result()
    checker.check_steps(data)
    try:
        errors = list(_validator().iter_errors(data))
    except RecursionError:  # only reachable with data the loader would have refused
        checker.add(cat.yaml_too_deep(checker.span(()), MAX_DEPTH))
        return checker.result()
    for error in _one_per_problem(errors):
        checker.report(error)
    return checker.result()


# Keywords whose failure means the value itself is unusable (a bad key or a missing one leaves the rest usable).
_REFUSED_VALUE = frozenset({"type", "enum", "const"})


def _one_per_problem(errors: Iterable[ValidationError]) -> list[ValidationError]:
    """Where a value has the wrong type, keep only that complaint (enum, pattern, … about it are noise)."""
    by_path: dict[JsonPath, list[ValidationError]] = {}
    for error in errors:
        by_path.setdefault(tuple(error.absolute_path), []).append(error)
    kept: list[ValidationError] = []
    for group in by_path.values():
        type_errors = [e for e in group if e.validator == "type"]
        if type_errors:
            kept.append(min(type_errors, key=lambda e: len(e.absolute_schema_path)))
        else:
            kept.extend(group)
    return kept


# --- the checker ----------------------------------------------------------------------------------------------


class _Checker:
    """Collects diagnostics for one document; knows where its steps and triggers are, to name them."""

    def __init__(self, source_map: SourceMap) -> None:
        self.source_map = source_map
        self.diagnostics: list[Diagnostic] = []
        self.labels: dict[JsonPath, str] = {}  # step and trigger paths → "step 'fetch'"
        self.bad_steps: set[JsonPath] = set()  # steps whose kind could not be decided
        self.rejected: set[JsonPath] = set()  # values refused for their type

    def add(self, diagnostic: Diagnostic) -> None:
        self.diagnostics.append(diagnostic)

    def result(self) -> SchemaResult:
        return SchemaResult(finalize(self.diagnostics), frozenset(self.rejected))

    def span(self, path: JsonPath) -> Span:
        return self.source_map.value(path)

    def key_span(self, path: JsonPath) -> Span:
        return self.source_map.key(path)

    # -- version ---------------------------------------------------------------------------------------------

    def check_version(self, data: Mapping[str, Any]) -> bool:
        """False when the version is one we cannot read: checking the rest against v1 would mislead."""
        if "flowctl" not in data:
            missing = cat.missing_key(self.span(()), "flowctl", "the pipeline")
            self.add(dataclasses.replace(missing, hint="start the file with `flowctl: 1`"))
            return True
        value = data["flowctl"]
        if isinstance(value, int | float) and not isinstance(value, bool) and value == 1:
            return True
        self.add(cat.unsupported_version(self.span(("flowctl",)), value))
        return False

    # -- steps -----------------------------------------------------------------------------------------------

    def check_steps(self, data: Mapping[str, Any]) -> None:
        """Name every step and trigger, and report steps with no kind or several (iteratively: no recursion)."""
        pending = list(self._top_step_lists(data))
        while pending:
            path, steps = pending.pop()
            if not isinstance(steps, list):
                continue
            for index, step in enumerate(steps):
                if isinstance(step, dict):
                    step_path = (*path, index)
                    self.labels[step_path] = _step_label(step, index)
                    self._check_kind(step, step_path)
                    pending.extend(_nested_step_lists(step, step_path))

    def _top_step_lists(self, data: Mapping[str, Any]) -> Iterator[tuple[JsonPath, Any]]:
        yield ("steps",), data.get("steps")
        yield ("finally",), data.get("finally")
        pipelines = data.get("pipelines")
        if isinstance(pipelines, dict):
            for name, child in pipelines.items():
                if isinstance(child, dict):
                    yield ("pipelines", name, "steps"), child.get("steps")
                    yield ("pipelines", name, "finally"), child.get("finally")
        triggers = data.get("triggers")
        if isinstance(triggers, list):
            for index, trigger in enumerate(triggers):
                if isinstance(trigger, dict):
                    self.labels[("triggers", index)] = _entry_label("trigger", trigger, index)
                    yield ("triggers", index, "steps"), trigger.get("steps")

    def _check_kind(self, step: Mapping[str, Any], path: JsonPath) -> None:
        kinds = step_kinds(step)
        if len(kinds) == 1:
            return
        self.bad_steps.add(path)
        if kinds:  # point at the kind key that came second: the step was one thing until then
            spans = {kind: self.key_span((*path, kind)) for kind in kinds}
            in_order = sorted(kinds, key=lambda kind: (spans[kind].line, spans[kind].col))
            self.add(cat.multiple_step_kinds(spans[in_order[1]], in_order))
            return
        diagnostic = cat.unknown_step_kind(self.span(path), STEP_KINDS)
        guess = _misspelled_kind(step)
        if guess:
            diagnostic = dataclasses.replace(diagnostic, hint=f"did you mean {guess[1]!r} instead of {guess[0]!r}?")
        self.add(diagnostic)

    # -- naming places ---------------------------------------------------------------------------------------

    def where(self, path: JsonPath) -> str:
        """A readable name for the mapping at `path`: "the pipeline", "step 'fetch'", "'retry' of step 'fetch'"."""
        if not path:
            return "the pipeline"
        label = self.labels.get(path)
        if label:
            return label
        last, parent = path[-1], path[:-1]
        if isinstance(last, int):
            return f"item {last + 1} of {self.where(parent)}"
        if parent and parent[-1] in _ENTRY_NOUNS:
            return f"{_ENTRY_NOUNS[str(parent[-1])]} {last!r}"
        return f"{last!r} of {self.where(parent)}"

    def show(self, value: Any, path: JsonPath) -> str:
        """The user's value as they wrote it (`3.10`, not `3.1`), quoted when it is text, and cut when long."""
        raw = self.source_map.raw.get(path)
        text = raw if raw is not None and not isinstance(value, str) else repr(value)
        return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"

    # -- turning jsonschema errors into diagnostics ----------------------------------------------------------

    def report(self, error: ValidationError) -> None:
        path = tuple(error.absolute_path)
        if error.validator in _REFUSED_VALUE and "propertyNames" not in error.absolute_schema_path:
            self.rejected.add(path)  # (a refused key name is reported at its mapping's path: keep the mapping)
        if path == ("flowctl",) or path in self.bad_steps:
            return  # reported by check_version / check_steps
        if "propertyNames" in error.absolute_schema_path:
            self._bad_key_name(error, path)
            return
        handler = _HANDLERS.get(str(error.validator), _Checker._other)
        handler(self, error, path)

    # jsonschema types an error's fields as possibly `Unset`; every error a handler gets comes from a keyword that
    # failed on an instance, so they are set: each handler reads them as `Any` through `_facts`.

    def _unknown_keys(self, error: ValidationError, path: JsonPath) -> None:
        schema, _, instance = _facts(error)
        allowed = [str(key) for key in schema.get("properties", {})]
        for key in instance:
            if key not in allowed:
                span = self.key_span((*path, key))
                diagnostic = cat.unknown_key(span, str(key), allowed, self.where(path))
                if key == "on" and path[-2:-1] == ("triggers",):  # GitHub Actions' spelling of a trigger
                    hint = "a trigger starts on `event: NAME`, `failed: STEP`, `completed: STEP` or `when: EXPR`"
                    diagnostic = dataclasses.replace(diagnostic, hint=hint)
                elif _is_server(path) and not diagnostic.hint.startswith("did you mean"):
                    diagnostic = dataclasses.replace(diagnostic, hint=_SERVER_KEYS_HINT)  # the whole list is long
                self.add(diagnostic)

    def _missing_keys(self, error: ValidationError, path: JsonPath) -> None:
        _, required, instance = _facts(error)
        for key in required:
            if key in instance or (key == "flowctl" and not path):
                continue
            if key == "max_iterations" and path[-1:] == ("loop",) and path[:-1] in self.labels:
                self.add(cat.unbounded_loop(self.key_span(path)))  # at the `loop:` key; the only report
            else:
                self.add(cat.missing_key(self.span(path), key, self.where(path)))

    def _missing_dependencies(self, error: ValidationError, path: JsonPath) -> None:
        _, dependencies, instance = _facts(error)
        for key, needed in dependencies.items():
            if key not in instance:
                continue
            for other in needed:
                if other not in instance:
                    missing = cat.missing_key(self.span(path), other, self.where(path))
                    self.add(dataclasses.replace(missing, hint=f"{key!r} needs {other!r}"))

    def _wrong_type(self, error: ValidationError, path: JsonPath) -> None:
        _, types, value = _facts(error)
        expected = [types] if isinstance(types, str) else list(types)
        raw = self.source_map.raw.get(path)
        hint = ""
        scalar_string = "string" in expected and not {"array", "object"} & set(expected)
        if scalar_string and raw is not None and isinstance(value, bool | int | float):
            hint = f"quote it: '{raw}'"
        elif expected == ["array"] and not isinstance(value, dict | list) and value is not None:
            hint = f"write it as a list: [{self.show(value, path)}]"
        elif expected == ["object"] and isinstance(value, str) and len(path) >= 2 and path[-2] == "inputs":
            name = _TYPE_ALIASES.get(value, value)
            if name in _TYPE_WORDS:  # `topic: string`: the type written where the input's schema goes
                hint = f"an input is a small JSON schema: write `{path[-1]}: {{type: {name}}}`"
        self.add(cat.wrong_type(self.span(path), _words(expected), _got(value, raw), hint))

    def _not_in_enum(self, error: ValidationError, path: JsonPath) -> None:
        _, value, _ = _facts(error)
        allowed: list[Any] = value if error.validator == "enum" else [value]
        expected = _quoted(allowed, "or")
        if len(allowed) > 2:
            expected = "one of " + expected
        message = f"invalid value {self.show(error.instance, path)} for {_label(path)}: expected {expected}"
        choices = [str(choice) for choice in allowed]
        hint = cat.did_you_mean(error.instance, choices) if isinstance(error.instance, str) else ""
        self.add(cat.invalid_value(self.span(path), message, hint))

    def _out_of_range(self, error: ValidationError, path: JsonPath) -> None:
        expectation = _expectation(error)
        if expectation is None:
            self._other(error, path)
            return
        if str(error.validator) == "minItems" and not error.instance:
            message = f"{_label(path)} is empty: expected {expectation}"
        else:
            message = f"invalid value {self.show(error.instance, path)} for {_label(path)}: expected {expectation}"
            if error.validator == "pattern":
                message = cat.with_characters(message, error.instance)
        self.add(cat.invalid_value(self.span(path), message))

    def _duplicate_items(self, error: ValidationError, path: JsonPath) -> None:
        seen: list[Any] = []
        for index, item in enumerate(_facts(error)[2]):
            if item in seen:
                shown = self.show(item, (*path, index))
                message = f"{_label(path)} lists {shown} more than once"
                self.add(cat.invalid_value(self.span((*path, index)), message))
                return
            seen.append(item)

    def _alternatives(self, error: ValidationError, path: JsonPath) -> None:
        """`oneOf`/`anyOf` of `required` lists mean "one of these keys": say which keys, never "not valid under…"."""
        keys = _required_alternatives(error.validator_value)
        if keys is None or not isinstance(error.instance, dict):
            self._deepest(error, path)
            return
        present = [key for key in keys if key in error.instance]
        where = self.where(path)
        if not present:
            missing = cat.missing_key(self.span(path), keys[0], where)
            message = f"missing one of {_quoted(keys, 'or')} in {where}"
            self.add(dataclasses.replace(missing, message=message, hint=f"give it one of: {', '.join(keys)}"))
        elif len(present) > 1 and error.validator == "oneOf":
            message = f"{where} has several of {_quoted(present, 'and')}; give exactly one"
            self.add(cat.invalid_value(self.key_span((*path, present[1])), message))

    def _deepest(self, error: ValidationError, path: JsonPath) -> None:
        best = best_match(error.context) if error.context else None
        if best is None:
            self._other(error, path)
        else:
            self.report(best)

    def _forbidden_together(self, error: ValidationError, path: JsonPath) -> None:
        keys = error.validator_value.get("required") if isinstance(error.validator_value, dict) else None
        if not keys or not isinstance(error.instance, dict):
            self._other(error, path)
            return
        message = f"{self.where(path)} has both {_quoted(keys, 'and')}; use only one"
        self.add(cat.invalid_value(self.key_span((*path, keys[-1])), message))

    def _bad_key_name(self, error: ValidationError, path: JsonPath) -> None:
        _, pattern, key = _facts(error)
        expectation = _PATTERN_TEXT.get(pattern) if error.validator == "pattern" else None
        message = f"invalid name {self.show(key, ())} in {self.where(path)}"
        if expectation:
            message += f": expected {expectation}"
        self.add(cat.invalid_value(self.key_span((*path, key)), cat.with_characters(message, key)))

    def _other(self, error: ValidationError, path: JsonPath) -> None:
        """Anything the schema may grow later: still a located, readable diagnostic."""
        message = f"invalid value {self.show(error.instance, path)} for {_label(path)}"
        self.add(cat.invalid_value(self.span(path), message, hint=error.message))


_HANDLERS = {
    "additionalProperties": _Checker._unknown_keys,
    "required": _Checker._missing_keys,
    "dependentRequired": _Checker._missing_dependencies,
    "type": _Checker._wrong_type,
    "enum": _Checker._not_in_enum,
    "const": _Checker._not_in_enum,
    "pattern": _Checker._out_of_range,
    "minLength": _Checker._out_of_range,
    "maxLength": _Checker._out_of_range,
    "minimum": _Checker._out_of_range,
    "maximum": _Checker._out_of_range,
    "exclusiveMinimum": _Checker._out_of_range,
    "exclusiveMaximum": _Checker._out_of_range,
    "minItems": _Checker._out_of_range,
    "maxItems": _Checker._out_of_range,
    "uniqueItems": _Checker._duplicate_items,
    "oneOf": _Checker._alternatives,
    "anyOf": _Checker._alternatives,
    "not": _Checker._forbidden_together,
}


# --- helpers --------------------------------------------------------------------------------------------------


def _nested_step_lists(step: Mapping[str, Any], path: JsonPath) -> Iterator[tuple[JsonPath, Any]]:
    """The step lists inside a step: those of each kind it claims to be (every kind's when it claims none)."""
    seen: set[JsonPath] = set()
    for kind in step_kinds(step) or STEP_KINDS:
        for _, list_path, items in nested_lists(kind, step, path):
            if list_path not in seen:
                seen.add(list_path)
                yield list_path, items


def _step_label(step: Mapping[str, Any], index: int) -> str:
    return _entry_label("step", step, index)


def _entry_label(noun: str, entry: Mapping[str, Any], index: int) -> str:
    ident = entry.get("id")
    return f"{noun} {ident!r}" if isinstance(ident, str) and ident else f"{noun} #{index + 1}"


def _misspelled_kind(step: Mapping[str, Any]) -> tuple[str, str] | None:
    """(key, kind) when a key the format does not know looks like a misspelled kind key."""
    known = _all_step_keys()
    for key in step:
        if isinstance(key, str) and key not in known:
            matches = difflib.get_close_matches(key, STEP_KINDS, n=1, cutoff=0.6)
            if matches:
                return key, matches[0]
    return None


def _required_alternatives(subschemas: Any) -> list[str] | None:
    """["a", "b"] for `[{required: [a]}, {required: [b]}]`; None for any other shape."""
    if not isinstance(subschemas, list):
        return None
    keys: list[str] = []
    for sub in subschemas:
        if not isinstance(sub, dict) or set(sub) != {"required"} or len(sub["required"]) != 1:
            return None
        keys.append(sub["required"][0])
    return keys


def _label(path: JsonPath) -> str:
    """How a message names the value at `path`: `'timeout'`, or `item 2 of 'needs'`."""
    if not path:
        return "the pipeline"
    last = path[-1]
    if isinstance(last, int):
        parent = f" of {path[-2]!r}" if len(path) > 1 and isinstance(path[-2], str) else ""
        return f"item {last + 1}{parent}"
    return repr(last)


def _words(types: list[str]) -> str:
    return _listing([_TYPE_WORDS.get(t, t) for t in types], "or")


def _listing(items: list[str], joiner: str) -> str:
    """ "a, b or c" (items are shown as given; quote them first when they are the user's words)."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {joiner} {items[-1]}"


def _quoted(items: Iterable[Any], joiner: str) -> str:
    return _listing([repr(item) for item in items], joiner)


def _got(value: Any, raw: str | None) -> str:
    """What the user wrote, in words: "a number (3.10)", "a list", "an empty value"."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"a boolean ({raw or str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({raw or value})"
    if isinstance(value, float):
        return f"a number ({raw or value})"
    if isinstance(value, str):
        shown = repr(value)
        return f"a string ({shown if len(shown) <= _MAX_SHOWN else shown[: _MAX_SHOWN - 1] + '…'})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _facts(error: ValidationError) -> tuple[Any, Any, Any]:
    """An error's schema, keyword value and instance, read as `Any` (see `_Checker._unknown_keys`)."""
    return error.schema, error.validator_value, error.instance


def _expectation(error: ValidationError) -> str | None:
    """What a bound-style keyword allowed, in words ("at least 1", "a duration such as …")."""
    keyword, bound = str(error.validator), _facts(error)[1]
    if keyword == "pattern":
        return _PATTERN_TEXT.get(bound, f"text matching {bound}")
    if keyword == "minLength":
        return "a non-empty string" if bound == 1 else f"at least {bound} characters"
    if keyword == "maxLength":
        return f"at most {bound} characters"
    if keyword in ("minItems", "maxItems"):
        noun = "item" if bound == 1 else "items"
        return f"{'at least' if keyword == 'minItems' else 'at most'} {bound} {noun}"
    words = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "more than"}
    words["exclusiveMaximum"] = "less than"
    return f"{words[keyword]} {bound}" if keyword in words else None
