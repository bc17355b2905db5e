"""The terminal form an elicitation request becomes (engine/server_requests.py): one question per field of the
requested schema, typed answers, defaults, required fields, declining and cancelling."""

from __future__ import annotations

from collections.abc import Callable

from flowctl.interpreter.engine.server_requests import _defaults, _terminal_form
from flowctl.interpreter.tools import ElicitationAnswer, ElicitationRequest

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "title": "Your name"},
        "count": {"type": "integer", "default": 1},
        "ok": {"type": "boolean"},
        "color": {"type": "string", "enum": ["red", "blue"]},
    },
    "required": ["name"],
}


def typed(*answers: str) -> tuple[Callable[[str], str], list[str]]:
    """An `input` that answers in turn, and the prompts it was shown."""
    queue, prompts = list(answers), []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        if not queue:
            raise EOFError
        return queue.pop(0)

    return ask, prompts


def test_a_form_asks_each_field_with_its_type_and_default_and_parses_the_answers() -> None:
    ask, prompts = typed("", "Ana", "x", "3", "yes", "green", "blue")
    answer = _terminal_form("srv", ElicitationRequest("Who?", SCHEMA), ask)
    assert answer == ElicitationAnswer("accept", {"name": "Ana", "count": 3, "ok": True, "color": "blue"})
    assert prompts[0] == "  Your name (string): "  # asked again: required
    assert prompts[2] == "  count (integer) [1]: "
    assert prompts[-1] == "  color red/blue: "


def test_an_empty_answer_keeps_the_default() -> None:
    ask, _ = typed("Ana", "", "no", "red")
    answer = _terminal_form("srv", ElicitationRequest("Who?", SCHEMA), ask)
    assert answer.content == {"name": "Ana", "count": 1, "ok": False, "color": "red"}


def test_dash_declines_and_end_of_input_cancels() -> None:
    assert _terminal_form("srv", ElicitationRequest("Who?", SCHEMA), typed("-")[0]).action == "decline"
    assert _terminal_form("srv", ElicitationRequest("Who?", SCHEMA), typed("Ana")[0]).action == "cancel"


def test_auto_accepts_defaults_or_declines_without_them() -> None:
    assert _defaults(SCHEMA) == ElicitationAnswer("decline")  # `name` is required and has no default
    with_defaults = {"properties": {"count": {"type": "integer", "default": 2}}, "required": ["count"]}
    assert _defaults(with_defaults) == ElicitationAnswer("accept", {"count": 2})
