"""What several commands share: exit codes, the `--store` option and opening the store, loading a pipeline
for a command that runs or draws it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from flowctl.interpreter.persistence.store_errors import StoreAccess

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


store_option = click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False),
    help="Run store file (default: .flowctl/runs.db in the working directory).",
)


def open_store(store_path: str | None, access: StoreAccess) -> Any:
    """`run` creates the store; the other commands need one and never create it (`runs` and `show` only read)."""
    from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore, default_store_path

    return SqliteRunStore(Path(store_path) if store_path else default_store_path(), access=access)


def load_or_exit(file: str) -> Any:
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
