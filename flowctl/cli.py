"""The `flowctl` command line. It chains the stages in plain sight and keeps imports lazy: `flowctl --version` and
`flowctl validate` never import anyio, openai or mcp.

Exit codes: 0 success/valid, 1 run failed or pipeline invalid, 2 usage problem, invalid pipeline given to `run` or a run
store that cannot be used (`store_errors`),
130/143 interrupted.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from flowctl import __version__
from flowctl.testing import test_command

if TYPE_CHECKING:
    from flowctl.interpreter.store_errors import StoreAccess, StoreError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Commands(click.Group):
    """The command group; a run store that cannot be used ends any command with one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from flowctl.interpreter.store_errors import StoreError

        try:
            return super().invoke(ctx)
        except StoreError as exc:
            _report_store_error(exc, ctx)


def _report_store_error(exc: StoreError, ctx: click.Context) -> NoReturn:
    """`error: run store FILE: problem — advice`: exit 2 (fix the environment), or 1 when it stopped a run part-way,
    with the command that resumes that run."""
    import shlex

    from flowctl.interpreter.sqlite_store import default_store_path

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
            from flowctl.interpreter.resolve import resolve_tools as resolve

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
    done = subprocess.run([dot, f"-T{fmt}", "-o", output], input=dot_text.encode(), capture_output=True)
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip() or f"exit code {done.returncode}"
        raise click.ClickException(f"Graphviz could not draw the graph: {message}")


# --- run, resume and the run store -----------------------------------------------------------------------------

_store_option = click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False),
    help="Run store file (default: .flowctl/runs.db in the working directory).",
)


def _open_store(store_path: str | None, access: StoreAccess) -> Any:
    """`run` creates the store; the other commands need one and never create it (`runs` and `show` only read)."""
    from flowctl.interpreter.sqlite_store import SqliteRunStore, default_store_path

    return SqliteRunStore(Path(store_path) if store_path else default_store_path(), access=access)


def _parse_inputs(graph: Any, pairs: tuple[str, ...], inputs_file: str | None) -> dict[str, Any]:
    """`--inputs FILE` (UTF-8, or UTF-16 with a BOM), then `-i KEY=VALUE`s; JSON past the limits in
    flowctl.interpreter.inputs (nesting, integer digits) or in another encoding is a usage error with its position."""
    from flowctl.interpreter.inputs import InputTextError, parse_cli_value, read_json_file

    values: dict[str, Any] = {}
    if inputs_file:
        try:
            loaded = read_json_file(inputs_file)
        except OSError as exc:
            raise click.UsageError(f"--inputs {inputs_file}: {exc.strerror or exc}") from None
        except (InputTextError, json.JSONDecodeError) as exc:
            raise click.UsageError(f"--inputs {inputs_file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise click.UsageError(f"--inputs {inputs_file}: expected a JSON object")
        values.update(loaded)
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise click.UsageError(f"-i {pair!r}: write inputs as key=value")
        try:
            values[key] = parse_cli_value(text, graph.root.inputs.get(key))
        except InputTextError as exc:
            raise click.UsageError(f"-i {key}: {exc}") from None
    return values


def _reporter(quiet: bool, events_file: str | None) -> Any:
    from flowctl.interpreter.progress import JsonlReporter, LineReporter, MultiReporter, Reporter, TtyReporter

    reporters: list[Reporter] = []
    if not quiet:
        reporters.append(TtyReporter() if sys.stderr.isatty() else LineReporter())
    if events_file:
        try:
            reporters.append(JsonlReporter(events_file))
        except OSError as exc:
            raise click.UsageError(f"--events {events_file}: {exc.strerror or exc}") from None
    return MultiReporter(reporters)


def _load_fixture(path: str | None) -> Any:
    if path is None:
        return None
    from flowctl.interpreter.errors import FlowctlError
    from flowctl.interpreter.scripted import load_fixture

    try:
        return load_fixture(Path(path))
    except FlowctlError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)


def _execute(start: Any, reporter: Any) -> Any:
    """Run a coroutine factory under anyio; Ctrl-C / SIGTERM cancel the run cleanly (exit 130 / 143).

    The handler is a plain Python signal handler, so it runs even while the event loop is busy in synchronous work
    (a template rendering): it tells renders in progress to stop (`interrupt_renders`) and asks the loop to cancel
    the run, which then unwinds as cancelled and stays resumable."""
    import asyncio
    import signal

    import anyio

    from flowctl.dsl.sandbox import interrupt_renders

    received: list[int] = []

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        with anyio.CancelScope() as scope:

            def on_signal(signum: int, _frame: Any) -> None:
                received.append(signum)
                loop.call_soon_threadsafe(scope.cancel)  # queued before renders see the flag: they wait for it
                interrupt_renders()

            previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
            try:
                return await start()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
        return None  # cancelled by a signal: the run is marked cancelled

    try:
        outcome = anyio.run(main)
    finally:
        reporter.close()
    if received:
        name = "SIGTERM" if received[0] == signal.SIGTERM else "SIGINT"
        click.echo(f"interrupted by {name}: the run is marked cancelled and can be resumed", err=True)
        sys.exit(143 if received[0] == signal.SIGTERM else 130)
    return outcome


