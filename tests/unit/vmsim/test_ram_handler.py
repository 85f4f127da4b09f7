"""RamSaveHandler: the migration bitmap, scanning, zero pages, runs, counters and loading."""

from __future__ import annotations

import numpy as np
import pytest

from vmsim import (
    MAX_RUN_PAGES,
    PAGE_SIZE,
    GuestRam,
    NotAllowed,
    PageBatch,
    PageKind,
    RamError,
    RamSaveHandler,
)
from vmsim.savevm.ram_handler import _coalesce

N_PAGES = 32


@pytest.fixture
def ram():
    ram = GuestRam(N_PAGES * PAGE_SIZE)
    ram.array[::PAGE_SIZE] = 1  # byte 0 set: every page is non-zero
    return ram


def runs(batch):
    return list(
        zip(batch.first_pfns.tolist(), batch.n_pages.tolist(), batch.kinds.tolist(), strict=True)
    )


def test_first_pass_sends_everything_in_runs(ram):
    ram.pages[4:7] = 0
    ram.pages[9, 100] = 5
    ram.pages[9, 0] = 0  # word 0 is zero but the page is not
    handler = RamSaveHandler(ram)
    handler.save_setup()
    batch = handler.save_live_iterate(N_PAGES)

    assert runs(batch) == [(0, 4, 1), (4, 3, 2), (7, 25, 1)]
    assert (batch.normal_pages, batch.zero_pages) == (29, 3)
    assert [view.nbytes for view in batch.data] == [4 * PAGE_SIZE, 25 * PAGE_SIZE]
    assert handler.save_live_iterate(N_PAGES) is None


def test_batch_data_are_read_only_views_of_guest_ram(ram):
    handler = RamSaveHandler(ram)
    handler.save_setup()
    batch = handler.save_live_iterate(2)
    ram.array[0] = 99

    assert batch.data[0].readonly
    assert batch.data[0][0] == 99
    assert (np.uint32, np.uint16, np.uint8) == (
        batch.first_pfns.dtype,
        batch.n_pages.dtype,
        batch.kinds.dtype,
    )


def test_scan_resumes_where_it_stopped_and_wraps(ram):
    handler = RamSaveHandler(ram)
    handler.save_setup()
    first = handler.save_live_iterate(20)
    ram.write_bytes(2 * PAGE_SIZE, b"again")
    ram.write_bytes(25 * PAGE_SIZE, b"again")
    handler.state_pending_exact()
    second = handler.save_live_iterate(N_PAGES)

    assert runs(first) == [(0, 20, 1)]
    # 20..31 were still to send; 25 was already in the bitmap; 2 comes after the wrap.
    assert runs(second) == [(20, 12, 1), (2, 1, 1)]
    assert handler.complete_rounds == 1


def test_sync_counters(ram):
    handler = RamSaveHandler(ram)
    handler.save_setup()
    handler.save_live_iterate(10)
    ram.write_bytes(0, b"x")  # already sent: newly dirty
    ram.write_bytes(20 * PAGE_SIZE, b"x")  # still in the bitmap: not new
    pending = handler.state_pending_exact()
    stats = handler.stats()

    assert pending == (N_PAGES - 10 + 1) * PAGE_SIZE
    assert 2 == handler.dirty_sync_count == stats.dirty_sync_count
    assert 1 == handler.dirty_pages_last_sync == stats.dirty_pages_last_sync
    assert 2 == stats.logged_pages_last_sync  # the guest wrote two pages: its dirty rate
    assert pending == stats.dirty_bytes_last_sync == stats.remaining_bytes
    assert (stats.normal_pages, stats.zero_pages, stats.normal_bytes) == (10, 0, 10 * PAGE_SIZE)
    assert (stats.total_bytes, stats.page_size) == (N_PAGES * PAGE_SIZE, PAGE_SIZE)


def test_save_complete_syncs_once_then_drains(ram):
    handler = RamSaveHandler(ram)
    handler.save_setup()
    while handler.save_live_iterate(8) is not None:
        pass
    ram.write_bytes(5 * PAGE_SIZE, b"late")
    batch = handler.save_complete(8)

    assert runs(batch) == [(5, 1, 1)]
    assert handler.save_complete(8) is None
    assert handler.dirty_sync_count == 2


