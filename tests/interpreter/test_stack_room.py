"""A run allocates no frame-stack chunk per step, however deep its caller started it (flowctl.interpreter.engine.
stack_room: CPython 3.11/3.12 free a 16 KiB chunk of the frame stack as soon as the stack returns below it, so a loop
started at an unlucky depth paid an `mmap` and a `munmap` for each of many calls a step).

Observed from outside, as a user would see it: `strace` counts the 16 KiB anonymous mappings of a process that runs a
40-step and then a 160-step chain through `flowctl.run_sync` from several call depths. With the loop started where
it was before (measured when this was written), one of these depths made 70 chunk allocations a step and others
thousands during the run's imports; the count must not grow with the steps at any depth."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _strace_works() -> bool:
    """strace is installed and may trace here (a container may forbid ptrace)."""
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-f", "-o", "/dev/null", "true"], capture_output=True, timeout=60)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(
    sys.implementation.name != "cpython" or not _strace_works(), reason="needs CPython and a working strace"
)

PROBE = """\
import sys
import flowctl
depth, pipeline, store, fixture = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
def deeper(k):
    return deeper(k - 1) if k else flowctl.run_sync(pipeline, {}, store=store, scripted=fixture)
assert deeper(depth).status.value == "succeeded"
"""

CHUNK_MAPPING = "16384, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS"


def chain(steps: int) -> str:
    lines = ["flowctl: 1", f"name: chain-{steps}", "agents:", "  echo: {instruction: You repeat what you are given.}"]
    lines += ["steps:", '  - {id: s0, agent: echo, prompt: "start"}']
    lines += [
        f'  - {{id: s{i}, agent: echo, prompt: "Go on from this: {{{{ steps.s{i - 1}.output }}}}. Step {i}."}}'
        for i in range(1, steps)
    ]
    return "\n".join(lines) + "\n"


def chunk_mappings(tmp_path: Path, depth: int, pipeline: Path) -> int:
    trace = tmp_path / f"trace-{depth}-{pipeline.stem}"
    store = tmp_path / f"runs-{depth}-{pipeline.stem}.db"
    probe = [sys.executable, str(tmp_path / "probe.py"), str(depth), str(pipeline), str(store)]
    subprocess.run(
        ["strace", "-f", "-e", "trace=mmap", "-o", str(trace), *probe, str(tmp_path / "fixture.yaml")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return sum(CHUNK_MAPPING in line for line in trace.read_text().splitlines())


def test_a_run_allocates_no_stack_chunk_per_step_at_any_depth(tmp_path: Path) -> None:
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "fixture.yaml").write_text("default: ok\n")
    short, long = tmp_path / "short.yaml", tmp_path / "long.yaml"
    short.write_text(chain(40))
    long.write_text(chain(160))
    for depth in (0, 30, 60, 90, 120, 150):
        extra = chunk_mappings(tmp_path, depth, long) - chunk_mappings(tmp_path, depth, short)
        assert extra <= 3, f"started {depth} frames deep, 120 more steps allocated {extra} stack chunks"