def _protect(graph: Any, store: Any, options: Any) -> Any:
    """The secrets (see docs/cli.md#secrets) are masked in the store, the progress output and everything printed.
    Returns the redactor."""
    from flowctl.interpreter.progress import RedactingReporter
    from flowctl.interpreter.redact import MIN_SECRET_LENGTH, redactor_for

    redactor = redactor_for([graph], os.environ)
    for name in redactor.short_names:
        click.echo(
            f"warning: {name} is read as a secret but its value is shorter than {MIN_SECRET_LENGTH} characters, "
            "too short to mask: it is shown and stored as it is",
            err=True,
        )
    store.use_redactor(redactor)
    options.reporter = RedactingReporter(options.reporter, redactor.redact_text)
    return redactor


def _report_outcome(outcome: Any, output: str, redactor: Any) -> None:
    result = redactor.redact(
        {
            "run_id": outcome.run_id,
            "status": outcome.status.value,
            "outputs": outcome.outputs,
            "error": outcome.error.to_json() if outcome.error else None,
            "usage": {
                "input_tokens": outcome.input_tokens,
                "output_tokens": outcome.output_tokens,
                "cost": round(outcome.cost, 6),
            },
            "calls": {
                "executed": outcome.calls_executed,
                "replayed": outcome.calls_replayed,
                "cached": outcome.calls_cached,
            },
        }
    )
    if output == "json":
        click.echo(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    else:
        if result["outputs"] is not None:
            click.echo(json.dumps(result["outputs"], indent=2, ensure_ascii=False, default=str))
        if outcome.error is not None:
            click.echo(f"run {outcome.run_id} failed: {redactor.redact_text(str(outcome.error))}", err=True)
            click.echo(
                f"inspect it with `flowctl show {outcome.run_id}`, resume it with `flowctl resume {outcome.run_id}`",
                err=True,
            )
    if outcome.error is not None:
        sys.exit(EXIT_FAILED)


def _run_options(scripted: str | None, cache: bool, force: bool, reporter: Any) -> Any:
    from flowctl.interpreter.runner import RunOptions

    return RunOptions(scripted=_load_fixture(scripted), cache=cache, force=force, reporter=reporter)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-i", "--input", "pairs", multiple=True, metavar="KEY=VALUE", help="An input (repeatable).")
@click.option("--inputs", "inputs_file", type=click.Path(exists=True, dir_okay=False), help="Inputs as a JSON file.")
@_store_option
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--scripted",
    type=click.Path(exists=True, dir_okay=False),
    help="Answer every model from this fixture (offline; see docs/scripted.md).",
)
@click.option("--cache", is_flag=True, help="Serve identical LLM requests from the response cache.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--events", "events_file", type=click.Path(dir_okay=False), help="Append a JSONL event log here.")
def run(
    file: str,
    pairs: tuple[str, ...],
    inputs_file: str | None,
    store_path: str | None,
    output: str,
    scripted: str | None,
    cache: bool,
    quiet: bool,
    events_file: str | None,
) -> None:
    """Run a pipeline."""
    from flowctl.interpreter.errors import InputError
    from flowctl.interpreter.inputs import validate_inputs
    from flowctl.interpreter.runner import run_graph

    graph = _load_or_exit(file)
    inputs = _parse_inputs(graph, pairs, inputs_file)
    try:  # before anything runs or is journaled
        validate_inputs(graph.root.inputs, inputs, f"pipeline {graph.root.name!r}")
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    options = _run_options(scripted, cache, False, _reporter(quiet, events_file))
    store = _open_store(store_path, "create")
    redactor = _protect(graph, store, options)
    try:
        outcome = _execute(lambda: run_graph(graph, inputs, store, options), options.reporter)
    except InputError as exc:
        click.echo(f"error: {redactor.redact_text(str(exc))}", err=True)
        sys.exit(EXIT_USAGE)
    finally:
        store.close()
    _report_outcome(outcome, output, redactor)


