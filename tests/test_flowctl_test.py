"""`flowctl test` itself: passing and failing cases, readable diffs, matchers, state/events/steps expectations,
signals, inline fixtures, invalid test files (file:line:col, exit 2), -k selection, JSON output and discovery."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from flowctl.testing import test_command as flowctl_test

PIPELINE = """\
flowctl: 1
name: review
inputs:
  text: {type: string}
  strict: {type: boolean, default: false}
state:
  log: {reducer: append}
  scores: {reducer: merge}
agents:
  critic:
    instruction: You review text.
    output_schema:
      type: object
      required: [score, verdict]
      properties:
        score: {type: number}
        verdict: {type: string}
  editor: {instruction: You rewrite text.}
steps:
  - id: critique
    agent: critic
    prompt: "Review: {{ inputs.text }}"
    retry: {max_attempts: 2, initial_delay: 1ms}
    set: {log: "critique {{ output.score }}", scores: {first: "{{ output.score }}"}}
    emit: {event: reviewed, data: {score: "{{ output.score }}"}}
  - id: rewrite
    when: "steps.critique.output.score < 7 or inputs.strict"
    agent: editor
    prompt: "Rewrite: {{ inputs.text }}"
    on_error: continue
    default: "(unchanged)"
    set: {log: rewritten}
  - id: approval
    when: "inputs.strict"
    wait: {event: approved, timeout: 5s, match: "event.data.text == inputs.text"}
    emit: {event: released}
outputs:
  score: "{{ steps.critique.output.score }}"
  verdict: "{{ steps.critique.output.verdict }}"
  text: "{{ steps.rewrite.output if steps.rewrite.status != 'skipped' else inputs.text }}"
  tags: [draft, "{{ steps.critique.output.verdict }}"]
"""

FIXTURE = """\
responses:
  - agent: critic
    reply: {json: {score: 5, verdict: weak}}
  - agent: editor
    reply: A much better text.
"""


def write_project(tmp_path: Path, tests: str, name: str = "review.test.yaml") -> Path:
    (tmp_path / "review.yaml").write_text(PIPELINE)
    (tmp_path / "review.fixture.yaml").write_text(FIXTURE)
    path = tmp_path / name
    path.write_text(tests)
    return path


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(flowctl_test, [str(a) for a in args], catch_exceptions=False)


def last_line(result: Result) -> str:
    return result.stdout.strip().splitlines()[-1]


# --- passing and failing --------------------------------------------------------------------------------------


def test_a_passing_case(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """\
pipeline: review.yaml
fixture: review.fixture.yaml
cases:
  - name: weak text is rewritten
    inputs: {text: hello}
    expect:
      status: succeeded
      outputs: {score: 5, text: A much better text.}
""",
    )
    result = run(path)
    assert result.exit_code == 0, result.stdout
    assert "✓ weak text is rewritten" in result.stdout
    assert last_line(result) == "1 passed, 0 failed"


def test_a_failing_case_shows_a_readable_diff(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """\
pipeline: review.yaml
fixture: review.fixture.yaml
cases:
  - name: wrong expectations
    inputs: {text: hello}
    expect:
      outputs:
        score: 9
        verdict: weak
        tags: [draft, strong]
        text: "=~ ^unchanged"
      steps: {rewrite: skipped}
""",
    )
    result = run(path)
    assert result.exit_code == 1
    out = result.stdout
    assert "✗ wrong expectations" in out
    assert f"at {path}:4, run r-" in out  # where the case is, and which run to inspect
    assert "outputs.score: expected 9, got 5" in out
    assert 'outputs.tags[1]: expected "strong", got "weak"' in out
    assert 'outputs.text: expected a match for /^unchanged/, got "A much better text."' in out
    assert 'steps.rewrite.status: expected "skipped", got "succeeded"' in out
    assert "outputs.verdict" not in out  # only the differences are listed
    assert last_line(result) == "0 passed, 1 failed"


def test_unexpected_failure_shows_the_run_error(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """\
pipeline: review.yaml
cases:
  - name: the critic is down
    inputs: {text: hello}
    responses:
      - {agent: critic, reply: {error: auth, message: invalid API key}}
