"""Fixtures for the whole suite."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import postgres


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, the backend flowctl runs on. (anyio's own default differs between releases: some
    also run every test on trio, which is not installed.)"""
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_store_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A FLOWCTL_STORE in the developer's shell would send every test's runs there; tests that want one set it."""
    monkeypatch.delenv("FLOWCTL_STORE", raising=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The URL of a PostgreSQL server for this test process: `FLOWCTL_TEST_PG` (CI starts one for the run), else a
    private one started here (skipped when PostgreSQL is not installed, unless `FLOWCTL_REQUIRE_PG=1`)."""
    given = os.environ.get("FLOWCTL_TEST_PG")
    if given:
        yield given
        return
    if postgres.pg_bin() is None:
        if os.environ.get("FLOWCTL_REQUIRE_PG") == "1":
            pytest.fail("FLOWCTL_REQUIRE_PG=1 but PostgreSQL's server programs are not installed")
        pytest.skip("PostgreSQL is not installed (initdb not found); set FLOWCTL_TEST_PG to use a server")
    # Not under pytest's tmp folder: that is private to root, and the server runs as the `postgres` user.
    folder = Path(tempfile.mkdtemp(prefix="flowctl-pg-"))
    try:
        yield postgres.start(folder)
    finally:
        postgres.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    with postgres.fresh_database(pg_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh run store as `--store` names it, once per kind: an SQLite file, and a fresh PostgreSQL database (for
    the tests of the CLI and the interpreter that must hold on both)."""
    if request.param == "sqlite":
        return str(tmp_path / "runs.db")
    url: str = request.getfixturevalue("pg_url")
    return url
