"""`flowctl logs`: a run's transcript, turn by turn — each model call (the messages new since the step's previous
call, the answer, its tool calls), each tool call (arguments, result and its content parts), each wait (its event),
each failed attempt (its error and the wait before the next); child runs interleaved by time and marked. Read from
the store's `exchanges` and `attempts`, opened read-only."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

import click

from flowctl.cli.common import EXIT_FAILED, EXIT_USAGE, named_run, open_store, store_flag, store_option
from flowctl.cli.inspect import attempt_line, money, seconds
from flowctl.run_reports import (
    TranscriptEntry,
    is_alive,
    is_attempt,
    is_under,
    plain,
    run_status,
    run_tree,
    step_label,
    transcript_entries,
)

_T = TypeVar("_T")
FOLLOW_POLL = 0.5  # seconds between two reads of the store while `--follow` waits for more (at least)


@click.command()
@click.argument("run_id")
@store_option
@click.option(
    "--step",
    "step",
    metavar="PATH",
    help="Only this step (and what runs inside it: fan-out items, nested steps, a child run's steps), e.g. `ask`, "
    "`fan[2]`, `child/polish`.",
)
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep printing calls as the run records them until it ends (Ctrl-C stops following; the run goes on). "
    "With --output json, one JSON object per line.",
)
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def logs(run_id: str, store_path: str | None, step: str | None, follow: bool, output: str) -> None:
    """Show a run's transcript: what each model call was sent and answered, each tool call and its result. RUN_ID: a
    run's id, or `last` for the run started last."""
    from flowctl.interpreter.persistence.store_errors import MissingStore

    try:
        store = open_store(store_path, "read")
    except MissingStore:
        # a queue's database where no worker has made the run store yet: a submitted run is waited for all the same
        waited = _stoppable(_started_by_a_worker, None, store_path, run_id) if follow else None
        if waited is None:
            raise
        store = waited
    try:
        run_id = named_run(store, run_id)
        known = store.get_run(run_id) is not None
        if not known and not (follow and _stoppable(_started_by_a_worker, store, store_path, run_id)):
            click.echo(f"error: no run {run_id!r} in the store (see `flowctl runs`)", err=True)
            sys.exit(EXIT_USAGE)
        if follow:  # (a followed run may not have reached the step yet: it is not checked)
            _stoppable(_follow, store, run_id, step, output)
            return
        runs = run_tree(store, run_id)
        labels = (step_label(r, s.path, run_id) for r in runs for s in store.steps(r))
        if step is not None and not any(is_under(label, step) for label in labels):
            hint = f"flowctl show {run_id}{store_flag(store_path)}"
            click.echo(f"error: run {run_id} has no step {step!r} (see `{hint}`)", err=True)
            sys.exit(EXIT_USAGE)
        entries = transcript_entries(store, runs, run_id, step)
    finally:
        store.close()
    if output == "json":
        click.echo(json.dumps([_record_json(e) for e in entries], indent=2, ensure_ascii=False, default=str))
        return
    if not entries:
        click.echo(_nothing_recorded(run_id, step))
        return
    _Printer(shutil.get_terminal_size((100, 24)).columns).print(entries)


def _stoppable(follow: Callable[..., _T], *args: Any) -> _T:
    """`follow(*args)`; Ctrl-C stops following (exit 130), not the run."""
    try:
        return follow(*args)
    except KeyboardInterrupt:
        click.echo("stopped following; the run goes on", err=True)
        sys.exit(130)


def _follow(store: Any, run_id: str, step: str | None, output: str) -> None:
    """Print the entries the store has, then those it records later, until the run has ended (or its process is
    gone): each entry once, in the order they come (within one read, the order their calls ended)."""
    printer = _Printer(shutil.get_terminal_size((100, 24)).columns)
    shown: set[tuple[Any, ...]] = set()
    while True:
        began = time.monotonic()
        record = store.get_run(run_id)
        alive = is_alive(store, record)
        ended = not alive  # read before the entries, so that the last read has everything the run committed
        read = transcript_entries(store, run_tree(store, run_id), run_id, step)
        identities = _identities(read)
        new = [e for e, identity in zip(read, identities, strict=True) if identity not in shown]
        shown.update(identities)
        if output == "json":
            for entry in new:
                click.echo(json.dumps(_record_json(entry), ensure_ascii=False, default=str))
        else:
            printer.print(new)
        if ended:
            break
        time.sleep(max(FOLLOW_POLL, 2 * (time.monotonic() - began)))  # a long transcript is not re-read nonstop
    if output == "text":
        if not shown:
            click.echo(_nothing_recorded(run_id, step))
        status = run_status(record, alive)
        click.echo(f"\nrun {run_id} {status}" + (f": {record.error}" if status == "failed" and record.error else ""))