""",
    )
    result = run(path)
    assert result.exit_code == 1
    assert "status: expected 'succeeded', got 'failed': step 'critique' failed" in result.stdout
    assert "invalid API key" in result.stdout


# --- matchers -------------------------------------------------------------------------------------------------


def test_outputs_are_subset_matched_with_regex_and_operators(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """\
pipeline: review.yaml
fixture: review.fixture.yaml
cases:
  - name: matchers
    inputs: {text: hello}
    expect:
      outputs:
        score: {$gte: 1, $lt: 6, $type: number}
        verdict: "=~ ^we"
        tags: {$len: 2, $contains: weak}
        text: {$regex: "(?i)BETTER", $ne: hello}
  - name: a key that is not there, a wrong type and a failed operator
    inputs: {text: hello}
    expect:
      outputs:
        score: {$gt: 5}
        verdict: {$type: [number, "null"]}
        tags: {$not: {$contains: draft}}
""",
    )
    result = run(path)
    assert result.exit_code == 1
    out = result.stdout
    assert "✓ matchers" in out
    assert "outputs.score: expected a number > 5, got 5" in out
    assert 'outputs.verdict: expected type number or null, got "weak"' in out
    assert "outputs.tags: expected no match for $contains" in out
    assert last_line(result) == "1 passed, 1 failed"


def test_nested_mappings_are_subsets_but_empty_mapping_means_empty(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """\
pipeline: review.yaml
fixture: review.fixture.yaml
cases:
  - name: subset
    inputs: {text: hello}
    expect:
      state: {scores: {first: 5}}
  - name: empty
    inputs: {text: hello}
    expect:
      state: {scores: {}}
""",
    )
    result = run(path)
    assert "✓ subset" in result.stdout
    assert 'state.scores: expected an empty mapping, got {"first": 5}' in result.stdout


def test_booleans_do_not_match_numbers(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """\
pipeline: review.yaml
fixture: review.fixture.yaml
cases:
  - name: one is not true
    inputs: {text: hello}
    expect: {outputs: {score: true}}
""",
    )
    result = run(path)
    assert "outputs.score: expected true, got 5" in result.stdout


# --- state, events, steps, error -----------------------------------------------------------------------------


def test_state_events_steps_and_error_expectations(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """\
pipeline: review.yaml
fixture: review.fixture.yaml
cases:
  - name: everything observable
    inputs: {text: hello}
    expect:
      state:
        log: [critique 5, rewritten]
        scores: {first: 5}
      events: [{name: reviewed, data: {score: 5}}]
      steps:
        critique: {status: succeeded, attempts: 1, output: {verdict: weak}}
        rewrite: succeeded
        approval: skipped
  - name: events in the wrong order
    inputs: {text: hello}
    expect:
      events: [released, reviewed]
  - name: editor failure is continued and the default used
    inputs: {text: hello}
    responses:
      - {agent: editor, reply: {error: bad_request, message: too long}}
    expect:
      outputs: {text: (unchanged)}
      steps:
        rewrite: {status: failed, output: (unchanged), error: {cause: bad-request, message: "=~ too long"}}
      state: {log: [critique 5]}
  - name: the run error
    inputs: {text: hello}
    responses:
      - {agent: critic, reply: {json: {score: "five"}}}
    expect:
      error: does not match the output schema
      steps: {critique: {status: failed, attempts: 2}, rewrite: pending}
""",
    )
    result = run(path)
    out = result.stdout
    assert "✓ everything observable" in out
    assert "events[0]: expected event 'released'; events in order: reviewed" in out
    assert "✓ editor failure is continued and the default used" in out
    assert "✓ the run error" in out
    assert last_line(result) == "3 passed, 1 failed"


def test_calls_check_every_model_call_agent_system_and_prompt(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """\
pipeline: review.yaml
fixture: review.fixture.yaml
cases:
  - name: every call, in any order
    inputs: {text: hello}
    expect:
      calls:
        - {agent: editor, system: You rewrite text., prompt: "Rewrite: hello", step: rewrite, reply: "=~ better"}
        - {agent: critic, system: "=~ ^You review text", prompt: "Review: hello"}
  - name: a wrong prompt, a missing call and an unexpected one
    inputs: {text: hello}
    expect:
      calls:
        - {agent: critic, prompt: "Review: goodbye"}
        - {agent: editor}
        - {agent: judge}
