"""Run ids (placeholder until the ids change lands)."""

from __future__ import annotations

import secrets
import threading
from datetime import UTC, datetime

_id_lock = threading.Lock()
_last_id: tuple[str, int] = ("", 0)


def new_run_id() -> str:
    global _last_id
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    with _id_lock:
        last_stamp, last_suffix = _last_id
        suffix = last_suffix + 1 if stamp == last_stamp else secrets.randbelow(0x800000)
        _last_id = (stamp, suffix)
    return f"r-{stamp}-{suffix:06x}"
