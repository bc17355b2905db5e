"""`flowctl runs`, `show` and `signal`: reading the run store, and sending a run an external event."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Any

import click

from flowctl.cli.common import EXIT_USAGE, open_store, store_flag, store_option


@click.command()
@store_option
@click.option("-n", "--limit", default=20, show_default=True, help="How many runs to list.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def runs(store_path: str | None, limit: int, output: str) -> None:
    """List recent runs."""
    import time as _time

    store = open_store(store_path, "read")
    try:
        records = store.list_runs(limit, roots_only=True)
        listed = [_run_json(r, _alive(store, r)) for r in records]
    finally:
        store.close()
    if output == "json":
        click.echo(json.dumps(listed, indent=2, default=str))
        return
    width = max((len(r.run_id) for r in records), default=0)  # ids of the old format are shorter
    for r, data in zip(records, listed, strict=True):
        when = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(r.started_at))
        took = f"{r.finished_at - r.started_at:.1f}s" if r.finished_at else "-"
        click.echo(
            f"{r.run_id:<{width}}  {data['status']:<11}  {when}  {took:>7}  "
            f"{r.input_tokens + r.output_tokens:>7} tok  {r.pipeline}"
        )
    if any(data["status"] == INTERRUPTED for data in listed):
        resume = f"flowctl resume RUN_ID{store_flag(store_path)}"
        click.echo(f"{INTERRUPTED}: the process running it is gone; `{resume}` continues it", err=True)


# A run the store says is running, whose process is gone (killed, or the machine went down): `resume` takes it over.
INTERRUPTED = "interrupted"


def _alive(store: Any, record: Any) -> bool:
    """Whether the process running a `running` run (its root's claim holder) is still there, as the store tells."""
    return record.status.value == "running" and bool(store.liveness(record.run_id).alive)


def _status(record: Any, alive: bool) -> str:
    """The run's status as the store has it, except that a `running` run whose claim holder is gone is
    `interrupted`. Child runs are run by their root run's process (`alive`: the root's)."""
    if record.status.value == "running" and not alive:
        return INTERRUPTED
    return str(record.status.value)


def _run_json(record: Any, alive: bool) -> dict[str, Any]:
    return {
        "run_id": record.run_id,
        "pipeline": record.pipeline,
        "file": record.file,
        "status": _status(record, alive),
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


def _show_json(store: Any, run_id: str, alive: bool | None = None) -> dict[str, Any]:
    record = store.get_run(run_id)
    alive = _alive(store, record) if alive is None else alive
    data = _run_json(record, alive)
    tried: dict[str, list[dict[str, Any]]] = {}
    for a in store.attempts(run_id):
        tried.setdefault(a.path, []).append(_attempt_json(a))
    exchanges = store.exchanges(run_id)
    children = [_show_json(store, child.run_id, alive) for child in store.child_runs(run_id)]
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


ITEMS_LISTED = 10  # a fan-out with more items lists only those that did not simply succeed (`show --items`: all)


_ITEM_PATH = re.compile(r"^(?P<step>.+)\[[^\[\]]+\]$")  # an index, or an `item_id` name


def _quiet_items(steps: list[dict[str, Any]]) -> tuple[set[str], dict[str, str]]:
    """For fan-outs of more than ITEMS_LISTED items: the items to leave out of the text tree (succeeded at the first
    attempt), and per fan-out step the line that sums its items up."""
    paths = {step["path"] for step in steps}
    items: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        match = _ITEM_PATH.match(step["path"])
        if match and match["step"] in paths:
            items.setdefault(match["step"], []).append(step)
    hidden: set[str] = set()
    summaries: dict[str, str] = {}
    for parent, group in items.items():
        if len(group) <= ITEMS_LISTED:
            continue
        quiet = [item["path"] for item in group if item["status"] == "succeeded" and item["attempts"] <= 1]
        hidden.update(quiet)
        counts: dict[str, int] = {}
        for item in group:
            counts[item["status"]] = counts.get(item["status"], 0) + 1
        tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=lambda c: -c[1]))
        shown = f"; {len(group) - len(quiet)} listed below" if len(quiet) < len(group) else ""
        summaries[parent] = f"{parent}[…]  {len(group)} items: {tally}{shown} (`show --items` lists every one)"
    return hidden, summaries


