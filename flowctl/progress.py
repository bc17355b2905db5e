"""Progress shown to people and tools: live status on a terminal, plain lines otherwise, a JSONL event log on
request; used by `flowctl run`/`resume` (cli/running.py) and `flowctl test --verbose` (testing/runner.py).

Each is a Reporter (interpreter/reporting.py, the port the interpreter calls); they only observe and never affect
the run. Lines go to stderr so stdout stays the run's result.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, TextIO

from flowctl.interpreter.reporting import Reporter, Retry

ITEMS_REPORTED = 10  # fan-out items whose every line is shown; after them only failures and retries
_ITEM = re.compile(r"\[\d+\]$")


@dataclass(slots=True)
class _ItemGroup:
    """The items of one fan-out, as a line reporter has seen them."""

    loud: set[str] = field(default_factory=set)  # the first ITEMS_REPORTED items: reported line by line
    retried: set[str] = field(default_factory=set)  # items reported from their retry on
    finished: dict[str, int] = field(default_factory=dict)  # items finished, by status
    quiet: int = 0  # items whose lines were left out


def _item_of(where: str) -> tuple[str, str] | None:
    """(fan-out step, item) when `where` is a fan-out item or a step inside one: `fan[3]/check` → (`fan`, `fan[3]`)."""
    parts = where.split("/")
    for i, part in enumerate(parts):
        match = _ITEM.search(part)
        if match:
            item = "/".join(parts[: i + 1])
            return item[: len(item) - len(match.group())], item
    return None


class LineReporter(Reporter):
    """One plain line per step start/finish; used when stderr is not a terminal.

    A fan-out of thousands would be thousands of lines: past its first ITEMS_REPORTED items, an item's lines are
    shown only when it fails or retries, and the fan-out's own finish line sums its items up.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.root: str | None = None
        self.groups: dict[str, _ItemGroup] = {}

    def _quiet(self, where: str, status: str | None = None, attempt: int = 1) -> bool:
        """Whether a line about `where` (a start of `attempt`, or a finish with `status`) is left out; counts items."""
        found = _item_of(where)
        if found is None:
            return False
        step, item = found
        group = self.groups.setdefault(step, _ItemGroup())
        if item not in group.loud and len(group.loud) < ITEMS_REPORTED:
            group.loud.add(item)
        if attempt > 1:
            group.retried.add(item)
        if status is not None and where == item:
            group.finished[status] = group.finished.get(status, 0) + 1
        shown = item in group.loud or item in group.retried
        quiet = not shown and status in (None, "succeeded", "skipped")
        if quiet and status is not None and where == item:
            group.quiet += 1
        return quiet

    def _summary(self, where: str) -> str:
        group = self.groups.pop(where, None)
        if group is None or not group.quiet:
            return ""
        tally = ", ".join(f"{n} {status}" for status, n in sorted(group.finished.items(), key=lambda s: -s[1]))
        return f" — {sum(group.finished.values())} items: {tally} ({group.quiet} not listed)"

    def _where(self, run_id: str, path: str) -> str:
        """Steps of child runs show under the child's id relative to the root run: `tasks[0]/do`."""
        if self.root is None or run_id == self.root or not run_id.startswith(self.root + "/"):
            return path
        return f"{run_id[len(self.root) + 1 :]}/{path}"

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def run_started(self, run_id: str, pipeline: str, resumed: bool) -> None:
        self.root = self.root or run_id
        self._line(f"{'resuming' if resumed else 'run'} {run_id} ({pipeline})")

    def step_started(self, run_id: str, path: str, kind: str, attempt: int) -> None:
        where = self._where(run_id, path)
        if self._quiet(where, attempt=attempt):
            return
        retry = f" (attempt {attempt})" if attempt > 1 else ""
        self._line(f"  ▸ {where} [{kind}]{retry}")

    def step_finished(self, run_id: str, path: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        where = self._where(run_id, path)
        if self._quiet(where, status):
            return
        mark = {"succeeded": "✓", "failed": "✗", "skipped": "–", "cancelled": "⊘"}.get(status, "?")
        extra = f", {tokens} tok" if tokens else ""
        detail = f": {error}" if error else ""
        self._line(f"  {mark} {where} {status} in {elapsed:.2f}s{extra}{self._summary(where)}{detail}")

    def step_retrying(self, run_id: str, path: str, retry: Retry) -> None:
        where = self._where(run_id, path)
        self._quiet(where, attempt=retry.attempt + 1)  # counts the item as retried: shown from now on
        self._line(f"  ↻ {where} {retry.describe()}: {retry.error}")

    def event(self, run_id: str, name: str, source: str) -> None:
        self._line(f"  ⚑ event {name} from {source}")

    def run_finished(self, run_id: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        self._line(f"{run_id} {status} in {elapsed:.2f}s, {tokens} tokens" + (f": {error}" if error else ""))


class TtyReporter(LineReporter):
    """Live progress on a terminal: a status line of running steps, finished steps scroll above it.

    A ticker thread redraws the status line every REDRAW_INTERVAL (so the elapsed time moves while a long call runs);
    events only update the counts. Redrawing it at every event, twice per item of a fan-out of thousands, cost 0.33 s
    of a 10,000-item fan-out: more than the run itself. Lines (failures, the run's end) are written at once."""

    REDRAW_INTERVAL = 0.1  # seconds

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.running: dict[str, float] = {}
        self.done = self.failed = self.tokens = self.draws = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()  # the stream and `running`, shared with the ticker
        self._drawn = threading.Condition(self._lock)  # notified at each draw (see wait_drawn)
        self._closed = threading.Event()
        self._ticker: threading.Thread | None = None

    def _tick(self) -> None:
        while not self._closed.wait(self.REDRAW_INTERVAL):
            with self._lock:
                if not self._closed.is_set():
                    self._draw()

    def _line(self, text: str) -> None:
        with self._lock:
            self.stream.write("\r\x1b[2K" + text + "\n")
            self._draw()  # the line took the status line's place

    def _draw(self) -> None:
        """Write the status line (`_lock` held)."""
        names = ", ".join(islice(self.running, 3)) + (" …" if len(self.running) > 3 else "")
        elapsed = time.monotonic() - self.started
        self.stream.write(
            f"\r\x1b[2K{elapsed:6.1f}s  running {len(self.running)}: {names}  done {self.done}  "
            f"failed {self.failed}  {self.tokens} tok"
        )
        self.stream.flush()
        self.draws += 1
        self._drawn.notify_all()

    def wait_drawn(self, count: int, timeout: float = 60.0) -> bool:
        """Wait until the status line has been drawn `count` times in all (for tests and embedders that need to see
        the latest counts on screen); False if `timeout` passed first."""
        with self._drawn:
            return self._drawn.wait_for(lambda: self.draws >= count, timeout)

    def run_started(self, run_id: str, pipeline: str, resumed: bool) -> None:
        super().run_started(run_id, pipeline, resumed)
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="flowctl-progress", daemon=True)
            self._ticker.start()

    def step_started(self, run_id: str, path: str, kind: str, attempt: int) -> None:
        where = self._where(run_id, path)
        with self._lock:
            self.running[where] = time.monotonic()

    def step_finished(self, run_id: str, path: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        where = self._where(run_id, path)
        with self._lock:
            self.running.pop(where, None)
            self.done += status == "succeeded"
            self.failed += status == "failed"
            self.tokens += tokens
        if status != "succeeded":
            super().step_finished(run_id, path, status, elapsed, tokens, error)

    def close(self) -> None:
        self._closed.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


class JsonlReporter(Reporter):
    """Every progress event as one JSON line (`flowctl run --events FILE`)."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _write(self, event_type: str, /, **data: Any) -> None:
        self.file.write(json.dumps({"type": event_type, "at": time.time(), **data}, default=str) + "\n")

    def run_started(self, run_id: str, pipeline: str, resumed: bool) -> None:
        self._write("run_started", run_id=run_id, pipeline=pipeline, resumed=resumed)

    def step_started(self, run_id: str, path: str, kind: str, attempt: int) -> None:
        self._write("step_started", run_id=run_id, step=path, kind=kind, attempt=attempt)

    def step_finished(self, run_id: str, path: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        self._write(
            "step_finished",
            run_id=run_id,
            step=path,
            status=status,
            elapsed=elapsed,
            tokens=tokens,
            error=error or None,
        )

    def step_retrying(self, run_id: str, path: str, retry: Retry) -> None:
        self._write(
            "step_retrying",
            run_id=run_id,
            step=path,
            attempt=retry.attempt,
            max_attempts=retry.max_attempts,
            reason=retry.reason,
            error=retry.error,
            delay=retry.delay,
        )

    def event(self, run_id: str, name: str, source: str) -> None:
        self._write("event", run_id=run_id, name=name, source=source)

    def run_finished(self, run_id: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        self._write("run_finished", run_id=run_id, status=status, elapsed=elapsed, tokens=tokens, error=error or None)

    def close(self) -> None:
        self.file.close()


class MultiReporter(Reporter):
    def __init__(self, reporters: list[Reporter]) -> None:
        self.reporters = reporters

    def run_started(self, *args: Any) -> None:
        for r in self.reporters:
            r.run_started(*args)

    def step_started(self, *args: Any) -> None:
        for r in self.reporters:
            r.step_started(*args)

    def step_finished(self, *args: Any) -> None:
        for r in self.reporters:
            r.step_finished(*args)

    def step_retrying(self, *args: Any) -> None:
        for r in self.reporters:
            r.step_retrying(*args)

    def event(self, *args: Any) -> None:
        for r in self.reporters:
            r.event(*args)

    def run_finished(self, *args: Any) -> None:
        for r in self.reporters:
            r.run_finished(*args)

    def close(self) -> None:
        for r in self.reporters:
            r.close()


class RedactingReporter(Reporter):
    """Masks secrets in every text a reporter shows (error messages can quote a server's stderr)."""

    def __init__(self, inner: Reporter, redact: Any) -> None:
        self.inner = inner
        self.redact = redact  # str -> str

    def run_started(self, run_id: str, pipeline: str, resumed: bool) -> None:
        self.inner.run_started(run_id, pipeline, resumed)

    def step_started(self, run_id: str, path: str, kind: str, attempt: int) -> None:
        self.inner.step_started(run_id, path, kind, attempt)

    def step_finished(self, run_id: str, path: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        self.inner.step_finished(run_id, path, status, elapsed, tokens, self.redact(error) if error else error)

    def step_retrying(self, run_id: str, path: str, retry: Retry) -> None:
        self.inner.step_retrying(run_id, path, dataclasses.replace(retry, error=self.redact(retry.error)))

    def event(self, run_id: str, name: str, source: str) -> None:
        self.inner.event(run_id, name, source)

    def run_finished(self, run_id: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        self.inner.run_finished(run_id, status, elapsed, tokens, self.redact(error) if error else error)

    def close(self) -> None:
        self.inner.close()
