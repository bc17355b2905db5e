"""The spans of real runs, attribute by attribute and parent by parent: an agent calling a real MCP tool, a retried
step, a fan-out, a child pipeline, a failed run; prompts and results only when content capture is on, and then
redacted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from flowctl.interpreter.persistence.store import RunStatus
from flowctl.interpreter.redact import Redactor
from flowctl.telemetry import TraceReporter
from tests.telemetry.helpers import Spans, run_pipeline

pytestmark = pytest.mark.anyio

SECRET = "tok-5f2a9c31e8b7d40a"


def reporter(
    exporter: InMemorySpanExporter, *, capture: bool = False, events: bool = False, redactor: Redactor | None = None
) -> TraceReporter:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return TraceReporter(
        provider.get_tracer("test"),
        redactor or Redactor(),
        capture_content=capture,
        content_events=events,
        provider=provider,
    )


async def test_an_agent_step_with_a_real_tool_call(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    traces = reporter(exporter)
    outcome = await run_pipeline("tools", tmp_path, traces, inputs={"key": "k"})
    traces.close()
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    spans = Spans(exporter.get_finished_spans())
    run, step = spans.one("invoke_workflow traced_tools"), spans.one("invoke_agent adder")
    assert spans.parent(run) is None
    assert dict(run.attributes or {}) == {
        "gen_ai.operation.name": "invoke_workflow",
        "gen_ai.workflow.name": "traced_tools",
        "flowctl.run.id": outcome.run_id,
        "flowctl.run.resumed": False,
        "flowctl.run.status": "succeeded",
        "flowctl.run.tokens": outcome.input_tokens + outcome.output_tokens,
    }
    assert run.kind is SpanKind.INTERNAL and run.status.status_code is StatusCode.UNSET
    direct = spans.one("tool direct")
    assert spans.children(run) == [step, direct]
    assert spans.child_names(step) == ["chat m-tools", "execute_tool add", "chat m-tools"]
    first, tool, second = spans.children(step)
    assert dict(step.attributes or {}) == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "adder",
        "gen_ai.provider.name": "scripted",  # what answered: the run scripts the model
        "gen_ai.request.model": "m-tools",
        "gen_ai.usage.input_tokens": outcome.input_tokens,
        "gen_ai.usage.output_tokens": outcome.output_tokens,
        "flowctl.run.id": outcome.run_id,
        "flowctl.step.path": "add",
        "flowctl.step.kind": "agent",
        "flowctl.step.attempts": 1,
        "flowctl.step.status": "succeeded",
        "flowctl.step.tokens": outcome.input_tokens + outcome.output_tokens,
    }
    assert first.kind is SpanKind.CLIENT
    usage = {"gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"}
    assert {k: v for k, v in (first.attributes or {}).items() if k not in usage} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "scripted",
        "gen_ai.request.model": "m-tools",
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.max_tokens": 64,
        "gen_ai.output.type": "text",
        "gen_ai.agent.name": "adder",
        "gen_ai.response.model": "m-tools",
        "gen_ai.response.finish_reasons": ("tool_calls",),
        "flowctl.call.key": "add/llm#0",
        "flowctl.attempt": 1,
        "flowctl.call.replayed": False,
    }
    assert (second.attributes or {})["gen_ai.response.finish_reasons"] == ("stop",)
    assert (second.attributes or {})["flowctl.call.key"] == "add/llm#2"
    total = sum(int((s.attributes or {})["gen_ai.usage.input_tokens"]) for s in (first, second))  # type: ignore[arg-type]
    assert total == outcome.input_tokens > 0
    assert tool.kind is SpanKind.INTERNAL
    assert dict(tool.attributes or {}) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "add",
        "gen_ai.tool.call.id": "call_1",  # the id the model gave the call (the scripted provider numbers them)
        "flowctl.tool.server": "calc",
        "flowctl.call.key": "add/turn#1/tool:calc.add#0",
        "flowctl.attempt": 1,
        "flowctl.call.replayed": False,
    }
    assert dict(direct.attributes or {}) == {
        "flowctl.run.id": outcome.run_id,
        "flowctl.step.path": "direct",
        "flowctl.step.kind": "tool",
        "flowctl.step.attempts": 1,
        "flowctl.step.status": "succeeded",
        "flowctl.step.tokens": 0,
    }
    [echo] = spans.children(direct)
    assert echo.name == "execute_tool echo"
    assert dict(echo.attributes or {}) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "echo",
        "flowctl.tool.server": "calc",
        "flowctl.call.key": "direct/tool:calc.echo#0",
        "flowctl.attempt": 1,
        "flowctl.call.replayed": False,
    }
    # calls carry their own times: inside their step, one after the other
    assert step.start_time is not None and step.end_time is not None
    for call in (first, tool, second):
        assert call.start_time is not None and call.end_time is not None
        assert step.start_time <= call.start_time <= call.end_time <= step.end_time
    assert first.end_time <= tool.start_time and tool.end_time <= second.start_time  # type: ignore[operator]


async def test_content_is_captured_only_when_asked_and_then_redacted(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    content = {
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
        "gen_ai.tool.definitions",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
    }
    traces = reporter(exporter)
    await run_pipeline("tools", tmp_path / "off", traces, inputs={"key": SECRET})
    traces.close()
    assert not any(content & set(s.attributes or {}) for s in exporter.get_finished_spans())

    exporter = InMemorySpanExporter()  # the first reporter's close() shut the other down
    redactor = Redactor({"CALC_TOKEN": SECRET})
    traces = reporter(exporter, capture=True, redactor=redactor)
    outcome = await run_pipeline("tools", tmp_path / "on", traces, inputs={"key": SECRET}, redactor=redactor)
    traces.close()
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    spans = Spans(exporter.get_finished_spans())
    assert all(SECRET not in json.dumps(dict(s.attributes or {})) for s in spans.spans)
    first, tool, second = spans.children(spans.one("invoke_agent adder"))
    attributes = first.attributes or {}
    instructions = json.loads(str(attributes["gen_ai.system_instructions"]))
    assert instructions == [{"type": "text", "content": "You add numbers."}]
    assert json.loads(str(attributes["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": "Add 2 and 3 (key ***)."}]}
    ]
    assert json.loads(str(attributes["gen_ai.output.messages"])) == [
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "call_1", "name": "add", "arguments": {"a": 2, "b": 3}}],
            "finish_reason": "tool_calls",
        }
    ]
    definitions = json.loads(str(attributes["gen_ai.tool.definitions"]))
    add = next(d for d in definitions if d["name"] == "add")
    assert add["type"] == "function" and set(add["parameters"]["properties"]) == {"a", "b"}
    assert json.loads(str((tool.attributes or {})["gen_ai.tool.call.arguments"])) == {"a": 2, "b": 3}
    assert json.loads(str((tool.attributes or {})["gen_ai.tool.call.result"])) == {"result": 5.0}
    turns = json.loads(str((second.attributes or {})["gen_ai.input.messages"]))
    assert [m["role"] for m in turns] == ["user", "assistant", "tool"]
    assert turns[2]["parts"][0]["type"] == "tool_call_response" and turns[2]["parts"][0]["id"] == "call_1"
    assert json.loads(str((second.attributes or {})["gen_ai.output.messages"]))[0]["parts"] == [
        {"type": "text", "content": "5"}
    ]


async def test_content_in_events_only(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    """EVENT_ONLY: a chat span's content goes to its `gen_ai.client.inference.operation.details` event."""
    redactor = Redactor({"CALC_TOKEN": SECRET})
    traces = reporter(exporter, events=True, redactor=redactor)
    await run_pipeline("tools", tmp_path, traces, inputs={"key": SECRET}, redactor=redactor)
    traces.close()
    spans = Spans(exporter.get_finished_spans())
    first = spans.children(spans.one("invoke_agent adder"))[0]
    assert "gen_ai.input.messages" not in (first.attributes or {})
    [details] = first.events
    assert details.name == "gen_ai.client.inference.operation.details"
    assert details.timestamp == first.start_time
    assert json.loads(str((details.attributes or {})["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": "Add 2 and 3 (key ***)."}]}
    ]
    assert set(details.attributes or {}) == {
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
        "gen_ai.tool.definitions",
    }


