"""The request digest is compared with journaled ones on resume: for the same request it must never change."""

from __future__ import annotations

from flowctl.interpreter.providers.llm import CompletionRequest, Message, ToolCallRequest
from flowctl.interpreter.tools import ToolSpec


def test_request_digest_is_pinned() -> None:
    # values computed before the digest was optimised; a change here breaks resuming existing journals
    full = CompletionRequest(
        model="m",
        messages=(
            Message("system", "You repeat."),
            Message("user", "item 7 é"),
            Message("assistant", None, (ToolCallRequest("call_1", "t", '{"a": 1}'),)),
            Message("tool", "x", tool_call_id="call_1"),
        ),
        tools=(ToolSpec("t", "d", {"type": "object"}),),
        output_schema={"type": "object"},
        params={"temperature": 0.2},
        agent="a",
        step="s",
    )
    assert full.digest() == "5ec981ecdbbd8b913fa617fe76ebda214e89437752f73633c1d9bcd709d72c72"
    plain = CompletionRequest(
        model="bench-model", messages=(Message("system", "You repeat what you are given."), Message("user", "item 1"))
    )
    assert plain.digest() == "35257d51338017517375642ee8fece7a58275be74776bd5c7fdc58369b26c915"
    # routing hints and the timeout are not part of what is sent
    assert CompletionRequest("bench-model", plain.messages, agent="x", step="y", timeout=5).digest() == plain.digest()


def test_the_fast_digest_equals_the_encoded_request() -> None:
    """Plain requests are hashed from hand-written JSON: it must be exactly what the encoder writes."""
    import hashlib

    from flowctl.interpreter.providers.llm import _DIGEST_ENCODER

    def encoded(request: CompletionRequest) -> str:
        return hashlib.sha256(_DIGEST_ENCODER.encode(request.to_json()).encode()).hexdigest()

    texts = ["", "plain", 'quo"te \\ back\nslash\t', "ünïcødé ☃ \U0001f600", "\x00\x1f\x7f", None]
    requests = [CompletionRequest("m", tuple(Message(role, text) for role in ("system", "user"))) for text in texts]
    requests += [
        CompletionRequest(
            "gpt-4o ☃",
            (Message("user", "x"), Message("assistant", "y")),
            output_schema={"type": "object", "properties": {"b": {}, "a": {"enum": [1.5, None, True]}}},
            params={"temperature": 0.2, "max_tokens": 10, "seed": None},
        ),
        CompletionRequest("m", (Message("tool", "x", tool_call_id=""),)),  # an empty id is still written
        CompletionRequest("m", (Message("user", "x", name="n"),)),
        CompletionRequest("m", ()),
        CompletionRequest("m", (Message("user", 42),)),  # type: ignore[arg-type]  # odd values: the encoder's str
    ]
    for request in requests:
        assert request.digest() == encoded(request), request
