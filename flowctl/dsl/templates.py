"""The expression language: Jinja in a sandbox with strict undefined, compiled once at compile time.

Three forms (see docs/dsl.md): text templates (prompts, instructions), bare expressions (`when`, `until`, `match`),
and values, where a string that is exactly one `{{ expr }}` keeps the expression's native type.

Rendering only ever takes a template compiled from the pipeline file; model and tool outputs enter as *data* in the
context and are never compiled, which is what keeps prompt injection from turning into template injection.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import TemplateAssertionError, TemplateError

from flowctl.dsl.diagnostics import Span
from flowctl.dsl.sandbox import (
    INTERNAL_ATTRIBUTES,
    MAX_TEXT,
    BudgetedEnvironment,
    BudgetExceeded,
    RenderStopped,
    check_add,
    check_lipsum,
    check_multiply,
    check_power,
    finished_text,
    printed_size,
    safe_range,
)
from flowctl.dsl.template_refs import template_references

__all__ = ["RenderError", "RenderStopped", "TemplateProblem"]

Reference = tuple[str, ...]  # e.g. ("steps", "fetch", "output")

# Names Jinja itself provides; never reported as undefined.
JINJA_GLOBALS = frozenset({"range", "dict", "lipsum", "cycler", "joiner", "namespace", "true", "false", "none"})


def _fromjson(value: str) -> Any:
    return json.loads(value)


def _make_environment() -> BudgetedEnvironment:
    env = BudgetedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False, cache_size=0)
    env.filters["fromjson"] = _fromjson
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "ensure_ascii": False}
    return env


ENV = _make_environment()


# What rendering can raise on odd data (model output is untrusted): a type mismatch, `1e200 ** 2`, JSON nested
# thousands deep through `fromjson`. All are the pipeline's data problem, reported as RenderError, never a crash.
_DATA_ERRORS = (TypeError, ValueError, AttributeError, ArithmeticError, KeyError, IndexError, RecursionError)


class TemplateProblem(Exception):
    """A template that does not compile; `line` is 1-based within the template text."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


class RenderError(Exception):
    """A template failed at run time (undefined variable, type error, sandbox violation, a budget exceeded).

    Not raised when a render is stopped by the step's deadline or a signal: that is `RenderStopped`, which the
    interpreter turns into the timeout or cancellation behind it."""


def _budget_error(span: Span, exc: BudgetExceeded | MemoryError) -> RenderError:
    reason = str(exc) if isinstance(exc, BudgetExceeded) else "it ran out of memory"
    return RenderError(f'{span}: template stopped: {reason} (see "Template limits" in docs/dsl.md)')


def _problem(exc: TemplateError) -> TemplateProblem:
    line = getattr(exc, "lineno", None) or 1
    return TemplateProblem(exc.message or str(exc), line)


def _references(tree: nodes.Node) -> list[Reference]:
    """Attribute chains rooted at free names, with Jinja's scoping (see `template_refs`)."""
    return template_references(tree, JINJA_GLOBALS)


# A template that is only text and plain lookups (`item {{ item }}`, `{{ steps.a.output }}`, `{{ x['k'][0] }}`),
# as parts: literal text, or (name, ((is_attribute, key), ...)).
Lookup = tuple[str, tuple[tuple[bool, str | int], ...]]
SimpleParts = tuple[str | Lookup, ...]


class _NotSimple(Exception):
    """The fast path met something only Jinja should answer (an undefined name, an error): render with Jinja."""


def _simple_parts(tree: nodes.Template) -> SimpleParts | None:
    """The parts of a template made only of literal text and lookups of names, attributes and constant items;
    None for anything else (filters, calls, tests, blocks...)."""
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None
    parts: list[str | Lookup] = []
    for node in tree.body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            parts.append(node.data)
            continue
        chain: list[tuple[bool, str | int]] = []
        while True:
            if isinstance(node, nodes.Getattr):
                chain.append((True, node.attr))
                node = node.node
            elif (
                isinstance(node, nodes.Getitem)
                and isinstance(node.arg, nodes.Const)
                and type(node.arg.value) in (str, int)
            ):
                chain.append((False, node.arg.value))
                node = node.node
            elif isinstance(node, nodes.Name) and node.ctx == "load":
                parts.append((node.name, tuple(reversed(chain))))
                break
            else:
                return None
    return tuple(parts)


