"""How the recorder turns what happened into the text the store keeps: values masked (the run's Redactor) and encoded
as JSON, transcript bodies capped, and transcript entries kept as the objects they describe until they are committed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from flowctl.interpreter.persistence.store import Exchanged
from flowctl.interpreter.redact import Redactor

MAX_TRANSCRIPT_BODY = 256 * 1024  # characters of one request or response kept in a transcript


class JsonText:
    """A transcript body that is JSON text already (the request's digest text, the answer's journal text). A holder,
    not a str subclass: the text is stored as it is, never copied (a tool loop's request carries the whole
    conversation), and SQLite binds a plain str without its adapter lookup."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class RecordEncoder:
    """Redacted JSON text for the run record, with one encoder for every value. JSONEncoder.encode builds its C encoder
    anew per call (~0.7 µs); made once, it writes the same text. No circular-reference checks: the values are JSON-like
    data (parsed JSON, template results), which cannot refer to themselves."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self._encoder = json.JSONEncoder(ensure_ascii=False, default=self._encode_odd)
        self._c_encoder = (
            None
            if c_make_encoder is None
            else c_make_encoder(None, self._encode_odd, encode_basestring, None, ": ", ", ", False, False, True)
        )

    def dump(self, value: Any) -> str | None:
        """Redacted JSON text; None stays None."""
        if value is None:
            return None
        return self.dump_value(value)

    def dump_value(self, value: Any) -> str:
        if type(value) is str:  # the common step output: 0.15 µs cheaper than the encoder
            return str(encode_basestring(self.redactor.redact_text(value)))
        return self.encode(self.redactor.redact(value))

    def encode(self, redacted: Any) -> str:
        """JSON text of an already redacted value; odd values become their (redacted) `str`."""
        if self._c_encoder is None:
            return self._encoder.encode(redacted)
        return "".join(self._c_encoder(redacted, 0))

    def result_text(self, result: dict[str, Any] | str) -> tuple[str, bool]:
        """A call result's redacted JSON text, and whether redaction altered it (replaying it would replay the mask,
        not the answer). JSON text is kept as it is unless a secret may be in it."""
        if isinstance(result, str):
            if not self.redactor.masks or self.redactor.clear_in_json(result):
                return result, False
            result = json.loads(result)
        stored = self.redactor.redact(result)
        return self.encode(stored), self.redactor.masks and stored != result

    def capped(self, value: Any) -> str:
        """A transcript body as redacted JSON text, or, past `MAX_TRANSCRIPT_BODY` characters, a visible marker with
        the full size and the beginning. `value` may be JsonText: encoded already."""
        if type(value) is JsonText:
            text = value.text
            if self.redactor.masks and not self.redactor.clear_in_json(text):
                text = self.encode(self.redactor.redact(json.loads(text)))
        else:
            text = self.dump_value(value)
        if len(text) <= MAX_TRANSCRIPT_BODY:
            return text
        return self.encode({"truncated": True, "size": len(text), "head": text[:MAX_TRANSCRIPT_BODY]})

    def _encode_odd(self, odd: object) -> str:
        return self.redactor.redact_text(str(odd))


class Transcribed:
    """A transcript entry whose bodies are not encoded yet (see Recorder.exchange): its write, made when the call
    ended, and `bodies(raw)`, which gives the request, response and error as JSON-like values when it is committed
    (`write` fills them in; again, the same, if a commit that failed is made again)."""

    __slots__ = ("bodies", "entry", "raw")

    def __init__(
        self, entry: Exchanged, bodies: Callable[[Any], tuple[Any, Any, dict[str, Any] | None]], raw: Any
    ) -> None:
        self.entry = entry
        self.bodies = bodies
        self.raw = raw

    def write(self, encoder: RecordEncoder) -> Exchanged:
        request, response, error = self.bodies(self.raw)
        entry = self.entry
        entry.request = encoder.capped(request)
        entry.response = None if response is None else encoder.capped(response)
        entry.error = encoder.dump(error)
        return entry


__all__ = ["MAX_TRANSCRIPT_BODY", "JsonText", "RecordEncoder", "Transcribed"]
