"""Helpers of the OpenTelemetry tests: run a pipeline from tests/telemetry/pipelines with the real interpreter (the
scripted provider, real MCP servers) under a `TraceReporter`, and read the finished spans as a tree."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from flowctl.dsl.frontend import load_pipeline
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.providers.scripted import load_fixture
from flowctl.interpreter.redact import Redactor
from flowctl.interpreter.reporting import Reporter
from flowctl.interpreter.runner import RunOptions, RunOutcome, run_graph

HERE = Path(__file__).parent
PIPELINES = HERE / "pipelines"
CALC = HERE.parent / "support" / "mcp_servers" / "calc_server.py"


async def run_pipeline(
    name: str,
    tmp_path: Path,
    reporter: Reporter,
    *,
    inputs: Mapping[str, Any] | None = None,
    redactor: Redactor | None = None,
    fixture: str = "",
    resume: str = "",
) -> RunOutcome:
    """Run `pipelines/<name>.yaml` (its `@PYTHON@` and `@CALC@` filled in) on `<name>.fixture.yaml` (or
    `<fixture>.fixture.yaml`), in the store `tmp_path/runs.db`; `resume`: resume that run instead."""
    text = (PIPELINES / f"{name}.yaml").read_text(encoding="utf-8")
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace("@PYTHON@", sys.executable).replace("@CALC@", str(CALC)), encoding="utf-8")
    graph, diagnostics, _ = load_pipeline(path)
    assert graph is not None, [str(d) for d in diagnostics]
    script = load_fixture(PIPELINES / f"{fixture or name}.fixture.yaml")
    store = SqliteRunStore(tmp_path / "runs.db")
    try:
        options = RunOptions(scripted=script, reporter=reporter, env={}, redactor=redactor)
        return await run_graph(graph, dict(inputs or {}), store, options, run_id=resume or None, resuming=bool(resume))
    finally:
        store.close()


@dataclass
class Spans:
    """Finished spans, looked up by name and by parent."""

    spans: tuple[ReadableSpan, ...]

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r}; all: {sorted(s.name for s in self.spans)}"
        return found[0]

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        if span.parent is None:
            return None
        return next(s for s in self.spans if s.context is not None and s.context.span_id == span.parent.span_id)

    def children(self, span: ReadableSpan) -> list[ReadableSpan]:
        """In the order they started."""
        assert span.context is not None
        found = [s for s in self.spans if s.parent is not None and s.parent.span_id == span.context.span_id]
        return sorted(found, key=lambda s: s.start_time or 0)

    def child_names(self, span: ReadableSpan) -> list[str]:
        return [s.name for s in self.children(span)]
