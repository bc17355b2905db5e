"""The template sandbox and its budgets: no template, and no data a template reads, can hang a run or exhaust memory.

Jinja's `ImmutableSandboxedEnvironment` refuses unsafe attributes; this module adds budgets enforced *inside*
rendering (rendering is synchronous, so a cancel scope cannot interrupt it):

- loop iterations: every `{% for %}` iterable (and a recursive `loop(...)`) is counted by a generator the code
  generator wraps around it, so loops whose body yields nothing count too;
- the size of text and lists a template builds: `*` and `+` on strings and lists, `~`, `%` and `str.format` widths,
  the filters and string methods that build text from a width or a count (`center`, `indent`, `wordwrap`,
  `replace`, `join`, `ljust`...), `range` and `lipsum`, every `{{ }}` value, and the rendered text;
- big numbers: `**` and `*` on integers;
- time: the clock is read every few loop iterations and calls; a render stops after `RENDER_SECONDS`, or earlier
  when the enclosing deadline (a step's `timeout:`) passes or SIGINT/SIGTERM arrives (`interrupt_renders`).

Going past a budget raises `BudgetExceeded` (the step fails, naming the template's position and the budget);
running into the deadline or a signal raises `RenderStopped`, which the interpreter turns into the cancellation
that stands behind it. The limits are documented in docs/dsl.md ("Template limits").
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from functools import wraps
from types import BuiltinMethodType
from typing import Any

from jinja2 import filters as jinja_filters
from jinja2 import nodes, pass_context, pass_environment
from jinja2 import sandbox as jinja_sandbox
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import Namespace, _PassArg, generate_lorem_ipsum
from markupsafe import Markup

MAX_TEXT = 4_000_000  # characters: rendered text, every `{{ }}` value, and any string or list a template builds
MAX_LOOP_ITERATIONS = 1_000_000  # `{% for %}` iterations per render, all loops together
MAX_RANGE = 100_000  # items in one `range(...)` (Jinja's own sandbox limit)
MAX_INT_BITS = 100_000  # bits of an integer built with `*` or `**` (~30,000 digits)
MAX_LIPSUM_PARAGRAPHS = 100
MAX_LIPSUM_WORDS = 1_000  # words per lipsum paragraph
RENDER_SECONDS = 5.0  # wall-clock time of one render
_CLOCK_EVERY = 16  # loop iterations and calls between two reads of the clock and the signal flag

# Bumped by `interrupt_renders` (the CLI's SIGINT/SIGTERM handler): a render that started before stops.
_INTERRUPTS = [0]


class BudgetExceeded(Exception):
    """A template went past one of the sandbox's budgets."""


class RenderStopped(Exception):
    """A render gave up because the run must stop: the enclosing deadline passed, or SIGINT/SIGTERM arrived."""


def interrupt_renders() -> None:
    """Make every render in progress stop at its next budget check. Safe to call from a signal handler."""
    _INTERRUPTS[0] += 1


def _seconds_to_deadline() -> float:
    """Seconds until the enclosing anyio deadline (a step's `timeout:`); infinite outside an event loop."""
    try:
        import anyio

        return anyio.current_effective_deadline() - anyio.current_time()
    except Exception:  # no event loop: validate, tests, a plain call
        return math.inf


class Budget:
    """What one render has used. Shared by the contexts Jinja derives from the render's own (scoped blocks)."""

    __slots__ = ("countdown", "deadline", "fixed", "interrupts", "iterations", "output", "started", "stops_run")

    def __init__(self) -> None:
        self.iterations = 0
        self.output = 0
        self.countdown = 1  # the first unit of work starts the clock
        self.started = 0.0
        self.deadline = 0.0  # passed at once: the first check starts the clock
        self.fixed = False  # whether the deadline is final (the enclosing one has been looked up)
        self.stops_run = False  # the deadline is the enclosing one (a step timeout), not the render's own
        self.interrupts = _INTERRUPTS[0]

    def add_iterations(self, count: int) -> None:
        self.iterations += count
        if self.iterations > MAX_LOOP_ITERATIONS:
            raise BudgetExceeded(f"the template's loops ran more than {MAX_LOOP_ITERATIONS:,} iterations")
        self.check_clock()

    def check_clock(self) -> None:
        self.countdown = _CLOCK_EVERY
        if _INTERRUPTS[0] != self.interrupts:
            raise RenderStopped("stopped while rendering: the run was interrupted")
        now = time.monotonic()
        if now < self.deadline:
            return
        if not self.started:
            # Looking the enclosing deadline up costs a few µs: only renders that run a while pay for it.
            self.started, self.deadline = now, now + _LOOK_UP_DEADLINE_AFTER
        elif not self.fixed:
            self.fixed = True
            enclosing = now + _seconds_to_deadline()
            self.deadline = min(self.started + RENDER_SECONDS, enclosing)
            self.stops_run = enclosing < self.started + RENDER_SECONDS
            self.check_clock()
        elif self.stops_run:
            raise RenderStopped("stopped while rendering: the step's time ran out")
        else:
            raise BudgetExceeded(f"rendering took longer than {RENDER_SECONDS:g} s (the time budget of a render)")


