"""Side effects through the journal: look a call up before making it, record its result once it completes.

A call's key is its step path plus its index within the step (`summary/llm#0`, `summary/tool:time.now#1`), and its
request digest is a hash of the rendered request. On resume a recorded result is replayed instead of paying again; a
recorded call whose digest differs (the pipeline or inputs were edited) refuses the resume and names the step, unless
the user forces it.

Only successful, completed calls replay: the calls of a step that the run recorded as failed are asked again on
resume (replaying the answers that made it fail would fail it again — e.g. a model that kept sending unusable tool
arguments).

A fresh run's keys are all new, so only keys this process wrote can be looked up: no store query per call then.

A recorded result is queued with the recorder; whoever uses it awaits `recorder.durable()` first (`call` does), so
that a kill can only repeat the calls in flight.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from flowctl.interpreter.errors import ResumeRefused
from flowctl.interpreter.meters import meter_execution
from flowctl.interpreter.persistence.recorder import Recorder
from flowctl.interpreter.persistence.store import Exchanged

MISSING: Any = object()  # `recall` found nothing to replay

_CALL_PART = re.compile(r"^(?:llm|turn|wait|now|tool:[^#]*)#\d+$")


def step_of(key: str) -> str:
    """The step path of a call key: `per_task[0]/turn#1/tool:time.now#0` → `per_task[0]`."""
    parts = key.split("/")
    while len(parts) > 1 and _CALL_PART.match(parts[-1]):
        parts.pop()
    return "/".join(parts)


def _owning_step(key: str) -> str:
    """The step whose row a call's outcome shows: its step path, or the step an agent `fallback` stands in for."""
    step = step_of(key)
    return step.removesuffix("/fallback")


