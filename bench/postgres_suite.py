"""The `postgres` suite: what the journal costs per step on PostgreSQL against SQLite, measured in one run, and where
the time goes (a fenced commit, a bare round trip).

The server: `--store postgresql://…` (handed to the suite's process as FLOWCTL_BENCH_PG; its user must be allowed
to create a database, which the suite drops at the end), else a private server started for the suite with
PostgreSQL's own durable settings (fsync and synchronous commit on) by the tests' recipe (tests/support/postgres.py),
when PostgreSQL is installed. Every figure is taken on this machine, client and server sharing its CPUs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.null_store import NullStore
from bench.pipelines import chain_yaml, fanout_yaml, latency_fixture, zero_latency_fixture
from bench.report import Row, median, spread
from bench.runs import compile_pipeline, fixture, sqlite_store, timed_run
from flowctl.interpreter.persistence.postgres_store import PostgresRunStore
from flowctl.interpreter.persistence.store import CallDone, RunRecord, RunStatus

PG_ENV = "FLOWCTL_BENCH_PG"
CHAIN_STEPS = 1000
FAN_BRANCHES = 1000
FAN_LATENCY = 0.05


@contextmanager
def _server() -> Iterator[tuple[str, str]]:
    """(server URL, where it comes from)."""
    given = os.environ.get(PG_ENV)
    if given:
        yield given, "the server --store named"
        return
    from tests.support import postgres

    folder = Path(tempfile.mkdtemp(prefix="flowctl-bench-pg-"))  # not private to root: the server runs as postgres
    try:
        yield postgres.start(folder, durable=True), "a private server, fsync and synchronous_commit on"
    finally:
        postgres.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _database(server: str) -> Iterator[str]:
    import psycopg

    name = "flowctl_bench_" + uuid.uuid4().hex[:12]
    base = server.split("?", 1)[0].rsplit("/", 1)[0]
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _settings(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        query = "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit')"
        found: dict[str, str] = dict(conn.execute(query).fetchall())
        version = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {version[0] if version else '?'}, fsync {found.get('fsync')}, " + (
        f"synchronous_commit {found.get('synchronous_commit')}"
    )


def _floors(url: str, n: int) -> tuple[float, float]:
    """Seconds per fenced one-call commit (what a chain step waits for) and per bare `SELECT 1` round trip."""
    import psycopg

    with PostgresRunStore(url) as store:
        record = RunRecord(f"r-floor-{uuid.uuid4().hex[:8]}", "floor", "floor.yaml", RunStatus.RUNNING, time.time())
        claim = store.create_run(record, "{}", None, "bench:1")
        writes = [[CallDone(record.run_id, f"s{i}/llm#0", "d", '{"content": "ok"}', 1.0)] for i in range(n)]
        started = time.perf_counter()
        for batch in writes:
            store.commit(batch, claim)
        commit = (time.perf_counter() - started) / n
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        for _ in range(n):
            conn.execute("SELECT 1", prepare=True).fetchone()
        round_trip = (time.perf_counter() - started) / n
    return commit, round_trip


def postgres_suite(quick: bool, workdir: Path) -> list[Row]:
    n = 300 if quick else CHAIN_STEPS
    repeats = 3 if quick else 7
    branches = 200 if quick else FAN_BRANCHES
    chain = compile_pipeline(workdir, "chain.yaml", chain_yaml(n))
    fan = compile_pipeline(workdir, "fan.yaml", fanout_yaml(branches))
    instant, slow = fixture(zero_latency_fixture()), fixture(latency_fixture(FAN_LATENCY))
    items = {"items": list(range(branches))}
    with _server() as (server, origin), _database(server) as url:
        settings = _settings(url)

        lazy = url + "?options=-csynchronous_commit%3Doff"  # commits durable once the server has them, not on disk

        def on_postgres(graph: Any, inputs: dict[str, Any], scripted: Any, target: str = url) -> float:
            with PostgresRunStore(target) as store:
                return timed_run(graph, inputs, store, scripted)

        def on_sqlite(graph: Any, inputs: dict[str, Any], scripted: Any, name: str) -> float:
            store = sqlite_store(workdir, name)
            try:
                return timed_run(graph, inputs, store, scripted)
            finally:
                store.close()

        on_postgres(chain, {}, instant)  # warm up: imports, the schema, prepared statements, caches
        on_sqlite(chain, {}, instant, "warmup.db")
        samples: dict[str, list[float]] = {k: [] for k in ("pg", "lazy", "sqlite", "null", "fan-pg", "fan-sqlite")}
        for r in range(repeats):  # interleaved, so drift on a busy machine hits every series alike
            samples["pg"].append(on_postgres(chain, {}, instant) / n)
            samples["lazy"].append(on_postgres(chain, {}, instant, lazy) / n)
            samples["sqlite"].append(on_sqlite(chain, {}, instant, f"chain-{r}.db") / n)
            samples["null"].append(timed_run(chain, {}, NullStore(), instant) / n)
        for r in range(max(1, repeats // 3)):
            samples["fan-pg"].append(on_postgres(fan, items, slow))
            samples["fan-sqlite"].append(on_sqlite(fan, items, slow, f"fan-{r}.db"))
        commit, round_trip = _floors(url, n)
        lazy_commit, _ = _floors(lazy, n)
    us = {k: [v * 1e6 for v in vs] for k, vs in samples.items() if not k.startswith("fan")}
    pg_us, sqlite_us, null_us = median(us["pg"]), median(us["sqlite"]), median(us["null"])
    lazy_us = median(us["lazy"])
    where = f"{origin}; {settings}"
    return [
        Row(
            f"per step, journal on PostgreSQL, {n:,}-step chain",
            pg_us,
            "µs",
            sqlite_us,
            "journal on SQLite",
            notes=[
                f"run_graph wall / {n} steps, scripted zero-latency model: PostgreSQL {spread(us['pg'], unit=' µs')}; "
                f"SQLite {spread(us['sqlite'], unit=' µs')}",
                where,
            ],
        ),
        Row(
            "per step, PostgreSQL with synchronous_commit off",
            lazy_us,
            "µs",
            sqlite_us,
            "journal on SQLite",
            notes=[
                "`?options=-csynchronous_commit%3Doff` in the URL: a commit is durable once the server has it (as "
                "SQLite's WAL with synchronous=NORMAL once the OS has it): it survives flowctl being killed, not the "
                f"server's host crashing ({spread(us['lazy'], unit=' µs')}); "
                f"one fenced commit {lazy_commit * 1e6:.0f} µs"
            ],
        ),
        Row(
            "journal cost per step, PostgreSQL − NullStore",
            pg_us - null_us,
            "µs",
            sqlite_us - null_us,
            "SQLite − NullStore",
            notes=[f"NullStore (engine only): {median(us['null']):.1f} µs/step"],
        ),
        Row(
            "one fenced commit of a call row (PostgreSQL)",
            commit * 1e6,
            "µs",
            round_trip * 1e6,
            "bare SELECT 1 round trip",
            notes=["BEGIN, flowctl_fence (row lock + token check), the upsert, COMMIT: one round trip (pipeline mode)"],
        ),
        Row(
            f"fan-out {branches:,} × {FAN_LATENCY * 1000:g} ms on PostgreSQL: makespan",
            median(samples["fan-pg"]),
            "s",
            median(samples["fan-sqlite"]),
            "the same on SQLite",
            notes=["group commit: the branches' call records share commits on both stores"],
        ),
    ]