_LOOK_UP_DEADLINE_AFTER = 0.005  # seconds


class _BudgetedContext(Context):
    budget: Budget

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.budget = Budget()

    def derived(self, locals: dict[str, Any] | None = None) -> Context:
        context = super().derived(locals)
        context.budget = self.budget  # type: ignore[attr-defined]
        return context


def _counted(budget: Budget, iterable: Iterable[Any]) -> Iterator[Any]:
    """The loop's items, counted in the render's budget every `_CLOCK_EVERY` items (a local count is ~5× cheaper
    per item than the shared one)."""
    count = 0
    for item in iterable:
        count += 1
        if count == _CLOCK_EVERY:
            budget.add_iterations(count)
            count = 0
        yield item
    budget.add_iterations(count)


LOOP_FILTER = "__flowctl_loop__"  # the filter the code generator wraps around every `{% for %}` iterable


@pass_context
def _loop_filter(context: Any, iterable: Iterable[Any]) -> Iterable[Any]:
    """A short list is counted at once and looped over as it is (no per-item cost): the clock is read at every loop
    start, so between two reads run at most `_CLOCK_EVERY` iterations of a body that starts no loop itself."""
    if iterable.__class__ in _SIZED and len(iterable) <= _CLOCK_EVERY:  # type: ignore[arg-type]
        context.budget.add_iterations(len(iterable))  # type: ignore[arg-type]
        return iterable
    return _counted(context.budget, iterable)


_SIZED = frozenset({list, tuple, dict, str, range})


# --- sizes --------------------------------------------------------------------------------------------------


def printed_size(value: Any, limit: int = MAX_TEXT) -> int:
    """About how many characters `str(value)` (or its JSON) has, computed without building it and stopping once
    past `limit`: a list holding one big string 1,000 times is small in memory and huge when printed."""
    cls = value.__class__
    if cls is str:
        return len(value)
    if cls in _SMALL:  # the common cases first: an ABC isinstance check costs ~0.5 µs
        return 8 if cls is not int else value.bit_length() // 3 + 1
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        cls = item.__class__
        if cls is str or isinstance(item, str | bytes):
            total += len(item) + 2
        elif cls in _SMALL:
            total += 8 if cls is not int else item.bit_length() // 3 + 1
        elif cls is dict or isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            for key, inner in item.items():
                stack.append(key)
                stack.append(inner)
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 2 * len(item)
            stack.extend(item)
        elif isinstance(item, Namespace):
            stack.append(item._Namespace__attrs)  # type: ignore[attr-defined]
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        else:
            total += 8
    return total


_SMALL = frozenset({int, float, bool, type(None)})


def _check_printable(value: Any, what: str = "a value") -> None:
    if value.__class__ is not str and printed_size(value) > MAX_TEXT:
        raise BudgetExceeded(f"{what} would print more than {MAX_TEXT:,} characters")


def _check_text_size(size: int, what: str) -> None:
    if size > MAX_TEXT:
        raise BudgetExceeded(f"{what} would build more than {MAX_TEXT:,} characters")


def _check_repeat(sequence: Any, times: Any) -> None:
    if isinstance(times, int) and times > 1 and isinstance(sequence, str | bytes | list | tuple):
        size = len(sequence) if isinstance(sequence, str | bytes) else printed_size(sequence)
        _check_text_size(size * times, f"repeating a {type(sequence).__name__} {times:,} times")


