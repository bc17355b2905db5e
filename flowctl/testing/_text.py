"""Text helpers shared by the matchers, the runner and the report: showing a value, the first line of a message."""

from __future__ import annotations

import json
from typing import Any


def show(value: Any, limit: int = 160) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
