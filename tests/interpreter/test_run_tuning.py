"""While a run is in flight the collector's thresholds and the GIL switch interval are tuned for it (see
`runner._interpreter_tuned_for_runs`); afterwards the process gets its own settings back, even when the run fails."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowctl.dsl.frontend import load_pipeline
from flowctl.interpreter.llm import CompletionRequest
from flowctl.interpreter.runner import RUN_SWITCH_INTERVAL, RunOptions, run_graph
from flowctl.interpreter.scripted import ScriptedProvider, load_fixture
from flowctl.interpreter.sqlite_store import SqliteRunStore
from flowctl.interpreter.store import RunStatus

PIPELINE = """\
flowctl: 1
name: tuned
agents:
  worker: {instruction: You work.}
steps:
  - {id: one, agent: worker, prompt: "go"}
"""


class Observing(ScriptedProvider):
    """The scripted provider, noting the interpreter's settings at each call."""

    seen: list[tuple[tuple[int, int, int], float]]

    def complete(self, request: CompletionRequest) -> Any:
        self.seen.append((gc.get_threshold(), sys.getswitchinterval()))
        return super().complete(request)


@pytest.fixture
def settings() -> Iterator[None]:
    before = (gc.get_threshold(), sys.getswitchinterval())
    gc.set_threshold(700, 10, 10)
    sys.setswitchinterval(0.005)
    yield
    gc.set_threshold(*before[0])
    sys.setswitchinterval(before[1])


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("reply", ["done", "{error: auth}"])
async def test_settings_are_tuned_during_a_run_and_restored_after(tmp_path: Path, settings: None, reply: str) -> None:
    (tmp_path / "p.yaml").write_text(PIPELINE)
    (tmp_path / "f.yaml").write_text(f"default: {reply}\n")
    graph, diagnostics, _ = load_pipeline(tmp_path / "p.yaml")
    assert graph is not None, diagnostics
    fixture = load_fixture(tmp_path / "f.yaml")
    provider = Observing(fixture)
    provider.seen = []
    with SqliteRunStore(tmp_path / "runs.db") as store:
        options = RunOptions(scripted=fixture, provider_factory=lambda model: provider)
        outcome = await run_graph(graph, {}, store, options)
    assert outcome.status is (RunStatus.SUCCEEDED if reply == "done" else RunStatus.FAILED)
    assert provider.seen and all(
        threshold[0] == 50_000 and interval == RUN_SWITCH_INTERVAL for threshold, interval in provider.seen
    )
    assert gc.get_threshold() == (700, 10, 10)
    assert sys.getswitchinterval() == pytest.approx(0.005)
    assert gc.get_freeze_count() == 0