@main.command()
@click.argument("run_id")
@_store_option
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--scripted", type=click.Path(exists=True, dir_okay=False), help="Answer models from this fixture.")
@click.option("--force", is_flag=True, help="Resume even if recorded requests changed (re-executes those calls).")
@click.option("--cache", is_flag=True, help="Serve identical LLM requests from the response cache.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--events", "events_file", type=click.Path(dir_okay=False), help="Append a JSONL event log here.")
def resume(
    run_id: str,
    store_path: str | None,
    output: str,
    scripted: str | None,
    force: bool,
    cache: bool,
    quiet: bool,
    events_file: str | None,
) -> None:
    """Continue a failed, cancelled or killed run; recorded LLM and tool results are replayed, not re-requested."""
    from flowctl.interpreter.errors import InputError
    from flowctl.interpreter.runner import load_resumable, resume_inputs, run_graph

    store = _open_store(store_path, "write")
    try:
        try:
            record = load_resumable(store, run_id)
            inputs = resume_inputs(record, os.environ)  # secrets in them are restored from the environment
        except InputError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        graph = _load_or_exit(record.file)
        options = _run_options(scripted, cache, force, _reporter(quiet, events_file))
        redactor = _protect(graph, store, options)
        try:
            outcome = _execute(
                lambda: run_graph(graph, inputs, store, options, run_id=run_id, resuming=True), options.reporter
            )
        except InputError as exc:  # the pipeline was edited and no longer accepts the run's recorded inputs
            click.echo(f"error: {redactor.redact_text(str(exc))}", err=True)
            sys.exit(EXIT_USAGE)
    finally:
        store.close()
    _report_outcome(outcome, output, redactor)


@main.command()
@_store_option
@click.option("-n", "--limit", default=20, show_default=True, help="How many runs to list.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def runs(store_path: str | None, limit: int, output: str) -> None:
    """List recent runs."""
    import time as _time

    store = _open_store(store_path, "read")
    try:
        records = store.list_runs(limit, roots_only=True)
    finally:
        store.close()
    if output == "json":
        click.echo(json.dumps([_run_json(r) for r in records], indent=2, default=str))
        return
    for r in records:
        when = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(r.started_at))
        took = f"{r.finished_at - r.started_at:.1f}s" if r.finished_at else "-"
        click.echo(
            f"{r.run_id}  {r.status.value:<9}  {when}  {took:>7}  "
            f"{r.input_tokens + r.output_tokens:>7} tok  {r.pipeline}"
        )


def _run_json(record: Any) -> dict[str, Any]:
    return {
        "run_id": record.run_id,
        "pipeline": record.pipeline,
        "file": record.file,
        "status": record.status.value,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "parent_id": record.parent_id,
        "inputs": record.inputs,
        "outputs": record.outputs,
        "error": record.error,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "cost": record.cost,
    }


def _show_json(store: Any, run_id: str) -> dict[str, Any]:
    record = store.get_run(run_id)
    data = _run_json(record)
    data["steps"] = [
        {
            "path": s.path,
            "kind": s.kind,
            "status": s.status.value,
            "attempts": s.attempts,
            "started_at": s.started_at,
            "finished_at": s.finished_at,
            "input_tokens": s.input_tokens,
            "output_tokens": s.output_tokens,
            "error": s.error,
            "output": s.output,
        }
        for s in store.steps(run_id)
    ]
    data["events"] = [{"name": e.name, "data": e.data, "source": e.source, "at": e.at} for e in store.events(run_id)]
    data["state_changes"] = [
        {"step": c.step, "keys": c.keys, "values": c.values, "at": c.at} for c in store.state_changes(run_id)
    ]
    data["children"] = [_show_json(store, child.run_id) for child in store.child_runs(run_id)]
    return data


ITEMS_LISTED = 10  # a fan-out with more items lists only those that did not simply succeed (`show --items`: all)
_ITEM_PATH = re.compile(r"^(?P<step>.+)\[\d+\]$")


def _quiet_items(steps: list[dict[str, Any]]) -> tuple[set[str], dict[str, str]]:
    """For fan-outs of more than ITEMS_LISTED items: the items to leave out of the text tree (succeeded at the first
    attempt), and per fan-out step the line that sums its items up."""
    paths = {step["path"] for step in steps}
    items: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        match = _ITEM_PATH.match(step["path"])
        if match and match["step"] in paths:
            items.setdefault(match["step"], []).append(step)
    hidden: set[str] = set()
    summaries: dict[str, str] = {}
    for parent, group in items.items():
        if len(group) <= ITEMS_LISTED:
            continue
        quiet = [item["path"] for item in group if item["status"] == "succeeded" and item["attempts"] <= 1]
        hidden.update(quiet)
        counts: dict[str, int] = {}
        for item in group:
            counts[item["status"]] = counts.get(item["status"], 0) + 1
        tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=lambda c: -c[1]))
        shown = f"; {len(group) - len(quiet)} listed below" if len(quiet) < len(group) else ""
        summaries[parent] = f"{parent}[…]  {len(group)} items: {tally}{shown} (`show --items` lists every one)"
    return hidden, summaries