def _check_int_bits(bits: float, what: str) -> None:
    if bits > MAX_INT_BITS:
        raise BudgetExceeded(f"{what} would give a number of more than {MAX_INT_BITS:,} bits")


def check_multiply(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int):
        _check_int_bits(left.bit_length() + right.bit_length(), "multiplying")
    else:
        _check_repeat(left, right)
        _check_repeat(right, left)


def check_power(base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 1 and abs(base) > 1:
        _check_int_bits(exponent * math.log2(abs(base)), f"{base} ** {exponent}")


def check_add(left: Any, right: Any) -> None:
    if isinstance(left, str | bytes) and isinstance(right, str | bytes):
        _check_text_size(len(left) + len(right), "adding two strings")
    elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
        _check_text_size(printed_size(left) + printed_size(right), "adding two lists")


# `%` conversions: a width or precision, written or `*` (taken from the arguments)
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _check_percent(text: Any, arguments: Any) -> None:
    if not isinstance(text, str | bytes):
        return
    pattern = _PERCENT_SPEC if isinstance(text, str) else re.compile(_PERCENT_SPEC.pattern.encode())
    starred = False
    for match in pattern.finditer(text):  # type: ignore[arg-type]
        for group in match.groups():
            if group in ("*", b"*"):
                starred = True
            elif group is not None and int(group) > MAX_TEXT:
                raise BudgetExceeded(f"a `%` format width of {int(group):,} is past {MAX_TEXT:,} characters")
    values = arguments if isinstance(arguments, tuple) else (arguments,)
    if starred and any(isinstance(v, int) and v > MAX_TEXT for v in values):
        raise BudgetExceeded(f"a `%*` format width is past {MAX_TEXT:,} characters")
    for value in values:
        _check_printable(value, "a `%` format argument")


def _check_format_spec(spec: str) -> None:
    for digits in _DIGITS.findall(spec):
        if int(digits) > MAX_TEXT:
            raise BudgetExceeded(f"a format width of {int(digits):,} is past {MAX_TEXT:,} characters")


class _BudgetedFormatter(SandboxedFormatter):
    def format_field(self, value: Any, format_spec: str) -> Any:
        _check_format_spec(format_spec)
        _check_printable(value, "a format argument")
        return super().format_field(value, format_spec)


class _BudgetedEscapeFormatter(SandboxedEscapeFormatter):
    def format_field(self, value: Any, format_spec: str) -> Any:
        _check_format_spec(format_spec)
        _check_printable(value, "a format argument")
        return super().format_field(value, format_spec)


# --- string methods, filters and globals that build text from a number --------------------------------------


def _check_width(width: Any, what: str) -> None:
    if isinstance(width, int) and width > MAX_TEXT:
        raise BudgetExceeded(f"{what} width {width:,} is past {MAX_TEXT:,} characters")


def _check_count(count: Any, what: str) -> None:
    if isinstance(count, int) and count > MAX_RANGE:
        raise BudgetExceeded(f"{what}({count:,}) is past the limit of {MAX_RANGE:,} items")


def _replaced_size(text: Any, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(text, str | bytes) or not isinstance(old, str | bytes) or not isinstance(new, str | bytes):
        return 0
    found = len(text) + 1 if not old else text.count(old)  # type: ignore[arg-type]
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * (len(new) - len(old))


def _joined_size(separator: Any, items: list[Any]) -> int:
    return sum(printed_size(item) for item in items) + len(separator) * max(len(items) - 1, 0)


def _check_str_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse a string method call that would build too much text; returns the arguments to call it with."""
    name, text = method.__name__, method.__self__
    if name in ("center", "ljust", "rjust", "zfill") and args:
        _check_width(args[0], f"str.{name}")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            _check_text_size(len(text) + text.count("\t" if isinstance(text, str) else b"\t") * size, "expandtabs")
    elif name == "replace" and len(args) >= 2:
        _check_text_size(_replaced_size(text, *args[:3]), "replace")
    elif name == "join" and args:
        items = list(args[0])
        _check_text_size(_joined_size(text, items), "join")
        return (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str | bytes)), default=1)
        _check_text_size(len(text) * longest, "translate")
    return args


_SIZED_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join", "translate"})


def safe_range(*args: int) -> range:
    items = range(*args)
    size = (items.stop - items.start + items.step - (1 if items.step > 0 else -1)) // items.step
    if size > MAX_RANGE:  # computed: len() of range(10**20) overflows
        raise BudgetExceeded(f"range() of {size:,} items is past the limit of {MAX_RANGE:,}")
    return items


def check_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> None:
    if n > MAX_LIPSUM_PARAGRAPHS or max > MAX_LIPSUM_WORDS:
        raise BudgetExceeded(
            f"lipsum() is limited to {MAX_LIPSUM_PARAGRAPHS} paragraphs of at most {MAX_LIPSUM_WORDS:,} words"
        )


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    check_lipsum(n, html, min, max)
    return generate_lorem_ipsum(n, html, min, max)


def _guarded(name: str, check: Any) -> Any:
    """Jinja's filter `name`, with `check(*args, **kwargs)` run first on the filter's own arguments (without the
    environment or evaluation context Jinja passes some filters); the check raises BudgetExceeded, or returns the
    arguments to call the filter with (a generator it had to read is handed on as a list)."""
    original = jinja_filters.FILTERS[name]
    injected = _PassArg.from_obj(original) is not None

    @wraps(original)
    def filter_(*args: Any, **kwargs: Any) -> Any:
        own = args[1:] if injected else args
        checked = check(*own, **kwargs)
        if checked is not None:
            args = (*args[:1], *checked) if injected else tuple(checked)
        return original(*args, **kwargs)

    return filter_


def _check_text_filter(value: Any, *_: Any, **__: Any) -> None:
    _check_printable(value)


def _indent_check(text: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    _check_printable(text, "the text to indent")
    add = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    text = str(text)
    _check_text_size(len(text) + (text.count("\n") + 1) * add, "indent")


def _wordwrap_check(
    text: Any, width: Any = 79, break_long_words: bool = True, wrapstring: Any = None, *_: Any, **__: Any
) -> None:
    _check_printable(text, "the text to wrap")
    text = str(text)
    # a line holds at least one word, so two lines in a row hold more than `width` characters
    lines = 2 * len(text) // max(width if isinstance(width, int) else 1, 1) + text.count("\n") + 1
    _check_text_size(len(text) + lines * len(str(wrapstring or "\n")), "wordwrap")


def _join_check(value: Any, d: Any = "", attribute: Any = None) -> tuple[Any, ...] | None:
    if attribute is not None:
        return None  # items' attributes: the finished text is checked where it is printed
    items = list(value)
    _check_text_size(_joined_size(str(d), items), "join")
    return (items, d)


def _replace_check(text: Any, old: Any, new: Any, count: Any = None) -> None:
    size = _replaced_size(str(text), str(old), str(new), -1 if count is None else count)
    _check_text_size(size, "replace")


def _sum(environment: Any, iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
    """Jinja's `sum`; summing strings or lists builds them, so each `+` is checked like the template's own."""
    if attribute is not None:
        iterable = map(jinja_filters.make_attrgetter(environment, attribute), iterable)
    total = start
    for item in iterable:
        check_add(total, item)
        total = total + item
    return total


def _filters() -> dict[str, Any]:
    text_filters: tuple[str, ...] = (
        "capitalize",
        "escape",
        "e",
        "forceescape",
        "lower",
        "upper",
        "title",
        "trim",
        "string",
    )
    text_filters += ("striptags", "truncate", "urlize", "wordcount", "urlencode", "pprint", "tojson", "safe")
    guarded: dict[str, Any] = {name: _guarded(name, _check_text_filter) for name in text_filters}
    guarded.update(
        center=_guarded("center", lambda value, width=80: _check_width(width, "center")),
        indent=_guarded("indent", _indent_check),
        wordwrap=_guarded("wordwrap", _wordwrap_check),
        format=_guarded("format", lambda value, *args, **kwargs: _check_percent(value, kwargs or args)),
        replace=_guarded("replace", _replace_check),
        join=_guarded("join", _join_check),
        batch=_guarded("batch", lambda value, linecount, *_, **__: _check_count(linecount, "batch")),
        slice=_guarded("slice", lambda value, slices, *_, **__: _check_count(slices, "slice")),
    )
    guarded["sum"] = pass_environment(_sum)
    guarded[LOOP_FILTER] = _loop_filter
    return guarded


# --- the environment ----------------------------------------------------------------------------------------


class _BudgetedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with every loop iterable counted and `~` checked for size."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in node.find_all(nodes.For):
            if not (isinstance(loop.iter, nodes.Filter) and loop.iter.name == LOOP_FILTER):
                loop.iter = nodes.Filter(loop.iter, LOOP_FILTER, [], [], None, None, lineno=loop.lineno)
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile or frame.eval_ctx.autoescape:
            super().visit_Concat(node, frame)
            return
        self.write("environment.concat_within_budget((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


@pass_context
def _finalize(context: Any, value: Any) -> Any:
    """Every `{{ }}` value, before it is printed: counted, and refused when it would print too much."""
    budget = context.budget
    cls = value.__class__
    budget.output += len(value) if cls is str else 8 if cls in _SMALL and cls is not int else printed_size(value)
    if budget.output > MAX_TEXT:
        raise BudgetExceeded(f"the template printed more than {MAX_TEXT:,} characters")
    return value


class BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with budgets. `state.items` means the state key "items", not dict.items: for mappings, keys win
    over methods."""

    code_generator_class = _BudgetedCodeGenerator
    context_class = _BudgetedContext
    intercepted_binops = frozenset({"*", "**", "+", "%"})  # also keeps Jinja from folding `9**(9**9)` at compile

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_finalize, **options)
        self.globals["range"] = safe_range
        self.globals["lipsum"] = _lipsum
        self.filters.update(_filters())

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            check_multiply(left, right)
        elif operator == "**":
            check_power(left, right)
        elif operator == "+":
            check_add(left, right)
        else:
            _check_percent(left, right)
        return self.binop_table[operator](left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget: Budget = __context.budget  # type: ignore[attr-defined]
        budget.countdown -= 1
        if budget.countdown <= 0:
            budget.check_clock()
        if args and __obj.__class__ is LoopContext:  # a recursive loop's `loop(children)` counts like a loop
            args = (_counted(budget, args[0]), *args[1:])
        elif (
            __obj.__class__ is BuiltinMethodType
            and __obj.__name__ in _SIZED_METHODS
            and isinstance(__obj.__self__, str | bytes)
        ):
            args = _check_str_method(__obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, str | bytes) and len(result) > MAX_TEXT:  # a macro's or caller's text
            raise BudgetExceeded(f"a call returned more than {MAX_TEXT:,} characters")
        return result

    @staticmethod
    def concat_within_budget(parts: tuple[Any, ...]) -> str:
        """`a ~ b`: refused before it is built when it would be too long."""
        for part in parts:
            _check_printable(part, "a `~` operand")
        text = "".join([part if part.__class__ is str else str(part) for part in parts])
        _check_text_size(len(text), "`~`")
        return text

    def wrap_str_format(self, value: Any) -> Any:
        """Jinja's `str.format` sandboxing, with widths and arguments checked (`'{:>9999999999}'.format(x)`)."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        text: str = value.__self__
        formatter = (
            _BudgetedEscapeFormatter(self, escape=text.escape) if isinstance(text, Markup) else _BudgetedFormatter(self)
        )
        is_format_map = value.__name__ == "format_map"

        @wraps(value)
        def format_(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument and no keyword arguments")
                kwargs, args = args[0], ()
            return type(text)(formatter.vformat(text, args, kwargs))

        return format_


# Attributes the sandbox refuses on the objects they belong to (besides every name starting with `_`).
INTERNAL_ATTRIBUTES = frozenset(
    {"mro"}
    | jinja_sandbox.UNSAFE_FUNCTION_ATTRIBUTES
    | jinja_sandbox.UNSAFE_METHOD_ATTRIBUTES
    | jinja_sandbox.UNSAFE_GENERATOR_ATTRIBUTES
    | jinja_sandbox.UNSAFE_COROUTINE_ATTRIBUTES
    | jinja_sandbox.UNSAFE_ASYNC_GENERATOR_ATTRIBUTES
)


def finished_text(text: str) -> str:
    """The whole rendered text, checked once (values were counted as they were printed; literal text was not)."""
    if len(text) > MAX_TEXT:
        raise BudgetExceeded(f"the rendered text is longer than {MAX_TEXT:,} characters")
    return text
