"""The durability contract (issue 11), black-box through the CLI: `flowctl run` / `resume` / `runs` / `show` run as
subprocesses against the local OpenAI-compatible server, which runs in the test's process (so a test can script
answers between two commands and count the requests each command made).

What a user can rely on:
- never paid twice: an answer whose step was printed as succeeded is never asked for again by `resume`, however soon
  after that line the process is killed;
- `resume` gets out of a failed step: it asks the model again instead of replaying the answers that failed it;
- the attempts `show` reports for a step are the attempts its error message names;
- a killed run is `interrupted` (not `running`) in `runs` and `show`, which name the command that resumes it;
- a refused resume (the pipeline was edited) is said once, exits 2, and leaves the run as it was.

No assertion reads a clock: tests wait for output lines, server request counts and journal rows, with timeouts that
only keep a broken run from hanging the suite. The one sleep that is not a poll (before a SIGKILL) only varies where
the kill lands; a failure names its delay, and the seed that drew it reproduces it.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from flowctl.interpreter.engine.agent import MAX_BAD_ARGUMENTS
from tests.integration.helpers import CALC, KEY, PIPELINES, PYTHON, REPO, fill
from tests.support.openai_server import OpenAIServer, Reply, call, reply

TIMEOUT = 60.0  # seconds; only keeps a hung process from hanging the suite
STEPS = 6  # the agent steps of chain.yaml, s1 … s6
_CHAIN_PROMPT = re.compile(r"^Step (\d+) of the chain")
_RUN_LINE = re.compile(r"^(?:run|resuming) (\S+) \(")  # the reporter's first line names the run
_SUCCEEDED_LINE = re.compile(r"^\s+✓ (\S+) succeeded\b")
_ATTEMPTS = re.compile(r"failed after (\d+) attempt\(s\)")


# --- the model's side ----------------------------------------------------------------------------------------------


def chain_step(body: dict[str, Any]) -> str:
    """The chain step (`s1` … `s6`) a request body was sent for, from its user prompt."""
    prompt = next(m["content"] for m in body["messages"] if m["role"] == "user")
    match = _CHAIN_PROMPT.match(prompt)
    assert match, f"not a request of the chain: {prompt!r}"
    return f"s{match[1]}"


def chain_answer(body: dict[str, Any]) -> Reply:
    """The same answer for the same step, whichever process asks: a repeated call is counted, never answered
    differently."""
    return reply(f"answer-{chain_step(body)}")


class HeldAnswer:
    """A scripted answer that waits until the test releases it, so the run is inside this call while the test looks
    at it (and kills it)."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def __call__(self, body: dict[str, Any]) -> Reply:
        self.released.wait(TIMEOUT)
        return chain_answer(body)


# `add`'s arguments cut short: not JSON, so the agent loop counts them as unusable
BAD_ARGUMENTS = reply(tool_calls=[call("add", '{"a": 1, "b": ')])


# --- the CLI's side ------------------------------------------------------------------------------------------------