def test_use_before_setup_is_not_allowed(ram):
    handler = RamSaveHandler(ram)

    with pytest.raises(NotAllowed, match="before save_setup"):
        handler.save_live_iterate(1)
    handler.save_setup()
    handler.save_cleanup()
    assert not ram.dirty_log.active
    with pytest.raises(NotAllowed):
        handler.state_pending_exact()


def test_coalesce_splits_runs_longer_than_the_wire_allows():
    pfns = np.arange(10, 10 + 2 * MAX_RUN_PAGES + 5, dtype=np.intp)
    kinds = np.full(len(pfns), PageKind.ZERO, dtype=np.uint8)

    first, lengths, run_kinds = _coalesce(pfns, kinds)

    assert first.tolist() == [10, 10 + MAX_RUN_PAGES, 10 + 2 * MAX_RUN_PAGES]
    assert lengths.tolist() == [MAX_RUN_PAGES, MAX_RUN_PAGES, 5]
    assert run_kinds.tolist() == [2, 2, 2]


def test_load_setup_checks_the_size(ram):
    handler = RamSaveHandler(ram)

    with pytest.raises(RamError, match="Length mismatch: ram: 0x1000 in != 0x20000"):
        handler.load_setup({"ram_size": PAGE_SIZE, "page_size": PAGE_SIZE})
    with pytest.raises(RamError, match="page size"):
        handler.load_setup({"ram_size": ram.size_bytes, "page_size": 512})
    with pytest.raises(RamError, match="setup keys"):
        handler.load_setup({"ram_size": ram.size_bytes})


def batch(first, n_pages, kinds, data):
    return PageBatch(
        first_pfns=np.array(first, dtype=np.uint32),
        n_pages=np.array(n_pages, dtype=np.uint16),
        kinds=np.array(kinds, dtype=np.uint8),
        data=tuple(memoryview(d) for d in data),
        normal_pages=0,
        zero_pages=0,
    )


def test_load_state_writes_data_and_zero_runs(ram):
    handler = RamSaveHandler(ram)
    handler.load_state(batch([1, 3], [2, 1], [1, 2], [b"\x07" * 2 * PAGE_SIZE]))

    assert {7} == set(ram.array[PAGE_SIZE : 3 * PAGE_SIZE].tolist())
    assert not ram.pages[3].any()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (batch([31], [2], [2], []), "outside RAM"),
        (batch([1], [0], [2], []), "or empty"),
        (batch([1], [1], [3], []), "unknown page kind"),
        (batch([1], [1], [1], [b"short"]), "does not match"),
        (batch([1], [1], [1], []), "does not match"),
        (batch([1, 2], [1], [1], []), "differ in length"),
    ],
)
def test_load_state_refuses_bad_batches_and_writes_nothing(ram, bad, message):
    before = bytes(ram.view)

    with pytest.raises(RamError, match=message):
        RamSaveHandler(ram).load_state(bad)

    assert before == bytes(ram.view)


def test_many_scattered_runs_load_in_one_vectorised_step():
    source = GuestRam(512 * PAGE_SIZE)
    source.array[:] = 1
    source.pages[::3] = 0
    destination = GuestRam(512 * PAGE_SIZE)
    destination.array[:] = 9
    sender, receiver = RamSaveHandler(source), RamSaveHandler(destination)
    sender.save_setup()
    while sender.save_live_iterate(1 << 20) is not None:
        pass
    for pfn in range(0, 512, 5):
        source.write_bytes(pfn * PAGE_SIZE + 7, bytes([pfn % 256]))
    source.zero_page_set(np.arange(1, 512, 7))
    sender.state_pending_exact()
    batch = sender.save_live_iterate(1 << 20)
    receiver.load_state(batch)

    assert batch.n_runs > 16
    changed = sorted(set(range(0, 512, 5)) | set(range(1, 512, 7)))
    assert source.pages[changed].tolist() == destination.pages[changed].tolist()
