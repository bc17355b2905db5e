"""The example pipelines in pipelines/: each validates without errors, runs offline with its fixture through the CLI,
and passes its `flowctl test` cases. mcp_time uses the real `mcp-server-time` server from the venv."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from flowctl.cli import main
from flowctl.dsl.diagnostics import Severity
from flowctl.dsl.frontend import load_pipeline
from flowctl.testing import test_command as flowctl_test

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ROOT / "pipelines"
EXAMPLES = sorted(
    p
    for p in [*PIPELINES.glob("*.yaml"), *PIPELINES.glob("seed/*.yaml")]  # seed/: the seed's compositions
    if not p.name.endswith((".fixture.yaml", ".test.yaml"))
)
CHILDREN = sorted([*(PIPELINES / "children").glob("*.yaml"), *(PIPELINES / "seed" / "children").glob("*.yaml")])
EXPECTED = {
    "data_pipeline",
    "multi_analysis",
    "project_management",
    "adaptive_analysis",
    "stateful_orchestrator",
    "event_driven",
    "resilience",
    "evaluator_optimizer",
    "mcp_time",
    "seed/event_coordinator",
    "seed/data_pipeline",
    "seed/multi_analysis",
    "seed/project_management",
    "seed/adaptive_analysis",
    "seed/stateful_orchestrator",
    "seed/best_practices",
}
MODELINE = "# yaml-language-server: $schema="


@pytest.fixture(autouse=True)
def venv_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """mcp_time starts `mcp-server-time`, installed in the venv's bin folder."""
    bin_dir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # offline means offline


def test_every_example_is_present() -> None:
    assert {p.relative_to(PIPELINES).with_suffix("").as_posix() for p in EXAMPLES} == EXPECTED


@pytest.mark.parametrize("path", EXAMPLES + CHILDREN, ids=lambda p: p.relative_to(PIPELINES).as_posix())
def test_example_validates_with_zero_errors_and_has_a_modeline(path: Path) -> None:
    graph, diagnostics, _ = load_pipeline(path)
    errors = [str(d) for d in diagnostics if d.severity is Severity.ERROR]
    assert errors == []
    assert graph is not None
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith(MODELINE)
    schema = (path.parent / first_line[len(MODELINE) :]).resolve()
    assert schema == (ROOT / "flowctl" / "schemas" / "pipeline.schema.json").resolve()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.relative_to(PIPELINES).with_suffix("").as_posix())
def test_example_has_a_header_fixture_and_test_cases(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "What it shows" in text
    name = path.relative_to(PIPELINES).with_suffix("").as_posix()
    assert f"flowctl run pipelines/{name}.yaml --scripted pipelines/{name}.fixture.yaml" in text
    assert path.with_name(f"{path.stem}.fixture.yaml").is_file()
    assert path.with_name(f"{path.stem}.test.yaml").is_file()


@pytest.mark.parametrize(
    "path", [p for p in EXAMPLES if p.parent.name == "seed"], ids=lambda p: p.relative_to(PIPELINES).as_posix()
)
def test_seed_test_files_check_every_model_call(path: Path) -> None:
    """The seed's compositions are tested call by call: agent, system message and prompt of every model call."""
    cases = yaml.safe_load(path.with_name(f"{path.stem}.test.yaml").read_text(encoding="utf-8"))["cases"]
    checked = [c for c in cases if "calls" in c.get("expect", {})]
    assert checked, "no case has `calls:` expectations"
    for case in checked:
        for call in case["expect"]["calls"]:
            assert {"agent", "system", "prompt"} <= set(call), (case["name"], call)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.relative_to(PIPELINES).with_suffix("").as_posix())
def test_example_runs_offline_with_its_fixture(path: Path, tmp_path: Path) -> None:
    fixture = path.with_name(f"{path.stem}.fixture.yaml")
    args = [
        "run",
        str(path),
        "--scripted",
        str(fixture),
        "--store",
        str(tmp_path / "runs.db"),
        "--output",
        "json",
        "-q",
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "succeeded"
    assert outcome["error"] is None
    assert outcome["outputs"]
    shown = CliRunner().invoke(main, ["show", outcome["run_id"], "--store", str(tmp_path / "runs.db")])
    assert shown.exit_code == 0
    assert "succeeded" in shown.stdout
    # the transcript tells every call: one block per recorded exchange
    logs = ["logs", outcome["run_id"], "--store", str(tmp_path / "runs.db")]
    records = json.loads(CliRunner().invoke(main, [*logs, "--output", "json"]).stdout)
    assert any(r["kind"] == "model" for r in records)
    text = CliRunner().invoke(main, logs).stdout
    assert sum(line.startswith("── ") for line in text.splitlines()) == sum(r["kind"] != "attempt" for r in records)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.relative_to(PIPELINES).with_suffix("").as_posix())
def test_example_test_cases_pass(path: Path) -> None:
    tests = path.with_name(f"{path.stem}.test.yaml")
    result = CliRunner().invoke(flowctl_test, [str(tests)], catch_exceptions=False)
    last = result.stdout.strip().splitlines()[-1]
    assert result.exit_code == 0, result.stdout
    assert re.fullmatch(r"[1-9][0-9]* passed, 0 failed", last)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.relative_to(PIPELINES).with_suffix("").as_posix())
def test_example_draws_as_mermaid(path: Path) -> None:
    result = CliRunner().invoke(main, ["graph", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(("flowchart", "graph", "%%"))


def test_adaptive_analysis_reports_the_unknown_pattern(tmp_path: Path) -> None:
    path = PIPELINES / "adaptive_analysis.yaml"
    fixture = PIPELINES / "adaptive_analysis.fixture.yaml"
    args = ["run", str(path), "--scripted", str(fixture), "--store", str(tmp_path / "r.db"), "--output", "json", "-q"]
    outputs = json.loads(CliRunner().invoke(main, args).stdout)["outputs"]
    assert outputs["errors"] == [{"error": "Unknown pattern: benchmark_audit"}]
    assert outputs["chosen"] == ["technical", "factual", "comparative"]


def test_resilience_shows_the_circuit_breaker_opening(tmp_path: Path) -> None:
    path = PIPELINES / "resilience.yaml"
    fixture = PIPELINES / "resilience.fixture.yaml"
    args = ["run", str(path), "--scripted", str(fixture), "--store", str(tmp_path / "r.db"), "--output", "json", "-q"]
    outputs = json.loads(CliRunner().invoke(main, args).stdout)["outputs"]
    assert outputs["related_errors"] == ["provider-timeout", "provider-timeout", "circuit-open", "circuit-open"]
    assert outputs["mode"] == "degraded"
