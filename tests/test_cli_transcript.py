"""`flowctl show` (attempts, real durations, cost per step and per model) and `flowctl logs` (the transcript, turn
by turn) on real runs: the scripted provider, scripted and real MCP tools, a retried step, a child pipeline, a
fan-out, waits."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flowctl.cli import main

MEDIA = Path(__file__).parent / "support" / "mcp_servers" / "media_server.py"

PIPELINE = """\
flowctl: 1
name: tour
inputs:
  city: {type: string}
models:
  default:
    model: small-model
    price: {input_per_mtok: 1, output_per_mtok: 2}
  big:
    model: big-model
    price: {input_per_mtok: 10, output_per_mtok: 20}
agents:
  clerk:
    instruction: You keep the time.
    servers: [time]
  writer: {model: big, instruction: You write.}
servers:
  time: {command: unused}
pipelines:
  sub:
    inputs:
      text: {type: string}
    steps:
      - id: polish
        agent: writer
        prompt: "Polish {{ inputs.text }}"
    outputs:
      text: "{{ steps.polish.output }}"
steps:
  - id: ask
    agent: clerk
    prompt: "What time is it in {{ inputs.city }}?"
    retry: {max_attempts: 3, initial_delay: 10ms, jitter: false}
  - id: child
    pipeline: sub
    inputs: {text: "{{ steps.ask.output }}"}
  - id: fan
    agent: writer
    for_each: [a, b, c]
    prompt: "item {{ item }}"
outputs:
  answer: "{{ steps.child.output.text }}"
"""

FIXTURE = """\
responses:
  - agent: clerk
    replies:
      - {error: unavailable}
      - content: null
        tool_calls: [{name: get_current_time, arguments: {timezone: Europe/Paris}}]
        usage: {input_tokens: 100, output_tokens: 10}
      - {content: "It is noon.", usage: {input_tokens: 200, output_tokens: 5}}
  - agent: writer
    reply: {content: "polished", usage: {input_tokens: 1000, output_tokens: 100}}
tools:
  time.get_current_time: {value: {datetime: "2026-01-01T12:00:00+01:00"}}
