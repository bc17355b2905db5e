"""`flowctl test`: pipelines tested in isolation, with scripted models and tools, offline and without an API key.

A test file (`NAME.test.yaml`, or any `*.test.yaml`) names a pipeline and lists cases; each case gives inputs,
scripted model replies and tool results (a fixture file and/or inline rules), optional external signals, and
expectations on the run's status, outputs, state, events, steps, model calls and error.
The user reference is docs/testing.md.

Stages, in plain sight: load every test file with the hardened loader and check it (problems are diagnostics with
file:line:col, exit 2) → compile each pipeline once → run each case with `run_graph` on an in-memory store →
compare the outcome with the expectations → report (text or JSON). Exit codes: 0 all passed, 1 any failed, 2 usage
problem or invalid files.

Modules: `cases` (the test-file model, finding, loading and checking test files), `matchers` (the pattern language of
expectations), `runner` (running a case and comparing its outcome), and this one (the command and its report).

Only click is imported here, and the submodules only when the command runs (or a re-exported name is first used),
so registering the command keeps `flowctl --version` fast.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from flowctl.testing.cases import CaseResult

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# --- reporting --------------------------------------------------------------------------------------------------


def _render_text(results: list[CaseResult], deselected: int) -> None:
    from flowctl.testing._text import first_line

    current = None
    for result in results:
        if result.case.file != current:
            current = result.case.file
            click.echo(current)
        mark = "✓" if result.passed else "✗"
        click.echo(f"  {mark} {result.case.name} ({result.duration:.2f}s)")
        if result.passed:
            continue
        click.echo(f"      at {result.case.file}:{result.case.line}, run {result.run_id} {result.run_status}")
        for path, message in result.failures:
            click.echo(f"      {path}: {message}")
        if result.error and not any(p in ("status", "error") for p, _ in result.failures):
            click.echo(f"      run error: {first_line(result.error)}")
    if deselected:
        click.echo(f"({deselected} case(s) deselected by -k)")


def _summary(results: list[CaseResult]) -> str:
    passed = sum(r.passed for r in results)
    return f"{passed} passed, {len(results) - passed} failed"


def _report_problems(problems: list[tuple[Any, str | None]], fmt: str) -> None:
    from flowctl.dsl.diagnostics import render_text

    if fmt == "json":
        click.echo(json.dumps({"errors": [d.to_json() for d, _ in problems]}, indent=2))
        return
    for diagnostic, source in problems:
        click.echo(render_text(diagnostic, source), err=True)
    click.echo(f"{len(problems)} problem(s) in test files or pipelines; no case was run", err=True)


@click.command("test")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one document with every case (the summary line goes to stderr).",
)
@click.option("-k", "pattern", metavar="PATTERN", help="Only cases whose FILE::NAME contains PATTERN (any case).")
@click.option("-v", "--verbose", is_flag=True, help="Show each run's progress on stderr.")
def test_command(paths: tuple[str, ...], fmt: str, pattern: str | None, verbose: bool) -> None:
    """Run pipeline test cases (`*.test.yaml`) with scripted models and tools, offline.

    PATHS are test files or folders (searched for *.test.yaml); default: the current folder.
    Exit codes: 0 all passed, 1 a case failed, 2 invalid test files or pipelines, or nothing to run.
    """
    from flowctl.interpreter.engine.interrupts import EXIT_CODES, run_interruptibly
    from flowctl.testing.cases import find_test_files, load_cases
    from flowctl.testing.runner import run_case

    files = find_test_files(paths or (".",))
    if not files:
        raise click.UsageError("no test files found (test files are named *.test.yaml)")
    selector = pattern.lower() if pattern else None
    cases, problems, deselected = load_cases(files, selector)
    if problems:
        _report_problems(problems, fmt)
        sys.exit(EXIT_USAGE)
    if not cases:
        click.echo("no test cases selected" + (f" by -k {pattern!r}" if pattern else ""), err=True)
        sys.exit(EXIT_USAGE)

    finished: list[CaseResult] = []

    async def run_all() -> list[CaseResult]:
        for case in cases:
            finished.append(await run_case(case, verbose))
        return finished

    results, signum = run_interruptibly(run_all)
    if signum is not None or results is None:
        done = f"{len(finished)} of {len(cases)} case(s) finished"
        click.echo(f"interrupted by {signum.name if signum else 'a signal'}: {done}", err=True)
        sys.exit(EXIT_CODES[signum] if signum else EXIT_FAILED)
    summary = _summary(results)
    if fmt == "json":
        passed = sum(r.passed for r in results)
        document = {
            "cases": [r.to_json() for r in results],
            "passed": passed,
            "failed": len(results) - passed,
            "deselected": deselected,
        }
        click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=str))
        click.echo(summary, err=True)
    else:
        _render_text(results, deselected)
        click.echo(summary)
    sys.exit(EXIT_OK if all(r.passed for r in results) else EXIT_FAILED)


# --- re-exports, imported on first use --------------------------------------------------------------------------

_EXPORTS = {
    "Case": "flowctl.testing.cases",
    "CaseResult": "flowctl.testing.cases",
    "find_test_files": "flowctl.testing.cases",
    "load_cases": "flowctl.testing.cases",
    "compare": "flowctl.testing.runner",
    "run_case": "flowctl.testing.runner",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Case", "CaseResult", "compare", "find_test_files", "load_cases", "run_case", "test_command"]
