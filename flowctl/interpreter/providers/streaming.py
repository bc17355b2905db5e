"""Streaming a model's answer to watchers as it arrives (`flowctl run --stream`).

Owns `TEXT_SINK`, the context variable through which a provider hands on the pieces of an answer's text, and the
helpers around it. Whoever wants the text (the agent loop, for the reporter's `model_text` hook) sets a sink for the
duration of one model call; a provider reads it once per call and, when one is set, calls it with each piece of text
in order as the pieces arrive, so that the pieces joined are the answer's text. Unset (the default), streaming costs
a provider one `ContextVar.get` per call.

A sink is a plain function: it runs on the event loop in the middle of a stream and must return quickly without
awaiting. A failed attempt may have streamed part of an answer before it failed; the next attempt streams from the
start again (watchers learn of the failure from the reporter's `model_call`). Third-party providers may call
`stream_text` (or read `TEXT_SINK` themselves): it is part of the provider port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

TextSink = Callable[[str], None]

# The sink of the model call in progress in this context; None: nobody is watching.
TEXT_SINK: ContextVar[TextSink | None] = ContextVar("flowctl_text_sink", default=None)


def stream_text(piece: str) -> None:
    """Hand one piece of the answer's text to the sink of the current call, if any (one ContextVar.get when none).

    For providers that hand on few pieces; in a loop over many, read `TEXT_SINK.get()` once and call the sink."""
    sink = TEXT_SINK.get()
    if sink is not None and piece:
        sink(piece)


@contextmanager
def streaming_to(sink: TextSink | None) -> Iterator[None]:
    """Within the block, the model calls made in this context stream their text to `sink` (None: to nobody)."""
    token = TEXT_SINK.set(sink)
    try:
        yield
    finally:
        TEXT_SINK.reset(token)


def word_pieces(text: str) -> list[str]:
    """`text` cut after each run of spaces that follows a word: the pieces join to `text` exactly (leading space
    goes with the first word). What a provider that has the whole text at once streams per word."""
    pieces: list[str] = []
    start = 0
    length = len(text)
    i = 0
    while i < length:
        while i < length and text[i].isspace():  # leading space belongs to the first word
            i += 1
        while i < length and not text[i].isspace():
            i += 1
        while i < length and text[i].isspace():
            i += 1
        pieces.append(text[start:i])
        start = i
    return pieces
