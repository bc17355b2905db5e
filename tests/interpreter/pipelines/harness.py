"""Shared helpers for the interpreter's end-to-end tests: run a real pipeline file from this folder with the real
interpreter, the scripted provider and an SQLite run store, and read back what the store journaled.

Only public entry points are used (`load_pipeline`, `run_graph`, `RunOptions`, the store); the provider is the
real `ScriptedProvider`, handed in through `RunOptions.provider_factory` so tests can read its call counters.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from flowctl.dsl.frontend import load_pipeline
from flowctl.interpreter.clock import SYSTEM_CLOCK, Clock, ManualClock
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import StepRecord
from flowctl.interpreter.providers.scripted import Fixture, ScriptedProvider, load_fixture
from flowctl.interpreter.runner import RunOptions, RunOutcome, run_graph

HERE = Path(__file__).parent
FLOWCTL = str(Path(sys.executable).with_name("flowctl"))


def compile_file(path: str | Path) -> Any:
    graph, diagnostics, _ = load_pipeline(path)
    assert graph is not None, "\n".join(str(d) for d in diagnostics)
    return graph


@dataclass
class Ran:
    outcome: RunOutcome
    provider: ScriptedProvider
    store: SqliteRunStore
    elapsed: float

    @property
    def run_id(self) -> str:
        return self.outcome.run_id

    def steps(self, run_id: str | None = None) -> dict[str, StepRecord]:
        return {s.path: s for s in self.store.steps(run_id or self.run_id)}

    def output(self, step: str) -> Any:
        return self.outcome.steps[step]["output"]

    def status(self, step: str) -> str:
        return self.outcome.steps[step]["status"]


async def run_file(
    pipeline: str | Path,
    fixture: str | Path | Fixture,
    store: SqliteRunStore,
    *,
    inputs: dict[str, Any] | None = None,
    run_id: str | None = None,
    resuming: bool = False,
    force: bool = False,
    clock: Clock = SYSTEM_CLOCK,
    skip_time: bool = False,
) -> Ran:
    """Run (or resume) a pipeline file through the real interpreter with one shared scripted provider.

    `skip_time`: on virtual time (a ManualClock that jumps to the next timer whenever the run waits only for time):
    scripted latencies, backoffs, timeouts and deadlines take no real time and happen in the same order on any
    machine; `elapsed` is then virtual too."""
    if skip_time:
        return await _run_skipping_time(pipeline, fixture, store, inputs=inputs, run_id=run_id, resuming=resuming)
    path = pipeline if isinstance(pipeline, Path) else HERE / pipeline
    graph = compile_file(path)
    if not isinstance(fixture, Fixture):
        fixture = load_fixture(fixture if isinstance(fixture, Path) else HERE / fixture)
    provider = ScriptedProvider(fixture, clock)
    options = RunOptions(scripted=fixture, force=force, provider_factory=lambda model: provider, clock=clock)
    started = time.monotonic()
    outcome = await run_graph(graph, inputs or {}, store, options, run_id=run_id, resuming=resuming)
    return Ran(outcome, provider, store, time.monotonic() - started)


async def _run_skipping_time(
    pipeline: str | Path, fixture: str | Path | Fixture, store: SqliteRunStore, **options: Any
) -> Ran:
    clock = ManualClock()
    ran: list[Ran] = []

    async def run() -> None:
        ran.append(await run_file(pipeline, fixture, store, clock=clock, **options))
        tg.cancel_scope.cancel()  # the autojump

    with anyio.fail_after(60):  # real seconds: a safety net for a broken test, never reached when things work
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await clock.autojump()
    ran[0].elapsed = ran[0].outcome.elapsed
    return ran[0]


def max_overlap(records: list[StepRecord]) -> int:
    """The largest number of step records running at the same moment (from their journaled start/finish times)."""
    edges = sorted([(r.started_at, 1) for r in records] + [(r.finished_at or 0.0, -1) for r in records])
    running = peak = 0
    for _, delta in edges:  # a finish sorts before a start at the same instant
        running += delta
        peak = max(peak, running)
    return peak


# --- subprocess helpers (the CLI as a user runs it) ---------------------------------------------------------------


def flowctl(*args: str, cwd: Path | None = None, **popen: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [FLOWCTL, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the store from outside the running process (a plain read-only SQLite connection)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # the schema is not there yet
        return []
    finally:
        conn.close()


def poll(condition: Any, *, timeout: float = 60.0, interval: float = 0.01, what: str = "condition") -> Any:
    """Poll `condition()` until it returns something truthy; fail after `timeout` seconds (a safety net for a broken
    test, never reached when things work, however busy the machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def fixture_without_latency(path: str | Path, **replace_replies: Any) -> Fixture:
    """A fixture file's rules with every latency dropped (and, by step name, some replies replaced): the same answers,
    at once — for in-process runs that need no time to kill them in."""
    import yaml

    path = path if isinstance(path, Path) else HERE / path
    data = yaml.safe_load(path.read_text())
    for rule in data.get("responses", []):
        rule.pop("latency", None)
        if rule.get("step") in replace_replies:
            rule["reply"] = replace_replies[rule["step"]]
    return Fixture.from_data(data, str(path))
