"""The OpenAI provider reads each stream chunk as the decoded JSON object it is, checking every field it uses: whatever
a server sends, the reading ends in an answer or a MalformedResponse, never another exception, and the answer holds
exactly the text of the first choice's string deltas."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowctl.interpreter.errors import MalformedResponse
from flowctl.interpreter.providers.openai_provider import _Collector


def _odd() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.integers(-2, 2), st.floats(allow_nan=False), st.text(max_size=3), st.booleans())


_deltas = st.one_of(
    _odd(),
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.just("assistant"),
            "content": st.one_of(st.text(max_size=5), _odd()),
            "tool_calls": st.one_of(
                _odd(),
                st.just([]),
                st.just([{"index": 0, "function": {"name": "f"}}]),
                st.lists(st.one_of(_odd(), st.fixed_dictionaries({}, optional={"function": _odd()})), max_size=2),
            ),
        },
    ),
)
_choices = st.fixed_dictionaries(
    {},
    optional={
        "index": st.one_of(st.sampled_from([0, 1]), _odd()),
        "delta": _deltas,
        "finish_reason": st.one_of(st.sampled_from(["stop", "length", "tool_calls"]), _odd()),
    },
)
_usages = st.one_of(
    _odd(),
    st.fixed_dictionaries(
        {},
        optional={
            "prompt_tokens": st.one_of(st.integers(0, 10**13), _odd()),
            "completion_tokens": st.one_of(st.integers(0, 99), _odd()),
        },
    ),
)
_chunks = st.fixed_dictionaries(
    {"id": st.just("c"), "object": st.just("chat.completion.chunk"), "created": st.just(1)},
    optional={
        "model": st.one_of(st.text(max_size=4), _odd()),
        "choices": st.one_of(st.lists(_choices, max_size=2), _odd()),
        "usage": _usages,
    },
)


def _expected_text(chunks: list[Any]) -> list[str]:
    """The plain reading: the string contents of choice 0's deltas, in order."""
    pieces = []
    for data in chunks:
        for choice in data.get("choices") or []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and choice.get("index", 0) == 0 and isinstance(delta.get("content"), str):
                pieces.append(delta["content"])
    return pieces


@settings(max_examples=300, deadline=None)
@given(st.lists(_chunks, max_size=4))
def test_any_chunks_read_to_an_answer_or_a_malformed_response(chunks: list[dict[str, Any]]) -> None:
    collector = _Collector(headers={"content-type": "text/event-stream"})
    try:
        for data in chunks:
            collector.add(data)
    except MalformedResponse:
        return
    assert collector.events == len(chunks)
    assert collector.content == _expected_text(chunks)
    assert collector.usage is None or min(collector.usage.input_tokens, collector.usage.output_tokens) >= 0


@given(st.one_of(_odd(), st.lists(st.integers(), max_size=2)))
def test_an_event_that_is_not_an_object_is_malformed(event: Any) -> None:
    collector = _Collector(headers={"content-type": "text/event-stream"})
    try:
        collector.add(event)
    except MalformedResponse as exc:
        assert "not a chat completion chunk" in str(exc)
    else:
        raise AssertionError("accepted a non-object event")


@pytest.mark.parametrize("odd", [5, 1.5, True, "ab", {"index": 0}])
def test_tool_calls_that_are_not_a_list_are_malformed(odd: Any) -> None:
    collector = _Collector(headers={"content-type": "text/event-stream"})
    with pytest.raises(MalformedResponse, match="tool"):
        collector.add({"choices": [{"index": 0, "delta": {"tool_calls": odd}}]})