class Lines:
    """A process's stderr, read by a thread, so that waiting for a line has a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def next(self) -> str | None:
        """The next line; None once the stream has ended."""
        try:
            line = self._lines.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError("no progress line for a minute:\n" + "\n".join(self.seen)) from None
        if line is not None:
            self.seen.append(line)
        return line

    def until(self, pattern: re.Pattern[str]) -> re.Match[str]:
        while (line := self.next()) is not None:
            if match := pattern.match(line):
                return match
        raise AssertionError(f"the output ended before a line like {pattern.pattern!r}:\n" + "\n".join(self.seen))

    def rest(self) -> list[str]:
        """Every line, once the stream has ended."""
        while self.next() is not None:
            pass
        return self.seen


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@dataclass
class Cli:
    """Runs `flowctl` in subprocesses against `llm`, with a store of the test's own."""

    tmp_path: Path
    llm: OpenAIServer
    marker: str

    @property
    def store(self) -> Path:
        return self.tmp_path / "runs.db"

    def pipeline(self, name: str) -> Path:
        path = self.tmp_path / name
        template = (PIPELINES / name).read_text(encoding="utf-8")
        path.write_text(fill(template, python=PYTHON, calc=CALC, marker=self.marker), encoding="utf-8")
        return path

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "flowctl.cli", *args, "--store", str(self.store)]

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "OPENAI_BASE_URL": self.llm.base_url,
            "OPENAI_API_KEY": KEY,
            "PYTHONIOENCODING": "utf-8",  # the progress marks (✓) whatever the locale
            "PYTHONPATH": str(REPO),
        }

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            cwd=self.tmp_path,
            env=self.env(),
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=2 * TIMEOUT,
        )

    def start(self, pipeline: Path) -> subprocess.Popen[str]:
        """`flowctl run` with its progress lines (plain lines: stderr is a pipe) to read as they come."""
        return subprocess.Popen(
            self.command("run", str(pipeline)),
            cwd=self.tmp_path,
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )

    def show(self, run_id: str) -> dict[str, Any]:
        shown = self("show", run_id, "--output", "json")
        assert shown.returncode == 0, shown.stderr
        data: dict[str, Any] = json.loads(shown.stdout)
        return data

    def status(self, run_id: str) -> str:
        """The run's status as the store has it (`show` without starting a process)."""
        return str(self._query("SELECT status FROM runs WHERE run_id = ?", run_id))

    def journaled(self, run_id: str) -> int:
        """How many of the run's calls the store holds (what a resume would replay)."""
        return int(self._query("SELECT count(*) FROM calls WHERE run_id = ?", run_id))

    def step_rows(self, run_id: str) -> int:
        return int(self._query("SELECT count(*) FROM steps WHERE run_id = ?", run_id))

    def _query(self, sql: str, *params: Any) -> Any:
        with closing(sqlite3.connect(self.store)) as conn:
            (value,) = conn.execute(sql, params).fetchone()
        return value


@pytest.fixture
def cli(tmp_path: Path, llm: OpenAIServer, marker: str) -> Cli:
    return Cli(tmp_path, llm, marker)


@dataclass
class Killed:
    run_id: str
    printed: list[str]  # the steps printed as succeeded before the process died
    lines: list[str]


def kill(process: subprocess.Popen[str], lines: Lines, run_id: str) -> Killed:
    process.kill()  # SIGKILL: nothing more is written, flushed or committed
    process.wait(timeout=TIMEOUT)
    rest = lines.rest()  # what it printed before it died, including lines printed after the one we waited for
    printed = [match[1] for line in rest if (match := _SUCCEEDED_LINE.match(line))]
    return Killed(run_id, printed, rest)


def run_and_kill_after(cli: Cli, pipeline: Path, successes: int, delay: float) -> Killed:
    """Run the pipeline and SIGKILL it `delay` seconds after its `successes`-th "succeeded" line."""
    process = cli.start(pipeline)
    try:
        assert process.stderr is not None
        lines = Lines(process.stderr)
        run_id = lines.until(_RUN_LINE)[1]
        for _ in range(successes):
            lines.until(_SUCCEEDED_LINE)
        time.sleep(delay)  # not a synchronisation: only varies where the kill lands
        return kill(process, lines, run_id)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT)


@pytest.fixture
def killed_in_s4(cli: Cli) -> Iterator[Killed]:
    """The chain, killed while it waits for step s4's answer, once s1 … s3's answers are in the journal."""
    held = HeldAnswer()
    cli.llm.enqueue(chain_answer, chain_answer, chain_answer, held, *[chain_answer] * STEPS)
    process = cli.start(cli.pipeline("chain.yaml"))
    try:
        assert process.stderr is not None
        lines = Lines(process.stderr)
        run_id = lines.until(_RUN_LINE)[1]
        wait_for(lambda: cli.llm.request_count == 4 or process.poll() is not None, "the request of step s4")
        assert process.poll() is None, "\n".join(lines.rest())
        wait_for(lambda: cli.journaled(run_id) == 3, "the answers of s1, s2 and s3 in the journal")
        # step rows trail the journal by at most the recorder's background delay: s4 in flight is in the store then
        wait_for(lambda: cli.step_rows(run_id) == 4, "the row of s4, in flight")
        yield kill(process, lines, run_id)
    finally:
        held.released.set()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT)


