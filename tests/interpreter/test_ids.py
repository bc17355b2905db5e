"""Run ids (persistence/ids.py): `r-` and a lowercase ULID, unique, and sorted by creation time within a process
and across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from hypothesis import given
from hypothesis import strategies as st

from flowctl.interpreter.persistence.ids import RANDOM_BITS, RUN_ID, RunIds, created_ms, decode, encode, new_run_id

ULID_BITS = 128


def test_a_run_id_is_r_and_a_26_digit_lowercase_crockford_ulid() -> None:
    run_id = new_run_id()
    assert len(run_id) == 28
    assert run_id.startswith("r-")
    assert RUN_ID.fullmatch(run_id)
    assert set(run_id[2:]) <= set("0123456789abcdefghjkmnpqrstvwxyz")  # no i, l, o, u, no upper case
    assert "/" not in run_id  # a child run's id is `<root>/<step path>`


def test_a_run_id_carries_the_time_it_was_made() -> None:
    before = time.time_ns() // 1_000_000
    run_id = new_run_id()
    after = time.time_ns() // 1_000_000
    assert before <= created_ms(run_id) <= after + 1  # +1: a later id of the same millisecond carries into the time


def test_ids_of_one_process_are_unique_and_sort_in_the_order_they_were_made() -> None:
    ids = [new_run_id() for _ in range(20_000)]  # many share a millisecond: the monotonic rule orders them
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert len({created_ms(i) for i in ids}) < len(ids)  # the case the rule is for did happen


def test_ids_made_on_several_threads_are_unique_and_each_thread_sees_them_increase() -> None:
    made: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(new_run_id() for _ in range(2_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for out in made for i in out]
    assert len(set(every)) == len(every)
    assert all(out == sorted(out) for out in made)


def test_ids_have_80_random_bits_each_millisecond() -> None:
    """The first id of a millisecond draws 80 fresh bits: across many, every one of the 80 bits is seen both 0 and 1,
    and no bit of the time field is touched."""
    firsts: list[int] = []
    last_ms = -1
    while len(firsts) < 200:
        value = decode(new_run_id())
        if value >> RANDOM_BITS != last_ms:
            last_ms = value >> RANDOM_BITS
            firsts.append(value & ((1 << RANDOM_BITS) - 1))
    ones = zeros = 0
    for value in firsts:
        ones |= value
        zeros |= ~value & ((1 << RANDOM_BITS) - 1)
    assert ones == zeros == (1 << RANDOM_BITS) - 1


def test_ids_from_separate_processes_do_not_collide_and_a_forked_child_draws_afresh() -> None:
    code = "from flowctl.interpreter.persistence.ids import new_run_id\nprint(*(new_run_id() for _ in range(500)))"
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True) for _ in range(3)]
    every = [i for r in runs for i in r.stdout.split()]
    assert len(every) == 1_500 and len(set(every)) == 1_500

    maker = RunIds(now_ms=lambda: 1_700_000_000_000)  # one millisecond throughout: the parent goes on from last + 1
    last = maker.new()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, maker.new().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    assert RUN_ID.fullmatch(child) and created_ms(child) == 1_700_000_000_000
    assert decode(maker.new()) == decode(last) + 1
    assert decode(child) != decode(last) + 1


def test_within_one_millisecond_or_when_the_clock_steps_back_an_id_is_the_last_plus_one() -> None:
    now = [1_700_000_000_000]
    maker = RunIds(now_ms=lambda: now[0])
    first = decode(maker.new())
    assert [decode(maker.new()) for _ in range(3)] == [first + 1, first + 2, first + 3]
    now[0] -= 5_000  # an NTP step back
    assert decode(maker.new()) == first + 4
    now[0] += 10_000
    later = decode(maker.new())
    assert later >> RANDOM_BITS == 1_700_000_005_000  # a new millisecond draws afresh


@given(
    st.integers(min_value=0, max_value=(1 << ULID_BITS) - 1), st.integers(min_value=0, max_value=(1 << ULID_BITS) - 1)
)
def test_encoding_keeps_the_order_of_the_numbers(a: int, b: int) -> None:
    assert len(encode(a)) == 26
    assert decode("r-" + encode(a)) == a
    assert (encode(a) < encode(b)) == (a < b)