async def test_retries_fan_out_and_a_child_pipeline_make_the_run_tree(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    traces = reporter(exporter)
    outcome = await run_pipeline("tree", tmp_path, traces)
    traces.close()
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    spans = Spans(exporter.get_finished_spans())
    run = spans.one("invoke_workflow traced_tree")
    assert spans.child_names(run) == ["invoke_agent flaky", "agent each", "pipeline child"]
    flaky, each, child = spans.children(run)

    # the retried step: one span, both attempts' calls in it, the failed one an error, and the retry as an event
    assert (flaky.attributes or {})["flowctl.step.attempts"] == 2
    assert flaky.status.status_code is StatusCode.UNSET
    failed, answered = spans.children(flaky)
    assert (failed.name, answered.name) == ("chat gpt-4o-mini", "chat gpt-4o-mini")
    assert (failed.attributes or {})["flowctl.attempt"] == 1
    assert (failed.attributes or {})["error.type"] == "provider-unavailable"
    assert failed.status.status_code is StatusCode.ERROR
    assert "gen_ai.response.finish_reasons" not in (failed.attributes or {})
    assert (answered.attributes or {})["flowctl.attempt"] == 2
    assert "error.type" not in (answered.attributes or {})
    [retry] = flaky.events
    assert retry.name == "flowctl.step.retry"
    assert {k: v for k, v in (retry.attributes or {}).items() if k != "error.message"} == {
        "flowctl.attempt": 1,
        "flowctl.max_attempts": 2,
        "flowctl.retry.reason": "provider-unavailable",
        "flowctl.retry.delay": 0.001,
    }

    # the fan-out: its own span (not an agent conversation) holds one span per item, each with its call
    assert "gen_ai.operation.name" not in (each.attributes or {})
    assert spans.child_names(each) == ["invoke_agent writer", "invoke_agent writer"]
    items = spans.children(each)
    assert sorted(str((s.attributes or {})["flowctl.step.path"]) for s in items) == ["each[0]", "each[1]"]
    for item in items:
        assert spans.child_names(item) == ["chat gpt-4o-mini"]

    # the child pipeline: its run sits under the step that started it, its steps under its run
    [child_run] = spans.children(child)
    assert child_run.name == "invoke_workflow"
    assert dict(child_run.attributes or {}) == {
        "gen_ai.operation.name": "invoke_workflow",
        "flowctl.run.id": f"{outcome.run_id}/child",
        "flowctl.run.status": "succeeded",
    }
    [summary] = spans.children(child_run)
    assert summary.name == "invoke_agent writer"
    assert (summary.attributes or {})["flowctl.run.id"] == f"{outcome.run_id}/child"
    assert spans.child_names(summary) == ["chat gpt-4o-mini"]
    assert len({s.context.trace_id for s in spans.spans if s.context is not None}) == 1  # one trace


async def test_a_failed_run_is_an_error_down_its_tree(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    traces = reporter(exporter)
    outcome = await run_pipeline("failing", tmp_path, traces)
    traces.close()
    assert outcome.status is RunStatus.FAILED
    spans = Spans(exporter.get_finished_spans())
    run, step = spans.one("invoke_workflow traced_failure"), spans.one("invoke_agent down")
    assert spans.parent(step) == run
    for span in (run, step):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description and "unavailable" in span.status.description
    assert (step.attributes or {})["error.type"] == "provider-unavailable"
    assert (step.attributes or {})["flowctl.step.status"] == "failed"
    assert (run.attributes or {})["flowctl.run.status"] == "failed"
    assert (run.attributes or {})["error.type"] == "provider-unavailable"  # what failed its step
    assert [(s.attributes or {})["flowctl.attempt"] for s in spans.children(step)] == [1, 2]


async def test_a_resumed_run_shows_replayed_calls(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    traces = reporter(exporter)
    failed = await run_pipeline("resume", tmp_path, traces)
    traces.close()
    assert failed.status is RunStatus.FAILED

    exporter = InMemorySpanExporter()
    traces = reporter(exporter)
    outcome = await run_pipeline("resume", tmp_path, traces, fixture="resumed", resume=failed.run_id)
    traces.close()
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    spans = Spans(exporter.get_finished_spans())
    run = spans.one("invoke_workflow traced_resume")
    assert (run.attributes or {})["flowctl.run.resumed"] is True
    assert (run.attributes or {})["flowctl.run.id"] == failed.run_id
    assert spans.child_names(run) == ["invoke_agent writer", "invoke_agent down"]
    first, second = spans.children(run)
    [replayed] = spans.children(first)
    assert (replayed.attributes or {})["flowctl.call.replayed"] is True
    assert replayed.start_time == replayed.end_time  # no request was sent
    assert "gen_ai.usage.input_tokens" not in (first.attributes or {})  # the replayed answer was paid for before
    [answered] = spans.children(second)
    assert (answered.attributes or {})["flowctl.call.replayed"] is False


def test_closing_ends_what_an_interrupted_run_left_open(exporter: InMemorySpanExporter) -> None:
    """Ctrl-C: the runner reports no end; the command's close() still ends (and so exports) every span."""
    traces = reporter(exporter)
    traces.run_started("r-1", "p", False)
    traces.step_started("r-1", "group", "parallel", 1)
    traces.step_started("r-1", "group/kid", "pipeline", 1)
    traces.step_started("r-1/group/kid", "inner", "tool", 1)
    traces.close()
    spans = Spans(exporter.get_finished_spans())
    run, group, kid, child_run, inner = (
        spans.one(name)
        for name in ("invoke_workflow p", "parallel group", "pipeline group/kid", "invoke_workflow", "tool inner")
    )
    assert [spans.parent(s) for s in (group, kid, child_run, inner)] == [run, group, kid, child_run]
    for span in (run, group, kid, child_run, inner):
        assert (span.attributes or {})["error.type"] == "cancelled"
        assert span.end_time is not None


async def test_parallel_branches_and_loop_bodies_sit_under_their_step(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    traces = reporter(exporter)
    outcome = await run_pipeline("shapes", tmp_path, traces)
    traces.close()
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    spans = Spans(exporter.get_finished_spans())
    run = spans.one("invoke_workflow traced_shapes")
    assert spans.child_names(run) == ["parallel both", "invoke_agent writer", "loop twice"]
    both, after, twice = spans.children(run)
    assert (after.attributes or {})["flowctl.step.path"] == "after"
    assert sorted(str((s.attributes or {})["flowctl.step.path"]) for s in spans.children(both)) == ["left", "right"]
    body = [str((s.attributes or {})["flowctl.step.path"]) for s in spans.children(twice)]
    assert body == ["twice#1/draft", "twice#1/check", "twice#2/draft", "twice#2/check"]
    for step in (*spans.children(both), *spans.children(twice), after):
        assert spans.child_names(step) == ["chat gpt-4o-mini"]


async def test_agents_chosen_from_data_are_traced_under_their_rendered_names(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    traces = reporter(exporter)
    outcome = await run_pipeline("dynamic_agents", tmp_path, traces)
    traces.close()
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    spans = Spans(exporter.get_finished_spans())
    run = spans.one("invoke_workflow dynamic_agents")
    process, design = spans.children(run)
    assert sorted(spans.child_names(process)) == ["invoke_agent processor_csv", "invoke_agent processor_pdf"]
    assert design.name == "invoke_agent task_executor_design"
    assert (design.attributes or {})["gen_ai.agent.name"] == "task_executor_design"
    [chat] = spans.children(design)
    assert (chat.attributes or {})["gen_ai.agent.name"] == "task_executor_design"
