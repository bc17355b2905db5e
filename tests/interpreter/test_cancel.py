"""Cancellation: SIGINT / SIGTERM to `flowctl run` while a real stdio MCP server is in the middle of a tool call.
The CLI exits 130 / 143, the store says the run (and the interrupted step) was cancelled, and no process is left.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest

from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus, StepStatus
from tests.interpreter.pipelines.harness import HERE, flowctl, poll, query

CALC = Path(__file__).parents[1] / "support" / "mcp_servers" / "calc_server.py"


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie has exited: only its exit status remains)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def marked(marker: str) -> list[int]:
    """Live processes whose environment holds the marker (the MCP server this test started, and nothing else)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"FLOWCTL_TEST_MARKER={marker}".encode() in environ and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == str(pid) and fields[0] != "Z":
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupt_cancels_the_run_and_leaves_no_process(tmp_path: Path, signum: int, code: int) -> None:
    marker = uuid.uuid4().hex
    pipeline = tmp_path / "cancel_mcp.yaml"
    template = (HERE / "cancel_mcp.yaml.template").read_text()
    pipeline.write_text(template.format(python=sys.executable, server=CALC, marker=marker))
    db = tmp_path / "runs.db"
    run = flowctl("run", str(pipeline), "--store", str(db), "--quiet")
    try:
        # the 30 s call is in flight once `nap` has started; `who` has recorded the server's pid by then
        poll(
            lambda: run.poll() is not None or query(db, "SELECT 1 FROM steps WHERE path = 'nap'"),
            what="the slow tool call to start",
        )
        assert run.poll() is None, run.communicate()
        (output,) = query(db, "SELECT output FROM steps WHERE path = 'who'")[0]
        server = int(json.loads(output)["result"])
        assert alive(server) and marked(marker) == [server]
        assert server in children_of(run.pid)
        os.kill(run.pid, signum)
        _, stderr = run.communicate(timeout=20)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == code, stderr
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    (run_id,) = query(db, "SELECT run_id FROM runs")[0]
    with SqliteRunStore(db) as store:
        record = store.get_run(run_id)
        assert record is not None and record.status is RunStatus.CANCELLED
        steps = {s.path: s for s in store.steps(run_id)}
        assert steps["who"].status is StepStatus.SUCCEEDED
        assert steps["nap"].status is StepStatus.CANCELLED
    assert not alive(server)
    assert marked(marker) == []
