"""Concurrency caps shared by every worker: a model's or a server's `concurrency: N` as N leased rows of
`flowctl_scale_slots` (cap `model:NAME` / `server:NAME`, slot 0…N-1). A call takes a free or expired row (`FOR UPDATE
SKIP LOCKED`), holds it while it runs, and gives it back; a worker renews the leases of the slots it holds with its
heartbeat, so a killed worker's slots come free after the lease. The run's own cap (`concurrency:` at the top of a
pipeline) stays in the process: a run runs on one worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio

_ENSURE = """INSERT INTO flowctl_scale_slots (cap, slot) SELECT %s, n FROM generate_series(0, %s - 1) AS n
    ON CONFLICT (cap, slot) DO NOTHING"""
_TAKE = """UPDATE flowctl_scale_slots SET holder = %s, expires_at = now() + make_interval(secs => %s)
    WHERE (cap, slot) = (
        SELECT cap, slot FROM flowctl_scale_slots
        WHERE cap = %s AND slot < %s AND (holder IS NULL OR expires_at < now())
        ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING slot"""
_GIVE_BACK = """UPDATE flowctl_scale_slots SET holder = NULL, expires_at = NULL
    WHERE cap = %s AND slot = %s AND holder = %s"""
_RENEW = "UPDATE flowctl_scale_slots SET expires_at = now() + make_interval(secs => %s) WHERE holder = %s"
_WAIT_MIN, _WAIT_MAX = 0.02, 0.5  # seconds between looks for a free slot


class SharedCaps:
    """`concurrency.Caps` kept in PostgreSQL: `slot(key, total)` for the duration of a call, across workers."""

    def __init__(self, conn: Any, holder: str, lease: float) -> None:
        self.conn = conn  # an autocommit psycopg AsyncConnection of its own
        self.holder = holder
        self.lease = lease
        self._ensured: set[tuple[str, int]] = set()
        self._lock = asyncio.Lock()  # one query at a time on the connection

    def slot(self, key: str, total: int) -> AbstractAsyncContextManager[None]:
        return self._held(key, total)

    @asynccontextmanager
    async def _held(self, key: str, total: int) -> AsyncIterator[None]:
        number = await self._take(key, total)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await self._query(_GIVE_BACK, (key, number, self.holder))

    async def _take(self, key: str, total: int) -> int:
        if (key, total) not in self._ensured:
            await self._query(_ENSURE, (key, total))
            self._ensured.add((key, total))
        wait = _WAIT_MIN
        while True:
            with anyio.CancelScope(shield=True):  # a slot taken is a slot given back: never lost to a cancellation
                row = await self._query(_TAKE, (self.holder, self.lease, key, total))
            if row is not None:
                return int(row[0])
            await asyncio.sleep(wait)  # every slot is in use: look again (a freed one is taken by whoever looks first)
            wait = min(wait * 2, _WAIT_MAX)

    async def renew(self) -> None:
        """Keep this worker's slots leased (called with its heartbeat)."""
        await self._query(_RENEW, (self.lease, self.holder))

    async def _query(self, sql: str, params: tuple[Any, ...]) -> Any:
        async with self._lock:
            cursor = await self.conn.execute(sql, params)
            return await cursor.fetchone() if cursor.description else None
