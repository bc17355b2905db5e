"""Runtime errors: typed data with a documented tree. Policies decide on `retryable`, never on class names.

FlowctlError
├── InputError                 inputs do not match the pipeline's input schema (exit 2)
├── ResumeRefused              a recorded step's request changed since the run was journaled
├── StepFailed                 a step failed after its policy gave up (wraps the last cause)
├── ProviderError              an LLM call failed
│   ├── RateLimited            429 rate limit (retryable; honours retry_after)
│   ├── QuotaExhausted         429 insufficient_quota (not retryable)
│   ├── AuthError              401/403 (not retryable)
│   ├── BadRequest             400 (not retryable)
│   ├── ContextTooLong         context length exceeded (not retryable; names the model)
│   ├── ProviderUnavailable    5xx, connection errors (retryable)
│   ├── ProviderTimeout        request timed out (retryable)
│   ├── MalformedResponse      broken stream, HTML body, truncated tool arguments (retryable)
│   └── OutputSchemaMismatch   structured output does not match the agent's schema (retryable)
├── ToolError                  an MCP tool call failed
│   ├── ToolCallError          the tool reported an error (is_error or MCPError) (not retryable by default)
│   ├── ServerStartError       the server failed to start or initialize (shows exit code + stderr tail)
│   ├── ServerCrashed          the server died mid-call; outcome unknown (retryable only if idempotent)
│   └── ToolTimeout            a call exceeded the server's read timeout (outcome unknown)
├── StepTimeout                a per-attempt timeout or deadline expired (retryable for timeouts, not deadlines)
├── CircuitOpen                a circuit breaker is open for a provider/server (not retryable now)
├── WaitTimeout                no matching event arrived in time
├── RouteError                 an adaptive route chose an unknown branch with on_unknown: fail
├── MaxIterationsExceeded      a tool loop hit max_iterations (names the last tools called)
└── RenderFailed               a template failed to render (undefined variable at run time)
"""

from __future__ import annotations

from typing import Any

from flowctl.dsl.diagnostics import Span


class PicklableError(Exception):
    """An exception that pickles whole, whatever its `__init__` takes (Exception's own pickling calls `__init__` with
    `args`, which breaks for keyword or derived arguments): errors cross process boundaries as plain data."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[PicklableError], args: tuple[Any, ...], state: dict[str, Any]) -> PicklableError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class FlowctlError(PicklableError):
    """Base of every runtime error. `code` is a stable kebab-case id; `retryable` drives retry policies."""

    code = "flowctl-error"
    retryable = False

    def __init__(self, message: str, *, span: Span | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.retry_after = retry_after

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"code": self.code, "message": self.message, "retryable": self.retryable}
        if self.span is not None:
            data["at"] = str(self.span)
        status = getattr(self, "status", None)
        if status is not None:  # the HTTP status a server answered with
            data["status"] = status
        if self.retry_after is not None:  # the server's Retry-After
            data["retry_after"] = self.retry_after
        return data

    def __str__(self) -> str:
        return self.message


class InputError(FlowctlError):
    code = "invalid-input"


class ResumeRefused(FlowctlError):
    code = "resume-refused"


class ProviderError(FlowctlError):
    code = "provider-error"
    status: int | None = None  # the HTTP status the server answered with, when there was one (progress shows it)


class RateLimited(ProviderError):
    code = "rate-limited"
    retryable = True


class QuotaExhausted(ProviderError):
    code = "quota-exhausted"


class AuthError(ProviderError):
    code = "auth-error"


class BadRequest(ProviderError):
    code = "bad-request"


class ContextTooLong(ProviderError):
    code = "context-too-long"


class ProviderUnavailable(ProviderError):
    code = "provider-unavailable"
    retryable = True


class ProviderTimeout(ProviderError):
    code = "provider-timeout"
    retryable = True


class MalformedResponse(ProviderError):
    code = "malformed-response"
    retryable = True


class OutputSchemaMismatch(ProviderError):
    code = "output-schema-mismatch"
    retryable = True


class ToolError(FlowctlError):
    code = "tool-error"


class ToolCallError(ToolError):
    code = "tool-call-error"


class ServerStartError(ToolError):
    code = "server-start-error"
    retryable = True


class ServerAuthError(ServerStartError):
    """A remote server refused flowctl's credentials (HTTP 401/403): trying again cannot help."""

    code = "server-auth-error"
    retryable = False


class ServerCrashed(ToolError):
    code = "server-crashed"

    def __init__(self, message: str, *, idempotent: bool = False, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retryable = idempotent


class ToolTimeout(ToolError):
    code = "tool-timeout"

    def __init__(self, message: str, *, idempotent: bool = False, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retryable = idempotent


class StepTimeout(FlowctlError):
    code = "step-timeout"
    retryable = True


class DeadlineExceeded(FlowctlError):
    code = "deadline-exceeded"


class CircuitOpen(FlowctlError):
    code = "circuit-open"


class WaitTimeout(FlowctlError):
    code = "wait-timeout"


class RouteError(FlowctlError):
    code = "unknown-route-choice"


class UnknownPipelineChoice(FlowctlError):
    """A pipeline step chose its child by name, and the name is not one of its choices (`on_unknown: fail`)."""

    code = "unknown-pipeline-choice"


class TriggerLimitExceeded(FlowctlError):
    """A `once: false` trigger would fire more often than its `max_firings`: events keep starting it (a loop)."""

    code = "trigger-limit"


class MaxIterationsExceeded(FlowctlError):
    code = "max-iterations"


class RenderFailed(FlowctlError):
    code = "render-failed"


class OutputsInvalid(FlowctlError):
    """The pipeline's outputs do not match its declared `output_schema`."""

    code = "outputs-invalid"


class UnknownAgent(FlowctlError):
    """An agent chosen by an expression that names no declared agent (and the step has no `default_agent`)."""

    code = "unknown-agent"


class UndeclaredServer(FlowctlError):
    """A parameterised agent's rendered server list names a server the file does not declare."""

    code = "undeclared-server"


class StepFailed(FlowctlError):
    """A step failed for good. Carries the step path, attempt count and the last cause."""

    code = "step-failed"

    def __init__(
        self, step: str, cause: BaseException, *, attempts: int = 1, span: Span | None = None, fallback: bool = False
    ) -> None:
        """`fallback`: `cause` is the error of the step's fallback, which ran after its `attempts` had failed."""
        cause_text = str(cause) or type(cause).__name__
        how = "; its fallback failed too" if fallback else ""
        super().__init__(f"step {step!r} failed after {attempts} attempt(s){how}: {cause_text}", span=span)
        self.step = step
        self.cause = cause
        self.attempts = attempts

    @property
    def cause_code(self) -> str:
        return getattr(self.cause, "code", type(self.cause).__name__)

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        data.update(step=self.step, attempts=self.attempts, cause=self.cause_code)
        return data


def error_json(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, FlowctlError):
        return exc.to_json()
    return {"code": type(exc).__name__, "message": str(exc), "retryable": False}


def refused(exc: BaseException) -> bool:
    """A refused resume stops the run: no retry, fallback, `on_error`, join or trigger may absorb it."""
    while isinstance(exc, StepFailed):
        exc = exc.cause
    return isinstance(exc, ResumeRefused)