""",
    )
    result = run(path)
    out = result.stdout
    assert "✓ every call, in any order" in out
    assert "✗ a wrong prompt, a missing call and an unexpected one" in out
    assert 'calls[0].prompt: expected "Review: goodbye", got "Review: hello"' in out
    assert "(nearest call: agent 'critic' at step 'critique'" in out
    assert 'calls[2].agent: expected "judge", got "critic"' in out  # compared with the call left over
    assert "calls: expected 3 model call(s), the run made 2" in out
    assert "calls[1]" not in out  # the editor's call matched
    assert last_line(result) == "1 passed, 1 failed"


def test_calls_count_child_runs_and_unexpected_calls(tmp_path: Path) -> None:
    (tmp_path / "parent.yaml").write_text(
        """\
flowctl: 1
name: parent
agents:
  helper: {params: [kind], name: "helper_{{ kind }}", instruction: "Help with {{ kind }}."}
steps:
  - id: each
    for_each: [a, b]
    pipeline: child
    inputs: {kind: "{{ item }}"}
pipelines:
  child:
    inputs: {kind: {type: string}}
    steps:
      - id: ask
        agent: {use: helper, with: {kind: "{{ inputs.kind }}"}}
        prompt: "Do {{ inputs.kind }}"
"""
    )
    (tmp_path / "parent.test.yaml").write_text(
        """\
cases:
  - name: both children
    default: done
    expect:
      calls:
        - {agent: helper_b, system: Help with b., prompt: Do b, step: "each[1]/ask"}
        - {agent: helper_a, system: Help with a., prompt: Do a, tools: []}
  - name: one call unaccounted for
    default: done
    expect:
      calls:
        - {agent: helper_a}
"""
    )
    result = run(tmp_path / "parent.test.yaml")
    out = result.stdout
    assert "✓ both children" in out
    assert "calls: expected 1 model call(s), the run made 2" in out
    assert "calls: a model call no entry expects: agent 'helper_b' at step 'each[1]/ask', prompt 'Do b'" in out


def test_calls_see_failed_calls_and_their_error_code(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """\
pipeline: review.yaml
fixture: review.fixture.yaml
cases:
  - name: the critic is down
    inputs: {text: hello}
    responses:
      - {agent: critic, reply: {error: auth, message: invalid API key}}
    expect:
      status: failed
      calls:
        - {agent: critic, prompt: "Review: hello", reply: null, error: auth-error}
""",
    )
    result = run(path)
    assert "✓ the critic is down" in result.stdout, result.stdout


def test_calls_entries_are_checked_when_loaded(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """\
pipeline: review.yaml
fixture: review.fixture.yaml
cases:
  - name: bad
    expect:
      calls:
        - {agent: critic, user: "Review: hello"}
""",
    )
    result = run(path)
    assert result.exit_code == 2
    assert "unknown key 'user' in an expected model call" in result.stderr


def test_signals_are_delivered_through_the_store(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """\
pipeline: review.yaml
fixture: review.fixture.yaml
cases:
  - name: approval arrives
    inputs: {text: hello, strict: true}
    signals:
      - {event: approved, data: {text: other}, after: 10ms}
      - {event: approved, data: {text: hello, by: ann}, after: 30ms}
    expect:
      steps: {approval: {status: succeeded, output: {by: ann}}}
      events: [reviewed, {name: approved, source: signal, data: {text: hello}}, released]
""",
    )
    result = run(path)
    assert result.exit_code == 0, result.stdout


def test_a_case_timeout_is_a_failure(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """\
pipeline: review.yaml
fixture: review.fixture.yaml
cases:
  - name: nobody approves
    inputs: {text: hello, strict: true}
    timeout: 200ms
""",
    )
    result = run(path)
    assert result.exit_code == 1
    assert "run: did not finish within the case timeout of 0.2s" in result.stdout


def test_inline_rules_come_before_the_fixture_and_tools_override(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """\
cases:
  - name: inline first
    inputs: {text: hello}
    fixture: review.fixture.yaml
    responses:
      - {agent: critic, reply: {json: {score: 9, verdict: fine}}}
    expect:
      outputs: {score: 9, text: hello}
      steps: {rewrite: skipped}
  - name: fixture only (the default pipeline is review.yaml next to review.test.yaml)
    inputs: {text: hello}
    fixture: review.fixture.yaml
    expect: {outputs: {score: 5}}
  - name: no fixture at all fails loudly instead of calling a real model
    inputs: {text: hello}
    expect:
      error: no scripted reply for agent 'critic'
