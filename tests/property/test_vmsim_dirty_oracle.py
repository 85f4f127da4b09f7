"""The dirty log and the RAM save handler against naive models (Firecracker's dump_dirty_oracle).

Random writes interleaved with syncs: every sync must return exactly the pages written since
the previous one. And a migration driven by many iterate/sync steps must leave the destination
with the source's newest contents, whatever the interleaving.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsim import PAGE_SIZE, GuestRam, RamSaveHandler

N_PAGES = 48
RAM_BYTES = N_PAGES * PAGE_SIZE

word_writes = st.tuples(
    st.just("words"),
    st.lists(st.integers(0, RAM_BYTES // 8 - 1), min_size=1, max_size=20, unique=True),
)
byte_writes = st.tuples(
    st.just("bytes"), st.tuples(st.integers(0, RAM_BYTES - 1), st.integers(1, 3 * PAGE_SIZE))
)
first_byte_adds = st.tuples(
    st.just("first"), st.tuples(st.integers(0, N_PAGES - 1), st.integers(1, N_PAGES))
)
zero_runs = st.tuples(st.just("zero"), st.tuples(st.integers(0, N_PAGES - 1), st.integers(1, 4)))
syncs = st.tuples(st.just("sync"), st.none())
operations = st.lists(
    st.one_of(word_writes, byte_writes, first_byte_adds, zero_runs, syncs), max_size=40
)


def apply(ram, operation, counter):
    """Do one write; return the pages it touches (the oracle's view)."""
    kind, argument = operation
    if kind == "words":
        words = np.array(argument, dtype=np.uint64)
        ram.write_words(words, words * np.uint64(counter + 1) + np.uint64(1))
        return {word * 8 // PAGE_SIZE for word in argument}
    if kind == "bytes":
        address, length = argument
        length = min(length, RAM_BYTES - address)
        ram.write_bytes(address, bytes([counter % 251 + 1]) * length)
        return set(range(address // PAGE_SIZE, (address + length - 1) // PAGE_SIZE + 1))
    first, count = argument
    count = min(count, N_PAGES - first)
    if kind == "first":
        ram.add_to_first_bytes(first, count, counter + 1)
    else:
        ram.zero_pages(first, count)
    return set(range(first, first + count))


@given(operations)
def test_sync_returns_exactly_the_pages_written_since_the_last_sync(ops):
    ram = GuestRam(RAM_BYTES)
    ram.dirty_log.start()
    expected: set[int] = set()
    for counter, operation in enumerate(ops):
        if operation[0] == "sync":
            assert sorted(expected) == np.flatnonzero(ram.dirty_log.sync()).tolist()
            expected = set()
        else:
            expected |= apply(ram, operation, counter)
            assert len(expected) == ram.dirty_log.count()
    assert sorted(expected) == np.flatnonzero(ram.dirty_log.sync()).tolist()


save_steps = st.lists(
    st.one_of(
        word_writes,
        byte_writes,
        first_byte_adds,
        zero_runs,
        st.tuples(st.just("iterate"), st.integers(1, 20)),
        st.tuples(st.just("exact"), st.none()),
    ),
    max_size=50,
)


@settings(max_examples=60)
@given(steps=save_steps, final_batch=st.integers(1, 64))
def test_precopy_sends_every_page_with_its_newest_contents(steps, final_batch):
    source = GuestRam(RAM_BYTES)
    source.array[::7] = 3  # some non-zero pages, some zero pages
    destination = GuestRam(RAM_BYTES)
    sender, receiver = RamSaveHandler(source), RamSaveHandler(destination)
    receiver.load_setup(sender.save_setup())
    for counter, step in enumerate(steps):
        kind, argument = step
        if kind == "iterate":
            batch = sender.save_live_iterate(argument)
            if batch is not None:
                assert argument >= batch.total_pages
                receiver.load_state(batch)
        elif kind == "exact":
            assert sender.state_pending_estimate() <= sender.state_pending_exact()
        else:
            apply(source, step, counter)
    while (batch := sender.save_complete(final_batch)) is not None:
        receiver.load_state(batch)
    sender.save_cleanup()

    assert sender.state_pending_estimate() == 0
    assert bytes(source.view) == bytes(destination.view)
