"""Fixtures for the whole suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, the backend flowctl runs on. (anyio's own default differs between releases: some
    also run every test on trio, which is not installed.)"""
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_store_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A FLOWCTL_STORE in the developer's shell would send every test's runs there; tests that want one set it."""
    monkeypatch.delenv("FLOWCTL_STORE", raising=False)
