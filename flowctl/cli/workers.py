"""`flowctl worker`, `submit` and `workers`: runs on many worker processes sharing PostgreSQL (docs/scale.md).

The queue lives in a PostgreSQL database: `--queue URL` (or FLOWCTL_QUEUE), by default the run store's own URL when
that is PostgreSQL. Everything here imports `flowctl.scale` (procrastinate, psycopg: the `scale` extra) lazily.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click

from flowctl.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, open_store, store_flag, store_option

QUEUE_ENV = "FLOWCTL_QUEUE"
POLL = 0.25  # seconds between looks at the store while `submit --wait` follows a run
NOT_STARTED_FOR_GOOD = ("failed", "aborted", "cancelled")  # a job ended so, with no run recorded: none ever will be

queue_option = click.option(
    "--queue",
    "queue_url",
    metavar="URL",
    envvar=QUEUE_ENV,
    show_envvar=True,
    help="The queue's PostgreSQL database (default: the run store's, when that is PostgreSQL).",
)


def _scale() -> Any:
    try:
        import flowctl.scale.queue as queue
    except ImportError as exc:
        click.echo(f"error: this needs the `scale` extra ({exc.name} is missing): pip install 'flowctl-agents[scale]'")
        sys.exit(EXIT_USAGE)
    return queue


def queue_url_of(queue_url: str | None, store_path: str | None) -> str:
    from flowctl.scale.database import is_postgres_url

    url = queue_url or store_path or os.environ.get("FLOWCTL_STORE")
    if not is_postgres_url(url):
        raise click.UsageError("name the queue's PostgreSQL database: --queue postgresql://… (or a PostgreSQL --store)")
    return str(url)


@click.command()
@store_option
@queue_option
@click.option("-c", "--concurrency", default=8, show_default=True, help="Runs this worker runs at once.")
@click.option("--id", "name", default="", help="The worker's name (default: HOST-PID).")
@click.option("--lease", default=10.0, show_default=True, help="Seconds a silent worker or claim counts as alive.")
@click.option("--drain-timeout", default=60.0, show_default=True, help="Seconds SIGTERM lets runs in flight finish.")
def worker(
    store_path: str | None, queue_url: str | None, concurrency: int, name: str, lease: float, drain_timeout: float
) -> None:
    """Run submitted pipelines until SIGTERM (which drains: runs in flight finish or are handed on)."""
    _scale()
    from flowctl.scale.worker import WorkerConfig, run_worker

    if concurrency < 1 or lease <= 0:
        raise click.UsageError("--concurrency must be ≥ 1 and --lease > 0")
    url = queue_url_of(queue_url, store_path)
    store = open_store(store_path, "create")  # the store must be usable before taking work
    store.close()
    config = WorkerConfig(store_path or url, url, name, concurrency, lease, drain_timeout)
    sys.exit(run_worker(config))


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-i", "--input", "pairs", multiple=True, metavar="KEY=VALUE", help="An input (repeatable).")
@click.option("--inputs", "inputs_file", type=click.Path(exists=True, dir_okay=False), help="Inputs as a JSON file.")
@store_option
@queue_option
@click.option("--wait", is_flag=True, help="Follow the run and exit with its status (as `flowctl run` does).")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def submit(
    file: str,
    pairs: tuple[str, ...],
    inputs_file: str | None,
    store_path: str | None,
    queue_url: str | None,
    wait: bool,
    output: str,
) -> None:
    """Queue a run of a pipeline for the workers; prints its run id."""
    from pathlib import Path

    from flowctl.cli.running import _parse_inputs
    from flowctl.interpreter.errors import InputError
    from flowctl.interpreter.inputs import validate_inputs
    from flowctl.interpreter.persistence.ids import new_run_id

    queue = _scale()
    from flowctl.scale import sources

    url = queue_url_of(queue_url, store_path)
    graph, front = _load(file)
    inputs = _parse_inputs(graph, pairs, inputs_file)
    try:
        validate_inputs(graph.root.inputs, inputs, f"pipeline {graph.root.name!r}")
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    submission = sources.pack(Path(file).resolve(), sources.files_of(graph, front.files_read))
    run_id = new_run_id()
    conn = queue.prepare(url)
    try:
        queue.submit(conn, url, submission, run_id, inputs)
    finally:
        conn.close()
    click.echo(run_id)
    if wait:
        sys.exit(_follow(run_id, store_path, url, output))


def _load(file: str) -> tuple[Any, Any]:
    from flowctl.dsl.diagnostics import Severity, render_text
    from flowctl.dsl.frontend import load_pipeline

    graph, diagnostics, front = load_pipeline(file)
    sources = front.sources()
    for d in diagnostics:
        if graph is None or d.severity is Severity.WARNING:
            click.echo(render_text(d, sources.get(d.span.file)), err=True)
    if graph is None:
        click.echo(f"{file}: invalid pipeline; nothing was submitted", err=True)
        sys.exit(EXIT_USAGE)
    return graph, front


def _follow(run_id: str, store_path: str | None, url: str, output: str) -> int:
    """Print the run's steps as the store records them (stderr), then its outputs; the exit code of `flowctl run`."""
    from flowctl.scale import database
    from flowctl.scale import queue as queue_module

    click.echo(f"waiting for a worker to run {run_id}…", err=True)
    seen: dict[str, str] = {}
    conn = database.connect(url)
    try:
        while True:
            record = _read(store_path, run_id, seen)
            if record is not None and record.status.value in ("succeeded", "failed"):
                break
            if record is None and queue_module.job_state(conn, run_id) in NOT_STARTED_FOR_GOOD:
                click.echo(
                    f"run {run_id}: a worker took it and failed before the run started, so nothing was recorded "
                    "(the worker's log says why: the submission does not compile there, or it cannot write its "
                    "submissions folder); fix that and submit again",
                    err=True,
                )
                return EXIT_FAILED
            cancelled = record is not None and record.status.value == "cancelled"
            if cancelled and queue_module.job_state(conn, run_id) not in ("todo", "doing"):
                break  # cancelled and nobody will resume it
            time.sleep(POLL)
    except KeyboardInterrupt:
        click.echo(f"stopped following {run_id}; the workers go on with it", err=True)
        return 130
    finally:
        conn.close()
    return _say_outcome(record, output, store_flag(store_path))


