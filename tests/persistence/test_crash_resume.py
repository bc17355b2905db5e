"""Crash and resume at every kind of boundary, at the run level, for every backend: `flowctl run` (the scripted
provider) is killed with SIGKILL at a boundary the test observes through the store, then `flowctl resume` finishes
the run. The resumed run must succeed with the outputs of an uninterrupted run and ask no completed call again:
every call recorded before the kill is replayed (its record untouched), only the others are executed. `finally` is
the documented exception: it cleans up after each execution of the body, so a resumed run runs it for real, under
`finally@<epoch>/` (engine/context.py).

The run is held at its boundary by one call with a long scripted latency (the resumed run's fixture has none), so the
kill always lands while that call is in flight; the test waits for what the store shows at that point (rows and
calls the run has committed), never for time. "Between steps" is the nearest point the store shows: the first step
finished and the second started, its call in flight — the instant between the two commits is not observable from
outside the process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flowctl.interpreter.persistence.store import RunStatus, RunStore, StepStatus
from tests.persistence.backends import StoreFactory
from tests.persistence.helpers import poll

PIPELINE = Path(__file__).parent / "pipelines" / "boundaries.yaml"
FLOWCTL = str(Path(sys.executable).with_name("flowctl"))
HOLD = "600s"  # the held call: far longer than any test, so the kill always lands while it is in flight

ROOT_CALLS = [
    "first/llm#0",
    "second/llm#0",
    "looped/llm#0",
    "looped/turn#1/tool:calc.add#0",
    "looped/llm#2",
    "direct/tool:calc.multiply#0",
    *(f"fan[{index}]/llm#0" for index in range(4)),
    "approval/wait#0",
    "last/llm#0",
]  # and `finally`'s call, which a resumed run makes again under a key of its own (see below)
CHILD_CALLS = ["inner_a/llm#0", "inner_b/llm#0"]
OUTPUTS = {"looped": "three", "direct": {"product": 6}, "fan": ["item"] * 4, "nested": {"b": "B"}, "last": "L ann"}


def fixture(hold: str | None, *, looped_from_its_tool_result: bool = False) -> dict[str, Any]:
    """The scripted answers; `hold`: the one rule (or tool) that answers after HOLD. A resume that replays the tool
    loop's first turn asks only its last question."""
    looped: dict[str, Any] = {"prompt": "^add two"}
    if looped_from_its_tool_result:
        looped["reply"] = "three"
    else:
        looped["replies"] = [{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}, "three"]
    rules: dict[str, dict[str, Any]] = {
        "first": {"prompt": "^first$", "reply": "F"},
        "second": {"prompt": "^second", "reply": "S"},
        "looped": looped,
        "item 3": {"prompt": "^item 3$", "reply": "item"},
        "item": {"prompt": "^item ", "reply": "item"},
        "inner_a": {"prompt": "^inner a", "reply": "A"},
        "inner_b": {"prompt": "^inner b", "reply": "B"},
        "last": {"prompt": "^last ann ", "reply": "L ann"},
        "cleanup": {"prompt": "^cleanup$", "reply": "C"},
    }
    tools: dict[str, dict[str, Any]] = {"calc.add": {"value": {"sum": 3}}, "calc.multiply": {"value": {"product": 6}}}
    if hold == "looped's second question":
        looped["replies"][1] = {"content": "three", "latency": HOLD}
    elif hold in tools:
        tools[hold]["latency"] = HOLD
    elif hold is not None:
        rules[hold]["latency"] = HOLD
    return {"responses": list(rules.values()), "tools": tools}


def step_status(store: RunStore, run_id: str, path: str) -> StepStatus | None:
    return next((step.status for step in store.steps(run_id) if step.path == path), None)


def recorded(store: RunStore, run_id: str) -> dict[str, tuple[str, float]]:
    """Every call of the run tree the store holds: key → (request digest, when it was recorded)."""
    calls = {}
    for tree_run, keys in ((run_id, ROOT_CALLS), (f"{run_id}/nested", CHILD_CALLS)):
        for key in keys:
            call = store.lookup_call(tree_run, key)
            if call is not None:
                calls[f"{tree_run}:{key}"] = (call.request_digest, call.recorded_at)
    return calls


