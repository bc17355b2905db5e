"""Ctrl-C and SIGTERM for the commands that run pipelines (`flowctl run`, `resume`, `test`).

The handler is a plain Python signal handler, so it runs even while the event loop is busy in synchronous work (a
template rendering): it tells renders in progress to stop (`interrupt_renders`) and asks the loop to cancel the work,
which then unwinds as cancelled (a run is marked cancelled and stays resumable).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

import anyio

from flowctl.dsl.sandbox import interrupt_renders
from flowctl.interpreter.engine.stack_room import with_stack_room

T = TypeVar("T")

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as shells report it


def run_interruptibly(start: Callable[[], Awaitable[T]]) -> tuple[T | None, signal.Signals | None]:
    """Run `start()` under anyio until it ends or SIGINT/SIGTERM arrives: (its result, None) or (None, the signal)."""
    received: list[signal.Signals] = []

    async def main() -> T | None:
        loop = asyncio.get_running_loop()
        with anyio.CancelScope() as scope:

            def on_signal(signum: int, _frame: object) -> None:
                received.append(signal.Signals(signum))
                loop.call_soon_threadsafe(scope.cancel)  # queued before renders see the flag: they wait for it
                interrupt_renders()

            previous = {signum: signal.signal(signum, on_signal) for signum in EXIT_CODES}
            try:
                return await start()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
        return None  # cancelled by a signal

    result = with_stack_room(partial(anyio.run, main))
    return (None, received[0]) if received else (result, None)


__all__ = ["EXIT_CODES", "run_interruptibly"]
