"""The reference MCP server, `@modelcontextprotocol/server-everything` from the npm registry, for the acceptance
tests: installed once into `.cache/mcp-acceptance` under the repository (ignored by git; `.ci/run` installs it
before the tests, and `FLOWCTL_EVERYTHING_DIR` names another folder), served over stdio and streamable HTTP.

The tests are skipped, saying why, only when the package cannot be installed (no node/npm, no registry). The
Python reference server `mcp-server-time` (test_reference_servers.py) comes with the dev extra and needs nothing more.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.helpers import processes_with, wait_until_gone
from tests.support.net import free_port, wait_listening
from tests.support.openai_server import OpenAIServer, running_openai_server

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "@modelcontextprotocol/server-everything"
VERSION = "2026.8.31"  # the release these tests were written against (its tools' names and texts)
INSTALL_TIMEOUT = 600.0


def _install_dir() -> Path:
    return Path(os.environ.get("FLOWCTL_EVERYTHING_DIR") or REPO / ".cache" / "mcp-acceptance")


def _entry(folder: Path) -> Path:
    return folder / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"


@pytest.fixture(scope="session")
def everything() -> Path:
    """The server's `dist/index.js`, installed with npm if it is not there yet."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"{PACKAGE} needs node and npm, which are not on PATH")
    folder = _install_dir()
    entry = _entry(folder)
    if not entry.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(
                [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", f"{PACKAGE}@{VERSION}"],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"`npm install {PACKAGE}` did not finish within {INSTALL_TIMEOUT:g}s")
        if done.returncode != 0 or not entry.is_file():
            pytest.skip(f"`npm install {PACKAGE}` failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return entry


@dataclass(frozen=True)
class Endpoint:
    """How a pipeline reaches the server: the YAML of its server block (without the name)."""

    transport: str
    block: str
    marker: str


@pytest.fixture
def marker() -> Iterator[str]:
    tag = f"flowctl-acc-{uuid.uuid4().hex[:12]}"
    yield tag
    left = wait_until_gone(tag, timeout=30.0)
    assert left == [], f"server processes left running after the test (marker {tag})"


@pytest.fixture(scope="session")
def node_flags() -> list[str]:
    """Node reserves ~10 GB of address space per WebAssembly instance (its HTTP parser is one) unless told not to:
    under `ulimit -v` (as the suite may run) the HTTP server would die at its first request."""
    node = shutil.which("node")
    assert node is not None
    flag = "--disable-wasm-trap-handler"
    known = subprocess.run([node, flag, "-e", "0"], capture_output=True, timeout=60).returncode == 0
    return [flag] if known else []


@pytest.fixture(params=["stdio", "streamable_http"])
def endpoint(
    request: pytest.FixtureRequest, everything: Path, marker: str, node_flags: list[str]
) -> Iterator[Endpoint]:
    """server-everything over stdio (flowctl starts it) or streamable HTTP (started here, on a free port)."""
    node = shutil.which("node")
    assert node is not None
    if request.param == "stdio":
        args = ", ".join(f'"{arg}"' for arg in [*node_flags, str(everything), "stdio"])
        block = f'command: "{node}"\n    args: [{args}]\n    env: {{FLOWCTL_MARKER: "{marker}"}}'
        yield Endpoint("stdio", block, marker)
        return
    port = free_port()
    process = subprocess.Popen(
        [node, *node_flags, str(everything), "streamableHttp"],
        env=os.environ | {"PORT": str(port), "FLOWCTL_MARKER": marker},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, process)
        yield Endpoint("streamable_http", f'url: "http://127.0.0.1:{port}/mcp"', marker)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    assert processes_with(marker) == [] or wait_until_gone(marker, timeout=30.0) == []


@pytest.fixture
def llm() -> Iterator[OpenAIServer]:
    with running_openai_server() as server:
        yield server