def _render_simple(parts: SimpleParts, context: Mapping[str, Any]) -> str:
    """What Jinja's generated code does for such a template (the environment's sandboxed `getattr`/`getitem`,
    then `str`), without building a Jinja `Context` per render (~1.5 µs). Anything unusual raises `_NotSimple`,
    and Jinja renders it, so errors and their messages are Jinja's own."""
    out: list[str] = []
    for part in parts:
        if part.__class__ is str:
            out.append(part)  # type: ignore[arg-type]
            continue
        # `part.__class__ is str` (not isinstance: this is the per-render hot path) does not narrow for mypy
        name: str
        chain: tuple[tuple[bool, Any], ...]  # an attribute's key is a str, an item's a str or an int
        name, chain = part  # type: ignore[misc,str-unpack,assignment]
        try:
            value = context[name]
            for is_attribute, key in chain:
                value = ENV.getattr(value, key) if is_attribute else ENV.getitem(value, key)
            if isinstance(value, Undefined):
                raise _NotSimple
            out.append(value if value.__class__ is str else str(value))  # str(): an int past 4,300 digits raises
        except Exception:
            raise _NotSimple from None
    return "".join(out)


@dataclass(frozen=True, slots=True)
class TextTemplate:
    """A template rendered to text (prompts, instructions, mixed strings)."""

    source: str
    span: Span
    references: tuple[Reference, ...]
    _compiled: Any
    _simple: SimpleParts | None = None

    def render(self, context: Mapping[str, Any]) -> str:
        if self._compiled is None:  # plain text: what Jinja would give, without its ~4 µs per render
            return self.source[:-1] if self.source.endswith("\n") else self.source
        if self._simple is not None:
            try:
                return _render_simple(self._simple, context)
            except _NotSimple:
                pass
        try:
            return finished_text(self._compiled.render(context))
        except TemplateError as exc:
            raise RenderError(f"{self.span}: {exc.message or exc}") from exc
        except _DATA_ERRORS as exc:
            raise RenderError(f"{self.span}: {type(exc).__name__}: {exc}") from exc
        except (BudgetExceeded, MemoryError) as exc:
            raise _budget_error(self.span, exc) from None


@dataclass(frozen=True, slots=True)
class Expression:
    """A bare Jinja expression (no braces) evaluated to a native value."""

    source: str
    span: Span
    references: tuple[Reference, ...]
    _compiled: Any
    _builds: bool = True  # may build a new value (a literal, an operator, a filter, a call): its size is checked

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        try:
            value = self._compiled(**context)
            if isinstance(value, Undefined):  # `steps.x.output.missing`: an error here, not a value that raises later
                value._fail_with_undefined_error()
            if self._builds and value.__class__ is not bool and printed_size(value) > MAX_TEXT:
                raise BudgetExceeded(f"its value would print more than {MAX_TEXT:,} characters")
            return value
        except TemplateError as exc:
            raise RenderError(f"{self.span}: {exc.message or exc}") from exc
        except _DATA_ERRORS as exc:
            raise RenderError(f"{self.span}: in {self.source!r}: {type(exc).__name__}: {exc}") from exc
        except (BudgetExceeded, MemoryError) as exc:
            raise _budget_error(self.span, exc) from None


# Checks and the compiler both compile every template; Jinja's code generation is the front end's main cost
# (~0.3 ms a template), so compiled templates are cached by source text. Compiled templates are immutable.
_COMPILED: dict[tuple[str, str], tuple[tuple[Reference, ...], Any] | TemplateProblem] = {}
_CACHE_LIMIT = 4096


def _cached(kind: str, source: str, build: Any) -> tuple[tuple[Reference, ...], Any]:
    key = (kind, source)
    entry = _COMPILED.get(key)
    if entry is None:
        try:
            entry = build(source)
        except TemplateProblem as problem:
            entry = problem
        if len(_COMPILED) >= _CACHE_LIMIT:
            _COMPILED.clear()
        _COMPILED[key] = entry
    if isinstance(entry, TemplateProblem):
        raise TemplateProblem(str(entry), entry.line)
    return entry


_TOO_DEEP = "the template nests brackets or blocks too deeply to compile"
# Jinja's lexer reads an integer literal with int(), which refuses more than 4,300 digits with a ValueError
_TOO_LONG_NUMBER = "a number in the template has too many digits to read"


