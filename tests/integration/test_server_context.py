"""An agent's instruction from a server's prompt and resources given as context, against calc's real prompt and
resources: what the model is sent, and that a resumed run replays the reads instead of asking the server again."""

from __future__ import annotations

import pytest

from flowctl.dsl.frontend import load_pipeline
from flowctl.interpreter.persistence.store import RunStatus
from flowctl.interpreter.reporting import Reporter
from flowctl.interpreter.runner import RunOptions, run_graph
from tests.integration.helpers import Flow
from tests.support.openai_server import error, reply

pytestmark = pytest.mark.anyio


async def test_the_model_gets_the_prompt_as_instruction_and_the_resources_before_the_prompt(flow: Flow) -> None:
    flow.llm.enqueue(reply("7 14 21"), reply("Certainly."))
    result = await flow.run("server_context.yaml", {"n": 7})
    assert result.outcome.status is RunStatus.SUCCEEDED, result.error
    messages = flow.llm.bodies[0]["messages"]
    assert messages[0] == {"role": "system", "content": "Answer in a dry tone."}
    assert messages[1] == {
        "role": "user",
        "content": "Resource calc://guide (text/markdown):\n# calc\nResults are rounded to 2 decimals.",
    }
    assert messages[2] == {"role": "user", "content": "Resource calc://tables/7 (text/plain):\n7 14 21"}
    assert messages[3] == {"role": "user", "content": "Explain the table."}
    assert result.outcome.outputs == {"answer": "7 14 21", "table": "8 16 24"}
    # an agent step whose prompt is the server's prompt: its message is the user message
    assert flow.llm.bodies[1]["messages"] == [
        {"role": "system", "content": "You help."},
        {"role": "user", "content": "Answer in a formal tone."},
    ]
    reads = (flow.tmp_path / "reads.txt").read_text().split("\n")[:-1]
    assert reads == ["style dry", "guide", "table 7", "style formal", "table 8"]


async def test_a_resumed_run_replays_the_reads(flow: Flow) -> None:
    flow.llm.enqueue(error(400, {"error": {"message": "bad request", "type": "invalid_request_error"}}))
    first = await flow.run("server_context.yaml", {"n": 3})
    assert first.outcome.status is RunStatus.FAILED
    reads = flow.tmp_path / "reads.txt"
    assert reads.read_text().split("\n")[:-1] == ["style warm", "guide", "table 3"]
    flow.llm.enqueue(reply("3 6 9"), reply("Certainly."))
    graph, _, _ = load_pipeline(first.path)
    assert graph is not None
    options = RunOptions(env=flow.env(), reporter=Reporter())
    outcome = await run_graph(graph, {"n": 3}, first.store, options, run_id=first.outcome.run_id, resuming=True)
    assert outcome.status is RunStatus.SUCCEEDED, outcome.error
    # the journaled reads are replayed, the steps that had not run read now
    assert reads.read_text().split("\n")[:-1] == ["style warm", "guide", "table 3", "style formal", "table 4"]
    assert flow.llm.bodies[-2]["messages"][0]["content"] == "Answer in a warm tone."
