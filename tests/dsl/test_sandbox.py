"""The template sandbox's budgets (flowctl/dsl/sandbox.py): every way a template could build too much, loop too long
or run too long ends in a RenderError naming the template's position and the budget; a render stopped by a deadline
or a signal raises RenderStopped; ordinary templates render exactly as plain Jinja renders them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2 import StrictUndefined
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from flowctl.dsl.diagnostics import Span
from flowctl.dsl.sandbox import RENDER_SECONDS, RenderStopped, interrupt_renders
from flowctl.dsl.templates import (
    RenderError,
    TemplateProblem,
    compile_expression,
    compile_text,
    literal_limit_problems,
)

SPAN = Span("prompts.yaml", 7, 13)
BIG = 10**10
DATA = {
    "big": BIG,
    "n": 100_000,
    "s": "x" * 1_000_000,
    "half": "x" * 1_500_000,
    "lines": "x\n" * 500_000,
    "tab": "\t" * 1_000_000,
    "items": list(range(100_000)),
}


def render(source: str, **data: Any) -> str:
    return compile_text(source, SPAN).render({**DATA, **data})


@pytest.mark.parametrize(
    ("source", "budget"),
    [
        ("{% for i in range(n) %}{% for j in range(n) %}{% endfor %}{% endfor %}", "1,000,000 iterations"),
        (
            "{% for i in items %}{% for j in items %}{% if false %}{{ j }}{% endif %}{% endfor %}{% endfor %}",
            "iterations",
        ),
        ("{% for i in range(10) recursive %}{{ loop(range(10)) if loop.depth < 9 }}{% endfor %}", ""),  # loops or time
        ("{{ 'x' * big }}", "repeating a str"),
        ("{{ big * 'x' }}", "repeating a str"),
        ("{{ items * n }}", "repeating a list"),
        ("{% set a = [s] %}{{ a * 10 }}", "repeating a list"),
        ("{{ 9 ** (9 ** 9 + n) }}", "bits"),
        ("{{ (7 ** 30000) * (7 ** 30000) * (7 ** 30000) }}", "bits"),
        ("{{ range(big) }}", "range() of 10,000,000,000 items"),
        ("{{ range(1, big * big) }}", "range() of 99,999,999,999,999,999,999 items"),  # len() would overflow
        ("{{ lipsum(n=big) }}", "lipsum()"),
        ("{{ lipsum(2, max=big) }}", "lipsum()"),
        ("{{ 'x' | center(big) }}", "center width"),
        ("{{ lines | indent(10) }}", "indent"),
        ("{{ 'a b' | indent(big) }}", "indent"),
        ("{{ s | wordwrap(1, wrapstring='--') }}", "wordwrap"),
        ("{{ '%0*d' % (big, 1) }}", "`%*` format width"),
        ("{{ '%0' ~ big ~ 'd' }}{{ ('%0' ~ big ~ 'd') % 1 }}", "format width"),
        ("{{ '%s' | format(s * 1) ~ s ~ s ~ s ~ s }}", "`~`"),
        ("{{ '{:>{}}'.format('x', big) }}", "format width"),
        ("{{ '{a:{b}}'.format_map({'a': 1, 'b': big}) }}", "format width"),
        ("{{ s | replace('x', 'yy') * 1 }}{{ s | replace('x', 'yyyyy') }}", "replace"),
        ("{{ s.replace('', '---') }}", "replace"),
        ("{{ tab.expandtabs(8) }}", "expandtabs"),
        ("{{ 'x'.ljust(big) }}{{ 'x'.zfill(big) }}", "str.ljust width"),
        ("{{ s.join(['a'] * 10) }}", "join"),
        ("{{ items | join(s) }}", "join"),
        ("{{ range(n) | map('string') | join(s) }}", "join"),
        ("{% set ns = namespace(t='ab') %}{% for i in range(40) %}{% set ns.t = ns.t ~ ns.t %}{% endfor %}", "`~`"),
        ("{% set ns = namespace(t='ab') %}{% for i in range(40) %}{% set ns.t = ns.t + ns.t %}{% endfor %}", "adding"),
        ("{% set ns = namespace(t=[1]) %}{% for i in range(40) %}{% set ns.t = ns.t + ns.t %}{% endfor %}", "adding"),
        ("{{ [half, half, half] | sum(start='') }}", "adding two strings"),
        ("{{ [[half], [half], [half]] | sum(start=[]) }}", "adding two lists"),
        ("{{ items | batch(big, 0) | list }}", "batch"),
        ("{{ items | slice(big) | list }}", "slice"),
        ("{% for i in range(20) %}{{ s }}{% endfor %}", "printed more than 4,000,000"),
        ("{% set t %}{% for i in range(20) %}{{ s }}{% endfor %}{% endset %}{{ t | length }}", "printed more than"),
        ("{% set a = [s,s,s,s,s] %}{% set b = [a,a,a,a,a] %}{{ b }}", "printed more than"),
        ("{% set a = [s,s,s,s,s] %}{% set b = [a,a,a,a,a] %}{{ b | tojson }}", "print more than"),
        ("{% macro f(k) %}{% if k %}{{ f(k-1) }}{{ f(k-1) }}{% else %}{{ s }}{% endif %}{% endmacro %}{{ f(9) }}", ""),
        ("{% set t = 'ab' %}{{ t.translate({97: s}) * 1 }}{{ s.translate({120: 'yyyyy'}) }}", "translate"),
    ],
)
def test_a_template_past_a_budget_fails_naming_its_position_and_the_budget(source: str, budget: str) -> None:
    with pytest.raises(RenderError) as caught:
        render(source)
    message = str(caught.value)
    assert message.startswith("prompts.yaml:7:13: template stopped: "), message
    assert budget in message
    assert "Template limits" in message


def test_an_exponential_macro_stops_at_the_time_budget() -> None:
    with pytest.raises(RenderError, match=f"rendering took longer than {RENDER_SECONDS:g} s"):
        render("{% macro f(k) %}{% if k %}{{ f(k - 1) }}{{ f(k - 1) }}{% endif %}{% endmacro %}{{ f(60) }}")


@pytest.mark.parametrize(
    ("source", "budget"),
    [
        ("9 ** (big // 10)", "bits"),
        ("'x' * big", "repeating a str"),
        ("range(big) | list", "range()"),
        ("[s] * 10", "repeating a list"),
        ("[s, s, s, s, s]", "its value would print more than"),
    ],
)
def test_an_expression_past_a_budget_fails_too(source: str, budget: str) -> None:
    with pytest.raises(RenderError, match="template stopped: .*" + budget.replace("(", r"\(").replace(")", r"\)")):
        compile_expression(source, SPAN).evaluate(DATA)


@pytest.mark.anyio
async def test_a_render_ends_at_the_enclosing_deadline_as_stopped_not_failed() -> None:
    template = compile_text("{% for i in range(n) %}{{ range(n) | sum }}{% endfor %}", SPAN)
    with anyio.move_on_after(0.2), pytest.raises(RenderStopped, match="time ran out"):
        template.render(DATA)


def _interrupting_items() -> Iterator[int]:
    """Data whose iteration interrupts the render (as the CLI's signal handler does), then goes on forever."""
    i = 0
    while True:
        if i == 5:
            interrupt_renders()
        yield i
        i += 1


def test_an_interrupt_stops_a_render_in_progress_and_only_that_one() -> None:
    template = compile_text("{% for i in items %}{% endfor %}done", SPAN)
    with pytest.raises(RenderStopped, match="interrupted"):
        template.render({"items": _interrupting_items()})
    assert template.render({"items": [1, 2]}) == "done"  # a render that starts after the signal runs normally


def test_ordinary_loops_filters_and_formats_are_untouched() -> None:
    text = (
        "{% for x in items[:3] %}{{ loop.index }}/{{ loop.length }}:{{ x }} {% endfor %}"
        "{{ 2 ** 64 }} {{ 'ab' * 3 }} {{ [1] + [2] }} {{ 'a' ~ 1 }} {{ '%05.1f|%-4s|%*d' % (3.14159, 'x', 4, 7) }} "
        "{{ '{:>5}|{:.2f}'.format('x', 2.5) }} {{ 'x' | center(5) }} {{ items[:3] | join(',') }} {{ items[:4] | sum }} "
        "{{ 'a\tb'.expandtabs(4) }} {{ 'a-b'.replace('-', '+') }} {{ lipsum(1, html=false) | wordcount > 10 }}"
    )
    assert render(text) == (
        "1/3:0 2/3:1 3/3:2 18446744073709551616 ababab [1, 2] a1 003.1|x   |   7     x|2.50   x   0,1,2 6 "
        "a   b a+b True"
    )


@pytest.mark.parametrize(
    "source",
    ["{{ 'a' + 1 }}", "{{ 0 ** -1 }}", "{{ 'x' * 'y' }}", "{{ range('a') }}", "{{ lipsum(n='x') }}", "{{ 1 - 'a' }}"],
)
def test_validate_leaves_literal_type_errors_to_the_run(source: str) -> None:
    assert list(literal_limit_problems(source)) == []


# --- the budgeted renderer agrees with plain Jinja on ordinary templates ------------------------------------------

PLAIN = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
PIECES = [
    "{{ s }}",
    "{{ n }}",
    "{{ s | upper }}",
    "{{ items | join(', ') }}",
    "{{ items | length }}",
    "{{ items | sum }}",
    "{{ n * 3 }}",
    "{{ n + 2 }}",
    "{{ n ** 2 }}",
    "{{ n % 7 }}",
    "{{ s ~ n }}",
    "{{ s * 2 }}",
    "{{ s + '!' }}",
    "{{ '%s-%d' % (s, n) }}",
    "{{ '{}:{}'.format(s, n) }}",
    "{{ s | center(12) }}",
    "{{ s | indent(2, first=true) }}",
    "{{ s | wordwrap(5) }}",
    "{{ s | replace('a', 'bb') }}",
    "{{ d.a }}",
    "{{ d['b'] }}",
    "{{ range(n % 5) | list }}",
    "{% for x in items %}<{{ x }}:{{ loop.index }}>{% endfor %}",
    "{% for x in items if x > 2 %}{{ x }}{% else %}none{% endfor %}",
    "{% for k, v in d | dictsort %}{{ k }}={{ v }};{% endfor %}",
    "{% if n > 2 %}big{% else %}small{% endif %}",
    "{% set y = n * n %}{{ y }}",
    "{% macro m(v) %}[{{ v }}]{% endmacro %}{{ m(s) }}",
    "{{ items | map('string') | join }}",
    "{{ (items + [n]) | max if items else n }}",
]


@st.composite
def templates(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(PIECES) | st.text("ab \n.-", max_size=6), min_size=1, max_size=8))
    return "".join(parts)