def _build_text(source: str) -> tuple[tuple[Reference, ...], Any]:
    try:
        tree = ENV.parse(source)
        compiled = ENV.from_string(tree)
    except (TemplateSyntaxError, TemplateAssertionError) as exc:
        raise _problem(exc) from exc
    except RecursionError:  # Jinja's parser and code generator recurse once or more per level of nesting
        raise TemplateProblem(_TOO_DEEP, 1) from None
    except ValueError:
        raise TemplateProblem(_TOO_LONG_NUMBER, 1) from None
    compiled.globals = dict(compiled.globals)  # a flat dict: Jinja copies a ChainMap on every render (~2 µs)
    return tuple(_references(tree)), (compiled, _simple_parts(tree))


def _build_expression(source: str) -> tuple[tuple[Reference, ...], Any]:
    try:
        # Compile first: its errors speak of the user's text (a stray `}}` is "chunk after expression"); the
        # `{{ expr }}` parse then gives the tree the references are read from.
        compiled = ENV.compile_expression(source, undefined_to_none=False)
        tree = ENV.parse("{{ " + source + " }}")
    except (TemplateSyntaxError, TemplateAssertionError) as exc:
        problem = _problem(exc)
        raise TemplateProblem(str(problem).replace("end of template", "end of expression"), problem.line) from exc
    except RecursionError:
        raise TemplateProblem(_TOO_DEEP, 1) from None
    except ValueError:
        raise TemplateProblem(_TOO_LONG_NUMBER, 1) from None
    return tuple(_references(tree)), (compiled, tree.find(_BUILDERS) is not None)  # type: ignore[arg-type]


# Nodes that make a new value; an expression without them only looks values up and compares them.
_BUILDERS = (nodes.Call, nodes.Filter, nodes.List, nodes.Tuple, nodes.Dict, nodes.Concat, nodes.BinExpr)


def compile_text(source: str, span: Span) -> TextTemplate:
    """Compile a text template; raises TemplateProblem."""
    if not has_template(source) and "\r" not in source:
        return TextTemplate(source, span, (), None)
    references, (compiled, simple) = _cached("text", source, _build_text)
    return TextTemplate(source, span, references, compiled, simple)


def compile_expression(source: str, span: Span) -> Expression:
    """Compile a bare expression; raises TemplateProblem."""
    references, (compiled, builds) = _cached("expr", source, _build_expression)
    return Expression(source, span, references, compiled, builds)


# --- values ------------------------------------------------------------------------------------------------------

_SINGLE_EXPRESSION = re.compile(r"^\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\n?$", re.DOTALL)


class CompiledValue:
    """A value field: literal, single expression (native type), text template, or a map/list of those."""

    __slots__ = ()

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def templates(self) -> Iterator[TextTemplate | Expression]:
        return iter(())

    @property
    def is_literal(self) -> bool:
        return next(self.templates(), None) is None


@dataclass(frozen=True, slots=True)
class Literal(CompiledValue):
    value: Any

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class ExprValue(CompiledValue):
    expression: Expression

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        return self.expression.evaluate(context)

    def templates(self) -> Iterator[TextTemplate | Expression]:
        yield self.expression


@dataclass(frozen=True, slots=True)
class TextValue(CompiledValue):
    template: TextTemplate

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        return self.template.render(context)

    def templates(self) -> Iterator[TextTemplate | Expression]:
        yield self.template


@dataclass(frozen=True, slots=True)
class MapValue(CompiledValue):
    items: tuple[tuple[str, CompiledValue], ...]

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        return {key: value.evaluate(context) for key, value in self.items}

    def templates(self) -> Iterator[TextTemplate | Expression]:
        for _, value in self.items:
            yield from value.templates()


@dataclass(frozen=True, slots=True)
class ListValue(CompiledValue):
    items: tuple[CompiledValue, ...]

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        return [value.evaluate(context) for value in self.items]

    def templates(self) -> Iterator[TextTemplate | Expression]:
        for value in self.items:
            yield from value.templates()


def has_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


