"""Errors are plain data that survive pickling (a worker process hands them to another, a queue stores them)."""

from __future__ import annotations

import pickle

import pytest

from flowctl.dsl.diagnostics import Span
from flowctl.interpreter.errors import FlowctlError, ProviderError, RateLimited, ResumeRefused, StepFailed, ToolTimeout
from flowctl.interpreter.persistence.store_errors import ClaimLost, RunBusy, StoreError

SPAN = Span("p.yaml", 3, 5, 3, 9)

ERRORS = [
    StepFailed("plan/llm#0", RateLimited("slow down", span=SPAN, retry_after=2.0), attempts=3, span=SPAN),
    StepFailed("a", StepFailed("a/b", ToolTimeout("no answer")), attempts=1),
    RunBusy("r-1", "host:123"),
    ResumeRefused("step 'a' changed"),
    ProviderError("boom"),
    StoreError("/tmp/runs.db", "the disk is full", "free some space", run_id="r-2"),
    ClaimLost("r-3", "elsewhere:7"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_an_error_pickles_whole(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert copy.__dict__.keys() == error.__dict__.keys()
    if isinstance(error, FlowctlError):
        assert isinstance(copy, FlowctlError) and copy.to_json() == error.to_json()
    if isinstance(error, StepFailed):
        assert isinstance(copy, StepFailed) and type(copy.cause) is type(error.cause)
        assert copy.attempts == error.attempts and copy.retryable == error.retryable
    if isinstance(error, ClaimLost):
        assert isinstance(copy, ClaimLost) and (copy.run_id, copy.owner) == ("r-3", "elsewhere:7")
    if isinstance(error, StoreError):
        assert isinstance(copy, StoreError) and copy.run_id == "r-2" and copy.path == error.path