def _show_text(data: dict[str, Any], indent: str = "", *, all_items: bool = False, store: str = "") -> None:
    took = f" in {data['finished_at'] - data['started_at']:.2f}s" if data["finished_at"] else ""
    priced = _priced(data)
    click.echo(
        f"{indent}{data['run_id']}  {data['pipeline']}  {data['status']}{took}  "
        f"{data['input_tokens'] + data['output_tokens']} tok" + (f"  {money(data['cost'])}" if priced else "")
    )
    if data["error"]:
        click.echo(f"{indent}  error: {data['error'].get('message')}")
    if data["status"] == INTERRUPTED and not indent:
        click.echo(f"  the process running it is gone: `flowctl resume {data['run_id']}{store}` continues it")
    children = {c["run_id"].rsplit("/", 1)[-1] if "/" in c["run_id"] else c["run_id"]: c for c in data["children"]}
    mark = {"succeeded": "✓", "failed": "✗", "skipped": "–", "running": "…", "cancelled": "⊘"}
    if data["status"] == INTERRUPTED:
        mark["running"] = "⊘"  # its running steps stopped with their process
    hidden, summaries = _quiet_items(data["steps"]) if not all_items else (set(), {})
    for step in data["steps"]:
        if step["path"].split("/", 1)[0] in hidden:
            continue  # a quiet item, or a step nested in one
        took = f"{step['duration']:.2f}s" if step["duration"] is not None else "-"
        tokens = step["input_tokens"] + step["output_tokens"]
        cost = f"  {money(step['cost']):>10}" if priced else ""
        attempts = f"  {step['attempts']} attempts" if step["attempts"] > 1 else ""
        agent = f"  agent {step['agent']}" if step.get("agent") else ""
        click.echo(
            f"{indent}  {mark.get(step['status'], '?')} {step['path']:<32} {step['kind']:<9} "
            f"{step['status']:<9} {took:>7}  {tokens:>6} tok{cost}{attempts}{agent}"
        )
        for attempt in step["attempt_log"] if len(step["attempt_log"]) > 1 else ():  # one: the error below says it
            click.echo(f"{indent}      {attempt_line(attempt)}")
        if step["error"]:
            click.echo(f"{indent}      {step['error'].get('message')}")
        child = children.get(step["path"])
        if child is not None:
            _show_text(child, indent + "      ", all_items=all_items)
        if step["path"] in summaries:
            click.echo(f"{indent}    {summaries[step['path']]}")
    if data["events"]:
        click.echo(f"{indent}  events: " + ", ".join(f"{e['name']} ({e['source']})" for e in data["events"]))
    if not indent and (priced or len(data["models"]) > 1):
        _models_text(data["models"])


def money(cost: float | None) -> str:
    """`$12.30`, `$0.048`, `$0.0000081`: cents, and two significant digits below a dollar; `-` without a price."""
    if cost is None:
        return "-"
    if cost == 0 or cost >= 1:
        return f"${cost:.2f}"
    decimals = min(10, max(2, 1 - math.floor(math.log10(cost))))
    return f"${cost:.{decimals}f}"


def seconds(value: float) -> str:
    return f"{value:.2f}s" if value < 60 else f"{value:.0f}s"


def attempt_line(attempt: dict[str, Any]) -> str:
    """`attempt 1 failed after 0.31s: provider-unavailable: 503 …; retried after 2s`."""
    line = f"attempt {attempt['attempt']} {attempt['status']} after {seconds(attempt['duration'])}"
    error = attempt["error"]
    if error:
        line += f": {error.get('code')}: {error.get('message')}" if error.get("code") else f": {error.get('message')}"
    if attempt["retry_in"] is not None:
        line += f"; retried after {attempt['retry_in']:.3g}s"
    return line


def _priced(data: dict[str, Any]) -> bool:
    return any(m["cost"] is not None for m in data["models"])


def _models_text(models: list[dict[str, Any]]) -> None:
    """The per-model table at the end of `show`: calls, tokens in and out, cost."""
    width = max([len("model")] + [len(m["model"]) for m in models])
    click.echo(f"  {'model':<{width}}  {'calls':>5}  {'tokens in':>9}  {'tokens out':>10}  {'cost':>10}")
    for m in models:
        failed = f" ({m['failed']} failed)" if m["failed"] else ""
        click.echo(
            f"  {m['model']:<{width}}  {m['calls']:>5}  {m['input_tokens']:>9}  {m['output_tokens']:>10}  "
            f"{money(m['cost']):>10}{failed}"
        )


@click.command()
@click.argument("run_id")
@store_option
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--items",
    "all_items",
    is_flag=True,
    help=f"List every fan-out item (by default a fan-out of more than {ITEMS_LISTED} items lists only the items that "
    "failed, were retried or did not finish, and sums up the rest).",
)
def show(run_id: str, store_path: str | None, output: str, all_items: bool) -> None:
    """Show a run's step tree: status, attempts, timings, tokens, errors, events."""
    store = open_store(store_path, "read")
    try:
        if store.get_run(run_id) is None:
            click.echo(f"error: no run {run_id!r} in the store (see `flowctl runs`)", err=True)
            sys.exit(EXIT_USAGE)
        data = _show_json(store, run_id)
    finally:
        store.close()
    if output == "json":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    else:
        _show_text(data, all_items=all_items, store=store_flag(store_path))


@click.command()
@click.argument("run_id")
@click.argument("event")
@click.option("--data", "data_text", default="null", help="The event's payload as JSON.")
@store_option
def signal(run_id: str, event: str, data_text: str, store_path: str | None) -> None:
    """Send an external event (e.g. a human approval) to a running pipeline."""
    from flowctl.interpreter.inputs import InputTextError, check_argument_text, parse_json
    from flowctl.interpreter.redact import redactor_for

    try:
        check_argument_text(data_text)
        data = parse_json(data_text)
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"--data is not JSON: {exc}") from None
    except InputTextError as exc:
        raise click.UsageError(f"--data: {exc}") from None
    store = open_store(store_path, "write")
    try:
        record = store.get_run(run_id)
        if record is None:
            click.echo(f"error: no run {run_id!r} in the store (see `flowctl runs`)", err=True)
            sys.exit(EXIT_USAGE)
        target = run_id
        if record.parent_id is not None:  # events are shared by the whole run tree; the root run polls for them
            target = run_id.split("/", 1)[0]
            record = store.get_run(target) or record
            click.echo(f"{run_id} is a child run: delivering to its root run {target}", err=True)
        seq = store.send_signal(target, event, redactor_for((), os.environ).redact(data))
        status = _status(record, _alive(store, record))
    finally:
        store.close()
    note = "" if status == "running" else f" (the run is {status}; it sees it if resumed)"
    click.echo(f"sent {event!r} to {target} as signal #{seq}{note}")
