"""The benchmark suites. Each runs in its own process (see run_benchmarks.py) and returns table rows.

steps    per-step overhead of a 1,000-step chain (SQLite journal and NullStore) against plain awaits and the
         hand-written floor of one journaled step
fanout   makespan of a 10,000-branch fan-out with 50 ms simulated latency against asyncio.gather
memory   tracemalloc peak per in-flight branch, flowctl against asyncio
startup  `flowctl --version` wall time against `python -c pass`, and the modules it imports
validate `flowctl validate` on a ~200-line pipeline, in process and as a command
postgres per-step cost of the journal on PostgreSQL against SQLite, and its commit's round trip (postgres_suite.py)
provider the real OpenAI provider against the bare `openai.AsyncOpenAI` client on a local server, 300 sequential and
         1,000 concurrent streamed calls (bench/provider_suite.py)
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from bench import baselines
from bench.gcmeter import GcMeter
from bench.null_store import NullStore
from bench.pipelines import (
    VALIDATE_YAML,
    chain_yaml,
    fanout_yaml,
    latency_fixture,
    write,
    zero_latency_fixture,
)
from bench.provider_suite import provider_suite
from bench.report import Row, median, spread
from bench.runs import CountingProvider, compile_pipeline, coroutine_in_fresh_loop, fixture, sqlite_store, timed_run
from flowctl.interpreter.engine.tuning import branches_in_flight, tuned_for_runs
from flowctl.interpreter.redact import redactor_for

CHAIN_STEPS = 1000
STEP_TARGET_US = 60.0
FANOUT_LATENCY = 0.05
FANOUT_CONCURRENCY = 10000
FANOUT_TARGET_RATIO = 2.0
MEMORY_TARGET_KB = 10.0
STARTUP_TARGET_MS = 150.0
FORBIDDEN_AT_STARTUP = ("asyncio", "anyio", "openai", "mcp")


# --- steps ------------------------------------------------------------------------------------------------------


def steps_suite(quick: bool, workdir: Path) -> list[Row]:
    n = CHAIN_STEPS
    repeats = 3 if quick else 9
    graph = compile_pipeline(workdir, "chain.yaml", chain_yaml(n))
    timeout_graph = compile_pipeline(workdir, "chain-timeout.yaml", chain_yaml(n, timeout="60s"))
    scripted = fixture(zero_latency_fixture())
    _chain_run(graph, scripted, workdir, "warmup.db")  # imports (the MCP pool loads `mcp`), caches, SQLite
    _chain_run(timeout_graph, scripted, workdir, "warmup-timeout.db")
    timed_run(graph, {}, NullStore(), scripted)
    coroutine_in_fresh_loop(baselines.journaled_step_floor(100, workdir / "floor-warmup.db"))
    samples: dict[str, list[float]] = {k: [] for k in ("sqlite", "timeout", "null", "floor", "commit", "plain")}
    gc_notes = []
    for r in range(repeats):  # interleaved, so drift on a busy machine hits every series alike
        with GcMeter() as meter:
            samples["sqlite"].append(_chain_run(graph, scripted, workdir, f"chain-{r}.db") / n)
        gc_notes.append(meter.seconds)
        samples["timeout"].append(_chain_run(timeout_graph, scripted, workdir, f"chain-timeout-{r}.db") / n)
        samples["null"].append(timed_run(graph, {}, NullStore(), scripted) / n)
        samples["floor"].append(
            coroutine_in_fresh_loop(baselines.journaled_step_floor(n, _fresh(workdir / f"floor-{r}.db"))) / n
        )
        samples["commit"].append(baselines.sqlite_commit_floor(n, _fresh(workdir / f"commit-{r}.db")) / n)
        samples["plain"].append(coroutine_in_fresh_loop(baselines.plain_await_chain(n)) / n)
    us = {k: [v * 1e6 for v in vs] for k, vs in samples.items()}
    sqlite_us, null_us = median(us["sqlite"]), median(us["null"])
    floor_note = (
        "floor = sandboxed Jinja render of the previous output + await + asyncio.timeout + json.dumps + "
        f"1-row WAL insert+commit, by hand ({spread(us['floor'], unit=' µs')})"
    )
    return [
        Row(
            f"per step, journal on (SQLite WAL), {n:,}-step chain",
            sqlite_us,
            "µs",
            median(us["floor"]),
            "floor of a journaled step",
            f"≤ {STEP_TARGET_US:g} µs",
            sqlite_us <= STEP_TARGET_US,
            [
                f"run_graph wall / {n} steps, scripted zero-latency model ({spread(us['sqlite'], unit=' µs')}); "
                f"GC {median(gc_notes) * 1e6 / n:.1f} µs/step",
                floor_note,
            ],
        ),
        Row(
            "per step, journal on, every step with `timeout: 60s`",
            median(us["timeout"]),
            "µs",
            median(us["floor"]),
            "floor of a journaled step",
            f"≤ {STEP_TARGET_US:g} µs",
            median(us["timeout"]) <= STEP_TARGET_US,
            [
                "`defaults: {timeout: 60s}`: a timeout scope per attempt, like the floor's asyncio.timeout "
                f"({spread(us['timeout'], unit=' µs')})"
            ],
        ),
        Row(
            "per step, journal on, vs plain await",
            sqlite_us,
            "µs",
            median(us["plain"]),
            "plain await",
            notes=[f"baseline: {n:,} sequential awaits of a trivial coroutine in plain asyncio"],
        ),
        Row(
            f"per step, NullStore (engine only), {n:,}-step chain",
            null_us,
            "µs",
            median(us["plain"]),
            "plain await",
            notes=[spread(us["null"], unit=" µs")],
        ),
        Row(
            "journal cost per step (SQLite − NullStore)",
            sqlite_us - null_us,
            "µs",
            median(us["commit"]),
            "1-row insert+commit",
            notes=["what the run store adds per step: step started/finished rows, the call record, their commits"],
        ),
    ]


def _chain_run(graph, scripted, workdir: Path, name: str) -> float:  # type: ignore[no-untyped-def]
    store = sqlite_store(workdir, name)
    try:
        return timed_run(graph, {}, store, scripted)
    finally:
        store.close()


def _fresh(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return path


# --- fan-out ----------------------------------------------------------------------------------------------------


def fanout_suite(quick: bool, workdir: Path) -> list[Row]:
    branches = 2000 if quick else 10000
    repeats = 1 if quick else 5  # gather itself moves by ±20 % from run to run on a small VM
    graph = compile_pipeline(workdir, "fanout.yaml", fanout_yaml(FANOUT_CONCURRENCY))
    scripted = fixture(latency_fixture(FANOUT_LATENCY))
    items = list(range(branches))
    plain, with_secret = fanout_environments()
    _fan_run(graph, scripted, items[:200], workdir, "warmup.db", plain)
    timed_run(graph, {"items": items[:200]}, NullStore(), scripted, env=plain)
    coroutine_in_fresh_loop(baselines.gather_sleep(200, FANOUT_LATENCY))
    tuned_gather(200)
    samples: dict[str, list[float]] = {"sqlite": [], "null": [], "secret": [], "gather": [], "tuned": []}
    gc_sqlite: list[GcMeter] = []
    gc_null: list[GcMeter] = []
    gc_secret: list[GcMeter] = []
    for r in range(repeats):
        gc.collect()
        with GcMeter() as meter:
            samples["sqlite"].append(_fan_run(graph, scripted, items, workdir, f"fan-{r}.db", plain))
        gc_sqlite.append(meter)
        gc.collect()
        with GcMeter() as meter:
            samples["null"].append(timed_run(graph, {"items": items}, NullStore(), scripted, env=plain))
        gc_null.append(meter)
        gc.collect()
        with GcMeter() as meter:
            samples["secret"].append(_fan_run(graph, scripted, items, workdir, f"fan-secret-{r}.db", with_secret))
        gc_secret.append(meter)
        gc.collect()
        samples["gather"].append(coroutine_in_fresh_loop(baselines.gather_sleep(branches, FANOUT_LATENCY)))
        gc.collect()
        samples["tuned"].append(tuned_gather(branches))
    gather = median(samples["gather"])
    tuned = median(samples["tuned"])
    label = f"fan-out {branches:,} × {FANOUT_LATENCY * 1000:g} ms"
    target = f"≤ {FANOUT_TARGET_RATIO:g}× gather"
    rows = []
    series = (
        ("sqlite", gc_sqlite, "journal on (SQLite)"),
        ("null", gc_null, "NullStore"),
        ("secret", gc_secret, "journal on (SQLite), a secret in the environment"),
    )
    for key, meters, what in series:
        value = median(samples[key])
        meter = meters[len(meters) // 2]
        # each run against the gather run right after it: what drifts on a busy machine hits both alike
        paired = sorted(v / g for v, g in zip(samples[key], samples["gather"], strict=True))
        rows.append(
            Row(
                f"{label}, {what}: makespan",
                value,
                "s",
                gather,
                "asyncio.gather of sleeps",
                target,
                value / gather <= FANOUT_TARGET_RATIO,
                [
                    f"run_graph wall, for_each without max_concurrency, `concurrency: {FANOUT_CONCURRENCY}` "
                    f"({spread(samples[key], unit=' s')}); gather {spread(samples['gather'], unit=' s')}; paired "
                    f"ratios {paired[0]:.2f}–{paired[-1]:.2f}×, median {median(paired):.2f}×",
                    f"a median run spent {meter.describe()}",
                ],
            )
        )
    # The same runs against gather with the collector as flowctl's runs have it (see `tuned_gather`): plain gather pays
    # collections over the whole imported heap that flowctl's runs do not, which flatters the ratios above.
    for key, _, what in series[:2]:
        value = median(samples[key])
        paired = sorted(v / g for v, g in zip(samples[key], samples["tuned"], strict=True))
        rows.append(
            Row(
                f"{label}, {what}: against gather with flowctl's collector settings",
                value,
                "s",
                tuned,
                "asyncio.gather of sleeps, tuned as runs are",
                notes=[
                    f"gather under engine/tuning.py's settings ({spread(samples['tuned'], unit=' s')}), against "
                    f"{gather:.3f} s without them; paired ratios {paired[0]:.2f}–{paired[-1]:.2f}×, median "
                    f"{median(paired):.2f}×"
                ],
            )
        )
    return rows


def tuned_gather(branches: int) -> float:
    """The gather baseline under the settings flowctl's runs give themselves (engine/tuning.py: the objects that
    existed before frozen out of collection, the young generation sized to the branches in flight, the 1 ms switch
    interval). Plain gather in this process pays collections that walk the imported modules (openai, mcp, jinja2:
    ~140,000 objects), 0.2 s instead of 0.12–0.15 s: a baseline made slow by what flowctl's runs avoid."""
    with tuned_for_runs(), branches_in_flight(branches):
        return coroutine_in_fresh_loop(baselines.gather_sleep(branches, FANOUT_LATENCY))  # type: ignore[no-any-return]


