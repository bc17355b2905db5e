"""A small cluster for the scale tests: `flowctl worker` processes (real subprocesses) sharing a run store and a
PostgreSQL queue, the local OpenAI-compatible server answering from the request alone (so a run's outputs do not
depend on which worker ran it), and polling helpers that wait on states, never on time.
"""

from __future__ import annotations

import hashlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowctl.interpreter.persistence.locate import open_store
from flowctl.interpreter.persistence.store import RunStatus
from tests.support.openai_server import OpenAIServer, Reply, reply, running_openai_server

REPO = Path(__file__).resolve().parents[2]
PIPELINES = Path(__file__).resolve().parent / "pipelines"
KEY = "sk-scale-0123456789abcdef"
GUARD = 180.0  # seconds: only a guard against a hung test, never a timing assertion


def answer_for(body: dict[str, Any], delay: float = 0.0) -> Reply:
    """The same request always gets the same answer, whichever worker asks."""
    text = "\n".join(str(m.get("content")) for m in body.get("messages", []))
    return reply("a-" + hashlib.sha256(text.encode()).hexdigest()[:12], usage=(5, 3), delay=delay)


def request_key(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content")) for m in body.get("messages", []))


@contextmanager
def echo_server(delay: float = 0.0, answers: int = 100_000) -> Iterator[OpenAIServer]:
    with running_openai_server() as server:
        server.enqueue(*[lambda body: answer_for(body, delay)] * answers)
        yield server


def paid(server: OpenAIServer) -> list[dict[str, Any]]:
    """The requests the server answered as a model would (a whole body with messages)."""
    return [b for b in server.bodies if b.get("messages")]


def duplicates(server: OpenAIServer) -> Counter[str]:
    """Requests the server answered more than once (each beyond the first counted)."""
    counts = Counter(request_key(b) for b in paid(server))
    return Counter({k: n - 1 for k, n in counts.items() if n > 1})


def wait_for(what: str, check: Callable[[], Any], guard: float = GUARD) -> Any:
    """Poll `check` until it returns something true; fail with `what` only past the guard."""
    deadline = time.monotonic() + guard
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    log: list[str] = field(default_factory=list)
    owner: str = ""
    lease: float = 10.0
    revived: bool = False

    def read(self) -> list[str]:
        while True:
            try:
                self.log.append(self.lines.get_nowait())
            except queue.Empty:
                return self.log

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.read())


@dataclass
class Cluster:
    store: str
    queue_url: str
    env: dict[str, str]
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    reader: Any = None  # the store, opened once for the test's reads

    def flowctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "flowctl", *args], env=self.env, capture_output=True, text=True, cwd=self.tmp,
            timeout=600,  # a command that hangs fails its test rather than the whole CI run
        )  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"flowctl {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done

    def start_worker(self, name: str, *, lease: float = 10.0, concurrency: int = 8) -> WorkerProcess:
        argv = [sys.executable, "-m", "flowctl", "worker", "--store", self.store, "--queue", self.queue_url]
        argv += ["--id", name, "--lease", str(lease), "--concurrency", str(concurrency), "--drain-timeout", "5"]
        process = subprocess.Popen(
            argv, env=self.env, cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        worker = WorkerProcess(name, process, lease=lease)
        assert process.stdout is not None
        stdout = process.stdout

        def pump() -> None:
            for line in stdout:
                worker.lines.put(line.rstrip("\n"))

        threading.Thread(target=pump, daemon=True).start()
        self.workers.append(worker)
        ready = wait_for(f"worker {name} ready", lambda: [line for line in worker.read() if " ready:" in line])
        worker.owner = ready[0].split("(", 1)[1].split(")", 1)[0]
        return worker

    def revive(self) -> None:
        """Start again a worker that fenced itself (exit 75) as a supervisor would (systemd `Restart=`), except the
        one a test froze on purpose."""
        for worker in list(self.workers):
            if worker.process.poll() == 75 and worker.name != "victim" and not worker.revived:
                worker.revived = True
                print(f"--- worker {worker.name} fenced itself ---", *worker.read(), sep="\n")
                self.start_worker(worker.name, lease=worker.lease)

    def stop_all(self) -> None:
        for worker in self.workers:  # shown by pytest when the test failed
            print(f"--- worker {worker.name} ---", *worker.read(), sep="\n")
        for worker in self.workers:
            if worker.process.poll() is None:
                os.kill(worker.process.pid, signal.SIGCONT)
                worker.process.terminate()
        if self.reader is not None:
            self.reader.close()
        for worker in self.workers:
            try:
                worker.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()

    # --- the store, read as `flowctl show` reads it ------------------------------------------------------------

    def read(self, look: Callable[[Any], Any]) -> Any:
        self.revive()
        if self.reader is None:
            self.reader = open_store(self.store, access="read")
        return look(self.reader)

    def statuses(self, run_ids: list[str]) -> dict[str, str | None]:
        def look(store: Any) -> dict[str, str | None]:
            records = {r: store.get_run(r) for r in run_ids}
            return {r: (rec.status.value if rec else None) for r, rec in records.items()}

        return self.read(look)

    def succeeded(self, run_ids: list[str]) -> int:
        return sum(1 for s in self.statuses(run_ids).values() if s == RunStatus.SUCCEEDED.value)

    def waiting_on(self, run_id: str) -> str | None:
        """The owner of a run whose `approval` wait is in progress (None while it is not)."""

        def look(store: Any) -> str | None:
            steps = {s.path: s for s in store.steps(run_id)}
            step = steps.get("approval")
            if step is None or step.status.value != "running":
                return None
            return str(store.liveness(run_id).owner)

        return self.read(look)

    def outputs(self, run_ids: list[str]) -> dict[str, Any]:
        return self.read(lambda store: {r: store.get_run(r).outputs for r in run_ids})
