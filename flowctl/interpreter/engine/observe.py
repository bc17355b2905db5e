"""The calls a step makes, as they happened: each model call, tool call and wait goes into the run's transcript
(the recorder: what was sent, what came back, or the error) and to the run's reporter (the terminal, the event
log, OpenTelemetry) — one function per kind, so the agent loop and the handlers say it once. A replayed call is
not transcribed again: the run that made it did.
"""

from __future__ import annotations

from contextvars import ContextVar
from json import encoder
from typing import TYPE_CHECKING, Any

from flowctl.interpreter.persistence.record_encoding import MAX_TRANSCRIPT_BODY, JsonText
from flowctl.interpreter.persistence.store import Exchanged
from flowctl.interpreter.reporting import ModelCallSeen, ToolCallSeen

if TYPE_CHECKING:
    from flowctl.dsl.ir import ModelDef, ServerDef
    from flowctl.interpreter.engine.context import RunContext
    from flowctl.interpreter.errors import FlowctlError
    from flowctl.interpreter.providers.llm import CompletionRequest, CompletionResponse
    from flowctl.interpreter.tools import ToolResult

_json_string = encoder.encode_basestring  # a str as json.dumps(ensure_ascii=False) writes it

# The attempt of the step a call belongs to (set per attempt by the engine; 1 outside any).
STEP_ATTEMPT: ContextVar[int] = ContextVar("flowctl_step_attempt", default=1)


def saw_model_call(
    ctx: RunContext,
    path: str,
    key: str,
    model: ModelDef,
    request: CompletionRequest,
    response: CompletionResponse | None,
    error: FlowctlError | None,
    started: float,
    elapsed: float,
    *,
    replayed: bool = False,
    transcribed: bool = False,
) -> None:
    """A model call ended. `transcribed`: its entry went into the journal with its answer (`answered_entry`)."""
    attempt = STEP_ATTEMPT.get()
    if not replayed and not transcribed:
        recorder = ctx.runtime.recorder
        entry = answered_entry(ctx, path, key, model, request, response, started, elapsed) if error is None else None
        if entry is not None:
            recorder.exchanged(entry)
        else:
            raw = (request, response, error, model)
            recorder.exchange(ctx.run_id, path, key, attempt, "model", started, elapsed, _model_bodies, raw)
    if not ctx.runtime.hears_calls:
        return
    provider = getattr(ctx.runtime.provider(model), "provider_name", model.provider)  # `--scripted` answers
    seen = ModelCallSeen(key, attempt, provider, request, response, error, started, elapsed, replayed)
    ctx.runtime.reporter.model_call(ctx.run_id, path, seen)


def answered_entry(
    ctx: RunContext,
    path: str,
    key: str,
    model: ModelDef,
    request: CompletionRequest,
    response: CompletionResponse | None,
    started: float,
    elapsed: float,
) -> Exchanged | None:
    """The transcript entry of the common call — answered, no secret in what was sent or came back, no price to add,
    bodies under the cap — made at once of the two JSON texts it is (the digest's, the journal's): cheaper than
    keeping the call's objects alive for the commit to encode (bench/README.md). The agent loop hands it to the journal
    with the answer, so the call's row keeps it (CallDone.transcript). None for any other call: it is encoded (and
    masked) when committed (`_model_bodies`)."""
    if response is None or not _unpriced(model):
        return None
    sent, answer = _request_text(request), response.journal_text()
    if sent is None or len(sent) > MAX_TRANSCRIPT_BODY or len(answer) > MAX_TRANSCRIPT_BODY:
        return None
    redactor = ctx.runtime.recorder.redactor
    if redactor.masks and not (redactor.clear_in_json(sent) and redactor.clear_in_json(answer)):
        return None
    return Exchanged(ctx.run_id, path, key, STEP_ATTEMPT.get(), "model", started, elapsed, sent, answer)


def saw_tool_call(
    ctx: RunContext,
    path: str,
    key: str,
    server: ServerDef,
    tool: str,
    arguments: dict[str, Any],
    result: ToolResult | None,
    error: FlowctlError | None,
    started: float,
    elapsed: float,
    *,
    replayed: bool = False,
) -> None:
    attempt = STEP_ATTEMPT.get()
    if not replayed:
        raw = (server.name, tool, arguments, result, error)
        ctx.runtime.recorder.exchange(ctx.run_id, path, key, attempt, "tool", started, elapsed, _tool_bodies, raw)
    if not ctx.runtime.hears_calls:
        return
    seen = ToolCallSeen(key, attempt, server.name, tool, arguments, result, error, started, elapsed, replayed)
    ctx.runtime.reporter.tool_call(ctx.run_id, path, seen)


def saw_wait(
    ctx: RunContext, path: str, key: str, event: str, taken: dict[str, Any] | None, started: float, elapsed: float
) -> None:
    """A wait ended: the event that released it (`taken`: name, data, source), or None when it timed out."""
    raw = ({"event": event}, taken, None)
    ctx.runtime.recorder.exchange(ctx.run_id, path, key, STEP_ATTEMPT.get(), "wait", started, elapsed, _as_is, raw)


# The bodies of a transcript entry from what the call was made of (run when the entry is committed: Recorder.exchange)


def _model_bodies(raw: Any) -> tuple[Any, Any, dict[str, Any] | None]:
    """The request and the answer as JSON text when they were encoded already (the digest's text, the journal's
    text): ~10 µs a call less than building and encoding them again, which a fan-out of thousands feels."""
    request, response, error, model = raw
    text = _request_text(request)
    sent: Any
    if text is not None:
        sent = JsonText(text)
    elif request.agent:
        sent = {"agent": request.agent, **request.to_json()}
    else:
        sent = request.to_json()
    answer: Any = None
    if response is not None:
        if _unpriced(model):
            answer = JsonText(response.journal_text())
        else:
            answer = {**response.to_json(), "cost": _cost(response, model)}
    return sent, answer, _error(error)


def _request_text(request: CompletionRequest) -> str | None:
    """The request as the transcript keeps it, from its digest's text when it has one: the agent's name (who asked,
    under the name the run gave it) in front, as json.dumps(ensure_ascii=False) writes it, without building an
    encoder."""
    canonical, agent = request.canonical, request.agent
    if canonical is None or not agent:
        return canonical
    return f'{{"agent":{_json_string(agent)},{canonical[1:]}'


def _unpriced(model: ModelDef) -> bool:
    return model.price_in_per_mtok is None and model.price_out_per_mtok is None


def _tool_bodies(raw: Any) -> tuple[Any, Any, dict[str, Any] | None]:
    server, tool, arguments, result, error = raw
    sent = {"server": server, "tool": tool, "arguments": arguments}
    return sent, None if result is None else result.to_json(), _error(error)


def _as_is(raw: Any) -> tuple[Any, Any, dict[str, Any] | None]:
    return raw  # type: ignore[no-any-return]


def _error(error: FlowctlError | None) -> dict[str, Any] | None:
    return None if error is None else error.to_json()


def _cost(response: CompletionResponse, model: ModelDef) -> float:
    """What the answer cost at the model's `price:` (per million tokens in and out)."""
    usage = response.usage
    cost = 0.0
    if model.price_in_per_mtok is not None:
        cost += usage.input_tokens * model.price_in_per_mtok / 1e6
    if model.price_out_per_mtok is not None:
        cost += usage.output_tokens * model.price_out_per_mtok / 1e6
    return cost
