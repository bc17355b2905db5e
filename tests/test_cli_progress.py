"""What `flowctl run` shows while it runs, in a real pseudo-terminal of a given size (pty + the pyte terminal
emulator read back what the screen and its scrollback end up holding), and as plain lines when stderr is a pipe."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Callable
from pathlib import Path

import pyte
import pytest

from flowctl.interpreter.providers.llm import CompletionRequest, CompletionResponse, Message
from flowctl.interpreter.reporting import ModelCallSeen
from flowctl.progress import TtyReporter, display_width

FLOWCTL = [str(Path(sys.executable).parent / "flowctl")]  # the installed command, beside this interpreter
STATUS = re.compile(r"^\s*\d+\.\ds  ")  # how the live status line starts (the elapsed time)

LONG = """\
flowctl: 1
name: long
agents:
  a: {instruction: x}
steps:
  - id: a_really_long_step_identifier_for_the_first_analysis_of_the_day
    parallel:
      - {id: branch_number_one_with_a_rather_long_name, agent: a, prompt: "1"}
      - {id: branch_number_two_with_a_rather_long_name, agent: a, prompt: "2"}
      - {id: branch_number_three_with_a_rather_long_name, agent: a, prompt: "3"}
  - id: fan_out_over_many_items_with_a_long_name
    agent: a
    for_each: "{{ range(24) | list }}"
    prompt: "{{ item }}"
