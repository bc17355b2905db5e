"""`flowctl serve`: pipelines offered to MCP clients as tools, over stdio or streamable HTTP (flowctl/serving/)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from flowctl.cli.common import EXIT_USAGE, load_or_exit, store_flag, store_option


@click.command()
@click.argument("paths", metavar="PIPELINE_OR_FOLDER...", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--transport",
    type=click.Choice(["stdio", "http"]),
    default="stdio",
    show_default=True,
    help="stdio: the client starts this command; http: streamable HTTP at http://HOST:PORT/mcp.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="With --transport http: the address to bind.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="With --transport http (0: any)."
)
@store_option
@click.option(
    "--scripted",
    type=click.Path(exists=True, dir_okay=False),
    help="Answer every model from this fixture (offline: tests, demos; see docs/scripted.md).",
)
def serve(
    paths: tuple[str, ...], transport: str, host: str, port: int, store_path: str | None, scripted: str | None
) -> None:
    """Offer pipelines as MCP tools: pipeline files, and every pipeline in a folder (not its subfolders). Each tool
    call is a journaled run (`flowctl runs`), resumable like any."""
    from functools import partial

    import anyio

    from flowctl.cli.lint import _pipeline_files
    from flowctl.interpreter.engine.stack_room import with_stack_room
    from flowctl.interpreter.persistence.locate import default_store_path
    from flowctl.serving.server import ServeOptions, bind, serve_http, serve_stdio
    from flowctl.serving.tools import describe, name_problems

    files = _pipeline_files(paths, recursive=False)
    if not files:
        raise click.UsageError("no pipeline files found (a pipeline is a YAML file with a top-level `flowctl:` key)")
    served = [describe(load_or_exit(str(file))) for file in files]
    problems = name_problems(served)
    if problems:
        for problem in problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(EXIT_USAGE)
    if scripted is not None:
        _check_fixture(scripted)
    store = store_path if store_path is not None else str(default_store_path())
    options = ServeOptions(
        served, store, store_flag(store_path), str(Path(scripted).resolve()) if scripted else None, dict(os.environ)
    )
    names = ", ".join(p.name for p in served)
    if transport == "stdio":
        click.echo(f"flowctl serve: {len(served)} tool(s) over stdio: {names}", err=True)
        with_stack_room(partial(anyio.run, serve_stdio, options, _exit_on_signal))
        return
    # served runs are unattended: no form may wait on this process's terminal (the client is asked instead)
    sys.stdin = open(os.devnull)  # noqa: SIM115  # for the life of the process
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise click.UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"flowctl serve: {len(served)} tool(s) at http://{shown}:{sock.getsockname()[1]}/mcp: {names}", err=True)
    try:
        with_stack_room(partial(anyio.run, serve_http, options, sock, host))
    finally:
        sock.close()


def _exit_on_signal(signum: int) -> None:
    """SIGINT/SIGTERM: the calls in flight are cancelled already (their runs resumable); leave now, without waiting
    for the SDK's stdin reader (exit 130 / 143, as `flowctl run`)."""
    click.echo(f"flowctl serve: stopped by signal {signum}; calls in flight were cancelled (resumable)", err=True)
    sys.stderr.flush()
    os._exit(128 + signum)


def _check_fixture(path: str) -> None:
    """A fixture that cannot be loaded is a usage error now, not a failed call later."""
    from flowctl.interpreter.errors import FlowctlError
    from flowctl.interpreter.providers.scripted import load_fixture

    try:
        load_fixture(Path(path))
    except FlowctlError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
