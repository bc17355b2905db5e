"""Many workers, one store and one queue: 60 runs (a chain, a parallel group, a fan-out, a child pipeline in another
file, and for some a wait released by `flowctl signal`) on 3 `flowctl worker` processes, one of which is killed
(SIGKILL) or frozen past its lease (SIGSTOP, then SIGCONT) mid-way. Every run succeeds with the outputs a
single-process run gives, and the model server's request log shows that nothing recorded was asked for again: the
only repeated requests are calls the lost worker had in flight.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowctl.dsl.frontend import load_pipeline
from flowctl.interpreter.persistence.ids import new_run_id
from flowctl.interpreter.persistence.locate import open_store
from flowctl.interpreter.runner import RunOptions, run_graph
from tests.scale.cluster import KEY, PIPELINES, Cluster, duplicates, echo_server, paid, wait_for

pytest.importorskip("procrastinate")

from flowctl.scale import queue, sources  # the scale extra

MIXED = PIPELINES / "mixed.yaml"
RUNS = 60
CALLS_PER_RUN = 9  # first, second, left, right, fan x3, the child's shorten, last
LEASE = 10.0
FAN_WIDTH = 3  # the most calls one run has in flight at once


def inputs_of(i: int) -> dict[str, Any]:
    return {"topic": f"topic-{i}", "approve": i % 10 == 0}


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path) -> Iterator[tuple[Cluster, Any]]:
    with echo_server(delay=0.05) as server:
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
        env["FLOWCTL_SUBMISSIONS"] = str(tmp_path / "submissions")
        env.pop("FLOWCTL_STORE", None)
        made = Cluster(pg_url, pg_url, env, tmp_path)  # the run store and the queue in one PostgreSQL database
        try:
            yield made, server
        finally:
            made.stop_all()


def submit_runs(cluster: Cluster, indexes: range) -> list[str]:
    """Queue runs as `flowctl submit` does (the API it calls; one CLI call is made by each test too)."""
    graph, _, front = load_pipeline(MIXED)
    assert graph is not None
    submission = sources.pack(
        MIXED.resolve(), sources.files_of(graph, {k: r.doc.source for k, r in front.files.items()})
    )
    conn = queue.prepare(cluster.queue_url)
    try:
        run_ids = []
        for i in indexes:
            run_id = new_run_id()
            queue.submit(conn, cluster.queue_url, submission, run_id, inputs_of(i))
            run_ids.append(run_id)
        return run_ids
    finally:
        conn.close()


def single_process_outputs() -> list[Any]:
    """What one process running the same runs one after another gives (against its own server)."""
    graph, _, _ = load_pipeline(MIXED)
    assert graph is not None
    with echo_server() as server:
        env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY}

        async def all_runs() -> list[Any]:
            outputs = []
            for i in range(RUNS):
                store = open_store(":memory:")
                try:
                    inputs = {**inputs_of(i), "approve": False}  # the wait changes nothing in the outputs
                    outcome = await run_graph(graph, inputs, store, RunOptions(env=env))
                finally:
                    store.close()
                assert outcome.status.value == "succeeded", outcome.error
                outputs.append(outcome.outputs)
            return outputs

        return anyio.run(all_runs)


def held_by(worker: Any) -> list[str]:
    """The runs a worker's log says it started or resumed and did not finish."""
    lines = [line.split() for line in worker.read() if " run r-" in line]
    held = [w[2].rstrip(":") for w in lines if w[-1] in ("started", "resumed")]
    done = {w[2].rstrip(":") for w in lines if w[-1] in ("succeeded", "failed")}
    return [r for r in held if r not in done]


def approve(cluster: Cluster, run_id: str) -> None:
    sent = cluster.flowctl("signal", run_id, "go", "--data", '{"by": "test"}', "--store", cluster.store)
    assert "signal #" in sent.stdout


