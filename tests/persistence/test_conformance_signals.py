"""Signals, for every backend: positions are per run and strictly increasing in commit order, a reader following
the cursor (`signals(run, after=last position)`) gets every signal exactly once, also while several writers —
threads and processes, each with its own handle — send at once."""

from __future__ import annotations

import threading

import pytest

from flowctl.interpreter.persistence.store import RunStore, Signal
from tests.persistence.backends import StoreFactory
from tests.persistence.helpers import create, poll, read_line, spawn

PER_WRITER = 25


def test_positions_are_per_run_and_increase(store: RunStore) -> None:
    create(store)
    create(store, "r-2")
    first = store.send_signal("r-1", "approve", {"ok": True})
    other = store.send_signal("r-2", "other", None)
    second = store.send_signal("r-1", "note", "text")
    assert first < second
    signals = store.signals("r-1")
    assert [(s.run_id, s.position, s.name, s.data) for s in signals] == [
        ("r-1", first, "approve", {"ok": True}),
        ("r-1", second, "note", "text"),
    ]
    assert [(s.position, s.name, s.data) for s in store.signals("r-2")] == [(other, "other", None)]
    assert store.signals("r-1", after=first) == signals[1:]
    assert store.signals("r-1", after=second) == []
    assert signals[0].at <= signals[1].at


def test_a_signal_for_an_unknown_run_is_refused(store: RunStore) -> None:
    with pytest.raises(KeyError):
        store.send_signal("missing", "x", None)
    assert store.signals("missing") == []


def test_a_signal_is_durable_on_return_for_every_handle(store_factory: StoreFactory, store: RunStore) -> None:
    create(store)
    position = store_factory.open().send_signal("r-1", "go", [1, "two"])
    assert [(s.position, s.data) for s in store.signals("r-1")] == [(position, [1, "two"])]


def test_concurrent_writers_deliver_every_signal_once_to_a_cursor(store_factory: StoreFactory) -> None:
    reader = store_factory.open()
    create(reader)
    senders = [spawn(store_factory, "signals", "r-1", f"process{index}", str(PER_WRITER)) for index in range(2)]
    threads = [threading.Thread(target=send_from_a_thread, args=(store_factory.open(), f"thread{index}"))
               for index in range(2)]  # fmt: skip
    for thread in threads:
        thread.start()
    received: list[Signal] = []
    total = PER_WRITER * (len(senders) + len(threads))

    def follow() -> bool:  # what `wait` does: read past the cursor, move it to the last position read
        received.extend(reader.signals("r-1", after=received[-1].position if received else 0))
        return len(received) >= total

    try:
        poll(follow, what=f"{total} signals")
        assert [read_line(sender) for sender in senders] == ["sent", "sent"]
    finally:
        for thread in threads:
            thread.join()
        for sender in senders:
            sender.communicate(timeout=60)
    follow()  # nothing more arrives
    positions = [signal.position for signal in received]
    assert positions == sorted(set(positions))  # strictly increasing: none read twice
    assert sorted(signal.name for signal in received) == sorted(
        f"{writer}-{index}" for writer in ("process0", "process1", "thread0", "thread1") for index in range(PER_WRITER)
    )
    assert reader.signals("r-1") == received  # the cursor skipped none
    for writer in ("process0", "thread1"):  # each writer's signals are in the order it sent them
        mine = [signal.data["index"] for signal in received if signal.data["from"] == writer]
        assert mine == list(range(PER_WRITER))


def send_from_a_thread(store: RunStore, prefix: str) -> None:
    for index in range(PER_WRITER):
        store.send_signal("r-1", f"{prefix}-{index}", {"from": prefix, "index": index})
