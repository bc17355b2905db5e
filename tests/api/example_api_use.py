"""A small program using the Python API the way docs/python.md shows; `test_python_api.py` runs mypy --strict on it
(and runs it), so the API's types are checked as an embedder sees them."""

from __future__ import annotations

import sys

import anyio

import flowctl


class Steps(flowctl.Reporter):
    def __init__(self) -> None:
        self.finished: list[str] = []

    def step_finished(self, run_id: str, path: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        self.finished.append(f"{path}:{status}")


def main(pipeline: str, fixture: str, store: str) -> int:
    problems: list[flowctl.Diagnostic] = flowctl.validate(pipeline)
    errors = [d for d in problems if d.severity is flowctl.Severity.ERROR]
    if errors:
        print("\n".join(str(d) for d in errors))
        return 1
    graph: flowctl.Graph = flowctl.load(pipeline)
    steps = Steps()
    outcome: flowctl.RunOutcome = flowctl.run_sync(graph, {}, store=store, scripted=fixture, reporter=steps)
    status: flowctl.RunStatus = outcome.status
    outputs = outcome.outputs or {}

    async def again() -> flowctl.RunOutcome:
        return await flowctl.run(graph, store=store, scripted=fixture)

    second = anyio.run(again)
    report = flowctl.read_run(outcome.run_id, store=store)
    entries: list[flowctl.TranscriptEntry] = flowctl.read_transcript(outcome.run_id, store=store)
    listed = [run["run_id"] for run in flowctl.list_runs(5, store=store)]
    shown = [status.value, sorted(outputs), report["status"], len(entries) > 0, second.run_id in listed]
    print(*shown, steps.finished[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
