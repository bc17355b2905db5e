"""Progress shown to people: live status on a terminal (TtyReporter), plain lines otherwise (LineReporter); used by
`flowctl run`/`resume` (cli/running.py) and `flowctl test --verbose` (testing/runner.py). What both keep of a run —
tokens, cost, attempts per step, for the live count and the closing summary — is in progress_tally.py; the JSONL log,
the fan-out and secret-masking wrappers and the call counter are in progress_sinks.py (re-exported here).

Each is a Reporter (interpreter/reporting.py, the port the interpreter calls); they only observe and never affect
the run. Lines go to stderr so stdout stays the run's result.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any, TextIO

from flowctl.interpreter.reporting import ModelCallSeen, Reporter, Retry, ToolCallSeen, seconds
from flowctl.progress_sinks import CallTally, JsonlReporter, MultiReporter, RedactingReporter
from flowctl.progress_tally import Prices, RunTally, item_of

__all__ = [
    "ITEMS_REPORTED",
    "CallTally",
    "JsonlReporter",
    "LineReporter",
    "MultiReporter",
    "RedactingReporter",
    "TtyReporter",
]

ITEMS_REPORTED = 10  # fan-out items whose every line is shown; after them only failures and retries
_EXAMPLES: dict[Any, Any] = {"integer": 0, "number": 0, "boolean": True, "array": []}  # an elicitation's answer
_LOUD_LEVELS = frozenset({"warning", "error", "critical", "alert", "emergency"})  # shown on the terminal
_WRAPPED = re.compile(r"^step '([^']*)' failed after \d+ attempt\(s\)(?:; its fallback failed too)?: ")


def unwrap(message: str) -> tuple[list[str], str]:
    """The steps a step error passed through and its innermost cause: `step 'grp' failed after 1 attempt(s): step
    'x' failed after 2 attempt(s): boom` → (['grp', 'x'], 'boom'). StepFailed wraps its cause's text in this form at
    every enclosing step (`…attempt(s); its fallback failed too: …` when the cause is the step's fallback's)."""
    steps: list[str] = []
    while True:
        match = _WRAPPED.match(message)
        if match is None:
            return steps, message
        steps.append(match.group(1))
        message = message[match.end() :]


def cause_of(message: str) -> str:
    return unwrap(message)[1]


def display_width(text: str) -> int:
    """Columns `text` takes on a terminal: wide (CJK) characters two, combining marks none."""
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def fit(text: str, width: int) -> str:
    """`text` cut to at most `width` columns, with `…` when cut."""
    if display_width(text) <= width:
        return text
    if width <= 0:
        return ""
    out, used = [], 0
    for c in text:
        w = display_width(c)
        if used + w > width - 1:
            break
        out.append(c)
        used += w
    return "".join(out) + "…"


def terminal_width(stream: TextIO) -> int:
    """The terminal's width now (it may be resized during a run): the stream's own, else $COLUMNS, else 80."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        pass
    try:
        return max(int(os.environ.get("COLUMNS", "")), 1)
    except ValueError:
        return 80


@dataclass(slots=True)
class _ItemGroup:
    """The items of one fan-out, as a line reporter has seen them."""

    loud: set[str] = field(default_factory=set)  # the first ITEMS_REPORTED items: reported line by line
    retried: set[str] = field(default_factory=set)  # items reported from their retry on
    finished: dict[str, int] = field(default_factory=dict)  # items finished, by status
    quiet: int = 0  # items whose lines were left out


class _Stream:
    """The streamed answer of the step in focus (`--stream`): whole lines are shown as they complete; the rest
    waits for its line's end (or the call's end)."""

    def __init__(self, key: tuple[str, str], where: str) -> None:
        self.key = key
        self.where = where
        self.partial = ""


