"""The Python API (`import flowctl`): load and validate a pipeline, run it (async and sync), resume a run, send a run a
signal, list runs, read a run's report and its transcript — with the objects the commands use (`ir.Graph`,
`Diagnostic`, `RunOutcome`, `RunRecord`, `Reporter`, `TranscriptEntry`). The guide is docs/python.md.

Unlike `flowctl run`, nothing here changes process-wide settings: the garbage collector and the GIL switch interval
are tuned only when a caller passes `tune_process=True` (see interpreter/engine/tuning.py), and no signal handler is
installed (a cancelled task cancels the run, which stays resumable).

The interpreter is imported inside the functions that run something, so `flowctl.validate` and `flowctl.load` import
neither anyio, openai nor mcp.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowctl.dsl.diagnostics import Diagnostic
    from flowctl.dsl.ir import Graph
    from flowctl.interpreter.persistence.store import RunRecord, RunStore
    from flowctl.interpreter.persistence.store_errors import StoreAccess
    from flowctl.interpreter.reporting import Reporter
    from flowctl.interpreter.runner import RunOptions, RunOutcome
    from flowctl.run_reports import TranscriptEntry


class InvalidPipeline(Exception):
    """`load` found errors in the pipeline (or a child file it names). `diagnostics` holds every problem (errors and
    warnings) as `Diagnostic` objects; `str()` is what `flowctl validate` prints for them."""

    def __init__(self, file: str, diagnostics: list[Diagnostic], rendered: str) -> None:
        super().__init__(rendered)
        self.file = file
        self.diagnostics = diagnostics


def validate(path: str | os.PathLike[str]) -> list[Diagnostic]:
    """Every problem `flowctl validate` reports for the pipeline file (and the child files it names), in file order;
    empty when it is valid. A diagnostic's `severity` tells errors from warnings; `span` is its file:line:col."""
    from flowctl.dsl.frontend import load_pipeline

    _, diagnostics, _ = load_pipeline(os.fspath(path))
    return diagnostics


def load(path: str | os.PathLike[str]) -> Graph:
    """The pipeline file compiled to the graph `run` takes. Raises `InvalidPipeline` (with the diagnostics) when it
    has errors; warnings do not stop it (`validate` lists them)."""
    from flowctl.dsl.diagnostics import Severity, render_text
    from flowctl.dsl.frontend import load_pipeline

    graph, diagnostics, front = load_pipeline(os.fspath(path))
    if graph is None:
        sources = front.sources()
        shown = [render_text(d, sources.get(d.span.file)) for d in diagnostics if d.severity is Severity.ERROR]
        raise InvalidPipeline(str(path), diagnostics, "\n".join([f"{path}: invalid pipeline", *shown]))
    return graph


@contextmanager
def _store(store: RunStore | str | os.PathLike[str] | None, access: StoreAccess) -> Iterator[RunStore]:
    """A store the caller passed is used as it is (and left open); a path or URL (None: the default store,
    `.flowctl/runs.db` in the working directory) is opened for `access` and closed afterwards."""
    if store is not None and not isinstance(store, str | os.PathLike):
        yield store
        return
    from flowctl.interpreter.persistence.locate import default_store_path, open_store

    opened = open_store(store if store is not None else default_store_path(), access=access)
    try:
        yield opened
    finally:
        opened.close()


def run_options(
    *,
    scripted: str | os.PathLike[str] | None = None,
    cache: bool = False,
    force: bool = False,
    reporter: Reporter | None = None,
    env: Mapping[str, str] | None = None,
    graph: Graph | None = None,
    tune_process: bool = False,
) -> RunOptions:
    """The options of a run, as `flowctl run` and `resume` build them: the fixture (`scripted`, a path, kept with the
    run so that its resume stays offline), the response cache, the reporter, and the redactor that masks secrets
    (from `env` and the pipeline's secret variables) in the store. Raises FlowctlError for a fixture that cannot be
    loaded."""
    from flowctl.interpreter.providers.scripted import load_fixture
    from flowctl.interpreter.redact import redactor_for
    from flowctl.interpreter.runner import RunOptions

    env = dict(os.environ) if env is None else dict(env)
    options = RunOptions(cache=cache, force=force, env=env, tune_process=tune_process)
    if reporter is not None:
        options.reporter = reporter
    if scripted is not None:
        options.scripted = load_fixture(Path(scripted))
        options.scripted_file = str(Path(scripted).resolve())
    options.redactor = redactor_for([graph] if graph is not None else [], env)
    return options


