"""The execution graph (typed IR): what `compile_graph` produces and the interpreter consumes.

Immutable and free of raw YAML: templates and expressions are compiled objects, durations are seconds, references
are resolved names, and every node keeps the span it came from so runtime errors point at the YAML line.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from flowctl.dsl.diagnostics import Span
from flowctl.dsl.templates import CompiledValue, Expression, TextTemplate


class NodeKind(enum.Enum):
    AGENT = "agent"
    TOOL = "tool"
    PARALLEL = "parallel"
    PIPELINE = "pipeline"
    ROUTE = "route"
    LOOP = "loop"
    WAIT = "wait"
    EMIT = "emit"
    SET = "set"


class JoinKind(enum.Enum):
    ALL = "all"
    COLLECT = "collect"
    FIRST = "first"
    AT_LEAST = "at_least"


class OnError(enum.Enum):
    FAIL = "fail"
    CONTINUE = "continue"


class OnUnknown(enum.Enum):
    REPORT = "report"
    DEFAULT = "default"
    FAIL = "fail"


class Reducer(enum.Enum):
    REPLACE = "replace"
    APPEND = "append"
    MERGE = "merge"


class TriggerKind(enum.Enum):
    EVENT = "event"
    FAILED = "failed"
    COMPLETED = "completed"
    WHEN = "when"


class Transport(enum.Enum):
    STDIO = "stdio"
    SSE = "sse"
    STREAMABLE_HTTP = "streamable_http"


# --- policies ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Join:
    kind: JoinKind = JoinKind.ALL
    at_least: int = 0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 1  # counts the first try
    backoff: str = "exponential"  # exponential | fixed
    initial_delay: float = 1.0
    max_delay: float = 30.0
    jitter: bool = True


# The default for steps that call a model or a tool: only retryable errors (rate limits, 5xx, timeouts, broken
# streams, ...) are retried; a bad request, an auth error or a tool's own error fails at once.
TRANSIENT_RETRY = RetryPolicy(max_attempts=3, backoff="exponential", initial_delay=1.0, max_delay=30.0, jitter=True)


@dataclass(frozen=True, slots=True)
class Fallback:
    agent: str | None = None
    model: str | None = None
    steps: tuple[Step, ...] = ()
    value: CompiledValue | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    retry: RetryPolicy = RetryPolicy()
    timeout: float | None = None  # per attempt, seconds
    deadline: float | None = None  # all attempts, seconds
    fallback: Fallback | None = None
    on_error: OnError = OnError.FAIL
    default: CompiledValue | None = None


@dataclass(frozen=True, slots=True)
class CircuitBreakerSpec:
    failure_threshold: int = 5
    reset_after: float = 30.0


# --- step bodies: one per node kind -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentCall:
    agent: str
    prompt: TextTemplate


@dataclass(frozen=True, slots=True)
class ToolCall:
    server: str
    tool: str
    args: CompiledValue


@dataclass(frozen=True, slots=True)
class ParallelGroup:
    branches: tuple[Step, ...]
    join: Join
    max_concurrency: int | None


@dataclass(frozen=True, slots=True)
class ChildPipeline:
    ref: str  # key into Graph.pipelines (a name) or Graph.children (a resolved file path)
    is_file: bool
    inputs: CompiledValue


@dataclass(frozen=True, slots=True)
class RouteRule:
    when: Expression
    choose: tuple[str, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Route:
    rules: tuple[RouteRule, ...]
    agent: str | None
    prompt: TextTemplate | None
    multiple: bool
    default: tuple[str, ...]
    on_unknown: OnUnknown
    branches: dict[str, tuple[Step, ...]]


@dataclass(frozen=True, slots=True)
class Loop:
    max_iterations: int
    until: Expression | None
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class Wait:
    event: str
    timeout: float | None
    match: Expression | None


@dataclass(frozen=True, slots=True)
class EmitSpec:
    event: str
    data: CompiledValue | None
    span: Span


@dataclass(frozen=True, slots=True)
class SetState:
    """A step whose only effect is its `set:` updates."""


StepBody = AgentCall | ToolCall | ParallelGroup | ChildPipeline | Route | Loop | Wait | EmitSpec | SetState


@dataclass(frozen=True, slots=True)
class FanOut:
    items: CompiledValue
    var: str
    max_concurrency: int | None
    join: Join


@dataclass(frozen=True, slots=True)
class Step:
    id: str
    kind: NodeKind
    body: StepBody
    span: Span
    needs: tuple[str, ...] = ()  # resolved: explicit `needs`, or the previous step in the list
    when: Expression | None = None
    updates: tuple[tuple[str, CompiledValue], ...] = ()
    emit: EmitSpec | None = None
    policy: Policy = Policy()
    fan_out: FanOut | None = None

    def children(self) -> Iterator[Step]:
        """Steps nested directly in this one (branches, loop bodies, fallback steps)."""
        body = self.body
        if isinstance(body, ParallelGroup):
            yield from body.branches
        elif isinstance(body, Route):
            for steps in body.branches.values():
                yield from steps
        elif isinstance(body, Loop):
            yield from body.steps
        if self.policy.fallback is not None:
            yield from self.policy.fallback.steps


# --- definitions ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputSpec:
    name: str
    schema: dict[str, Any]
    required: bool
    default: Any
    span: Span


@dataclass(frozen=True, slots=True)
class StateKey:
    name: str
    reducer: Reducer
    default: Any
    span: Span


@dataclass(frozen=True, slots=True)
class Trigger:
    id: str
    kind: TriggerKind
    target: str  # event name or step id; empty for WHEN
    condition: Expression | None  # for WHEN
    once: bool
    steps: tuple[Step, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class PipelineDef:
    name: str
    span: Span
    inputs: dict[str, InputSpec]
    outputs: tuple[tuple[str, CompiledValue], ...]
    state: dict[str, StateKey]
    steps: tuple[Step, ...]
    finally_steps: tuple[Step, ...] = ()
    triggers: tuple[Trigger, ...] = ()

    def all_steps(self) -> Iterator[Step]:
        """Every step of this pipeline, nested ones included, in document order."""
        stack = [*self.steps, *(s for t in self.triggers for s in t.steps), *self.finally_steps][::-1]
        while stack:
            step = stack.pop()
            yield step
            stack.extend(list(step.children())[::-1])


@dataclass(frozen=True, slots=True)
class ModelDef:
    name: str
    provider: str  # openai | scripted | a registered provider name
    model: str
    span: Span
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    params: dict[str, Any] = field(default_factory=dict)  # temperature, max_tokens, top_p, seed
    timeout: float = 60.0
    circuit_breaker: CircuitBreakerSpec | None = None
    price_in_per_mtok: float | None = None
    price_out_per_mtok: float | None = None
    fixture: str | None = None
    concurrency: int | None = None  # calls to this model at once (all runs of a process; all workers under `scale`)


@dataclass(frozen=True, slots=True)
class ServerDef:
    name: str
    transport: Transport
    span: Span
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # values still hold ${VAR}: expanded at connect time
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    read_timeout: float = 60.0
    startup_timeout: float = 30.0
    allowed_tools: tuple[str, ...] | None = None
    idempotent_tools: tuple[str, ...] = ()
    circuit_breaker: CircuitBreakerSpec | None = None
    concurrency: int | None = None  # tool calls to this server at once (as ModelDef.concurrency)


@dataclass(frozen=True, slots=True)
class AgentDef:
    name: str
    instruction: TextTemplate
    model: str
    span: Span
    servers: tuple[str, ...] = ()
    tools: tuple[str, ...] | None = None
    max_iterations: int = 10
    output_schema: dict[str, Any] | None = None


DEFAULT_MODEL = ModelDef("default", "openai", "gpt-4o-mini", Span("<builtin>", 1, 1))


@dataclass(frozen=True, slots=True)
class Graph:
    """A compiled pipeline file: its root pipeline, named children, child files, and resources."""

    file: str
    root: PipelineDef
    pipelines: dict[str, PipelineDef]
    children: dict[str, Graph]
    agents: dict[str, AgentDef]
    models: dict[str, ModelDef]
    servers: dict[str, ServerDef]
    concurrency: int = 16
    source_digest: str = ""  # sha256 of the file text, recorded with each run