class LineReporter(Reporter):
    """One plain line per step start/finish; used when stderr is not a terminal.

    A fan-out of thousands would be thousands of lines: past its first ITEMS_REPORTED items, an item's lines are
    shown only when it fails or retries, and the fan-out's own finish line sums its items up. A step's error is
    shown once, at the innermost step that failed with it; the steps it failed in turn name that step. The run ends
    with a per-step summary (RunTally). `store`: what a printed command needs to reach the run's store (` --store X`).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        store: str = "",
        prices: Prices | None = None,
        layout: dict[str, str] | None = None,
        stream_text: bool = False,
    ) -> None:
        self.stream = stream or sys.stderr
        self.root: str | None = None
        self.groups: dict[str, _ItemGroup] = {}
        self.store = store
        self.tally = RunTally(prices or {}, layout)
        self.stream_text = self.streams_text = stream_text  # `--stream`: show the model's text as it arrives
        self.focus: _Stream | None = None
        self.unfocused: set[tuple[str, str]] = set()  # steps streaming while another had the focus
        self.causes: dict[str, str] = {}  # error text shown → the step whose line showed it
        self.held: set[str] = set()  # steps whose calls were said to be held back
        self.resumed = False

    def _quiet(self, where: str, status: str | None = None, attempt: int = 1) -> bool:
        """Whether a line about `where` (a start of `attempt`, or a finish with `status`) is left out; counts items."""
        found = item_of(where)
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

    def _error_text(self, where: str, error: str) -> str:
        """`: the error` the first time an error is shown; ` (after X failed)` for a step that failed because a
        step inside it did (its error wraps one already shown)."""
        if not error:
            return ""
        steps, cause = unwrap(error)
        inner = self.causes.get(cause)
        if inner is not None and (inner in steps[1:] or inner.startswith((where + "/", where + "["))):
            return f" (after {inner} failed)"
        self.causes[cause] = where
        return f": {cause}"

    def shown_at(self, error: str) -> str | None:
        """The step whose line showed this error's cause, if one did (the CLI then does not repeat it)."""
        return self.causes.get(cause_of(error))

    def run_started(self, run_id: str, pipeline: str, resumed: bool) -> None:
        if self.root is None:
            self.root, self.resumed = run_id, resumed
            self.tally.resumed = resumed
        self._line(f"{'resuming' if resumed else 'run'} {run_id} ({pipeline})")

    def step_started(self, run_id: str, path: str, kind: str, attempt: int) -> None:
        where = self._where(run_id, path)
        self.tally.started(where, attempt)
        if self._quiet(where, attempt=attempt):
            return
        retry = f" (attempt {attempt})" if attempt > 1 else ""
        self._line(f"  ▸ {where} [{kind}]{retry}")

    def step_finished(self, run_id: str, path: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        where = self._where(run_id, path)
        self.tally.finished(where, status, elapsed)
        self._end_stream((run_id, path))
        if self._quiet(where, status):
            return
        self._finish_line(where, status, elapsed, tokens, error)

    def _finish_line(self, where: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        mark = {"succeeded": "✓", "failed": "✗", "skipped": "–", "cancelled": "⊘"}.get(status, "?")
        extra = f", {tokens} tok" if tokens else ""
        detail = self._error_text(where, error)
        self._line(f"  {mark} {where} {status} in {elapsed:.2f}s{extra}{self._summary(where)}{detail}")

    def step_retrying(self, run_id: str, path: str, retry: Retry) -> None:
        where = self._where(run_id, path)
        self._quiet(where, attempt=retry.attempt + 1)  # counts the item as retried: shown from now on
        self._line(f"  ↻ {where} {retry.describe()}: {retry.error}")

    def event(self, run_id: str, name: str, source: str) -> None:
        self._line(f"  ⚑ event {name} from {source}")

    def warning(self, run_id: str, path: str, message: str) -> None:
        self._line(f"  ⚠ {self._where(run_id, path)}: {message}")

    def waiting(self, run_id: str, path: str, event: str) -> None:
        where = self._where(run_id, path)
        self._line(f"  ⏳ {where} waits for event {event!r}; send it with: {self.signal_command(event)}")

    def elicitation(
        self, run_id: str, path: str, server: str, message: str, schema: dict[str, Any], on_terminal: bool
    ) -> None:
        if on_terminal:  # the form itself says what is asked
            return
        example = {
            name: _EXAMPLES.get((spec or {}).get("type"), "…")
            for name, spec in (schema.get("properties") or {}).items()
        }
        self._line(f"  ? {self._where(run_id, path)}: server {server!r} asks: {message}")
        self._line(
            f"    answer with: {self.signal_command('elicitation')} --data '{json.dumps(example, ensure_ascii=False)}'"
            ' (or --data \'{"action": "decline"}\')'
        )

    def signal_command(self, event: str) -> str:
        """The command that releases a wait (signals go to the root run, which shares them with its children)."""
        return f"flowctl signal {self.root} {shlex.quote(event)}{self.store}"

    def held_back(self, run_id: str, path: str, queued: int, cap: int) -> None:
        where = self._where(run_id, path)
        found = item_of(where)
        step = found[0] if found is not None else where
        self.tally.held_back(queued, cap)
        if step in self.held:
            return
        self.held.add(step)
        self._line(
            f"  ⏸ {step}: held back by the run's concurrency cap ({cap} calls at once); "
            "raise `concurrency:` in the pipeline to run more at once"
        )

    def server_log(self, run_id: str, path: str, server: str, level: str, logger: str, data: Any) -> None:
        if level in _LOUD_LEVELS:  # the rest goes to the event log (--events) only: servers can be chatty
            text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, default=str)
            source = f"{server}/{logger}" if logger else server
            self._line(f"  ✎ {self._where(run_id, path)}: {source} {level}: {fit(text, 200)}")

    def model_call(self, run_id: str, path: str, call: ModelCallSeen) -> None:
        self.tally.model_call(run_id, self._where(run_id, path), call)
        if self.focus is not None and self.focus.key == (run_id, path):
            self._end_stream((run_id, path))
        self.unfocused.discard((run_id, path))

    def tool_call(self, run_id: str, path: str, call: ToolCallSeen) -> None:
        self.tally.tool_call(call)

    def model_text(self, run_id: str, path: str, text: str) -> None:
        if not self.stream_text:
            return
        key = (run_id, path)
        if self.focus is None and key not in self.unfocused:
            self.focus = _Stream(key, self._where(run_id, path))
            self._line(f"  ✎ {self.focus.where}:")
        focus = self.focus
        if focus is None or focus.key != key:
            self.unfocused.add(key)  # shown from its next answer on, if it gets the focus then
            return
        focus.partial += text
        lines = focus.partial.split("\n")
        focus.partial = lines.pop()
        for line in lines:
            self._line(f"    {line}")
        self._streamed_partial()

    def _streamed_partial(self) -> None:
        """The line not yet complete: plain lines wait for its end; the terminal shows it (TtyReporter)."""

    def _end_stream(self, key: tuple[str, str]) -> None:
        focus = self.focus
        if focus is None or focus.key != key:
            return
        self.focus = None
        if focus.partial:
            self._line(f"    {focus.partial}")

    def run_finished(self, run_id: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        if run_id != self.root:  # a child run: its steps were shown; its end shows in its pipeline step's line
            return
        cost = f", ${self.tally.cost:.4f}" if self.tally.priced else ""
        self._closing_line(f"{run_id} {status} in {elapsed:.2f}s, {tokens} tokens{cost}")
        for line in self.tally.summary(self.root):
            self._closing_line(line)

    def _closing_line(self, text: str) -> None:
        self._line(text)


class TtyReporter(LineReporter):
    """Live progress on a terminal: one status line of what runs now, never wider than the terminal; finished
    steps that did not simply succeed, retries, waits and streamed text scroll above it.

    A ticker thread redraws the status line every REDRAW_INTERVAL (so the elapsed time and a retry's countdown move
    while a long call runs); events only update the counts. Redrawing it at every event, twice per item of a fan-out
    of thousands, cost 0.33 s of a 10,000-item fan-out: more than the run itself. Lines are written at once.
    The status line is cut to the terminal's width less one column: a line that wraps cannot be cleared with `\\r`,
    and each redraw would leave a line behind in the scrollback."""

    REDRAW_INTERVAL = 0.1  # seconds

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        store: str = "",
        prices: Prices | None = None,
        layout: dict[str, str] | None = None,
        stream_text: bool = False,
    ) -> None:
        super().__init__(stream, store=store, prices=prices, layout=layout, stream_text=stream_text)
        self.running: dict[str, float] = {}  # steps running, but fan-out items and what runs inside them
        self.items: set[str] = set()  # fan-out items running
        self.item_counts: dict[str, int] = {}  # fan-out step → its items running
        self.notes: dict[str, tuple[str, float]] = {}  # step → what it does instead of running (retry, wait)
        self.done = self.failed = self.draws = 0
        self.started = time.monotonic()
        self.width: int | None = None  # fixed width (tests); None: the terminal's, at each draw
        self.ended = False  # the root run finished: the status line is gone for good
        self._lock = threading.RLock()  # the stream and the counts, shared with the ticker
        self.paused = False  # an elicitation form is on the terminal
        self._drawn = threading.Condition(self._lock)  # notified at each draw (see wait_drawn)
        self._closed = threading.Event()
        self._ticker: threading.Thread | None = None

    @property
    def tokens(self) -> int:
        return self.tally.tokens

    def _tick(self) -> None:
        while not self._closed.wait(self.REDRAW_INTERVAL):
            with self._lock:
                if not self._closed.is_set():
                    self._draw()

    def _line(self, text: str) -> None:
        with self._lock:
            self.stream.write("\r\x1b[2K" + text + "\n")
            self._draw()  # the line took the status line's place

    def _closing_line(self, text: str) -> None:
        with self._lock:
            self.stream.write("\r\x1b[2K" + text + "\n")
            self.stream.flush()

    def status(self, width: int) -> str:
        """The status line, at most `width` columns."""
        now = time.monotonic()
        head = f"{now - self.started:6.1f}s  "
        tail = f"  ✓ {self.done}" + (f"  ✗ {self.failed}" if self.failed else "") + f"  {self.tally.tokens:,} tok"
        queued = self.tally.queued
        options = [tail]
        if queued:  # the queue in full, shorter, or not at all: the names stay readable
            options = [f"{tail}  ⏸ {queued} queued (concurrency {self.tally.cap})", f"{tail}  ⏸ {queued} queued", tail]
        for tail in options:
            room = width - display_width(head) - display_width(tail)
            if room >= 24:
                break
        return fit(head + self._activity(max(room, 0), now) + tail, width)

    def _activity(self, room: int, now: float) -> str:
        """What runs, within `room` columns: fan-out items counted per fan-out, a retry's countdown, a wait's
        event; `+N` for what does not fit. Reads counts kept as steps start and finish: a draw never walks the
        items of a fan-out of thousands."""
        shown: list[str] = []
        for where in self.running:
            count = self.item_counts.get(where)
            note = self.notes.get(where)
            if count:
                shown.append(f"{where} ({count} item{'s' if count > 1 else ''})")
            elif note is not None:
                text, until = note
                shown.append(f"{where} ({text.replace('{left}', seconds(max(round(until - now), 0)))})")
            else:
                shown.append(where)
        shown.sort(key=lambda name: "(" not in name or name.endswith("items)"))  # retries and waits first
        text, left = "", len(shown)
        for name in shown:
            more = f" +{left - 1}" if left > 1 else ""
            candidate = f"{text}, {name}" if text else name
            if display_width(candidate + more) > room:
                if not text:  # not even the first one fits whole: cut its step id, keep what it does
                    step, paren, rest = name.partition(" (")
                    doing = paren + rest
                    text = fit(step, max(room - len(more) - display_width(doing), 1)) + doing
                    text = fit(text, max(room - len(more), 1))
                    left -= 1
                break
            text, left = candidate, left - 1
        return text + (f" +{left}" if left and text else "")

    def _draw(self) -> None:
        """Write the status line (`_lock` held)."""
        if self.ended or self.paused:
            return
        width = self.width or terminal_width(self.stream)
        focus = self.focus
        line = self.status(width - 1)
        if focus is not None and focus.partial:  # the streamed line so far, above the status line's place
            line = fit(f"    {focus.partial}", width - 1)
        self.stream.write("\r\x1b[2K" + line)
        self.stream.flush()
        self.draws += 1
        self._drawn.notify_all()

    def _streamed_partial(self) -> None:
        """A streamed line longer than the terminal goes above in pieces that fit; the rest shows in place of the
        status line until its line completes."""
        focus = self.focus
        assert focus is not None
        width = (self.width or terminal_width(self.stream)) - 1
        while display_width(f"    {focus.partial}") > width:
            cut = focus.partial.rfind(" ", 0, width - 4)
            cut = cut if cut > 0 else width - 4
            piece, focus.partial = focus.partial[:cut], focus.partial[cut:].lstrip(" ")
            with self._lock:
                self.stream.write("\r\x1b[2K" + f"    {piece}" + "\n")
        with self._lock:
            self._draw()

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
        self.tally.started(where, attempt)
        found = item_of(where) if "[" in where else None
        with self._lock:
            if found is None:
                self.running[where] = time.monotonic()
                self.notes.pop(where, None)
            elif found[1] == where and where not in self.items:
                self.items.add(where)
                self.item_counts[found[0]] = self.item_counts.get(found[0], 0) + 1

    def step_retrying(self, run_id: str, path: str, retry: Retry) -> None:
        where = self._where(run_id, path)
        with self._lock:
            until = time.monotonic() + retry.delay
            self.notes[where] = (f"attempt {retry.attempt + 1}/{retry.max_attempts} in {{left}}", until)
        super().step_retrying(run_id, path, retry)

    def waiting(self, run_id: str, path: str, event: str) -> None:
        where = self._where(run_id, path)
        with self._lock:
            self.notes[where] = (f"waits for {event}", 0.0)
        super().waiting(run_id, path, event)

    def step_finished(self, run_id: str, path: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        where = self._where(run_id, path)
        self.tally.finished(where, status, elapsed)
        with self._lock:
            if where in self.items:
                self.items.discard(where)
                step = where[: where.rindex("[")]
                self.item_counts[step] -= 1
            else:
                self.running.pop(where, None)
                self.notes.pop(where, None)
            self.done += status == "succeeded"
            self.failed += status == "failed"
            self._end_stream((run_id, path))
            if status != "succeeded" and not self._quiet(where, status):
                self._finish_line(where, status, elapsed, tokens, error)

    def tool_progress(
        self, run_id: str, path: str, server: str, tool: str, progress: float, total: float | None, message: str
    ) -> None:
        where = self._where(run_id, path)
        done = f"{progress:g}/{total:g}" if total else f"{progress:g}"
        text = f"{tool} {done}" + (f" {message}" if message else "")
        with self._lock:
            if where in self.running:
                self.notes[where] = (text.replace("{", "(").replace("}", ")"), 0.0)

    def server_log(self, run_id: str, path: str, server: str, level: str, logger: str, data: Any) -> None:
        with self._lock:
            super().server_log(run_id, path, server, level, logger, data)

    def elicitation(
        self, run_id: str, path: str, server: str, message: str, schema: dict[str, Any], on_terminal: bool
    ) -> None:
        with self._lock:
            if on_terminal:  # the form is on stderr: clear the status line and draw none until it is answered
                self.paused = True
                self.stream.write("\r\x1b[2K")
                self.stream.flush()
            super().elicitation(run_id, path, server, message, schema, on_terminal)

    def elicitation_done(self, run_id: str, path: str, server: str) -> None:
        with self._lock:
            self.paused = False
            self._draw()

    def model_call(self, run_id: str, path: str, call: ModelCallSeen) -> None:
        with self._lock:
            super().model_call(run_id, path, call)

    def tool_call(self, run_id: str, path: str, call: ToolCallSeen) -> None:
        with self._lock:
            super().tool_call(run_id, path, call)

    def held_back(self, run_id: str, path: str, queued: int, cap: int) -> None:
        with self._lock:
            super().held_back(run_id, path, queued, cap)

    def warning(self, run_id: str, path: str, message: str) -> None:
        with self._lock:
            super().warning(run_id, path, message)

    def model_text(self, run_id: str, path: str, text: str) -> None:
        with self._lock:
            super().model_text(run_id, path, text)

    def run_finished(self, run_id: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        with self._lock:
            if run_id == self.root:
                self.stream.write("\r\x1b[2K")
                self.ended = True
            super().run_finished(run_id, status, elapsed, tokens, error)

    def close(self) -> None:
        self._closed.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            if not self.ended:
                self.stream.write("\r\x1b[2K")
            self.stream.flush()
