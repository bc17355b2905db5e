"""A stdio server dies with flowctl even when flowctl cannot stop it: `flowctl run` is SIGKILLed while the server
is busy with a long call, and the server process goes away (Linux: PR_SET_PDEATHSIG)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.helpers import PYTHON, Flow, wait_until_gone

TIMEOUT = 60.0  # only keeps a broken test from hanging the suite


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_a_stdio_server_dies_when_flowctl_is_sigkilled(flow: Flow, tmp_path: Path) -> None:
    pipeline = flow.pipeline("long_tool_call.yaml")
    started = tmp_path / "started.txt"
    env = os.environ | flow.env()
    process = subprocess.Popen(
        [PYTHON, "-m", "flowctl", "run", str(pipeline), "--store", str(tmp_path / "runs.db")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not started.exists() or not started.read_text():  # the server is inside the long call
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the server never started the call"
            time.sleep(0.02)
        server_pid = int(started.read_text())
        assert flow.marker.encode() in Path(f"/proc/{server_pid}/cmdline").read_bytes()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT)
    assert wait_until_gone(flow.marker) == [], "the server outlived a SIGKILLed flowctl"
