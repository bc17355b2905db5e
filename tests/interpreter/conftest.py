"""Fixtures shared by the interpreter's tests: the asyncio backend for anyio tests, and a run store in a fresh file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flowctl.interpreter.persistence.sqlite_store import SqliteRunStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteRunStore]:
    with SqliteRunStore(tmp_path / "runs.db") as opened:
        yield opened
