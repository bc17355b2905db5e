"""Fixtures for the whole suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, the backend flowctl runs on. (anyio's own default differs between releases: some
    also run every test on trio, which is not installed.)"""
    return "asyncio"
