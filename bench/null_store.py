"""A run store that stores nothing: `RunStore` with every write a no-op and every read empty.

Running the same pipeline on it and on `SqliteRunStore` separates the interpreter's own cost from the journal's.
"""

from __future__ import annotations

from typing import Any

from flowctl.interpreter.persistence.store import (
    CallRecord,
    EventRecord,
    JsonText,
    RunRecord,
    RunStatus,
    StateChange,
    StepRecord,
    StepStatus,
)


class NullStore:
    """Satisfies `flowctl.interpreter.persistence.store.RunStore`; never looks a call up, so nothing is replayed."""

    def create_run(self, record: RunRecord) -> None:
        pass

    def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        *,
        outputs: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost: float = 0.0,
    ) -> None:
        pass

    def reopen_run(self, run_id: str) -> None:
        pass

    def get_run(self, run_id: str) -> RunRecord | None:
        return None

    def list_runs(self, limit: int = 50, *, roots_only: bool = False) -> list[RunRecord]:
        return []

    def child_runs(self, run_id: str) -> list[RunRecord]:
        return []

    def step_started(self, run_id: str, path: str, kind: str, attempt: int, *, continued: bool = False) -> None:
        pass

    def step_finished(
        self,
        run_id: str,
        path: str,
        status: StepStatus,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        pass

    def step_done(
        self,
        run_id: str,
        path: str,
        kind: str,
        attempts: int,
        started_at: float,
        status: StepStatus,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        pass

    def steps(self, run_id: str) -> list[StepRecord]:
        return []

    def lookup_call(self, run_id: str, key: str) -> CallRecord | None:
        return None

    def record_call(
        self, run_id: str, key: str, request_digest: str, result: dict[str, Any] | JsonText, *, durable: bool = True
    ) -> None:
        pass

    def flush(self) -> None:
        pass

    def record_event(self, run_id: str, name: str, data: Any, source: str) -> None:
        pass

    def events(self, run_id: str) -> list[EventRecord]:
        return []

    def send_signal(self, run_id: str, name: str, data: Any) -> int:
        return 0

    def take_signals(self, run_id: str, after_seq: int) -> list[EventRecord]:
        return []

    def record_state_change(self, run_id: str, step: str, values: dict[str, Any]) -> None:
        pass

    def state_changes(self, run_id: str) -> list[StateChange]:
        return []

    def cache_get(self, digest: str) -> dict[str, Any] | None:
        return None

    def cache_put(self, digest: str, result: dict[str, Any] | JsonText) -> None:
        pass

    def close(self) -> None:
        pass
