"""The Python API (`import flowctl`, docs/python.md): load and validate with diagnostics as objects, run (async and
sync) on a real SQLite store, cancel, signal and resume, read a run and its transcript; process-wide settings are left
alone; `import flowctl` stays cheap; the API type-checks as an embedder uses it."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import flowctl

ROOT = Path(__file__).parents[2]
PIPELINES = ROOT / "pipelines"
APPROVAL = ROOT / "tests" / "interpreter" / "pipelines" / "approval.yaml"
APPROVAL_FIXTURE = APPROVAL.with_name("approval.fixture.yaml")
MULTI = PIPELINES / "multi_analysis.yaml"
MULTI_FIXTURE = PIPELINES / "multi_analysis.fixture.yaml"


def test_validate_returns_diagnostics_and_load_raises_with_them(tmp_path: Path) -> None:
    assert flowctl.validate(MULTI) == []
    bad = tmp_path / "bad.yaml"
    bad.write_text("flowctl: 1\nname: bad\nsteps:\n  - id: a\n    agent: nobody\n    prompt: hi\n")
    problems = flowctl.validate(bad)
    assert [(d.code, d.span.line, d.severity) for d in problems] == [("unknown-agent", 5, flowctl.Severity.ERROR)]
    with pytest.raises(flowctl.InvalidPipeline) as raised:
        flowctl.load(bad)
    assert raised.value.diagnostics == problems
    assert f"{bad}:5:" in str(raised.value) and "nobody" in str(raised.value)


def test_run_sync_journals_a_run_the_store_lists_and_reports(tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    outcome = flowctl.run_sync(MULTI, store=store, scripted=MULTI_FIXTURE)
    assert outcome.status is flowctl.RunStatus.SUCCEEDED, outcome.error
    assert outcome.outputs is not None and outcome.outputs["meta_analysis"]
    listed = flowctl.list_runs(store=store)
    assert [(r["run_id"], r["status"]) for r in listed] == [(outcome.run_id, "succeeded")]
    report = flowctl.read_run(outcome.run_id, store=str(store))
    assert report["outputs"] == outcome.outputs
    assert {step["path"] for step in report["steps"]} >= {"analyses", "meta_analysis"}
    entries = flowctl.read_transcript(outcome.run_id, store=store)
    assert entries and all(e.record.kind in ("model", "tool", "wait") for e in entries if hasattr(e.record, "kind"))
    only = flowctl.read_transcript(outcome.run_id, store=store, step="meta_analysis")
    assert only and {e.step for e in only} == {"meta_analysis"}
    with pytest.raises(flowctl.InputError, match="no run 'nope'"):
        flowctl.read_run("nope", store=store)


def test_an_api_run_leaves_the_collector_and_the_switch_interval_alone(tmp_path: Path) -> None:
    interval, threshold = sys.getswitchinterval(), gc.get_threshold()
    seen: list[tuple[int, float, tuple[int, int, int]]] = []

    class Watch(flowctl.Reporter):
        def step_started(self, run_id: str, path: str, kind: str, attempt: int) -> None:
            seen.append((gc.get_freeze_count(), sys.getswitchinterval(), gc.get_threshold()))

    outcome = flowctl.run_sync(MULTI, store=tmp_path / "runs.db", scripted=MULTI_FIXTURE, reporter=Watch())
    assert outcome.status is flowctl.RunStatus.SUCCEEDED
    assert seen and all(s == (0, interval, threshold) for s in seen)  # during the run too
    assert (gc.get_freeze_count(), sys.getswitchinterval(), gc.get_threshold()) == (0, interval, threshold)


@pytest.mark.anyio
async def test_cancel_signal_and_resume(tmp_path: Path) -> None:
    """A task cancelled while the run waits for a signal leaves it cancelled and resumable; the signal sent through
    the API is taken on resume."""
    store = tmp_path / "runs.db"
    waiting = anyio.Event()
    run_ids: list[str] = []

    class Watch(flowctl.Reporter):
        def run_started(self, run_id: str, pipeline: str, resumed: bool) -> None:
            run_ids.append(run_id)

        def waiting(self, run_id: str, path: str, event: str) -> None:
            waiting.set()

    async with anyio.create_task_group() as tg:

        async def go() -> None:
            await flowctl.run(APPROVAL, store=store, scripted=APPROVAL_FIXTURE, reporter=Watch())

        tg.start_soon(go)
        await waiting.wait()
        tg.cancel_scope.cancel()
    (run_id,) = run_ids
    assert flowctl.read_run(run_id, store=store)["status"] == "cancelled"
    sent = flowctl.signal(run_id, "approved", {"by": "ana"}, store=store)
    assert (sent.target, sent.status) == (run_id, "cancelled")
    outcome = await flowctl.resume(run_id, store=store)  # offline again: the run started with a fixture
    assert outcome.status is flowctl.RunStatus.SUCCEEDED, outcome.error
    assert outcome.outputs == {"approval": {"by": "ana"}, "published": "published"}
    assert outcome.calls_replayed == 1  # the draft was not asked again


def test_bad_inputs_raise_before_anything_is_journaled(tmp_path: Path) -> None:
    store = tmp_path / "runs.db"
    with pytest.raises(flowctl.InputError, match="document"):
        flowctl.run_sync(MULTI, {"document": ""}, store=store, scripted=MULTI_FIXTURE)
    assert flowctl.list_runs(store=store) == []


PROBE = """
import sys, flowctl
flowctl.validate(sys.argv[1]); flowctl.load(sys.argv[1]); flowctl.Diagnostic; flowctl.Graph
print(sorted({m.split(".")[0] for m in sys.modules} & {"anyio", "openai", "mcp", "opentelemetry", "sqlite3"}))
"""


def test_import_validate_and_load_stay_light() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, str(MULTI)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_api_type_checks_and_runs_as_an_embedder_uses_it(tmp_path: Path) -> None:
    example = Path(__file__).with_name("example_api_use.py")
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent", str(example)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ran = subprocess.run(
        [sys.executable, str(example), str(MULTI), str(MULTI_FIXTURE), str(tmp_path / "runs.db")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ran.stdout.split() == ["succeeded", *ran.stdout.split()[1:]]
    assert ran.stdout.split()[-3:] == ["True", "True", "meta_analysis:succeeded"]
