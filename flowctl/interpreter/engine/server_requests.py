"""What the engine answers for an MCP server during one of a step's tool calls (the `ToolCallHooks` of tools.py):
sampling with a model, elicitation from a person, a signal or a policy; progress and log messages to the reporter.

Sampling is a model call like the agent's own: journaled under the tool call's key (`…/tool:srv.t#0/llm#0`, so a
resumed run that calls the tool again gets the recorded answer and pays nothing), counted in the run's tokens and
cost, within the slot of the run's concurrency cap its tool call holds, and at most `sampling.max_concurrency` at once
per server. Elicitation is
journaled the same way (`…/wait#N`): a resumed run does not ask again.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import anyio

from flowctl.dsl.ir import ModelDef, ServerDef
from flowctl.interpreter.engine.observe import STEP_ATTEMPT, saw_model_call, saw_wait
from flowctl.interpreter.engine.tool_content import media_parts
from flowctl.interpreter.errors import FlowctlError, ToolCallError
from flowctl.interpreter.providers.llm import CompletionRequest, Message
from flowctl.interpreter.tools import (
    ElicitationAnswer,
    ElicitationRequest,
    SamplingAnswer,
    SamplingRequest,
    ToolResult,
)

if TYPE_CHECKING:
    from flowctl.interpreter.engine.agent import _CallCounter
    from flowctl.interpreter.engine.context import RunContext

ELICITATION_EVENT = "elicitation"  # `flowctl signal RUN elicitation --data '{…}'` answers a waiting elicitation


class CallHooks:
    """The hooks of one tool call of a step: `path` is the step, `counter` numbers the call's own effects under its
    journal key, `model` is the calling agent's (None for a `tool:` step)."""

    def __init__(self, ctx: RunContext, path: str, counter: _CallCounter, model: ModelDef | None, agent: str) -> None:
        self.ctx = ctx
        self.path = path
        self.counter = counter
        self.model = model
        self.agent = agent

    # --- notifications ------------------------------------------------------------------------------------------

    def progress(self, server: ServerDef, tool: str, progress: float, total: float | None, message: str | None) -> None:
        self.ctx.runtime.reporter.tool_progress(
            self.ctx.run_id, self.path, server.name, tool, progress, total, message or ""
        )

    def log(self, server: ServerDef, level: str, logger: str | None, data: Any) -> None:
        ctx = self.ctx
        ctx.runtime.reporter.server_log(ctx.run_id, self.path, server.name, level, logger or "", data)
        # in the transcript too, as an entry of kind "log" under the tool call (`flowctl logs` shows it in place)
        raw = ({"server": server.name, "level": level, "logger": logger}, data, None)
        key = f"{self.counter.path}/log"
        now = ctx.runtime.clock.now()
        ctx.runtime.recorder.exchange(ctx.run_id, self.path, key, STEP_ATTEMPT.get(), "log", now, 0.0, _as_is, raw)

    # --- sampling -----------------------------------------------------------------------------------------------

    async def sample(self, server: ServerDef, request: SamplingRequest) -> SamplingAnswer:
        from flowctl.interpreter.engine.agent import _record_model_call, _replay_model_call

        ctx = self.ctx
        model = self._sampling_model(server, request)
        completion = CompletionRequest(
            model.model,
            _sampling_messages(request),
            (),
            None,
            _sampling_params(model, request),
            model.timeout,
            self.agent or f"sampling:{server.name}",
            self.path,
        )
        limits = ctx.runtime.server_limits
        limit = limits.get(server.name)
        if limit is None:
            limit = limits[server.name] = anyio.Semaphore(server.sampling_max_concurrency)
        async with limit:
            key, digest, response = _replay_model_call(ctx, model, completion, self.counter)
            if response is None:
                clock = ctx.runtime.clock
                started, began = clock.now(), clock.monotonic()
                try:
                    # no slot of the run's `concurrency` of its own: the tool call waiting for it holds one (taking a
                    # second could deadlock a run whose slots all wait for sampling)
                    runtime = ctx.runtime
                    breakers = runtime.breakers
                    breaker = (
                        breakers.get(f"model:{model.name}", model.circuit_breaker) if model.circuit_breaker else None
                    )
                    response = await breakers.guard(breaker, lambda: runtime.provider(model).complete(completion))
                    _record_model_call(ctx, model, key, digest, response, None)
                except FlowctlError as exc:
                    saw_model_call(
                        ctx, self.path, key, model, completion, None, exc, started, clock.monotonic() - began
                    )
                    raise
                saw_model_call(
                    ctx, self.path, key, model, completion, response, None, started, clock.monotonic() - began
                )
                await ctx.runtime.recorder.durable()
        stop = "maxTokens" if response.finish_reason == "length" else "endTurn"
        return SamplingAnswer(response.content or "", response.model or model.model, stop)

    def _sampling_model(self, server: ServerDef, request: SamplingRequest) -> ModelDef:
        """The server block's `sampling.model`, else a model the request's hints name (a key of `models:` or a
        model id one of them uses), else the calling agent's model, else the model called `default`."""
        models = self.ctx.graph.models
        if server.sampling_model is not None:
            return models[server.sampling_model]
        for hint in request.model_hints:
            found = models.get(hint) or next((m for m in models.values() if m.model == hint), None)
            if found is not None:
                return found
        if self.model is not None:
            return self.model
        if "default" in models:
            return models["default"]
        if models:
            return next(iter(models.values()))
        raise ToolCallError(
            f"server {server.name!r} asked for sampling, but the pipeline has no model", span=server.span
        )

    # --- elicitation --------------------------------------------------------------------------------------------

    async def elicit(self, server: ServerDef, request: ElicitationRequest) -> ElicitationAnswer:
        ctx = self.ctx
        key = self.counter.key("wait")
        what = json.dumps({"server": server.name, "message": request.message, "schema": request.schema}, sort_keys=True)
        digest = f"elicit:{_sha(what)}"
        asked = False

        async def ask() -> dict[str, Any]:
            nonlocal asked
            asked = True
            clock = ctx.runtime.clock
            started, began = clock.now(), clock.monotonic()
            answer, source = await self._answer(server, request)
            data = {"action": answer.action, "content": answer.content}
            taken = {"name": ELICITATION_EVENT, "data": data, "source": source}
            saw_wait(ctx, self.path, key, ELICITATION_EVENT, taken, started, clock.monotonic() - began)
            return data | {"source": source}

        recorded = await ctx.runtime.journal.call(ctx.run_id, key, digest, ask)
        if not asked and recorded.get("source") == "signal":  # replayed: it takes its signal again (see handle_wait)
            ctx.runtime.bus.consume(ELICITATION_EVENT, lambda event: True)
        return ElicitationAnswer(str(recorded.get("action", "cancel")), recorded.get("content"))

    async def _answer(self, server: ServerDef, request: ElicitationRequest) -> tuple[ElicitationAnswer, str]:
        """The answer, and who gave it: `policy`, `terminal` or `signal`."""
        mode = server.elicitation_mode
        if mode == "decline":
            return ElicitationAnswer("decline"), "policy"
        if mode == "auto":
            return _defaults(request.schema), "policy"
        if not _interactive():
            return await self._signalled(server, request), "signal"
        ctx = self.ctx
        lock = ctx.runtime.server_limits.setdefault("\0terminal", anyio.Lock())
        async with lock:  # one form on the terminal at a time; the status line stays away meanwhile
            reporter = ctx.runtime.reporter
            reporter.elicitation(ctx.run_id, self.path, server.name, request.message, request.schema, True)
            try:
                answer = await anyio.to_thread.run_sync(_terminal_form, server.name, request, abandon_on_cancel=True)
            finally:
                reporter.elicitation_done(ctx.run_id, self.path, server.name)
        return answer, "terminal"

    async def _signalled(self, server: ServerDef, request: ElicitationRequest) -> ElicitationAnswer:
        """Wait like a `wait` step for `flowctl signal RUN elicitation --data '…'`: `{"action": "decline"}` (or
        `cancel`), or the answer itself (an object matching the schema), or `{"action": "accept", "content": {…}}`."""
        ctx = self.ctx
        reporter = ctx.runtime.reporter
        note = ""
        while True:
            reporter.elicitation(ctx.run_id, self.path, server.name, request.message + note, request.schema, False)
            reporter.waiting(ctx.run_id, self.path, ELICITATION_EVENT)
            event = await ctx.runtime.bus.wait(ELICITATION_EVENT, lambda event: True, None)
            assert event is not None  # no timeout
            data = event.data
            if isinstance(data, dict) and data.get("action") in ("decline", "cancel"):
                return ElicitationAnswer(str(data["action"]))
            content = data.get("content") if isinstance(data, dict) and data.get("action") == "accept" else data
            problem = _invalid(content, request.schema)
            if problem is None:
                return ElicitationAnswer("accept", content)
            note = f" (the last answer was refused: {problem})"