def _read(store_path: str | None, run_id: str, seen: dict[str, str]) -> Any:
    from flowctl.interpreter.persistence.store_errors import StoreError

    try:
        store = open_store(store_path, "read")
    except StoreError:
        return None  # no worker has created the store yet
    try:
        record = store.get_run(run_id)
        if record is not None:
            for step in store.steps(run_id):
                if seen.get(step.path) != step.status.value:
                    seen[step.path] = step.status.value
                    click.echo(f"  {step.path}: {step.status.value}", err=True)
        return record
    finally:
        store.close()


def _say_outcome(record: Any, output: str, store: str) -> int:
    result = {
        "run_id": record.run_id,
        "status": record.status.value,
        "outputs": record.outputs,
        "error": record.error,
        "usage": {"input_tokens": record.input_tokens, "output_tokens": record.output_tokens, "cost": record.cost},
    }
    if output == "json":
        click.echo(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    elif record.outputs is not None:
        click.echo(json.dumps(record.outputs, indent=2, ensure_ascii=False, default=str))
    if record.status.value == "succeeded":
        return EXIT_OK
    message = (record.error or {}).get("message", record.status.value)
    click.echo(f"run {record.run_id} {record.status.value}: {message}", err=True)
    click.echo(f"inspect it with `flowctl show {record.run_id}{store}`", err=True)
    return EXIT_FAILED


@click.command()
@store_option
@queue_option
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--all", "show_all", is_flag=True, help="Also list workers that stopped.")
def workers(store_path: str | None, queue_url: str | None, output: str, show_all: bool) -> None:
    """List the workers: who is alive, what each holds, and the requests queued."""
    queue = _scale()
    url = queue_url_of(queue_url, store_path)
    conn = queue.prepare(url)
    try:
        rows = conn.execute(
            "SELECT name, owner, state, concurrency, lease, flowctl_version, started_at, holding,"
            " extract(epoch FROM now() - heartbeat_at) FROM flowctl_scale_workers ORDER BY name"
        ).fetchall()
        counts = dict(
            conn.execute(
                "SELECT status::text, count(*) FROM procrastinate_jobs WHERE queue_name = %s GROUP BY status",
                (queue.QUEUE,),
            ).fetchall()
        )
    finally:
        conn.close()
    listed = [_worker_json(row) for row in rows]
    listed = [w for w in listed if show_all or w["state"] not in ("stopped", "gone")]
    if output == "json":
        click.echo(json.dumps({"workers": listed, "queue": counts}, indent=2, default=str))
        return
    for w in listed:
        holds = ", ".join(w["holding"]) or "-"
        click.echo(
            f"{w['name']:<20}  {w['state']:<8}  {w['owner']:<32}  {len(w['holding'])}/{w['concurrency']}  {holds}"
        )
    click.echo(f"queue: {counts.get('todo', 0)} waiting, {counts.get('doing', 0)} taken", err=True)


def _worker_json(row: tuple[Any, ...]) -> dict[str, Any]:
    name, owner, state, concurrency, lease, version, started_at, holding, silent = row
    if state in ("running", "draining") and float(silent) > lease:
        state = "gone"  # its heartbeat stopped: killed, frozen or cut off; its runs go to the others
    return {
        "name": name,
        "owner": owner,
        "state": state,
        "concurrency": concurrency,
        "flowctl_version": version,
        "started_at": started_at,
        "silent_for": round(float(silent), 1),
        "holding": list(holding) if state in ("running", "draining") else [],
    }


def submitted_file(store_path: str | None, run_id: str) -> str | None:
    """For `flowctl resume` of a submitted run whose files are not on this host: materialise the submitted source
    from the queue's database (FLOWCTL_QUEUE, or a PostgreSQL store). None when there is none to fetch."""
    try:
        from flowctl.scale import database, queue, sources
    except ImportError:
        return None
    url = os.environ.get(QUEUE_ENV) or store_path or os.environ.get("FLOWCTL_STORE")
    if not database.is_postgres_url(url):
        return None
    conn = database.connect(str(url))
    try:
        request = queue.request_of(conn, run_id) if _has_tables(conn) else None
        if request is None:
            return None
        queue.check_format(request)
        return str(sources.fetch_to_disk(conn, request.source))
    finally:
        conn.close()


def _has_tables(conn: Any) -> bool:
    return conn.execute("SELECT to_regclass('flowctl_scale_runs')").fetchone() != (None,)
