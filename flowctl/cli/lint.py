"""`flowctl validate`, `schema` and `graph`: the front end only (no anyio, openai or mcp is imported)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from flowctl.cli.common import EXIT_FAILED, load_or_exit


def _pipeline_files(paths: tuple[str, ...], *, recursive: bool = True) -> list[Path]:
    """Named files are always validated; in folders (and, `recursive`, their subfolders), YAML files with a top-level
    `flowctl:` key are pipelines."""
    from flowctl.dsl.loader import decode_lenient

    marker = re.compile(r"^flowctl\s*:", re.MULTILINE)
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            glob = path.rglob if recursive else path.glob
            for candidate in sorted([*glob("*.yaml"), *glob("*.yml")]):
                if any(part.startswith(".") for part in candidate.parts):
                    continue
                try:
                    head = decode_lenient(candidate.read_bytes()[:40000])
                except OSError:
                    continue
                if marker.search(head):
                    files.append(candidate)
        else:
            files.append(path)
    return files


@click.command()
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
    diagnostics = []
    sources: dict[str, str] = {}
    for file in files:
        # each named file is the root of its own folder tree: a child is judged from the file that includes it,
        # so a fresh front end per file keeps results independent of the order files are named in
        front = FrontEnd()
        result = front.process(file)
        diagnostics.extend(result.diagnostics)
        sources.update(front.sources())
        if resolve_tools and result.graph is not None:
            from flowctl.interpreter.mcp.resolve import resolve_tools as resolve

            diagnostics.extend(resolve(result.graph))
    diagnostics = finalize(diagnostics)
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


@click.command()
def schema() -> None:
    """Print the JSON schema of the pipeline format (for editors: see docs/dsl.md)."""
    from importlib.resources import files

    click.echo(files("flowctl.schemas").joinpath("pipeline.schema.json").read_text(encoding="utf-8"), nl=False)


@click.command()
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

    compiled = load_or_exit(file)
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
    done = subprocess.run([dot, f"-T{fmt}", "-o", output], input=dot_text.encode(), capture_output=True)
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip() or f"exit code {done.returncode}"
        raise click.ClickException(f"Graphviz could not draw the graph: {message}")