def _sampling_messages(request: SamplingRequest) -> tuple[Message, ...]:
    messages = [Message("system", request.system_prompt)] if request.system_prompt else []
    for message in request.messages:
        content = message.get("content")
        blocks = content if isinstance(content, list) else [content]
        texts = [str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
        parts = media_parts(ToolResult("", None, parts=tuple(b for b in blocks if isinstance(b, dict))))
        role = "assistant" if message.get("role") == "assistant" else "user"
        messages.append(Message(role, "\n".join(texts), parts=tuple(parts) if role == "user" else ()))
    return tuple(messages)


def _sampling_params(model: ModelDef, request: SamplingRequest) -> dict[str, Any]:
    params = dict(model.params)
    params["max_tokens"] = min(request.max_tokens, params.get("max_tokens", request.max_tokens))
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.stop_sequences:
        params["stop"] = list(request.stop_sequences)
    return params


def _defaults(schema: dict[str, Any]) -> ElicitationAnswer:
    """`mode: auto`: accept with every field's default; decline when a required field has none."""
    properties = schema.get("properties") or {}
    content = {
        name: spec["default"] for name, spec in properties.items() if isinstance(spec, dict) and "default" in spec
    }
    if any(name not in content for name in schema.get("required") or ()):
        return ElicitationAnswer("decline")
    return ElicitationAnswer("accept", content)


def _invalid(content: Any, schema: dict[str, Any]) -> str | None:
    import jsonschema

    if not isinstance(content, dict):
        return "send a JSON object"
    validator = jsonschema.Draft202012Validator(schema or {"type": "object"})
    problem = jsonschema.exceptions.best_match(validator.iter_errors(content))
    return None if problem is None else f"at {problem.json_path}: {problem.message}"


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


def _terminal_form(server: str, request: ElicitationRequest, ask: Any = input) -> ElicitationAnswer:
    """The requested schema as a small form on the terminal (one question per field; empty keeps the default;
    `-` declines, Ctrl-D cancels)."""
    out = sys.stderr
    out.write(f"\n? server {server!r} asks: {request.message}\n  (answer each field; `-` declines, Ctrl-D cancels)\n")
    properties = request.schema.get("properties") or {}
    required = set(request.schema.get("required") or ())
    content: dict[str, Any] = {}
    try:
        for name, spec in properties.items():
            spec = spec if isinstance(spec, dict) else {}
            while True:
                label = spec.get("title") or name
                choices = spec.get("enum")
                hint = f" {'/'.join(map(str, choices))}" if choices else f" ({spec.get('type', 'string')})"
                default = f" [{spec['default']}]" if "default" in spec else ""
                text = ask(f"  {label}{hint}{default}: ").strip()
                if text == "-":
                    return ElicitationAnswer("decline")
                if not text:
                    if "default" in spec:
                        content[name] = spec["default"]
                    if name in required and "default" not in spec:
                        out.write("    required\n")
                        continue
                    break
                value, problem = _parse_field(text, spec)
                if problem is None:
                    content[name] = value
                    break
                out.write(f"    {problem}\n")
    except EOFError:
        return ElicitationAnswer("cancel")
    return ElicitationAnswer("accept", content)


def _parse_field(text: str, spec: dict[str, Any]) -> tuple[Any, str | None]:
    kind = spec.get("type", "string")
    value: Any = text
    try:
        if kind == "boolean":
            if text.lower() not in ("y", "yes", "true", "n", "no", "false"):
                return None, "answer yes or no"
            value = text.lower() in ("y", "yes", "true")
        elif kind == "integer":
            value = int(text)
        elif kind == "number":
            value = float(text)
    except ValueError:
        return None, f"a {kind} please"
    if spec.get("enum") and value not in spec["enum"]:
        return None, f"one of {', '.join(map(str, spec['enum']))}"
    return value, None


def _as_is(raw: Any) -> tuple[Any, Any, dict[str, Any] | None]:
    return raw  # type: ignore[no-any-return]


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()