"""


def invoke(*args: str, columns: int = 100) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False, env={"COLUMNS": str(columns)})


def run(tmp_path: Path, pipeline: str, fixture: str, *extra: str, store: str | None = None) -> tuple[str, str]:
    """Run a pipeline offline into a store of its own (`store`, else an SQLite file); the run id and the store."""
    (tmp_path / "p.yaml").write_text(pipeline)
    (tmp_path / "f.yaml").write_text(fixture)
    store = store if store is not None else str(tmp_path / "runs.db")
    ran = invoke(
        "run", str(tmp_path / "p.yaml"), "--quiet", "--scripted", str(tmp_path / "f.yaml"), "--store", store, *extra
    )
    assert ran.exit_code == 0, ran.output
    run_id = json.loads(invoke("runs", "--store", store, "--output", "json").output)[0]["run_id"]
    return run_id, store


@pytest.fixture
def tour(tmp_path: Path, store_url: str) -> tuple[str, str]:
    """The run the `show` and `logs` tests read, on each kind of store."""
    return run(tmp_path, PIPELINE, FIXTURE, "--input", "city=Paris", store=store_url)


def test_show_lists_a_retried_steps_attempts_and_its_whole_duration(tour: tuple[str, str]) -> None:
    run_id, store = tour
    data = json.loads(invoke("show", run_id, "--store", store, "--output", "json").output)
    ask = next(s for s in data["steps"] if s["path"] == "ask")
    first, second = ask["attempt_log"]
    assert (first["attempt"], first["status"], second["attempt"], second["status"]) == (1, "failed", 2, "succeeded")
    assert first["error"]["code"] == "provider-unavailable" and first["retry_in"] == 0.01
    assert ask["attempts"] == 2  # the count stays a number
    # the step took from its first attempt's start to its end, not just the last attempt
    assert ask["duration"] == ask["finished_at"] - first["started_at"]
    assert ask["duration"] > ask["finished_at"] - ask["started_at"]
    assert next(s for s in data["steps"] if s["path"] == "child")["attempt_log"] == []

    text = invoke("show", run_id, "--store", store).output
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("✓ ask"))
    assert lines[at + 1].strip().startswith("attempt 1 failed after ")
    assert "provider-unavailable: scripted unavailable error" in lines[at + 1]
    assert lines[at + 1].endswith("; retried after 0.01s")
    assert lines[at + 2].strip().startswith("attempt 2 succeeded after ")


def test_show_gives_cost_per_step_and_per_model(tour: tuple[str, str]) -> None:
    run_id, store = tour
    data = json.loads(invoke("show", run_id, "--store", store, "--output", "json").output)
    cost = {s["path"]: s["cost"] for s in data["steps"]}
    small = (300 * 1 + 15 * 2) / 1e6  # the two answers of `ask` (the failed call cost nothing)
    big = (1000 * 10 + 100 * 20) / 1e6  # one answer of `writer`
    assert cost["ask"] == pytest.approx(small)
    assert cost["child"] == pytest.approx(big)  # its child run's
    assert cost["fan"] == pytest.approx(3 * big) and cost["fan[1]"] == pytest.approx(big)
    models = {m["model"]: m for m in data["models"]}
    assert models["small-model"] == {
        "model": "small-model",
        "calls": 3,
        "failed": 1,
        "input_tokens": 300,
        "output_tokens": 15,
        "cost": pytest.approx(small),
    }
    assert (models["big-model"]["calls"], models["big-model"]["input_tokens"]) == (4, 4000)
    assert models["big-model"]["cost"] == pytest.approx(4 * big)
    assert data["children"][0]["models"][0]["calls"] == 1

    text = invoke("show", run_id, "--store", store).output
    ask = next(line for line in text.splitlines() if line.lstrip().startswith("✓ ask"))
    assert "$0.00033" in ask
    table = text.splitlines()[-3:]
    assert table[0].split() == ["model", "calls", "tokens", "in", "tokens", "out", "cost"]
    assert table[1].split() == ["small-model", "3", "300", "15", "$0.00033", "(1", "failed)"]
    assert table[2].split() == ["big-model", "4", "4000", "400", "$0.048"]


def test_show_without_price_and_one_model_has_no_cost_column(tmp_path: Path) -> None:
    pipeline = "flowctl: 1\nname: plain\nagents:\n  a: {instruction: x}\nsteps:\n  - {id: s, agent: a, prompt: hi}\n"
    run_id, store = run(tmp_path, pipeline, "default: ok\n")
    text = invoke("show", run_id, "--store", store).output
    assert "$" not in text and "calls" not in text
    data = json.loads(invoke("show", run_id, "--store", store, "--output", "json").output)
    assert data["steps"][0]["cost"] is None and data["models"][0]["cost"] is None


def test_logs_tells_the_run_turn_by_turn(tour: tuple[str, str]) -> None:
    run_id, store = tour
    text = invoke("logs", run_id, "--store", store).output
    heads = [line.split(" ─")[0] for line in text.splitlines() if line.startswith("── ")]
    assert [h.split(" · ")[:3] for h in heads[:5]] == [
        ["── ask", "attempt 1", "model small-model"],
        ["── ask", "attempt 2", "model small-model"],
        ["── ask", "attempt 2", "tool time.get_current_time"],
        ["── ask", "attempt 2", "model small-model"],
        ["── child/polish", "attempt 1", "model big-model"],
    ]
    assert sorted(h.split(" · ")[0] for h in heads[5:]) == ["── fan[0]", "── fan[1]", "── fan[2]"]  # concurrent
    assert "100 in / 10 out tok" in heads[1] and "$0.00012" in heads[1]

    blocks = text.split("\n── ")
    failed, retry_note = blocks[1].split("\n✗ ask: ")
    assert "  system:\n    You keep the time.\n  user:\n    What time is it in Paris?" in failed
    assert "tools offered: get_current_time" in failed
    assert "✗ error provider-unavailable (retryable):" in failed
    assert retry_note.startswith("attempt 1 failed after ") and "(the error above); retried after 0.01s" in retry_note
    assert '→ calls get_current_time (call_1):\n    {"timezone": "Europe/Paris"}' in blocks[2]
    assert 'arguments:\n    {"timezone": "Europe/Paris"}' in blocks[3]
    assert 'result:\n    {"datetime": "2026-01-01T12:00:00+01:00"}' in blocks[3]
    last = blocks[4]  # the answer after the tool: only what is new since the previous call
    assert "(2 earlier messages not repeated)" in last and "You keep the time." not in last
    assert "assistant: the answer above" in last and "tool result for get_current_time (call_1):" in last
    assert "answer:\n    It is noon." in last
    assert f"(in child run {run_id}/child)" in blocks[5] and "Polish It is noon." in blocks[5]


def test_logs_of_one_step(tour: tuple[str, str]) -> None:
    run_id, store = tour
    child = invoke("logs", run_id, "--store", store, "--step", "child").output
    assert child.count("\n── ") == 1 and "── child/polish" in child
    assert invoke("logs", run_id, "--store", store, "--step", "child/polish").output == child
    fan = invoke("logs", run_id, "--store", store, "--step", "fan").output
    assert sorted(line[:9] for line in fan.splitlines() if line.startswith("── ")) == [
        "── fan[0]",
        "── fan[1]",
        "── fan[2]",
    ]
    item = invoke("logs", run_id, "--store", store, "--step", "fan[2]").output
    assert item.count("\n── ") == 1 and "item c" in item

    unknown = invoke("logs", run_id, "--store", store, "--step", "nope")
    assert unknown.exit_code == 2 and "has no step 'nope'" in unknown.output
    assert invoke("logs", "r-nope", "--store", store).exit_code == 2


def test_logs_json_gives_the_records_as_they_are(tour: tuple[str, str]) -> None:
    run_id, store = tour
    records: list[dict[str, Any]] = json.loads(invoke("logs", run_id, "--store", store, "--output", "json").output)
    kinds = [(r["run_id"] != run_id, r["path"], r["kind"], r["attempt"]) for r in records]
    assert kinds[:6] == [
        (False, "ask", "model", 1),
        (False, "ask", "attempt", 1),
        (False, "ask", "model", 2),
        (False, "ask", "tool", 2),
        (False, "ask", "model", 2),
        (True, "polish", "model", 1),
    ]
    assert records[1]["status"] == "failed" and records[1]["retry_in"] == 0.01
    tool = records[3]
    assert tool["request"] == {"server": "time", "tool": "get_current_time", "arguments": {"timezone": "Europe/Paris"}}
    assert tool["response"]["value"] == {"datetime": "2026-01-01T12:00:00+01:00"}
    assert [m["role"] for m in records[4]["request"]["messages"]] == ["system", "user", "assistant", "tool"]
    only = json.loads(invoke("logs", run_id, "--store", store, "--step", "fan", "--output", "json").output)
    assert sorted(r["path"] for r in only) == ["fan[0]", "fan[1]", "fan[2]"]


def test_logs_names_content_parts_of_a_real_mcp_tool(tmp_path: Path) -> None:
    pipeline = f"""\
