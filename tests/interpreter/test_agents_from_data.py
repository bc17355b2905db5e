"""Agents from data: an agent chosen by an expression over the declared agents (a default for the names no agent
has, a clear step error without one), parameterised agents whose name, instruction and servers come from their
arguments (servers limited to the declared ones), the rendered name in every report, and the same choice on resume."""

from __future__ import annotations

from typing import Any

import anyio
import yaml
from click.testing import CliRunner

from flowctl.cli import main
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus
from flowctl.interpreter.providers.scripted import Fixture
from tests.interpreter.pipelines.harness import HERE, run_file

PIPELINE = "agents_from_data.yaml"


def fixture(**extra_rules: Any) -> Fixture:
    """The pipeline's fixture, with a reply for some steps first (an error, to fail them)."""
    data = yaml.safe_load((HERE / "agents_from_data.fixture.yaml").read_text())
    data["responses"] = [{"step": step, "reply": reply} for step, reply in extra_rules.items()] + data["responses"]
    return Fixture.from_data(data, "<test>")


def model_calls(store: SqliteRunStore, run_id: str) -> dict[str, dict[str, Any]]:
    """The request of each model call of the run, by step path (from the transcript)."""
    return {e.path: e.request for e in store.exchanges(run_id) if e.kind == "model"}


def run(store: SqliteRunStore, **options: Any) -> Any:
    return anyio.run(lambda: run_file(PIPELINE, options.pop("fixture", None) or fixture(), store, **options))


def test_an_expression_chooses_the_agent_and_the_default_takes_the_rest(store: SqliteRunStore) -> None:
    ran = run(
        store, inputs={"items": [{"source": {"type": "pdf"}}, {"source": {"type": "csv"}}, {"source": {"type": "xml"}}]}
    )
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    assert ran.output("process") == ["pdf done", "csv done", "any done"]
    calls = model_calls(store, ran.run_id)
    assert [calls[f"process[{i}]"]["agent"] for i in range(3)] == ["processor_pdf", "processor_csv", "processor_any"]
    assert calls["process[2]"]["messages"][0] == {"role": "system", "content": "You process any document."}


def test_a_name_no_agent_has_fails_the_step_without_a_default(store: SqliteRunStore) -> None:
    ran = run(store, inputs={"items": [{"source": {"type": "xml"}}]})
    assert ran.outcome.status is RunStatus.FAILED
    assert ran.outcome.error is not None and "unknown-agent" in str(ran.outcome.error.to_json())
    message = str(ran.outcome.error)
    assert "its agent expression gave 'processor_xml', no declared agent" in message
    assert "agents: processor_any, processor_csv, processor_pdf" in message  # the parameterised one is not offered


def test_a_parameterised_agent_is_named_instructed_and_served_from_its_arguments(store: SqliteRunStore) -> None:
    ran = run(store, inputs={"items": [{"source": {"type": "pdf"}}]})
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    assert ran.output("execute") == ["designed", "reviewed"]
    calls = model_calls(store, ran.run_id)
    design, review = calls["execute[0]"], calls["execute[1]"]
    assert (design["agent"], review["agent"]) == ("task_executor_design", "task_executor_review")
    assert design["messages"][0]["content"] == "Execute design tasks."
    # its servers come from the task: `files` for design, the default `general` for review
    assert [t["name"] for t in design["tools"]] == ["read_file"]
    assert [t["name"] for t in review["tools"]] == ["fetch"]


def test_a_rendered_server_the_file_does_not_declare_fails_the_step(store: SqliteRunStore) -> None:
    tasks = [{"type": "design", "required_services": ["files", "github"]}]
    ran = run(store, inputs={"items": [{"source": {"type": "pdf"}}], "tasks": tasks})
    assert ran.outcome.status is RunStatus.FAILED
    message = str(ran.outcome.error)
    assert "agent 'task_executor_design' (from 'executor') was given the server(s) 'github'" in message
    assert "declared servers: files, general" in message
    assert "execute[0]" not in model_calls(store, ran.run_id)  # refused before it asked the model


def test_show_and_logs_report_the_rendered_names(store: SqliteRunStore, tmp_path: Any) -> None:
    ran = run(store, inputs={"items": [{"source": {"type": "csv"}}]})
    db = str(store.path)
    show = CliRunner().invoke(main, ["show", ran.run_id, "--store", db])
    lines = {line.split()[1]: line for line in show.output.splitlines() if line.strip()[:1] in "✓✗"}
    assert lines["process[0]"].endswith("agent processor_csv")
    assert lines["execute[0]"].endswith("agent task_executor_design")
    logs = CliRunner().invoke(main, ["logs", ran.run_id, "--store", db, "--step", "execute"])
    heads = [line for line in logs.output.splitlines() if line.startswith("── ")]
    assert any("agent task_executor_review" in head for head in heads), logs.output


def test_a_resumed_run_makes_the_same_choices_and_replays_them(store: SqliteRunStore) -> None:
    failing = fixture(strict={"error": "bad_request"})

    async def main_() -> tuple[Any, Any]:
        failed = await run_file(PIPELINE, failing, store)
        resumed = await run_file(PIPELINE, fixture(), store, run_id=failed.run_id, resuming=True)
        return failed, resumed

    failed, resumed = anyio.run(main_)
    assert failed.outcome.status is RunStatus.FAILED
    assert resumed.outcome.status is RunStatus.SUCCEEDED, resumed.outcome.error
    # the five agent calls before `strict` were replayed (same agents, same requests); only `strict` was asked again
    assert (resumed.outcome.calls_replayed, resumed.outcome.calls_executed) == (5, 1)
    assert resumed.outcome.outputs == {
        "processed": ["pdf done", "csv done", "any done"],
        "executed": ["designed", "reviewed"],
    }
