"""What the conformance tests share: runs and writes to commit, owner ids that are alive, dead or on another host,
and the worker subprocess (worker.py) that stands for another process using the same store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from flowctl.interpreter.persistence.owners import this_process
from flowctl.interpreter.persistence.store import Claim, RunRecord, RunStatus, RunStore
from tests.persistence.backends import StoreFactory

REPO = Path(__file__).resolve().parents[2]

ALIVE = this_process()  # this test process: alive for as long as the test runs
DEAD = f"{socket.gethostname()}:4194305"  # past the kernel's largest pid: no such process can exist
ELSEWHERE = "elsewhere.invalid:7"  # another host's owner: alive only while its heartbeat is younger than the lease


def root_record(run_id: str = "r-1", started_at: float = 1000.0) -> RunRecord:
    return RunRecord(run_id, "demo", "demo.yaml", RunStatus.RUNNING, started_at, source_digest="digest")


def create(store: RunStore, run_id: str = "r-1", owner: str = ALIVE, *, started_at: float = 1000.0) -> Claim:
    """A root run, running and claimed by `owner`, with inputs {"topic": "x"}."""
    return store.create_run(root_record(run_id, started_at), json.dumps({"topic": "x"}), None, owner)


def jtext(value: Any) -> str:
    return json.dumps(value)


# -- the worker subprocess -------------------------------------------------------------------------------------------


def spawn(factory: StoreFactory, action: str, *args: str) -> subprocess.Popen[str]:
    """worker.py in a process of its own, with its own handle on the store; it talks in lines on stdin/stdout."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.persistence.worker", factory.spec_json, action, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(process: subprocess.Popen[str]) -> str:
    """The worker's next line (it blocks until the worker says something or exits)."""
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line:
        process.wait(timeout=30)
        raise AssertionError(f"the worker said nothing (exit {process.returncode}): {_stderr(process)}")
    return line


def tell(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


def finish(process: subprocess.Popen[str]) -> str:
    """Close the worker's stdin (it ends) and return the rest of what it said."""
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return out


def kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL: no cleanup, no chance to write anything more; reaped, so its pid is gone."""
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL


def _stderr(process: subprocess.Popen[str]) -> str:
    return process.stderr.read() if process.stderr is not None else ""


def poll(condition: Any, *, what: str, timeout: float = 60.0) -> Any:
    """Poll `condition()` until it is truthy; the timeout is a safety net for a broken test, never reached when
    things work."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
