"""Stage 4, compile: a checked document → the typed, immutable execution graph (flowctl.dsl.ir).

Runs only on documents without errors, so it may assume the shape the schema guarantees. Every template and
expression is compiled here; no raw YAML or unparsed text survives into the graph.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from flowctl.dsl import ir
from flowctl.dsl.diagnostics import Span
from flowctl.dsl.index import servers_path
from flowctl.dsl.kinds import KINDS, step_kind
from flowctl.dsl.loader import JsonPath, LoadedDocument
from flowctl.dsl.source_digest import Sources, recorded_form, text_digest
from flowctl.dsl.templates import (
    CompiledValue,
    ListValue,
    Literal,
    MapValue,
    compile_expression,
    compile_string_value,
    compile_text,
)

_DURATION = re.compile(r"^(?P<n>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float | None:
    """`500ms`, `30s`, `5m`, `1h`, or a number of seconds."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r}")
    return float(match.group("n")) * _UNIT_SECONDS[match.group("unit")]


DURATION_HINT = "use 500ms, 30s, 5m, 1h or a number of seconds"


def checked_duration(value: Any) -> float | None:
    """`parse_duration` for a value a user wrote in a side file (a fixture, a test file), where the schema has not
    checked it: raises ValueError with the problem (a bool or a negative number is no duration either)."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    seconds = parse_duration(value)
    if seconds is not None and seconds < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    return seconds


class _Compiler:
    def __init__(self, doc: LoadedDocument, resolve_child_path: Any) -> None:
        self.doc = doc
        self.data: dict[str, Any] = doc.data
        self.resolve_child_path = resolve_child_path  # (ref) -> resolved key used in Graph.children
        defaults = self.data.get("defaults") or {}
        self.defaults_retry = "retry" in defaults
        self.default_policy = self.policy(defaults, ("defaults",), inherit=False)

    def span(self, path: JsonPath) -> Span:
        return self.doc.source_map.value(path)

    # values -----------------------------------------------------------------------------------------------------

    def value(self, raw: Any, path: JsonPath) -> CompiledValue:
        if isinstance(raw, str):
            return compile_string_value(raw, self.span(path))
        if isinstance(raw, dict):
            items = tuple((k, self.value(v, (*path, k))) for k, v in raw.items())
            return Literal(raw) if all(isinstance(v, Literal) for _, v in items) else MapValue(items)
        if isinstance(raw, list):
            elements = tuple(self.value(v, (*path, i)) for i, v in enumerate(raw))
            return Literal(raw) if all(isinstance(v, Literal) for v in elements) else ListValue(elements)
        return Literal(raw)

    def expr(self, raw: Any, path: JsonPath) -> ir.Expression | None:
        """A condition; the schema also admits `true`/`false`, which are the expressions of those names (`when:
        false` skips the step, it is not "no condition")."""
        if isinstance(raw, bool):
            raw = "true" if raw else "false"
        return compile_expression(raw, self.span(path)) if isinstance(raw, str) else None

    def condition(self, raw: Any, path: JsonPath) -> ir.Expression:
        expression = self.expr(raw, path)
        assert expression is not None, "the schema admits only text or true/false here"
        return expression

    # policies ---------------------------------------------------------------------------------------------------

    def policy(
        self, raw: dict[str, Any], path: JsonPath, *, inherit: bool = True, calls_out: bool = False
    ) -> ir.Policy:
        base = self.default_policy if inherit else ir.Policy()
        retry = base.retry
        if calls_out and "retry" not in raw and not self.defaults_retry:
            retry = ir.TRANSIENT_RETRY  # model and tool calls retry transient faults unless told otherwise
        if isinstance(raw.get("retry"), dict):
            r = raw["retry"]
            retry = ir.RetryPolicy(
                max_attempts=int(r.get("max_attempts", 3)),
                backoff=str(r.get("backoff", "exponential")),
                initial_delay=parse_duration(r.get("initial_delay", 1.0)) or 0.0,
                max_delay=parse_duration(r.get("max_delay", 30.0)) or 0.0,
                jitter=bool(r.get("jitter", True)),
            )
        fallback = None
        if isinstance(raw.get("fallback"), dict):
            f = raw["fallback"]
            fallback = ir.Fallback(
                agent=f.get("agent"),
                model=f.get("model"),
                steps=self.steps(f.get("steps") or [], (*path, "fallback", "steps"), concurrent=False),
                value=self.value(f["value"], (*path, "fallback", "value")) if "value" in f else None,
            )
        return ir.Policy(
            retry=retry,
            timeout=parse_duration(raw["timeout"]) if "timeout" in raw else base.timeout,
            deadline=parse_duration(raw["deadline"]) if "deadline" in raw else base.deadline,
            fallback=fallback,
            on_error=ir.OnError(raw.get("on_error", base.on_error.value)),
            default=self.value(raw["default"], (*path, "default")) if "default" in raw else None,
        )

    @staticmethod
    def join(raw: Any) -> ir.Join:
        if isinstance(raw, dict):
            return ir.Join(ir.JoinKind.AT_LEAST, int(raw["at_least"]))
        return ir.Join(ir.JoinKind(raw or "all"))

    # steps ------------------------------------------------------------------------------------------------------

    def steps(self, raws: list[dict[str, Any]], path: JsonPath, *, concurrent: bool) -> tuple[ir.Step, ...]:
        result: list[ir.Step] = []
        previous: str | None = None
        for i, raw in enumerate(raws):
            needs = raw.get("needs")
            if needs is not None:
                deps = (needs,) if isinstance(needs, str) else tuple(needs)
            else:
                deps = (previous,) if previous is not None and not concurrent else ()
            result.append(self.step(raw, (*path, i), deps))
            previous = raw["id"]
        return tuple(result)

    def step(self, raw: dict[str, Any], path: JsonPath, deps: tuple[str, ...]) -> ir.Step:
        kind = step_kind(raw)
        assert kind is not None, f"compile on an unchecked step at {path}"
        spec = KINDS[kind]
        emit = raw.get("emit") if kind != "emit" else None
        fan_out = None
        if "for_each" in raw:
            fan_out = ir.FanOut(
                items=self.value(raw["for_each"], (*path, "for_each")),
                var=raw.get("as", "item"),
                max_concurrency=raw.get("max_concurrency"),
                join=self.join(raw.get("join")),
                item_id=self.value(raw["item_id"], (*path, "item_id")) if "item_id" in raw else None,
            )
        return ir.Step(
            id=raw["id"],
            kind=spec.node_kind,
            body=spec.compile(self, raw, path),
            span=self.span(path),
            needs=deps,
            when=self.expr(raw.get("when"), (*path, "when")),
            updates=tuple((k, self.value(v, (*path, "set", k))) for k, v in (raw.get("set") or {}).items()),
            emit=self.emit(emit, (*path, "emit")) if isinstance(emit, dict) else None,
            policy=self.policy(raw, path, calls_out=spec.calls_out(raw)),
            fan_out=fan_out,
        )

    def emit(self, raw: dict[str, Any], path: JsonPath) -> ir.EmitSpec:
        data = self.value(raw["data"], (*path, "data")) if "data" in raw else None
        return ir.EmitSpec(raw["event"], data, self.span(path))

    def duration(self, raw: Any) -> float | None:
        return parse_duration(raw)

    def pipeline_names(self) -> list[str]:
        return list(self.data.get("pipelines") or {})

    def child_key(self, ref: str) -> str:
        """The key of a child file in Graph.children."""
        key: str = self.resolve_child_path(ref)
        return key

    # pipelines and resources ------------------------------------------------------------------------------------

    def pipeline(self, name: str, raw: dict[str, Any], path: JsonPath) -> ir.PipelineDef:
        inputs = {
            key: ir.InputSpec(
                key, dict(spec), "default" not in spec, spec.get("default"), self.span((*path, "inputs", key))
            )
            for key, spec in (raw.get("inputs") or {}).items()
        }
        state = {}
        for key, spec in (raw.get("state") or {}).items():
            reducer = ir.Reducer(spec.get("reducer", "replace"))
            empty: Any = [] if reducer is ir.Reducer.APPEND else {} if reducer is ir.Reducer.MERGE else None
            state[key] = ir.StateKey(key, reducer, spec.get("default", empty), self.span((*path, "state", key)))
        return ir.PipelineDef(
            name=name,
            span=self.span(path),
            inputs=inputs,
            outputs=tuple((k, self.value(v, (*path, "outputs", k))) for k, v in (raw.get("outputs") or {}).items()),
            state=state,
            steps=self.steps(raw["steps"], (*path, "steps"), concurrent=False),
            finally_steps=self.steps(raw.get("finally") or [], (*path, "finally"), concurrent=False),
            triggers=tuple(self.trigger(t, (*path, "triggers", i)) for i, t in enumerate(raw.get("triggers") or [])),
            description=str(raw.get("description") or ""),
            output_schema=raw.get("output_schema"),
            parent_state=tuple(raw.get("parent_state") or ()),
        )

    def trigger(self, raw: dict[str, Any], path: JsonPath) -> ir.Trigger:
        kind = next(k for k in ir.TriggerKind if k.value in raw)
        condition = self.expr(raw["when"], (*path, "when")) if kind is ir.TriggerKind.WHEN else None
        return ir.Trigger(
            id=raw["id"],
            kind=kind,
            target="" if kind is ir.TriggerKind.WHEN else raw[kind.value],
            condition=condition,
            once=bool(raw.get("once", "max_firings" not in raw)),
            steps=self.steps(raw["steps"], (*path, "steps"), concurrent=False),
            span=self.span(path),
            max_firings=int(raw.get("max_firings", ir.DEFAULT_MAX_FIRINGS)),
        )

    def models(self) -> dict[str, ir.ModelDef]:
        models = {}
        for name, raw in (self.data.get("models") or {}).items():
            breaker = raw.get("circuit_breaker")
            price = raw.get("price") or {}
            models[name] = ir.ModelDef(
                name=name,
                provider=raw.get("provider", "openai"),
                model=raw.get("model", name),
                span=self.span(("models", name)),
                base_url=raw.get("base_url"),
                api_key_env=raw.get("api_key_env", "OPENAI_API_KEY"),
                params={k: raw[k] for k in ("temperature", "max_tokens", "top_p", "seed") if k in raw},
                timeout=_seconds(raw.get("timeout"), 60.0),
                circuit_breaker=_breaker(breaker),
                price_in_per_mtok=price.get("input_per_mtok"),
                price_out_per_mtok=price.get("output_per_mtok"),
                fixture=raw.get("fixture"),
                concurrency=raw.get("concurrency"),
            )
        if "default" not in models and not models:
            models["default"] = ir.DEFAULT_MODEL
        return models

    def servers(self) -> dict[str, ir.ServerDef]:
        base = servers_path(self.data)
        raw_servers = self.data.get(str(base[0])) or {}
        raw_servers = (raw_servers.get("servers") or {}) if len(base) == 2 else raw_servers
        servers = {}
        for name, raw in raw_servers.items():
            transport = raw.get("transport") or raw.get("type") or ("stdio" if "command" in raw else "streamable_http")
            transport = "streamable_http" if transport in ("http", "streamable-http") else transport
            auth = raw.get("auth") or {}
            stream_timeout = raw.get("http_read_timeout_seconds", raw.get("read_transport_sse_timeout_seconds"))
            servers[name] = ir.ServerDef(
                name=name,
                transport=ir.Transport(transport),
                span=self.span((*base, name)),
                command=raw.get("command"),
                args=tuple(str(a) for a in raw.get("args") or ()),
                env={k: str(v) for k, v in (raw.get("env") or {}).items()},
                cwd=raw.get("cwd"),
                url=raw.get("url"),
                headers={k: str(v) for k, v in (raw.get("headers") or {}).items()},
                read_timeout=float(raw.get("read_timeout_seconds", 60)),
                startup_timeout=float(raw.get("startup_timeout_seconds", 30)),
                allowed_tools=tuple(raw["allowed_tools"]) if "allowed_tools" in raw else None,
                idempotent_tools=tuple(raw.get("idempotent_tools") or ()),
                circuit_breaker=_breaker(raw.get("circuit_breaker")),
                optional=bool(raw.get("optional", False)),
                bearer=auth.get("bearer"),
                client_credentials=_client_credentials(auth.get("client_credentials")),
                http_timeout=_optional_float(raw.get("http_timeout_seconds")),
                stream_timeout=_optional_float(stream_timeout),
                terminate_on_close=bool(raw.get("terminate_on_close", True)),
                roots=tuple(_root(r, self.doc.file) for r in raw.get("roots") or () if isinstance(r, dict)),
                sampling_model=(raw.get("sampling") or {}).get("model"),
                sampling_max_concurrency=int((raw.get("sampling") or {}).get("max_concurrency", 4)),
                elicitation_mode=_ELICITATION_MODES[(raw.get("elicitation") or {}).get("mode", "ask")],
                log_level=raw.get("log_level"),
                include_instructions=bool(raw.get("include_instructions", False)),
                concurrency=raw.get("concurrency"),
            )
        return servers

    def _server_prompt(self, raw: dict[str, Any], path: JsonPath) -> ir.ServerPrompt:
        arguments = self.value(raw.get("arguments") or {}, (*path, "arguments"))
        return ir.ServerPrompt(raw["server"], raw["prompt"], arguments, self.span(path))

    def _server_resource(self, raw: dict[str, Any], path: JsonPath) -> ir.ServerResource:
        arguments = self.value(raw.get("arguments") or {}, (*path, "arguments"))
        return ir.ServerResource(raw["server"], raw["uri"], arguments, self.span(path))

    def agents(self, models: dict[str, ir.ModelDef]) -> dict[str, ir.AgentDef]:
        agents = {}
        for name, raw in (self.data.get("agents") or {}).items():
            servers = raw.get("servers") or ()
            title = raw.get("name")
            path: JsonPath = ("agents", name)
            instruction = raw.get("instruction", "")
            from_server = isinstance(instruction, dict)
            agents[name] = ir.AgentDef(
                name=name,
                instruction=compile_text("" if from_server else instruction, self.span((*path, "instruction"))),
                instruction_prompt=self._server_prompt(instruction, (*path, "instruction")) if from_server else None,
                resources=tuple(
                    self._server_resource(item, (*path, "resources", i))
                    for i, item in enumerate(raw.get("resources") or ())
                ),
                model=raw.get("model") or "default",
                span=self.span(("agents", name)),
                servers=() if isinstance(servers, str) else tuple(servers),
                tools=tuple(raw["tools"]) if "tools" in raw else None,
                max_iterations=int(raw.get("max_iterations", 10)),
                output_schema=raw.get("output_schema"),
                params=tuple(raw.get("params") or ()),
                title=compile_text(title, self.span(("agents", name, "name"))) if isinstance(title, str) else None,
                servers_from=self.value(servers, ("agents", name, "servers")) if isinstance(servers, str) else None,
            )
        return agents


def _mentions(value: Any, word: str) -> bool:
    """Whether any string in the document (prompt files' texts included) holds `word`: a file whose templates never
    call `now()` spares every step the bookkeeping of whose call it is."""
    if isinstance(value, str):
        return word in value
    if isinstance(value, dict):
        return any(_mentions(v, word) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, word) for v in value)
    return False


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _client_credentials(raw: Any) -> ir.ClientCredentials | None:
    if not isinstance(raw, dict):
        return None
    return ir.ClientCredentials(
        client_id=raw["client_id"],
        client_secret=raw["client_secret"],
        scope=raw.get("scope"),
        issuer=raw.get("issuer"),
        auth_method=raw.get("token_endpoint_auth_method", "client_secret_basic"),
    )


# fast-agent's spellings beside ours: `forms` asks a person, `auto-cancel` and `none` never do
_ELICITATION_MODES = {"ask": "ask", "auto": "auto", "decline": "decline", "forms": "ask", "auto-cancel": "decline"}
_ELICITATION_MODES["none"] = "decline"


def _root(raw: dict[str, Any], file: str) -> tuple[str, str | None]:
    """A root as the server sees it: `server_uri_alias` when given, else `uri`; a plain path becomes a file:// URI
    (relative to the pipeline file's folder)."""
    uri = str(raw.get("server_uri_alias") or raw.get("uri") or "")
    if "://" not in uri:
        base = Path(file).resolve().parent if file and not file.startswith("<") else Path.cwd()
        uri = (base / uri).resolve().as_uri()
    name = raw.get("name")
    return uri, str(name) if name is not None else None


def _seconds(value: Any, default: float) -> float:
    """A duration in seconds, or `default` when absent (an explicit 0 stays 0)."""
    seconds = parse_duration(value)
    return default if seconds is None else seconds


def _breaker(raw: Any) -> ir.CircuitBreakerSpec | None:
    if not isinstance(raw, dict):
        return None
    return ir.CircuitBreakerSpec(
        failure_threshold=int(raw.get("failure_threshold", 5)),
        reset_after=_seconds(raw.get("reset_after"), 30.0),
    )


def compile_graph(
    doc: LoadedDocument, children: dict[str, ir.Graph], resolve_child_path: Any, sources: Sources = ()
) -> ir.Graph:
    """Compile a document that passed schema and checks. `children` maps resolved child paths to their graphs;
    `sources` names every file the pipeline read (default: its own file alone)."""
    sources = sources or ((doc.file, text_digest(doc.source)),)
    compiler = _Compiler(doc, resolve_child_path)
    data = doc.data
    models = compiler.models()
    return ir.Graph(
        file=doc.file,
        root=compiler.pipeline(data["name"], data, ()),
        pipelines={
            name: compiler.pipeline(name, raw, ("pipelines", name))
            for name, raw in (data.get("pipelines") or {}).items()
        },
        children=children,
        agents=compiler.agents(models),
        models=models,
        servers=compiler.servers(),
        concurrency=int(data.get("concurrency", 16)),
        sources=sources,
        source_digest=recorded_form(sources),
        uses_now=_mentions(data, "now"),
        serve=ir.ServeHints(**(data.get("serve") or {})),
    )
