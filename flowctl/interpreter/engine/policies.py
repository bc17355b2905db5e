"""Failure policies that wrap handlers: retry with backoff and jitter, per-attempt timeout, overall deadline, and
circuit breakers per provider or server. Handlers never retry on their own; decisions use `retryable`, never class
names, and cancellation is never retried.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from flowctl.dsl.ir import CircuitBreakerSpec, RetryPolicy
from flowctl.interpreter.clock import SYSTEM_CLOCK, Clock
from flowctl.interpreter.errors import CircuitOpen, FlowctlError, StepTimeout
from flowctl.interpreter.reporting import Retry

T = TypeVar("T")


RETRY_AFTER_CAP = 60.0  # seconds: the longest a server's Retry-After makes one retry wait (unless max_delay is longer)


def backoff_delay(policy: RetryPolicy, attempt: int, error: FlowctlError, rng: random.Random) -> float:
    """Delay before attempt `attempt + 1`. A server's Retry-After hint wins when it asks for longer, up to a cap
    (a server asking for an hour must not park the run for an hour; the openai SDK caps it at 60 s too)."""
    exponent = 0 if policy.backoff == "fixed" else attempt - 1
    delay = policy.initial_delay * (2**exponent)
    delay = min(delay, policy.max_delay)
    if policy.jitter:
        delay *= 0.5 + rng.random() / 2  # "equal jitter": spreads retries without ever waiting less than half
    if error.retry_after is not None:
        delay = max(delay, min(error.retry_after, max(policy.max_delay, RETRY_AFTER_CAP)))
    return delay


def retry_notice(policy: RetryPolicy, attempt: int, error: FlowctlError, delay: float) -> Retry:
    """What progress output says about a retry: the failed attempt, why (the HTTP status when there is one, else the
    error's code) and the wait before the next."""
    status = getattr(error, "status", None)
    reason = str(status) if status is not None else error.code
    return Retry(attempt, policy.max_attempts, reason, error.message, delay)


async def with_timeout(clock: Clock, timeout: float | None, what: str, call: Callable[[], Awaitable[T]]) -> T:
    if timeout is None:
        return await call()
    # A bare cancel scope (the system clock's move_on_after) costs ~4 µs against ~6 µs for fail_after; it only
    # reports its own expiry.
    with clock.move_on_after(timeout) as scope:
        return await call()
    if scope.cancelled_caught:
        raise StepTimeout(f"{what} timed out after {timeout:g}s")
    raise AssertionError("unreachable: the scope either returned or was cancelled")  # pragma: no cover


class CircuitBreaker:
    """Closed → open after N consecutive failures → half-open after `reset_after` (one trial call) → closed."""

    def __init__(self, name: str, spec: CircuitBreakerSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.spec = spec
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trial_in_flight = False
        self.transitions: list[str] = []

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.spec.reset_after else "open"

    def before_call(self) -> None:
        state = self.state
        if state == "open" or (state == "half-open" and self.trial_in_flight):
            assert self.opened_at is not None
            remaining = self.spec.reset_after - (self.clock() - self.opened_at)
            raise CircuitOpen(
                f"circuit breaker for {self.name} is open after {self.failures} consecutive failures; "
                f"next trial in {max(remaining, 0):.1f}s",
                retry_after=max(remaining, 0),
            )
        if state == "half-open":
            self.trial_in_flight = True

    def on_success(self) -> None:
        if self.opened_at is not None:
            self.transitions.append("closed")
        self.failures, self.opened_at, self.trial_in_flight = 0, None, False

    def on_failure(self) -> None:
        self.failures += 1
        self.trial_in_flight = False
        if self.opened_at is not None or self.failures >= self.spec.failure_threshold:
            self.opened_at = self.clock()
            self.transitions.append("open")


class Breakers:
    """The circuit breakers of one run tree, by resource (`model:NAME`, `server:NAME`)."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.by_name: dict[str, CircuitBreaker] = {}
        self.clock = clock

    def get(self, name: str, spec: CircuitBreakerSpec | None) -> CircuitBreaker | None:
        if spec is None:
            return None
        breaker = self.by_name.get(name)
        if breaker is None:
            breaker = self.by_name[name] = CircuitBreaker(name, spec, self.clock.monotonic)
        return breaker

    async def guard(self, breaker: CircuitBreaker | None, call: Callable[[], Awaitable[T]]) -> T:
        if breaker is None:
            return await call()
        breaker.before_call()
        try:
            result = await call()
        except FlowctlError as exc:
            # only faults of the resource count, not a tool reporting a domain error or a bad request
            if exc.retryable or exc.code in ("server-start-error", "server-crashed", "tool-timeout"):
                breaker.on_failure()
            else:
                breaker.trial_in_flight = False
            raise
        except BaseException:
            breaker.trial_in_flight = False
            raise
        breaker.on_success()
        return result
