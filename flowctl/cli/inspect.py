"""`flowctl runs`, `show` and `signal`: reading the run store, and sending a run an external event."""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

import click

from flowctl.cli.common import EXIT_USAGE, named_run, open_store, store_flag, store_option
from flowctl.interpreter.reporting import seconds as wait_text
from flowctl.run_reports import INTERRUPTED, is_alive, run_report, run_summary


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
        listed = [run_summary(r, is_alive(store, r)) for r in records]
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
        line += f"; retried after {wait_text(attempt['retry_in'])}"
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
    """Show a run's step tree: status, attempts, timings, tokens, errors, events. RUN_ID: a run's id, or `last` for
    the run started last."""
    store = open_store(store_path, "read")
    try:
        run_id = named_run(store, run_id)
        if store.get_run(run_id) is None:
            click.echo(f"error: no run {run_id!r} in the store (see `flowctl runs`)", err=True)
            sys.exit(EXIT_USAGE)
        data = run_report(store, run_id)
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
    """Send an external event (e.g. a human approval) to a running pipeline. RUN_ID: a run's id, or `last` for the
    run started last."""
    from flowctl.interpreter.inputs import InputTextError, check_argument_text, parse_json

    try:
        check_argument_text(data_text)
        data = parse_json(data_text)
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"--data is not JSON: {exc}") from None
    except InputTextError as exc:
        raise click.UsageError(f"--data: {exc}") from None
    from flowctl.api import signal as send_signal
    from flowctl.interpreter.errors import InputError

    store = open_store(store_path, "write")
    try:
        run_id = named_run(store, run_id)
        sent = send_signal(run_id, event, data, store=store)
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    finally:
        store.close()
    target, seq, status = sent.target, sent.seq, sent.status
    if target != run_id:
        click.echo(f"{run_id} is a child run: delivering to its root run {target}", err=True)
    note = "" if status == "running" else f" (the run is {status}; it sees it if resumed)"
    click.echo(f"sent {event!r} to {target} as signal #{seq}{note}")
