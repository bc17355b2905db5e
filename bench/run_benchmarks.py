"""Run flowctl's benchmarks and print flowctl's figures next to baselines measured in the same run.

    python bench/run_benchmarks.py            # full: 10,000-branch fan-out, more repeats (a few minutes)
    python bench/run_benchmarks.py --quick    # smoke: smaller fan-out, fewer repeats (~15 s)
    python bench/run_benchmarks.py --only steps fanout --json results.json
    python bench/run_benchmarks.py --only postgres [--store postgresql://user@host/db]   # PostgreSQL vs SQLite

Each suite runs in a fresh interpreter (`--worker`), so one suite's garbage, caches and threads never bias
another's. Exit status: 0 when every measured target is met, 1 otherwise (the table is printed either way).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.report import Row, render_markdown, render_table  # noqa: E402

SUITE_ORDER = ("steps", "fanout", "memory", "startup", "validate", "provider")
EXTRA_SUITES = ("postgres",)  # run when named by --only (or when --store names a server)
_MARKER = "@@bench-rows@@"


def run_worker(name: str, quick: bool) -> int:
    """Inside the child process: run one suite, print its rows as JSON after a marker line."""
    from bench.suites import SUITES

    with tempfile.TemporaryDirectory(prefix=f"flowctl-bench-{name}-") as tmp:
        rows = SUITES[name](quick, Path(tmp))
    print(_MARKER)
    print(json.dumps([row.to_json() for row in rows]))
    return 0


def run_suite(name: str, quick: bool) -> list[Row]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name] + (["--quick"] if quick else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0 or _MARKER not in result.stdout:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"benchmark suite {name!r} failed (exit {result.returncode})")
    return [Row.from_json(data) for data in json.loads(result.stdout.split(_MARKER, 1)[1])]


def _cpu_busy(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy over `seconds` (Linux /proc/stat), measured before the suites start; None elsewhere."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def _revision() -> str:
    """The commit measured (read-only git queries), marked when the working tree has uncommitted changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "flowctl"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "flowctl (revision unknown)"
    return f"flowctl {sha}" + (" + uncommitted changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller fan-out and fewer repeats (a smoke test)")
    parser.add_argument("--only", nargs="+", choices=SUITE_ORDER + EXTRA_SUITES, help="run only these suites")
    parser.add_argument(
        "--store",
        metavar="URL",
        help="the PostgreSQL server of the postgres suite (postgresql://user@host/db; its user creates and drops a "
        "database); default: a private server when PostgreSQL is installed",
    )
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown (for the README)")
    parser.add_argument("--worker", choices=SUITE_ORDER + EXTRA_SUITES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args.worker, args.quick)

    if args.store:
        os.environ["FLOWCTL_BENCH_PG"] = args.store  # the suite's process reads it (bench/postgres_suite.py)
    suites = args.only or (SUITE_ORDER + EXTRA_SUITES if args.store else SUITE_ORDER)
    busy = _cpu_busy()
    started = time.perf_counter()
    rows: list[Row] = []
    for name in suites:
        print(f"running {name} …", file=sys.stderr, flush=True)
        rows += run_suite(name, args.quick)
    elapsed = time.perf_counter() - started
    print(
        f"{_revision()} benchmarks ({'quick' if args.quick else 'full'}) — {datetime.date.today()}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {elapsed:.0f} s" + ("" if busy is None else f", CPUs {busy:.0%} busy before the start")
    )
    if busy is not None and busy > 0.15:
        print("warning: other processes were using the CPUs when the run started: timings are inflated; rerun idle")
    print()
    print(render_markdown(rows) if args.markdown else render_table(rows))
    if args.json:
        args.json.write_text(json.dumps([row.to_json() for row in rows], indent=2) + "\n", encoding="utf-8")
    return 0 if all(row.passed is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
