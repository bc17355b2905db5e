"""The tests' private PostgreSQL server answers, and each test gets its own empty database."""

from __future__ import annotations

import psycopg


def test_a_fresh_database_per_test_is_empty_and_writable(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        conn.execute("CREATE TABLE probe (n int)")
        conn.execute("INSERT INTO probe VALUES (1)")
        assert conn.execute("SELECT n FROM probe").fetchone() == (1,)
