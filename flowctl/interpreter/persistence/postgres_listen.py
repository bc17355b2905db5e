"""Signals that wake the runs they are for at once, on PostgreSQL (LISTEN/NOTIFY): `send_signal` notifies the
channel in the signal's transaction (postgres_schema.NOTIFY_SIGNAL, the run id as the payload), and a store's waiting
runs share one listening connection per event loop, whose reader task wakes the runs each notice names.

A run still reads its signals from the store, in commit order; a wake-up only says when to read. So a lost notice
(a dropped connection) costs latency, never a signal: the runner polls meanwhile (runner._poll_signals).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from flowctl.interpreter.persistence import postgres_schema as schema

Fail = Callable[[BaseException], BaseException]


class SignalListener:
    """One LISTEN connection and the runs waiting on it (in one event loop). Made by `open`, closed by its last
    run's `aclose`."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], fail: Fail, forget: Callable[[], None]) -> None:
        self._conn = conn
        self._fail = fail
        self._forget = forget  # the store drops it, so that the next run opens a new one
        self._waiting: dict[str, set[RunNotices]] = {}
        self.error: BaseException | None = None  # why it stopped listening (a StoreError): every wait raises it
        self.closed = False  # its last run left: the next one opens another
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="flowctl-signal-listener")

    @classmethod
    async def open(cls, connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]], fail: Fail,
                   forget: Callable[[], None]) -> SignalListener:  # fmt: skip
        try:
            conn = await connect()
        except psycopg.Error as exc:
            raise fail(exc) from None
        try:
            await conn.execute(schema.LISTEN_SIGNALS)
        except BaseException as exc:
            await conn.close()
            raise fail(exc) from None
        return cls(conn, fail, forget)

    def notices(self, run_id: str) -> RunNotices:
        """Wake-ups for `run_id` from now on."""
        notices = RunNotices(self, run_id)
        self._waiting.setdefault(run_id, set()).add(notices)
        return notices

    async def _read(self) -> None:
        try:
            async for notice in self._conn.notifies():
                for notices in self._waiting.get(notice.payload, ()):
                    notices.woken.set()
        except psycopg.Error as exc:
            self.error = self._fail(exc)
            self._forget()
            for waiting in self._waiting.values():
                for notices in waiting:
                    notices.woken.set()  # each wait raises the error, and its run polls instead

    async def drop(self, notices: RunNotices) -> None:
        """A run stops listening; the last one closes the listener."""
        waiting = self._waiting.get(notices.run_id)
        if waiting is not None:
            waiting.discard(notices)
            if not waiting:
                del self._waiting[notices.run_id]
        if self._waiting or self.closed:
            return
        self.closed = True
        if self.error is None:
            self._forget()
        self._reader.cancel()
        try:
            await asyncio.wait([self._reader])
        finally:
            await self._conn.close()


class RunNotices:
    """`store.SignalNotices` of one run, on a shared listener."""

    def __init__(self, listener: SignalListener, run_id: str) -> None:
        self.listener = listener
        self.run_id = run_id
        self.woken = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.woken.wait(), timeout)
        if self.listener.error is not None:
            raise self.listener.error
        woken = self.woken.is_set()
        self.woken.clear()
        return woken

    async def aclose(self) -> None:
        await self.listener.drop(self)
