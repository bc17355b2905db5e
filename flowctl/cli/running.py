"""`flowctl run` and `resume`: inputs, the reporter, secrets, running under anyio with Ctrl-C/SIGTERM handled,
and the outcome printed."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from flowctl.cli.common import EXIT_FAILED, EXIT_USAGE, load_or_exit, named_run, open_store, store_flag, store_option


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


@dataclass
class _Watchers:
    """What watches a run for the command: the reporter handed to the run (all of them), the progress shown on
    stderr (None with --quiet) and the count of requests sent."""

    reporter: Any
    progress: Any
    calls: Any
    store: str = ""


def _watchers(graph: Any, quiet: bool, events_file: str | None, stream: bool, store: str) -> _Watchers:
    from flowctl.interpreter.reporting import Reporter
    from flowctl.progress import CallTally, JsonlReporter, LineReporter, MultiReporter, TtyReporter
    from flowctl.progress_tally import layout_of, prices_of

    calls = CallTally()
    reporters: list[Reporter] = [calls]
    if events_file:  # before the progress: a line on screen is in the log already
        try:
            reporters.append(JsonlReporter(events_file))
        except OSError as exc:
            raise click.UsageError(f"--events {events_file}: {exc.strerror or exc}") from None
    progress = None
    if not quiet:
        shown = TtyReporter if sys.stderr.isatty() else LineReporter
        progress = shown(store=store, prices=prices_of(graph), layout=layout_of(graph), stream_text=stream)
        reporters.append(progress)
    return _Watchers(MultiReporter(reporters), progress, calls, store)


def _execute(start: Any, watchers: _Watchers) -> Any:
    """Run a coroutine factory under anyio; Ctrl-C / SIGTERM cancel the run cleanly (exit 130 / 143), even while a
    template renders (flowctl.interpreter.engine.interrupts), and say how to resume it."""
    from flowctl.interpreter.engine.interrupts import EXIT_CODES, run_interruptibly

    try:
        outcome, signum = run_interruptibly(start)
    finally:
        watchers.reporter.close()
    if signum is not None:
        run_id = watchers.reporter.run_id
        if run_id is None:
            click.echo(f"interrupted by {signum.name} before the run started", err=True)
        else:
            click.echo(
                f"interrupted by {signum.name}: run {run_id} is marked cancelled; "
                f"resume it with `flowctl resume {run_id}{watchers.store}`",
                err=True,
            )
        sys.exit(EXIT_CODES[signum])
    return outcome


def _protect(graph: Any, store: Any, options: Any) -> Any:
    """The secrets (see docs/cli.md#secrets) are masked in the store, the progress output and everything printed.
    Returns the redactor."""
    from flowctl.interpreter.redact import MIN_SECRET_LENGTH, redactor_for
    from flowctl.progress import RedactingReporter

    redactor = redactor_for([graph], os.environ)
    for name in redactor.short_names:
        click.echo(
            f"warning: {name} is read as a secret but its value is shorter than {MIN_SECRET_LENGTH} characters, "
            "too short to mask: it is shown and stored as it is",
            err=True,
        )
    options.redactor = redactor
    options.reporter = RedactingReporter(options.reporter, redactor.redact_text, active=bool(redactor))
    from flowctl.telemetry import reporter_from_env

    traces = reporter_from_env(os.environ, redactor, warn=lambda line: click.echo(line, err=True))
    if traces is not None:  # OpenTelemetry (docs/telemetry.md); it masks what it exports itself
        from flowctl.progress_sinks import MultiReporter

        options.reporter = MultiReporter([options.reporter, traces])
    return redactor


def _report_outcome(outcome: Any, output: str, redactor: Any, watchers: _Watchers) -> None:
    from flowctl.interpreter.errors import refused

    if outcome.error is not None and refused(outcome.error):  # nothing ran: a usage problem, said once
        cause = outcome.error
        while getattr(cause, "cause", None) is not None:
            cause = cause.cause
        message = redactor.redact_text(str(cause))
        click.echo(f"error: cannot resume run {outcome.run_id}: {message} (the run is left as it was)", err=True)
        sys.exit(EXIT_USAGE)
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
                "requests": watchers.calls.model_requests + watchers.calls.tool_requests,
                "failed": watchers.calls.failed,
            },
        }
    )
    if output == "json":
        click.echo(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    else:
        if result["outputs"] is not None:
            click.echo(json.dumps(result["outputs"], indent=2, ensure_ascii=False, default=str))
        if outcome.error is not None:
            _say_failed(outcome, redactor, watchers)
    if outcome.error is not None:
        sys.exit(EXIT_FAILED)


def _say_failed(outcome: Any, redactor: Any, watchers: _Watchers) -> None:
    """The run's error, once: when a progress line already showed it (at the step that failed with it), only where."""
    message = redactor.redact_text(str(outcome.error))
    shown_at = watchers.progress.shown_at(message) if watchers.progress is not None else None
    if shown_at is not None:
        click.echo(f"run {outcome.run_id} failed: step {shown_at} failed (its error is above)", err=True)
    else:
        click.echo(f"run {outcome.run_id} failed: {message}", err=True)
    store = watchers.store
    click.echo(
        f"inspect it with `flowctl show {outcome.run_id}{store}`, "
        f"resume it with `flowctl resume {outcome.run_id}{store}`",
        err=True,
    )


def _run_options(scripted: str | None, cache: bool, force: bool, reporter: Any) -> Any:
    """The Python API's options (flowctl/api.py), with the process tuned for runs: the command is the process."""
    from flowctl.api import run_options
    from flowctl.interpreter.errors import FlowctlError

    try:
        return run_options(scripted=scripted, cache=cache, force=force, reporter=reporter, tune_process=True)
    except FlowctlError as exc:  # a fixture that cannot be loaded
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)


