"""Progress reporting: live status on a terminal, plain lines otherwise, a JSONL event log on request.

Reporters only observe; they never affect the run. Lines go to stderr so stdout stays the run's result.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


class Reporter:
    """The interface, and the silent reporter (`--quiet`)."""

    def run_started(self, run_id: str, pipeline: str, resumed: bool) -> None: ...
    def step_started(self, run_id: str, path: str, kind: str, attempt: int) -> None: ...
    def step_finished(self, run_id: str, path: str, status: str, elapsed: float, tokens: int, error: str) -> None: ...
    def event(self, run_id: str, name: str, source: str) -> None: ...
    def run_finished(self, run_id: str, status: str, elapsed: float, tokens: int, error: str) -> None: ...
    def close(self) -> None: ...


class LineReporter(Reporter):
    """One plain line per step start/finish; used when stderr is not a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.root: str | None = None

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
        retry = f" (attempt {attempt})" if attempt > 1 else ""
        self._line(f"  ▸ {self._where(run_id, path)} [{kind}]{retry}")

    def step_finished(self, run_id: str, path: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        mark = {"succeeded": "✓", "failed": "✗", "skipped": "–", "cancelled": "⊘"}.get(status, "?")
        extra = f", {tokens} tok" if tokens else ""
        detail = f": {error}" if error else ""
        self._line(f"  {mark} {self._where(run_id, path)} {status} in {elapsed:.2f}s{extra}{detail}")

    def event(self, run_id: str, name: str, source: str) -> None:
        self._line(f"  ⚑ event {name} from {source}")

    def run_finished(self, run_id: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        self._line(f"{run_id} {status} in {elapsed:.2f}s, {tokens} tokens" + (f": {error}" if error else ""))


class TtyReporter(LineReporter):
    """Live progress on a terminal: a status line of running steps, finished steps scroll above it."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.running: dict[str, float] = {}
        self.done = self.failed = self.tokens = 0
        self.started = time.monotonic()

    def _line(self, text: str) -> None:
        self.stream.write("\r\x1b[2K" + text + "\n")
        self._status()

    def _status(self) -> None:
        names = ", ".join(list(self.running)[:3]) + (" …" if len(self.running) > 3 else "")
        elapsed = time.monotonic() - self.started
        self.stream.write(
            f"\r\x1b[2K{elapsed:6.1f}s  running {len(self.running)}: {names}  done {self.done}  "
            f"failed {self.failed}  {self.tokens} tok"
        )
        self.stream.flush()

    def step_started(self, run_id: str, path: str, kind: str, attempt: int) -> None:
        self.running[self._where(run_id, path)] = time.monotonic()
        self._status()

    def step_finished(self, run_id: str, path: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        self.running.pop(self._where(run_id, path), None)
        self.done += status == "succeeded"
        self.failed += status == "failed"
        self.tokens += tokens
        if status != "succeeded":
            super().step_finished(run_id, path, status, elapsed, tokens, error)
        else:
            self._status()

    def close(self) -> None:
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

    def event(self, run_id: str, name: str, source: str) -> None:
        self.inner.event(run_id, name, source)

    def run_finished(self, run_id: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        self.inner.run_finished(run_id, status, elapsed, tokens, self.redact(error) if error else error)

    def close(self) -> None:
        self.inner.close()
