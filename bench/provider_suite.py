"""The `provider` suite: flowctl's real OpenAI provider against the bare `openai.AsyncOpenAI` client, both streaming
from the same local OpenAI-compatible server (bench/openai_local.py, in a process of its own) in the same run.

- sequential: a 300-step chain pipeline (each prompt reads the previous answer) run by `run_graph` with the `openai`
  provider, against 300 sequential streamed `chat.completions.create` calls of a bare client (the same messages:
  system instruction + user prompt, `stream_options.include_usage`, the chunks joined into the answer), and against
  the same calls made the way flowctl's provider makes them (the client's `post`, chunks as decoded JSON): the
  first is what a hand-written program costs, the second what flowctl itself adds;
- concurrent: one agent step fanned out over 1,000 items (`concurrency: 1000`), against `asyncio.gather` of 1,000
  streamed calls of one bare client.

flowctl runs on `bench/null_store.py`'s NullStore (the journal's cost is measured by the `steps` suite), each run in
a fresh event loop as `flowctl run` does; its time includes the run's fixed costs (run record, provider, outputs).
The bare client is built once per event loop, before its timer starts, and closed after: what a hand-written program
does.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.null_store import NullStore
from bench.pipelines import chain_yaml, fanout_yaml
from bench.report import Row, median, spread
from bench.runs import compile_pipeline, coroutine_in_fresh_loop, in_fresh_loop

SEQUENTIAL_CALLS = 300
CONCURRENT_CALLS = 1000
SEQUENTIAL_TARGET_RATIO = 1.05
INSTRUCTION = "You repeat what you are given."  # the benchmark pipelines' agent instruction
_SERVER = Path(__file__).with_name("openai_local.py")


@contextmanager
def local_server() -> Iterator[str]:
    """Start bench/openai_local.py in its own process; yield its base URL; stop it."""
    process = subprocess.Popen([sys.executable, str(_SERVER)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        if not base_url.startswith("http://"):
            raise RuntimeError(f"the local OpenAI server did not start (printed {base_url!r})")
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=10)


def model_yaml(base_url: str) -> str:
    return f'{{provider: openai, model: bench-model, base_url: "{base_url}"}}'


# --- the bare client ----------------------------------------------------------------------------------------------


async def _bare_call(client: Any, prompt: str) -> str:
    """One streamed call as flowctl's provider makes it (same messages and options), the answer joined."""
    stream = await client.chat.completions.create(
        model="bench-model",
        messages=[{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    return "".join(pieces)


async def _same_path_call(client: Any, prompt: str) -> str:
    """The same call through the SDK path flowctl's provider takes: the client's `post` with the body as plain JSON
    (no walk of it against the SDK's parameter types) and each chunk as its decoded JSON object (no pydantic model)."""
    import openai

    stream = await client.post(
        "/chat/completions",
        body={
            "model": "bench-model",
            "messages": [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        cast_to=object,
        options={"security": {"bearer_auth": True}},
        stream=True,
        stream_cls=openai.AsyncStream[object],
    )
    pieces = []
    async for chunk in stream:
        choices = chunk.get("choices")
        if choices and choices[0]["delta"].get("content"):
            pieces.append(choices[0]["delta"]["content"])
    return "".join(pieces)


def _client(base_url: str) -> Any:
    import openai

    return openai.AsyncOpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=60.0)


Timing = tuple[float, float]  # (wall seconds, this process's CPU seconds)


async def bare_sequential(base_url: str, calls: int, *, same_path: bool = False) -> Timing:
    """`calls` sequential streamed calls, each prompt carrying the previous answer (as the chain's); `same_path`:
    made the way flowctl's provider makes them."""
    call = _same_path_call if same_path else _bare_call
    async with _client(base_url) as client:
        started, cpu = time.perf_counter(), time.process_time()
        answer = await call(client, "start")
        for i in range(1, calls):
            answer = await call(client, f"Go on from this: {answer}. Step {i}, keep it short.")
        return time.perf_counter() - started, time.process_time() - cpu


async def bare_concurrent(base_url: str, calls: int) -> Timing:
    """`asyncio.gather` over `calls` streamed calls of one client."""
    async with _client(base_url) as client:
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(_bare_call(client, f"item {i}") for i in range(calls)))
        return time.perf_counter() - started, time.process_time() - cpu


# --- flowctl ------------------------------------------------------------------------------------------------------


async def _timed(graph: Any, inputs: dict[str, Any], options: Any) -> tuple[Timing, Any]:
    from flowctl.interpreter.runner import run_graph

    started, cpu = time.perf_counter(), time.process_time()
    outcome = await run_graph(graph, inputs, NullStore(), options)
    return (time.perf_counter() - started, time.process_time() - cpu), outcome


def flowctl_run(graph: Any, inputs: dict[str, Any], expected_calls: int) -> Timing:
    """Seconds `run_graph` takes with the real provider on a NullStore, in a fresh event loop (as the CLI runs)."""
    from flowctl.interpreter.persistence.store import RunStatus
    from flowctl.interpreter.runner import RunOptions

    options = RunOptions(env={k: v for k, v in os.environ.items() if k != "OPENAI_BASE_URL"}, tune_process=True)
    elapsed, outcome = in_fresh_loop(_timed, graph, inputs, options)
    if outcome.status is not RunStatus.SUCCEEDED:
        raise RuntimeError(f"benchmark run ended {outcome.status.value}: {outcome.error}")
    if outcome.calls_executed != expected_calls:
        raise RuntimeError(f"benchmark run made {outcome.calls_executed} calls, expected {expected_calls}")
    return elapsed


# --- the suite ----------------------------------------------------------------------------------------------------


def provider_suite(quick: bool, workdir: Path) -> list[Row]:
    repeats = 3 if quick else 15
    fan_repeats = 2 if quick else 5
    n, wide = SEQUENTIAL_CALLS, CONCURRENT_CALLS
    wall: dict[str, list[float]] = {"chain": [], "bare": [], "same": [], "fan": [], "gather": []}
    cpu: dict[str, list[float]] = {k: [] for k in wall}

    def sample(key: str, timing: Timing) -> None:
        wall[key].append(timing[0])
        cpu[key].append(timing[1])

    with local_server() as base_url:
        chain = compile_pipeline(workdir, "chain.yaml", chain_yaml(n, model=model_yaml(base_url)))
        fan = compile_pipeline(workdir, "fanout.yaml", fanout_yaml(wide, model=model_yaml(base_url)))
        items = {"items": list(range(wide))}
        # sequential first, so the fan-out's thousand connections (and their garbage) cannot weigh on it
        flowctl_run(chain, {}, n)  # imports, caches, the server's first connections
        coroutine_in_fresh_loop(bare_sequential(base_url, n))
        coroutine_in_fresh_loop(bare_sequential(base_url, n, same_path=True))
        for _ in range(repeats):  # interleaved, so drift on a busy machine hits every series alike
            sample("chain", flowctl_run(chain, {}, n))
            sample("bare", coroutine_in_fresh_loop(bare_sequential(base_url, n)))
            sample("same", coroutine_in_fresh_loop(bare_sequential(base_url, n, same_path=True)))
        flowctl_run(fan, items, wide)
        coroutine_in_fresh_loop(bare_concurrent(base_url, wide))
        for _ in range(fan_repeats):
            sample("fan", flowctl_run(fan, items, wide))
            sample("gather", coroutine_in_fresh_loop(bare_concurrent(base_url, wide)))
    per_call = {k: [v / n * 1e3 for v in wall[k]] for k in ("chain", "bare", "same")}
    chain_ms, bare_ms = median(per_call["chain"]), median(per_call["bare"])
    ratios = sorted(c / b for c, b in zip(wall["chain"], wall["bare"], strict=True))
    same_ratios = sorted(c / b for c, b in zip(wall["chain"], wall["same"], strict=True))
    return [
        Row(
            f"{n} sequential calls, openai provider (NullStore), per call",
            chain_ms,
            "ms",
            bare_ms,
            "bare AsyncOpenAI, streamed",
            f"≤ {SEQUENTIAL_TARGET_RATIO:g}× bare client",
            chain_ms / bare_ms <= SEQUENTIAL_TARGET_RATIO,
            [
                f"run_graph wall of a {n}-step chain / {n}, a fresh event loop per run "
                f"({spread(per_call['chain'], unit=' ms')}); bare: {spread(per_call['bare'], unit=' ms')}; "
                f"paired ratios {ratios[0]:.2f}–{ratios[-1]:.2f}×, median {median(ratios):.2f}×",
                "local server: bench/openai_local.py in its own process, keep-alive, answers 'ok' at once as SSE",
            ],
        ),
        _cpu_row(f"{n} sequential calls, CPU time of the client, per call", cpu["chain"], cpu["bare"], n),
        Row(
            f"{n} sequential calls, openai provider, against its own SDK path by hand",
            chain_ms,
            "ms",
            median(per_call["same"]),
            "the client's post, chunks as JSON",
            notes=[
                "what flowctl adds to the SDK calls it makes (engine, journal on the NullStore, transcript, "
                f"templates): bare client on flowctl's path {spread(per_call['same'], unit=' ms')}; paired ratios "
                f"{same_ratios[0]:.2f}–{same_ratios[-1]:.2f}×, median {median(same_ratios):.2f}×"
            ],
        ),
        Row(
            f"{wide:,} concurrent calls, openai provider (NullStore): makespan",
            median(wall["fan"]),
            "s",
            median(wall["gather"]),
            "asyncio.gather, bare AsyncOpenAI",
            notes=[
                f"run_graph wall, for_each over {wide:,} items, `concurrency: {wide}` "
                f"({spread(wall['fan'], unit=' s')}); bare: {spread(wall['gather'], unit=' s')}"
            ],
        ),
        _cpu_row(f"{wide:,} concurrent calls, CPU time of the client, per call", cpu["fan"], cpu["gather"], wide),
    ]


def _cpu_row(name: str, flowctl: list[float], bare: list[float], calls: int) -> Row:
    """CPU seconds of the measuring process (the server runs in another): what the client side costs, and less
    sensitive than wall time to other processes on a busy machine."""
    us = [v / calls * 1e6 for v in flowctl]
    bare_us = [v / calls * 1e6 for v in bare]
    return Row(
        name,
        median(us),
        "µs",
        median(bare_us),
        "bare AsyncOpenAI",
        notes=[f"time.process_time ({spread(us, unit=' µs')}); bare: {spread(bare_us, unit=' µs')}"],
    )