@dataclass(frozen=True)
class Boundary:
    name: str
    hold: str | None  # what the first run's fixture holds (None: the run waits for a signal not yet sent)
    reached: Callable[[RunStore, str], bool]  # what the store shows once the run is held there


BOUNDARIES = [
    Boundary(
        "between-steps",
        "second",
        lambda store, run: (
            step_status(store, run, "first") is StepStatus.SUCCEEDED
            and step_status(store, run, "second") is StepStatus.RUNNING
        ),
    ),
    Boundary(
        "inside-an-agent-step",  # its tool loop: one question and a tool call recorded, the next question in flight
        "looped's second question",
        lambda store, run: store.lookup_call(run, "looped/turn#1/tool:calc.add#0") is not None,
    ),
    Boundary(
        "inside-a-tool-step",
        "calc.multiply",
        lambda store, run: step_status(store, run, "direct") is StepStatus.RUNNING,
    ),
    Boundary(
        "inside-a-fan-out",  # three items done, the fourth in flight
        "item 3",
        lambda store, run: all(store.lookup_call(run, f"fan[{index}]/llm#0") is not None for index in (0, 1, 3)),
    ),
    Boundary(
        "inside-a-child-run",
        "inner_b",
        lambda store, run: store.lookup_call(f"{run}/nested", "inner_a/llm#0") is not None,
    ),
    Boundary(
        "waiting-for-a-signal", None, lambda store, run: step_status(store, run, "approval") is StepStatus.RUNNING
    ),
    Boundary(
        "inside-finally", "cleanup", lambda store, run: step_status(store, run, "finally/cleanup") is StepStatus.RUNNING
    ),
]


