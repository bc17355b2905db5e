"""The command line: exit codes, output formats, and no tracebacks for user mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from flowctl.cli import main

VALID = """\
flowctl: 1
name: greet
inputs:
  who: {type: string}
  times: {type: integer, default: 1}
agents:
  writer: {instruction: You greet people.}
steps:
  - id: hello
    agent: writer
    prompt: "Greet {{ inputs.who }} {{ inputs.times }} time(s)."
outputs:
  greeting: "{{ steps.hello.output }}"
  times: "{{ inputs.times }}"
"""

FIXTURE = """\
responses:
  - agent: writer
    prompt: "Greet Ada 2 time"
    reply: "Hello Ada, hello Ada!"
default: "Hello!"
"""

FAILING_FIXTURE = """\
responses:
  - agent: writer
    reply: {error: auth}
"""


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def scripted(command: str, target: str | Path, fixture: str | Path, store: str | Path, *extra: str) -> Result:
    """`flowctl run|resume TARGET --quiet --scripted FIXTURE --store STORE [EXTRA...]`."""
    return invoke(command, str(target), "--quiet", "--scripted", str(fixture), "--store", str(store), *extra)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "greet.yaml").write_text(VALID)
    (tmp_path / "greet.fixture.yaml").write_text(FIXTURE)
    (tmp_path / "failing.fixture.yaml").write_text(FAILING_FIXTURE)
    (tmp_path / "broken.yaml").write_text(VALID.replace("agent: writer", "agent: writer2"))
    (tmp_path / "notes.yaml").write_text("just: some config\n")  # not a pipeline: skipped in folders
    return tmp_path


def test_version_prints_the_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert "flowctl" in result.output and "0." in result.output


def test_validate_valid_file_exits_zero(project: Path) -> None:
    result = invoke("validate", str(project / "greet.yaml"))
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_validate_reports_position_and_exits_one(project: Path) -> None:
    result = invoke("validate", str(project / "broken.yaml"))
    assert result.exit_code == 1
    assert "broken.yaml:10:12: error: unknown agent 'writer2' [unknown-agent]" in result.output
    assert "hint: did you mean 'writer'?" in result.output
    assert "Traceback" not in result.output


def test_validate_folder_skips_yaml_that_is_not_a_pipeline(project: Path) -> None:
    result = invoke("validate", "--format", "json", str(project))
    assert result.exit_code == 1
    diagnostics = json.loads(result.output)
    files = {Path(d["file"]).name for d in diagnostics}
    assert files == {"broken.yaml"}
    assert diagnostics[0]["code"] == "unknown-agent"
    assert (diagnostics[0]["line"], diagnostics[0]["column"]) == (10, 12)


def test_validate_github_annotations(project: Path) -> None:
    result = invoke("validate", "--format", "github", str(project / "broken.yaml"))
    assert result.exit_code == 1
    assert result.output.startswith("::error file=")
    assert "line=10,col=12,title=unknown-agent" in result.output


def test_validate_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2


def test_validate_empty_folder_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == 2
    assert "no pipeline files found" in result.output


def test_schema_prints_the_draft_2020_12_schema() -> None:
    result = invoke("schema")
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["$schema"].endswith("2020-12/schema")
    assert "steps" in schema["properties"]


def test_graph_mermaid_and_dot(project: Path) -> None:
    mermaid = invoke("graph", str(project / "greet.yaml"))
    assert mermaid.exit_code == 0 and mermaid.output.startswith("flowchart TD")
    assert "hello" in mermaid.output
    dot = invoke("graph", "--format", "dot", str(project / "greet.yaml"))
    assert dot.exit_code == 0 and dot.output.startswith('digraph "greet"')


def test_graph_of_invalid_pipeline_exits_two_without_traceback(project: Path) -> None:
    result = invoke("graph", str(project / "broken.yaml"))
    assert result.exit_code == 2
    assert "unknown agent 'writer2'" in result.output
    assert "Traceback" not in result.output


def test_run_offline_prints_outputs_and_journals(project: Path, store_url: str) -> None:
    store = store_url
    result = scripted(
        "run",
        str(project / "greet.yaml"),
        project / "greet.fixture.yaml",
        store,
        "-i",
        "who=Ada",
        "-i",
        "times=2",
        "--output",
        "json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["status"] == "succeeded"
    # the prompt regex in the fixture only matches the correctly rendered prompt: inputs reached the model
    assert data["outputs"] == {"greeting": "Hello Ada, hello Ada!", "times": 2}
    assert data["calls"] == {"executed": 1, "replayed": 0, "cached": 0, "requests": 1, "failed": 0}
    assert data["usage"]["input_tokens"] > 0

    listed = invoke("runs", "--store", str(store), "--output", "json")
    assert [r["run_id"] for r in json.loads(listed.output)] == [data["run_id"]]
    shown = invoke("show", data["run_id"], "--store", str(store), "--output", "json")
    steps = json.loads(shown.output)["steps"]
    assert [(s["path"], s["status"], s["attempts"]) for s in steps] == [("hello", "succeeded", 1)]


def test_run_with_missing_input_exits_two_and_runs_nothing(project: Path) -> None:
    store = project / "runs.db"
    result = scripted("run", str(project / "greet.yaml"), project / "greet.fixture.yaml", store)
    assert result.exit_code == 2
    assert "missing required input 'who'" in result.output
    assert "Traceback" not in result.output


def test_run_with_wrongly_typed_input_exits_two(project: Path) -> None:
    result = scripted(
        "run",
        str(project / "greet.yaml"),
        project / "greet.fixture.yaml",
        project / "r.db",
        "-i",
        "who=Ada",
        "-i",
        "times=many",
    )
    assert result.exit_code == 2
    assert "input 'times'" in result.output and "integer" in result.output


def test_run_invalid_pipeline_exits_two(project: Path) -> None:
    result = invoke("run", str(project / "broken.yaml"), "-i", "who=Ada", "--store", str(project / "r.db"))
    assert result.exit_code == 2
    assert "invalid pipeline; nothing was run" in result.output


def test_failed_run_exits_one_keeps_journal_and_says_how_to_resume(project: Path, store_url: str) -> None:
    store = store_url
    result = scripted("run", str(project / "greet.yaml"), project / "failing.fixture.yaml", store, "-i", "who=Ada")
    assert result.exit_code == 1
    assert "auth" in result.output.lower()
    assert "flowctl resume" in result.output
    runs = json.loads(invoke("runs", "--store", str(store), "--output", "json").output)
    assert runs[0]["status"] == "failed"
    assert runs[0]["error"]["code"] == "step-failed"

    resumed = scripted("resume", runs[0]["run_id"], project / "greet.fixture.yaml", store, "--output", "json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.output)["status"] == "succeeded"


def test_invalid_fixture_is_a_usage_error_with_position(project: Path) -> None:
    (project / "bad.fixture.yaml").write_text("responses:\n  - agnet: writer\n    reply: x\n")
    result = invoke(
        "run",
        str(project / "greet.yaml"),
        "-i",
        "who=Ada",
        "--scripted",
        str(project / "bad.fixture.yaml"),
        "--store",
        str(project / "r.db"),
    )
    assert result.exit_code == 2
    assert "bad.fixture.yaml:2:" in result.output
    assert "Traceback" not in result.output


def test_show_and_signal_unknown_run_exit_two(project: Path, store_url: str) -> None:
    store = store_url
    assert invoke("show", "r-nope", "--store", store).exit_code == 2
    assert invoke("signal", "r-nope", "approved", "--store", store).exit_code == 2
    assert invoke("resume", "r-nope", "--store", store).exit_code == 2


def test_last_names_the_run_started_last(project: Path, store_url: str) -> None:
    from flowctl import open_store

    store = store_url
    with open_store(store):  # an empty store: `last` names no run
        pass
    empty = invoke("show", "last", "--store", store)
    assert empty.exit_code == 2 and "the store has no runs yet" in empty.output

    greet = project / "greet.yaml"
    assert scripted("run", greet, project / "greet.fixture.yaml", store, "-i", "who=Ada").exit_code == 0
    failed = scripted("run", greet, project / "failing.fixture.yaml", store, "-i", "who=Bob", "--output", "json")
    assert failed.exit_code == 1
    newest = json.loads(failed.output)["run_id"]

    shown = invoke("show", "last", "--store", store, "--output", "json")
    assert shown.exit_code == 0 and json.loads(shown.output)["run_id"] == newest
    told = invoke("logs", "last", "--store", store, "--output", "json")
    assert told.exit_code == 0 and {e["run_id"] for e in json.loads(told.output)} == {newest}
    sent = invoke("signal", "last", "approved", "--store", store)
    assert sent.exit_code == 0 and f"to {newest} " in sent.output
    resumed = scripted("resume", "last", project / "greet.fixture.yaml", store, "--output", "json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.output)["run_id"] == newest
    assert json.loads(resumed.output)["status"] == "succeeded"


def test_signal_rejects_bad_json(project: Path) -> None:
    result = invoke("signal", "r-x", "approved", "--data", "{not json", "--store", str(project / "runs.db"))
    assert result.exit_code == 2
    assert "--data is not JSON" in result.output


def test_runs_lists_root_runs_even_after_many_child_runs(tmp_path: Path) -> None:
    (tmp_path / "fan.yaml").write_text(
        "flowctl: 1\nname: fan\nagents:\n  a: {instruction: x}\npipelines:\n  child:\n    steps:\n"
        "      - {id: c, agent: a, prompt: hi}\nsteps:\n  - id: kids\n    pipeline: child\n"
        '    for_each: "{{ range(6) | list }}"\n'
    )
    (tmp_path / "f.yaml").write_text("default: ok\n")
    store = str(tmp_path / "runs.db")
    ran = scripted("run", str(tmp_path / "fan.yaml"), tmp_path / "f.yaml", store, "--output", "json")
    assert ran.exit_code == 0, ran.output
    listed = json.loads(invoke("runs", "-n", "1", "--store", store, "--output", "json").output)
    assert [r["run_id"] for r in listed] == [json.loads(ran.output)["run_id"]]


def test_resume_refuses_a_run_that_is_still_running_in_a_live_process(project: Path, store_url: str) -> None:
    from flowctl import open_store
    from flowctl.interpreter.persistence.owners import this_process
    from flowctl.interpreter.persistence.store import RunRecord, RunStatus

    store_path = store_url
    with open_store(store_path) as store:  # as if `flowctl run` in this (live) process were still running it
        record = RunRecord("r-live", "greet", str(project / "greet.yaml"), RunStatus.RUNNING, 1.0)
        store.create_run(record, '{"who": "Ada"}', None, this_process())
    result = scripted("resume", "r-live", project / "greet.fixture.yaml", store_path)
    assert result.exit_code == 2
    assert "is still running (process" in result.output and "would run it twice" in result.output
    listed = invoke("runs", "--store", str(store_path), "--output", "json")
    assert [r["status"] for r in json.loads(listed.output)] == ["running"]  # not `interrupted`: its process lives


def test_resume_takes_over_a_run_whose_process_was_killed(project: Path, store_url: str) -> None:
    from flowctl import open_store
    from flowctl.interpreter.persistence.store import RunRecord, RunStatus

    store_path = store_url
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with open_store(store_path) as store:  # its owner is a process that has exited (killed, say)
        record = RunRecord("r-dead", "greet", str(project / "greet.yaml"), RunStatus.RUNNING, 1.0)
        owner = f"{socket.gethostname()}:{gone.stdout.strip()}"
        store.create_run(record, '{"who": "Ada", "times": 2}', None, owner)
    result = scripted("resume", "r-dead", project / "greet.fixture.yaml", store_path, "--output", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["outputs"]["greeting"] == "Hello Ada, hello Ada!"


def test_graph_image_needs_graphviz_and_says_so(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(project))  # no `dot` here
    result = invoke("graph", str(project / "greet.yaml"), "--format", "svg", "-o", str(project / "g.svg"))
    assert result.exit_code == 2
    assert "needs Graphviz" in result.output and not (project / "g.svg").exists()


def test_graph_image_is_drawn_by_graphviz_when_installed(project: Path) -> None:
    import shutil

    out = project / "g.svg"
    result = invoke("graph", str(project / "greet.yaml"), "--format", "svg", "-o", str(out))
    if shutil.which("dot") is None:  # .ci/run installs Graphviz; on a machine without it the error is the contract
        assert result.exit_code == 2 and "needs Graphviz" in result.output
        return
    assert result.exit_code == 0, result.output
    svg = out.read_text()
    assert "<svg" in svg and "hello" in svg


def test_run_events_writes_a_jsonl_log(project: Path) -> None:
    events = project / "events.jsonl"
    result = scripted(
        "run",
        str(project / "greet.yaml"),
        project / "greet.fixture.yaml",
        project / "r.db",
        "-i",
        "who=Ada",
        "--events",
        str(events),
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [line["type"] for line in lines] == [
        "run_started",
        "step_started",
        "model_call",
        "step_finished",
        "run_finished",
    ]
    assert lines[1]["step"] == "hello" and lines[1]["kind"] == "agent"
    call = lines[2]
    assert call["step"] == "hello" and call["key"] == "hello/llm#0"
    assert call["error"] is None and call["replayed"] is False
    assert call["input_tokens"] + call["output_tokens"] == lines[3]["tokens"]


def test_a_secret_the_pipeline_reads_never_reaches_the_store_or_the_terminal(tmp_path: Path) -> None:
    import sqlite3

    secret = "ghx_TopSecretValue_0123456789"
    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: secrets\nservers:\n"
        "  gh:\n    command: sh\n"
        "    args: ['-c', 'echo \"auth failed for $GITHUB_TOKEN\" >&2; exit 3']\n"
        "    env: {GITHUB_TOKEN: '${GH_ACCESS}'}\n"
        "steps:\n  - {id: call, tool: gh.list_issues, args: {}, retry: {max_attempts: 1}}\n"
    )
    store = tmp_path / "runs.db"
    result = CliRunner(env={"GH_ACCESS": secret}).invoke(
        main, ["run", str(tmp_path / "p.yaml"), "--store", str(store)], catch_exceptions=False
    )
    assert result.exit_code == 1
    assert "auth failed for ***" in result.output  # the server's stderr is shown, masked
    assert secret not in result.output
    with sqlite3.connect(store) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        dump = "".join(str(row) for table in tables for row in conn.execute(f"SELECT * FROM {table}"))
    assert "auth failed for ***" in dump and secret not in dump


def test_resume_after_an_edit_that_breaks_the_recorded_inputs_exits_two(project: Path) -> None:
    store = str(project / "runs.db")
    failed = scripted(
        "run", str(project / "greet.yaml"), project / "failing.fixture.yaml", store, "-i", "who=Ada", "--output", "json"
    )
    run_id = json.loads(failed.output)["run_id"]
    (project / "greet.yaml").write_text(
        VALID.replace(
            "  times: {type: integer, default: 1}", "  times: {type: integer, default: 1}\n  tone: {type: string}"
        )
    )
    result = scripted("resume", run_id, project / "greet.fixture.yaml", store)
    assert result.exit_code == 2
    assert "missing required input 'tone'" in result.output and "Traceback" not in result.output


def test_a_signal_for_a_child_run_is_delivered_to_its_root_run(project: Path, store_url: str) -> None:
    from flowctl import open_store
    from flowctl.interpreter.persistence.store import RunRecord, RunStarted, RunStatus

    store_path = store_url
    with open_store(store_path) as store:
        claim = store.create_run(RunRecord("r-root", "p", "p.yaml", RunStatus.RUNNING, 1.0), "{}", None, "elsewhere:1")
        store.commit([RunStarted("r-root/ask", "r-root", "child", "p.yaml", 1.0, "{}", "")], claim)
    result = invoke("signal", "r-root/ask", "approved", "--data", '{"by": "ana"}', "--store", str(store_path))
    assert result.exit_code == 0, result.output
    assert "delivering to its root run r-root" in result.output
    with open_store(store_path) as store:
        assert [(s.name, s.data) for s in store.signals("r-root")] == [("approved", {"by": "ana"})]
        assert store.signals("r-root/ask") == []


def test_finally_runs_again_for_real_when_a_failed_run_is_resumed(tmp_path: Path, store_url: str) -> None:
    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: locked\nservers:\n  lock: {command: lock-server}\n"
        "agents:\n  w: {instruction: Work.}\n"
        "steps:\n  - {id: acquire, tool: lock.acquire, args: {}}\n"
        "  - {id: work, agent: w, prompt: go, retry: {max_attempts: 1}}\n"
        "finally:\n  - {id: release, tool: lock.release, args: {}}\n"
    )
    tools = "tools:\n  lock.acquire: {value: held}\n  lock.release: {value: released}\n"
    (tmp_path / "fail.yaml").write_text("responses:\n  - {agent: w, reply: {error: unavailable}}\n" + tools)
    (tmp_path / "ok.yaml").write_text("default: done\n" + tools)
    store = store_url
    failed = scripted("run", str(tmp_path / "p.yaml"), tmp_path / "fail.yaml", store, "--output", "json")
    first = json.loads(failed.output)
    assert failed.exit_code == 1 and first["calls"]["executed"] == 2  # acquire and release
    assert first["calls"]["requests"] == 3 and first["calls"]["failed"] == 1  # and the model call that failed
    resumed = scripted("resume", first["run_id"], tmp_path / "ok.yaml", store, "--output", "json")
    second = json.loads(resumed.output)
    assert resumed.exit_code == 0, resumed.output
    # acquire is replayed; work runs; release runs again (the lock was taken again by this execution's body)
    assert second["calls"] == {"executed": 2, "replayed": 1, "cached": 0, "requests": 2, "failed": 0}
    paths = [
        s["path"]
        for s in json.loads(invoke("show", first["run_id"], "--store", store, "--output", "json").output)["steps"]
    ]
    assert "finally/release" in paths and any(p.startswith("finally@") and p.endswith("/release") for p in paths)


def test_a_tool_step_that_failed_is_called_again_on_resume(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: reader\nservers:\n  files: {command: files-server}\n"
        "steps:\n  - {id: read, tool: files.read_file, args: {path: notes.txt}}\n"
        "outputs:\n  text: '{{ steps.read.output }}'\n"
    )
    (tmp_path / "missing.yaml").write_text("tools:\n  files.read_file: {error: 'no such file'}\n")
    (tmp_path / "found.yaml").write_text("tools:\n  files.read_file: {text: hello}\n")
    store = str(tmp_path / "runs.db")
    failed = scripted("run", str(tmp_path / "p.yaml"), tmp_path / "missing.yaml", store, "--output", "json")
    assert failed.exit_code == 1 and "no such file" in failed.output
    run_id = json.loads(failed.output)["run_id"]
    # the cause was fixed (here: the fixture): the failed call is made again, not replayed
    resumed = scripted("resume", run_id, tmp_path / "found.yaml", store, "--output", "json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.output)["outputs"] == {"text": "hello"}


def test_resume_after_a_model_echoed_a_secret_reexecutes_that_call_instead_of_replaying_the_mask(
    tmp_path: Path,
) -> None:
    secret = "svc-0123456789abcdef"
    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: echo\nagents:\n  w: {instruction: Write.}\n"
        "steps:\n  - {id: draft, agent: w, prompt: draft}\n"
        "  - {id: edit, agent: w, prompt: 'edit {{ steps.draft.output }}'}\n"
        "  - {id: final, agent: w, prompt: final, retry: {max_attempts: 1}}\n"
        "outputs:\n  edited: '{{ steps.edit.output }}'\n"
    )
    rules = f"  - {{prompt: '^draft$', reply: 'uses {secret}'}}\n  - {{prompt: '^edit ', reply: edited}}\n"
    (tmp_path / "fail.yaml").write_text(
        "responses:\n" + rules + "  - {prompt: '^final$', reply: {error: bad_request}}\n"
    )
    (tmp_path / "ok.yaml").write_text("responses:\n" + rules + "  - {prompt: '^final$', reply: done}\n")
    runner, store = CliRunner(env={"SERVICE_TOKEN": secret}), str(tmp_path / "runs.db")
    failed = runner.invoke(
        main,
        [
            "run",
            str(tmp_path / "p.yaml"),
            "-q",
            "--scripted",
            str(tmp_path / "fail.yaml"),
            "--store",
            store,
            "--output",
            "json",
        ],
        catch_exceptions=False,
    )
    run_id = json.loads(failed.output)["run_id"]
    resumed = runner.invoke(
        main,
        ["resume", run_id, "-q", "--scripted", str(tmp_path / "ok.yaml"), "--store", store, "--output", "json"],
        catch_exceptions=False,
    )
    # the journal holds "uses ***" for draft: replaying it would change edit's request and refuse the resume
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.output)["calls"] == {
        "executed": 2,
        "replayed": 1,
        "cached": 0,
        "requests": 2,
        "failed": 0,
    }  # draft again, final; edit replayed
    assert secret not in resumed.output


def test_cache_serves_an_unchanged_rerun_without_calling_the_model(project: Path, store_url: str) -> None:
    args = [
        "run",
        str(project / "greet.yaml"),
        "-i",
        "who=Ada",
        "-i",
        "times=2",
        "--quiet",
        "--scripted",
        str(project / "greet.fixture.yaml"),
        "--store",
        store_url,
        "--output",
        "json",
        "--cache",
    ]
    first = json.loads(invoke(*args).output)
    second = json.loads(invoke(*args).output)
    assert first["calls"] == {"executed": 1, "replayed": 0, "cached": 0, "requests": 1, "failed": 0}
    # no model call: the same request was cached
    assert second["calls"] == {"executed": 0, "replayed": 0, "cached": 1, "requests": 0, "failed": 0}
    assert second["outputs"] == first["outputs"]
    without = json.loads(invoke(*args[:-1]).output)  # without --cache, the model is asked again
    assert without["calls"]["executed"] == 1


def test_show_sums_up_a_wide_fan_out_and_lists_what_did_not_simply_succeed(tmp_path: Path) -> None:
    (tmp_path / "fan.yaml").write_text(
        "flowctl: 1\nname: fan\ninputs:\n  items: {type: array}\nagents:\n  a: {instruction: x}\nsteps:\n"
        '  - {id: fan, agent: a, for_each: "{{ inputs.items }}", as: item, prompt: "item {{ item }}", join: collect,\n'
        "      retry: {max_attempts: 2, initial_delay: 10ms}}\n"
    )
    (tmp_path / "f.yaml").write_text(
        'responses:\n  - {prompt: "item 3", reply: {error: auth}}\n'
        '  - {prompt: "item 5", replies: [{error: rate_limit}, ok]}\ndefault: ok\n'
    )
    (tmp_path / "in.json").write_text(json.dumps({"items": list(range(12))}))
    store = tmp_path / "runs.db"
    ran = scripted("run", tmp_path / "fan.yaml", tmp_path / "f.yaml", store, "--inputs", str(tmp_path / "in.json"))
    assert ran.exit_code == 0, ran.output
    run_id = json.loads(invoke("runs", "--store", str(store), "--output", "json").output)[0]["run_id"]

    text = invoke("show", run_id, "--store", str(store)).output
    assert "fan[…]  12 items: 11 succeeded, 1 failed; 2 listed below (`show --items` lists every one)" in text
    listed = [line.split()[1] for line in text.splitlines() if line.lstrip().startswith(("✓ fan[", "✗ fan["))]
    assert listed == ["fan[3]", "fan[5]"]  # the failure and the retried item; the ten quiet ones are summed up
    everything = invoke("show", run_id, "--store", str(store), "--items").output
    assert sum(line.lstrip().startswith(("✓ fan[", "✗ fan[")) for line in everything.splitlines()) == 12
    assert "fan[…]" not in everything


def test_a_scripted_run_resumes_offline_unless_told_otherwise(project: Path) -> None:
    """A run started with --scripted answers from the same fixture on resume (it never silently reaches the real
    endpoint); --scripted picks another; --online calls the real models; a fixture that is gone is said."""
    store = project / "runs.db"
    failing = project / "failing.fixture.yaml"
    failed = scripted("run", str(project / "greet.yaml"), failing, store, "-i", "who=Ada", "--output", "json")
    assert failed.exit_code == 1
    run_id = json.loads(failed.output)["run_id"]
    failing.write_text(FIXTURE)  # the fixture the run started with now answers well
    resumed = invoke("resume", run_id, "--quiet", "--store", str(store), "--output", "json")
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming offline, as the run started: models answer from {failing}" in resumed.output

    again = scripted("run", str(project / "greet.yaml"), failing, store, "-i", "who=Bo", "--output", "json")
    assert again.exit_code == 0
    gone = project / "gone.fixture.yaml"
    gone.write_text(FAILING_FIXTURE)
    lost = scripted("run", str(project / "greet.yaml"), gone, store, "-i", "who=Cy", "--output", "json")
    lost_id = json.loads(lost.output)["run_id"]
    gone.unlink()
    refused = invoke("resume", lost_id, "--quiet", "--store", str(store))
    assert refused.exit_code == 2
    assert "which is gone: pass --scripted FILE to answer from another, or --online" in refused.output


def test_stream_shows_the_models_text_as_it_arrives(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "flowctl: 1\nname: streamed\nagents:\n  poet: {instruction: You write.}\n"
        'steps:\n  - {id: verse, agent: poet, prompt: "Write."}\noutputs:\n  verse: "{{ steps.verse.output }}"\n'
    )
    (tmp_path / "f.yaml").write_text('default: {content: "roses are red\\nviolets are blue", latency: 20ms}\n')
    ran = invoke("run", str(tmp_path / "p.yaml"), "--scripted", str(tmp_path / "f.yaml"), "--stream",
                 "--store", str(tmp_path / "runs.db"))  # fmt: skip
    assert ran.exit_code == 0, ran.output
    lines = [line.strip() for line in ran.output.splitlines()]
    assert lines.index("roses are red") + 1 == lines.index("violets are blue")  # streamed, line by line
    assert lines.index("violets are blue") < next(i for i, line in enumerate(lines) if "verse succeeded" in line)
