"""The pattern language of expectations: Pattern classes, the `$op` operators, matching values and describing patterns.

A pattern's `check` returns mismatches as (path, message) pairs. Compiling YAML into patterns (with positions for
diagnostics) lives with the test-file checker in `cases`; this module owns only what a compiled pattern does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from flowctl.testing._text import show

TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


# --- what an expectation compiles to ----------------------------------------------------------------------------


class Pattern:
    """An expected value. `check` returns mismatches as (path, message) pairs; empty when the value matches."""

    def check(self, actual: Any, path: str) -> list[tuple[str, str]]:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Exact(Pattern):
    value: Any

    def check(self, actual: Any, path: str) -> list[tuple[str, str]]:
        if _same(self.value, actual):
            return []
        message = f"expected {show(self.value)}, got {show(actual)}"
        if isinstance(self.value, str) and isinstance(actual, str) and max(len(self.value), len(actual)) > 60:
            message += _first_difference(self.value, actual)  # long texts: say where they part
        return [(path, message)]


def _first_difference(expected: str, actual: str) -> str:
    at = next((i for i, (a, b) in enumerate(zip(expected, actual, strict=False)) if a != b), None)
    at = min(len(expected), len(actual)) if at is None else at
    start = max(0, at - 20)
    return (
        f"; they differ from character {at}: expected {show(expected[start : at + 30])}, "
        f"got {show(actual[start : at + 30])}"
    )


@dataclass(frozen=True, slots=True)
class MapPattern(Pattern):
    """Subset match: every expected key must be present and match; other keys are ignored. `{}` matches `{}` only."""

    items: tuple[tuple[str, Pattern], ...]

    def check(self, actual: Any, path: str) -> list[tuple[str, str]]:
        if not isinstance(actual, dict):
            return [(path, f"expected a mapping, got {show(actual)}")]
        if not self.items and actual:  # `{}` means an empty mapping, not "any mapping"
            return [(path, f"expected an empty mapping, got {show(actual)}")]
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
            return [(path, f"expected a list, got {show(actual)}")]
        if len(actual) != len(self.items):
            return [(path, f"expected a list of {len(self.items)} item(s), got {len(actual)}: {show(actual)}")]
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
            problems.extend(OPERATORS[op](arg, actual, path))
        return problems


def _op_regex(pattern: re.Pattern[str], actual: Any, path: str) -> list[tuple[str, str]]:
    if not isinstance(actual, str):
        return [(path, f"expected a string matching /{pattern.pattern}/, got {show(actual)}")]
    if pattern.search(actual) is None:
        return [(path, f"expected a match for /{pattern.pattern}/, got {show(actual)}")]
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
        if not is_number(actual):
            return [(path, f"expected a number {shown} {limit}, got {show(actual)}")]
        return [] if compare(actual, limit) else [(path, f"expected a number {shown} {limit}, got {show(actual)}")]

    return check


def _op_len(pattern: Pattern, actual: Any, path: str) -> list[tuple[str, str]]:
    if not isinstance(actual, str | list | tuple | dict):
        return [(path, f"expected something with a length, got {show(actual)}")]
    return pattern.check(len(actual), f"{path} (length)")


def _op_contains(pattern: Pattern, actual: Any, path: str) -> list[tuple[str, str]]:
    if isinstance(actual, str) and isinstance(pattern, Exact) and isinstance(pattern.value, str):
        if pattern.value in actual:
            return []
        return [(path, f"expected a string containing {show(pattern.value)}, got {show(actual)}")]
    if isinstance(actual, list | tuple):
        if any(not pattern.check(item, path) for item in actual):
            return []
        return [(path, f"expected a list with an item matching {describe(pattern)}, got {show(actual)}")]
    return [(path, f"expected a list or a string to search, got {show(actual)}")]


def _op_type(names: tuple[str, ...], actual: Any, path: str) -> list[tuple[str, str]]:
    for name in names:
        ok = isinstance(actual, TYPES[name]) and not (name in ("number", "integer") and isinstance(actual, bool))
        if ok:
            return []
    return [(path, f"expected type {' or '.join(names)}, got {show(actual)}")]


def _op_any(_arg: Any, _actual: Any, _path: str) -> list[tuple[str, str]]:
    return []


def _op_eq(value: Any, actual: Any, path: str) -> list[tuple[str, str]]:
    return Exact(value).check(actual, path)


def _op_ne(value: Any, actual: Any, path: str) -> list[tuple[str, str]]:
    return [(path, f"expected anything but {show(value)}")] if _same(value, actual) else []


def _op_not(pattern: Pattern, actual: Any, path: str) -> list[tuple[str, str]]:
    return [] if pattern.check(actual, path) else [(path, f"expected no match for {describe(pattern)}")]


OPERATORS: dict[str, Any] = {
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


def describe(pattern: Pattern) -> str:
    if isinstance(pattern, Exact):
        return show(pattern.value)
    if isinstance(pattern, Operators):
        return ", ".join(
            f"/{a.pattern}/" if op == "$regex" else f"{op} {describe(a) if isinstance(a, Pattern) else a}"
            for op, a in pattern.ops
        )
    return type(pattern).__name__


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


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _join(path: str, key: str) -> str:
    simple = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) is not None
    return (f"{path}.{key}" if path else key) if simple else f"{path}[{json.dumps(key)}]"
