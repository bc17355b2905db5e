"""Run ids: unique across processes and machines, and sorted by creation time.

A run id is `r-` and a ULID in lowercase, 28 characters: `r-01m96rn2hyzhsh4ta29sqryntk`.

- The ULID (https://github.com/ulid/spec) is 48 bits of milliseconds since the Unix epoch and 80 random bits, in
  26 Crockford base32 digits. Its alphabet is in ASCII order, so ids compare as strings in time order, and any ULID
  library reads the time back (strip the `r-`). Two processes starting runs in the same millisecond collide with
  odds of 1 in 2^80 (about 10^24), against 1 in 2^24 per second for the old `r-YYYYMMDD-HHMMSS-xxxxxx` ids.
- Lowercase, because ids are read and typed in a terminal (`flowctl show r-…`); the alphabet has no `i`, `l`, `o` or
  `u`, so no digit and letter look alike.
- The `r-` keeps a run id recognisable in logs, shell history and `flowctl runs`, as before, and means an id never
  starts with a digit or a `-`. Neither part contains a `/`: a child run's id is `<root id>/<step path>`.
- Monotonic (the ULID spec's rule): ids made by one process sort strictly in the order they were made, even within one
  millisecond or if the system clock steps back. Such an id is the last one plus 1 (carrying into the time); only the
  first id of a millisecond draws fresh random bits. A forked child draws afresh, so it never repeats its parent's
  next id.

Ids of the old format (still in older stores) start `r-2` and so sort after every new one; `flowctl runs` orders by
start time, not by id.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import threading
import time
import weakref
from collections.abc import Callable

PREFIX = "r-"
RANDOM_BITS = 80
TIME_BITS = 48
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lowercase: ascending in ASCII
_DIGITS = 26  # 130 bits' worth; the top two are always 0
_ULID_MAX = (1 << (TIME_BITS + RANDOM_BITS)) - 1

RUN_ID = re.compile(rf"{PREFIX}[0-7][{_ALPHABET}]{{25}}")  # a run id this module makes: the first digit holds 3 bits


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class RunIds:
    """A maker of monotonic run ids; `now_ms` is its clock (the system's by default, fixed in tests)."""

    def __init__(self, now_ms: Callable[[], int] = _wall_ms) -> None:
        self._now_ms = now_ms
        self._lock = threading.Lock()
        self._last = 0  # the last ULID made, as an integer; 0: none yet
        os.register_at_fork(after_in_child=functools.partial(_forked, weakref.ref(self)))

    def new(self) -> str:
        """A new run id, later than every id this maker made before (see the module)."""
        fresh = self._now_ms() << RANDOM_BITS | secrets.randbits(RANDOM_BITS)
        with self._lock:
            value = fresh if fresh >> RANDOM_BITS > self._last >> RANDOM_BITS else self._last + 1
            if value > _ULID_MAX:  # year 10889, or 2^80 ids in one millisecond
                raise OverflowError("no ULID left after the last one made")
            self._last = value
        return PREFIX + encode(value)


def _forked(maker_ref: weakref.ref[RunIds]) -> None:
    """In a forked child: draw afresh, as the parent goes on from the same last id. A new lock: another thread may have
    held the old one at the fork."""
    maker = maker_ref()
    if maker is not None:
        maker._lock = threading.Lock()
        maker._last = 0


_process_ids = RunIds()


def new_run_id() -> str:
    """A new run id, `r-` and a lowercase ULID; later than every id this process made before (see the module)."""
    return _process_ids.new()


def encode(value: int) -> str:
    """A 128-bit integer as 26 lowercase Crockford base32 digits."""
    digits = []
    for _ in range(_DIGITS):
        value, digit = divmod(value, 32)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def decode(run_id: str) -> int:
    """The ULID of a run id this module made, as an integer (`ValueError` for anything else)."""
    if not RUN_ID.fullmatch(run_id):
        raise ValueError(f"not a run id: {run_id!r}")
    value = 0
    for char in run_id[len(PREFIX) :]:
        value = value * 32 + _ALPHABET.index(char)
    return value


def created_ms(run_id: str) -> int:
    """When a run id was made: milliseconds since the Unix epoch."""
    return decode(run_id) >> RANDOM_BITS


__all__ = ["PREFIX", "RANDOM_BITS", "RUN_ID", "RunIds", "created_ms", "decode", "encode", "new_run_id"]