# --- 1. never paid twice -------------------------------------------------------------------------------------------


SEEDS = (1, 2)  # kill delays of 6.7 ms and 47.8 ms


def _kill_cases() -> Iterator[Any]:
    """(successes, seed) for each kill: at once (seed None), or after a delay drawn from 0-50 ms by the seed."""
    for successes in (1, 3, STEPS):
        yield pytest.param(successes, None, id=f"after-{successes}-at-once")
        for seed in SEEDS:
            yield pytest.param(successes, seed, id=f"after-{successes}-seed-{seed}")


@pytest.mark.parametrize(("successes", "seed"), list(_kill_cases()))
def test_an_answer_printed_as_received_is_never_asked_for_again(cli: Cli, successes: int, seed: int | None) -> None:
    delay = 0.0 if seed is None else random.Random(seed).uniform(0.0, 0.05)
    cli.llm.enqueue(*[chain_answer] * (2 * STEPS))
    killed = run_and_kill_after(cli, cli.pipeline("chain.yaml"), successes, delay)
    assert len(killed.printed) >= successes, killed.lines

    if cli.status(killed.run_id) != "succeeded":  # the kill can land after the run's end
        resumed = cli("resume", killed.run_id, "--output", "json", "-q")
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["outputs"] == {"last": f"answer-s{STEPS}"}

    # over both processes; a request the kill cut off while it was being sent never reached the model whole
    asked = Counter(chain_step(body) for body in cli.llm.bodies if "messages" in body)
    assert set(asked) == {f"s{n}" for n in range(1, STEPS + 1)}
    asked_twice = {step: asked[step] for step in killed.printed if asked[step] != 1}
    assert asked_twice == {}, (
        f"killed {delay * 1000:.1f} ms after success #{successes}; steps printed as succeeded before the kill "
        f"that were asked for more than once (step: requests): {asked_twice}"
    )


# --- 2. resume gets out of a failed step ---------------------------------------------------------------------------


def fail_with_bad_arguments(cli: Cli) -> str:
    """Run bad_arguments.yaml against a model that only sends unusable tool arguments; the run fails. Its id."""
    cli.llm.enqueue(*[BAD_ARGUMENTS] * (MAX_BAD_ARGUMENTS + 1))
    first = cli("run", str(cli.pipeline("bad_arguments.yaml")), "--output", "json", "-q")
    assert first.returncode == 1, first.stderr
    outcome = json.loads(first.stdout)
    assert "unusable tool arguments" in outcome["error"]["message"], outcome["error"]
    assert cli.llm.request_count == MAX_BAD_ARGUMENTS + 1
    assert cli.llm.pending == 0
    return str(outcome["run_id"])


def test_resume_asks_the_model_again_for_a_step_that_failed(cli: Cli) -> None:
    run_id = fail_with_bad_arguments(cli)
    before = cli.llm.request_count
    cli.llm.enqueue(reply(tool_calls=[call("add", {"a": 1, "b": 2})]), reply("3"))  # the model does better now

    resumed = cli("resume", run_id, "--output", "json", "-q")

    assert cli.llm.request_count > before, "resume sent the model no new request for the failed step"
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["outputs"] == {"sum": "3"}
    assert cli.llm.pending == 0  # both new answers were used
    tool_reply = cli.llm.bodies[-1]["messages"][-1]
    assert (tool_reply["role"], tool_reply["content"]) == ("tool", "3.0")  # calc's add ran with the new arguments


# --- 3. attempts agree ---------------------------------------------------------------------------------------------


def test_the_attempts_shown_are_the_attempts_the_error_names(cli: Cli) -> None:
    run_id = fail_with_bad_arguments(cli)
    cli.llm.enqueue(*[BAD_ARGUMENTS] * (MAX_BAD_ARGUMENTS + 1))  # the model is no better the second time

    resumed = cli("resume", run_id, "--output", "json", "-q")
    assert resumed.returncode == 1, resumed.stderr
    error = json.loads(resumed.stdout)["error"]

    shown = cli.show(run_id)
    (step,) = [s for s in shown["steps"] if s["path"] == "add"]
    named = {
        "resume's error": _attempts_named(error["message"]),
        "resume's error (attempts field)": error["attempts"],
        "the run's error in show": _attempts_named(shown["error"]["message"]),
    }
    if step["error"]:
        named["the step's error in show"] = _attempts_named(step["error"]["message"])
    # docs/cli.md (resume): "a step that had failed and runs again counts one more attempt"
    assert step["attempts"] == 2
    assert named == dict.fromkeys(named, step["attempts"]), f"show says {step['attempts']} attempts"
    text = cli("show", run_id).stdout
    assert "  2 attempts" in text, text
    assert set(_ATTEMPTS.findall(text)) == {"2"}, text