def _fan_run(graph, scripted, items: list[int], workdir: Path, name: str, env=None) -> float:  # type: ignore[no-untyped-def]
    store = sqlite_store(workdir, name)
    try:
        return timed_run(graph, {"items": items}, store, scripted, env=env)
    finally:
        store.close()


def fanout_environments() -> tuple[dict[str, str], dict[str, str]]:
    """The fan-out's environments: this process's without any secret-looking variable (what the figures promise
    must not hang on what the machine happens to hold), and the same with one, as most real runs have (an API key):
    the run then masks what it stores."""
    plain = {name: value for name, value in os.environ.items() if not redactor_for([], {name: value})}
    return plain, {**plain, "BENCH_API_KEY": "sk-bench-0123456789abcdef"}


# --- memory -----------------------------------------------------------------------------------------------------


def memory_suite(quick: bool, workdir: Path) -> list[Row]:
    branches = 2000 if quick else 10000
    graph = compile_pipeline(workdir, "fanout.yaml", fanout_yaml(FANOUT_CONCURRENCY))
    scripted = fixture(latency_fixture(FANOUT_LATENCY))
    items = list(range(branches))
    _fan_run(graph, scripted, items[:200], workdir, "warmup.db")  # imports and caches before tracing starts
    coroutine_in_fresh_loop(baselines.gather_sleep(200, FANOUT_LATENCY))

    def asyncio_run() -> None:
        coroutine_in_fresh_loop(baselines.gather_sleep(branches, FANOUT_LATENCY))

    asyncio_kb = _traced_peak(asyncio_run) / branches / 1024
    rows = []
    for what, make_store in (
        ("journal on (SQLite)", lambda: sqlite_store(workdir, "mem.db")),
        ("NullStore", NullStore),
    ):
        from flowctl.interpreter.providers.scripted import ScriptedProvider

        provider = CountingProvider(ScriptedProvider(scripted))
        store = make_store()
        try:
            peak_bytes = _traced_peak(lambda: timed_run(graph, {"items": items}, store, scripted, provider))  # noqa: B023
        finally:
            store.close()
        flowctl_kb = peak_bytes / branches / 1024
        notes = [
            f"tracemalloc peak during the run minus the traced memory before it, / {branches:,} branches; "
            f"{provider.peak:,} model calls were in flight at once",
        ]
        if what.startswith("journal"):
            notes.append("SQLite's own C allocations are not traced (they are not Python objects)")
        rows.append(
            Row(
                f"memory per in-flight branch, {what}",
                flowctl_kb,
                "KB",
                asyncio_kb,
                "asyncio task + sleep",
                f"≤ {MEMORY_TARGET_KB:g} KB",
                flowctl_kb <= MEMORY_TARGET_KB,
                notes,
            )
        )
    return rows


