"""Structured-concurrency helpers: task groups whose failures surface as the typed error, not an ExceptionGroup.

anyio 4 wraps every task-group failure in an ExceptionGroup; our policies decide on the typed FlowctlError inside,
so we unwrap to the first real error (cancellations are not errors and are never the one chosen).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup


def primary_error(group: BaseExceptionGroup) -> BaseException:
    """The first non-cancellation exception in a (nested) group, else the first exception."""
    cancelled = anyio.get_cancelled_exc_class()
    for exc in group.exceptions:
        inner = primary_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if not isinstance(inner, cancelled):
            return inner
    first = group.exceptions[0]
    return primary_error(first) if isinstance(first, BaseExceptionGroup) else first


@asynccontextmanager
async def task_group() -> AsyncIterator[TaskGroup]:
    try:
        async with anyio.create_task_group() as tg:
            yield tg
    except BaseExceptionGroup as group:
        error = primary_error(group)
        if isinstance(error, anyio.get_cancelled_exc_class()):
            raise
        raise error from None
