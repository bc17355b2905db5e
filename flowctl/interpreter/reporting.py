"""The reporter port: what a run tells whoever watches it (steps starting, finishing, retrying; events; the run's
end). `Reporter` is the interface and the silent reporter; `Retry` describes an attempt about to be retried.

Reporters only observe; they never affect the run. The renderers (terminal, plain lines, JSONL) live outside the
interpreter, in flowctl/progress.py, beside the commands that show them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowctl.interpreter.errors import FlowctlError
    from flowctl.interpreter.providers.llm import CompletionRequest, CompletionResponse
    from flowctl.interpreter.tools import ToolResult


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


@dataclass(frozen=True, slots=True)
class ModelCallSeen:
    """One request to a model as it happened (one attempt: a failed one has `error` and no `response`). Times come
    from the run's clock: `started` is wall-clock seconds, `elapsed` seconds. `replayed`: answered from the journal
    (no request was sent)."""

    key: str  # the journal key, e.g. "plan/llm#0"
    attempt: int  # the step's attempt it belongs to
    provider: str  # "openai", "scripted", …
    request: CompletionRequest
    response: CompletionResponse | None
    error: FlowctlError | None
    started: float
    elapsed: float
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class ToolCallSeen:
    """One MCP tool call as it happened (see ModelCallSeen)."""

    key: str
    attempt: int
    server: str
    tool: str
    arguments: dict[str, Any]
    result: ToolResult | None
    error: FlowctlError | None
    started: float
    elapsed: float
    replayed: bool = False


class Reporter:
    """The interface, and the silent reporter (`--quiet`). Every hook may be left out by a subclass."""

    def run_started(self, run_id: str, pipeline: str, resumed: bool) -> None: ...
    def step_started(self, run_id: str, path: str, kind: str, attempt: int) -> None: ...
    def step_finished(self, run_id: str, path: str, status: str, elapsed: float, tokens: int, error: str) -> None: ...
    def step_retrying(self, run_id: str, path: str, retry: Retry) -> None: ...
    def event(self, run_id: str, name: str, source: str) -> None: ...
    def run_finished(self, run_id: str, status: str, elapsed: float, tokens: int, error: str) -> None: ...
    def model_call(self, run_id: str, path: str, call: ModelCallSeen) -> None:
        """A model call ended (answered, failed, or replayed from the journal)."""

    def tool_call(self, run_id: str, path: str, call: ToolCallSeen) -> None:
        """A tool call ended (see model_call)."""

    def model_text(self, run_id: str, path: str, text: str) -> None:
        """A piece of a model's answer as it streams in (`flowctl run --stream`)."""

    def waiting(self, run_id: str, path: str, event: str) -> None:
        """A `wait` step waits for `event` (an `emit`, or `flowctl signal RUN EVENT`)."""

    def held_back(self, run_id: str, path: str, queued: int, cap: int) -> None:
        """`queued` calls of the step wait for a slot under the run's `concurrency` cap of `cap`."""

    def warning(self, run_id: str, path: str, message: str) -> None:
        """Something the run worked around and the user should know (an optional server that could not start)."""

    def tool_progress(
        self, run_id: str, path: str, server: str, tool: str, progress: float, total: float | None, message: str
    ) -> None:
        """An MCP server reported progress on a tool call of the step (`notifications/progress`)."""

    def elicitation(
        self, run_id: str, path: str, server: str, message: str, schema: dict[str, Any], on_terminal: bool
    ) -> None:
        """An MCP server asks a person (`elicitation/create`): on the terminal (a form on stderr follows: a status
        line must keep away until `elicitation_done`), or else the run waits for `flowctl signal RUN elicitation
        --data '{…}'` (a `waiting` for the event `elicitation` follows)."""

    def elicitation_done(self, run_id: str, path: str, server: str) -> None:
        """The terminal form of an elicitation was answered."""

    def server_log(self, run_id: str, path: str, server: str, level: str, logger: str, data: Any) -> None:
        """An MCP server logged a message (`notifications/message`) at or above its `log_level`, during (or after)
        a tool call of the step."""

    def close(self) -> None: ...
