"""Text templates render exactly as Jinja renders them, whether they take the plain-lookup fast path or not."""

from __future__ import annotations

from collections import ChainMap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowctl.dsl.diagnostics import Span
from flowctl.dsl.templates import ENV, RenderError, compile_expression, compile_string_value, compile_text

SPAN = Span("p.yaml", 3, 5)


def jinja(source: str, context: dict[str, Any]) -> str:
    """The reference: the sandboxed environment's own template, rendered the ordinary way."""
    return ENV.from_string(source).render(context)


def outcome(render: Any) -> tuple[str, str]:
    try:
        return ("ok", render())
    except Exception as exc:  # the fast path must fail where Jinja fails, with Jinja's message
        return ("error", str(exc).split(": ", 1)[-1] if isinstance(exc, RenderError) else str(exc))


CONTEXT: dict[str, Any] = {
    "item": 7,
    "inputs": {"topic": "tides", "items": ["a", "b"], "nested": {"k": [1, {"deep": None}]}},
    "steps": ChainMap({"b": {"output": "from b"}}, {"a": {"output": {"text": "hi", "items": "a key"}}}),
    "state": {"count": 3, "flag": True, "ratio": 0.5},
    "text": "plain",
    "obj": object(),
}

CASES = [
    "item {{ item }}",
    "{{ steps.a.output.text }} and {{ steps.b.output }}",
    "{{ steps.a.output.items }}",  # a mapping's key wins over dict.items
    "{{ inputs['topic'] }} / {{ inputs.items[1] }} / {{ inputs.nested.k[1].deep }}",
    "{{ inputs.items }} {{ inputs.nested }} {{ state.flag }} {{ state.ratio }}",
    "line one\n{{ text }}\n",
    "{{- text }}  \n  {{ item -}}  tail",
    "{{ missing }}",
    "{{ steps.nope.output }}",
    "{{ inputs.items[5] }}",
    "{{ text.upper }}",
    "{{ obj.__class__ }}",
    "{{ text.__class__.__mro__ }}",
    "{{ item | string }}",
    "{{ '{{' }} {{ item }}",
    "{% if item %}{{ item }}{% endif %}",
]


@pytest.mark.parametrize("source", CASES)
def test_rendering_matches_jinja(source: str) -> None:
    template = compile_text(source, SPAN)
    assert outcome(lambda: template.render(CONTEXT)) == outcome(lambda: jinja(source, CONTEXT))


def test_plain_lookups_take_the_fast_path_and_the_rest_do_not() -> None:
    assert compile_text("item {{ item }}", SPAN)._simple is not None
    assert compile_text("{{ inputs['k'][0].x }}", SPAN)._simple is not None
    assert compile_text("{{ item | upper }}", SPAN)._simple is None
    assert compile_text("{{ item + 1 }}", SPAN)._simple is None
    assert compile_text("{% for x in y %}{{ x }}{% endfor %}", SPAN)._simple is None


def test_an_undefined_name_is_jinjas_error_with_the_span() -> None:
    with pytest.raises(RenderError, match=r"^p\.yaml:3:5: 'missing' is undefined$"):
        compile_text("x {{ missing }}", SPAN).render({})


def test_unsafe_attributes_stay_refused() -> None:
    with pytest.raises(RenderError, match="unsafe"):
        compile_text("{{ text.__class__.__mro__ }}", SPAN).render({"text": "x"})


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "items", "0"]), inner),
    max_leaves=6,
)
lookups = st.tuples(
    st.sampled_from(["x", "y", "missing"]),
    st.lists(st.sampled_from([".a", ".b", ".items", "['a']", "[0]", "[1]", ".keys"]), max_size=3),
).map(lambda parts: "{{ " + parts[0] + "".join(parts[1]) + " }}")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.text(alphabet="ab \n-", max_size=5), lookups), max_size=4),
    st.dictionaries(st.sampled_from(["x", "y"]), values),
)
def test_any_lookup_template_renders_as_jinja_does(pieces: list[str], context: dict[str, Any]) -> None:
    source = "".join(pieces)
    template = compile_text(source, SPAN)
    assert outcome(lambda: template.render(context)) == outcome(lambda: jinja(source, context))


@pytest.mark.parametrize(
    "source", ["{{ step.output.result }}", "{{ step.output.result.deeper }}", "{{ step['missing'] }}"]
)
def test_a_value_naming_a_missing_attribute_fails_to_render_instead_of_leaking_undefined(source: str) -> None:
    """A single expression keeps its native type; an undefined one used to come back as Jinja's Undefined, which
    raised later, outside any render, when the run recorded it (found with an output template)."""
    value = compile_string_value(source, Span("p.yaml", 3, 5))
    with pytest.raises(RenderError, match=r"^p\.yaml:3:5: "):
        value.evaluate({"step": {"output": "plain text"}})


def test_a_bare_expression_naming_a_missing_attribute_fails_to_render() -> None:
    expression = compile_expression("step.output.result", Span("p.yaml", 4, 9))
    with pytest.raises(RenderError, match="has no attribute 'result'"):
        expression.evaluate({"step": {"output": "plain text"}})
