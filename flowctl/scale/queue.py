"""The job queue: procrastinate on the same PostgreSQL database (docs/scale.md says why procrastinate, not pgqueuer).

A job is one run request: `{"run_id": …}`; what to run (the submitted source's digest, the inputs) is in
`flowctl_scale_runs`, what the run has done in the run store. Jobs of one run share procrastinate's `lock` (never
two at once) and `queueing_lock` (never two waiting). The queue's name carries the journal format, so a worker never
even fetches a run recorded in a format it cannot resume (see `JOURNAL_FORMAT`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from procrastinate import App, PsycopgConnector, exceptions
from procrastinate.schema import SchemaManager

from flowctl import __version__
from flowctl.scale import database, sources

TASK = "flowctl.run"
# The shape of what a run journals (call keys, recorded results). Bump it when a release changes that shape: a run
# is resumed only by a worker of the same format (queue name and `check_format`).
JOURNAL_FORMAT = 1
QUEUE = f"flowctl-runs-j{JOURNAL_FORMAT}"


class IncompatibleRun(Exception):
    """A run recorded by a flowctl whose journal format differs from this worker's."""


@dataclass(frozen=True, slots=True)
class RunRequest:
    run_id: str
    source: str  # the submission's digest
    inputs: dict[str, Any]
    flowctl_version: str
    journal_format: int


def make_app(url: str, *, max_size: int = 4) -> App:
    connector = PsycopgConnector(conninfo=database.conninfo(url), min_size=1, max_size=max_size)
    return App(connector=connector)


def prepare(url: str) -> psycopg.Connection[Any]:
    """A connection to the queue's database with every table migrated (see database.migrate)."""
    conn = database.connect(url)
    database.migrate(conn, SchemaManager.get_schema())
    return conn


def submit(
    conn: psycopg.Connection[Any],
    url: str,
    submission: sources.Submission,
    run_id: str,
    inputs: Any,
    *,
    app: App | None = None,
) -> int:
    """Store the submission and the run request, then queue it (through `app` when given, opened); returns the
    job's id."""
    sources.store(conn, submission)
    conn.execute(
        "INSERT INTO flowctl_scale_runs (run_id, source, inputs, flowctl_version, journal_format)"
        " VALUES (%s, %s, %s, %s, %s)",
        (run_id, submission.digest, json.dumps(inputs), __version__, JOURNAL_FORMAT),
    )
    if app is not None:
        job_id = enqueue(app, run_id)
    else:
        app = make_app(url, max_size=1)
        with app.open():
            job_id = enqueue(app, run_id)
    conn.execute("UPDATE flowctl_scale_runs SET job_id = %s WHERE run_id = %s", (job_id, run_id))
    return job_id


def _deferrer(app: App, run_id: str, delay: float) -> Any:
    if delay:  # a scheduled job is not announced to the workers (NOTIFY): only when there is a delay
        return app.configure_task(
            TASK, queue=QUEUE, lock=run_id, queueing_lock=run_id, schedule_in={"seconds": int(delay)}
        )
    return app.configure_task(TASK, queue=QUEUE, lock=run_id, queueing_lock=run_id)


def enqueue(app: App, run_id: str, *, delay: float = 0) -> int:
    deferrer = _deferrer(app, run_id, delay)
    try:
        return int(deferrer.defer(run_id=run_id))
    except exceptions.AlreadyEnqueued:  # a request for it waits already: that one will do
        return -1


async def enqueue_async(app: App, run_id: str, *, delay: float = 0) -> int:
    deferrer = _deferrer(app, run_id, delay)
    try:
        return int(await deferrer.defer_async(run_id=run_id))
    except exceptions.AlreadyEnqueued:
        return -1


def request_of(conn: psycopg.Connection[Any], run_id: str) -> RunRequest | None:
    row = conn.execute(
        "SELECT source, inputs, flowctl_version, journal_format FROM flowctl_scale_runs WHERE run_id = %s", (run_id,)
    ).fetchone()
    if row is None:
        return None
    return RunRequest(run_id, row[0], row[1], row[2], row[3])


def check_format(request: RunRequest) -> None:
    """Refuse a run recorded in another journal format (a worker of that flowctl version resumes it)."""
    if request.journal_format != JOURNAL_FORMAT:
        raise IncompatibleRun(
            f"run {request.run_id} was submitted by flowctl {request.flowctl_version} (journal format "
            f"{request.journal_format}); this worker is flowctl {__version__} (journal format {JOURNAL_FORMAT}) and "
            f"cannot resume it: run a worker of flowctl {request.flowctl_version} for it"
        )


def job_state(conn: psycopg.Connection[Any], run_id: str) -> str | None:
    """The state of the run's newest job (todo, doing, succeeded, failed, …), None if it has none."""
    row = conn.execute(
        "SELECT status FROM procrastinate_jobs WHERE lock = %s ORDER BY id DESC LIMIT 1", (run_id,)
    ).fetchone()
    return None if row is None else str(row[0])