""",
    )
    result = run(path)
    assert result.exit_code == 0, result.stdout
    assert last_line(result) == "3 passed, 0 failed"


# --- invalid files --------------------------------------------------------------------------------------------


def test_invalid_test_file_reports_file_line_col_and_exits_2(tmp_path: Path) -> None:
    path = write_project(
        tmp_path,
        """\
pipeline: review.yaml
fixture: review.fixture.yaml
cases:
  - name: typo
    inptus: {text: hello}
    expect:
      outputs: {scor: 5, verdict: {$regx: a}}
      steps: {critque: failed, rewrite: done}
      status: crashed
  - name: bad fixture rule
    responses:
      - {agent: critic, reply: {error: rate_limited}}
  - name: negative timeout
    timeout: -5
""",
    )
    result = CliRunner().invoke(flowctl_test, [str(path)], catch_exceptions=False)
    assert result.exit_code == 2
    err = result.stderr
    name = path.name
    assert f"{name}:5:5: error: unknown key 'inptus' in a test case [unknown-key]" in err
    assert "did you mean 'inputs'?" in err
    assert f"{name}:7:17: error: unknown key 'scor' in the pipeline's outputs" in err
    assert f"{name}:7:36: error: unknown operator '$regx'" in err
    assert f"{name}:8:15: error: unknown key 'critque' in the pipeline's steps" in err
    assert f"{name}:8:41: error: unknown step status 'done'" in err
    assert f"{name}:9:15: error: unknown run status 'crashed'" in err
    assert f"{name}:12:40: error: responses[0].reply.error: unknown error kind 'rate_limited'" in err
    assert f"{name}:14:14: error: a duration cannot be negative: -5" in err
    assert "no case was run" in err
    assert "passed" not in result.stdout


def test_yaml_syntax_error_and_missing_pipeline(tmp_path: Path) -> None:
    (tmp_path / "broken.test.yaml").write_text("cases:\n  - name: [unclosed\n")
    (tmp_path / "orphan.test.yaml").write_text("cases:\n  - name: x\n")
    result = run(tmp_path)
    assert result.exit_code == 2
    assert "broken.test.yaml:2:20: error: invalid YAML" in result.stderr
    assert "orphan.test.yaml:1:1: error: missing required key 'pipeline'" in result.stderr
    assert "add orphan.yaml next to this file" in result.stderr


def test_an_invalid_pipeline_is_reported_and_nothing_runs(tmp_path: Path) -> None:
    path = write_project(tmp_path, "pipeline: review.yaml\ncases:\n  - name: x\n")
    (tmp_path / "review.yaml").write_text(PIPELINE.replace("agent: editor", "agent: edtor"))
    result = run(path)
    assert result.exit_code == 2
    assert "review.yaml:28:12: error: unknown agent 'edtor'" in result.stderr
    assert "pipeline review.yaml is invalid (1 error(s)); no case can run" in result.stderr.replace(
        str(tmp_path) + "/", ""
    )


# --- selection, formats, discovery ----------------------------------------------------------------------------

CASES = """\
pipeline: review.yaml
fixture: review.fixture.yaml
cases:
  - {name: alpha one, inputs: {text: a}}
  - {name: beta, inputs: {text: b}, expect: {outputs: {score: 1}}}
  - {name: Alpha two, inputs: {text: c}}
