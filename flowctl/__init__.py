"""flowctl: a declarative YAML workflow DSL with an async interpreter for LLM agents and MCP tools.

The Python API (guide: docs/python.md), for a web service or a notebook that embeds flowctl:

    import flowctl

    graph = flowctl.load("pipelines/review.yaml")          # InvalidPipeline(.diagnostics) when it has errors
    outcome = flowctl.run_sync(graph, {"document": "…"}, scripted="review.fixture.yaml")
    print(outcome.status, outcome.outputs)
    report = flowctl.read_run(outcome.run_id)              # what `flowctl show --output json` prints

`validate`, `load`, `run` / `run_sync`, `resume` / `resume_sync`, `signal`, `list_runs`, `read_run`,
`read_transcript` and `open_store` (a store by path or URL, see `flowctl.interpreter.persistence.locate`) are the
functions; the other names are the types they take and return. Everything is imported on first use, so
`import flowctl` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from flowctl.api import (
        InvalidPipeline,
        SignalSent,
        list_runs,
        load,
        read_run,
        read_transcript,
        resume,
        resume_sync,
        run,
        run_sync,
        signal,
        validate,
    )
    from flowctl.dsl.diagnostics import Diagnostic, Severity, Span
    from flowctl.dsl.ir import Graph
    from flowctl.interpreter.errors import FlowctlError, InputError
    from flowctl.interpreter.persistence.locate import open_store
    from flowctl.interpreter.persistence.store import AttemptRecord, ExchangeRecord, RunRecord, RunStatus, RunStore
    from flowctl.interpreter.persistence.store_errors import ClaimLost, RunBusy, StoreError
    from flowctl.interpreter.reporting import ModelCallSeen, Reporter, Retry, ToolCallSeen
    from flowctl.interpreter.runner import RunOutcome
    from flowctl.run_reports import TranscriptEntry

# name → the module that defines it: imported when the name is first used
_LAZY = {
    **dict.fromkeys(
        (
            "InvalidPipeline",
            "SignalSent",
            "list_runs",
            "load",
            "read_run",
            "read_transcript",
            "resume",
            "resume_sync",
            "run",
            "run_sync",
            "signal",
            "validate",
        ),
        "flowctl.api",
    ),
    **dict.fromkeys(("Diagnostic", "Severity", "Span"), "flowctl.dsl.diagnostics"),
    "Graph": "flowctl.dsl.ir",
    **dict.fromkeys(("FlowctlError", "InputError"), "flowctl.interpreter.errors"),
    "open_store": "flowctl.interpreter.persistence.locate",
    **dict.fromkeys(
        ("AttemptRecord", "ExchangeRecord", "RunRecord", "RunStatus", "RunStore"),
        "flowctl.interpreter.persistence.store",
    ),
    **dict.fromkeys(("ClaimLost", "RunBusy", "StoreError"), "flowctl.interpreter.persistence.store_errors"),
    **dict.fromkeys(("ModelCallSeen", "Reporter", "Retry", "ToolCallSeen"), "flowctl.interpreter.reporting"),
    "RunOutcome": "flowctl.interpreter.runner",
    "TranscriptEntry": "flowctl.run_reports",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flowctl' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "AttemptRecord",
    "ClaimLost",
    "Diagnostic",
    "ExchangeRecord",
    "FlowctlError",
    "Graph",
    "InputError",
    "InvalidPipeline",
    "ModelCallSeen",
    "Reporter",
    "Retry",
    "RunBusy",
    "RunOutcome",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "Severity",
    "SignalSent",
    "Span",
    "StoreError",
    "ToolCallSeen",
    "TranscriptEntry",
    "__version__",
    "list_runs",
    "load",
    "open_store",
    "read_run",
    "read_transcript",
    "resume",
    "resume_sync",
    "run",
    "run_sync",
    "signal",
    "validate",
]