def _traced_peak(run: Callable[[], object]) -> int:
    """Bytes: peak traced memory during `run()` minus traced memory just before it."""
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


# --- startup ----------------------------------------------------------------------------------------------------

_IMPORT_CHECK = """
import json, sys
from flowctl.cli import main
try:
    main(["--version"], standalone_mode=False)
except SystemExit:
    pass
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(sys.argv[1])))
print(json.dumps(loaded))
"""


def flowctl_command() -> list[str]:
    """The installed console script next to this interpreter, else the same entry point through `-c`."""
    script = Path(sys.executable).parent / "flowctl"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from flowctl.cli import main; sys.exit(main())"]


def bytecode_env(workdir: Path) -> dict[str, str]:
    """An environment where compiled bytecode is cached (as in an installed package), under `workdir`.

    PYTHONDONTWRITEBYTECODE (set on some dev machines) would make every cold start compile flowctl's modules from
    source; PYTHONPYCACHEPREFIX keeps the cache out of the source tree.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    return env


def _wall(command: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=cwd, env=env)
    return time.perf_counter() - started


def _interleaved(
    commands: dict[str, list[str]], runs: int, env: dict[str, str], cwd: Path | None = None
) -> dict[str, list[float]]:
    for command in commands.values():  # page cache, bytecode cache
        _wall(command, env, cwd)
        _wall(command, env, cwd)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            times[name].append(_wall(command, env, cwd))
    return times


def startup_suite(quick: bool, workdir: Path) -> list[Row]:
    runs = 7 if quick else 25
    commands = {"flowctl": [*flowctl_command(), "--version"], "python": [sys.executable, "-c", "pass"]}
    times = _interleaved(commands, runs, bytecode_env(workdir))
    flowctl_ms, python_ms = median(times["flowctl"]) * 1000, median(times["python"]) * 1000
    as_is = ""
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        plain = _interleaved(commands, max(3, runs // 3), dict(os.environ))
        as_is = (
            f"; with this shell's PYTHONDONTWRITEBYTECODE (no bytecode cache for flowctl): "
            f"{median(plain['flowctl']) * 1000:.0f} ms vs {median(plain['python']) * 1000:.0f} ms"
        )
    check = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK, json.dumps(FORBIDDEN_AT_STARTUP)],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = json.loads(check.stdout.strip().splitlines()[-1])
    return [
        Row(
            "cold start: flowctl --version",
            flowctl_ms,
            "ms",
            python_ms,
            "python -c pass",
            f"≤ {STARTUP_TARGET_MS:g} ms",
            flowctl_ms <= STARTUP_TARGET_MS,
            [
                f"median wall of {runs} fresh processes, bytecode cached ({spread(times['flowctl'], 1000, ' ms')}); "
                f"{flowctl_ms - python_ms:.0f} ms over the bare interpreter{as_is}",
                f"slowest imports: {_slowest_imports()}",
            ],
        ),
        Row(
            "--version imports asyncio/anyio/openai/mcp",
            float(len(loaded)),
            "modules",
            target="none",
            passed=not loaded,
            notes=[f"loaded: {', '.join(loaded) if loaded else 'none'} (sys.modules after `--version`)"],
        ),
    ]


def _slowest_imports(top: int = 5) -> str:
    """The heaviest direct imports of `flowctl.cli` by cumulative time (`-X importtime`), for `--version`."""
    code = "from flowctl.cli import main\ntry:\n    main(['--version'], standalone_mode=False)\nexcept SystemExit: pass"
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )
    children: list[tuple[str, int]] = []  # -X importtime prints an import's children before the import itself
    for line in result.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        depth = (len(parts[2]) - len(parts[2].lstrip()) - 1) // 2
        name, cumulative = parts[2].strip(), int(parts[1])
        if depth == 0:
            if name == "flowctl.cli":
                ranked = sorted(children, key=lambda kv: -kv[1])[:top]
                return f"flowctl.cli {cumulative / 1000:.0f} ms, of which " + ", ".join(
                    f"{child} {us / 1000:.0f} ms" for child, us in ranked
                )
            children = []
        elif depth == 1:
            children.append((name, cumulative))
    return "flowctl.cli not found in -X importtime output"


# --- validate ---------------------------------------------------------------------------------------------------


_VALIDATE_PROBE = """
import json, sys, time
started = time.perf_counter()
import yaml
from flowctl.dsl.frontend import load_pipeline
imported = time.perf_counter()
graph, diagnostics, _ = load_pipeline(sys.argv[1])
first = time.perf_counter()
load_pipeline(sys.argv[1])
again = time.perf_counter()
text = open(sys.argv[1], encoding="utf-8").read()
parse_started = time.perf_counter()
yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
parsed = time.perf_counter()
print(json.dumps({
    "imports": imported - started, "first": first - imported, "again": again - first, "yaml": parsed - parse_started,
    "loader": getattr(yaml, "CSafeLoader", yaml.SafeLoader).__name__,
    "diagnostics": [str(d) for d in diagnostics], "ok": graph is not None,
}))
"""


def validate_suite(quick: bool, workdir: Path) -> list[Row]:
    """Front-end caches (compiled templates, schema validators) live per process: the first file a process validates
    is what `flowctl validate` pays, so each sample is a fresh process that validates the file twice."""
    path = write(workdir, "support.yaml", VALIDATE_YAML)
    lines = len(VALIDATE_YAML.splitlines())
    env = bytecode_env(workdir)
    probes = [_validate_probe(path, env) for _ in range(3 if quick else 11)]
    if not probes[0]["ok"] or probes[0]["diagnostics"]:
        raise RuntimeError("the validate benchmark pipeline has diagnostics:\n" + "\n".join(probes[0]["diagnostics"]))
    first = [p["first"] for p in probes]
    again = [p["again"] for p in probes]
    imports = [p["imports"] for p in probes]
    runs = 5 if quick else 15
    times = _interleaved(
        {"flowctl": [*flowctl_command(), "validate", str(path)], "python": [sys.executable, "-c", "pass"]},
        runs,
        env,
        cwd=workdir,
    )
    return [
        Row(
            f"validate {lines}-line pipeline, in process",
            median(first) * 1000,
            "ms",
            median([p["yaml"] for p in probes]) * 1000,
            f"YAML parse only ({probes[0]['loader']})",
            notes=[
                f"load → schema → checks → compile, the first file of a fresh process after its imports "
                f"({spread(first, 1000, ' ms')}); the same file again in that process: {median(again) * 1000:.1f} ms; "
                f"importing the front end: {median(imports) * 1000:.0f} ms"
            ],
        ),
        Row(
            f"`flowctl validate` {lines}-line pipeline, command",
            median(times["flowctl"]) * 1000,
            "ms",
            median(times["python"]) * 1000,
            "python -c pass",
            notes=[f"median wall of {runs} fresh processes, bytecode cached ({spread(times['flowctl'], 1000, ' ms')})"],
        ),
    ]


def _validate_probe(path: Path, env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    result = subprocess.run(
        [sys.executable, "-c", _VALIDATE_PROBE, str(path)], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _postgres_suite(quick: bool, workdir: Path) -> list[Row]:
    from bench.postgres_suite import postgres_suite  # psycopg: only for this suite

    return postgres_suite(quick, workdir)


SUITES: dict[str, Callable[[bool, Path], list[Row]]] = {
    "steps": steps_suite,
    "fanout": fanout_suite,
    "memory": memory_suite,
    "startup": startup_suite,
    "validate": validate_suite,
    "provider": provider_suite,
    "postgres": _postgres_suite,
}
