"""Secrets through the CLI: masked exactly where they must be (run, validate --resolve-tools, test), kept out of the
store, and restored from the environment when a run is resumed, so a resumed run computes what the run would have.

Real CLI runs: the scripted provider, a real SQLite store, real stdio servers (tests/support/mcp_servers).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from flowctl.cli import main

REPO = Path(__file__).resolve().parents[1]
LEAKS = REPO / "tests" / "support" / "mcp_servers" / "leaks_env_at_start.py"
TOKEN = "tok-0123456789abcdef"

READER = """\
flowctl: 1
name: reader
inputs:
  path: {type: string}
agents:
  w: {instruction: Work.}
steps:
  - {id: read, agent: w, prompt: 'read {{ inputs.path }}'}
  - {id: sum, agent: w, prompt: sum, retry: {max_attempts: 1}}
outputs:
  chars: '{{ inputs.path | length }}'
  report: '{{ inputs.path.endswith("/report.txt") and inputs.path.startswith("tok-") }}'
  read: '{{ steps.read.output }}'
  sum: '{{ steps.sum.output }}'
"""
# `read` answers only the real path: a run given the masked one gets no reply and fails
RULES = f"responses:\n  - {{prompt: '^read {TOKEN}/report.txt$', reply: read it}}\n"


def cli(env: dict[str, str | None], *args: str | Path) -> Result:
    return CliRunner(env=env).invoke(main, [str(a) for a in args], catch_exceptions=False)


def dump(store: Path) -> str:
    with sqlite3.connect(store) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "".join(str(row) for table in tables for row in conn.execute(f"SELECT * FROM {table}"))


@pytest.fixture
def reader(tmp_path: Path) -> Path:
    (tmp_path / "p.yaml").write_text(READER)
    (tmp_path / "fail.yaml").write_text(RULES + "  - {prompt: '^sum$', reply: {error: unavailable}}\n")
    (tmp_path / "ok.yaml").write_text(RULES + "  - {prompt: '^sum$', reply: total}\n")
    return tmp_path


def start(tmp_path: Path, fixture: str, store: str = "runs.db") -> Result:
    return cli(
        {"API_TOKEN": TOKEN},
        "run",
        tmp_path / "p.yaml",
        "-q",
        "-i",
        f"path={TOKEN}/report.txt",
        "--scripted",
        tmp_path / fixture,
        "--store",
        tmp_path / store,
        "--output",
        "json",
    )


def resume(tmp_path: Path, run_id: str, env: dict[str, str | None]) -> Result:
    args = ["resume", run_id, "-q", "--scripted", tmp_path / "ok.yaml", "--store", tmp_path / "runs.db"]
    return cli(env, *args, "--output", "json")


def test_a_resumed_run_computes_with_the_real_secret_the_store_never_holds(reader: Path) -> None:
    uninterrupted = start(reader, "ok.yaml", store="other.db")
    assert uninterrupted.exit_code == 0, uninterrupted.output
    failed = start(reader, "fail.yaml")
    assert failed.exit_code == 1, failed.output
    run_id = json.loads(failed.output)["run_id"]
    stored = dump(reader / "runs.db")
    assert TOKEN not in stored and "${API_TOKEN}/report.txt" in stored  # the store names the variable, not the value

    resumed = resume(reader, run_id, {"API_TOKEN": TOKEN})
    assert resumed.exit_code == 0, resumed.output
    outcome = json.loads(resumed.output)
    assert outcome["outputs"] == json.loads(uninterrupted.output)["outputs"]
    assert outcome["outputs"]["chars"] == len(f"{TOKEN}/report.txt") and outcome["outputs"]["report"] is True
    # `read` replayed: same request as before
    assert _counts(outcome["calls"]) == {"executed": 1, "replayed": 1, "cached": 0}
    assert TOKEN not in resumed.output and TOKEN not in dump(reader / "runs.db")
    shown = json.loads(cli({}, "show", run_id, "--store", reader / "runs.db", "--output", "json").output)
    assert shown["inputs"] == {"path": "${API_TOKEN}/report.txt"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"API_TOKEN": None}, "inputs held the value of API_TOKEN, which is not set now"),
        ({"API_TOKEN": "tok-something-else"}, "inputs held the value of API_TOKEN, which has changed since"),
    ],
)
def test_resume_refuses_when_the_secret_is_missing_or_changed(
    reader: Path, env: dict[str, str | None], message: str
) -> None:
    run_id = json.loads(start(reader, "fail.yaml").output)["run_id"]
    refused = resume(reader, run_id, env)
    assert refused.exit_code == 2, refused.output
    assert f"cannot resume run {run_id!r}: its {message}" in refused.output
    assert "Traceback" not in refused.output


FAILING_SERVER = """\
flowctl: 1
name: leaky
servers:
  tools:
    command: {python}
    args: [{leaks}, ROOT, GITHUB_TOKEN, BASE]
    env: {{ROOT: '${{PROJECT_DIR}}', GITHUB_TOKEN: '${{GH_ACCESS}}', BASE: '${{MCP_BASE}}'}}
steps:
  - {{id: call, tool: tools.list_issues, args: {{}}, retry: {{max_attempts: 1}}}}
