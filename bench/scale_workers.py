"""Throughput of `flowctl worker` processes on I/O-bound runs: the same batch of runs (a chain of model calls, each
answered after a fixed latency by bench/openai_local.py, a keep-alive server in a process of its own) on 1, 2 and 4
workers sharing one run store and one PostgreSQL queue; the speed-up is the ratio of the one-worker time to the
N-worker time, measured in one go.

    python -m bench.scale_workers [--runs 200] [--steps 5] [--latency 0.05] [--workers 1 2 4] [--store pg|sqlite]

PostgreSQL: `FLOWCTL_TEST_PG` (a server URL whose user may create databases), else a private server started here
(tests/support/postgres.py: needs PostgreSQL's programs). Each worker count gets a fresh database (and SQLite file).
The clock starts when the runs are queued and stops when the store says every one succeeded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flowctl.dsl.frontend import load_pipeline
from flowctl.interpreter.persistence.ids import new_run_id
from flowctl.interpreter.persistence.locate import open_store
from flowctl.scale import queue, sources
from tests.support import postgres

KEY = "sk-bench-0123456789abcdef"


def pipeline(steps: int) -> str:
    lines = ["flowctl: 1", "name: chain", "inputs:", "  n: {type: integer}", "agents:", "  w: {instruction: Work.}"]
    lines.append("steps:")
    for i in range(steps):
        prompt = "start {{ inputs.n }}" if i == 0 else f"after {{{{ steps.s{i - 1}.output }}}}"
        lines.append(f'  - {{id: s{i}, agent: w, prompt: "{prompt}"}}')
    return "\n".join(lines) + "\n"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_batch(
    workers: int, args: argparse.Namespace, server_url: str, base_url: str, folder: Path
) -> tuple[float, float]:
    folder.mkdir()
    with postgres.fresh_database(server_url) as pg:
        store = pg if args.store == "pg" else str(folder / "runs.db")
        file = folder / "chain.yaml"
        file.write_text(pipeline(args.steps), encoding="utf-8")
        graph, _, front = load_pipeline(file)
        assert graph is not None
        submission = sources.pack(
            file.resolve(), sources.files_of(graph, {k: r.doc.source for k, r in front.files.items()})
        )
        env = {**os.environ, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": KEY, "FLOWCTL_SUBMISSIONS": str(folder)}
        conn = queue.prepare(pg)
        procs = [_start_worker(store, pg, f"b{i}", args.concurrency, env) for i in range(workers)]
        try:
            app = queue.make_app(pg, max_size=1)
            started = time.perf_counter()
            with app.open():
                run_ids = [new_run_id() for _ in range(args.runs)]
                for n, run_id in enumerate(run_ids):
                    queue.submit(conn, pg, submission, run_id, {"n": n}, app=app)
            _wait_done(store, run_ids)
            took = time.perf_counter() - started
            cpu = sum(_cpu_seconds(proc.pid) for proc in procs)
            return took, cpu
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait()
            conn.close()


def _start_worker(store: str, pg: str, name: str, concurrency: int, env: dict[str, str]) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "flowctl", "worker", "--store", store, "--queue", pg, "--id", name]
    argv += ["--concurrency", str(concurrency)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # ready before the clock starts
        if " ready:" in line:
            break
    return proc


def _wait_done(store_url: str, run_ids: list[str]) -> None:
    pending = set(run_ids)
    while pending:
        time.sleep(0.05)
        try:
            store = open_store(store_url, access="read")
        except Exception:  # no worker made the store yet
            continue
        try:
            pending = {r for r in pending if (rec := store.get_run(r)) is None or rec.status.value != "succeeded"}
        finally:
            store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the model takes to answer")
    parser.add_argument("--concurrency", type=int, default=16, help="runs per worker at once")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--store", choices=["pg", "sqlite"], default="pg", help="where the journal lives")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="flowctl-bench-scale-"))
    pg_folder = Path(tempfile.mkdtemp(prefix="flowctl-bench-pg-"))  # its own: the server's user must reach it
    server_url = os.environ.get("FLOWCTL_TEST_PG") or postgres.start(pg_folder)
    load = f"{os.getloadavg()[0]:.1f}"
    ideal = args.runs * args.steps * args.latency
    print(f"{args.runs} runs x {args.steps} steps x {args.latency * 1000:g} ms, journal on {args.store}")
    print(f"(one run at a time would take {ideal:.1f} s; each worker runs {args.concurrency} at once)")
    try:
        model = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "openai_local.py"), "--latency", str(args.latency)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert model.stdout is not None
            base_url = model.stdout.readline().strip()
            times = {n: one_batch(n, args, server_url, base_url, scratch / f"w{n}") for n in args.workers}
        finally:
            model.terminate()
            model.wait()
    finally:
        if not os.environ.get("FLOWCTL_TEST_PG"):
            postgres.stop(pg_folder)
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(pg_folder, ignore_errors=True)
    base = times[args.workers[0]][0]
    print(f"load average before: {load}; after: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)")
    print("| workers | wall (s) | runs/s | speed-up | target (0.8·N) | workers' CPU (s) | CPU per step (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, (took, cpu) in times.items():
        per_step = cpu / (args.runs * args.steps) * 1000
        print(
            f"| {n} | {took:.2f} | {args.runs / took:.1f} | {base / took:.2f}× | {0.8 * n / args.workers[0]:.1f}× "
            f"| {cpu:.1f} | {per_step:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
