"""Running a case: `run_graph` on a fresh in-memory store with the case's fixture, delivering its external signals,
and comparing the outcome with its expectations. Secrets are masked in what a case reports (its failures, its run
error, its progress) as `flowctl run` masks them (redact.redactor_for): a real server the fixture does not script may
print its environment."""

from __future__ import annotations

import time
from typing import Any

from flowctl.testing._text import first_line
from flowctl.testing.cases import Case, CaseResult, Expect, Signal
from flowctl.testing.matchers import MapPattern, Pattern, describe


async def run_case(case: Case, verbose: bool = False) -> CaseResult:
    """Run one case on a fresh in-memory store and compare the outcome with its expectations."""
    import os

    import anyio

    from flowctl.interpreter.errors import FlowctlError
    from flowctl.interpreter.persistence.ids import new_run_id
    from flowctl.interpreter.persistence.locate import open_store
    from flowctl.interpreter.redact import redactor_for
    from flowctl.interpreter.reporting import Reporter
    from flowctl.interpreter.runner import RunOptions, run_graph
    from flowctl.progress import LineReporter, RedactingReporter
    from flowctl.progress_tally import layout_of, prices_of

    started = time.monotonic()
    run_id = new_run_id()
    redactor = redactor_for([case.graph], os.environ)
    progress = LineReporter(layout=layout_of(case.graph), prices=prices_of(case.graph))
    reporter = RedactingReporter(progress, redactor.redact_text) if verbose else Reporter()
    options = RunOptions(scripted=case.fixture, reporter=reporter, redactor=redactor, tune_process=True)
    store = open_store(":memory:")
    outcome: Any = None
    error: FlowctlError | None = None
    calls: list[dict[str, Any]] = []
    try:
        with anyio.fail_after(case.timeout):
            async with anyio.create_task_group() as tg:
                for signal in case.signals:
                    tg.start_soon(_send_signal, store, run_id, signal)
                try:
                    outcome = await run_graph(case.graph, case.inputs, store, options, run_id=run_id)
                except FlowctlError as exc:  # invalid inputs: nothing ran
                    error = exc
                tg.cancel_scope.cancel()
        if case.expect.calls is not None:
            calls = model_calls(store, run_id)
    except TimeoutError:
        result = CaseResult(case, False, time.monotonic() - started, run_id, "timeout")
        result.failures.append(("run", f"did not finish within the case timeout of {case.timeout:g}s"))
        return result
    finally:
        store.close()
    failures = compare(case.expect, outcome, error, calls)
    run_error = outcome.error if outcome is not None else error
    return CaseResult(
        case,
        not failures,
        time.monotonic() - started,
        run_id,
        outcome.status.value if outcome is not None else "failed",
        redactor.redact_text(str(run_error)) if run_error is not None else "",
        [(path, redactor.redact_text(message)) for path, message in failures],
    )


async def _send_signal(store: Any, run_id: str, signal: Signal) -> None:
    """Deliver an external signal the way `flowctl signal` does: through the run store, once the run exists."""
    import anyio

    await anyio.sleep(signal.after)
    while store.get_run(run_id) is None:
        await anyio.sleep(0.005)
    store.send_signal(run_id, signal.event, signal.data)


def model_calls(store: Any, run_id: str) -> list[dict[str, Any]]:
    """Every model call of the run and its child runs, in the order they started, as the `calls:` expectations see
    them: {agent, system, prompt, step, reply, tools, error} (`prompt` is the call's first user message, `tools` the
    names of the tools offered, `error` the code of a failed call's error)."""
    from flowctl.run_reports import run_tree, step_label

    found: list[tuple[float, int, dict[str, Any]]] = []
    for run in run_tree(store, run_id) if store.get_run(run_id) is not None else []:
        for e in store.exchanges(run):
            if e.kind != "model" or not isinstance(e.request, dict):
                continue
            messages = e.request.get("messages") or []
            system = next((m.get("content") for m in messages if m.get("role") == "system"), None)
            prompt = next((m.get("content") for m in messages if m.get("role") == "user"), None)
            reply = e.response.get("content") if isinstance(e.response, dict) else None
            call = {
                "agent": e.request.get("agent"),
                "system": system,
                "prompt": prompt,
                "step": step_label(run, e.path, run_id),
                "reply": reply,
                "tools": [t.get("name") for t in e.request.get("tools") or [] if isinstance(t, dict)],
                "error": e.error.get("code") if isinstance(e.error, dict) else None,
            }
            found.append((e.started_at, e.seq, call))
    return [call for _, _, call in sorted(found, key=lambda f: (f[0], f[1]))]


