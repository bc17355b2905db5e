"""What several commands share: exit codes, the `--store` option and opening the store, loading a pipeline
for a command that runs or draws it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from flowctl.interpreter.persistence.locate import STORE_ENV

if TYPE_CHECKING:
    from flowctl.interpreter.persistence.store_errors import StoreAccess

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


store_option = click.option(
    "--store",
    "store_path",
    metavar="FILE|URL",
    envvar=STORE_ENV,
    show_envvar=True,
    help="The run store: a file, sqlite:///relative/path, sqlite:////absolute/path, :memory: or "
    "postgresql://user@host/db (default: .flowctl/runs.db in the working directory).",
)


def open_store(store_path: str | None, access: StoreAccess) -> Any:
    """`run` creates the store; the other commands need one and never create it (`runs` and `show` only read).
    A store named by FLOWCTL_STORE that cannot be used is said to come from there."""
    from flowctl.interpreter.persistence.locate import default_store_path
    from flowctl.interpreter.persistence.locate import open_store as open_located
    from flowctl.interpreter.persistence.store_errors import StoreError

    try:
        return open_located(store_path if store_path is not None else default_store_path(), access=access)
    except StoreError as exc:
        context = click.get_current_context(silent=True)
        if context is not None and context.get_parameter_source("store_path") is ParameterSource.ENVIRONMENT:
            exc.path = f"{exc.path} (from {STORE_ENV})"
        raise


LAST_RUN = "last"  # what a RUN_ID argument may say instead of an id: the run started last


def named_run(store: Any, run_id: str) -> str:
    """The run a command's RUN_ID argument names: a run's id, or `last` for the root run started last in this store
    (the first one `flowctl runs` lists). A run whose id is `last` (the Python API lets a caller choose ids) wins.
    Exits 2 when the store has no run yet."""
    if run_id != LAST_RUN or store.get_run(run_id) is not None:
        return run_id
    newest = store.list_runs(1, roots_only=True)
    if not newest:
        click.echo("error: the store has no runs yet (`last` names the run started last)", err=True)
        sys.exit(EXIT_USAGE)
    return str(newest[0].run_id)


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


def store_flag(store_path: str | None) -> str:
    """What a command printed for the user to run next must add to reach the same store: ` --store X` when `--store`
    named it (FLOWCTL_STORE stays set in the user's shell, and the default needs nothing). A password in a URL is
    shown as `***`: a secret is never printed."""
    import shlex

    from flowctl.interpreter.persistence.locate import mask_url

    context = click.get_current_context(silent=True)
    if store_path is None or context is None:
        return ""
    if context.get_parameter_source("store_path") is not ParameterSource.COMMANDLINE:
        return ""
    return f" --store {shlex.quote(mask_url(store_path))}"
