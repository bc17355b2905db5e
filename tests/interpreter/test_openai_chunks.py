"""The OpenAI provider reads common stream chunks through their attributes and every other chunk as a dict, with
all its checks: both readings must agree on every chunk the SDK can build (it builds them without validation)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from openai._models import construct_type
from openai.types.chat import ChatCompletionChunk

from flowctl.interpreter.errors import MalformedResponse
from flowctl.interpreter.providers.openai_provider import _Collector


class _Unfamiliar(ChatCompletionChunk):
    """The same chunk under another type: the provider reads it as a dict (the path with every check)."""


def _odd() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.integers(-2, 2), st.floats(allow_nan=False), st.text(max_size=3), st.booleans())


_deltas = st.one_of(
    _odd(),
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.just("assistant"),
            "content": st.one_of(st.text(max_size=5), _odd()),
            "tool_calls": st.one_of(st.none(), st.just([]), st.just([{"index": 0, "function": {"name": "f"}}])),
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


def _read(chunks: list[dict[str, Any]], cls: type[ChatCompletionChunk]) -> tuple[Any, ...]:
    collector = _Collector(headers={"content-type": "text/event-stream"})
    try:
        for data in chunks:
            chunk = construct_type(type_=cls, value=data)
            assert type(chunk) is cls
            collector.add(chunk)
    except MalformedResponse as exc:
        return ("malformed", str(exc))
    calls = {i: (p.id, p.name, p.arguments) for i, p in collector.calls.items()}
    return (
        collector.events,
        collector.saw_choice,
        collector.content,
        calls,
        collector.finish_reason,
        collector.model,
        collector.usage,
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(_chunks, max_size=4))
def test_attribute_and_dict_readings_agree(chunks: list[dict[str, Any]]) -> None:
    assert _read(chunks, ChatCompletionChunk) == _read(chunks, _Unfamiliar)
