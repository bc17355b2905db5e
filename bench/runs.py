"""Running flowctl the way `flowctl run --scripted` does, with the wall time measured inside the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from bench.pipelines import write
from flowctl.dsl.frontend import load_pipeline
from flowctl.dsl.ir import Graph
from flowctl.interpreter.engine.stack_room import with_stack_room
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus, RunStore
from flowctl.interpreter.providers.llm import CompletionRequest, CompletionResponse
from flowctl.interpreter.providers.scripted import Fixture, ScriptedProvider
from flowctl.interpreter.runner import RunOptions, RunOutcome, run_graph


def in_fresh_loop(function: Any, *args: Any) -> Any:
    """`anyio.run(function, *args)` started as flowctl's commands start their loops (stack_room.with_stack_room). The
    baselines start theirs the same way (`coroutine_in_fresh_loop`): neither side then pays CPython's frame-stack
    chunk churn (gh-142183) by the chance of the depth the harness calls from."""
    return with_stack_room(partial(anyio.run, function, *args))


def coroutine_in_fresh_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """`asyncio.run(coroutine)`, started as `in_fresh_loop` starts flowctl's."""
    return with_stack_room(partial(asyncio.run, coroutine))


def compile_pipeline(directory: Path, name: str, text: str) -> Graph:
    """Write, validate and compile a pipeline; a benchmark pipeline with errors is a bug in bench/."""
    graph, diagnostics, _ = load_pipeline(write(directory, name, text))
    if graph is None:
        raise RuntimeError(f"benchmark pipeline {name} is invalid:\n" + "\n".join(map(str, diagnostics)))
    return graph


def fixture(data: dict[str, Any]) -> Fixture:
    return Fixture.from_data(data, file="<bench fixture>")


class CountingProvider:
    """Wraps the scripted provider and counts the calls in flight, to check a fan-out really is all in flight."""

    def __init__(self, inner: ScriptedProvider) -> None:
        self.inner = inner
        self.in_flight = 0
        self.peak = 0

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await self.inner.complete(request)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _timed(graph: Graph, inputs: dict[str, Any], store: RunStore, options: RunOptions) -> tuple[float, Any]:
    started = time.perf_counter()
    outcome = await run_graph(graph, inputs, store, options)
    return time.perf_counter() - started, outcome


def timed_run(
    graph: Graph,
    inputs: dict[str, Any],
    store: RunStore,
    scripted: Fixture,
    provider: Any = None,
    env: dict[str, str] | None = None,
) -> float:
    """Seconds `run_graph` takes (run record, steps, outputs, finish); raises if the run did not succeed.

    `provider` replaces the provider factory (every model answers through it); by default the fixture answers, as
    with `flowctl run --scripted`. No tool pool is passed, so the run opens the real MCP pool like the CLI does.
    `env`: the run's environment (by default this process's, as the CLI's), which decides what it masks.
    """
    options = RunOptions(scripted=scripted, tune_process=True)  # as the CLI runs
    if env is not None:
        options.env = env
    if provider is not None:
        options.provider_factory = lambda model: provider
    elapsed, outcome = in_fresh_loop(_timed, graph, inputs, store, options)
    _check(outcome)
    return elapsed


def _check(outcome: RunOutcome) -> None:
    if outcome.status is not RunStatus.SUCCEEDED:
        raise RuntimeError(f"benchmark run {outcome.run_id} ended {outcome.status.value}: {outcome.error}")


def sqlite_store(directory: Path, name: str) -> SqliteRunStore:
    """A fresh store file per measured run, so every run writes into an empty journal."""
    path = directory / name
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return SqliteRunStore(path)
