"""A run whose claim another process took over (it thought this one gone: a paused process, a host cut off past the
lease) stops at its next commit without finishing the run or running its `finally`: the new owner does that.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore
from flowctl.interpreter.persistence.store import Claim, RunStatus, Write
from flowctl.interpreter.persistence.store_errors import ClaimLost
from flowctl.interpreter.providers.scripted import Fixture
from tests.interpreter.pipelines.harness import run_file

PIPELINE = """\
flowctl: 1
name: taken_over
agents:
  writer: {instruction: You write.}
steps:
  - {id: one, agent: writer, prompt: "one"}
  - {id: two, agent: writer, prompt: "two"}
  - {id: three, agent: writer, prompt: "three"}
finally:
  - {id: cleanup, agent: writer, prompt: "cleanup"}
outputs:
  last: "{{ steps.three.output }}"
"""


class TakenOverAfter(SqliteRunStore):
    """A real store; before its `commits`-th commit, another process claims the run (through its own connection, as
    a `flowctl resume` elsewhere would once this one's lease had run out)."""

    def __init__(self, path: Path, commits: int) -> None:
        super().__init__(path)
        self.commits_left = commits
        self.committed: list[list[Write]] = []

    def commit(self, writes: Sequence[Write], claim: Claim | None) -> None:
        self.commits_left -= 1
        if self.commits_left == 0 and claim is not None:
            with sqlite3.connect(self.path) as other:
                other.execute(
                    "UPDATE runs SET owner = 'elsewhere:1', claim_token = claim_token + 1 WHERE run_id = ?",
                    (claim.run_id,),
                )
        super().commit(writes, claim)
        self.committed.append(list(writes))


@pytest.mark.anyio
async def test_a_run_that_lost_its_claim_stops_without_finishing(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PIPELINE)
    fixture = Fixture.from_data({"responses": [{"reply": "ok"}]})
    with TakenOverAfter(tmp_path / "runs.db", commits=2) as store:
        with pytest.raises(ClaimLost, match="taken over by another process"):
            await run_file(tmp_path / "p.yaml", fixture, store)
        (record,) = store.list_runs()
        assert (record.status, record.owner, record.finished_at) == (RunStatus.RUNNING, "elsewhere:1", None)
        calls = {w.key for batch in store.committed for w in batch if hasattr(w, "key")}
        assert calls == {"one/llm#0"}  # the second answer was refused with the commit; no `finally` ran
        assert store.lookup_call(record.run_id, "two/llm#0") is None
        assert store.liveness(record.run_id).owner == "elsewhere:1"
