"""Side effects through the journal: look a call up before making it, record its result once it completes.

A call's key is its step path plus its index within the step (`summary/llm#0`, `summary/tool:time.now#1`), and its
request digest is a hash of the rendered request. On resume a recorded result is replayed instead of paying again; a
recorded call whose digest differs (the pipeline or inputs were edited) refuses the resume and names the step, unless
the user forces it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from flowctl.interpreter.errors import ResumeRefused
from flowctl.interpreter.store import RunStore


class Journal:
    def __init__(self, store: RunStore, *, resuming: bool = False, force: bool = False, cache: bool = False) -> None:
        self.store = store
        self.resuming = resuming
        self.force = force
        self.cache = cache
        self.replayed = 0
        self.cached = 0
        self.executed = 0
        self._written: set[tuple[str, str]] = set()  # keys recorded by this process

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
        recorded = self.store.lookup_call(run_id, key)
        if recorded is not None:
            if recorded.request_digest == digest:
                self.replayed += 1
                return recorded.result
            if self.resuming and (run_id, key) not in self._written and not self.force:
                step = key.rsplit("/", 1)[0]
                raise ResumeRefused(
                    f"step {step!r} changed since run {run_id!r} was journaled (its request is not the recorded "
                    "one): the pipeline or its inputs were edited; rerun it, or resume with --force to re-execute "
                    "changed calls"
                )
        if cacheable and self.cache:
            hit = self.store.cache_get(digest)
            if hit is not None:
                self.cached += 1
                self._record(run_id, key, digest, hit)
                return hit
        result = await execute()
        self.executed += 1
        self._record(run_id, key, digest, result)
        if cacheable and self.cache:
            self.store.cache_put(digest, result)
        return result

    def _record(self, run_id: str, key: str, digest: str, result: dict[str, Any]) -> None:
        self.store.record_call(run_id, key, digest, result)
        self._written.add((run_id, key))
