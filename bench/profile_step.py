"""Where the time goes: profiles of the per-step path (1,000-step chain) and the fan-out path.

    python bench/profile_step.py                 # chain (SQLite and NullStore) + 10,000-branch fan-out
    python bench/profile_step.py --fanout 2000   # a smaller fan-out

Three views, because each alone misleads:
1. cProfile self time grouped by component (flowctl module, jinja2, anyio, sqlite3 C calls, json, asyncio), scaled
   to the run's unprofiled wall time. cProfile inflates Python calls more than C calls, so treat it as a ranking.
2. Micro-benchmarks of the pieces one step pays for, each timed alone with flowctl's own objects (absolute µs).
3. For the fan-out: the garbage collector's share (`gc.callbacks`), which cProfile spreads over unrelated frames,
   and the allocation sites of the memory held while every branch is in flight (tracemalloc snapshots).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402

from bench.gcmeter import GcMeter  # noqa: E402
from bench.null_store import NullStore  # noqa: E402
from bench.pipelines import chain_yaml, fanout_yaml, latency_fixture, zero_latency_fixture  # noqa: E402
from bench.report import median  # noqa: E402
from bench.runs import compile_pipeline, fixture, sqlite_store, timed_run  # noqa: E402

Key = tuple[str, int, str]


def component(key: Key) -> str:
    filename, _, name = key
    if filename == "~":
        return "sqlite3 (C calls)" if "sqlite3" in name else ""  # "" = charge it to the caller
    for marker, label in (
        ("/flowctl/", None),
        ("/jinja2/", "jinja2"),
        ("/anyio/", "anyio"),
        ("/jsonschema/", "jsonschema"),
        ("/asyncio/", "asyncio"),
        ("/json/", "json"),
        ("/bench/", "bench harness"),
    ):
        if marker in filename:
            if label is None:
                return "flowctl." + filename.split("/flowctl/", 1)[1].removesuffix(".py").replace("/", ".")
            return label
    path = Path(filename)
    return (
        path.parent.name if path.name == "__init__.py" else path.name.removesuffix(".py")
    )  # collections, not __init__


def grouped(stats: pstats.Stats) -> dict[str, float]:
    """Self time per component; C builtins other than sqlite3 are charged to their callers."""
    raw: dict[Key, Any] = stats.stats  # type: ignore[attr-defined]
    totals: dict[str, float] = defaultdict(float)
    for key, (_, _, tottime, _, callers) in raw.items():
        label = component(key)
        if label:
            totals[label] += tottime
            continue
        edge_total = sum(edge[2] for edge in callers.values()) or 1.0
        for caller, edge in callers.items():
            totals[component(caller) or "builtins"] += tottime * edge[2] / edge_total
    return dict(totals)


def profile(run: Callable[[], object]) -> pstats.Stats:
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    return pstats.Stats(profiler)


def print_components(title: str, stats: pstats.Stats, unprofiled: float, units: int, unit: str) -> None:
    totals = grouped(stats)
    profiled = sum(totals.values())
    scale = unprofiled / profiled if profiled else 0.0
    print(f"\n{title}: {unprofiled / units * 1e6:.1f} µs per {unit} unprofiled ({profiled / units * 1e6:.1f} profiled)")
    print(f"  {'component':<36} {'µs/' + unit:>10} {'share':>7}")
    for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1])[:18]:
        print(f"  {name:<36} {seconds * scale / units * 1e6:>10.1f} {seconds / profiled:>7.1%}")


def print_functions(stats: pstats.Stats, units: int, unit: str, top: int) -> None:
    raw: dict[Key, Any] = stats.stats  # type: ignore[attr-defined]
    ranked = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    print(f"  top functions by self time (profiled µs/{unit}, calls/{unit}):")
    for (filename, line, name), (_, calls, tottime, _, _) in ranked:
        where = name if filename == "~" else f"{component((filename, line, name))}:{line} {name}"
        print(f"    {tottime / units * 1e6:8.2f}  {calls / units:5.1f}  {where}")


# --- micro-benchmarks of one step's pieces ---------------------------------------------------------------------


def per_call(function: Callable[[], object], number: int = 2000) -> float:
    """Median µs per call over 5 batches."""
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(number):
            function()
        samples.append((time.perf_counter() - started) / number * 1e6)
    return median(samples)


def step_pieces(graph: Any, workdir: Path, steps: int) -> list[tuple[str, float]]:
    """The work one chain step does, piece by piece, with flowctl's own objects and a realistic context."""
    from flowctl.interpreter.meters import STEP_METERS, UsageMeter
    from flowctl.interpreter.providers.llm import CompletionRequest, CompletionResponse, Message
    from flowctl.interpreter.providers.scripted import ScriptedProvider

    step = graph.root.steps[-1]
    agent = graph.agents[step.body.agent]
    step_results = {
        f"s{i}": {"output": "ok", "status": "succeeded", "error": None, "attempts": 1} for i in range(steps)
    }
    context = {"inputs": {}, "steps": step_results, "state": {}, "run": {"id": "r", "pipeline": "p"}}
    request = CompletionRequest(
        model="bench-model",
        messages=(Message("system", "You repeat what you are given."), Message("user", "ok")),
        agent=agent.name,
        step=step.id,
    )
    provider = ScriptedProvider(fixture(zero_latency_fixture()))
    response = CompletionResponse("ok")
    store = sqlite_store(workdir, "pieces.db")
    from flowctl.interpreter.persistence.recorder import Recorder
    from flowctl.interpreter.persistence.store import RunRecord, RunStatus, StepStatus
    from flowctl.interpreter.redact import Redactor

    recorder = Recorder(store, Redactor(), "bench:1", background_delay=None)
    recorder.start_root(RunRecord("r", "p", "f", RunStatus.RUNNING, time.time()))
    counter = iter(range(10**9))

    def store_step(commit: bool) -> Callable[[], None]:
        def one() -> None:  # what a fresh run's chain step writes (no lookup: the journal skips it on fresh runs)
            i = next(counter)
            recorder.step_started("r", f"s{i}", "agent")
            recorder.call_done("r", f"s{i}/llm#0", "d" * 64, response.journal_text())
            if commit:
                recorder.commit()
            succeeded = StepStatus.SUCCEEDED
            recorder.step_finished("r", f"s{i}", "agent", succeeded, 0.0, 0, output="ok", input_tokens=3)

        return one

    def run_async(make: Callable[[], Any], number: int = 2000) -> float:
        async def loop() -> float:
            started = time.perf_counter()
            for _ in range(number):
                await make()
            return (time.perf_counter() - started) / number * 1e6

        return median([anyio.run(loop) for _ in range(5)])

    limiters: dict[str, Any] = {}

    def limiter_round(make: Callable[[int], Any]) -> Callable[[], Any]:
        async def one() -> None:
            limiter = limiters.get(repr(make))
            if limiter is None:  # created inside the event loop (anyio's limiter needs one)
                limiter = limiters[repr(make)] = make(16)
            async with limiter:
                pass

        return one

    runtime_limiter = _runtime_limiter_class()

    def meters() -> None:
        token = STEP_METERS.set((*STEP_METERS.get(), UsageMeter()))
        STEP_METERS.reset(token)

    pieces = [
        ("prompt render (TextTemplate, 1,000-step context)", per_call(lambda: step.body.prompt.render(context))),
        ("instruction render (static text)", per_call(lambda: agent.instruction.render(context))),
        ("request digest (json.dumps sort_keys + sha256)", per_call(request.digest)),
        ("response to_json + from_json", per_call(lambda: CompletionResponse.from_json(response.to_json()))),
        ("scripted provider complete()", run_async(lambda: provider.complete(request))),
        ("anyio CapacityLimiter acquire+release (yields once)", run_async(limiter_round(anyio.CapacityLimiter))),
        (
            f"run-wide limiter ({runtime_limiter.__module__}.{runtime_limiter.__name__}), uncontended",
            run_async(limiter_round(runtime_limiter)),
        ),
        ("anyio fail_after scope (only with a step timeout)", run_async(_fail_after_round)),
        ("STEP_METERS contextvar set+reset", per_call(meters)),
        ("recorder: one step's 3 writes, queued only", per_call(store_step(False), 1000)),
        ("recorder: one step's 3 writes, committed once (a chain step)", per_call(store_step(True), 1000)),
    ]
    store_calls: tuple[tuple[str, Callable[[int], object]], ...] = (
        ("  recorder.step_started (queued)", lambda i: recorder.step_started("r", f"x{i}", "agent")),
        ("  store.lookup_call (SELECT)", lambda i: store.lookup_call("r", f"x{i}/llm#0")),
        ("  recorder.call_done + commit (INSERT + COMMIT)", lambda i: _call_and_commit(recorder, f"x{i}")),
        ("  recorder.call_done (queued)", lambda i: recorder.call_done("r", f"y{i}", "d", {"c": "ok"})),
    )
    for name, call in store_calls:
        ids = iter(range(10**9))

        def one_call(call: Callable[[int], object] = call, ids: Any = ids) -> object:
            return call(next(ids))

        pieces.append((name, per_call(one_call, 1000)))
    recorder.commit()
    store.close()
    return pieces


