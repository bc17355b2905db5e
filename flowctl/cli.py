"""The `flowctl` command line. It chains the stages in plain sight and keeps imports lazy: `flowctl --version` and
`flowctl validate` never import anyio, openai or mcp.

Exit codes: 0 success/valid, 1 run failed or pipeline invalid, 2 usage problem or invalid pipeline given to `run`,
130/143 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from flowctl import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="flowctl")
def main() -> None:
    """flowctl: declarative YAML pipelines of LLM agents with MCP tools."""


# --- validate ---------------------------------------------------------------------------------------------------


def _pipeline_files(paths: tuple[str, ...]) -> list[Path]:
    """Named files are always validated; in folders, YAML files with a top-level `flowctl:` key are pipelines."""
    import re

    marker = re.compile(r"^flowctl\s*:", re.MULTILINE)
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            for candidate in sorted([*path.rglob("*.yaml"), *path.rglob("*.yml")]):
                if any(part.startswith(".") for part in candidate.parts):
                    continue
                try:
                    head = candidate.read_text(encoding="utf-8", errors="replace")[:20000]
                except OSError:
                    continue
                if marker.search(head):
                    files.append(candidate)
        else:
            files.append(path)
    return files


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "github", "sarif"]),
    default="text",
    show_default=True,
    help="Output format (github: Actions annotations; sarif: code scanning).",
)
@click.option("--resolve-tools", is_flag=True, help="Connect to MCP servers and check that named tools exist.")
def validate(paths: tuple[str, ...], fmt: str, resolve_tools: bool) -> None:
    """Validate pipeline files (and folders of them) without running anything."""
    from flowctl.dsl.diagnostics import Severity, finalize, render_github, render_json, render_text
    from flowctl.dsl.frontend import FrontEnd

    files = _pipeline_files(paths)
    if not files:
        raise click.UsageError("no pipeline files found (a pipeline is a YAML file with a top-level `flowctl:` key)")
    front = FrontEnd()
    diagnostics = []
    for file in files:
        front.root_dir = None  # each named file is the root of its own folder tree
        result = front.process(file)
        diagnostics.extend(result.diagnostics)
        if resolve_tools and result.graph is not None:
            from flowctl.interpreter.resolve import resolve_tools as resolve

            diagnostics.extend(resolve(result.graph))
    diagnostics = finalize(diagnostics)
    sources = front.sources()
    if fmt == "json":
        click.echo(render_json(diagnostics))
    elif fmt == "github":
        for d in diagnostics:
            click.echo(render_github(d))
    elif fmt == "sarif":
        from flowctl.dsl.sarif import render_sarif

        click.echo(render_sarif(diagnostics))
    else:
        for d in diagnostics:
            click.echo(render_text(d, sources.get(d.span.file)))
        errors = sum(d.severity is Severity.ERROR for d in diagnostics)
        warnings = len(diagnostics) - errors
        summary = f"{len(files)} file(s) checked: {errors} error(s), {warnings} warning(s)"
        click.echo(summary if diagnostics else f"{len(files)} file(s) checked: valid", err=bool(diagnostics))
    if any(d.severity is Severity.ERROR for d in diagnostics):
        sys.exit(EXIT_FAILED)


# --- schema and graph -------------------------------------------------------------------------------------------


@main.command()
def schema() -> None:
    """Print the JSON schema of the pipeline format (for editors: see docs/dsl.md)."""
    from importlib.resources import files

    click.echo(files("flowctl.schemas").joinpath("pipeline.schema.json").read_text(encoding="utf-8"), nl=False)


def _load_or_exit(file: str) -> Any:
    """Validate and compile, printing diagnostics and exiting 2 when the pipeline is invalid."""
    from flowctl.dsl.diagnostics import Severity, render_text
    from flowctl.dsl.frontend import load_pipeline

    graph, diagnostics, front = load_pipeline(file)
    sources = front.sources()
    for d in diagnostics:
        if graph is None or d.severity is Severity.WARNING:
            click.echo(render_text(d, sources.get(d.span.file)), err=True)
    if graph is None:
        click.echo(f"{file}: invalid pipeline; nothing was run", err=True)
        sys.exit(EXIT_USAGE)
    return graph


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mermaid", "dot", "svg", "png"]),
    default="mermaid",
    show_default=True,
    help="svg/png need Graphviz (`dot`) installed.",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
def graph(file: str, fmt: str, output: str | None) -> None:
    """Draw a pipeline's execution graph."""
    from flowctl.dsl.draw import to_dot, to_mermaid

    compiled = _load_or_exit(file)
    if fmt in ("svg", "png"):
        _render_image(to_dot(compiled), fmt, output)
        return
    text = to_mermaid(compiled) if fmt == "mermaid" else to_dot(compiled)
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


def _render_image(dot_text: str, fmt: str, output: str | None) -> None:
    import shutil
    import subprocess

    dot = shutil.which("dot")
    if dot is None:
        raise click.UsageError(
            "--format svg/png needs Graphviz: install it (e.g. `apt-get install graphviz`) or use --format dot"
        )
    if not output:
        raise click.UsageError(f"--format {fmt} writes a file: give -o FILE")
    subprocess.run([dot, f"-T{fmt}", "-o", output], input=dot_text.encode(), check=True)


def run_cli() -> None:  # pragma: no cover - console entry for `python -m flowctl`
    main()


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "json", "main"]
