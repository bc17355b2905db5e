"""The `store_factory` fixture: every conformance test runs once per store backend in backends.BACKENDS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flowctl.interpreter.persistence.store import RunStore
from tests.persistence.backends import BACKENDS, StoreFactory


@pytest.fixture(params=sorted(BACKENDS))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    factory = BACKENDS[request.param](tmp_path, request)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> RunStore:
    """One handle on a fresh store."""
    return store_factory.open()
