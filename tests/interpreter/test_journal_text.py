"""An LLM call's journal record is written as text by the response itself (`CompletionResponse.journal_text`), not
encoded from a dict by the recorder: it must decode to exactly what `to_json()` gives, and the recorder must still
redact secrets from it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from flowctl.interpreter.persistence.recorder import Recorder
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunRecord, RunStatus
from flowctl.interpreter.providers.llm import CompletionResponse, ToolCallRequest, Usage
from flowctl.interpreter.redact import Redactor

SECRET = "sk-test-0123456789abcdef"
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)  # SQLite stores UTF-8
responses = st.builds(
    CompletionResponse,
    content=st.none() | texts,
    tool_calls=st.lists(st.builds(ToolCallRequest, texts, texts, texts), max_size=2).map(tuple),
    usage=st.builds(Usage, st.integers(0, 10**9), st.integers(0, 10**9)),
    finish_reason=texts,
    model=texts,
)


@settings(max_examples=300, deadline=None)
@given(responses)
def test_journal_text_decodes_to_the_response_json(response: CompletionResponse) -> None:
    text = response.journal_text()
    assert type(text) is str
    assert json.loads(text) == response.to_json()
    assert CompletionResponse.from_json(json.loads(text)) == response


def test_odd_values_take_the_encoder() -> None:
    response = CompletionResponse(content=42, model=None)  # type: ignore[arg-type]  # a provider's odd values
    assert json.loads(response.journal_text()) == response.to_json()


def _stored(tmp_path: Path, redactor: Redactor, result: str) -> tuple[str, object]:
    db = tmp_path / "runs.db"
    with SqliteRunStore(db) as store:
        recorder = Recorder(store, redactor, "here:1", background_delay=None)
        recorder.start_root(RunRecord("r-1", "demo", "demo.yaml", RunStatus.RUNNING, 1000.0))
        recorder.call_done("r-1", "a/llm#0", "d", result)
        recorder.cache_put("d", result)
        recorder.commit()
        call = store.lookup_call("r-1", "a/llm#0")
        assert call is not None
        cached = store.cache_get("d")
    with sqlite3.connect(db) as conn:
        (text,) = conn.execute("SELECT result FROM calls").fetchone()
    assert cached == call.result
    return text, call


def test_the_store_keeps_journal_text_as_it_is(tmp_path: Path) -> None:
    result = CompletionResponse("an answer ☃", usage=Usage(3, 4), model="m").journal_text()
    text, call = _stored(tmp_path, Redactor(), result)
    assert text == result
    assert call.result == json.loads(result) and not call.masked  # type: ignore[attr-defined]


def test_the_store_redacts_secrets_from_journal_text(tmp_path: Path) -> None:
    result = CompletionResponse(f"the key is {SECRET}", model="m").journal_text()
    text, call = _stored(tmp_path, Redactor.from_env({"OPENAI_API_KEY": SECRET}), result)
    assert SECRET not in text
    assert call.result["content"] == "the key is ***"  # type: ignore[attr-defined]
    assert call.masked  # type: ignore[attr-defined]  # a masked answer is not replayed