flowctl: 1
name: media
agents:
  artist: {{instruction: You draw charts., servers: [media]}}
servers:
  media: {{command: {json.dumps(sys.executable)}, args: [{json.dumps(str(MEDIA))}]}}
steps:
  - {{id: draw, agent: artist, prompt: Draw sales.}}
"""
    fixture = """\
responses:
  - agent: artist
    replies:
      - {tool_calls: [{name: chart, arguments: {title: sales}}]}
      - "Here is the chart."
"""
    run_id, store = run(tmp_path, pipeline, fixture)
    text = invoke("logs", run_id, "--store", store).output
    tool = text.split("\n── ")[2]
    assert tool.startswith("draw · attempt 1 · tool media.chart")
    assert "result: 3 content parts" in tool
    assert "text:\n      chart of sales" in tool
    assert "[image image/png, 12 KB]" in tool
    assert "[resource_link file:///data/chart.csv text/csv]" in tool
    records = json.loads(invoke("logs", run_id, "--store", store, "--output", "json").output)
    parts = next(r for r in records if r["kind"] == "tool")["response"]["parts"]
    assert [p["type"] for p in parts] == ["text", "image", "resource_link"]


def test_logs_wraps_long_texts_to_the_terminal_and_leaves_nothing_out(tmp_path: Path) -> None:
    words = [f"word{i}" for i in range(120)]
    pipeline = (
        "flowctl: 1\nname: long\nagents:\n  a: {instruction: x}\nsteps:\n"
        f'  - {{id: s, agent: a, prompt: "{" ".join(words)}"}}\n'
    )
    run_id, store = run(tmp_path, pipeline, "default: " + "y" * 150 + "\n")
    text = invoke("logs", run_id, "--store", store, columns=60).output
    assert all(len(line) <= 60 for line in text.splitlines()), text
    user = text.split("  user:\n")[1].split("  answer:\n")[0]
    assert user.split() == words  # every word, in order
    assert "".join(text.split("  answer:\n")[1].split()) == "y" * 150  # a long word is broken, not cut


def test_logs_shows_waits_with_their_event(tmp_path: Path) -> None:
    pipeline = """\
