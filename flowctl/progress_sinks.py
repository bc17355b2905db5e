"""Reporters that are not for people's eyes: the JSONL event log (`--events FILE`), the reporter that hands every
hook to several, the one that masks secrets before any of them sees a text, and the one that counts the requests a
run made (`--output json`'s `calls.requests`). Re-exported by flowctl/progress.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from typing import Any

from flowctl.interpreter.reporting import ModelCallSeen, Reporter, Retry, ToolCallSeen

_HELD_TEXT = 4096  # streamed characters without whitespace passed on anyway (no secret is that long)


class JsonlReporter(Reporter):
    """Every progress event as one JSON line (`flowctl run --events FILE`), written and flushed as it happens: a
    run killed with SIGKILL leaves the file holding all it did until then. Calls are logged without their content
    (the run's transcript has it): key, attempt, model or tool, tokens, time, error."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _write(self, event_type: str, /, **data: Any) -> None:
        self.file.write(json.dumps({"type": event_type, "at": time.time(), **data}, default=str) + "\n")
        self.file.flush()

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

    def model_call(self, run_id: str, path: str, call: ModelCallSeen) -> None:
        usage = call.response.usage if call.response is not None else None
        self._write(
            "model_call",
            run_id=run_id,
            step=path,
            key=call.key,
            attempt=call.attempt,
            provider=call.provider,
            model=call.request.model,
            agent=call.request.agent or None,
            input_tokens=usage.input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            elapsed=call.elapsed,
            error=str(call.error) if call.error is not None else None,
            replayed=call.replayed,
        )

    def tool_call(self, run_id: str, path: str, call: ToolCallSeen) -> None:
        self._write(
            "tool_call",
            run_id=run_id,
            step=path,
            key=call.key,
            attempt=call.attempt,
            server=call.server,
            tool=call.tool,
            elapsed=call.elapsed,
            is_error=call.result.is_error if call.result is not None else None,
            error=str(call.error) if call.error is not None else None,
            replayed=call.replayed,
        )

    def waiting(self, run_id: str, path: str, event: str) -> None:
        self._write("waiting", run_id=run_id, step=path, event=event)

    def held_back(self, run_id: str, path: str, queued: int, cap: int) -> None:
        self._write("held_back", run_id=run_id, step=path, queued=queued, cap=cap)

    def warning(self, run_id: str, path: str, message: str) -> None:
        self._write("warning", run_id=run_id, step=path, message=message)

    def tool_progress(
        self, run_id: str, path: str, server: str, tool: str, progress: float, total: float | None, message: str
    ) -> None:
        self._write(
            "tool_progress",
            run_id=run_id,
            step=path,
            server=server,
            tool=tool,
            progress=progress,
            total=total,
            message=message or None,
        )

    def elicitation(
        self, run_id: str, path: str, server: str, message: str, schema: dict[str, Any], on_terminal: bool
    ) -> None:
        self._write(
            "elicitation", run_id=run_id, step=path, server=server, message=message, schema=schema, terminal=on_terminal
        )

    def server_log(self, run_id: str, path: str, server: str, level: str, logger: str, data: Any) -> None:
        self._write(
            "server_log", run_id=run_id, step=path, server=server, level=level, logger=logger or None, data=data
        )

    def run_finished(self, run_id: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        self._write("run_finished", run_id=run_id, status=status, elapsed=elapsed, tokens=tokens, error=error or None)

    def close(self) -> None:
        self.file.close()


class CallTally(Reporter):
    """The requests a run sent, counted as they end: every model and tool call not answered from the journal or
    the cache, failed ones included (a retried 503 is a request too)."""

    def __init__(self) -> None:
        self.model_requests = self.tool_requests = self.failed = 0

    def model_call(self, run_id: str, path: str, call: ModelCallSeen) -> None:
        if not call.replayed:
            self.model_requests += 1
            self.failed += call.error is not None

    def tool_call(self, run_id: str, path: str, call: ToolCallSeen) -> None:
        if not call.replayed:
            self.tool_requests += 1
            self.failed += call.error is not None


class MultiReporter(Reporter):
    """Hands every hook to each of `reporters`, in order. `run_id`: the first run started (the root run)."""

    def __init__(self, reporters: list[Reporter]) -> None:
        self.reporters = reporters
        self.run_id: str | None = None
        # whether any of them shows streamed text: a provider may skip calling model_text when none does
        self.streams_text = any(getattr(r, "streams_text", False) for r in reporters)

    def run_started(self, run_id: str, pipeline: str, resumed: bool) -> None:
        self.run_id = self.run_id or run_id
        for r in self.reporters:
            r.run_started(run_id, pipeline, resumed)

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

    def model_call(self, *args: Any) -> None:
        for r in self.reporters:
            r.model_call(*args)

    def tool_call(self, *args: Any) -> None:
        for r in self.reporters:
            r.tool_call(*args)

    def model_text(self, *args: Any) -> None:
        for r in self.reporters:
            r.model_text(*args)

    def waiting(self, *args: Any) -> None:
        for r in self.reporters:
            r.waiting(*args)

    def tool_progress(self, *args: Any) -> None:
        for reporter in self.reporters:
            reporter.tool_progress(*args)

    def server_log(self, *args: Any) -> None:
        for reporter in self.reporters:
            reporter.server_log(*args)

    def elicitation(self, *args: Any) -> None:
        for reporter in self.reporters:
            reporter.elicitation(*args)

    def elicitation_done(self, *args: Any) -> None:
        for reporter in self.reporters:
            reporter.elicitation_done(*args)

    def held_back(self, *args: Any) -> None:
        for r in self.reporters:
            r.held_back(*args)

    def warning(self, *args: Any) -> None:
        for r in self.reporters:
            r.warning(*args)

    def close(self) -> None:
        for r in self.reporters:
            r.close()


def _masked_error(error: Any, redact: Any) -> Any:
    """A copy of a FlowctlError with its message masked (the original belongs to the run)."""
    if error is None:
        return None
    masked = redact(str(error))
    if masked == str(error):
        return error
    error = copy.copy(error)
    error.message = masked
    error.args = (masked,)
    return error


class RedactingReporter(Reporter):
    """Masks secrets in every text a reporter is handed (error messages can quote a server's stderr; prompts, answers
    and tool arguments can hold whatever a pipeline put there). `active=False` (no secrets known) passes the calls
    through as they are: copying each call's request costs time for nothing."""

    def __init__(self, inner: Reporter, redact: Any, *, active: bool = True) -> None:
        self.inner = inner
        self.redact = redact  # str -> str
        self.active = active
        self._pending: dict[tuple[str, str], str] = {}  # streamed text held back (see model_text)
        self.streams_text = bool(getattr(inner, "streams_text", False))

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._value(v) for v in value)
        return value

    def run_started(self, run_id: str, pipeline: str, resumed: bool) -> None:
        self.inner.run_started(run_id, pipeline, resumed)

    def step_started(self, run_id: str, path: str, kind: str, attempt: int) -> None:
        self.inner.step_started(run_id, path, kind, attempt)

    def step_finished(self, run_id: str, path: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        self._flush_text(run_id, path)
        self.inner.step_finished(run_id, path, status, elapsed, tokens, self.redact(error) if error else error)

    def step_retrying(self, run_id: str, path: str, retry: Retry) -> None:
        self.inner.step_retrying(run_id, path, dataclasses.replace(retry, error=self.redact(retry.error)))

    def event(self, run_id: str, name: str, source: str) -> None:
        self.inner.event(run_id, name, source)

    def model_call(self, run_id: str, path: str, call: ModelCallSeen) -> None:
        self._flush_text(run_id, path)
        if self.active:
            request = call.request
            messages = tuple(
                dataclasses.replace(
                    m,
                    content=self.redact(m.content) if m.content else m.content,
                    tool_calls=tuple(dataclasses.replace(c, arguments=self.redact(c.arguments)) for c in m.tool_calls),
                )
                for m in request.messages
            )
            response = call.response
            if response is not None:
                response = dataclasses.replace(
                    response,
                    content=self.redact(response.content) if response.content else response.content,
                    tool_calls=tuple(
                        dataclasses.replace(c, arguments=self.redact(c.arguments)) for c in response.tool_calls
                    ),
                )
            call = dataclasses.replace(
                call,
                request=dataclasses.replace(request, messages=messages),
                response=response,
                error=_masked_error(call.error, self.redact),
            )
        self.inner.model_call(run_id, path, call)

    def tool_call(self, run_id: str, path: str, call: ToolCallSeen) -> None:
        if self.active:
            result = call.result
            if result is not None:
                result = dataclasses.replace(result, text=self.redact(result.text), value=self._value(result.value))
            call = dataclasses.replace(
                call,
                arguments=self._value(call.arguments),
                result=result,
                error=_masked_error(call.error, self.redact),
            )
        self.inner.tool_call(run_id, path, call)

    def model_text(self, run_id: str, path: str, text: str) -> None:
        """Passed on up to its last whitespace: a secret split across two streamed pieces is masked whole (secrets
        are taken to hold no whitespace); the rest waits for the next piece or the call's end."""
        if not self.active:
            self.inner.model_text(run_id, path, text)
            return
        key = (run_id, path)
        text = self._pending.pop(key, "") + text
        cut = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
        if cut < 0 and len(text) < _HELD_TEXT:
            self._pending[key] = text
            return
        if 0 <= cut < len(text) - 1:
            text, self._pending[key] = text[: cut + 1], text[cut + 1 :]
        self.inner.model_text(run_id, path, self.redact(text))

    def _flush_text(self, run_id: str, path: str) -> None:
        held = self._pending.pop((run_id, path), None)
        if held:
            self.inner.model_text(run_id, path, self.redact(held))

    def waiting(self, run_id: str, path: str, event: str) -> None:
        self.inner.waiting(run_id, path, event)

    def held_back(self, run_id: str, path: str, queued: int, cap: int) -> None:
        self.inner.held_back(run_id, path, queued, cap)

    def warning(self, run_id: str, path: str, message: str) -> None:
        self.inner.warning(run_id, path, self.redact(message))

    def tool_progress(
        self, run_id: str, path: str, server: str, tool: str, progress: float, total: float | None, message: str
    ) -> None:
        self.inner.tool_progress(run_id, path, server, tool, progress, total, self.redact(message))

    def elicitation(
        self, run_id: str, path: str, server: str, message: str, schema: dict[str, Any], on_terminal: bool
    ) -> None:
        self.inner.elicitation(run_id, path, server, self.redact(message), schema, on_terminal)

    def elicitation_done(self, run_id: str, path: str, server: str) -> None:
        self.inner.elicitation_done(run_id, path, server)

    def server_log(self, run_id: str, path: str, server: str, level: str, logger: str, data: Any) -> None:
        self.inner.server_log(run_id, path, server, level, logger, self._value(data))

    def run_finished(self, run_id: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        self.inner.run_finished(run_id, status, elapsed, tokens, self.redact(error) if error else error)

    def close(self) -> None:
        self.inner.close()