def _started_by_a_worker(store: Any | None, store_path: str | None, run_id: str) -> Any | None:
    """A run submitted to the queue in the store's PostgreSQL database that no worker has started yet: wait until one
    does and return the store (opened once a worker has made it, when `store` is None), or say why none will and
    exit 1. None when the queue has no such run (or there is no queue)."""
    from flowctl.cli.workers import NOT_STARTED_FOR_GOOD
    from flowctl.interpreter.persistence.store_errors import MissingStore, StoreError

    try:
        import psycopg

        from flowctl.scale import database
        from flowctl.scale import queue as queue_module
    except ImportError:  # no scale extra: no queue
        return None
    if not store_path or not database.is_postgres_url(store_path):  # (click reads FLOWCTL_STORE into store_path)
        return None
    try:
        conn = database.connect(store_path)
    except StoreError:
        return None
    with conn:
        try:
            state = queue_module.job_state(conn, run_id)
        except psycopg.Error:  # no queue in that database: an unknown run, as without --follow
            return None
        if state is None:
            return None
        click.echo(f"waiting for a worker to start {run_id}…", err=True)
        while True:
            if store is None:
                with contextlib.suppress(MissingStore):  # no worker has made the run store yet
                    store = open_store(store_path, "read")
            if store is not None and store.get_run(run_id) is not None:
                return store
            if state in NOT_STARTED_FOR_GOOD:
                click.echo(f"run {run_id}: a worker took it and failed before the run started (see its log)", err=True)
                sys.exit(EXIT_FAILED)
            time.sleep(FOLLOW_POLL)
            state = queue_module.job_state(conn, run_id)


def _identities(entries: list[TranscriptEntry]) -> list[tuple[Any, ...]]:
    """What tells each entry of a read from the others, read after read: what it is, not its `seq` (a position, which
    an entry that ended earlier but was stored later moves on); entries alike in all that (a server's log messages
    at one instant of a virtual clock) by their order among themselves, which reads keep."""
    seen: dict[tuple[Any, ...], int] = {}
    identities = []
    for entry in entries:
        record = entry.record
        if is_attempt(entry):
            what: tuple[Any, ...] = ("attempt", record.run_id, record.path, record.attempt)
        else:
            what = ("exchange", record.run_id, record.path, record.key, record.attempt, record.kind,
                    record.started_at, record.elapsed)  # fmt: skip
        alike = seen.get(what, 0)
        seen[what] = alike + 1
        identities.append((*what, alike))
    return identities


def _record_json(entry: TranscriptEntry) -> dict[str, Any]:
    return {"kind": "attempt", **plain(asdict(entry.record))} if is_attempt(entry) else plain(asdict(entry.record))


def _nothing_recorded(run_id: str, step: str | None) -> str:
    return f"no calls recorded for {'step ' + repr(step) if step else 'run ' + run_id}"