def _call_and_commit(recorder: Any, key: str) -> None:
    recorder.call_done("r", key, "d", {"c": "ok"})
    recorder.commit()


def _runtime_limiter_class() -> Any:
    """The limiter class the interpreter's Runtime uses for the run-wide `concurrency` cap."""
    import dataclasses

    from flowctl.interpreter.engine.context import Runtime

    hint = {f.name: f.type for f in dataclasses.fields(Runtime)}.get("limiter", "")
    name = str(hint).rsplit(".", 1)[-1]
    try:
        from flowctl.interpreter import concurrency

        return getattr(concurrency, name)
    except AttributeError:
        return anyio.CapacityLimiter


async def _fail_after_round() -> None:
    with anyio.fail_after(60):
        pass


# --- spawn primitives -------------------------------------------------------------------------------------------


async def _leaf(latency: float) -> None:
    await asyncio.sleep(latency)


async def _anyio_group(branches: int, latency: float) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(branches):
            tg.start_soon(_leaf, latency)


async def _anyio_group_limiter(branches: int, latency: float) -> None:
    limiter = anyio.CapacityLimiter(branches)

    async def one() -> None:
        async with limiter:
            await asyncio.sleep(latency)

    async with anyio.create_task_group() as tg:
        for _ in range(branches):
            tg.start_soon(one)


