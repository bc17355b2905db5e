"""OpenTelemetry traces of runs (the optional `otel` extra): `TraceReporter`, a `Reporter` that turns what a run tells
its watchers into spans following the OpenTelemetry GenAI semantic conventions, and `reporter_from_env`, which builds
one exporting over OTLP/HTTP when the standard `OTEL_*` variables ask for it.

The span tree follows the run tree: a run (`invoke_workflow {pipeline}`) holds its steps (`invoke_agent {agent}` for
an agent step, `{kind} {path}` for the others); a step holds the steps it ran (a `parallel` step's branches, a loop's
body, a fan-out's items `step[i]`) and its model calls (`chat {model}`) and tool calls (`execute_tool {tool}`); a child
pipeline's run (`<parent run>/<step path>`) sits under the step that started it. Prompts, completions, tool arguments
and results are recorded only when `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT` opts in, masked by the run's
redactor.

`opentelemetry` is imported only here and only when a reporter is built: `flowctl --version` and `flowctl validate`
never load it (tests/dsl/test_imports.py).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from flowctl.interpreter.reporting import ModelCallSeen, Reporter, Retry, ToolCallSeen

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

    from flowctl.interpreter.providers.llm import CompletionRequest, CompletionResponse, Message
    from flowctl.interpreter.redact import Redactor

CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
# the values that opt in: `true` (the original switch) and the modes of the latest experimental conventions: content
# on the spans (`SPAN_ONLY`), in the `gen_ai.client.inference.operation.details` event (`EVENT_ONLY`), or both
_CAPTURE_SPANS = {"true", "1", "yes", "span_only", "span_and_event"}
_CAPTURE_EVENTS = {"event_only", "span_and_event"}
INSTALL_HINT = "pip install 'flowctl-agents[otel]'"
SCOPE = "flowctl"

# model parameters (as pipelines spell them, see `models:` in docs/dsl.md) → request attributes
_PARAMS = {
    "temperature": "gen_ai.request.temperature",
    "max_tokens": "gen_ai.request.max_tokens",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "stop": "gen_ai.request.stop_sequences",
}
# journal keys (engine/agent.py's call counter): a model call `plan/llm#3` whose answer asks for tools has its
# tool calls keyed `plan/turn#4/…`, `plan/turn#5/…` in the answer's order — how a tool span finds its call id
_MODEL_KEY = re.compile(r"^(.*)/llm#(\d+)$")


def capture_mode(env: Mapping[str, str]) -> tuple[bool, bool]:
    """(content on spans, content in events) as `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT` says."""
    value = env.get(CAPTURE_CONTENT, "").strip().lower()
    return value in _CAPTURE_SPANS, value in _CAPTURE_EVENTS


def reporter_from_env(
    env: Mapping[str, str], redactor: Redactor, *, warn: Callable[[str], None] | None = None
) -> Reporter | None:
    """A `TraceReporter` exporting over OTLP/HTTP when the environment asks for traces: `OTEL_TRACES_EXPORTER=otlp`
    (or `console`), or an `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`. None when it does not
    (or `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`), and None with one line to `warn` (stderr by
    default) when it does but the `otel` extra is not installed or cannot do what is asked."""
    say = warn or (lambda line: print(line, file=sys.stderr))
    exporter_name = _exporter_wanted(env)
    if exporter_name is None:
        unknown = set(_chosen(env)) - {"none"}
        if unknown:
            say(f"warning: OTEL_TRACES_EXPORTER={','.join(sorted(unknown))}: flowctl exports otlp or console only")
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        say(f"warning: OpenTelemetry variables are set but the otel extra is not installed ({INSTALL_HINT}): no traces")
        return None
    exporter: SpanExporter
    if exporter_name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter = ConsoleSpanExporter(out=sys.stderr)
    else:
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
        if protocol and protocol != "http/protobuf":
            say(f"warning: flowctl exports traces over OTLP http/protobuf only, not {protocol}: no traces")
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            say(f"warning: the OTLP/HTTP exporter is not installed ({INSTALL_HINT}): no traces")
            return None
        # the endpoint from `env` (the exporter itself reads only os.environ); headers, timeout, compression and
        # certificates it reads from os.environ as the OTLP exporter specification says
        endpoint = traces_endpoint(env)
        # its retries say one line each, and some releases raise a refused connection: one line of ours instead
        logging.getLogger(OTLPSpanExporter.__module__).setLevel(logging.CRITICAL)
        exporter = _said_once(OTLPSpanExporter(endpoint=endpoint), endpoint, say)
    # OTEL_SERVICE_NAME, else a service.name in OTEL_RESOURCE_ATTRIBUTES (the SDK reads it), else `flowctl`
    attributes: dict[str, Any] = {}
    if env.get("OTEL_SERVICE_NAME") or "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = env.get("OTEL_SERVICE_NAME") or "flowctl"
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    capture, events = capture_mode(env)
    return TraceReporter(
        provider.get_tracer(SCOPE), redactor, capture_content=capture, content_events=events, provider=provider
    )


def _said_once(exporter: SpanExporter, endpoint: str, say: Callable[[str], None]) -> SpanExporter:
    """`exporter`, telling `say` once that spans could not be sent (its own failures are silenced above)."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Guarded(SpanExporter):
        said = False

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            try:
                result, reason = exporter.export(spans), ""
            except Exception as exc:  # an exporter that raises (a refused connection, in some releases)
                result, reason = SpanExportResult.FAILURE, f" ({type(exc).__name__})"
            if result is SpanExportResult.FAILURE and not self.said:
                self.said = True
                say(f"warning: could not send traces to {endpoint}{reason}: spans are lost")
            return result

        def shutdown(self) -> None:
            exporter.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return exporter.force_flush(timeout_millis)

    return Guarded()


