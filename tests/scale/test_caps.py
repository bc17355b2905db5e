"""A model's `concurrency:` cap: one run in one process never has more calls in flight than the cap, and runs spread
over several `flowctl worker` processes never have more in flight together (the slots live in PostgreSQL)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowctl.dsl.frontend import load_pipeline
from flowctl.interpreter.persistence.ids import new_run_id
from flowctl.interpreter.persistence.locate import open_store
from flowctl.interpreter.runner import RunOptions, run_graph
from tests.scale.cluster import KEY, PIPELINES, Cluster, answer_for, wait_for
from tests.support.openai_server import OpenAIServer, Reply, running_openai_server

pytest.importorskip("procrastinate")

from flowctl.scale import queue, sources  # the scale extra

CAPPED = PIPELINES / "capped.yaml"
CAP = 2


class InFlight:
    """Counts the requests the server is answering at once. Each answer is slow (a model taking 0.2 s), so calls beyond
    the cap queue up meanwhile: without the cap the count would reach the fan-out's width."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.release = threading.Event()

    def answer(self, body: dict[str, Any]) -> Reply:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        self.release.wait(0.2)  # a slow model: other calls pile up behind the cap meanwhile
        with self.lock:
            self.now -= 1
        return answer_for(body)


@pytest.fixture
def counted() -> Iterator[tuple[OpenAIServer, InFlight]]:
    flight = InFlight()
    with running_openai_server() as server:
        server.enqueue(*[flight.answer] * 10_000)
        yield server, flight


def test_a_model_cap_holds_within_a_run(counted: tuple[OpenAIServer, InFlight]) -> None:
    server, flight = counted
    graph, _, _ = load_pipeline(CAPPED)
    assert graph is not None and graph.models["default"].concurrency == CAP
    store = open_store(":memory:")
    env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY}
    try:
        outcome = anyio.run(lambda: run_graph(graph, {"topic": "t"}, store, RunOptions(env=env)))
    finally:
        store.close()
    assert outcome.status.value == "succeeded"
    assert server.request_count == 6
    assert 1 <= flight.most <= CAP


def test_a_model_cap_holds_across_workers(counted: tuple[OpenAIServer, InFlight], pg_url: str, tmp_path: Path) -> None:
    server, flight = counted
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    env["FLOWCTL_SUBMISSIONS"] = str(tmp_path / "submissions")
    cluster = Cluster(pg_url, pg_url, env, tmp_path)
    try:
        cluster.start_worker("c1", concurrency=3)  # 6 runs: both workers take some
        cluster.start_worker("c2", concurrency=3)
        graph, _, front = load_pipeline(CAPPED)
        assert graph is not None
        files = sources.files_of(graph, {k: r.doc.source for k, r in front.files.items()})
        submission = sources.pack(CAPPED.resolve(), files)
        conn = queue.prepare(pg_url)
        try:
            run_ids = [new_run_id() for _ in range(6)]
            for i, run_id in enumerate(run_ids):
                queue.submit(conn, pg_url, submission, run_id, {"topic": f"t{i}"})
        finally:
            conn.close()
        wait_for("every capped run done", lambda: cluster.succeeded(run_ids) == len(run_ids))
        both = [w for w in cluster.workers if any(": started" in line for line in w.read())]
        assert len(both) == 2  # the runs were spread over both workers
    finally:
        cluster.stop_all()
    assert len([b for b in server.bodies if b.get("messages")]) == 36
    assert 1 <= flight.most <= CAP
