"""The `flowctl` command line. It chains the stages in plain sight and keeps imports lazy: `flowctl --version` and
`flowctl validate` never import anyio, openai or mcp.

Exit codes: 0 success/valid, 1 run failed or pipeline invalid, 2 usage problem, invalid pipeline given to `run` or a run
store that cannot be used (`store_errors`),
130/143 interrupted."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from flowctl import __version__
from flowctl.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from flowctl.cli.inspect import runs, show, signal
from flowctl.cli.lint import graph, schema, validate
from flowctl.cli.running import resume, run
from flowctl.cli.serve import serve
from flowctl.cli.transcript import logs
from flowctl.cli.workers import submit, worker, workers
from flowctl.testing import test_command

if TYPE_CHECKING:
    from flowctl.interpreter.persistence.store_errors import StoreError


class _Commands(click.Group):
    """The command group; a run store that cannot be used, or a run taken over by another process, ends any command
    with one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from flowctl.interpreter.persistence.store_errors import ClaimLost, StoreError

        try:
            return super().invoke(ctx)
        except StoreError as exc:
            _report_store_error(exc, ctx)
        except ClaimLost as exc:  # another process took the run over: it finishes it, this one stops
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_FAILED)


def _report_store_error(exc: StoreError, ctx: click.Context) -> NoReturn:
    """`error: run store FILE: problem — advice`: exit 2 (fix the environment), or 1 when it stopped a run part-way,
    with the command that resumes that run."""
    import shlex

    from flowctl.interpreter.persistence.locate import default_store_path

    click.echo(f"error: {exc}", err=True)
    if exc.run_id is None:
        ctx.exit(EXIT_USAGE)
    store = "" if Path(exc.path) == default_store_path() else f" --store {shlex.quote(exc.path)}"
    resume = f"flowctl resume {exc.run_id}{store}"
    click.echo(f"run {exc.run_id} stopped part-way; once that is fixed, resume it: {resume}", err=True)
    ctx.exit(EXIT_FAILED)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="flowctl")
def main() -> None:
    """flowctl: declarative YAML pipelines of LLM agents with MCP tools."""


for command in (
    validate,
    schema,
    graph,
    run,
    resume,
    runs,
    show,
    logs,
    signal,
    serve,
    test_command,
    worker,
    submit,
    workers,
):
    main.add_command(command)


__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "main"]