flowctl: 1
name: waits
steps:
  - id: announce
    emit: {event: ready, data: {n: 1}}
  - id: hold
    wait: {event: ready, timeout: 5s}
  - id: late
    wait: {event: never, timeout: 10ms}
    on_error: continue
"""
    run_id, store = run(tmp_path, pipeline, "default: x\n")
    text = invoke("logs", run_id, "--store", store).output
    hold, late = text.split("\n── ")[1:]
    assert hold.startswith("hold · attempt 1 · wait for 'ready'")
    assert "released by 'ready' from announce\n  data:\n    {\"n\": 1}" in hold
    assert late.startswith("late · attempt 1 · wait for 'never'") and "timed out: no 'never' event came" in late
    assert "✗ late: attempt 1 failed after " in late and "wait-timeout" in late


def test_logs_marks_a_capped_body_and_shows_why_an_answer_was_rejected(tmp_path: Path) -> None:
    from flowctl.interpreter.persistence.record_encoding import MAX_TRANSCRIPT_BODY

    pipeline = """\
flowctl: 1
name: edges
agents:
  a: {instruction: x}
  t: {instruction: x, output_schema: {type: object, required: [n], properties: {n: {type: integer}}}}
steps:
  - {id: big, agent: a, prompt: big}
  - id: typed
    agent: t
    prompt: typed
    retry: {max_attempts: 1}
    on_error: continue
