"""Plain progress lines (stderr not a terminal): every step's start and finish, except that a wide fan-out's items
go quiet after the first ITEMS_REPORTED unless they fail or retry, and the fan-out's own line sums them up."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from flowctl.dsl.frontend import load_pipeline
from flowctl.interpreter.errors import ProviderUnavailable
from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import RunStatus
from flowctl.interpreter.providers.llm import CompletionRequest, CompletionResponse, Message, Usage
from flowctl.interpreter.providers.scripted import Fixture
from flowctl.interpreter.reporting import ModelCallSeen, Reporter, Retry
from flowctl.interpreter.runner import RunOptions, run_graph
from flowctl.progress import ITEMS_REPORTED, LineReporter, MultiReporter, RedactingReporter, TtyReporter
from flowctl.progress_tally import layout_of


def test_a_wide_fan_out_is_summed_up_and_its_failures_and_retries_still_shown() -> None:
    out = io.StringIO()
    reporter = LineReporter(out)
    reporter.run_started("r-1", "wide", False)
    items = ITEMS_REPORTED + 5
    failing, retried = ITEMS_REPORTED + 1, ITEMS_REPORTED + 3
    for i in range(items):
        reporter.step_started("r-1", f"fan[{i}]", "agent", 1)
        if i == retried:
            reporter.step_started("r-1", f"fan[{i}]", "agent", 2)
        status = "failed" if i == failing else "succeeded"
        reporter.step_finished("r-1", f"fan[{i}]", status, 0.1, 3, "boom" if i == failing else "")
    reporter.step_finished("r-1", "fan", "succeeded", 1.0, 3 * items, "")
    lines = out.getvalue().splitlines()

    shown = [line for line in lines if "fan[" in line]
    assert (
        len(shown) == 2 * ITEMS_REPORTED + 3
    )  # the first items' starts and finishes; the failure; the retry and its end
    assert f"  ✗ fan[{failing}] failed in 0.10s, 3 tok: boom" in lines
    assert f"  ▸ fan[{retried}] [agent] (attempt 2)" in lines
    assert not any(f"fan[{ITEMS_REPORTED}]" in line for line in lines)  # a quiet item that simply succeeded
    assert lines[-1] == (
        f"  ✓ fan succeeded in 1.00s, {3 * items} tok — {items} items: {items - 1} succeeded, 1 failed (3 not listed)"
    )


def test_a_narrow_fan_out_and_steps_inside_items_are_reported_line_by_line() -> None:
    out = io.StringIO()
    reporter = LineReporter(out)
    reporter.run_started("r-1", "narrow", False)
    for i in range(3):
        reporter.step_started("r-1", f"fan[{i}]/check", "agent", 1)
        reporter.step_finished("r-1", f"fan[{i}]/check", "succeeded", 0.1, 0, "")
    reporter.step_finished("r-1", "fan", "succeeded", 1.0, 0, "")
    lines = out.getvalue().splitlines()
    assert [line for line in lines if "check" in line] == [
        line for i in range(3) for line in (f"  ▸ fan[{i}]/check [agent]", f"  ✓ fan[{i}]/check succeeded in 0.10s")
    ]
    assert lines[-1] == "  ✓ fan succeeded in 1.00s"


def test_the_terminal_status_line_is_redrawn_by_a_ticker_and_failures_print_at_once() -> None:
    out = io.StringIO()
    reporter = TtyReporter(out)
    reporter.REDRAW_INTERVAL = 0.01
    reporter.run_started("r-1", "wide", False)
    for i in range(1000):
        reporter.step_started("r-1", f"fan[{i}]", "agent", 1)
    for i in range(1000):
        failed = i == 500
        reporter.step_finished(
            "r-1", f"fan[{i}]", "failed" if failed else "succeeded", 0.1, 1, "boom" if failed else ""
        )
    assert reporter.wait_drawn(reporter.draws + 1)  # a draw after the last event shows the latest counts
    reporter.close()  # the ticker stops: nothing is drawn after this
    text = out.getvalue()
    # 2,000 events, however long they took: the status line is drawn by the ticker and after each of the two lines
    # (the run's start, the failure), never at an event; and cleared once at the end
    assert text.count("\r\x1b[2K") == reporter.draws + 2 + 1
    assert "✗ fan[500] failed in 0.10s, 1 tok: boom" in text  # at once, with the status line drawn after it
    # the latest counts, then cleared (tokens are counted from model calls, none here: see test_cli_progress.py)
    assert text.endswith("  ✓ 999  ✗ 1  0 tok\r\x1b[2K")


@pytest.mark.anyio
async def test_a_fan_out_step_is_reported_started_before_its_items(tmp_path: Path, store: SqliteRunStore) -> None:
    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: fan\nagents:\n  a: {instruction: x}\nsteps:\n"
        '  - {id: fan, agent: a, for_each: "{{ [1, 2] }}", prompt: "{{ item }}"}\n'
    )
    graph, diagnostics, _ = load_pipeline(tmp_path / "p.yaml")
    assert graph is not None, diagnostics
    out = io.StringIO()
    fixture = Fixture.from_data({"default": "ok"})
    outcome = await run_graph(graph, {}, store, RunOptions(scripted=fixture, reporter=LineReporter(out)))
    assert outcome.status is RunStatus.SUCCEEDED
    started = [line.split()[1] for line in out.getvalue().splitlines() if line.startswith("  ▸")]
    assert started == ["fan", "fan[0]", "fan[1]"]


def test_a_retry_shows_its_reason_and_wait_even_for_a_quiet_fan_out_item() -> None:
    out = io.StringIO()
    reporter = RedactingReporter(LineReporter(out), lambda text: text.replace("sk-secret", "***"))
    reporter.run_started("r-1", "wide", False)
    quiet = f"fan[{ITEMS_REPORTED + 1}]"
    for i in range(ITEMS_REPORTED + 2):
        reporter.step_started("r-1", f"fan[{i}]", "agent", 1)
    reporter.step_retrying("r-1", quiet, Retry(1, 3, "503", "overloaded (key sk-secret)", 3.0))
    reporter.step_started("r-1", quiet, "agent", 2)
    lines = out.getvalue().splitlines()
    assert lines[-2:] == [
        f"  ↻ {quiet} attempt 2/3 after 503, retrying in 3s: overloaded (key ***)",
        f"  ▸ {quiet} [agent] (attempt 2)",  # shown from its retry on
    ]
    assert Retry(2, 5, "rate-limited", "", 0.25).describe() == "attempt 3/5 after rate-limited, retrying in 0.25s"


class _StepLines(Reporter):
    """Adds up the tokens of every finished step, as the status line once did."""

    def __init__(self) -> None:
        self.tokens = 0

    def step_finished(self, run_id: str, path: str, status: str, elapsed: float, tokens: int, error: str) -> None:
        self.tokens += tokens


@pytest.mark.anyio
async def test_the_live_token_count_is_the_runs_total(tmp_path: Path, store: SqliteRunStore) -> None:
    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: nested\nagents:\n  a: {instruction: x}\n"
        "pipelines:\n  child:\n    steps:\n      - {id: work, agent: a, prompt: child}\n"
        "steps:\n"
        "  - id: grp\n    parallel:\n"
        "      - {id: one, agent: a, prompt: one}\n      - {id: two, agent: a, prompt: two}\n"
        '  - {id: fan, agent: a, for_each: "{{ [1, 2, 3] }}", prompt: "{{ item }}"}\n'
        '  - {id: kids, pipeline: child, for_each: "{{ [1, 2] }}"}\n'
    )
    graph, diagnostics, _ = load_pipeline(tmp_path / "p.yaml")
    assert graph is not None, diagnostics
    tty, lines = TtyReporter(io.StringIO(), layout=layout_of(graph)), _StepLines()
    fixture = Fixture.from_data({"default": "ok"})
    options = RunOptions(scripted=fixture, reporter=MultiReporter([tty, lines]))
    outcome = await run_graph(graph, {}, store, options)
    tty.close()
    assert outcome.status is RunStatus.SUCCEEDED
    total = outcome.input_tokens + outcome.output_tokens
    assert total > 0 and tty.tokens == total
    assert lines.tokens > total  # a group's, a fan-out's and a child run's tokens include their steps'
    rows = {line.split()[1]: line.split() for line in tty.tally.summary("r") if line.split()[0] in "✓✗"}
    assert list(rows) == ["grp", "fan", "kids"]  # top-level steps only; branches, items and children summed in
    assert sum(int(row[3].replace(",", "")) for row in rows.values()) == total


def _call(path: str, text: str, *, error: Exception | None = None) -> ModelCallSeen:
    request = CompletionRequest("gpt-x", (Message("user", f"say {text}"),), step=path)
    response = None if error else CompletionResponse(text, usage=Usage(3, 4))
    return ModelCallSeen(f"{path}/llm#0", 1, "openai", request, response, error, 0.0, 0.1)  # type: ignore[arg-type]


def test_streamed_text_shows_as_lines_for_the_step_in_focus_only() -> None:
    out = io.StringIO()
    reporter = LineReporter(out, stream_text=True)
    reporter.run_started("r-1", "s", False)
    reporter.model_text("r-1", "plan", "Hel")
    reporter.model_text("r-1", "other", "not shown: plan has the focus")
    reporter.model_text("r-1", "plan", "lo\nwor")
    reporter.model_text("r-1", "plan", "ld")
    reporter.model_call("r-1", "plan", _call("plan", "Hello\nworld"))  # the answer is complete
    reporter.model_text("r-1", "other", " still not shown: it started before it had the focus")
    reporter.model_call("r-1", "other", _call("other", "…"))
    reporter.model_text("r-1", "other", "its next answer is")
    reporter.step_finished("r-1", "other", "succeeded", 0.1, 7, "")
    assert out.getvalue().splitlines()[1:] == [
        "  ✎ plan:",
        "    Hello",
        "    world",
        "  ✎ other:",
        "    its next answer is",
        "  ✓ other succeeded in 0.10s, 7 tok",
    ]
    silent = io.StringIO()
    LineReporter(silent).model_text("r-1", "plan", "without --stream nothing is shown")
    assert silent.getvalue() == ""


def test_streamed_text_and_model_calls_are_masked_even_split_across_pieces() -> None:
    out = io.StringIO()
    secret = "sk-secret-0123456789"
    inner = LineReporter(out, stream_text=True)
    reporter = RedactingReporter(inner, lambda text: text.replace(secret, "***"))
    reporter.run_started("r-1", "s", False)
    for piece in ("the key is sk-sec", "ret-01234", "56789 and", " more"):
        reporter.model_text("r-1", "plan", piece)
    failure = ProviderUnavailable(f"server said {secret}")
    reporter.model_call("r-1", "plan", _call("plan", f"x {secret}", error=failure))
    reporter.step_finished("r-1", "plan", "failed", 0.1, 0, f"step 'plan' failed after 1 attempt(s): {secret}")
    text = out.getvalue()
    assert secret not in text and "the key is *** and more" in text
    assert str(failure) == f"server said {secret}"  # the run's own error is left as it was


def test_mcp_progress_shows_in_the_status_line_and_an_elicitation_form_pauses_it() -> None:
    out = io.StringIO()
    reporter = TtyReporter(out, store=" --store runs.db")
    reporter.run_started("r-1", "p", False)
    reporter.step_started("r-1", "fetch", "tool", 1)
    reporter.tool_progress("r-1", "fetch", "files", "download", 3, 12, "chunk 3")
    assert "fetch (download 3/12 chunk 3)" in reporter.status(120)
    reporter.elicitation("r-1", "fetch", "files", "Which file?", {"properties": {"name": {"type": "string"}}}, True)
    drawn = reporter.draws
    with reporter._lock:
        reporter._draw()  # the ticker's draw: nothing while the form is on the terminal
    assert reporter.draws == drawn
    reporter.elicitation_done("r-1", "fetch", "files")
    assert reporter.draws == drawn + 1
    schema = {"properties": {"name": {"type": "string"}, "count": {"type": "integer"}}}
    reporter.elicitation("r-1", "fetch", "files", "Which file?", schema, False)
    reporter.close()
    text = out.getvalue()
    assert "? fetch: server 'files' asks: Which file?" in text
    assert """flowctl signal r-1 elicitation --store runs.db --data '{"name": "…", "count": 0}'""" in text


def test_a_step_whose_fallback_failed_points_at_the_cause_shown_before() -> None:
    out = io.StringIO()
    reporter = LineReporter(out)
    reporter.run_started("r-1", "fb", False)
    reporter.step_started("r-1", "x", "agent", 1)
    reporter.step_started("r-1", "x/fallback/y", "agent", 1)
    reporter.step_finished("r-1", "x/fallback/y", "failed", 0.1, 0, "boom")
    error = "step 'x' failed after 3 attempt(s); its fallback failed too: step 'x/fallback/y' failed after 1 attempt(s)"
    error += ": boom"
    reporter.step_finished("r-1", "x", "failed", 0.2, 0, error)
    lines = out.getvalue().splitlines()
    assert "  ✗ x/fallback/y failed in 0.10s: boom" in lines
    assert "  ✗ x failed in 0.20s (after x/fallback/y failed)" in lines  # the cause once, not again