def run_scenario(cluster: Cluster, server: Any, lose_worker: Any) -> dict[str, Any]:
    """The victim starts alone and takes the first runs (among them three that wait for a signal); two more workers
    join for the rest; once a third of the runs succeeded, `lose_worker(victim)` loses it. The waits it held are
    released by `flowctl signal` wherever they went on."""
    victim = cluster.start_worker("victim", lease=LEASE)
    first = submit_runs(cluster, range(10))  # indexes 0..9: run 0 waits
    cli = cluster.flowctl(
        "submit",
        str(MIXED),
        "-i",
        "topic=topic-10",
        "-i",
        "approve=true",
        "--store",
        cluster.store,
        "--queue",
        cluster.queue_url,
    )
    first.append(cli.stdout.strip())
    first += submit_runs(cluster, range(11, 21))  # 20 waits
    held_waits = [first[0], first[10], first[20]]
    for run_id in held_waits:
        owner = wait_for(f"{run_id} waiting on the victim", lambda r=run_id: cluster.waiting_on(r))
        assert owner == victim.owner
    cluster.start_worker("w2", lease=LEASE)
    cluster.start_worker("w3", lease=LEASE)
    rest = submit_runs(cluster, range(21, RUNS))
    run_ids = first + rest
    wait_for("a third of the runs done", lambda: cluster.succeeded(run_ids) >= RUNS // 3)
    lose_worker(victim)
    # what it held when lost: its log says started and not finished, and the store says not finished (a SIGKILL may
    # land between a run's last commit and the line saying so)
    in_flight = [run_id for run_id in held_by(victim) if _unfinished(cluster, run_id)]
    for run_id in held_waits:  # taken over: waiting again, on another worker
        owner = wait_for(
            f"{run_id} waiting on another worker", lambda r=run_id: cluster.waiting_on(r) not in (None, victim.owner)
        )
        assert owner != victim.owner
        approve(cluster, run_id)
    for i, run_id in enumerate(run_ids):
        if inputs_of(i)["approve"] and run_id not in held_waits:
            wait_for(f"{run_id} waiting", lambda r=run_id: cluster.waiting_on(r))
            approve(cluster, run_id)
    wait_for("every run done", lambda: cluster.succeeded(run_ids) == RUNS)
    return {"run_ids": run_ids, "victim": victim, "in_flight": in_flight}


def check_outcome(cluster: Cluster, server: Any, result: dict[str, Any]) -> None:
    run_ids = result["run_ids"]
    assert cluster.outputs(run_ids) == dict(zip(run_ids, single_process_outputs(), strict=True))
    repeated = duplicates(server)
    distinct = RUNS * CALLS_PER_RUN
    # a request a frozen worker had half sent reaches the server without a body: nothing was answered, nor paid
    assert len(paid(server)) == distinct + sum(repeated.values())
    # only calls in flight when a run changed hands were asked again: at most a fan-out's width per takeover (the
    # lost worker's runs; on a loaded machine a worker starved past its lease may lose one too, and is fenced)
    takeovers = sum(1 for w in cluster.workers for line in w.read() if line.endswith(": resumed"))
    # every run the lost worker held went on elsewhere: resumed, or started afresh when it was lost before the run's
    # record was committed (its "started" line comes first)
    others = [w for w in cluster.workers if w is not result["victim"]]
    went_on = {
        line.split()[2].rstrip(":") for w in others for line in w.read() if line.endswith((": resumed", ": started"))
    }
    assert set(result["in_flight"]) <= went_on
    assert sum(repeated.values()) <= FAN_WIDTH * takeovers


def test_a_killed_worker_s_runs_are_resumed_by_the_others(cluster: tuple[Cluster, Any]) -> None:
    made, server = cluster

    def kill(victim: Any) -> None:
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait()

    result = run_scenario(made, server, kill)
    check_outcome(made, server, result)
    listing = made.flowctl("workers", "--queue", made.queue_url, "--all", "--output", "json")
    states = {w["name"]: w["state"] for w in __import__("json").loads(listing.stdout)["workers"]}
    assert set(states) == {"victim", "w2", "w3"}
    assert states["victim"] == "gone"
    for name in ("w2", "w3"):  # on a loaded machine a worker starved past its lease is fenced, and so gone too
        worker = next(w for w in made.workers if w.name == name)
        assert states[name] == "running" or worker.saw("fenced:"), (name, states[name])


def test_a_frozen_worker_is_fenced_and_abandons_its_runs(cluster: tuple[Cluster, Any]) -> None:
    made, server = cluster

    def freeze(victim: Any) -> None:
        os.kill(victim.process.pid, signal.SIGSTOP)
        for run_id in held_by(victim):  # every run it held is someone else's now (or finished by them)
            wait_for(f"{run_id} taken over", lambda r=run_id: _taken_over(made, r, victim.owner))
        os.kill(victim.process.pid, signal.SIGCONT)
        assert victim.process.wait(timeout=60) == 75
        assert victim.saw("fenced:")

    result = run_scenario(made, server, freeze)
    check_outcome(made, server, result)


def _unfinished(cluster: Cluster, run_id: str) -> bool:
    def look(store: Any) -> bool:
        record = store.get_run(run_id)
        return record is None or record.status.value not in ("succeeded", "failed")

    return bool(cluster.read(look))


def _taken_over(cluster: Cluster, run_id: str, owner: str) -> bool:
    def look(store: Any) -> bool:
        record = store.get_run(run_id)
        return record is not None and (record.status.value == "succeeded" or store.liveness(run_id).owner != owner)

    return bool(cluster.read(look))


if sys.platform != "linux":  # SIGSTOP/SIGKILL semantics and /proc are what the scenarios rely on
    pytestmark = pytest.mark.skip(reason="Linux only")
