"""The transcript of a run: every model call (the messages as sent, the tools offered, the answer with usage and
latency, or the error), every tool call (arguments, result), every wait (the event that released it), and every
attempt of a step that did not succeed at its first try — redacted, large bodies capped."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from flowctl.interpreter.persistence.record_encoding import MAX_TRANSCRIPT_BODY
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus, StepStatus
from flowctl.interpreter.providers.scripted import Fixture
from flowctl.interpreter.redact import redactor_for
from tests.interpreter.pipelines.harness import compile_file, run_file

PIPELINE = """\
flowctl: 1
name: transcribed
inputs:
  city: {type: string}
agents:
  clerk:
    instruction: You keep the time.
    servers: [time]
servers:
  time: {command: unused}
steps:
  - id: ask
    agent: clerk
    prompt: "What time is it in {{ inputs.city }}?"
    retry: {max_attempts: 3, initial_delay: 1s, jitter: false}
outputs:
  answer: "{{ steps.ask.output }}"
"""

FIXTURE = {
    "responses": [
        {
            "agent": "clerk",
            "replies": [
                {"error": "unavailable"},
                {"tool_calls": [{"name": "get_current_time", "arguments": {"timezone": "Europe/Paris"}}]},
                "It is noon.",
            ],
        }
    ],
    "tools": {"time.get_current_time": {"value": {"datetime": "2026-01-01T12:00:00+01:00"}}},
}


@pytest.mark.anyio
async def test_a_retried_agent_step_is_transcribed_call_by_call(tmp_path: Path, store: SqliteRunStore) -> None:
    (tmp_path / "p.yaml").write_text(PIPELINE)
    ran = await run_file(
        tmp_path / "p.yaml", Fixture.from_data(FIXTURE), store, inputs={"city": "Paris"}, skip_time=True
    )
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    run_id = ran.outcome.run_id

    exchanges = store.exchanges(run_id)
    assert len(exchanges) == 4, exchanges
    failed, asked, tool, answered = exchanges
    assert [e.kind for e in (failed, asked, tool, answered)] == ["model", "model", "tool", "model"]
    assert [e.attempt for e in (failed, asked, tool, answered)] == [1, 2, 2, 2]
    assert failed.response is None and failed.error is not None and failed.error["retryable"] is True
    messages = asked.request["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == "What time is it in Paris?"
    assert [t["name"] for t in asked.request["tools"]] == ["get_current_time"]
    call = asked.response["tool_calls"][0]
    assert (call["name"], call["arguments"]) == ("get_current_time", '{"timezone": "Europe/Paris"}')
    assert tool.request == {"server": "time", "tool": "get_current_time", "arguments": {"timezone": "Europe/Paris"}}
    assert tool.response["value"] == {"datetime": "2026-01-01T12:00:00+01:00"}
    assert [m["role"] for m in answered.request["messages"]] == ["system", "user", "assistant", "tool"]
    assert answered.response["content"] == "It is noon." and "usage" in answered.response
    assert {e.path for e in (failed, asked, tool, answered)} == {"ask"}
    assert store.exchanges(run_id, "ask") == store.exchanges(run_id)
    assert store.exchanges(run_id, "other") == []

    first, second = store.attempts(run_id)
    assert (first.attempt, first.status, second.attempt, second.status) == (
        1,
        StepStatus.FAILED,
        2,
        StepStatus.SUCCEEDED,
    )
    assert first.error is not None and first.retry_in == 1.0  # the backoff the engine waited
    assert first.finished_at <= second.started_at


@pytest.mark.anyio
async def test_a_step_that_succeeds_at_once_writes_no_attempt_rows(tmp_path: Path, store: SqliteRunStore) -> None:
    (tmp_path / "p.yaml").write_text(PIPELINE)
    fixture = Fixture.from_data({"default": "at once", "tools": FIXTURE["tools"]})
    ran = await run_file(tmp_path / "p.yaml", fixture, store, inputs={"city": "Oslo"})
    assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    assert store.attempts(ran.outcome.run_id) == []  # the step's row says it all
    (only,) = store.exchanges(ran.outcome.run_id)
    assert only.response["content"] == "at once"


@pytest.mark.anyio
async def test_transcripts_are_redacted_and_large_bodies_capped(
    tmp_path: Path, store: SqliteRunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-transcript-0123456789abcdef"
    monkeypatch.setenv("FLOWCTL_TEST_API_KEY", secret)  # a secret-looking variable: masked everywhere
    (tmp_path / "p.yaml").write_text(PIPELINE)
    huge = "x" * (MAX_TRANSCRIPT_BODY + 10)
    replies = {"responses": [{"prompt": "Paris", "reply": f"the key is {secret}"}], "default": huge}
    fixture = Fixture.from_data({**replies, "tools": FIXTURE["tools"]})

    redactor = redactor_for([compile_file(tmp_path / "p.yaml")], {"FLOWCTL_TEST_API_KEY": secret})
    assert redactor.redact_text(secret) != secret
    for city in ("Paris", "Rome"):
        ran = await run_file(tmp_path / "p.yaml", fixture, store, inputs={"city": city})
        assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
    paris, rome = (store.exchanges(r.run_id)[0] for r in reversed(store.list_runs()))
    assert secret not in str(paris.response) and "***" in paris.response["content"]
    assert rome.response == {"truncated": True, "size": rome.response["size"], "head": rome.response["head"]}
    assert rome.response["size"] > MAX_TRANSCRIPT_BODY and len(rome.response["head"]) == MAX_TRANSCRIPT_BODY


@pytest.mark.anyio
async def test_the_common_model_call_encoded_at_once_agrees_with_the_entry_encoded_at_commit(
    tmp_path: Path, store: SqliteRunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answered call with nothing to mask is transcribed at once from its JSON texts and kept in its call row —
    also with a secret to look for that its texts do not hold; with a secret whose absence a look at the texts cannot
    prove (a non-ASCII one, which JSON may escape), the same call's entry is built, masked and encoded when committed,
    as an exchanges row: all must read back as the same entries, in the same order, over the cap too."""
    (tmp_path / "p.yaml").write_text(PIPELINE)
    huge = "y" * (MAX_TRANSCRIPT_BODY + 10)
    rules = [{"prompt": "Rome", "reply": huge}, *FIXTURE["responses"]]  # Paris: a failure, a tool call, an answer
    fixture = Fixture.from_data({"responses": rules, "tools": FIXTURE["tools"]})

    async def entries() -> list[tuple[Any, ...]]:
        found: list[tuple[Any, ...]] = []
        for city in ("Paris", "Rome"):
            ran = await run_file(tmp_path / "p.yaml", fixture, store, inputs={"city": city}, skip_time=True)
            assert ran.outcome.status is RunStatus.SUCCEEDED, ran.outcome.error
            found += [(e.path, e.key, e.attempt, e.kind, e.request, e.response, e.error)
                      for e in store.exchanges(ran.outcome.run_id)]  # fmt: skip
        return found

    for name in list(os.environ):  # nothing to mask (whatever this machine's environment holds): entries at once
        if redactor_for([], {name: os.environ[name]}):
            monkeypatch.delenv(name)
    assert not redactor_for([compile_file(tmp_path / "p.yaml")], dict(os.environ))
    kept_in_calls = "SELECT count(*) FROM calls WHERE request IS NOT NULL"
    at_once = await entries()
    assert store._rows(kept_in_calls, ())[0][0] == 2  # Paris' two answers (Rome's is over the cap)
    monkeypatch.setenv("FLOWCTL_TEST_API_KEY", "sk-never-seen-0123456789abcdef")
    looked_at = await entries()
    assert store._rows(kept_in_calls, ())[0][0] == 4  # the texts hold no secret: kept at once again
    monkeypatch.setenv("FLOWCTL_TEST_API_KEY", "sk-ñever-seen-0123456789abcdef")
    at_commit = await entries()
    assert store._rows(kept_in_calls, ())[0][0] == 4  # none more
    assert at_once == looked_at == at_commit
    truncated = [response for *_, response, _ in at_once if isinstance(response, dict) and response.get("truncated")]
    assert len(truncated) == 1 and truncated[0]["size"] > MAX_TRANSCRIPT_BODY