def _attempts_named(message: str) -> int:
    match = _ATTEMPTS.search(message)
    assert match, message
    return int(match[1])


# --- 4. a killed run is interrupted --------------------------------------------------------------------------------


def test_a_killed_run_is_interrupted_and_runs_and_show_name_the_resume_command(cli: Cli, killed_in_s4: Killed) -> None:
    run_id = killed_in_s4.run_id

    listed = cli("runs", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["run_id"], r["status"]) for r in json.loads(listed.stdout)] == [(run_id, "interrupted")]
    listed_text = cli("runs")
    assert listed_text.stdout.startswith(f"{run_id}  interrupted "), listed_text.stdout
    store = f" --store {cli.store}"  # the store the commands were given, so the printed command reaches it
    assert f"`flowctl resume RUN_ID{store}` continues it" in listed_text.stderr

    assert cli.show(run_id)["status"] == "interrupted"
    shown = [line.strip() for line in cli("show", run_id).stdout.splitlines()]
    assert "interrupted" in shown[0].split(), shown
    assert f"the process running it is gone: `flowctl resume {run_id}{store}` continues it" in shown
    (in_flight,) = [line for line in shown if line.split()[1:2] == ["s4"]]
    assert in_flight.startswith("⊘ "), shown  # stopped with its process, not still going ("…")

    resumed = cli("resume", run_id, "--output", "json", "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["outputs"] == {"last": f"answer-s{STEPS}"}


# --- 5. a refused resume -------------------------------------------------------------------------------------------


@dataclass
class Refused:
    resumed: subprocess.CompletedProcess[str]
    before: dict[str, Any]  # `show --output json` before the resume...
    after: dict[str, Any]  # ...and after it


def resume_edited(cli: Cli, killed: Killed) -> Refused:
    """Edit the prompt of s2 (its answer is journaled) and resume: the resume is refused."""
    pipeline = cli.tmp_path / "chain.yaml"
    text = pipeline.read_text(encoding="utf-8")
    pipeline.write_text(text.replace("Step 2 of the chain,", "Step 2 of the chain, edited,"), encoding="utf-8")
    before, asked = cli.show(killed.run_id), cli.llm.request_count
    resumed = cli("resume", killed.run_id)  # with its progress lines: the refusal must still be said once
    assert cli.llm.request_count == asked  # nothing was asked
    return Refused(resumed, before, cli.show(killed.run_id))


def test_a_resume_refused_because_a_completed_step_was_edited_is_said_once_and_changes_nothing(
    cli: Cli, killed_in_s4: Killed
) -> None:
    refused = resume_edited(cli, killed_in_s4)

    stderr = refused.resumed.stderr
    assert refused.resumed.returncode == 2, stderr
    refusals = [line for line in stderr.splitlines() if "cannot resume" in line]
    assert len(refusals) == 1, stderr
    assert stderr.count("--force") == 1, stderr
    assert "revert the edit" in refusals[0] and "'s2'" in refusals[0], refusals[0]
    assert "(the run is left as it was)" in refusals[0]
    assert refused.after["steps"] == refused.before["steps"]
    for field in ("status", "outputs", "error", "input_tokens", "output_tokens", "cost", "events", "state_changes"):
        assert refused.after[field] == refused.before[field], field


def test_a_refused_resume_leaves_the_run_record_whole_as_it_was(cli: Cli, killed_in_s4: Killed) -> None:
    refused = resume_edited(cli, killed_in_s4)
    assert refused.resumed.returncode == 2, refused.resumed.stderr
    assert refused.after == refused.before