def compile_string_value(source: str, span: Span) -> CompiledValue:
    """The value rule for one string: exactly one `{{ expr }}` → native; other templates → text; else literal."""
    if not has_template(source):
        return Literal(source)
    match = _SINGLE_EXPRESSION.match(source)
    if match:
        return ExprValue(compile_expression(match.group("expr").strip(), span))
    return TextValue(compile_text(source, span))


# --- the sandbox's limits, found in the text (validate) -----------------------------------------------------------

_INCLUDE_TAGS: dict[type[nodes.Node], str] = {
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.Extends: "extends",
}
_INCLUDE_TAGS[nodes.FromImport] = "from … import"


class NotLiteral(Exception):
    """An expression that reads data: only the run knows its value."""


_LITERAL_OPERATORS = {"*": operator.mul, "**": operator.pow, "+": operator.add, "-": operator.sub}
_LITERAL_CHECKS: dict[str, Callable[[Any, Any], None]] = {"*": check_multiply, "**": check_power, "+": check_add}


def literal_value(node: nodes.Node) -> Any:
    """The value of a literal expression (numbers, strings, `range`/`lipsum` calls and `*`, `**`, `+`, `-` of them),
    computed only once the budgets' checks passed on its parts (they raise BudgetExceeded). Raises NotLiteral for
    anything else. Used by validate, which must never build what the run would refuse."""
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, nodes.Neg):
        return -literal_value(node.node)
    if isinstance(node, nodes.BinExpr) and node.operator in _LITERAL_OPERATORS:
        left, right = literal_value(node.left), literal_value(node.right)
        check = _LITERAL_CHECKS.get(node.operator)
        if check is not None:
            check(left, right)
        return _LITERAL_OPERATORS[node.operator](left, right)
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name in _LITERAL_CALLS:
        args = [literal_value(arg) for arg in node.args]
        kwargs = {keyword.key: literal_value(keyword.value) for keyword in node.kwargs}
        return _LITERAL_CALLS[node.node.name](*args, **kwargs)  # checked first; a range is lazy
    raise NotLiteral


_LITERAL_CALLS: dict[str, Callable[..., Any]] = {"range": safe_range, "lipsum": check_lipsum}


def literal_limit_problems(source: str, *, expression: bool = False) -> Iterator[tuple[str, int, str]]:
    """What a run would refuse that the template says literally, as (kind, line in the template, detail): kind
    "include" (a file the template would load; there is no loader), "attribute" (one the sandbox refuses) or
    "budget" (literal numbers past a rendering limit: `range(10**9)`, `9**(9**9)`, `'x' * 10**11`)."""
    try:
        tree = ENV.parse("{{ " + source + " }}" if expression else source)
    except (TemplateError, RecursionError, ValueError):
        return  # not a template (or a number past int()'s digit limit): check_templates reports it
    found: dict[tuple[str, int, str], None] = {}  # an outer `*` repeats the problem of the inner one: say it once
    for node in tree.find_all(nodes.Expr | nodes.Stmt):  # type: ignore[arg-type]
        tag = _INCLUDE_TAGS.get(type(node))
        attribute = _attribute_of(node)
        if tag is not None:
            found["include", node.lineno, tag] = None
        elif attribute is not None and _refused_attribute(node, attribute):
            found["attribute", node.lineno, attribute] = None
        else:
            try:
                literal_value(node)
            except BudgetExceeded as exc:
                found["budget", node.lineno, str(exc)] = None
            except (NotLiteral, *_DATA_ERRORS):
                pass  # `'a' + 1`, `0 ** -1`: the run reports those, with their own message
    yield from found


def _attribute_of(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        return node.arg.value
    return None


def _refused_attribute(node: nodes.Node, attribute: str) -> bool:
    """`_x` and Python internals, refused unless read from data: there a mapping's keys win (`output._id` reads the
    key "_id"), and only the run knows whether the value is a mapping. In a chain, only the first is reported."""
    if not _unsafe_name(attribute):
        return False
    base = node.node  # type: ignore[attr-defined]
    while isinstance(base, nodes.Getattr | nodes.Getitem):
        inner = _attribute_of(base)
        if inner is not None and _unsafe_name(inner):
            return False
        base = base.node
    return not (isinstance(base, nodes.Name) and base.name not in JINJA_GLOBALS)


def _unsafe_name(attribute: str) -> bool:
    return attribute.startswith("_") or attribute in INTERNAL_ATTRIBUTES
