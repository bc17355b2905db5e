"""Time spent in the cyclic garbage collector, per generation, measured with `gc.callbacks` (no code changes)."""

from __future__ import annotations

import gc
import time
from types import TracebackType
from typing import Any


class GcMeter:
    """`with GcMeter() as gcm: ...` then `gcm.seconds`, `gcm.collections` (by generation)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self.seconds_by_generation = [0.0, 0.0, 0.0]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        elapsed = time.perf_counter() - self._started
        generation = info["generation"]
        self.seconds += elapsed
        self.collections[generation] += 1
        self.seconds_by_generation[generation] += elapsed

    def __enter__(self) -> GcMeter:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        gc.callbacks.remove(self._callback)

    def describe(self) -> str:
        young, middle, full = self.collections
        return (
            f"{self.seconds * 1000:.0f} ms in the garbage collector "
            f"({young}/{middle}/{full} collections of generation 0/1/2; "
            f"generation 2: {self.seconds_by_generation[2] * 1000:.0f} ms)"
        )
