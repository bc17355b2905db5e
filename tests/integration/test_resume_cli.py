"""Durability through the CLI: a run with tool calls is killed with SIGKILL mid-run and resumed; the resumed run
repeats neither the LLM calls nor the tool calls that had completed.

Everything runs in separate processes, as in production: the OpenAI-compatible server
(`python -m tests.support.openai_server`, recording each request it receives), `flowctl run` / `flowctl resume`,
and the calc MCP server the CLI starts, whose `append` tool writes one line per call to a file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flowctl import open_store
from flowctl.interpreter.persistence.store import RunStatus
from tests.integration.helpers import CALC, KEY, PIPELINES, PYTHON, REPO, fill, wait_until_gone

SCRIPT = [
    {"tool_calls": [{"name": "append", "arguments": {"path": "@LOG@", "text": "one"}}], "usage": [10, 5]},
    {"tool_calls": [{"name": "append", "arguments": {"path": "@LOG@", "text": "two"}}], "usage": [10, 5]},
    {"content": "logged both", "delay": 60},  # the run is killed while it waits for this answer
    {"content": "logged both", "usage": [10, 5]},  # the resumed run asks again: this is its answer
    {"content": "done", "usage": [10, 5]},
]


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def openai_process(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The scripted OpenAI-compatible server in its own process; yields (base URL, recorded requests file)."""
    log = tmp_path / "side-effects.log"
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT).replace("@LOG@", str(log)), encoding="utf-8")
    record = tmp_path / "requests.jsonl"
    command = [sys.executable, "-m", "tests.support.openai_server", "--port", "0", "--script", str(script)]
    process = subprocess.Popen([*command, "--record", str(record)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:"), base_url
        yield base_url, record
    finally:
        process.kill()
        process.wait(timeout=5)


def test_killed_run_resumes_without_repeating_completed_llm_or_tool_calls(
    tmp_path: Path, openai_process: tuple[str, Path], marker: str, store_url: str
) -> None:
    base_url, record = openai_process
    log, store = tmp_path / "side-effects.log", store_url
    pipeline = tmp_path / "resume.yaml"
    template = (PIPELINES / "resume.yaml").read_text(encoding="utf-8")
    pipeline.write_text(fill(template, python=PYTHON, calc=CALC, marker=marker), encoding="utf-8")
    env = {**os.environ, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": KEY}
    run = [sys.executable, "-m", "flowctl.cli", "run", str(pipeline), "-i", f"log={log}", "--store", str(store)]

    first = subprocess.Popen([*run, "-q"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(lines(record)) == 3 or first.poll() is not None, 60, "the third LLM request")
        assert first.poll() is None, first.stderr.read() if first.stderr else ""
        assert lines(log) == ["one", "two"]  # both tool calls completed before the kill
        first.kill()  # SIGKILL: no cleanup, no chance to record anything more
        first.wait(timeout=5)
    finally:
        if first.poll() is None:
            first.kill()
    assert wait_until_gone(marker) == [], "the killed run's MCP server outlived it"

    with open_store(store, access="read") as opened:
        [killed] = opened.list_runs(roots_only=True)
    run_id = killed.run_id
    assert killed.status is RunStatus.RUNNING  # killed: nobody marked it finished
    # ...which `runs` and `show` tell from a run still going: its process is gone
    listed = subprocess.run(
        [sys.executable, "-m", "flowctl.cli", "runs", "--store", str(store), "--output", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert [r["status"] for r in json.loads(listed.stdout)] == ["interrupted"], listed.stderr
    shown = subprocess.run(
        [sys.executable, "-m", "flowctl.cli", "show", run_id, "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert "interrupted" in shown.stdout.splitlines()[0]
    resume = f"flowctl resume {run_id} --store {store}"  # the store `show` was given, so the command reaches it
    assert f"the process running it is gone: `{resume}` continues it" in shown.stdout

    resumed = subprocess.run(
        [sys.executable, "-m", "flowctl.cli", "resume", run_id, "--store", str(store), "--output", "json", "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert resumed.returncode == 0, resumed.stderr
    outcome = json.loads(resumed.stdout)
    assert outcome["status"] == "succeeded"
    assert outcome["outputs"] == {"logged": "logged both", "closing": "done"}

    requests = [json.loads(line) for line in lines(record)]
    assert len(requests) == 5  # 3 before the kill + the one that was in flight + the second step's
    assert requests[3] == requests[2]  # the resumed run re-asked only the call that never completed
    assert [m["role"] for m in requests[3]["messages"]] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert lines(log) == ["one", "two"]  # no tool call ran twice
    assert outcome["calls"] == {"executed": 2, "replayed": 4, "cached": 0, "requests": 2, "failed": 0}
    # the run's usage counts each completed LLM call once, whichever process made it
    assert (outcome["usage"]["input_tokens"], outcome["usage"]["output_tokens"]) == (40, 20)