def _show_text(data: dict[str, Any], indent: str = "", *, all_items: bool = False) -> None:
    took = f" in {data['finished_at'] - data['started_at']:.2f}s" if data["finished_at"] else ""
    click.echo(
        f"{indent}{data['run_id']}  {data['pipeline']}  {data['status']}{took}  "
        f"{data['input_tokens'] + data['output_tokens']} tok"
    )
    if data["error"]:
        click.echo(f"{indent}  error: {data['error'].get('message')}")
    children = {c["run_id"].rsplit("/", 1)[-1] if "/" in c["run_id"] else c["run_id"]: c for c in data["children"]}
    mark = {"succeeded": "✓", "failed": "✗", "skipped": "–", "running": "…", "cancelled": "⊘"}
    hidden, summaries = _quiet_items(data["steps"]) if not all_items else (set(), {})
    for step in data["steps"]:
        if step["path"].split("/", 1)[0] in hidden:
            continue  # a quiet item, or a step nested in one
        took = f"{step['finished_at'] - step['started_at']:.2f}s" if step["finished_at"] and step["started_at"] else "-"
        tokens = step["input_tokens"] + step["output_tokens"]
        attempts = f"  {step['attempts']} attempts" if step["attempts"] > 1 else ""
        click.echo(
            f"{indent}  {mark.get(step['status'], '?')} {step['path']:<32} {step['kind']:<9} "
            f"{step['status']:<9} {took:>7}  {tokens:>6} tok{attempts}"
        )
        if step["error"]:
            click.echo(f"{indent}      {step['error'].get('message')}")
        child = children.get(step["path"])
        if child is not None:
            _show_text(child, indent + "      ", all_items=all_items)
        if step["path"] in summaries:
            click.echo(f"{indent}    {summaries[step['path']]}")
    if data["events"]:
        click.echo(f"{indent}  events: " + ", ".join(f"{e['name']} ({e['source']})" for e in data["events"]))


@main.command()
@click.argument("run_id")
@_store_option
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--items",
    "all_items",
    is_flag=True,
    help=f"List every fan-out item (by default a fan-out of more than {ITEMS_LISTED} items lists only the items that "
    "failed, were retried or did not finish, and sums up the rest).",
)
def show(run_id: str, store_path: str | None, output: str, all_items: bool) -> None:
    """Show a run's step tree: status, attempts, timings, tokens, errors, events."""
    store = _open_store(store_path, "read")
    try:
        if store.get_run(run_id) is None:
            click.echo(f"error: no run {run_id!r} in the store (see `flowctl runs`)", err=True)
            sys.exit(EXIT_USAGE)
        data = _show_json(store, run_id)
    finally:
        store.close()
    if output == "json":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    else:
        _show_text(data, all_items=all_items)


@main.command()
@click.argument("run_id")
@click.argument("event")
@click.option("--data", "data_text", default="null", help="The event's payload as JSON.")
@_store_option
def signal(run_id: str, event: str, data_text: str, store_path: str | None) -> None:
    """Send an external event (e.g. a human approval) to a running pipeline."""
    from flowctl.interpreter.inputs import InputTextError, check_argument_text, parse_json

    try:
        check_argument_text(data_text)
        data = parse_json(data_text)
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"--data is not JSON: {exc}") from None
    except InputTextError as exc:
        raise click.UsageError(f"--data: {exc}") from None
    store = _open_store(store_path, "write")
    try:
        record = store.get_run(run_id)
        if record is None:
            click.echo(f"error: no run {run_id!r} in the store (see `flowctl runs`)", err=True)
            sys.exit(EXIT_USAGE)
        target = run_id
        if record.parent_id is not None:  # events are shared by the whole run tree; the root run polls for them
            target = run_id.split("/", 1)[0]
            record = store.get_run(target) or record
            click.echo(f"{run_id} is a child run: delivering to its root run {target}", err=True)
        seq = store.send_signal(target, event, data)
    finally:
        store.close()
    note = "" if record.status.value == "running" else f" (the run is {record.status.value}; it sees it if resumed)"
    click.echo(f"sent {event!r} to {target} as signal #{seq}{note}")


main.add_command(test_command)


def run_cli() -> None:  # pragma: no cover - console entry for `python -m flowctl`
    main()


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "json", "main"]