def compare(
    expect: Expect, outcome: Any, error: Any, calls: list[dict[str, Any]] | None = None
) -> list[tuple[str, str]]:
    """Every difference between the expectations and the outcome, as (path, message)."""
    failures: list[tuple[str, str]] = []
    status = outcome.status.value if outcome is not None else "failed"
    run_error = outcome.error if outcome is not None else error
    if status != expect.status:
        detail = f": {first_line(str(run_error))}" if run_error is not None else ""
        failures.append(("status", f"expected {expect.status!r}, got {status!r}{detail}"))
    if expect.error is not None:
        if run_error is None:
            failures.append(("error", f"expected an error matching {describe(expect.error)}, but the run had none"))
        elif isinstance(expect.error, MapPattern):  # {code, message, cause, step, ...}
            failures.extend(expect.error.check(_error_json(run_error), "error"))
        else:
            failures.extend(expect.error.check(str(run_error), "error"))
    if outcome is None:  # invalid inputs: nothing ran, every step is still pending
        from types import SimpleNamespace

        outcome = SimpleNamespace(outputs=None, state={}, events=[], steps={})
    if expect.outputs is not None:
        if outcome.outputs is None:
            failures.append(("outputs", "the run produced no outputs (it failed before computing them)"))
        else:
            failures.extend(expect.outputs.check(outcome.outputs, "outputs"))
    if expect.state is not None:
        failures.extend(expect.state.check(outcome.state, "state"))
    failures.extend(_compare_events(expect.events, outcome.events))
    for step_id, pattern in expect.steps.items():
        record = outcome.steps.get(step_id, {"status": "pending", "output": None, "error": None, "attempts": 0})
        failures.extend(pattern.check(record, f"steps.{step_id}"))
    if expect.calls is not None:
        failures.extend(_compare_calls(expect.calls, calls or []))
    return failures


def _compare_calls(expected: list[Pattern], actual: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Every model call must match one expected entry and each entry one call, in any order (concurrent calls start
    in no fixed order): a bipartite matching, so an entry general enough to match several calls never steals the
    only call a more precise entry could match."""
    fits = [[j for j, call in enumerate(actual) if not pattern.check(call, "")] for pattern in expected]
    owner: dict[int, int] = {}  # actual call -> expected entry

    def assign(i: int, seen: set[int]) -> bool:
        for j in fits[i]:
            if j not in seen:
                seen.add(j)
                if j not in owner or assign(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(len(expected)):
        assign(i, set())
    matched = set(owner.values())
    failures: list[tuple[str, str]] = []
    if len(actual) != len(expected):
        failures.append(("calls", f"expected {len(expected)} model call(s), the run made {len(actual)}"))
    for i, pattern in enumerate(expected):
        if i in matched:
            continue
        free = [j for j in range(len(actual)) if j not in owner]
        if not free:
            failures.append((f"calls[{i}]", f"no model call left for {_describe_call(pattern)}"))
            continue
        pattern_agent = _agent_of(pattern)
        nearest = next((j for j in free if actual[j]["agent"] == pattern_agent), free[0])
        for path, message in pattern.check(actual[nearest], ""):
            where = f"calls[{i}].{path.lstrip('.')}" if path else f"calls[{i}]"
            failures.append((where, f"{message} (nearest call: {_call_line(actual[nearest])})"))
    for j, call in enumerate(actual):
        if j not in owner:
            failures.append(("calls", f"a model call no entry expects: {_call_line(call)}"))
    return failures


def _agent_of(pattern: Pattern) -> Any:
    from flowctl.testing.matchers import Exact

    if isinstance(pattern, MapPattern):
        for key, sub in pattern.items:
            if key == "agent" and isinstance(sub, Exact):
                return sub.value
    return None


def _describe_call(pattern: Pattern) -> str:
    if isinstance(pattern, MapPattern):
        return ", ".join(f"{k} {describe(p)}" for k, p in pattern.items) or "any call"
    return describe(pattern)


def _call_line(call: dict[str, Any]) -> str:
    prompt = first_line(str(call.get("prompt")))
    prompt = prompt if len(prompt) <= 80 else prompt[:77] + "..."
    return f"agent {call.get('agent')!r} at step {call.get('step')!r}, prompt {prompt!r}"


def _compare_events(expected: list[tuple[str, Pattern | None]], actual: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Expected events must occur in this order; other events may come between them."""
    position = 0
    for i, (name, pattern) in enumerate(expected):
        while position < len(actual):
            event = actual[position]
            position += 1
            if event["name"] == name and (pattern is None or not pattern.check(event, "")):
                break
        else:
            seen = ", ".join(e["name"] for e in actual) or "none"
            after = f" after {expected[i - 1][0]!r}" if i else ""
            what = f"{name!r}" + (f" with {_describe_event(pattern)}" if pattern is not None else "")
            return [(f"events[{i}]", f"expected event {what}{after}; events in order: {seen}")]
    return []


def _describe_event(pattern: Pattern) -> str:
    if isinstance(pattern, MapPattern):
        return ", ".join(f"{k} {describe(p)}" for k, p in pattern.items if k != "name") or "any payload"
    return describe(pattern)


# --- small helpers ----------------------------------------------------------------------------------------------


def _error_json(error: Any) -> dict[str, Any]:
    return error.to_json() if hasattr(error, "to_json") else {"code": type(error).__name__, "message": str(error)}
