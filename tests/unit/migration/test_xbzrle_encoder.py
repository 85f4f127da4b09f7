"""The source's XBZRLE cache: what it sends rebuilds guest RAM from the destination's copy."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from migration.xbzrle import XbzrleEncoder
from protocol import PageKind as WirePageKind
from protocol.xbzrle_batch import decode_batch
from vmsim import PAGE_SIZE, PageBatch, PageKind

N_PAGES = 64


def _ram(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (N_PAGES, PAGE_SIZE), dtype=np.uint8)


def _batch(runs: list[tuple[int, int, PageKind]]) -> PageBatch:
    return PageBatch(
        first_pfns=np.array([r[0] for r in runs], dtype=np.uint32),
        n_pages=np.array([r[1] for r in runs], dtype=np.uint16),
        kinds=np.array([r[2] for r in runs], dtype=np.uint8),
        data=(),  # the encoder reads guest RAM itself
        normal_pages=sum(r[1] for r in runs if r[2] == PageKind.NORMAL),
        zero_pages=sum(r[1] for r in runs if r[2] == PageKind.ZERO),
    )


def _receive(dest: np.ndarray, batch: PageBatch) -> None:
    """What a destination does with the batch: whole pages placed, zero runs, deltas applied."""
    kinds = batch.kinds
    whole = iter(batch.data)
    for first, count, kind in zip(
        batch.first_pfns.tolist(), batch.n_pages.tolist(), kinds.tolist(), strict=True
    ):
        if kind == PageKind.NORMAL:
            dest[first : first + count] = np.frombuffer(next(whole), dtype=np.uint8).reshape(
                count, PAGE_SIZE
            )
        elif kind == PageKind.ZERO:
            dest[first : first + count] = 0
    delta_runs = np.flatnonzero(kinds == WirePageKind.XBZRLE)
    if not len(delta_runs):
        assert batch.delta_lens is None
        return
    lengths = batch.delta_lens
    assert lengths is not None
    blob = np.frombuffer(next(whole), dtype=np.uint8)
    pfns = batch.first_pfns[delta_runs].astype(np.int64)
    decode_batch(dest, pfns, blob, np.cumsum(lengths) - lengths, lengths)


@pytest.mark.parametrize("cache_pages", [N_PAGES, N_PAGES // 4])
def test_passes_rebuild_the_guest_and_reuse_the_cache(cache_pages):
    ram, dest = _ram(), np.zeros((N_PAGES, PAGE_SIZE), dtype=np.uint8)
    encoder = XbzrleEncoder(ram, cache_pages * PAGE_SIZE)
    _receive(dest, encoder.encode(_batch([(0, N_PAGES, PageKind.NORMAL)])))
    assert (dest == ram).all()
    assert 0 == encoder.stats.pages  # nothing was cached yet
    ram[:, 5] += 1  # every page re-dirtied, a byte each
    ram[40:48] = 0
    batch = encoder.encode(_batch([(0, 40, PageKind.NORMAL), (40, 8, PageKind.ZERO)]))
    _receive(dest, batch)
    assert (dest[:48] == ram[:48]).all()
    # Each slot keeps the last page of the first pass that maps to it: with a quarter of a
    # cache, pages 48-63, none of which the second pass sends: all go whole.
    assert encoder.stats.pages == (40 if cache_pages == N_PAGES else 0)


def test_a_page_sent_as_zero_leaves_the_cache():
    ram, dest = _ram(), np.zeros((N_PAGES, PAGE_SIZE), dtype=np.uint8)
    encoder = XbzrleEncoder(ram, N_PAGES * PAGE_SIZE)
    _receive(dest, encoder.encode(_batch([(0, N_PAGES, PageKind.NORMAL)])))
    ram[3] = 0
    _receive(dest, encoder.encode(_batch([(3, 1, PageKind.ZERO)])))
    ram[3, 0] = 1  # a delta from the cached copy would now be wrong: it goes whole
    batch = encoder.encode(_batch([(3, 1, PageKind.NORMAL)]))
    assert batch.delta_lens is None
    _receive(dest, batch)
    assert (dest == ram).all()


def test_the_postcopy_push_leaves_the_cache_as_it_was():
    """After the switch every delta is from the copy sent before it, however often it is sent."""
    ram, dest = _ram(), np.zeros((N_PAGES, PAGE_SIZE), dtype=np.uint8)
    encoder = XbzrleEncoder(ram, N_PAGES * PAGE_SIZE)
    _receive(dest, encoder.encode(_batch([(0, N_PAGES // 2, PageKind.NORMAL)])))
    stale = dest.copy()
    ram[:, 100] += 1
    push = _batch([(0, N_PAGES, PageKind.NORMAL)])
    first, again = encoder.encode_frozen(push), encoder.encode_frozen(push)
    assert np.array_equal(first.delta_lens, again.delta_lens)  # the cache did not move
    assert N_PAGES // 2 == len(first.delta_lens)  # the other half was never sent: whole
    _receive(dest, first)
    assert (dest == ram).all()
    _receive(stale, again)  # a recovery: the copy the destination still holds is the same
    assert (stale == ram).all()


def test_whole_pages_of_the_push_are_views_of_guest_ram():
    ram = _ram()
    encoder = XbzrleEncoder(ram, 1 * PAGE_SIZE)  # page 0's slot only
    batch = encoder.encode_frozen(_batch([(8, 4, PageKind.NORMAL)]))
    assert batch.delta_lens is None
    (view,) = batch.data
    assert np.shares_memory(np.frombuffer(view, dtype=np.uint8), ram)


def test_a_frame_that_leaves_late_still_rebuilds_the_guest():
    """With a cache for all RAM whole pages are views of the cache: a frame still queued when
    the page is sent again goes out with the newer copy, and the deltas after it still fit."""
    ram, dest = _ram(), np.zeros((N_PAGES, PAGE_SIZE), dtype=np.uint8)
    encoder = XbzrleEncoder(ram, N_PAGES * PAGE_SIZE)
    first = encoder.encode(_batch([(0, N_PAGES, PageKind.NORMAL)]))
    ram[:, 7] += 1
    second = encoder.encode(_batch([(0, N_PAGES, PageKind.NORMAL)]))
    ram[::2, 9] += 1
    third = encoder.encode(_batch([(0, N_PAGES, PageKind.NORMAL)]))
    assert third.delta_lens is not None
    for batch in (first, second, third):  # the first two leave only now
        _receive(dest, batch)
    assert (dest == ram).all()


def test_the_cache_can_live_in_memory_faulted_in_ahead():
    ram, dest = _ram(), np.zeros((N_PAGES, PAGE_SIZE), dtype=np.uint8)
    encoder = XbzrleEncoder(ram, N_PAGES * PAGE_SIZE)
    assert not encoder.use_memory(np.zeros(PAGE_SIZE, dtype=np.uint8))  # not its size
    memory = np.full(N_PAGES * PAGE_SIZE, 9, dtype=np.uint8)  # a former migration's cache
    assert encoder.use_memory(memory)
    _receive(dest, encoder.encode(_batch([(0, N_PAGES, PageKind.NORMAL)])))
    assert 0 == encoder.stats.pages  # what the memory held was not taken for cached pages
    assert (memory.reshape(N_PAGES, PAGE_SIZE) == ram).all()  # the cache is in it now
    ram[:, 1] += 1
    batch = encoder.encode(_batch([(0, N_PAGES, PageKind.NORMAL)]))
    assert batch.delta_lens is not None
    _receive(dest, batch)
    assert (dest == ram).all()


def test_the_guest_writing_while_whole_pages_are_copied_leaves_both_copies_equal():
    """With a vCPU thread the guest writes while whole pages are copied into the cache, never
    between a delta and the copy of its page that it leaves in the cache."""
    ram, dest = _ram(), np.zeros((N_PAGES, PAGE_SIZE), dtype=np.uint8)
    encoder = XbzrleEncoder(ram, N_PAGES * PAGE_SIZE)
    runs: list[int] = []

    @contextlib.contextmanager
    def guest_runs():
        ram[:, 9] += 1  # the guest writes every page, the dirty log has them sent again
        runs.append(1)
        yield

    encoder.guest_may_run = guest_runs
    everything = _batch([(0, N_PAGES, PageKind.NORMAL)])
    _receive(dest, encoder.encode(everything))  # all whole
    ram[:8] = _ram(2)[:8]  # whole again (a delta would not be smaller), the rest as deltas
    ram[8:, 3] += 1
    batch = encoder.encode(everything)
    _receive(dest, batch)
    encoder.guest_may_run = contextlib.nullcontext  # stopped: the last pass
    _receive(dest, encoder.encode(everything))

    assert len(runs) == 2
    assert batch.delta_lens is not None
    assert len(batch.delta_lens) == N_PAGES - 8
    assert (dest == ram).all()