async def _asyncio_group(branches: int, latency: float) -> None:
    async with asyncio.TaskGroup() as tg:
        for _ in range(branches):
            tg.create_task(_leaf(latency))


async def _gather(branches: int, latency: float) -> None:
    await asyncio.gather(*(_leaf(latency) for _ in range(branches)))


def profile_primitives(branches: int) -> None:
    """Per-task time and memory of the ways to start `branches` concurrent sleeps (the fan-out's skeleton)."""
    latency = 0.05
    print(f"\nspawn primitives, {branches:,} tasks each sleeping {latency * 1000:g} ms (best of 3; tracemalloc peak):")
    for name, spawn in (
        ("asyncio.gather", _gather),
        ("asyncio.TaskGroup", _asyncio_group),
        ("anyio task group (start_soon)", _anyio_group),
        ("anyio task group + CapacityLimiter", _anyio_group_limiter),
    ):

        async def timed(spawn: Callable[[int, float], Any] = spawn) -> float:
            started = time.perf_counter()
            await spawn(branches, latency)
            return time.perf_counter() - started

        best = min(anyio.run(timed) for _ in range(3))
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            anyio.run(spawn, branches, latency)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        per_task_us = (best - latency) / branches * 1e6
        per_task_bytes = (peak - before) / branches
        print(f"  {name:<36} {best * 1000:7.1f} ms  {per_task_us:6.1f} µs/task  {per_task_bytes:7,.0f} B/task")


# --- memory -----------------------------------------------------------------------------------------------------


class _SnapshotAtPeak:
    """A provider that takes a tracemalloc snapshot when the last branch's model call starts (all in flight)."""

    def __init__(self, inner: Any, branches: int) -> None:
        self.inner = inner
        self.branches = branches
        self.in_flight = 0
        self.snapshot: tracemalloc.Snapshot | None = None

    async def complete(self, request: Any) -> Any:
        self.in_flight += 1
        if self.in_flight == self.branches and self.snapshot is None:
            self.snapshot = tracemalloc.take_snapshot()
        try:
            return await self.inner.complete(request)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


