"""The reporter port: what a run tells whoever watches it (steps starting, finishing, retrying; events; the run's
end). `Reporter` is the interface and the silent reporter; `Retry` describes an attempt about to be retried.

Reporters only observe; they never affect the run. The renderers (terminal, plain lines, JSONL) live outside the
interpreter, in flowctl/progress.py, beside the commands that show them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Retry:
    """A failed attempt that will be retried: `attempt` of `max_attempts` failed with `reason` (an HTTP status or an
    error code) and `error`; the next one starts after `delay` seconds (the backoff, or the server's Retry-After)."""

    attempt: int
    max_attempts: int
    reason: str
    error: str
    delay: float

    def describe(self) -> str:
        """`attempt 2/3 after 503, retrying in 3s`."""
        return f"attempt {self.attempt + 1}/{self.max_attempts} after {self.reason}, retrying in {seconds(self.delay)}"


def seconds(value: float) -> str:
    """A duration for people: `3s`, `0.25s`, `0.001s`."""
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


class Reporter:
    """The interface, and the silent reporter (`--quiet`)."""

    def run_started(self, run_id: str, pipeline: str, resumed: bool) -> None: ...
    def step_started(self, run_id: str, path: str, kind: str, attempt: int) -> None: ...
    def step_finished(self, run_id: str, path: str, status: str, elapsed: float, tokens: int, error: str) -> None: ...
    def step_retrying(self, run_id: str, path: str, retry: Retry) -> None: ...
    def event(self, run_id: str, name: str, source: str) -> None: ...
    def run_finished(self, run_id: str, status: str, elapsed: float, tokens: int, error: str) -> None: ...
    def close(self) -> None: ...
