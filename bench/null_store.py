"""A run store that stores nothing: `RunStore` with every commit a no-op and every read empty.

Running the same pipeline on it and on `SqliteRunStore` separates the interpreter's own cost (the recorder's queue
and waits included) from the store's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowctl.interpreter.persistence.store import (
    AttemptRecord,
    CallRecord,
    Claim,
    EventRecord,
    ExchangeRecord,
    Liveness,
    RunRecord,
    Signal,
    StateChange,
    StepRecord,
    Write,
)


class NullStore:
    """Satisfies `flowctl.interpreter.persistence.store.RunStore`; never looks a call up, so nothing is replayed."""

    lease = 600.0

    def create_run(self, record: RunRecord, inputs: str, input_secrets: str | None, owner: str) -> Claim:
        return Claim(record.run_id, owner, 1)

    def claim(self, run_id: str, owner: str) -> Claim:
        return Claim(run_id, owner, 1)

    def release(self, claim: Claim) -> None:
        pass

    def liveness(self, run_id: str) -> Liveness:
        return Liveness(None, False)

    def commit(self, writes: Sequence[Write], claim: Claim | None) -> None:
        pass

    def get_run(self, run_id: str) -> RunRecord | None:
        return None

    def list_runs(self, limit: int = 50, *, roots_only: bool = False) -> list[RunRecord]:
        return []

    def child_runs(self, run_id: str) -> list[RunRecord]:
        return []

    def steps(self, run_id: str) -> list[StepRecord]:
        return []

    def lookup_call(self, run_id: str, key: str) -> CallRecord | None:
        return None

    def events(self, run_id: str) -> list[EventRecord]:
        return []

    def state_changes(self, run_id: str) -> list[StateChange]:
        return []

    def cache_get(self, digest: str) -> dict[str, Any] | None:
        return None

    def attempts(self, run_id: str) -> list[AttemptRecord]:
        return []

    def exchanges(self, run_id: str, path: str | None = None) -> list[ExchangeRecord]:
        return []

    def send_signal(self, run_id: str, name: str, data: Any) -> int:
        return 0

    def signals(self, run_id: str, after: int = 0) -> list[Signal]:
        return []

    def close(self) -> None:
        pass
