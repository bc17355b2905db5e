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
    RESOURCE = "resource"
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


# --- step bodies: one per node kind (flowctl/dsl/kinds.py registers them) --------------------------------------


class _Body:
    """What every step body answers: the step lists nested in it (none by default)."""

    __slots__ = ()

    def step_lists(self) -> tuple[tuple[Step, ...], ...]:
        return ()


@dataclass(frozen=True, slots=True)
class AgentCall(_Body):
    agent: str  # the declared agent; "" when `choose` names it at run time
    prompt: TextTemplate
    choose: CompiledValue | None = None  # `agent: "{{ expr }}"`: the name of a declared agent, rendered per call
    default: str | None = None  # `default_agent:`: the agent used when `choose` names none
    arguments: tuple[tuple[str, CompiledValue], ...] | None = None  # `agent: {use:, with:}`: a parameterised agent's
    server_prompt: ServerPrompt | None = None  # `prompt: {server, prompt, arguments}`: its messages are the prompt


@dataclass(frozen=True, slots=True)
class ToolCall(_Body):
    server: str
    tool: str
    args: CompiledValue


@dataclass(frozen=True, slots=True)
class ResourceRead(_Body):
    """A `resource:` step: read a server resource (`uri` may be a URI template whose `{name}`s `arguments` fill)."""

    server: str
    uri: str
    arguments: CompiledValue
    span: Span


@dataclass(frozen=True, slots=True)
class ParallelGroup(_Body):
    branches: tuple[Step, ...]
    join: Join
    max_concurrency: int | None

    def step_lists(self) -> tuple[tuple[Step, ...], ...]:
        return (self.branches,)