def _exporter_wanted(env: Mapping[str, str]) -> str | None:
    """`otlp`, `console`, or None (no traces)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    chosen = _chosen(env)
    if chosen:
        return next((name for name in chosen if name in ("otlp", "console")), None)
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "otlp"
    return None


def _chosen(env: Mapping[str, str]) -> list[str]:
    return [name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]


def traces_endpoint(env: Mapping[str, str]) -> str:
    """Where OTLP/HTTP traces go: the signal's own endpoint as it is, else the base endpoint + `/v1/traces`, else the
    specification's default, http://localhost:4318/v1/traces."""
    own = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if own:
        return own
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    return base.rstrip("/") + "/v1/traces"


class TraceReporter(Reporter):
    """Spans for runs, steps, model calls and tool calls (see the module). Give it any tracer (an embedder's global
    one, or an in-memory exporter's in tests); `provider`, when given, is flushed and shut down by `close()`."""

    def __init__(
        self,
        tracer: Tracer,
        redactor: Redactor,
        *,
        capture_content: bool = False,
        content_events: bool = False,
        provider: TracerProvider | None = None,
    ) -> None:
        from opentelemetry import trace

        self._trace = trace
        self.tracer = tracer
        self.redactor = redactor
        self.capture_content = capture_content
        self.content_events = content_events
        self.provider = provider
        self._runs: dict[str, Span] = {}  # run id → its open span
        self._steps: dict[tuple[str, str], Span] = {}  # (run id, step path) → its open span
        self._agents: dict[tuple[str, str], list[int]] = {}  # an agent step → [input tokens, output tokens]
        self._failures: dict[tuple[str, str], str] = {}  # a step → the code of its last failed call
        self._run_failures: dict[str, str] = {}  # a run → the code of its last failed step's failure
        # indexes, so that ending a step costs the same in a fan-out of thousands as in a chain
        self._open: dict[str, set[str]] = {}  # run id → the paths of its open steps
        self._child_runs: dict[tuple[str, str], list[str]] = {}  # a step → the child runs opened under it
        self._tool_call_ids: dict[tuple[str, str], dict[str, str]] = {}  # a step → {`plan/turn#4`: tool call id}
        # The step whose task a hook runs in: a step started there is nested in it. Paths do not always say so (a
        # `parallel` step's branches, a loop's body are named by their own ids), but tasks do: a step's code runs in
        # its task, and the tasks it starts inherit this variable (see step_started and step_finished).
        self._current: ContextVar[tuple[str, str] | None] = ContextVar("flowctl_trace_step", default=None)
        self._before: dict[tuple[str, str], tuple[str, str] | None] = {}  # a step → the current step it replaced

    # runs ---------------------------------------------------------------------------------------------------------

    def run_started(self, run_id: str, pipeline: str, resumed: bool) -> None:
        parent = self._parent_of_run(run_id)
        attributes = {
            "gen_ai.operation.name": "invoke_workflow",
            "gen_ai.workflow.name": pipeline,
            "flowctl.run.id": run_id,
            "flowctl.run.resumed": resumed,
        }
        self._runs[run_id] = self._start(f"invoke_workflow {pipeline}", parent, attributes)

    def _run_span(self, run_id: str) -> Span:
        """The run's span; a child run's is opened when its first step starts (child runs report no start)."""
        span = self._runs.get(run_id)
        if span is None:
            attributes = {"gen_ai.operation.name": "invoke_workflow", "flowctl.run.id": run_id}
            span = self._runs[run_id] = self._start("invoke_workflow", self._parent_of_run(run_id), attributes)
        return span

    def _parent_of_run(self, run_id: str) -> Span | None:
        """A child run `<parent run>/<step path>` belongs under that step (the longest open run id is its parent)."""
        cut = len(run_id)
        while (cut := run_id.rfind("/", 0, cut)) > 0:
            parent = run_id[:cut]
            if parent in self._runs:
                owner = self._owner(parent, run_id[cut + 1 :])
                if owner is None:
                    return self._runs[parent]
                self._child_runs.setdefault(owner, []).append(run_id)
                return self._steps[owner]
        return None

    def run_finished(self, run_id: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        span = self._runs.get(run_id)
        if span is not None:
            span.set_attribute("flowctl.run.tokens", tokens)
            self._end_run(run_id, status, error)

    def _end_run(self, run_id: str, status: str, error: str, code: str = "") -> None:
        for path in sorted(
            self._open.pop(run_id, ()), key=len, reverse=True
        ):  # left open by a cancellation: inner first
            self._end_step((run_id, path), "cancelled", "")
        span = self._runs.pop(run_id, None)
        if span is None:
            return
        span.set_attribute("flowctl.run.status", status)
        self._set_outcome(span, status, self.redactor.redact_text(error), code or self._run_failures.pop(run_id, ""))
        span.end()

    # steps --------------------------------------------------------------------------------------------------------

    def step_started(self, run_id: str, path: str, kind: str, attempt: int) -> None:
        key = (run_id, path)
        span = self._steps.get(key)
        if span is not None:  # another attempt of a step already open
            span.set_attribute("flowctl.step.attempts", attempt)
            return
        parent = self._parent_of_step(run_id, path)
        attributes: dict[str, Any] = {
            "flowctl.run.id": run_id,
            "flowctl.step.path": path,
            "flowctl.step.kind": kind,
            "flowctl.step.attempts": attempt,
        }
        self._open.setdefault(run_id, set()).add(path)
        self._before[key] = self._current.get()
        self._current.set(key)
        if kind == "agent":  # becomes `invoke_agent {agent}` at its first model call (a fan-out's own span never does)
            self._agents[key] = [0, 0]
        self._steps[key] = self._start(f"{kind} {path}", parent, attributes)

    def _parent_of_step(self, run_id: str, path: str) -> Span:
        """The step this one was started from (the current step of its task), else the one its path is nested in
        (`fan[0]` in `fan`), else its run."""
        current = self._current.get()
        if current is not None and current in self._steps:
            return self._steps[current] if current[0] == run_id else self._run_span(run_id)
        return self._enclosing(run_id, path) or self._run_span(run_id)

    def step_retrying(self, run_id: str, path: str, retry: Retry) -> None:
        span = self._steps.get((run_id, path))
        if span is None:
            return
        error = self.redactor.redact_text(retry.error)
        span.add_event(
            "flowctl.step.retry",
            {
                "flowctl.attempt": retry.attempt,
                "flowctl.max_attempts": retry.max_attempts,
                "flowctl.retry.reason": retry.reason,
                "flowctl.retry.delay": retry.delay,
                "error.message": error,
            },
        )
        self._end_child_runs((run_id, path), "failed", error, retry.reason)  # the next attempt runs it again

    def step_finished(self, run_id: str, path: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        key = (run_id, path)
        if key not in self._steps:  # skipped: it never started
            self.step_started(run_id, path, "step", 0)
        self._steps[key].set_attribute("flowctl.step.tokens", tokens)
        before = self._before.get(key)
        self._end_step(key, status, error)
        if self._current.get() == key:  # in the task that started it (always, as the engine runs steps)
            self._current.set(before)

    def _end_step(self, key: tuple[str, str], status: str, error: str) -> None:
        span = self._steps.pop(key, None)
        if span is None:  # ended already, with the child run it belongs to
            return
        self._open.get(key[0], set()).discard(key[1])
        self._before.pop(key, None)
        code = self._failures.pop(key, "")
        self._end_child_runs(key, status, error, code)
        self._tool_call_ids.pop(key, None)  # calls the model asked for that never ran (an unknown tool, say)
        usage = self._agents.pop(key, None)
        if usage is not None and any(usage):
            span.set_attribute("gen_ai.usage.input_tokens", usage[0])
            span.set_attribute("gen_ai.usage.output_tokens", usage[1])
        span.set_attribute("flowctl.step.status", status)
        self._set_outcome(span, status, self.redactor.redact_text(error), code)
        if status == "failed" and code:
            self._run_failures[key[0]] = code
        span.end()

    def _end_child_runs(self, key: tuple[str, str], status: str, error: str, code: str) -> None:
        for child in self._child_runs.pop(key, ()):
            self._end_run(child, status, error, code)

    def _enclosing(self, run_id: str, path: str) -> Span | None:
        owner = self._owner(run_id, path)
        return self._steps[owner] if owner is not None else None

    def _owner(self, run_id: str, path: str) -> tuple[str, str] | None:
        """The open step `path`, or the nearest open step it is nested in (`fan[0]/inner` → `fan[0]` → `fan`;
        `plan/fallback` → `plan`)."""
        while path:
            if (run_id, path) in self._steps:
                return (run_id, path)
            path = path[: path.rindex("[")] if path.endswith("]") and "[" in path else path.rpartition("/")[0]
        return None

    # calls --------------------------------------------------------------------------------------------------------

    def model_call(self, run_id: str, path: str, call: ModelCallSeen) -> None:
        request, response = call.request, call.response
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": call.provider,
            "gen_ai.request.model": request.model,
            "gen_ai.output.type": "json" if request.output_schema else "text",
            "flowctl.call.key": call.key,
            "flowctl.attempt": call.attempt,
            "flowctl.call.replayed": call.replayed,
        }
        if request.agent:
            attributes["gen_ai.agent.name"] = request.agent
        for name, attribute in _PARAMS.items():
            value = request.params.get(name)
            if value is not None:
                attributes[attribute] = _attribute_value(value)
        if response is not None:
            if response.model:
                attributes["gen_ai.response.model"] = response.model
            attributes["gen_ai.response.finish_reasons"] = [response.finish_reason]
            attributes["gen_ai.usage.input_tokens"] = response.usage.input_tokens
            attributes["gen_ai.usage.output_tokens"] = response.usage.output_tokens
            self._remember_tool_calls(run_id, path, call.key, response)
        parent = self._enclosing(run_id, path) or self._run_span(run_id)
        self._describe_agent(run_id, path, call)
        start = _nanoseconds(call.started)
        span = self._start(f"chat {request.model}", parent, attributes, kind="client", start=start)
        if self.capture_content or self.content_events:
            content = self._model_content(request, response)
            if self.capture_content:
                span.set_attributes(content)
            if self.content_events:
                span.add_event("gen_ai.client.inference.operation.details", content, timestamp=start)
        self._end_call(span, run_id, path, call.error, start + _nanoseconds(call.elapsed))

    def tool_call(self, run_id: str, path: str, call: ToolCallSeen) -> None:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.tool,
            "flowctl.tool.server": call.server,
            "flowctl.call.key": call.key,
            "flowctl.attempt": call.attempt,
            "flowctl.call.replayed": call.replayed,
        }
        owner = self._owner(run_id, path)
        ids = self._tool_call_ids.get(owner) if owner is not None else None
        call_id = ids.pop(call.key.rpartition("/")[0], None) if ids else None
        if call_id is not None:
            attributes["gen_ai.tool.call.id"] = call_id
        if self.capture_content or self.content_events:  # no event is defined for tools: on the span either way
            attributes["gen_ai.tool.call.arguments"] = self._json(call.arguments)
            if call.result is not None:
                value = call.result.value if call.result.value is not None else call.result.text
                attributes["gen_ai.tool.call.result"] = self._json(value)
        parent = self._enclosing(run_id, path) or self._run_span(run_id)
        start = _nanoseconds(call.started)
        span = self._start(f"execute_tool {call.tool}", parent, attributes, start=start)
        if call.error is None and call.result is not None and call.result.is_error:
            span.set_attribute("error.type", "tool-error")
            span.set_status(self._trace.StatusCode.ERROR, self.redactor.redact_text(call.result.text))
        self._end_call(span, run_id, path, call.error, start + _nanoseconds(call.elapsed))

    def _end_call(self, span: Span, run_id: str, path: str, error: Any, end: int) -> None:
        if error is not None:
            code = str(getattr(error, "code", "") or type(error).__name__)
            span.set_attribute("error.type", code)
            span.set_status(self._trace.StatusCode.ERROR, self.redactor.redact_text(str(error)))
            owner = self._owner(run_id, path)
            if owner is not None:
                self._failures[owner] = code
        span.end(end_time=end)

    def _describe_agent(self, run_id: str, path: str, call: ModelCallSeen) -> None:
        """An agent step's span learns its agent, provider and model from its first model call, and adds up usage."""
        owner = self._owner(run_id, path)
        usage = self._agents.get(owner) if owner is not None else None
        if owner is None or usage is None:
            return
        span = self._steps[owner]
        span.set_attribute("gen_ai.operation.name", "invoke_agent")  # one agent conversation in this process
        if call.request.agent:
            span.update_name(f"invoke_agent {call.request.agent}")
            span.set_attribute("gen_ai.agent.name", call.request.agent)
        else:
            span.update_name("invoke_agent")
        span.set_attribute("gen_ai.provider.name", call.provider)
        span.set_attribute("gen_ai.request.model", call.request.model)
        if call.response is not None and not call.replayed:
            usage[0] += call.response.usage.input_tokens
            usage[1] += call.response.usage.output_tokens

    def _remember_tool_calls(self, run_id: str, path: str, key: str, response: CompletionResponse) -> None:
        match = _MODEL_KEY.match(key)
        owner = self._owner(run_id, path)
        if match is None or owner is None or not response.tool_calls:
            return
        prefix, number = match.group(1), int(match.group(2))
        ids = self._tool_call_ids.setdefault(owner, {})
        for i, requested in enumerate(response.tool_calls):
            ids[f"{prefix}/turn#{number + 1 + i}"] = requested.id

    # content (opt-in) ---------------------------------------------------------------------------------------------

    def _model_content(self, request: CompletionRequest, response: CompletionResponse | None) -> dict[str, str]:
        """The opt-in content attributes in the conventions' JSON shapes (messages of typed parts), redacted."""
        system = [{"type": "text", "content": m.content or ""} for m in request.messages if m.role == "system"]
        content = {"gen_ai.input.messages": self._json([_message(m) for m in request.messages if m.role != "system"])}
        if system:
            content["gen_ai.system_instructions"] = self._json(system)
        if request.tools:
            tools = [
                {"type": "function", "name": t.name, "description": t.description, "parameters": t.input_schema}
                for t in request.tools
            ]
            content["gen_ai.tool.definitions"] = self._json(tools)
        if response is not None:
            parts: list[dict[str, Any]] = []
            if response.content:
                parts.append({"type": "text", "content": response.content})
            parts.extend(_tool_call_part(c.id, c.name, c.arguments) for c in response.tool_calls)
            output = [{"role": "assistant", "parts": parts, "finish_reason": response.finish_reason}]
            content["gen_ai.output.messages"] = self._json(output)
        return content

    def _json(self, value: Any) -> str:
        return json.dumps(self.redactor.redact(value), ensure_ascii=False, default=str)

    # the rest -----------------------------------------------------------------------------------------------------

    def event(self, run_id: str, name: str, source: str) -> None:
        span = self._runs.get(run_id)
        if span is not None:
            span.add_event("flowctl.event", {"flowctl.event.name": name, "flowctl.event.source": source})

    def waiting(self, run_id: str, path: str, event: str) -> None:
        span = self._enclosing(run_id, path)
        if span is not None:
            span.add_event("flowctl.wait", {"flowctl.event.name": event})

    def held_back(self, run_id: str, path: str, queued: int, cap: int) -> None:
        span = self._enclosing(run_id, path)
        if span is not None:
            span.add_event("flowctl.held_back", {"flowctl.queued": queued, "flowctl.concurrency": cap})

    def close(self) -> None:
        """End what an interrupted run left open, then flush the exporter."""
        for run_id in sorted(self._runs, key=len):  # roots first: each ends its steps and their child runs
            self._end_run(run_id, "cancelled", "")
        if self.provider is not None:
            self.provider.shutdown()

    def _start(
        self,
        name: str,
        parent: Span | None,
        attributes: dict[str, Any],
        *,
        kind: str = "internal",
        start: int | None = None,
    ) -> Span:
        trace = self._trace
        context = trace.set_span_in_context(parent) if parent is not None else None
        span_kind = trace.SpanKind.CLIENT if kind == "client" else trace.SpanKind.INTERNAL
        return self.tracer.start_span(
            name, context=context, kind=span_kind, attributes=attributes, start_time=start or time.time_ns()
        )

    def _set_outcome(self, span: Span, status: str, error: str, code: str) -> None:
        if status == "failed":
            span.set_attribute("error.type", code or "_OTHER")
            span.set_status(self._trace.StatusCode.ERROR, error)
        elif status == "cancelled":
            span.set_attribute("error.type", "cancelled")


def _message(message: Message) -> dict[str, Any]:
    """One message of `gen_ai.input.messages`: its role and typed parts."""
    parts: list[dict[str, Any]] = []
    if message.role == "tool":
        parts.append({"type": "tool_call_response", "id": message.tool_call_id, "response": message.content})
    elif message.content:
        parts.append({"type": "text", "content": message.content})
    parts.extend(_tool_call_part(c.id, c.name, c.arguments) for c in message.tool_calls)
    return {"role": message.role, "parts": parts}


def _tool_call_part(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    try:
        parsed: Any = json.loads(arguments)
    except ValueError:
        parsed = arguments  # as the model wrote it
    return {"type": "tool_call", "id": call_id, "name": name, "arguments": parsed}


def _attribute_value(value: Any) -> Any:
    """A parameter as an attribute: primitives as they are, a list of strings as it is, anything else as JSON."""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    return json.dumps(value, default=str)


def _nanoseconds(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


__all__ = ["CAPTURE_CONTENT", "TraceReporter", "capture_mode", "reporter_from_env", "traces_endpoint"]