"""


def test_k_selects_cases_by_substring(tmp_path: Path) -> None:
    path = write_project(tmp_path, CASES)
    result = run(path, "-k", "alpha")
    assert result.exit_code == 0, result.stdout
    assert "alpha one" in result.stdout and "Alpha two" in result.stdout and "beta" not in result.stdout
    assert "(1 case(s) deselected by -k)" in result.stdout
    assert last_line(result) == "2 passed, 0 failed"
    assert run(path, "-k", "beta").exit_code == 1
    nothing = run(path, "-k", "gamma")
    assert nothing.exit_code == 2
    assert "no test cases selected by -k 'gamma'" in nothing.stderr


def test_json_format(tmp_path: Path) -> None:
    path = write_project(tmp_path, CASES)
    result = run(path, "--format", "json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert (document["passed"], document["failed"], document["deselected"]) == (2, 1, 0)
    beta = next(c for c in document["cases"] if c["name"] == "beta")
    assert beta["status"] == "failed"
    assert beta["run_status"] == "succeeded"
    assert beta["failures"] == [{"path": "outputs.score", "message": "expected 1, got 5"}]
    assert result.stderr.strip() == "2 passed, 1 failed"


def test_json_format_for_invalid_files(tmp_path: Path) -> None:
    path = write_project(tmp_path, "pipeline: review.yaml\ncases: []\n")
    result = run(path, "--format", "json")
    assert result.exit_code == 2
    errors = json.loads(result.stdout)["errors"]
    assert errors[0]["line"] == 2 and errors[0]["code"] == "wrong-type"


def test_folders_are_searched_for_test_files(tmp_path: Path) -> None:
    write_project(tmp_path, CASES.replace("score: 1", "score: 5"))
    sub = tmp_path / "more"
    sub.mkdir()
    (sub / "other.test.yaml").write_text(
        "pipeline: ../review.yaml\nfixture: ../review.fixture.yaml\ncases:\n  - {name: deep, inputs: {text: d}}\n"
    )
    hidden = tmp_path / ".cache"
    hidden.mkdir()
    (hidden / "ignored.test.yaml").write_text("this: is not read\n")
    (tmp_path / "notes.yaml").write_text("not: a test file\n")
    result = run(tmp_path)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "deep" in result.stdout
    assert last_line(result) == "4 passed, 0 failed"


def test_no_test_files_is_a_usage_error(tmp_path: Path) -> None:
    result = run(tmp_path)
    assert result.exit_code == 2
    assert "no test files found" in result.output


def test_importing_the_command_stays_cheap() -> None:
    heavy = "('anyio', 'jinja2', 'jsonschema', 'yaml', 'mcp', 'openai')"
    code = f"import sys, flowctl.testing; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("verbose", [False, True])
def test_verbose_streams_progress_to_stderr(tmp_path: Path, verbose: bool) -> None:
    path = write_project(tmp_path, CASES.replace("score: 1", "score: 5"))
    result = run(path, *(["-v"] if verbose else []))
    assert result.exit_code == 0
    assert ("▸ critique [agent]" in result.stderr) is verbose


SLOW_PIPELINE = """\
flowctl: 1
name: slow
servers:
  calc: {{command: {python}, args: [{calc}]}}
steps:
  - id: nap
    tool: calc.slow
    args: {{seconds: 600, started: "{started}"}}
"""


def test_sigterm_ends_flowctl_test_cleanly(tmp_path: Path) -> None:
    """A case in progress (here: inside a real MCP tool call) is cancelled; the command says how far it got."""
    import os
    import signal
    import time

    calc = Path(__file__).parent / "support" / "mcp_servers" / "calc_server.py"
    started = tmp_path / "started"
    (tmp_path / "slow.yaml").write_text(
        SLOW_PIPELINE.format(python=sys.executable, calc=calc, started=started), encoding="utf-8"
    )
    (tmp_path / "slow.test.yaml").write_text(
        "pipeline: slow.yaml\ncases:\n  - name: naps\n    expect: {status: succeeded}\n", encoding="utf-8"
    )
    flowctl = Path(sys.executable).parent / "flowctl"
    process = subprocess.Popen(
        [str(flowctl), "test", "slow.test.yaml"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60  # a safety net, never reached when things work
        while not started.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.poll() is None, process.communicate()
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, stderr
    assert "interrupted by SIGTERM: 0 of 1 case(s) finished" in stderr
    assert "Traceback" not in stderr


def test_a_pipeline_path_too_long_for_the_system_is_a_diagnostic_not_a_crash(tmp_path: Path) -> None:
    """Found by the property test: `Path.is_file` raises on a name longer than the file system allows."""
    (tmp_path / "x.test.yaml").write_text("pipeline: 'x" + "9" * 5000 + "'\ncases: []\n", encoding="utf-8")
    result = CliRunner().invoke(flowctl_test, [str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "pipeline file not found" in result.output
    assert "Traceback" not in result.output


def test_long_texts_that_differ_say_where() -> None:
    from flowctl.testing.matchers import Exact

    expected, actual = "Analyze: " + "x" * 70 + "\nContent: a", "Analyze: " + "x" * 70 + "\nContent: b"
    [(path, message)] = Exact(expected).check(actual, "calls[0].prompt")
    assert path == "calls[0].prompt"
    where = 'they differ from character 89: expected "xxxxxxxxxx\\nContent: a", got "xxxxxxxxxx\\nContent: b"'
    assert message.endswith(where)
    assert "differ" not in Exact("short").check("shorter", "p")[0][1]