def _masking(options: RunOptions) -> RunOptions:
    """The reporter is told only masked text, as the store keeps it."""
    from flowctl.progress_sinks import RedactingReporter

    if options.redactor:
        options.reporter = RedactingReporter(options.reporter, options.redactor.redact_text)
    return options


async def run(
    pipeline: Graph | str | os.PathLike[str],
    inputs: Mapping[str, Any] | None = None,
    *,
    store: RunStore | str | os.PathLike[str] | None = None,
    scripted: str | os.PathLike[str] | None = None,
    reporter: Reporter | None = None,
    env: Mapping[str, str] | None = None,
    cache: bool = False,
    run_id: str | None = None,
    tune_process: bool = False,
) -> RunOutcome:
    """Run a pipeline (a `Graph` from `load`, or a file) and return how it ended: `outcome.status`, `.outputs`,
    `.error` (a failed run does not raise), tokens, cost, calls. Every step is journaled to `store` (default: the
    project's `.flowctl/runs.db`), so the run shows in `flowctl runs` and can be resumed.

    Raises `InvalidPipeline`, `InputError` (inputs the pipeline refuses, before anything is journaled), FlowctlError
    (a fixture that cannot be loaded) and `StoreError` (a store that cannot keep the run). Cancelling the calling task
    cancels the run: it is marked cancelled and stays resumable."""
    from flowctl.interpreter.runner import run_graph

    graph = pipeline if not isinstance(pipeline, str | os.PathLike) else load(pipeline)
    options = run_options(
        scripted=scripted, cache=cache, reporter=reporter, env=env, graph=graph, tune_process=tune_process
    )
    _masking(options)
    with _store(store, "create") as opened:
        return await run_graph(graph, dict(inputs or {}), opened, options, run_id=run_id)


def run_sync(
    pipeline: Graph | str | os.PathLike[str],
    inputs: Mapping[str, Any] | None = None,
    *,
    store: RunStore | str | os.PathLike[str] | None = None,
    scripted: str | os.PathLike[str] | None = None,
    reporter: Reporter | None = None,
    env: Mapping[str, str] | None = None,
    cache: bool = False,
    run_id: str | None = None,
    tune_process: bool = False,
) -> RunOutcome:
    """`run` for code without a running event loop (a script, a worker thread). In a notebook, whose loop is
    running, `await flowctl.run(...)` instead."""
    import anyio

    from flowctl.interpreter.engine.stack_room import with_stack_room

    call = partial(
        run,
        pipeline,
        inputs,
        store=store,
        scripted=scripted,
        reporter=reporter,
        env=env,
        cache=cache,
        run_id=run_id,
        tune_process=tune_process,
    )
    return with_stack_room(partial(anyio.run, call))


def fixture_for_resume(record: RunRecord, scripted: str | os.PathLike[str] | None, online: bool) -> str | None:
    """The fixture a resume answers from: `scripted`, else the one the run started with (a scripted run stays
    offline unless `online`). Raises InputError when that fixture is gone."""
    from flowctl.interpreter.errors import InputError

    if scripted is not None:
        return str(scripted)
    if online or not record.scripted:
        return None
    if not Path(record.scripted).is_file():
        raise InputError(
            f"run {record.run_id} answered from the fixture {record.scripted}, which is gone: pass "
            "--scripted FILE to answer from another, or --online to call the real models"
        )
    return str(record.scripted)


async def resume(
    run_id: str,
    *,
    store: RunStore | str | os.PathLike[str] | None = None,
    scripted: str | os.PathLike[str] | None = None,
    online: bool = False,
    force: bool = False,
    cache: bool = False,
    reporter: Reporter | None = None,
    env: Mapping[str, str] | None = None,
    tune_process: bool = False,
) -> RunOutcome:
    """Continue a failed, cancelled or killed run, replaying its recorded model and tool calls (`flowctl resume`).
    A run that started scripted answers from its fixture again unless `online` (or another `scripted`) is given;
    `force` re-executes calls whose recorded request changed instead of refusing.

    Raises InputError (no such run, a child run, a run that succeeded, a secret input whose variable is unset),
    `RunBusy` (another process runs it), `InvalidPipeline` (the file was edited into an invalid one)."""
    from flowctl.interpreter.runner import load_resumable, resume_inputs, run_graph

    env = dict(os.environ) if env is None else dict(env)
    with _store(store, "write") as opened:
        record = load_resumable(opened, run_id)
        inputs = resume_inputs(record, env)
        graph = load(record.file)
        fixture = fixture_for_resume(record, scripted, online)
        options = run_options(
            scripted=fixture,
            cache=cache,
            force=force,
            reporter=reporter,
            env=env,
            graph=graph,
            tune_process=tune_process,
        )
        _masking(options)
        return await run_graph(graph, inputs, opened, options, run_id=run_id, resuming=True)