"""
    huge = "z" * (MAX_TRANSCRIPT_BODY + 10)
    fixture = f'responses:\n  - {{prompt: big, reply: "{huge}"}}\n  - {{prompt: typed, reply: "no json here"}}\n'
    run_id, store = run(tmp_path, pipeline, fixture)
    big = invoke("logs", run_id, "--store", store, "--step", "big").output
    capped = next(line for line in big.splitlines() if "capped by the recorder" in line)
    assert capped.strip().startswith("answer: [capped by the recorder: ")
    assert f"the first {MAX_TRANSCRIPT_BODY} shown]" in capped
    typed = invoke("logs", run_id, "--store", store, "--step", "typed").output
    # the provider rejected the answer: the call's error says why, and the rejected text is there too
    assert "✗ error output-schema-mismatch (retryable):" in typed
    assert "is not valid JSON" in " ".join(typed.split())  # wherever the wrapping fell
    assert "no json here" in typed


def test_logs_follow_on_a_finished_run_prints_it_whole_and_how_it_ended(tour: tuple[str, str]) -> None:
    run_id, store = tour
    whole = invoke("logs", run_id, "--store", store).output
    followed = invoke("logs", run_id, "--follow", "--store", store)
    assert followed.exit_code == 0, followed.output
    assert followed.output == f"{whole}\nrun {run_id} succeeded\n"
    lines = invoke("logs", run_id, "--follow", "--output", "json", "--store", store).output.splitlines()
    assert [json.loads(line) for line in lines] == json.loads(
        invoke("logs", run_id, "--output", "json", "--store", store).output
    )


def test_logs_follow_prints_a_running_runs_calls_as_they_are_recorded(tmp_path: Path) -> None:
    """A run waits for a signal; `logs --follow` shows its first call, then, once the signal is sent, the rest, and
    ends with the run. Synchronised on what each process prints, never on time."""
    import subprocess

    flowctl = [str(Path(sys.executable).parent / "flowctl")]
    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: gate\nagents:\n  a: {instruction: x}\nsteps:\n  - {id: first, agent: a, prompt: go}\n"
        "  - {id: approval, wait: {event: approved, timeout: 10m}}\n  - {id: last, agent: a, prompt: done}\n"
    )
    (tmp_path / "fx.yaml").write_text("default: ok\n")
    store = ["--store", "runs.db"]
    running = subprocess.Popen(
        [*flowctl, "run", "p.yaml", "--scripted", "fx.yaml", *store],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert running.stderr is not None
    for line in running.stderr:  # the run waits for its signal now
        if b"waits for event" in line:
            break
    follow = subprocess.Popen(
        [*flowctl, "logs", "last", "--follow", "--output", "json", *store],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert follow.stdout is not None
    first = json.loads(follow.stdout.readline())
    assert (first["path"], first["kind"]) == ("first", "model")
    sent = subprocess.run([*flowctl, "signal", "last", "approved", *store], cwd=tmp_path, capture_output=True)
    assert sent.returncode == 0, sent.stderr
    rest = [json.loads(line) for line in follow.stdout]
    assert follow.wait() == 0 and running.wait() == 0
    assert [(e["path"], e["kind"]) for e in rest] == [("approval", "wait"), ("last", "model")]
    assert len({e["seq"] for e in [first, *rest]}) == 3  # each entry once


def test_logs_follow_of_a_missing_store_says_so_without_the_queue_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without psycopg (no `scale` extra) there is no queue to wait on: `-f` says what plain `logs` says."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` fails, as on a plain install
    missing = str(tmp_path / "nowhere.db")
    plain = CliRunner().invoke(main, ["logs", "r-x", "--store", missing])
    followed = CliRunner().invoke(main, ["logs", "r-x", "-f", "--store", missing])
    assert plain.exit_code == followed.exit_code != 0
    assert followed.output == plain.output and "there is no run store here" in followed.output


def test_logs_follow_prints_entries_alike_in_all_but_their_order_each_once(tmp_path: Path) -> None:
    """Two messages a server logged at one instant (a virtual clock) are alike in everything `-f` tells entries apart
    by but their order; the second, recorded after `-f` printed the first, is printed too, and each once.
    Synchronised on what the follower prints, never on time."""
    import subprocess

    from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
    from flowctl.interpreter.persistence.store import Exchanged, RunFinished, RunStatus
    from tests.persistence.helpers import create

    def logged(n: int) -> Exchanged:
        return Exchanged("r-1", "ask", "ask/turn#1/tool:t.get#0/log", 1, "log", 5.0, 0.0, json.dumps({"n": n}),
                         None, None, n)  # fmt: skip

    db = tmp_path / "runs.db"
    with SqliteRunStore(db) as store:
        claim = create(store)  # owned by this live process: followed until it ends
        store.commit([logged(1)], claim)
        follow = subprocess.Popen(
            [sys.executable, "-m", "flowctl", "logs", "r-1", "-f", "--output", "json", "--store", str(db)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert follow.stdout is not None
        first = json.loads(follow.stdout.readline())
        store.commit([logged(2)], claim)
        store.commit([RunFinished("r-1", RunStatus.SUCCEEDED, 6.0, "{}", None, 0, 0, 0.0)], claim)
        rest = [json.loads(line) for line in follow.stdout]
        assert follow.wait() == 0
    assert [e["request"] for e in [first, *rest]] == [{"n": 1}, {"n": 2}]
