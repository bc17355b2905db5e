"""`flowctl --version` and `flowctl validate` stay light: they import neither openai, mcp, anyio nor opentelemetry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
VALID = Path(__file__).parent / "golden" / "valid"
INVALID = Path(__file__).parent / "golden" / "invalid"
HEAVY = ("openai", "mcp", "anyio", "opentelemetry")

PROBE = """
import json, sys
from flowctl.cli import main
sys.argv = ["flowctl", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exit:
    code = exit.code
sys.stdout.flush()
heavy = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in __HEAVY__})
print("\\nHEAVY=" + json.dumps(heavy) + " EXIT=" + json.dumps(code))
""".replace("__HEAVY__", repr(HEAVY))


def run_cli(*args: str) -> tuple[list[str], int]:
    """Run the CLI in a fresh interpreter; the heavy packages it imported and its exit code."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    last = done.stdout.strip().splitlines()[-1]
    heavy, code = last.removeprefix("HEAVY=").split(" EXIT=")
    return json.loads(heavy), json.loads(code)


def test_version_imports_nothing_heavy() -> None:
    assert run_cli("--version") == ([], 0)


@pytest.mark.parametrize(
    ("args", "exit_code"),
    [
        ([str(VALID / "nested.yaml"), str(VALID / "tools.yaml")], 0),
        (["--format", "json", str(INVALID / "child_invalid.yaml")], 1),
        (["--format", "sarif", str(INVALID / "unknown_agent.yaml")], 1),
        (["--format", "github", str(VALID / "events.yaml")], 0),
    ],
)
def test_validate_imports_nothing_heavy(args: list[str], exit_code: int) -> None:
    assert run_cli("validate", *args) == ([], exit_code)


def test_graph_imports_nothing_heavy() -> None:
    assert run_cli("graph", str(VALID / "route.yaml")) == ([], 0)
