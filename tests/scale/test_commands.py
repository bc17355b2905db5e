"""The commands: `flowctl submit --wait` follows a run to its end on a worker and exits as `flowctl run` would;
`flowctl workers` lists who holds what; a worker refuses a run recorded in another journal format."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.scale.cluster import KEY, PIPELINES, Cluster, WorkerProcess, echo_server

pytest.importorskip("procrastinate")

from flowctl.scale import queue  # the scale extra


@contextmanager
def one_worker(pg_url: str, tmp_path: Path, submissions: Path) -> Iterator[tuple[Cluster, WorkerProcess]]:
    """One `flowctl worker` against a local model server, materialising submissions into `submissions`."""
    with echo_server() as server:
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
        env["FLOWCTL_SUBMISSIONS"] = str(submissions)
        cluster = Cluster(pg_url, pg_url, env, tmp_path)
        try:
            yield cluster, cluster.start_worker("only")
        finally:
            cluster.stop_all()


def test_submit_wait_prints_the_outputs_and_exits_0(pg_url: str, tmp_path: Path) -> None:
    with one_worker(pg_url, tmp_path, tmp_path / "submissions") as (cluster, _):
        done = cluster.flowctl(
            "submit", str(PIPELINES / "mixed.yaml"), "-i", "topic=cli", "--store", pg_url, "--wait", "--output", "json",
            check=False,
        )  # fmt: skip
        listing = json.loads(cluster.flowctl("workers", "--store", pg_url, "--output", "json").stdout)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.split("\n", 1)[1])  # the run id, then the outcome
    assert result["status"] == "succeeded"
    assert result["run_id"] == done.stdout.split("\n", 1)[0]
    assert len(result["outputs"]["fan"]) == 3
    assert "last: succeeded" in done.stderr  # the steps, as the store recorded them
    assert [w["name"] for w in listing["workers"]] == ["only"]


def test_submit_needs_a_postgresql_queue(tmp_path: Path) -> None:
    cluster = Cluster(str(tmp_path / "runs.db"), "", dict(os.environ), tmp_path)
    done = cluster.flowctl("submit", str(PIPELINES / "mixed.yaml"), "-i", "topic=x", "--store", "runs.db", check=False)
    assert done.returncode == 2
    assert "--queue postgresql://" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_run_of_another_journal_format_is_refused_with_both_versions() -> None:
    request = queue.RunRequest("r-x", "digest", {}, "9.0.0", queue.JOURNAL_FORMAT + 1)
    with pytest.raises(queue.IncompatibleRun, match=r"flowctl 9\.0\.0 \(journal format 2\).*cannot resume"):
        queue.check_format(request)
    queue.check_format(queue.RunRequest("r-y", "digest", {}, "0.1.0", queue.JOURNAL_FORMAT))


def test_sigterm_drains_a_worker_and_another_resumes_what_it_released(pg_url: str, tmp_path: Path) -> None:
    """A run waiting for a signal cannot finish within the drain timeout: SIGTERM releases it (marked cancelled,
    queued again), the worker exits 0, and a worker started later resumes the run, which shows running and waiting
    again until the signal finishes it."""
    import signal as signals

    from tests.scale.cluster import wait_for
    from tests.scale.test_workers import approve, submit_runs

    with echo_server() as server:
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
        env["FLOWCTL_SUBMISSIONS"] = str(tmp_path / "submissions")
        cluster = Cluster(pg_url, pg_url, env, tmp_path)
        try:
            first = cluster.start_worker("first")
            [run_id] = submit_runs(cluster, range(0, 1))  # run 0 waits for a signal
            wait_for("the run waiting", lambda: cluster.waiting_on(run_id) == first.owner)
            first.process.send_signal(signals.SIGTERM)
            assert first.process.wait(timeout=120) == 0
            assert first.saw(f"run {run_id}: released (draining); queued again")
            assert cluster.statuses([run_id])[run_id] == "cancelled"
            second = cluster.start_worker("second")
            wait_for("the run resumed", lambda: second.saw(f"run {run_id}: resumed"))
            # waiting again, and shown so: its wait step's row running again, not as the drain left it
            wait_for("the run waiting again", lambda: cluster.waiting_on(run_id) == second.owner)
            assert cluster.statuses([run_id])[run_id] == "running"
            approve(cluster, run_id)  # kept in the store: the resumed run sees it wherever it waits
            wait_for("the run done", lambda: cluster.succeeded([run_id]) == 1)
        finally:
            cluster.stop_all()


def test_a_submitted_pipeline_takes_its_prompt_files_to_the_worker(pg_url: str, tmp_path: Path) -> None:
    """The submission holds every file the pipeline reads at load time: prompt and instruction files too, or the
    worker (which has no copy of the folder) could not compile it."""
    folder = tmp_path / "pipeline"
    (folder / "prompts").mkdir(parents=True)
    (folder / "prompts" / "system.md").write_text("You write about {{ inputs.topic }}.\n")
    (folder / "prompts" / "ask.md").write_text("ask {{ inputs.topic }}\n")
    (folder / "p.yaml").write_text(
        "flowctl: 1\nname: prompted\ninputs:\n  topic: {type: string}\n"
        "agents:\n  writer: {instruction_file: prompts/system.md}\n"
        "steps:\n  - {id: ask, agent: writer, prompt_file: prompts/ask.md}\n"
        'outputs:\n  answer: "{{ steps.ask.output }}"\n'
    )
    with one_worker(pg_url, tmp_path, tmp_path / "submissions") as (cluster, _):
        done = cluster.flowctl(
            "submit", str(folder / "p.yaml"), "-i", "topic=tea", "--store", pg_url, "--wait", "--output", "json",
            check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.split("\n", 1)[1])
    assert result["status"] == "succeeded" and result["outputs"]["answer"]


def test_submit_wait_ends_when_the_worker_cannot_start_the_run(pg_url: str, tmp_path: Path) -> None:
    """A worker that cannot materialise the submission (here its submissions folder sits under a regular file) fails
    the job before any run is recorded: `submit --wait` says so and exits 1 instead of waiting for a run that will
    never appear."""
    (tmp_path / "not-a-folder").write_text("")
    with one_worker(pg_url, tmp_path, tmp_path / "not-a-folder" / "submissions") as (cluster, worker):
        done = cluster.flowctl(
            "submit", str(PIPELINES / "mixed.yaml"), "-i", "topic=x", "--store", pg_url, "--wait", check=False
        )
    assert done.returncode == 1, done.stderr
    assert "failed before the run started" in done.stderr
    assert "Traceback" not in done.stderr
    assert worker.saw("cannot be run here")


@pytest.mark.parametrize("store_made", [True, False], ids=["store-made-before", "no-store-yet"])
def test_logs_follow_waits_for_a_worker_to_start_a_submitted_run(pg_url: str, tmp_path: Path, store_made: bool) -> None:
    """`flowctl logs RUN -f` right after `flowctl submit`: it says it waits for a worker, then follows the run once one
    starts it, to its end — also in a database where no worker has made the run store yet. Synchronised on what the
    processes print, never on time."""
    import subprocess
    import sys

    from flowctl.cli.common import open_store
    from flowctl.interpreter.persistence.store_errors import MissingStore

    with echo_server() as server:
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
        env["FLOWCTL_SUBMISSIONS"] = str(tmp_path / "submissions")
        cluster = Cluster(pg_url, pg_url, env, tmp_path)
        if store_made:
            open_store(pg_url, "create").close()  # the store, as the workers that ran before left it
        try:
            submitted = cluster.flowctl("submit", str(PIPELINES / "mixed.yaml"), "-i", "topic=f", "--store", pg_url)
            run_id = submitted.stdout.strip()
            if not store_made:
                with pytest.raises(MissingStore):  # `submit` queues the run; only a worker makes the store
                    open_store(pg_url, "read")
            follow = subprocess.Popen(
                [sys.executable, "-m", "flowctl", "logs", run_id, "-f", "--output", "json", "--store", pg_url],
                env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert follow.stderr is not None and follow.stdout is not None
            assert "waiting for a worker to start" in follow.stderr.readline()
            cluster.start_worker("late")
            entries = [json.loads(line) for line in follow.stdout]
            assert follow.wait() == 0
        finally:
            cluster.stop_all()
    assert {e["path"] for e in entries} >= {"first", "second", "fan[0]", "last"}
    assert all(e["kind"] == "model" for e in entries)