"""
ENV = {"PROJECT_DIR": "/srv/projects/reader", "GH_ACCESS": "gh-access-0123456789", "MCP_BASE": "http://10.0.0.7:9000"}
SHOWN = "auth failed: ROOT=/srv/projects/reader"


def leaky(tmp_path: Path) -> Path:
    path = tmp_path / "leaky.yaml"
    path.write_text(FAILING_SERVER.format(python=sys.executable, leaks=LEAKS))
    return path


def test_run_masks_the_secret_variables_and_shows_the_others(tmp_path: Path) -> None:
    result = cli(ENV, "run", leaky(tmp_path), "--store", tmp_path / "runs.db")
    assert result.exit_code == 1
    # GITHUB_TOKEN's value comes from GH_ACCESS: secret; a folder and a base URL are shown as they are
    assert SHOWN in result.output and "BASE=http://10.0.0.7:9000" in result.output
    assert "GITHUB_TOKEN=***" in result.output
    assert ENV["GH_ACCESS"] not in result.output and ENV["GH_ACCESS"] not in dump(tmp_path / "runs.db")
    marked = cli({**ENV, "FLOWCTL_SECRETS": "MCP_BASE"}, "run", leaky(tmp_path), "--store", tmp_path / "runs.db")
    assert "BASE=***" in marked.output and SHOWN in marked.output


def test_validate_resolve_tools_masks_a_failing_servers_stderr(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "flowctl.cli", "validate", "--resolve-tools", str(leaky(tmp_path))]
    env = {**os.environ, "PYTHONPATH": str(REPO), **ENV}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot connect to server 'tools'" in done.stdout
    assert "GITHUB_TOKEN=***" in done.stdout and SHOWN in done.stdout
    assert ENV["GH_ACCESS"] not in done.stdout + done.stderr


def test_flowctl_test_masks_secrets_in_its_failure_report(tmp_path: Path) -> None:
    leaky(tmp_path)
    (tmp_path / "leaky.test.yaml").write_text(
        "pipeline: leaky.yaml\ncases:\n  - {name: lists, expect: {status: succeeded}}\n"
    )
    for fmt in ("text", "json"):
        result = cli(ENV, "test", tmp_path, "--format", fmt, "-v")
        assert result.exit_code == 1, result.output
        assert "GITHUB_TOKEN=***" in result.output and SHOWN in result.output
        assert ENV["GH_ACCESS"] not in result.output


def test_a_short_secret_is_not_masked_and_the_cli_says_so(tmp_path: Path) -> None:
    result = cli({**ENV, "GH_ACCESS": "abc"}, "run", leaky(tmp_path), "--store", tmp_path / "runs.db")
    assert result.exit_code == 1
    assert "warning: GH_ACCESS is read as a secret but its value is shorter than 6 characters" in result.output
    assert "GITHUB_TOKEN=abc" in result.output


# --- files a test file names stay in its folder tree ------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("pipeline: ../outside.env", "pipeline path '../outside.env' leaves the test file's folder"),
        ("pipeline: /etc/passwd", "pipeline path '/etc/passwd' leaves the test file's folder"),
        ("pipeline: p.yaml\nfixture: ../outside.env", "fixture path '../outside.env' leaves the test file's folder"),
    ],
)
def test_a_test_file_cannot_read_files_outside_its_folder(tmp_path: Path, line: str, message: str) -> None:
    (tmp_path / "outside.env").write_text("OUTSIDE_SECRET=outside-secret-value\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "p.yaml").write_text(READER)
    test_file = project / "p.test.yaml"
    test_file.write_text(f"{line}\ncases:\n  - {{name: one, inputs: {{path: x}}}}\n")
    result = cli({}, "test", test_file)
    assert result.exit_code == 2, result.output
    assert message in result.output and "[path-escape]" in result.output
    assert "outside-secret-value" not in result.output and "root:" not in result.output


def test_a_case_fixture_may_live_anywhere_in_the_searched_folder(tmp_path: Path, reader: Path) -> None:
    tests = reader / "tests"
    tests.mkdir()
    (tests / "p.test.yaml").write_text(
        "pipeline: ../p.yaml\ncases:\n"
        f"  - {{name: ok, fixture: ../ok.yaml, inputs: {{path: {TOKEN}/report.txt}},\n"
        "      expect: {outputs: {sum: total}}}\n"
    )
    assert cli({}, "test", reader).exit_code == 0  # the folder searched holds both
    named = cli({}, "test", tests / "p.test.yaml")  # named alone, the test file's folder is the limit
    assert named.exit_code == 2 and "flowctl test FOLDER" in named.output


def test_a_symlink_pointing_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.yaml").write_text("secret: outside-secret-value\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "p.yaml").symlink_to(tmp_path / "outside.yaml")
    (project / "p.test.yaml").write_text("cases:\n  - {name: one}\n")  # tests p.yaml next to it
    result = cli({}, "test", project)
    assert result.exit_code == 2, result.output
    assert "pipeline path 'p.yaml' leaves" in result.output and "outside-secret-value" not in result.output


def test_a_models_fixture_outside_the_pipelines_folder_is_a_validate_error(tmp_path: Path) -> None:
    (tmp_path / "outside.env").write_text("OUTSIDE_SECRET=outside-secret-value\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "p.yaml").write_text(
        "flowctl: 1\nname: p\nmodels:\n  default: {provider: scripted, model: m, fixture: ../outside.env}\n"
        "agents:\n  w: {instruction: Work.}\nsteps:\n  - {id: s, agent: w, prompt: go}\n"
    )
    for command in (["validate"], ["run", "--store", str(tmp_path / "runs.db")]):
        result = cli({}, *command, project / "p.yaml")
        assert result.exit_code in (1, 2), result.output
        assert "fixture path '../outside.env' leaves the pipeline's folder [path-escape]" in result.output
        assert "outside-secret-value" not in result.output


def _counts(calls: dict[str, int]) -> dict[str, int]:
    """The journal's counts of `--output json`'s `calls` (`requests` and `failed` count what was sent)."""
    return {key: calls[key] for key in ("executed", "replayed", "cached")}