"""


class Terminal:
    """`flowctl` run in a pseudo-terminal of `columns` × `rows`; the bytes it wrote, and what an emulated terminal
    shows of them (scrollback included)."""

    def __init__(self, args: list[str], cwd: Path, columns: int, rows: int = 24) -> None:
        self.columns, self.rows = columns, rows
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        env = {**os.environ, "COLUMNS": str(columns), "LINES": str(rows), "PYTHONIOENCODING": "utf-8"}
        env.pop("FLOWCTL_STORE", None)
        self.proc = subprocess.Popen([*FLOWCTL, *args], cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        self.master = master
        self.raw = b""

    def read_until(self, done: Callable[[bytes], bool], limit: float = 120.0) -> bytes:
        """Read what the command writes until `done(everything so far)` or the command ends."""
        while not done(self.raw):
            ready, _, _ = select.select([self.master], [], [], limit)
            if not ready:
                raise AssertionError(f"nothing written for {limit}s:\n{self.raw.decode(errors='replace')}")
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the command ended and closed the terminal
                break
            if not chunk:
                break
            self.raw += chunk
        return self.raw

    def finish(self) -> int:
        self.read_until(lambda _: False)
        os.close(self.master)
        return self.proc.wait(timeout=60)

    def screen(self) -> list[str]:
        """Every line the terminal holds at the end, scrollback first, trailing blank lines dropped."""
        screen = pyte.HistoryScreen(self.columns, self.rows, history=100_000)
        stream = pyte.ByteStream(screen)
        stream.feed(self.raw)
        history = ["".join(line[x].data for x in range(self.columns)).rstrip() for line in screen.history.top]
        lines = history + [line.rstrip() for line in screen.display]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    def status_draws(self) -> list[str]:
        """Each status line as written: what follows a clear-line and is not ended by a newline."""
        text = self.raw.decode("utf-8", errors="replace")
        pieces = text.split("\r\x1b[2K")
        return [p for p in pieces if p and "\n" not in p and STATUS.match(p)]


@pytest.mark.parametrize("columns", [80, 60])
def test_the_status_line_fits_the_terminal_and_leaves_no_lines_behind(tmp_path: Path, columns: int) -> None:
    (tmp_path / "long.yaml").write_text(LONG)
    (tmp_path / "fx.yaml").write_text("responses:\n  - {reply: ok, latency: 50ms}\n")
    term = Terminal(["run", "long.yaml", "--scripted", "fx.yaml", "--store", "runs.db"], tmp_path, columns)
    assert term.finish() == 0
    draws = term.status_draws()
    assert draws  # at least after the run's first line
    assert all(display_width(d) <= columns - 1 for d in draws), max(draws, key=display_width)
    screen = term.screen()
    assert not [line for line in screen if STATUS.match(line)]  # no status line left in the scrollback
    start = next(i for i, line in enumerate(screen) if line.startswith("run r-"))
    finish = next(i for i, line in enumerate(screen) if re.match(r"r-\w+ succeeded in", line))
    # between the run's first and last lines only what was said once: the fan-out held back (16 calls at once)
    between = "".join(screen[start + 1 : finish]).replace(" ", "")  # lines wrap at any character
    assert between == "⏸fan_out_over_many_items_with_a_long_name:heldbackbytherun'sconcurrencycap(16callsatonce);" + (
        "raise`concurrency:`inthepipelinetorunmoreatonce"
    )
    assert screen[-1] == "{}"  # the outputs, then nothing


def test_a_retry_shows_its_reason_and_wait_and_ctrl_c_names_the_resume_command(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: slow\nagents:\n  a: {instruction: x}\nsteps:\n"
        "  - {id: plan, agent: a, prompt: go, retry: {max_attempts: 3, initial_delay: 10ms, max_delay: 20m}}\n"
    )
    (tmp_path / "fx.yaml").write_text(
        "responses:\n  - replies: [{error: rate_limit, retry_after: 600}, ok]\ndefault: ok\n"
    )
    store = tmp_path / "my runs.db"
    term = Terminal(["run", "p.yaml", "--scripted", "fx.yaml", "--store", str(store)], tmp_path, 80)
    term.read_until(lambda raw: b"(attempt 2/3 in " in raw)  # the countdown in the status line
    screen = term.screen()
    assert any("↻ plan attempt 2/3 after rate-limited, retrying in 600s" in line for line in screen), screen
    assert re.search(r"plan \(attempt 2/3 in (600|59\d)s\)", screen[-1]), screen[-1]
    term.proc.send_signal(signal.SIGINT)
    assert term.finish() == 130
    text = "\n".join(term.screen())
    run_id = re.search(r"run (r-\w+) \(slow\)", text)
    assert run_id is not None
    quoted = f"'{store}'"  # the path has a space: quoted for the shell
    assert f"resume it with `flowctl resume {run_id.group(1)} --store {quoted}`" in text.replace("\n", "")


def test_a_wait_step_prints_the_signal_command_that_releases_it(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: gate\nsteps:\n  - {id: approval, wait: {event: approved, timeout: 10m}}\n"
        "outputs:\n  by: '{{ steps.approval.output.by }}'\n"
    )
    term = Terminal(["run", "p.yaml", "--store", "runs.db"], tmp_path, 200)
    term.read_until(lambda raw: b"approved --store runs.db\r\n" in raw)
    line = next(line for line in term.screen() if "waits for event" in line)
    command = line.split("send it with: ", 1)[1]
    assert re.fullmatch(r"flowctl signal r-\w+ approved --store runs\.db", command), command
    sent = subprocess.run(
        [*FLOWCTL, *command.split()[1:], "--data", '{"by": "alice"}'], cwd=tmp_path, capture_output=True, text=True
    )
    assert sent.returncode == 0, sent.stderr
    assert term.finish() == 0
    assert '"by": "alice"' in "\n".join(term.screen())


def plain(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`flowctl ARGS` with stderr a pipe: plain progress lines."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("FLOWCTL_STORE", None)
    return subprocess.run([*FLOWCTL, *args], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)


def test_a_failed_run_says_its_error_once_and_ends_with_a_summary(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: fail\nagents:\n  a: {instruction: x}\nsteps:\n"
        "  - {id: first, agent: a, prompt: one}\n"
        "  - id: grp\n    parallel:\n"
        "      - {id: inner, agent: a, prompt: two, retry: {max_attempts: 2, initial_delay: 1ms}}\n"
    )
    (tmp_path / "fx.yaml").write_text("responses:\n  - {step: inner, reply: {error: unavailable}}\ndefault: ok\n")
    result = plain(tmp_path, "run", "p.yaml", "--scripted", "fx.yaml", "--store", "runs.db")
    assert result.returncode == 1
    err = result.stderr
    assert err.count("scripted unavailable error for agent 'a', step 'inner'") == 2  # the retry line, the failure
    assert "  ✗ inner failed in" in err and "  ✗ grp failed in" in err and "(after inner failed)" in err
    assert "failed: step inner failed (its error is above)" in err
    lines = err.splitlines()
    end = next(i for i, line in enumerate(lines) if re.match(r"r-\w+ failed in [\d.]+s, \d+ tokens$", line))
    summary = lines[end + 1 : end + 4]
    assert summary[0].split() == ["step", "time", "tokens", "attempts"]
    assert summary[1].split()[:2] == ["✓", "first"] and summary[1].split()[-1] == "1"
    assert summary[2].split()[:2] == ["✗", "grp"]
    quiet = plain(tmp_path, "run", "p.yaml", "--scripted", "fx.yaml", "--store", "runs.db", "-q")
    assert quiet.stderr.count("scripted unavailable error") == 1  # no progress: said by the closing line


def test_a_fan_out_held_back_by_the_concurrency_cap_is_said_once(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: capped\nconcurrency: 2\nagents:\n  a: {instruction: x}\nsteps:\n"
        '  - {id: fan, agent: a, for_each: "{{ range(8) | list }}", prompt: "{{ item }}"}\n'
    )
    (tmp_path / "fx.yaml").write_text("responses:\n  - {reply: ok, latency: 20ms}\n")
    result = plain(tmp_path, "run", "p.yaml", "--scripted", "fx.yaml", "--store", "runs.db", "--events", "e.jsonl")
    assert result.returncode == 0, result.stderr
    held = [line for line in result.stderr.splitlines() if "⏸" in line]
    assert held == [
        "  ⏸ fan: held back by the run's concurrency cap (2 calls at once); raise `concurrency:` in the pipeline "
        "to run more at once"
    ]
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert {e["cap"] for e in events if e["type"] == "held_back"} == {2}


def test_the_event_log_holds_what_happened_when_the_run_is_killed(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: gate\nagents:\n  a: {instruction: x}\nsteps:\n  - {id: first, agent: a, prompt: go}\n"
        "  - {id: approval, wait: {event: approved, timeout: 10m}}\n"
    )
    (tmp_path / "fx.yaml").write_text("default: ok\n")
    args = ["run", "p.yaml", "--scripted", "fx.yaml", "--store", "runs.db", "--events", "e.jsonl"]
    proc = subprocess.Popen([*FLOWCTL, *args], cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert proc.stderr is not None
    for line in proc.stderr:  # the progress line that says the run waits: the event log has it by then
        if b"waits for event" in line:
            break
    proc.kill()
    proc.wait()
    types = [json.loads(line)["type"] for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert types == ["run_started", "step_started", "model_call", "step_finished", "step_started", "waiting"]


def test_streamed_text_scrolls_above_the_status_line_on_a_terminal() -> None:
    """`--stream` on a terminal (the reporter driven directly: the scripted provider does not stream)."""
    out = io.StringIO()
    reporter = TtyReporter(out, stream_text=True)
    reporter.width = 40
    reporter.run_started("r-1", "s", False)
    reporter.step_started("r-1", "plan", "agent", 1)
    words = "a streamed answer that is much longer than the terminal is wide, " * 2
    for i in range(0, len(words), 7):
        reporter.model_text("r-1", "plan", words[i : i + 7])
    reporter.model_text("r-1", "plan", "\nlast line")
    assert reporter.wait_drawn(reporter.draws + 1)
    while_streaming = _screen(out.getvalue(), 40)
    assert while_streaming[-1] == "    last line"  # the line so far, where the status line goes
    reporter.model_call("r-1", "plan", _answer("plan"))
    assert reporter.wait_drawn(reporter.draws + 1)
    screen = _screen(out.getvalue(), 40)
    reporter.close()
    streamed = screen[screen.index("  ✎ plan:") + 1 : -1]
    assert all(len(line) <= 39 for line in screen)
    assert " ".join(line.strip() for line in streamed) == words.strip() + " last line"
    assert STATUS.match(screen[-1]) and "plan" in screen[-1]  # the status line, below what streamed


def _answer(path: str) -> ModelCallSeen:
    request = CompletionRequest("gpt-x", (Message("user", "go"),), step=path)
    return ModelCallSeen(f"{path}/llm#0", 1, "openai", request, CompletionResponse("…"), None, 0.0, 0.1)


def _screen(text: str, columns: int) -> list[str]:
    screen = pyte.HistoryScreen(columns, 24, history=1000)
    pyte.Stream(screen).feed(text.replace("\n", "\r\n"))  # what the terminal driver does to a newline
    lines = ["".join(line[x].data for x in range(columns)).rstrip() for line in screen.history.top]
    lines += [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return lines
