"""The OpenTelemetry tests need the `otel` extra (in `dev`); without it they are not collected, so that a venv with
only the core dependencies still runs the rest of the suite. `traced`: a `TraceReporter` on an in-memory exporter."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest


def _has_sdk() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.sdk") is not None
    except ModuleNotFoundError:
        return False


collect_ignore_glob = [] if _has_sdk() else ["test_*.py"]


@pytest.fixture
def exporter() -> Iterator[Any]:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    yield memory
    memory.shutdown()
