"""Stage 4, compile: the shape of the IR a checked document becomes."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from flowctl.dsl import ir
from flowctl.dsl.compile import parse_duration
from flowctl.dsl.frontend import FrontEnd
from flowctl.dsl.templates import ExprValue, Literal, MapValue, TextTemplate, TextValue

VALID = Path(__file__).parent / "golden" / "valid"
CompileYaml = Callable[[str], ir.Graph]


@pytest.fixture
def compile_yaml(tmp_path: Path) -> CompileYaml:
    def compile_(text: str) -> ir.Graph:
        path = tmp_path / "p.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        result = FrontEnd().process(path)
        assert [str(d) for d in result.diagnostics] == []
        assert result.graph is not None
        return result.graph

    return compile_


def golden(name: str) -> ir.Graph:
    graph = FrontEnd().process(VALID / name).graph
    assert graph is not None
    return graph


def steps_by_id(pipeline: ir.PipelineDef) -> dict[str, ir.Step]:
    return {step.id: step for step in pipeline.all_steps()}


# --- dependencies -----------------------------------------------------------------------------------------------


def test_needs_are_implicit_in_lists_and_explicit_when_given() -> None:
    steps = steps_by_id(golden("sequential.yaml").root)
    assert steps["summarise"].needs == ()
    assert steps["headline"].needs == ("summarise",)
    assert steps["review"].needs == ("summarise",)
    assert steps["publish"].needs == ("headline", "review")


def test_parallel_branches_have_no_implicit_needs() -> None:
    steps = steps_by_id(golden("parallel.yaml").root)
    assert [steps[b].needs for b in ("mood", "names", "short")] == [(), (), ()]
    assert steps["after_short"].needs == ("short",)
    assert steps["best_effort"].needs == ("analyses",)


def test_loop_and_route_bodies_are_sequential_lists() -> None:
    steps = steps_by_id(golden("route.yaml").root)
    assert steps["deeper"].needs == ("deep",)
    assert steps["quick"].needs == ()
    assert steps_by_id(golden("loop.yaml").root)["judge"].needs == ("draft",)


# --- durations and policies -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1.5s", 1.5), (2, 2.0), (0.25, 0.25), (None, None)],
)
def test_durations(value: object, seconds: float | None) -> None:
    assert parse_duration(value) == seconds


def test_a_bad_duration_raises() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("5 minutes")


def test_step_policies_and_inherited_defaults() -> None:
    steps = steps_by_id(golden("failure.yaml").root)
    answer = steps["answer"].policy
    assert answer.retry == ir.RetryPolicy(5, "exponential", 1.0, 30.0, True)
    assert (answer.timeout, answer.deadline) == (45.0, 300.0)
    assert answer.fallback == ir.Fallback(agent="careful")
    inherited = steps["on_model"].policy
    assert inherited.retry == ir.RetryPolicy(2, "fixed", 0.5, 30.0, True)
    assert inherited.timeout == 120.0
    assert inherited.deadline is None
    assert inherited.on_error is ir.OnError.FAIL
    assert inherited.fallback == ir.Fallback(model="backup")


def test_fallback_steps_and_value() -> None:
    steps = steps_by_id(golden("failure.yaml").root)
    fallback = steps["with_steps"].policy.fallback
    assert fallback is not None and [s.id for s in fallback.steps] == ["apologise"]
    value = steps["with_value"].policy.fallback
    assert value is not None and value.value == Literal({"datetime": "unknown"})


def test_on_error_continue_with_default() -> None:
    policy = steps_by_id(golden("failure.yaml").root)["optional"].policy
    assert policy.on_error is ir.OnError.CONTINUE
    assert policy.default == Literal("no extra")
    assert policy.timeout == 1.5


def test_finally_steps_are_kept_apart() -> None:
    root = golden("failure.yaml").root
    assert [s.id for s in root.finally_steps] == ["report"]
    assert "report" not in [s.id for s in root.steps]


def test_circuit_breakers_on_models_and_servers() -> None:
    graph = golden("failure.yaml")
    assert graph.models["default"].circuit_breaker == ir.CircuitBreakerSpec(3, 60.0)
    assert graph.models["default"].timeout == 30.0
    assert graph.models["backup"].circuit_breaker is None
    assert graph.servers["time"].circuit_breaker == ir.CircuitBreakerSpec(2, 10.0)
    assert graph.servers["time"].idempotent_tools == ("get_current_time",)


def test_zero_durations_stay_zero(compile_yaml: CompileYaml) -> None:
    graph = compile_yaml(
        """\
        flowctl: 1
        name: zero
        models:
          default: {provider: openai, model: m, timeout: 0, circuit_breaker: {reset_after: 0s}}
        steps:
          - {id: a, set: {}, timeout: 0}
        """
    )
    assert graph.models["default"].timeout == 0.0
    assert graph.models["default"].circuit_breaker == ir.CircuitBreakerSpec(5, 0.0)
    assert graph.root.steps[0].policy.timeout == 0.0


# --- fan-out, parallel, route, loop, wait, emit, set ------------------------------------------------------------


def test_fan_out() -> None:
    steps = steps_by_id(golden("nested.yaml").root)
    fan = steps["per_task"].fan_out
    assert fan is not None
    assert (fan.var, fan.max_concurrency, fan.join) == ("task", 5, ir.Join(ir.JoinKind.COLLECT))
    assert isinstance(fan.items, ExprValue)
    default = steps["per_task_summary"].fan_out
    assert default is not None and (default.var, default.join) == ("item", ir.Join())
    assert steps["plan"].fan_out is None


def test_parallel_joins_and_cap() -> None:
    steps = steps_by_id(golden("parallel.yaml").root)
    analyses = steps["analyses"].body
    assert isinstance(analyses, ir.ParallelGroup)
    assert (analyses.join, analyses.max_concurrency) == (ir.Join(ir.JoinKind.ALL), 2)
    assert [b.id for b in analyses.branches] == ["mood", "names", "short", "after_short"]
    joins = [steps[s].body.join for s in ("best_effort", "fastest", "quorum")]  # type: ignore[union-attr]
    assert joins == [ir.Join(ir.JoinKind.COLLECT), ir.Join(ir.JoinKind.FIRST), ir.Join(ir.JoinKind.AT_LEAST, 2)]


def test_route() -> None:
    route = steps_by_id(golden("route.yaml").root)["analyse"].body
    assert isinstance(route, ir.Route)
    assert [rule.choose for rule in route.rules] == [("rapid",), ("detailed", "compliance")]
    assert route.rules[0].when.source == "inputs.text | length < 200"
    assert (route.agent, route.multiple, route.default) == ("router", True, ("detailed",))
    assert route.on_unknown is ir.OnUnknown.DEFAULT
    assert isinstance(route.prompt, TextTemplate)
    assert {name: [s.id for s in steps] for name, steps in route.branches.items()} == {
        "rapid": ["quick"],
        "detailed": ["deep", "deeper"],
        "compliance": ["legal"],
    }
    rules_only = steps_by_id(golden("route.yaml").root)["only_rules"].body
    assert isinstance(rules_only, ir.Route)
    assert (rules_only.agent, rules_only.prompt, rules_only.multiple) == (None, None, False)
    assert (rules_only.default, rules_only.on_unknown) == (("one",), ir.OnUnknown.FAIL)


def test_loop() -> None:
    loop = steps_by_id(golden("loop.yaml").root)["refine"].body
    assert isinstance(loop, ir.Loop)
    assert loop.max_iterations == 4
    assert loop.until is not None and loop.until.source == "steps.judge.output.score >= 8"
    assert [s.id for s in loop.steps] == ["draft", "judge"]


def test_wait_emit_and_set() -> None:
    steps = steps_by_id(golden("events.yaml").root)
    wait = steps["approval"].body
    assert isinstance(wait, ir.Wait)
    assert (wait.event, wait.timeout) == ("approved", 3600.0)
    assert wait.match is not None and wait.match.source == "event.data.request_id == run.id"
    emit = steps["ask"].body
    assert isinstance(emit, ir.EmitSpec) and emit.event == "approval_requested"
    ingest = steps["ingest"]
    assert ingest.emit is not None and ingest.emit.event == "ingested"
    assert [key for key, _ in ingest.updates] == ["items"]
    assert isinstance(steps_by_id(golden("state.yaml").root)["start"].body, ir.SetState)


def test_triggers_of_all_four_kinds() -> None:
    triggers = {t.id: t for t in golden("events.yaml").root.triggers}
    assert {t.id: (t.kind, t.target, t.once) for t in triggers.values()} == {
        "on_ingested": (ir.TriggerKind.EVENT, "ingested", True),
        "recover_ingest": (ir.TriggerKind.FAILED, "ingest", True),
        "after_publish": (ir.TriggerKind.COMPLETED, "publish", True),
        "big_batch": (ir.TriggerKind.WHEN, "", False),
    }
    condition = triggers["big_batch"].condition
    assert condition is not None and condition.source == "state.items | length > 1000"
    assert triggers["on_ingested"].condition is None
    assert [s.id for s in triggers["on_ingested"].steps] == ["announce", "approve"]


# --- values and templates ---------------------------------------------------------------------------------------


def test_values_are_compiled_never_raw_text() -> None:
    graph = golden("sequential.yaml")
    outputs = dict(graph.root.outputs)
    assert isinstance(outputs["summary"], ExprValue)
    steps = steps_by_id(graph.root)
    body = steps["summarise"].body
    assert isinstance(body, ir.AgentCall) and isinstance(body.prompt, TextTemplate)
    assert body.prompt.references == (("inputs", "document"),)
    assert steps["publish"].when is not None


def test_tool_args_mix_literals_and_templates() -> None:
    steps = steps_by_id(golden("tools.yaml").root)
    now = steps["now"].body
    assert isinstance(now, ir.ToolCall) and (now.server, now.tool) == ("time", "get_current_time")
    assert isinstance(now.args, MapValue)
    search = steps["search"].body
    assert isinstance(search, ir.ToolCall)
    args = dict(search.args.items)  # type: ignore[attr-defined]
    assert isinstance(args["query"], TextValue)
    assert args["limit"] == Literal(5)


def test_state_keys_and_reducers() -> None:
    state = golden("state.yaml").root.state
    assert {k: (v.reducer, v.default) for k, v in state.items()} == {
        "latest": (ir.Reducer.REPLACE, None),
        "log": (ir.Reducer.APPEND, []),
        "findings": (ir.Reducer.MERGE, {}),
        "counter": (ir.Reducer.REPLACE, 0),
    }


def test_inputs_are_required_unless_they_have_a_default() -> None:
    inputs = golden("sequential.yaml").root.inputs
    assert {k: (v.required, v.default) for k, v in inputs.items()} == {
        "document": (True, None),
        "audience": (False, "engineers"),
    }


def test_yaml_1_1_words_compile_as_strings() -> None:
    graph = golden("yaml_edge_cases.yaml")
    inputs = graph.root.inputs
    assert list(inputs) == ["on", "yes", "no", "mode", "day", "version"]
    assert inputs["mode"].default == 755
    assert inputs["day"].default == "2024-01-31"
    assert inputs["yes"].schema["enum"] == ["yes", "no", "y", "n", "on", "off"]
    assert list(graph.agents) == ["on"]
    assert [s.id for s in graph.root.steps] == ["on", "yes"]


# --- pipelines ----------------------------------------------------------------------------------------------------


def test_named_and_file_children() -> None:
    graph = golden("nested.yaml")
    assert list(graph.pipelines) == ["execute_task"]
    assert set(graph.pipelines["execute_task"].inputs) == {"task", "attempt"}
    steps = steps_by_id(graph.root)
    named = steps["first_task"].body
    assert isinstance(named, ir.ChildPipeline) and (named.ref, named.is_file) == ("execute_task", False)
    by_file = steps["summary"].body
    assert isinstance(by_file, ir.ChildPipeline) and by_file.is_file
    assert by_file.ref in graph.children
    assert graph.children[by_file.ref].root.name == "summarise"
    same_file = steps["per_task_summary"].body
    assert isinstance(same_file, ir.ChildPipeline) and same_file.ref == by_file.ref


# --- resources ----------------------------------------------------------------------------------------------------


def test_server_transports_are_inferred() -> None:
    servers = golden("tools.yaml").servers
    assert servers["time"].transport is ir.Transport.STDIO
    assert servers["time"].command == "uvx"
    assert servers["time"].args == ("mcp-server-time", "--local-timezone=UTC")
    assert servers["time"].env == {"TZ": "${TZ:-UTC}"}
    assert servers["time"].allowed_tools == ("get_current_time", "convert_time")
    assert (servers["time"].read_timeout, servers["time"].startup_timeout) == (20.0, 10.0)
    assert servers["docs"].transport is ir.Transport.STREAMABLE_HTTP  # `http` is an alias
    assert servers["docs"].headers == {"Authorization": "Bearer ${DOCS_TOKEN}"}
    assert servers["events"].transport is ir.Transport.SSE


def test_a_url_without_transport_is_streamable_http(compile_yaml: CompileYaml) -> None:
    graph = compile_yaml(
        """\
        flowctl: 1
        name: remote
        servers:
          docs: {url: "https://example.com/mcp"}
        steps:
          - {id: a, tool: docs.search}
        """
    )
    server = graph.servers["docs"]
    assert (server.transport, server.allowed_tools, server.read_timeout) == (ir.Transport.STREAMABLE_HTTP, None, 60.0)


def test_an_mcp_block_compiles_like_servers() -> None:
    servers = golden("mcp_block.yaml").servers
    assert list(servers) == ["fetch", "filesystem", "remote"]
    assert servers["fetch"].transport is ir.Transport.STDIO
    assert servers["fetch"].read_timeout == 120.0
    assert servers["fetch"].env == {"DEBUG": "1"}
    assert servers["filesystem"].transport is ir.Transport.STDIO
    assert (servers["fetch"].http_timeout, servers["fetch"].stream_timeout) == (30.0, 300.0)
    assert servers["fetch"].terminate_on_close is True
    assert servers["remote"].transport is ir.Transport.STREAMABLE_HTTP
    assert servers["remote"].bearer == "${TOKEN}"  # expanded when the server is started
    assert servers["remote"].span.line == 22


def test_pasted_server_blocks_compile_with_their_settings() -> None:
    graph = golden("brought_configs.yaml")
    time, docs, search = (graph.servers[name] for name in ("time", "docs", "search"))
    assert (time.transport, time.command, time.args[1]) == (
        ir.Transport.STDIO,
        "${UVX:-uvx}",
        "--local-timezone=${TZ:UTC}",
    )
    assert (docs.transport, docs.optional, docs.stream_timeout) == (ir.Transport.STREAMABLE_HTTP, True, 600.0)
    assert search.transport is ir.Transport.SSE
    assert search.client_credentials == ir.ClientCredentials(
        "${SEARCH_CLIENT_ID}", "${SEARCH_CLIENT_SECRET}", scope="search.read", issuer="https://auth.example.com"
    )
    assert graph.models["default"].model == "${MODEL:gpt-4o-mini}"


def test_agents_use_the_default_model_and_no_models_means_the_builtin(compile_yaml: CompileYaml) -> None:
    graph = compile_yaml(
        """\
        flowctl: 1
        name: builtin
        agents:
          writer: {instruction: "You write for {{ inputs.who }}.", model: default}
          plain: {instruction: Plain.}
        inputs:
          who: {type: string}
        steps:
          - {id: a, agent: writer, prompt: hi}
          - {id: b, agent: plain, prompt: hi}
        """
    )
    assert graph.models == {"default": ir.DEFAULT_MODEL}
    assert graph.agents["writer"].model == "default"
    assert graph.agents["plain"].model == "default"
    assert graph.agents["plain"].max_iterations == 10
    assert graph.agents["writer"].instruction.references == (("inputs", "who"),)


def test_agents_with_models() -> None:
    graph = golden("route.yaml")
    assert graph.agents["router"].model == "small"
    assert graph.agents["analyst"].model == "default"
    assert graph.models["small"].params == {"max_tokens": 50}
    assert graph.models["default"].provider == "openai"


def test_agent_tools_servers_and_output_schema() -> None:
    agents = golden("failure.yaml").agents
    assert agents["main"].servers == ("time",)
    assert agents["main"].tools == ("time.get_current_time",)
    assert agents["careful"].tools is None
    planner = golden("nested.yaml").agents["planner"]
    assert planner.output_schema is not None and planner.output_schema["required"] == ["tasks"]


def test_graph_metadata() -> None:
    graph = golden("parallel.yaml")
    assert graph.concurrency == 4
    assert graph.root.name == "parallel"
    assert len(graph.source_digest) == 64
    assert graph.root.steps[0].span.line == 12


def test_true_and_false_conditions_are_those_expressions(compile_yaml: CompileYaml) -> None:
    """The schema admits `when: false`: it skips the step (it is not "no condition"), and a route rule's boolean
    `when` compiles (it crashed the compiler)."""
    graph = compile_yaml(
        """
        flowctl: 1
        name: p
        steps:
          - {id: never, set: {}, when: false}
          - id: pick
            route: {rules: [{when: false, choose: a}, {when: true, choose: a}], default: a}
            branches: {a: [{id: done, set: {}}]}
        """
    )
    steps = steps_by_id(graph.root)
    never, pick = steps["never"], steps["pick"]
    assert never.when is not None and never.when.evaluate({}) is False
    assert isinstance(pick.body, ir.Route)
    assert [rule.when.evaluate({}) for rule in pick.body.rules] == [False, True]


def test_what_a_server_may_ask_compiles_from_its_block(compile_yaml: CompileYaml, tmp_path: Path) -> None:
    graph = compile_yaml(
        """\
        flowctl: 1
        name: asking
        models:
          default: {model: gpt-4o-mini}
          cheap: {model: gpt-4.1-nano}
        servers:
          research:
            command: srv
            roots: [{uri: ./data, name: data}, {uri: "file:///srv/x"}, {uri: ./y, server_uri_alias: "file:///z"}]
            sampling: {model: cheap, max_concurrency: 2}
            elicitation: {mode: auto-cancel}
            log_level: info
            include_instructions: true
          plain: {command: srv}
        steps:
          - {id: a, tool: research.find}
        """
    )
    research, plain = graph.servers["research"], graph.servers["plain"]
    assert research.roots == (
        ((tmp_path / "data").resolve().as_uri(), "data"),
        ("file:///srv/x", None),
        ("file:///z", None),
    )
    assert (research.sampling_model, research.sampling_max_concurrency) == ("cheap", 2)
    assert research.elicitation_mode == "decline"  # fast-agent's spelling
    assert (research.log_level, research.include_instructions) == ("info", True)
    assert (plain.roots, plain.sampling_model, plain.sampling_max_concurrency) == ((), None, 4)
    assert (plain.elicitation_mode, plain.log_level, plain.include_instructions) == ("ask", None, False)
