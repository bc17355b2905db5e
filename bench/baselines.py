"""Raw-asyncio baselines, measured in the same process as the flowctl figure they are compared with.

- `plain_await_chain`: N sequential awaits of a trivial coroutine: the cost of "one step" with no work at all.
- `journaled_step_floor`: the least work one durable step needs, written by hand with no framework: render the
  prompt with a sandboxed Jinja template that reads the previous output, await a zero-latency "LLM", inside a
  timeout scope, `json.dumps` the result and insert it as one row in a WAL SQLite file, committed.
- `gather_sleep`: makespan of `asyncio.gather` over N `asyncio.sleep(latency)`.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment


async def _echo(value: str) -> str:
    return value


async def _answer(prompt: str) -> str:
    """A zero-latency model that answers "ok", as the benchmark's scripted model does (an echo would grow the
    prompt of a chain with text around its expression at every step)."""
    return "ok"


async def plain_await_chain(steps: int) -> float:
    """Seconds for `steps` sequential awaits of a trivial coroutine."""
    value = "start"
    started = time.perf_counter()
    for _ in range(steps):
        value = await _echo(value)
    return time.perf_counter() - started


def open_floor_db(path: Path) -> sqlite3.Connection:
    """The journal the floor writes to: WAL, synchronous=NORMAL (as flowctl's store), one keyed table."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS calls (run_id TEXT NOT NULL, key TEXT NOT NULL, result TEXT NOT NULL, "
        "recorded_at REAL NOT NULL, PRIMARY KEY (run_id, key))"
    )
    return conn


async def journaled_step_floor(steps: int, db: Path, run_id: str = "floor") -> float:
    """Seconds for `steps` hand-written journaled steps (see the module docstring)."""
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    template = env.from_string("Go on from this: {{ steps.previous.output }}. Step 1, keep it short.")
    conn = open_floor_db(db)
    insert = "INSERT INTO calls (run_id, key, result, recorded_at) VALUES (?, ?, ?, ?)"
    results = {"previous": {"output": "start"}}
    started = time.perf_counter()
    for i in range(steps):
        prompt = template.render(steps=results)
        async with asyncio.timeout(60):
            output = await _answer(prompt)
        text = json.dumps({"content": output, "usage": {"input_tokens": 1, "output_tokens": 1}})
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(insert, (run_id, f"s{i}/llm#0", text, time.time()))
        conn.execute("COMMIT")
        results = {"previous": {"output": output}}
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def sqlite_commit_floor(steps: int, db: Path, run_id: str = "commit") -> float:
    """Seconds for `steps` single-row insert+commit transactions alone (the durable part of the floor)."""
    conn = open_floor_db(db)
    insert = "INSERT INTO calls (run_id, key, result, recorded_at) VALUES (?, ?, ?, ?)"
    started = time.perf_counter()
    for i in range(steps):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(insert, (run_id, f"s{i}/llm#0", '{"content": "ok"}', time.time()))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


async def gather_sleep(branches: int, latency: float) -> float:
    """Makespan of asyncio.gather over `branches` sleeps of `latency` seconds."""
    started = time.perf_counter()
    await asyncio.gather(*(asyncio.sleep(latency) for _ in range(branches)))
    return time.perf_counter() - started
