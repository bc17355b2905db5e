"""What the run store holds about a run, as the commands and the Python API show it: a run's report (`flowctl
show --output json`: its record, steps, attempts, events, state changes, child runs and per-model totals) and its
transcript entries in the order they ended (`flowctl logs`). Plain data, read through the store port."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

# A run the store says is running, whose process is gone (killed, or the machine went down): `resume` takes it over.
INTERRUPTED = "interrupted"


def is_alive(store: Any, record: Any) -> bool:
    """Whether the process running a `running` run (its root's claim holder) is still there, as the store tells."""
    return record.status.value == "running" and bool(store.liveness(record.run_id).alive)


def run_status(record: Any, alive: bool) -> str:
    """The run's status as the store has it, except that a `running` run whose claim holder is gone is
    `interrupted`. Child runs are run by their root run's process (`alive`: the root's)."""
    if record.status.value == "running" and not alive:
        return INTERRUPTED
    return str(record.status.value)


def run_summary(record: Any, alive: bool) -> dict[str, Any]:
    return {
        "run_id": record.run_id,
        "pipeline": record.pipeline,
        "file": record.file,
        "status": run_status(record, alive),
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "parent_id": record.parent_id,
        "inputs": record.inputs,
        "outputs": record.outputs,
        "error": record.error,
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "cost": record.cost,
    }


def run_report(store: Any, run_id: str, alive: bool | None = None) -> dict[str, Any]:
    record = store.get_run(run_id)
    alive = is_alive(store, record) if alive is None else alive
    data = run_summary(record, alive)
    tried: dict[str, list[dict[str, Any]]] = {}
    for a in store.attempts(run_id):
        tried.setdefault(a.path, []).append(_attempt_json(a))
    exchanges = store.exchanges(run_id)
    children = [run_report(store, child.run_id, alive) for child in store.child_runs(run_id)]
    costs = _step_costs(run_id, exchanges, children)
    agents = _step_agents(exchanges)
    data["steps"] = []
    for s in store.steps(run_id):
        attempts = tried.get(s.path, [])
        # the row's start restarts with each attempt: the step began when its first attempt did
        started = attempts[0]["started_at"] if attempts else s.started_at
        data["steps"].append(
            {
                "path": s.path,
                "kind": s.kind,
                "status": s.status.value,
                "attempts": s.attempts,
                "started_at": s.started_at,
                "finished_at": s.finished_at,
                "duration": s.finished_at - started if s.finished_at and started else None,
                "input_tokens": s.input_tokens,
                "output_tokens": s.output_tokens,
                "cost": costs.get(s.path),
                "agent": agents.get(s.path),
                "error": s.error,
                "output": s.output,
                "attempt_log": attempts,
            }
        )
    data["events"] = [{"name": e.name, "data": e.data, "source": e.source, "at": e.at} for e in store.events(run_id)]
    data["state_changes"] = [
        {"step": c.step, "keys": c.keys, "values": c.values, "at": c.at} for c in store.state_changes(run_id)
    ]
    data["children"] = children
    data["models"] = _models(exchanges, children)
    return data


def _step_agents(exchanges: list[Any]) -> dict[str, str]:
    """The agent each step's model calls were made for, as the run named it (a chosen or parameterised agent's
    rendered name); the last one when a fallback answered."""
    agents: dict[str, str] = {}
    for e in exchanges:
        if e.kind == "model" and isinstance(e.request, dict) and isinstance(e.request.get("agent"), str):
            agents[e.path.removesuffix("/fallback").removesuffix("/router")] = e.request["agent"]
    return agents


def _attempt_json(a: Any) -> dict[str, Any]:
    return {
        "attempt": a.attempt,
        "status": a.status.value,
        "started_at": a.started_at,
        "finished_at": a.finished_at,
        "duration": a.finished_at - a.started_at,
        "error": a.error,
        "retry_in": a.retry_in,
    }


_INSIDE = re.compile(r"[/\[#]")  # what follows a step's path in the paths of what runs inside it


def _steps_around(path: str) -> list[str]:
    """The path and those of the steps it runs inside: `a/b[2]/c` → `a`, `a/b`, `a/b[2]`, `a/b[2]/c` (a fan-out
    item `b[i]`, a nested step `b/…`, a loop iteration `b#i/…`)."""
    return [path[: m.start()] for m in _INSIDE.finditer(path) if m.start()] + [path]


def _answer_cost(exchange: Any) -> float | None:
    response = exchange.response
    if exchange.kind != "model" or not isinstance(response, dict):
        return None
    cost = response.get("cost")
    return float(cost) if isinstance(cost, int | float) else None


def _step_costs(run_id: str, exchanges: list[Any], children: list[dict[str, Any]]) -> dict[str, float]:
    """What each step's model answers cost, its items', nested steps' and child runs' included (as its tokens are);
    a step none of whose answers had a price is not in it. One pass, however wide the run."""
    costs: dict[str, float] = {}

    def add(path: str, cost: float) -> None:
        for step in _steps_around(path):
            costs[step] = costs.get(step, 0.0) + cost

    for e in exchanges:
        if (cost := _answer_cost(e)) is not None:
            add(e.path, cost)
    for child in children:  # `<run>/<step>`: the child run of the pipeline step `<step>`
        for m in child["models"]:
            if m["cost"] is not None:
                add(child["run_id"][len(run_id) + 1 :], m["cost"])
    return costs


def _models(exchanges: list[Any], children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, over a run and its child runs: calls made (failed ones included), tokens in and out, cost (None
    when the model has no price)."""
    table: dict[str, dict[str, Any]] = {}
    for e in exchanges:
        if e.kind != "model":
            continue
        request = e.request if isinstance(e.request, dict) else {}
        response = e.response if isinstance(e.response, dict) else {}
        name = str(request.get("model") or response.get("model") or "(unknown)")
        row = table.setdefault(
            name, {"model": name, "calls": 0, "failed": 0, "input_tokens": 0, "output_tokens": 0, "cost": None}
        )
        row["calls"] += 1
        row["failed"] += e.error is not None
        usage = response.get("usage") or {}
        row["input_tokens"] += int(usage.get("input_tokens") or 0)
        row["output_tokens"] += int(usage.get("output_tokens") or 0)
        if (cost := _answer_cost(e)) is not None:
            row["cost"] = (row["cost"] or 0.0) + cost
    for child in children:
        for m in child["models"]:
            zero = {"calls": 0, "failed": 0, "input_tokens": 0, "output_tokens": 0, "cost": None}
            row = table.setdefault(m["model"], {"model": m["model"], **zero})
            for key in ("calls", "failed", "input_tokens", "output_tokens"):
                row[key] += m[key]
            if m["cost"] is not None:
                row["cost"] = (row["cost"] or 0.0) + m["cost"]
    return list(table.values())


@dataclass(slots=True)
class TranscriptEntry:
    """One thing that happened, in the run tree's terms: `step` is the step's path from the run asked for
    (`child/polish` for the step `polish` of the child run `<run>/child`)."""

    at: float  # when it ended: the timeline's order
    seq: int
    step: str
    child: str  # the child run's id, "" for the run asked for
    record: Any  # ExchangeRecord or AttemptRecord


def run_tree(store: Any, run_id: str) -> list[str]:
    runs = [run_id]
    for child in store.child_runs(run_id):
        runs.extend(run_tree(store, child.run_id))
    return runs


def step_label(run: str, path: str, root: str) -> str:
    return path if run == root else f"{run[len(root) + 1 :]}/{path}"


def is_under(path: str, step: str) -> bool:
    return path == step or path.startswith((step + "/", step + "[", step + "#"))


def is_attempt(entry: TranscriptEntry) -> bool:
    return not hasattr(entry.record, "kind")


def plain(data: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in data.items()}


_AFTER = 1 << 62  # an attempt's end sorts after the calls that ended with it


def transcript_entries(store: Any, runs: list[str], root: str, step: str | None) -> list[TranscriptEntry]:
    """Every exchange and every attempt that did not succeed, over the run tree, in the order they ended."""
    entries: list[TranscriptEntry] = []
    for run in runs:
        child = "" if run == root else run
        for e in store.exchanges(run):
            entries.append(TranscriptEntry(e.started_at + e.elapsed, e.seq, step_label(run, e.path, root), child, e))
        for a in store.attempts(run):
            if a.status.value != "succeeded":
                entries.append(TranscriptEntry(a.finished_at, _AFTER, step_label(run, a.path, root), child, a))
    if step is not None:
        entries = [e for e in entries if is_under(e.step, step)]
    return sorted(entries, key=lambda e: (e.at, e.seq))
