"""What templates know of the run itself: `now()`, journaled so that a resumed run reads the same times; the run's
attempt (how many times it was started: 1, then 2 after the first resume); times as UTC ISO-8601 text; and the
names of fan-out items (`item_id:`), which name their child runs.

`now()` is keyed by the step whose template calls it (`step/now#0`, `step/now#1`, … in the order the step asks), so
each step's readings replay in order whatever other steps do meanwhile; templates outside any step (outputs,
trigger conditions) use `@run/now#…`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flowctl.interpreter.errors import RenderFailed
from flowctl.interpreter.persistence.journal import MISSING, Journal

if TYPE_CHECKING:
    from flowctl.interpreter.engine.context import RunContext

# The step (or fan-out item) whose templates are being rendered: set by the engine for each step and item.
STEP_PATH: ContextVar[str] = ContextVar("flowctl_step_path", default="@run")

ATTEMPT_KEY = "@run/attempt"


def iso(timestamp: float) -> str:
    """A wall-clock time as templates see it: UTC ISO-8601 with milliseconds (`2026-12-07T03:20:38.123+00:00`)."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def now_function(ctx: RunContext) -> Callable[[], str]:
    """`now()` for one run: the current time, journaled under the calling step; replayed on resume."""
    runtime = ctx.runtime
    run_id = ctx.run_id

    def now() -> str:
        path = STEP_PATH.get()
        counted = (run_id, path)
        n = runtime.now_calls[counted]
        runtime.now_calls[counted] = n + 1
        key = f"{path}/now#{n}"
        value = runtime.journal.recall(run_id, key)
        if value is MISSING:
            value = iso(runtime.clock.now())
            runtime.journal.keep(run_id, key, value)
        return str(value)

    return now


def run_attempt(journal: Journal, run_id: str) -> int:
    """Which start of the run this is: 1 for a fresh run (which journals nothing: a first start needs no record),
    one more for each resume (journaled, for the next resume to count on)."""
    if not journal.resuming:
        return 1
    recorded = journal.recall(run_id, ATTEMPT_KEY)
    attempt = (recorded if isinstance(recorded, int) else 1) + 1
    journal.keep(run_id, ATTEMPT_KEY, attempt)
    return attempt


# --- fan-out items named by `item_id:` -------------------------------------------------------------------------

ITEM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,99}$")


def item_names(path: str, names: list[Any]) -> list[str]:
    """The rendered `item_id`s of a fan-out's items, checked: each a short name (it becomes part of the item's
    path `step[name]` and of its child run's id), and no two alike. Raises RenderFailed naming the culprit."""
    seen: dict[str, int] = {}
    checked: list[str] = []
    for i, name in enumerate(names):
        text = str(name) if isinstance(name, str | int) and not isinstance(name, bool) else None
        if text is None or not ITEM_ID.match(text):
            raise RenderFailed(
                f"step {path!r}: item {i}'s item_id is {name!r}; an item_id is a name of letters, digits and "
                "`_ . : @ -` (at most 100, starting with a letter or digit)"
            )
        if text in seen:
            raise RenderFailed(
                f"step {path!r}: items {seen[text]} and {i} have the same item_id {text!r}; item ids must be unique "
                "among the items of a fan-out (add what tells them apart, such as `index`)"
            )
        seen[text] = i
        checked.append(text)
    return checked