@dataclass(frozen=True, slots=True)
class ChildRef:
    """A child pipeline as a step names it: `name` as written, `ref` the key into Graph.pipelines (a name) or
    Graph.children (a resolved file path)."""

    name: str
    ref: str
    is_file: bool


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A child chosen at run time by an expression over a declared set (dispatch by name)."""

    name: CompiledValue
    choices: dict[str, ChildRef]  # by the name as written
    on_unknown: OnUnknown
    default: ChildRef | None


@dataclass(frozen=True, slots=True)
class ChildPipeline(_Body):
    ref: str  # key into Graph.pipelines (a name) or Graph.children (a resolved file path); "" with `dispatch`
    is_file: bool
    inputs: CompiledValue
    dispatch: Dispatch | None = None


@dataclass(frozen=True, slots=True)
class RouteRule:
    when: Expression
    choose: tuple[str, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Route(_Body):
    rules: tuple[RouteRule, ...]
    agent: str | None
    prompt: TextTemplate | None
    multiple: bool
    default: tuple[str, ...]
    on_unknown: OnUnknown
    branches: dict[str, tuple[Step, ...]]
    sequential: bool = False  # run the chosen branches one after another, in the order chosen
    constraint: str = "system"  # where the router is told the options: system | user | none
    unknown_in_results: bool = False  # unknown choices also get an `{error: ...}` entry in `results`

    def step_lists(self) -> tuple[tuple[Step, ...], ...]:
        return tuple(self.branches.values())


@dataclass(frozen=True, slots=True)
class Loop(_Body):
    max_iterations: int
    until: Expression | None
    steps: tuple[Step, ...]

    def step_lists(self) -> tuple[tuple[Step, ...], ...]:
        return (self.steps,)


@dataclass(frozen=True, slots=True)
class Wait(_Body):
    event: str
    timeout: float | None
    match: Expression | None


@dataclass(frozen=True, slots=True)
class EmitSpec(_Body):
    event: str
    data: CompiledValue | None
    span: Span


@dataclass(frozen=True, slots=True)
class SetState(_Body):
    """A step whose only effect is its `set:` updates."""


StepBody = (
    AgentCall | ToolCall | ResourceRead | ParallelGroup | ChildPipeline | Route | Loop | Wait | EmitSpec | SetState
)


@dataclass(frozen=True, slots=True)
class FanOut:
    items: CompiledValue
    var: str
    max_concurrency: int | None
    join: Join
    item_id: CompiledValue | None = None  # names each item (`step[name]`, its child run `<run>/step[name]`)


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
        for steps in self.body.step_lists():
            yield from steps
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


DEFAULT_MAX_FIRINGS = 100  # a `once: false` trigger's bound: events that start each other stop here, with an error


@dataclass(frozen=True, slots=True)
class Trigger:
    id: str
    kind: TriggerKind
    target: str  # event name or step id; empty for WHEN
    condition: Expression | None  # for WHEN
    once: bool
    steps: tuple[Step, ...]
    span: Span
    max_firings: int = DEFAULT_MAX_FIRINGS  # with `once`, later firings are ignored instead


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
    description: str = ""
    output_schema: dict[str, Any] | None = None  # JSON schema the outputs (an object) are checked against
    parent_state: tuple[str, ...] = ()  # the caller's state keys this child reads and updates

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
class ClientCredentials:
    """`auth: {client_credentials: …}`: the MCP OAuth client-credentials flow (values still hold ${VAR})."""

    client_id: str
    client_secret: str
    scope: str | None = None
    issuer: str | None = None
    auth_method: str = "client_secret_basic"


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
    optional: bool = False  # cannot start: agents run without its tools (a warning), tool steps still fail
    bearer: str | None = None  # `auth: {bearer: …}`, still holding ${VAR}
    client_credentials: ClientCredentials | None = None
    http_timeout: float | None = None  # connect/write timeout of an HTTP server (mcp-agent's http_timeout_seconds)
    stream_timeout: float | None = None  # how long an HTTP/SSE stream may stay silent
    terminate_on_close: bool = True  # streamable HTTP: DELETE the session when the pool closes
    # what the server may ask of flowctl (docs/agents.md, "MCP features")
    roots: tuple[tuple[str, str | None], ...] = ()  # (file:// URI, name) offered on roots/list
    sampling_model: str | None = None  # a key of `models`; None: the calling agent's model
    sampling_max_concurrency: int = 4  # sampling requests answered at once for this server
    elicitation_mode: str = "ask"  # ask (a person: the terminal or a signal) | auto (accept defaults) | decline
    log_level: str | None = None  # logging/setLevel sent at start; notifications below it are dropped
    include_instructions: bool = False  # the server's `instructions` join the system message of its agents
    concurrency: int | None = None  # tool calls to this server at once (as ModelDef.concurrency)


@dataclass(frozen=True, slots=True)
class ServerPrompt:
    """A server's prompt (`prompts/get`) with its arguments (templates rendered in the step's context)."""

    server: str
    name: str
    arguments: CompiledValue
    span: Span


@dataclass(frozen=True, slots=True)
class ServerResource:
    """A server's resource (`resources/read`); `uri` may be a URI template whose `{name}`s `arguments` fill."""

    server: str
    uri: str
    arguments: CompiledValue
    span: Span


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
    params: tuple[str, ...] = ()  # a parameterised agent's parameters (its instruction, `title` and servers read them)
    title: TextTemplate | None = None  # `name:`: the name it is reported under, rendered from its parameters
    servers_from: CompiledValue | None = None  # `servers: "{{ services }}"`: its servers, rendered per use
    instruction_prompt: ServerPrompt | None = None  # the instruction comes from a server's prompt
    resources: tuple[ServerResource, ...] = ()  # read at step start, given to the model before the prompt


@dataclass(frozen=True, slots=True)
class ServeHints:
    """`serve:`: how `flowctl serve` presents the file's pipeline as an MCP tool. None: not declared."""

    title: str | None = None
    read_only: bool | None = None
    destructive: bool | None = None
    idempotent: bool | None = None
    open_world: bool | None = None


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
    sources: tuple[tuple[str, str], ...] = ()  # every file read at load time, with its sha256 (dsl/source_digest.py)
    source_digest: str = ""  # what each run records of `sources` (dsl/source_digest.py: recorded_form)
    uses_now: bool = True  # a template of the file may call `now()` (the engine then tracks whose call it is)
    serve: ServeHints = ServeHints()  # `serve:` (only `flowctl serve` reads it)