class _Printer:
    """The text view. Long texts are wrapped to the terminal's width, never shortened; a body the recorder capped
    says so, with its full size."""

    def __init__(self, width: int) -> None:
        self.width = max(40, width)
        self.previous: dict[tuple[str, str, int], list[Any]] = {}  # (child, step, attempt) → last messages sent
        self.answers: dict[tuple[str, str, int], Any] = {}  # … → last answer
        self.errors: dict[tuple[str, str, int], Any] = {}  # … → the last call's error

    def print(self, entries: list[TranscriptEntry]) -> None:
        for entry in entries:
            if is_attempt(entry):
                self._attempt(entry)
            elif entry.record.kind == "model":
                self._model(entry)
            elif entry.record.kind == "tool":
                self._tool(entry)
            elif entry.record.kind == "log":
                self._log(entry)
            else:
                self._wait(entry)

    # --- the pieces -------------------------------------------------------------------------------------------------

    def _head(self, entry: TranscriptEntry, what: str, *details: str) -> None:
        record = entry.record
        parts = [entry.step, f"attempt {record.attempt}", what, *[d for d in details if d]]
        click.echo("")
        lines = textwrap.wrap(
            "── " + " · ".join(parts), self.width - 1, subsequent_indent="   ", break_on_hyphens=False
        )
        for line in lines[:-1]:
            click.echo(line)
        click.echo(self._rule(lines[-1] + " "))
        if entry.child:
            click.echo(f"  (in child run {entry.child})")

    def _rule(self, text: str) -> str:
        return text + "─" * max(0, self.width - len(text)) if len(text) < self.width else text

    def _text(self, label: str, text: str, indent: str = "  ") -> None:
        """`label` then the text, wrapped to the width, paragraph by paragraph; nothing left out."""
        click.echo(f"{indent}{label}")
        inner = indent + "  "
        for line in str(text).splitlines() or [""]:
            lead = inner + line[: len(line) - len(line.lstrip())]  # a line's own indentation is kept when wrapped
            width = max(20, self.width - len(lead))
            for piece in textwrap.wrap(line.strip(), width, break_on_hyphens=False) or [""]:
                click.echo(f"{lead}{piece}".rstrip())

    def _body(self, label: str, value: Any, indent: str = "  ") -> None:
        if isinstance(value, dict) and value.get("truncated") is True and "size" in value:
            head = str(value.get("head", ""))
            self._text(
                f"{label} [capped by the recorder: {value['size']} bytes, the first {len(head)} shown]", head, indent
            )
        elif isinstance(value, str):
            self._text(label, value, indent)
        else:
            self._text(label, json.dumps(value, ensure_ascii=False), indent)

    def _model(self, entry: TranscriptEntry) -> None:
        e = entry.record
        request = e.request if isinstance(e.request, dict) and "truncated" not in e.request else None
        response = e.response if isinstance(e.response, dict) and "truncated" not in e.response else None
        model = (request or {}).get("model") or (response or {}).get("model") or "?"
        usage = (response or {}).get("usage") or {}
        tokens = f"{usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out tok" if usage else ""
        cost = money(response["cost"]) if response and response.get("cost") is not None else ""
        agent = (request or {}).get("agent")  # the name the run gave it (a parameterised agent's rendered name)
        self._head(entry, f"model {model}", f"agent {agent}" if agent else "", seconds(e.elapsed), tokens, cost)
        key = (entry.child, entry.step, e.attempt)
        if request is None:
            self._body("request", e.request)
        else:
            self._messages(key, list(request.get("messages") or []))
            tools = [t.get("name", "?") for t in request.get("tools") or [] if isinstance(t, dict)]
            if tools and key not in self.answers:
                click.echo(f"  tools offered: {', '.join(tools)}")
            if request.get("output_schema") and key not in self.answers:
                self._body("answer schema:", request["output_schema"])
        if response is None and e.response is not None:
            self._body("answer:", e.response)  # capped by the recorder
        elif response is not None:
            if response.get("content"):
                self._text("answer:", response["content"])
            for call in response.get("tool_calls") or []:
                self._text(f"→ calls {call.get('name')} ({call.get('id')}):", _arguments(call.get("arguments")))
            finish = response.get("finish_reason")
            if finish not in (None, "stop", "tool_calls"):
                click.echo(f"  finish reason: {finish}")
        if e.error is not None:  # a failed call, or an answer rejected (one that did not match its schema)
            self._error(e.error)
            self.errors[key] = e.error
        self.answers[key] = response

    def _messages(self, key: tuple[str, str, int], messages: list[Any]) -> None:
        """The messages new since the step's previous model call (in this attempt); all of them for its first."""
        earlier = self.previous.get(key)
        self.previous[key] = messages
        if earlier is not None and messages[: len(earlier)] == earlier:
            click.echo(f"  ({len(earlier)} earlier messages not repeated)")
            new = messages[len(earlier) :]
        else:
            new = messages
        answer = self.answers.get(key)
        for message in new:
            if not isinstance(message, dict):
                self._body("message", message)
                continue
            role = message.get("role", "?")
            calls = message.get("tool_calls") or []
            if role == "assistant" and answer is not None and _same_answer(message, answer):
                click.echo("  assistant: the answer above")
                continue
            if role == "tool":
                call_id = message.get("tool_call_id")
                names = [c.get("name") for c in (answer or {}).get("tool_calls") or [] if c.get("id") == call_id]
                self._body(f"tool result for {names[0] if names else '?'} ({call_id}):", message.get("content"))
                continue
            if message.get("content") is not None:
                self._body(f"{role}:", message.get("content"))
            for call in calls:
                function = call.get("function", call)
                self._text(
                    f"{role} → calls {function.get('name')} ({call.get('id')}):", _arguments(function.get("arguments"))
                )

    def _tool(self, entry: TranscriptEntry) -> None:
        e = entry.record
        request = e.request if isinstance(e.request, dict) else {}
        name = f"{request.get('server', '?')}.{request.get('tool', '?')}" if "tool" in request else "?"
        self._head(entry, f"tool {name}", seconds(e.elapsed))
        if "arguments" in request:
            self._body("arguments:", request["arguments"])
        else:
            self._body("request:", e.request)
        if e.error is not None:
            self._error(e.error)
            self.errors[(entry.child, entry.step, e.attempt)] = e.error
            return
        response = e.response
        if not isinstance(response, dict) or "truncated" in response:
            self._body("result:", response)
            return
        label = "✗ tool error:" if response.get("is_error") else "result:"
        parts = response.get("parts") or []
        if not parts:
            self._body(label, response.get("text", ""))
            return
        click.echo(f"  {label} {len(parts)} content part{'s' if len(parts) != 1 else ''}")
        for part in parts:
            if isinstance(part, dict) and part.get("type") == "text":
                self._text("text:", str(part.get("text", "")), "    ")
            else:
                click.echo(f"    {part_name(part)}")

    def _log(self, entry: TranscriptEntry) -> None:
        """A log message an MCP server sent during a tool call of the step (`notifications/message`)."""
        e = entry.record
        where = e.request if isinstance(e.request, dict) else {}
        source = f"{where.get('server')}/{where.get('logger')}" if where.get("logger") else str(where.get("server"))
        self._head(entry, f"log {where.get('level')} from server {source}")
        self._body("data:", e.response)

    def _wait(self, entry: TranscriptEntry) -> None:
        e = entry.record
        event = e.request.get("event") if isinstance(e.request, dict) else e.request
        self._head(entry, f"wait for {event!r}", seconds(e.elapsed))
        if e.response is None:
            click.echo(f"  timed out: no {event!r} event came")
            return
        taken = e.response if isinstance(e.response, dict) else {}
        click.echo(f"  released by {taken.get('name')!r} from {taken.get('source')}")
        if taken.get("data") is not None:
            self._body("data:", taken["data"])

    def _attempt(self, entry: TranscriptEntry) -> None:
        a = entry.record
        where = f"{entry.step} (in child run {entry.child})" if entry.child else entry.step
        click.echo("")
        said = a.error is not None and a.error == self.errors.get((entry.child, entry.step, a.attempt))
        attempt = {
            "attempt": a.attempt,
            "status": a.status.value,
            "duration": a.finished_at - a.started_at,
            "error": None if said else a.error,
            "retry_in": a.retry_in,
        }
        line = f"✗ {where}: {attempt_line(attempt)}"
        if said:  # the error of the call just shown: not repeated
            line = line.replace(
                f" after {seconds(attempt['duration'])}", f" after {seconds(attempt['duration'])} (the error above)", 1
            )
        for piece in textwrap.wrap(line, self.width, subsequent_indent="    ", break_on_hyphens=False) or [line]:
            click.echo(piece)

    def _error(self, error: dict[str, Any]) -> None:
        retry = " (retryable)" if error.get("retryable") else ""
        self._text(f"✗ error {error.get('code', '')}{retry}:", str(error.get("message", "")))