def profile_memory(workdir: Path, branches: int, top: int) -> None:
    """Allocation sites of the memory held while every branch of the fan-out is in flight."""
    from flowctl.interpreter.providers.scripted import ScriptedProvider

    graph = compile_pipeline(workdir, "fanout.yaml", fanout_yaml(10000))
    scripted = fixture(latency_fixture(0.05))
    items = list(range(branches))
    timed_run(graph, {"items": items[:200]}, NullStore(), scripted)
    provider = _SnapshotAtPeak(ScriptedProvider(scripted), branches)
    gc.collect()
    tracemalloc.start(25)
    try:
        before = tracemalloc.take_snapshot()
        timed_run(graph, {"items": items}, NullStore(), scripted, provider)
    finally:
        tracemalloc.stop()
    if provider.snapshot is None:
        print(f"\nmemory: never saw all {branches:,} branches in flight at once")
        return
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = provider.snapshot.filter_traces(filters).compare_to(before.filter_traces(filters), "lineno")
    held = sum(d.size_diff for d in diff)
    print(f"\nmemory held with all {branches:,} branches in flight: {held / branches:,.0f} B per branch (NullStore)")
    print("  top allocation sites (B per branch, blocks per branch):")
    for stat in diff[:top]:
        frame = stat.traceback[0]
        where = _short(frame.filename)
        print(f"    {stat.size_diff / branches:8.0f}  {stat.count_diff / branches:5.1f}  {where}:{frame.lineno}")


def _short(filename: str) -> str:
    if "/bench/" in filename:
        return "bench harness (the snapshot provider)"
    for marker in ("/site-packages/", "/flowctl/", "/lib/python3"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return ("flowctl/" + tail) if marker == "/flowctl/" else tail
    return filename


# --- main -------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--fanout", type=int, default=10000)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    if args.fanout:
        profile_primitives(args.fanout)  # first: a fresh process, before profiles leave objects for the collector
    with tempfile.TemporaryDirectory(prefix="flowctl-profile-") as tmp:
        workdir = Path(tmp)
        profile_chain(workdir, args.steps, args.top)
        if args.fanout:
            profile_fanout(workdir, args.fanout, args.top)
            profile_memory(workdir, args.fanout, args.top)
    return 0


def profile_chain(workdir: Path, steps: int, top: int) -> None:
    graph = compile_pipeline(workdir, "chain.yaml", chain_yaml(steps))
    scripted = fixture(zero_latency_fixture())

    def sqlite_run(name: str) -> float:
        store = sqlite_store(workdir, name)
        try:
            return timed_run(graph, {}, store, scripted)
        finally:
            store.close()

    sqlite_run("warmup.db")
    unprofiled_sqlite = median([sqlite_run(f"u{i}.db") for i in range(5)])
    unprofiled_null = median([timed_run(graph, {}, NullStore(), scripted) for _ in range(5)])
    stats = profile(lambda: sqlite_run("profiled.db"))
    print_components(f"{steps}-step chain, SQLite journal", stats, unprofiled_sqlite, steps, "step")
    print_functions(stats, steps, "step", top)
    stats = profile(lambda: timed_run(graph, {}, NullStore(), scripted))
    print_components(f"{steps}-step chain, NullStore", stats, unprofiled_null, steps, "step")
    print("\none step's pieces, each timed alone (µs per call):")
    for name, us in step_pieces(graph, workdir, steps):
        print(f"  {us:8.2f}  {name}")
    asyncio.run(asyncio.sleep(0))


def profile_fanout(workdir: Path, branches: int, top: int) -> None:
    graph = compile_pipeline(workdir, "fanout.yaml", fanout_yaml(10000))
    scripted = fixture(latency_fixture(0.05))
    items = list(range(branches))
    timed_run(graph, {"items": items[:200]}, NullStore(), scripted)
    gc.collect()
    with GcMeter() as meter:
        unprofiled = timed_run(graph, {"items": items}, NullStore(), scripted)
    print(f"\nfan-out {branches:,} × 50 ms, NullStore: {unprofiled:.3f} s makespan; {meter.describe()}")
    gc.collect()
    gc.disable()
    try:
        no_gc = timed_run(graph, {"items": items}, NullStore(), scripted)
    finally:
        gc.enable()
    per_branch = (no_gc - 0.05) / branches * 1e6
    print(f"  same run with the collector disabled: {no_gc:.3f} s ({per_branch:.1f} µs per branch)")
    gc.collect()
    gc.disable()  # the profile below is of the work itself; the collector's share is measured above
    try:
        stats = profile(lambda: timed_run(graph, {"items": items}, NullStore(), scripted))
    finally:
        gc.enable()
    print_components(f"fan-out {branches:,}, NullStore, GC off", stats, no_gc - 0.05, branches, "branch")
    print_functions(stats, branches, "branch", top)


if __name__ == "__main__":
    sys.exit(main())
