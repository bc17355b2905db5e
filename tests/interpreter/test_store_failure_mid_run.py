"""A run store that fails part-way through a run (a full disk, a lock held past the busy timeout) stops the run
without recording a made-up ending: the run stays `running` in the store, so `flowctl resume` continues it once the
store works again. The CLI side (the message, exit 1, the resume command) is tested in test_cli_store_errors.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import Claim, RunStatus, Write
from flowctl.interpreter.persistence.store_errors import StoreError
from flowctl.interpreter.providers.scripted import Fixture
from tests.interpreter.pipelines.harness import HERE, run_file


class StoreFailingOnce(SqliteRunStore):
    """A real SQLite store whose first commit after the run's creation fails as a transient store failure would (the
    next commit, the run's ending, would go through)."""

    failed = False

    def commit(self, writes: Sequence[Write], claim: Claim | None) -> None:
        if not self.failed:
            self.failed = True
            raise StoreError(self.path, "database is locked", "try again")
        super().commit(writes, claim)


@pytest.mark.anyio
async def test_a_store_failure_mid_run_leaves_the_run_resumable_not_failed(tmp_path: Path) -> None:
    with StoreFailingOnce(tmp_path / "runs.db") as store:
        with pytest.raises(StoreError):
            await run_file(
                HERE / "limits" / "finally_set.yaml", Fixture.from_data({"responses": []}), store, inputs={"items": []}
            )
        (record,) = store.list_runs()
        assert record.status is RunStatus.RUNNING  # not "failed: internal error: StoreError(…)"
        assert record.error is None