data = st.fixed_dictionaries(
    {
        "s": st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20),
        "n": st.integers(-50, 50),
        "items": st.lists(st.integers(-5, 20), max_size=6),
        "d": st.fixed_dictionaries({"a": st.integers(), "b": st.text(max_size=5)}),
    }
)


def _plain(source: str, context: dict[str, Any]) -> tuple[str, str | None]:
    try:
        return PLAIN.from_string(source).render(context), None
    except (TemplateError, TypeError, ValueError, ArithmeticError) as exc:
        return "", type(exc).__name__


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(templates(), data)
def test_the_budgeted_renderer_agrees_with_plain_jinja(source: str, context: dict[str, Any]) -> None:
    expected, error = _plain(source, context)
    if error is not None:
        with pytest.raises(RenderError):
            compile_text(source, SPAN).render(context)
    else:
        assert compile_text(source, SPAN).render(context) == expected


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["n * 3 + 1", "s ~ n", "items | sum", "[n, s]", "d.a > n", "items[:2] * 2", "n ** 2"]), data)
def test_budgeted_expressions_agree_with_plain_jinja(source: str, context: dict[str, Any]) -> None:
    assert compile_expression(source, SPAN).evaluate(context) == PLAIN.compile_expression(source)(**context)


@pytest.mark.parametrize("depth", [3_000])
def test_a_template_nested_past_the_parsers_recursion_is_a_template_problem_not_a_crash(depth: int) -> None:
    nested = "(" * depth + "1" + ")" * depth
    with pytest.raises(TemplateProblem, match="nests brackets or blocks too deeply"):
        compile_text("{{ " + nested + " }}", SPAN)
    with pytest.raises(TemplateProblem, match="too deeply"):
        compile_expression(nested, SPAN)
    assert list(literal_limit_problems(nested, expression=True)) == []