def resume_sync(
    run_id: str,
    *,
    store: RunStore | str | os.PathLike[str] | None = None,
    scripted: str | os.PathLike[str] | None = None,
    online: bool = False,
    force: bool = False,
    cache: bool = False,
    reporter: Reporter | None = None,
    env: Mapping[str, str] | None = None,
    tune_process: bool = False,
) -> RunOutcome:
    """`resume` without an event loop."""
    import anyio

    from flowctl.interpreter.engine.stack_room import with_stack_room

    call = partial(
        resume,
        run_id,
        store=store,
        scripted=scripted,
        online=online,
        force=force,
        cache=cache,
        reporter=reporter,
        env=env,
        tune_process=tune_process,
    )
    return with_stack_room(partial(anyio.run, call))


@dataclass(frozen=True, slots=True)
class SignalSent:
    """Where a signal went: `target` (the root run: events are shared by a run tree), its number `seq` in the run's
    signals, and the run's `status` then (`running`, or a status after which it sees the signal only if resumed)."""

    target: str
    seq: int
    status: str


def signal(
    run_id: str,
    event: str,
    data: Any = None,
    *,
    store: RunStore | str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> SignalSent:
    """Deliver an external event to a run (`flowctl signal`): a `wait` step or an event trigger waiting for `event`
    takes `data` (JSON-like; secrets from `env` are masked before it is stored). A signal for a child run goes to its
    root run. Raises InputError when there is no such run."""
    from flowctl.interpreter.errors import InputError
    from flowctl.interpreter.redact import redactor_for
    from flowctl.run_reports import is_alive, run_status

    with _store(store, "write") as opened:
        record = opened.get_run(run_id)
        if record is None:
            raise InputError(f"no run {run_id!r} in the store (see `flowctl runs`)")
        target = run_id
        if record.parent_id is not None:  # events are shared by the whole run tree; the root run polls for them
            target = run_id.split("/", 1)[0]
            record = opened.get_run(target) or record
        masked = redactor_for((), os.environ if env is None else env).redact(data)
        seq = opened.send_signal(target, event, masked)
        return SignalSent(target, seq, run_status(record, is_alive(opened, record)))


def list_runs(limit: int = 20, *, store: RunStore | str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The most recent root runs, newest first, as `flowctl runs --output json` lists them (`status` is
    `interrupted` for a run whose process is gone)."""
    from flowctl.run_reports import is_alive, run_summary

    with _store(store, "read") as opened:
        return [run_summary(r, is_alive(opened, r)) for r in opened.list_runs(limit, roots_only=True)]


def read_run(run_id: str, *, store: RunStore | str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A run's report, as `flowctl show --output json` prints it: status, inputs, outputs, error, tokens and cost,
    every step with its attempts, events, state changes, child runs and per-model totals. Raises InputError when
    there is no such run."""
    from flowctl.interpreter.errors import InputError
    from flowctl.run_reports import run_report

    with _store(store, "read") as opened:
        if opened.get_run(run_id) is None:
            raise InputError(f"no run {run_id!r} in the store (see `flowctl runs`)")
        return run_report(opened, run_id)


def read_transcript(
    run_id: str, *, step: str | None = None, store: RunStore | str | os.PathLike[str] | None = None
) -> list[TranscriptEntry]:
    """A run's transcript, as `flowctl logs` shows it: every model and tool call (and every attempt that did not
    succeed) over the run and its child runs, in the order they ended. Each entry's `record` is an `ExchangeRecord`
    (`kind`, `request`, `response`, `error`, …) or an `AttemptRecord`; `step` is its path from this run (`child/x`
    for a child run's step). `step=` keeps that step and what runs inside it. Raises InputError when there is no such
    run."""
    from flowctl.interpreter.errors import InputError
    from flowctl.run_reports import run_tree, transcript_entries

    with _store(store, "read") as opened:
        if opened.get_run(run_id) is None:
            raise InputError(f"no run {run_id!r} in the store (see `flowctl runs`)")
        return transcript_entries(opened, run_tree(opened, run_id), run_id, step)


__all__ = [
    "InvalidPipeline",
    "SignalSent",
    "fixture_for_resume",
    "list_runs",
    "load",
    "read_run",
    "read_transcript",
    "resume",
    "resume_sync",
    "run",
    "run_options",
    "run_sync",
    "signal",
    "validate",
]
