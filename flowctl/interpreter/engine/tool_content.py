"""Tool results as the model sees them: images and audio a tool returned reach the model as content parts in OpenAI
chat format, beside the tool message's text.

Chat APIs accept only text in a `tool` message (OpenAI, and most compatible servers), so the media follow as one
`user` message after the turn's tool messages, each part introduced by the tool call it came from — the approach of
fast-agent and mcp-agent. Images go as `image_url` parts with a `data:` URL, audio as `input_audio` parts (OpenAI
takes `wav` and `mp3`; other formats stay the text note the tool message already has). Embedded resources whose
blob is an image or audio are sent the same way. A model that cannot see images answers with an error from its
server: give such agents servers without media, or `allowed_tools` that leave the media tools out.
"""

from __future__ import annotations

from typing import Any

from flowctl.interpreter.providers.llm import Message
from flowctl.interpreter.tools import ToolResult

_AUDIO_FORMATS = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
}


def media_parts(result: ToolResult) -> list[dict[str, Any]]:
    """The OpenAI content parts for the images and audio among a tool result's blocks."""
    found: list[dict[str, Any]] = []
    for block in result.parts:
        kind, data, mime = block.get("type"), block.get("data"), block.get("mimeType")
        if kind == "resource":  # an embedded resource: its blob may be media too
            resource = block.get("resource") or {}
            data, mime = resource.get("blob"), resource.get("mimeType")
            kind = (mime or "").partition("/")[0]
        if not isinstance(data, str) or not data:
            continue
        if kind == "image":
            found.append({"type": "image_url", "image_url": {"url": f"data:{mime or 'image/png'};base64,{data}"}})
        elif kind == "audio" and (audio := _AUDIO_FORMATS.get((mime or "").lower())) is not None:
            found.append({"type": "input_audio", "input_audio": {"data": data, "format": audio}})
    return found


def media_message(media: list[tuple[str, str, list[dict[str, Any]]]]) -> Message | None:
    """One user message carrying the media of a turn's tool results: (tool call id, tool name, parts) each."""
    if not media:
        return None
    parts: list[dict[str, Any]] = []
    for call_id, name, found in media:
        parts.append({"type": "text", "text": f"Media returned by the tool call {call_id} ({name}):"})
        parts.extend(found)
    return Message("user", None, parts=tuple(parts))
