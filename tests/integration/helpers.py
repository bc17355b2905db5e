"""Integration test helpers: whole pipelines run by the real interpreter against a real OpenAI-compatible HTTP server
(tests/support/openai_server.py, driven by the real openai SDK) and real MCP servers (tests/support/mcp_servers).

Pipelines live in tests/integration/pipelines as templates: `@NAME@` placeholders (the Python interpreter, the calc
server's path, the test's process marker, a scratch folder, ...) are filled in and the file is written to the
test's tmp_path, because a server's `command` must be a literal absolute path.

Every test gets a unique marker that its servers carry (in their arguments or environment); after the test no
process carrying it may remain.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from flowctl.dsl.diagnostics import Severity
from flowctl.dsl.frontend import load_pipeline
from flowctl.interpreter.clock import SYSTEM_CLOCK, Clock
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.reporting import Reporter
from flowctl.interpreter.runner import RunOptions, RunOutcome, run_graph
from tests.support.openai_server import OpenAIServer

REPO = Path(__file__).resolve().parents[2]
PIPELINES = Path(__file__).resolve().parent / "pipelines"
SERVERS = REPO / "tests" / "support" / "mcp_servers"
CALC = SERVERS / "calc_server.py"
PYTHON = sys.executable
KEY = "sk-integration-0123456789abcdef"


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line or environment carries `marker` (zombies have exited: not counted)."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if needle in (entry / "cmdline").read_bytes() or needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def wait_until_gone(marker: str, timeout: float = 60.0) -> list[int]:
    """The processes still carrying `marker` once they are all gone, or after `timeout` (a safety net)."""
    deadline = time.monotonic() + timeout
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


async def until(condition: Callable[[], object], limit: float = 60.0) -> None:
    """Wait for what another process (a server, a thread) brings about, looking every 10 ms; `limit` (real seconds) is
    a safety net, never reached when things work."""
    with anyio.fail_after(limit):
        while not condition():
            await anyio.sleep(0.01)


def fill(template: str, **values: Any) -> str:
    for name, value in values.items():
        template = template.replace(f"@{name.upper()}@", str(value))
    left = re.findall(r"@[A-Z_]+@", template)
    assert not left, f"unfilled placeholders in the pipeline: {left}"
    return template


@dataclass
class Result:
    outcome: RunOutcome
    store: SqliteRunStore
    path: Path

    @property
    def error(self) -> str:
        return str(self.outcome.error) if self.outcome.error else ""

    @property
    def cause(self) -> str:
        """The code of what made the run fail (the StepFailed's cause)."""
        error = self.outcome.error
        return getattr(error, "cause_code", getattr(error, "code", "")) if error else ""

    def call_keys(self) -> list[str]:
        """Keys of the journaled (completed) calls of the run, from the store's `calls` table."""
        with sqlite3.connect(self.store.path) as conn:
            rows = conn.execute("SELECT key FROM calls WHERE run_id = ? ORDER BY key", (self.outcome.run_id,))
            return [row[0] for row in rows]

    def step(self, path: str) -> Any:
        return next(s for s in self.store.steps(self.outcome.run_id) if s.path == path)


@dataclass
class Flow:
    """Writes pipeline templates to tmp_path and runs them with the real interpreter against `llm`."""

    tmp_path: Path
    llm: OpenAIServer
    marker: str
    stores: list[SqliteRunStore] = field(default_factory=list)

    def values(self, **extra: Any) -> dict[str, Any]:
        return {"python": PYTHON, "calc": CALC, "servers": SERVERS, "marker": self.marker, "tmp": self.tmp_path} | extra

    def pipeline(self, name: str, **extra: Any) -> Path:
        path = self.tmp_path / name
        path.write_text(fill((PIPELINES / name).read_text(encoding="utf-8"), **self.values(**extra)), encoding="utf-8")
        return path

    def env(self, **extra: str) -> dict[str, str]:
        return {"OPENAI_BASE_URL": self.llm.base_url, "OPENAI_API_KEY": KEY, **extra}

    async def run(
        self,
        name: str,
        inputs: dict[str, Any] | None = None,
        *,
        env: dict[str, str] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        reporter: Reporter | None = None,
        **extra: Any,
    ) -> Result:
        path = self.pipeline(name, **extra)
        graph, diagnostics, _ = load_pipeline(path)
        errors = [str(d) for d in diagnostics if d.severity is Severity.ERROR]
        assert graph is not None, errors
        store = SqliteRunStore(self.tmp_path / "runs.db")
        self.stores.append(store)
        options = RunOptions(env=env if env is not None else self.env(), reporter=reporter or Reporter(), clock=clock)
        outcome = await run_graph(graph, inputs or {}, store, options)
        return Result(outcome, store, path)