def flowctl(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([FLOWCTL, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def send_go(store_factory: StoreFactory, run_id: str, cwd: Path) -> None:
    sent = flowctl("signal", run_id, "go", "--data", '{"by": "ann"}', *store_factory.cli, cwd=cwd)
    _, err = sent.communicate(timeout=60)
    assert sent.returncode == 0, err


def write_fixture(path: Path, data: dict[str, Any]) -> str:
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def kill_at(boundary: Boundary, store_factory: StoreFactory, store: RunStore, tmp_path: Path) -> str:
    """`flowctl run`, SIGKILLed once the store shows the run held at `boundary`; its run id."""
    held = write_fixture(tmp_path / "held.json", fixture(boundary.hold))
    first = flowctl("run", str(PIPELINE), "--scripted", held, *store_factory.cli, "-q", "--output", "json",
                    cwd=tmp_path)  # fmt: skip
    try:
        poll(lambda: first.poll() is not None or store.list_runs(roots_only=True), what="the run's record")
        assert first.poll() is None, first.communicate()
        run_id = store.list_runs(roots_only=True)[0].run_id
        if boundary.hold is not None:  # the run passes its wait (a signal sent early waits for it)
            send_go(store_factory, run_id, tmp_path)
        poll(lambda: first.poll() is not None or boundary.reached(store, run_id), what=boundary.name)
        assert first.poll() is None, f"the run ended before it could be killed: {first.communicate()}"
        os.kill(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL
    return run_id


def resume(run_id: str, store_factory: StoreFactory, tmp_path: Path, *, replays_looped: bool) -> dict[str, Any]:
    """`flowctl resume` with answers and no hold; its JSON outcome."""
    answers = fixture(None, looped_from_its_tool_result=replays_looped)
    resume_fixture = write_fixture(tmp_path / "resume.json", answers)
    resumed = flowctl("resume", run_id, "--scripted", resume_fixture, *store_factory.cli, "-q", "--output", "json",
                      cwd=tmp_path)  # fmt: skip
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.parametrize("boundary", BOUNDARIES, ids=[boundary.name for boundary in BOUNDARIES])
def test_a_run_killed_at_a_boundary_resumes_without_asking_a_completed_call_again(
    store_factory: StoreFactory, tmp_path: Path, boundary: Boundary
) -> None:
    store = store_factory.open()
    run_id = kill_at(boundary, store_factory, store, tmp_path)
    before = recorded(store, run_id)
    run = store.get_run(run_id)
    assert run is not None and run.status is RunStatus.RUNNING  # killed: nobody finished it
    assert store.liveness(run_id).alive is False
    if boundary.hold is None:  # sent while the run is down: the resumed run gets it
        send_go(store_factory, run_id, tmp_path)

    result = resume(run_id, store_factory, tmp_path, replays_looped=f"{run_id}:looped/llm#0" in before)
    assert (result["status"], result["outputs"]) == ("succeeded", OUTPUTS)
    total = len(ROOT_CALLS) + len(CHILD_CALLS)
    assert _counts(result["calls"]) == {"executed": total - len(before) + 1, "replayed": len(before), "cached": 0}
    after = recorded(store, run_id)
    expected = {f"{run_id}:{key}" for key in ROOT_CALLS} | {f"{run_id}/nested:{key}" for key in CHILD_CALLS}
    assert set(after) == expected, expected - set(after)
    assert {key: after[key] for key in before} == before  # no completed call was asked or recorded again
    run = store.get_run(run_id)
    assert run is not None and (run.status, run.owner) == (RunStatus.SUCCEEDED, None)
    cleanups = {step.path: step.status for step in store.steps(run_id) if step.path.endswith("/cleanup")}
    assert [status for path, status in cleanups.items() if path.startswith("finally@")] == [StepStatus.SUCCEEDED]


def test_a_resumed_run_leaves_no_step_row_running(store_factory: StoreFactory, tmp_path: Path) -> None:
    store = store_factory.open()
    boundary = next(boundary for boundary in BOUNDARIES if boundary.name == "inside-finally")
    run_id = kill_at(boundary, store_factory, store, tmp_path)
    assert resume(run_id, store_factory, tmp_path, replays_looped=True)["status"] == "succeeded"
    for tree_run in (run_id, f"{run_id}/nested"):
        assert [step.path for step in store.steps(tree_run) if step.status is StepStatus.RUNNING] == []


def _counts(calls: dict[str, int]) -> dict[str, int]:
    """The journal's counts of `--output json`'s `calls` (`requests` and `failed` count what was sent)."""
    return {key: calls[key] for key in ("executed", "replayed", "cached")}


def test_a_run_stopped_while_waiting_shows_waiting_again_once_resumed(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    """SIGTERM (as a draining worker cancels what it hands on) marks the run and its wait cancelled; the resumed run
    replays up to the wait, which waits again: the run and the step show running while it waits (they showed
    cancelled until a call of its own), and the signal then finishes it."""
    store = store_factory.open()
    answers = write_fixture(tmp_path / "answers.json", fixture(None))
    first = flowctl("run", str(PIPELINE), "--scripted", answers, *store_factory.cli, "-q", cwd=tmp_path)
    resumed = None
    try:
        poll(lambda: first.poll() is not None or store.list_runs(roots_only=True), what="the run's record")
        run_id = store.list_runs(roots_only=True)[0].run_id
        reached = BOUNDARIES[5]
        assert reached.name == "waiting-for-a-signal"
        poll(lambda: first.poll() is not None or reached.reached(store, run_id), what="the wait")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 128 + signal.SIGTERM
        run = store.get_run(run_id)
        assert run is not None and run.status is RunStatus.CANCELLED
        assert step_status(store, run_id, "approval") is StepStatus.CANCELLED

        resumed = flowctl("resume", run_id, "--scripted", answers, *store_factory.cli, "-q", "--output", "json",
                          cwd=tmp_path)  # fmt: skip
        poll(lambda: resumed.poll() is not None or reached.reached(store, run_id), what="the wait, resumed")
        assert resumed.poll() is None, resumed.communicate()
        shown = subprocess.run([FLOWCTL, "show", run_id, *store_factory.cli, "--output", "json"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        report = json.loads(shown.stdout)
        assert report["status"] == "running"
        assert [step["status"] for step in report["steps"] if step["path"] == "approval"] == ["running"]
        listed = subprocess.run([FLOWCTL, "runs", *store_factory.cli, "--output", "json"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        assert [run["status"] for run in json.loads(listed.stdout) if run["run_id"] == run_id] == ["running"]

        send_go(store_factory, run_id, tmp_path)
        out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err
        assert (json.loads(out)["status"], json.loads(out)["outputs"]) == ("succeeded", OUTPUTS)
    finally:
        for process in (first, resumed):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate(timeout=30)
