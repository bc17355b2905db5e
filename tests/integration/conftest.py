"""Fixtures of the integration tests (see helpers.py): a local OpenAI-compatible server, a per-test process marker
checked after every test, and `flow`, which runs pipeline templates with the real interpreter.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import Flow, processes_with
from tests.support.openai_server import OpenAIServer, running_openai_server


@pytest.fixture
def llm() -> Iterator[OpenAIServer]:
    with running_openai_server() as server:
        yield server


@pytest.fixture
def marker() -> str:
    return f"flowctl-it-{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def no_server_left(marker: str) -> Iterator[None]:
    """After every test, no server process started for it is left running."""
    yield
    assert processes_with(marker) == [], f"server processes left running after the test (marker {marker})"


@pytest.fixture
def flow(tmp_path: Path, llm: OpenAIServer, marker: str) -> Iterator[Flow]:
    runner = Flow(tmp_path, llm, marker)
    yield runner
    for store in runner.stores:
        store.close()