def _arguments(arguments: Any) -> str:
    """A tool call's arguments: the model's JSON text shown compact, or as sent when it is not JSON."""
    if isinstance(arguments, str):
        try:
            return json.dumps(json.loads(arguments), ensure_ascii=False)
        except ValueError:
            return arguments
    return json.dumps(arguments, ensure_ascii=False)


def _same_answer(message: dict[str, Any], answer: dict[str, Any]) -> bool:
    """Whether an assistant message sent back is the previous answer (same text, same tool call ids)."""
    sent = [c.get("id") for c in message.get("tool_calls") or []]
    answered = [c.get("id") for c in answer.get("tool_calls") or []]
    return sent == answered and (message.get("content") or None) == (answer.get("content") or None)


def part_name(part: Any) -> str:
    """An MCP content block named, not dumped: `[image image/png, 12 KB]`, `[resource_link file:///a.txt]`."""
    if not isinstance(part, dict):
        return f"[{part!r}]"
    kind = str(part.get("type", "?"))
    mime = part.get("mimeType") or (part.get("resource") or {}).get("mimeType")
    if kind in ("image", "audio"):
        return f"[{kind} {mime or '?'}, {_size(len(str(part.get('data', ''))) * 3 // 4)}]"
    if kind == "resource_link":
        return f"[resource_link {part.get('uri')}{' ' + mime if mime else ''}]"
    if kind == "resource":
        resource = part.get("resource") or {}
        body = resource.get("text")
        size = len(str(body).encode()) if body is not None else len(str(resource.get("blob", ""))) * 3 // 4
        return f"[resource {resource.get('uri')}{' ' + mime if mime else ''}, {_size(size)}]"
    return f"[{kind}{' ' + mime if mime else ''}]"


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.0f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MB"