class Journal:
    def __init__(self, recorder: Recorder, *, resuming: bool = False, force: bool = False, cache: bool = False) -> None:
        self.recorder = recorder
        self.resuming = resuming
        self.force = force
        self.cache = cache
        self.replayed = 0
        self.cached = 0
        self.executed = 0
        self._written: set[tuple[str, str]] = set()  # keys recorded by this process
        self._counted: set[tuple[str, str]] = set()  # replayed keys whose usage this process counted
        self._recorded = False  # whether this process recorded a call yet
        self._kept: list[tuple[str, str, Any]] = []  # values `keep` holds back until then (a resume)
        # (run id, step path) → the claim token the step's failure was committed under: its calls committed under
        # that claim or an earlier one are asked again
        self._failed: dict[tuple[str, str], int] = {}
        # distinguishes this execution of a run from earlier ones, for work that must run anew (`finally`)
        self.epoch = f"{time.time_ns() // 1_000_000:x}"

    async def call(
        self,
        run_id: str,
        key: str,
        digest: str,
        execute: Callable[[], Awaitable[dict[str, Any]]],
        *,
        cacheable: bool = False,
    ) -> dict[str, Any]:
        """Replay the recorded result of `key`, or execute and record it durably before returning."""
        result = self.replay(run_id, key, digest, cacheable=cacheable)
        if result is None:
            result = await execute()
            self.record(run_id, key, digest, result, cacheable=cacheable)
            await self.recorder.durable()
        return result

    def ask_again(self, run_id: str, failed_steps: dict[str, int]) -> None:
        """A resumed run's steps that the store holds as failed (path → the claim token of the failure): the calls
        they made up to that failure are not replayed. Calls committed under a later claim are (a resume that ran the
        step again and was killed: its step row may not have been committed, its calls were)."""
        self._failed.update(((run_id, path), token) for path, token in failed_steps.items())

    # `call` in two halves, for the hot path (an LLM call) to run its effect inline, without two more coroutine
    # frames per call: `replay` before the effect, `record` after it.

    def replay(self, run_id: str, key: str, digest: str, *, cacheable: bool = False) -> dict[str, Any] | None:
        """The recorded (or, with --cache, cached) result of `key`; None when the caller must execute it."""
        ident = (run_id, key)
        written = ident in self._written
        recorded = self.recorder.lookup_call(run_id, key) if self.resuming or written else None
        if recorded is not None and not written and self._failed:
            failed_under = self._failed.get((run_id, _owning_step(key)))
            if failed_under is not None and recorded.claim_token <= failed_under:
                recorded = None  # its step failed after it: ask again (and refuse nothing: the answer is void)
        if recorded is not None and recorded.masked:
            recorded = None  # the journal holds a masked copy: the call is made again (paid twice, but correct)
        if recorded is not None:
            if recorded.request_digest == digest:
                self.replayed += 1
                return recorded.result
            if self.resuming and not written and not self.force:
                step = step_of(key)
                raise ResumeRefused(
                    f"step {step!r} changed since run {run_id!r} was journaled (its request is not the recorded "
                    "one): the pipeline or its inputs were edited; revert the edit, or resume with --force to run "
                    "the changed calls again"
                )
        if cacheable and self.cache:
            hit = self.recorder.cache_get(digest)
            if hit is not None:
                self.cached += 1
                self._record(run_id, key, digest, hit)
                return hit
        if self.resuming and not self._recorded:
            self._going_on()
        return None

    def _going_on(self) -> None:
        """A resume is about to do work of its own (a call, a wait): it is past its replay, so what it held back is
        queued and it commits from now on, before that work ends (a wait may last days): the run and the step show
        running, not how the earlier process left them, and its claim's heartbeat goes on."""
        if self._kept:
            self.write_kept()
        self._recorded = True
        self.recorder.going_on()

    def recall(self, run_id: str, key: str) -> Any:
        """A value the run journaled with `keep` (`now()`, the run's attempt), or MISSING. Like `replay`, it skips
        what a failed step recorded: that step runs anew, and reads the clock anew."""
        if not self.resuming and (run_id, key) not in self._written:
            return MISSING
        recorded = self.recorder.lookup_call(run_id, key)
        if recorded is None or recorded.masked:
            return MISSING
        if (run_id, key) not in self._written and self._failed:
            failed_under = self._failed.get((run_id, _owning_step(key)))
            if failed_under is not None and recorded.claim_token <= failed_under:
                return MISSING
        return recorded.result.get("value")

    def keep(self, run_id: str, key: str, value: Any) -> None:
        """Journal a value a resumed run must see again, under `key` (a call's key: `step/now#0`). Not a call: the
        counts of calls made and replayed leave it out. Queued, not awaited: what the value reaches outside the run
        (a model's prompt, a tool's arguments) is journaled after it, and the store keeps writes in order.

        A resume keeps its values back until it records a call of its own (or ends): a resume refused while it is
        still replaying must leave the run exactly as it was, and any write would start committing (Recorder)."""
        self._written.add((run_id, key))
        if self.resuming and not self._recorded:
            self._kept.append((run_id, key, value))
            return
        self.recorder.call_done(run_id, key, "value", {"value": value})

    def write_kept(self) -> None:
        """Queue the values `keep` held back (the run records a call, or ends)."""
        kept, self._kept = self._kept, []
        for run_id, key, value in kept:
            self.recorder.call_done(run_id, key, "value", {"value": value})

    def count_replayed(self, run_id: str, key: str) -> bool:
        """Whether a replayed call's usage is to be counted: once per process, and only for what an earlier process
        paid (a resumed run). A step retry replays the calls its earlier attempt made in this process, which were
        counted when they ran."""
        ident = (run_id, key)
        if ident in self._written or ident in self._counted:
            return False
        self._counted.add(ident)
        return self.resuming

    def record(
        self,
        run_id: str,
        key: str,
        digest: str,
        result: dict[str, Any] | str,
        *,
        cacheable: bool = False,
        transcript: Exchanged | None = None,
    ) -> None:
        """Journal the result (a dict, or its JSON text) of an effect `replay` said to execute, with its transcript
        entry when it has one to keep in its row (Recorder.call_done). Queued: the caller awaits
        `recorder.durable()` before using it."""
        self.executed_unrecorded()
        self._record(run_id, key, digest, result, transcript)
        if cacheable and self.cache:
            self.recorder.cache_put(digest, result)

    def executed_unrecorded(self) -> None:
        """Count an effect that was executed (not replayed): the run's total, and every enclosing step's meter
        (a resumed run tells a step replayed whole from one that did new work by it)."""
        self.executed += 1
        meter_execution()

    def _record(
        self, run_id: str, key: str, digest: str, result: dict[str, Any] | str, transcript: Exchanged | None = None
    ) -> None:
        if self._kept:
            self.write_kept()  # before the call: the store keeps writes in order
        self._recorded = True
        self.recorder.call_done(run_id, key, digest, result, transcript)
        self._written.add((run_id, key))