def _offline_as_started(record: Any, scripted: str | None, online: bool) -> str | None:
    """The fixture a resume answers from: `--scripted`, else the one the run started with (a scripted run stays
    offline unless `--online` says otherwise)."""
    from flowctl.api import fixture_for_resume
    from flowctl.interpreter.errors import InputError

    try:
        fixture = fixture_for_resume(record, scripted, online)
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    if fixture is not None and scripted is None:
        click.echo(
            f"resuming offline, as the run started: models answer from {fixture} (--online calls the real ones)",
            err=True,
        )
    return fixture


def _watching_options(command: Any) -> Any:
    """The options `run` and `resume` share: the response cache and how the run is watched."""
    for option in reversed(
        (
            click.option("--cache", is_flag=True, help="Serve identical LLM requests from the response cache."),
            click.option("-q", "--quiet", is_flag=True, help="No progress output."),
            click.option(
                "--events", "events_file", type=click.Path(dir_okay=False), help="Append a JSONL event log here."
            ),
            click.option("--stream", is_flag=True, help="Show the model's text as it arrives (one step at a time)."),
        )
    ):
        command = option(command)
    return command


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-i", "--input", "pairs", multiple=True, metavar="KEY=VALUE", help="An input (repeatable).")
@click.option("--inputs", "inputs_file", type=click.Path(exists=True, dir_okay=False), help="Inputs as a JSON file.")
@store_option
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--scripted",
    type=click.Path(exists=True, dir_okay=False),
    help="Answer every model from this fixture (offline; see docs/scripted.md).",
)
@_watching_options
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
    stream: bool,
) -> None:
    """Run a pipeline."""
    from flowctl.interpreter.errors import InputError
    from flowctl.interpreter.inputs import validate_inputs
    from flowctl.interpreter.runner import run_graph

    graph = load_or_exit(file)
    inputs = _parse_inputs(graph, pairs, inputs_file)
    try:  # before anything runs or is journaled
        validate_inputs(graph.root.inputs, inputs, f"pipeline {graph.root.name!r}")
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    watchers = _watchers(graph, quiet, events_file, stream, store_flag(store_path))
    options = _run_options(scripted, cache, False, watchers.reporter)
    store = open_store(store_path, "create")
    redactor = _protect(graph, store, options)
    try:
        outcome = _execute(lambda: run_graph(graph, inputs, store, options), watchers)
    except InputError as exc:
        click.echo(f"error: {redactor.redact_text(str(exc))}", err=True)
        sys.exit(EXIT_USAGE)
    finally:
        store.close()
    _report_outcome(outcome, output, redactor, watchers)


def _pipeline_file(record: Any, store_path: str | None) -> str:
    """The file a run started from; for a submitted run whose file is not on this host (it ran on a worker), the
    submitted source, fetched from the queue's database (flowctl/scale)."""
    if Path(record.file).is_file():
        return str(record.file)
    from flowctl.cli.workers import submitted_file

    return submitted_file(store_path, record.run_id) or str(record.file)


@click.command()
@click.argument("run_id")
@store_option
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--scripted",
    type=click.Path(exists=True, dir_okay=False),
    help="Answer models from this fixture (default: the one the run started with, if it was scripted).",
)
@click.option("--online", is_flag=True, help="Call the real models even though the run started with --scripted.")
@click.option("--force", is_flag=True, help="Resume even if recorded requests changed (re-executes those calls).")
@_watching_options
def resume(
    run_id: str,
    store_path: str | None,
    output: str,
    scripted: str | None,
    online: bool,
    force: bool,
    cache: bool,
    quiet: bool,
    events_file: str | None,
    stream: bool,
) -> None:
    """Continue a failed, cancelled or killed run; recorded LLM and tool results are replayed, not re-requested.
    RUN_ID: a run's id, or `last` for the run started last."""
    from flowctl.interpreter.errors import InputError
    from flowctl.interpreter.runner import load_resumable, resume_inputs, run_graph

    store = open_store(store_path, "write")
    try:
        run_id = named_run(store, run_id)
        try:
            record = load_resumable(store, run_id)
            inputs = resume_inputs(record, os.environ)  # secrets in them are restored from the environment
        except InputError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        graph = load_or_exit(_pipeline_file(record, store_path))
        scripted = _offline_as_started(record, scripted, online)
        watchers = _watchers(graph, quiet, events_file, stream, store_flag(store_path))
        options = _run_options(scripted, cache, force, watchers.reporter)
        redactor = _protect(graph, store, options)
        try:
            outcome = _execute(lambda: run_graph(graph, inputs, store, options, run_id=run_id, resuming=True), watchers)
        except InputError as exc:  # the pipeline was edited and no longer accepts the run's recorded inputs
            click.echo(f"error: {redactor.redact_text(str(exc))}", err=True)
            sys.exit(EXIT_USAGE)
    finally:
        store.close()
    _report_outcome(outcome, output, redactor, watchers)
