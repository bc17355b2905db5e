"""`resolve_tools` and `flowctl validate --resolve-tools`: real servers are started and asked for their tools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flowctl.dsl.diagnostics import Diagnostic, Severity, finalize
from flowctl.dsl.frontend import load_pipeline
from flowctl.interpreter.mcp.resolve import resolve_tools
from tests.integration.helpers import REPO, Flow


def resolve(flow: Flow, name: str, child_tool: str) -> tuple[Path, list[Diagnostic]]:
    flow.pipeline("resolve_child.yaml", child_tool=child_tool)
    path = flow.pipeline(name)
    graph, diagnostics, _ = load_pipeline(path)
    assert graph is not None, [str(d) for d in diagnostics]
    return path, finalize(resolve_tools(graph, env={}))


def line_of(path: Path, text: str) -> int:
    """The line of `text`. A step's span is its `- id:` line; a server's or agent's, the first line of its body."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_every_named_tool_exists(flow: Flow) -> None:
    _, diagnostics = resolve(flow, "resolve_ok.yaml", child_tool="echo")
    assert diagnostics == []


def test_unknown_tools_and_unreachable_servers_are_diagnostics_at_their_yaml_lines(flow: Flow) -> None:
    path, diagnostics = resolve(flow, "resolve_bad.yaml", child_tool="shout")
    child = path.parent / "resolve_child.yaml"
    found = {(d.code, Path(d.span.file).name, d.span.line, d.message) for d in diagnostics}
    assert [d.code for d in diagnostics if d.severity is Severity.WARNING] == ["invalid-value"]  # the optional one
    spare = next(d for d in diagnostics if d.severity is Severity.WARNING)
    assert spare.message.startswith("cannot connect to server 'spare'")
    assert spare.hint == "it is `optional: true`: agents that name it will run without its tools"
    calc = line_of(path, "calc:") + 1
    assert found == {
        (
            "invalid-value",
            path.name,
            line_of(path, "broken:") + 1,
            found_message(diagnostics, "cannot connect to server 'broken'"),
        ),
        ("invalid-value", path.name, line_of(path, "spare:") + 1, spare.message),
        ("unknown-tool", path.name, calc, "server 'calc' `allowed_tools` names 'pdi', which the server does not offer"),
        (
            "unknown-tool",
            path.name,
            calc,
            "server 'calc' `idempotent_tools` names 'countr', which the server does not offer",
        ),
        ("unknown-tool", path.name, line_of(path, "id: typo"), "server 'calc' has no tool 'ad'"),
        ("unknown-tool", path.name, line_of(path, "picky:") + 1, "server 'wide' has no tool 'nope'"),
        (
            "unknown-tool",
            path.name,
            line_of(path, "picky:") + 1,
            "agent 'picky' allows tool 'sloww', which none of its servers ('calc', 'wide') has",
        ),
        ("unknown-tool", path.name, line_of(path, "narrow:") + 1, "server 'calc' has no tool 'slow'"),
        ("unknown-tool", child.name, line_of(child, "id: inner"), "server 'calc' has no tool 'shout'"),
    }

    def hint(tool: str) -> str:
        return next(d.hint for d in diagnostics if f"tool {tool!r}" in d.message)

    assert hint("ad") == "did you mean 'add'?"
    assert next(d.hint for d in diagnostics if "'pdi'" in d.message) == "did you mean 'pid'?"
    assert next(d.hint for d in diagnostics if "'countr'" in d.message) == "did you mean 'counter'?"
    assert hint("sloww") == "did you mean 'slow'?"
    # what a model is offered honours the server's allowed_tools; a direct `tool:` step (calc.slow) is not limited
    assert "'add', 'echo', 'pid'" in hint("slow")
    broken = next(d for d in diagnostics if d.code == "invalid-value")
    assert broken.message.startswith("cannot connect to server 'broken': failed to start: exited with code 7")
    assert "fatal: config missing" in broken.message


def found_message(diagnostics: list[Diagnostic], start: str) -> str:
    return next(d.message for d in diagnostics if d.message.startswith(start))


def test_cli_validate_resolve_tools(flow: Flow) -> None:
    flow.pipeline("resolve_child.yaml", child_tool="echo")
    bad, ok = flow.pipeline("resolve_bad.yaml"), flow.pipeline("resolve_ok.yaml")
    command = [sys.executable, "-m", "flowctl.cli", "validate", "--resolve-tools"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    failed = subprocess.run([*command, str(bad)], capture_output=True, text=True, env=env, timeout=60)
    assert failed.returncode == 1, failed.stderr
    assert "server 'calc' has no tool 'ad'" in failed.stdout and "[unknown-tool]" in failed.stdout
    assert "cannot connect to server 'broken'" in failed.stdout
    passed = subprocess.run([*command, str(ok)], capture_output=True, text=True, env=env, timeout=60)
    assert passed.returncode == 0, passed.stdout + passed.stderr


def test_server_prompts_and_resources_are_checked(flow: Flow) -> None:
    path = flow.pipeline("resolve_context.yaml")
    graph, diagnostics, _ = load_pipeline(path)
    assert graph is not None, [str(d) for d in diagnostics]
    found = {(d.span.line, d.message, d.hint) for d in finalize(resolve_tools(graph, env={}))}
    assert found == {
        (line_of(path, "prompt: styel"), "server 'calc' has no prompt 'styel'", "did you mean 'style'?"),
        (line_of(path, 'calc://guid"'), "server 'calc' has no resource 'calc://guid'", "did you mean 'calc://guide'?"),
        (
            line_of(path, "mood: calm"),
            "prompt 'style' of server 'calc': missing required argument 'tone'",
            "it offers: 'tone'",
        ),
        (line_of(path, "mood: calm"), "prompt 'style' of server 'calc': unknown argument 'mood'", "it offers: 'tone'"),
        (
            line_of(path, "calc://tabels/2"),
            "server 'calc' has no resource 'calc://tabels/2'",
            "did you mean 'calc://tables/{n}'?",
        ),
        (line_of(path, "prompt: stile"), "server 'calc' has no prompt 'stile'", "did you mean 'style'?"),
    }
