"""With `tune_process` (the CLI's opt-in), while a run is in flight the collector's thresholds and the GIL switch
interval are tuned for it, and a wide fan-out widens the young generation further (see
`flowctl.interpreter.engine.tuning`); afterwards the process gets its own settings back, even when the run fails.
Without it (an embedder's default) the process's settings are never touched."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowctl.dsl.frontend import load_pipeline
from flowctl.interpreter.engine.tuning import OBJECTS_PER_BRANCH, RUN_SWITCH_INTERVAL, RUN_YOUNG_GENERATION
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus
from flowctl.interpreter.providers.llm import CompletionRequest
from flowctl.interpreter.providers.scripted import ScriptedProvider, load_fixture
from flowctl.interpreter.runner import RunOptions, run_graph

PIPELINE = """\
flowctl: 1
name: tuned
agents:
  worker: {instruction: You work.}
steps:
  - {id: one, agent: worker, prompt: "go"}
"""

FAN_OUT = """\
flowctl: 1
name: wide
inputs:
  items: {type: array}
agents:
  worker: {instruction: You work.}
steps:
  - {id: fan, agent: worker, for_each: "{{ inputs.items }}", as: item, prompt: "{{ item }}"%s}
  - {id: after, agent: worker, prompt: "done"}
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


Seen = list[tuple[tuple[int, int, int], float]]  # (collector thresholds, switch interval) at each model call


async def _run_observed(
    tmp_path: Path, pipeline: str, inputs: dict[str, Any], reply: str = "done", *, tune: bool = True
) -> Seen:
    (tmp_path / "p.yaml").write_text(pipeline)
    (tmp_path / "f.yaml").write_text(f"default: {reply}\n")
    graph, diagnostics, _ = load_pipeline(tmp_path / "p.yaml")
    assert graph is not None, diagnostics
    fixture = load_fixture(tmp_path / "f.yaml")
    provider = Observing(fixture)
    provider.seen = []
    with SqliteRunStore(tmp_path / "runs.db") as store:
        options = RunOptions(scripted=fixture, provider_factory=lambda model: provider, tune_process=tune)
        outcome = await run_graph(graph, inputs, store, options)
    assert outcome.status is (RunStatus.SUCCEEDED if reply == "done" else RunStatus.FAILED), outcome.error
    return provider.seen


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("reply", ["done", "{error: auth}"])
async def test_settings_are_tuned_during_a_run_and_restored_after(tmp_path: Path, settings: None, reply: str) -> None:
    seen = await _run_observed(tmp_path, PIPELINE, {}, reply)
    assert seen and all(
        threshold[0] == RUN_YOUNG_GENERATION and interval == RUN_SWITCH_INTERVAL for threshold, interval in seen
    )
    assert gc.get_threshold() == (700, 10, 10)
    assert sys.getswitchinterval() == pytest.approx(0.005)
    assert gc.get_freeze_count() == 0


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_wide_fan_out_widens_the_young_generation_while_it_is_in_flight(tmp_path: Path, settings: None) -> None:
    branches = 2 * RUN_YOUNG_GENERATION // OBJECTS_PER_BRANCH  # wide enough to need more than the run's threshold
    seen = await _run_observed(tmp_path, FAN_OUT % "", {"items": list(range(branches))})
    assert len(seen) == branches + 1
    assert {threshold for threshold, _ in seen[:branches]} == {(branches * OBJECTS_PER_BRANCH, 20, 100)}
    # the step after the fan-out: the run's threshold again, counted from what the fan-out left alive (a collection
    # as it ends would walk all of that and free nothing)
    young, *older = seen[-1][0]
    assert RUN_YOUNG_GENERATION <= young < RUN_YOUNG_GENERATION + branches * OBJECTS_PER_BRANCH
    assert older == [20, 100]
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_capped_fan_out_is_as_wide_as_its_cap(tmp_path: Path, settings: None) -> None:
    branches = 2 * RUN_YOUNG_GENERATION // OBJECTS_PER_BRANCH
    seen = await _run_observed(tmp_path, FAN_OUT % ", max_concurrency: 10", {"items": list(range(branches))})
    assert {threshold for threshold, _ in seen} == {(RUN_YOUNG_GENERATION, 20, 100)}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_without_the_opt_in_a_run_leaves_the_process_settings_alone(tmp_path: Path, settings: None) -> None:
    seen = await _run_observed(tmp_path, PIPELINE, {}, tune=False)
    assert seen and all(threshold == (700, 10, 10) and interval == 0.005 for threshold, interval in seen)
