"""Event loops started from the bottom of a fresh, roomy chunk of CPython's frame stack.

CPython (3.11 and 3.12; fixed by a one-chunk cache in later 3.13 and 3.14 releases, CPython issue gh-142183) keeps
Python frames in 16 KiB chunks and frees a chunk as soon as the stack returns below it. A loop that, call after call,
reaches just past a chunk's end pays an `mmap` and a `munmap` each time. Where that end falls depends on how deep the
loop was started, which the caller decides: measured on this machine with the same 300-call chain against a local
OpenAI-compatible server, started at different depths, from none to about 1,000 chunk allocations a model call (that
run took 2.7× as long); the bare OpenAI client, started the same ways, from none to about 280.

So flowctl starts its event loops (`flowctl run`, `resume`, `test`, `serve`, `worker`, `flowctl.run_sync`) through a
frame too large for any partly used chunk: CPython puts it at the start of a fresh 128 KiB chunk, and the loop's
frames get the ~64 KiB behind it, well past the depth a run's calls reach (measured: none past 30 KiB). Whatever the
caller's depth, a run then allocates no chunk per call. An embedder's own loop (`await flowctl.run(...)`) is theirs
to start.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

ROOMY_FRAME_WORDS = 8192  # value-stack slots of the starting frame: 64 KiB, so CPython gives it a 128 KiB chunk


def _call(function: Callable[[], Any]) -> Any:
    return function()


# The same function with a value stack far larger than it uses: the frame's size, not its work, is the point.
_roomy_call: Callable[[Callable[[], Any]], Any] = (
    types.FunctionType(_call.__code__.replace(co_stacksize=ROOMY_FRAME_WORDS), _call.__globals__, "_roomy_call")
    if sys.implementation.name == "cpython"
    else _call
)


def with_stack_room(function: Callable[[], T]) -> T:
    """`function()`, called from the bottom of a fresh chunk of CPython's frame stack (see the module docstring)."""
    result: T = _roomy_call(function)
    return result


__all__ = ["ROOMY_FRAME_WORDS", "with_stack_room"]
