"""XBZRLE on the source: a cache of what was sent, and batches re-encoded against it (QEMU's).

QEMU's `ram_save_page` with the `xbzrle` capability: a page found in the cache goes as the
delta from the cached copy (`protocol.xbzrle`), or whole when the delta would not be smaller
(an *overflow*); a page not in the cache is inserted and goes whole. The cache is direct-mapped
by page number (QEMU's page cache), `xbzrle-cache-size` bytes.

With a cache smaller than RAM, what is sent is a snapshot taken when the batch is built (the
guest cannot write while the loop builds it), and the cache holds exactly that snapshot: the
destination's copy of a page and the cached one never differ, however the guest writes while
the bytes are in flight. With a cache for all of RAM the slot of page p is p, and whole pages
go as views of their slots (one copy of each page instead of two; `_encode_in_place` says why
the two copies still agree once the stream has caught up). A page that goes as ZERO leaves the
cache (the destination now has zeros).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

from protocol import PageKind as WirePageKind
from protocol import xbzrle_batch
from protocol.ram import spread_runs
from vmsim import PAGE_SIZE, PageBatch, PageKind, row_runs

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

    from numpy.typing import NDArray


_INSERT_MAX_SLICES: Final = 8
"""A batch of more runs than this goes into the cache with one scatter, not slice by slice."""


def cache_bytes(cache_size: int) -> int:
    """The cache `xbzrle-cache-size` asks for: whole pages, at least one."""
    return max(1, cache_size // PAGE_SIZE) * PAGE_SIZE


@dataclass(kw_only=True, slots=True)
class XbzrleStats:
    """QEMU's `query-migrate` `xbzrle-cache` members, as counts."""

    cache_size: int
    bytes: int = 0  # delta bytes sent
    pages: int = 0  # pages sent as deltas
    cache_miss: int = 0  # pages looked up and not found
    lookups: int = 0
    raw_bytes: int = 0  # page bytes the deltas stand for
    overflow: int = 0  # deltas that would not have been smaller than the page

    def to_qmp(self) -> dict[str, object]:
        """The `xbzrle-cache` member of `query-migrate`."""
        return {
            "cache-size": self.cache_size,
            "bytes": self.bytes,
            "pages": self.pages,
            "cache-miss": self.cache_miss,
            "cache-miss-rate": round(self.cache_miss / self.lookups, 4) if self.lookups else 0.0,
            "encoding-rate": round(self.raw_bytes / self.bytes, 3) if self.bytes else 0.0,
            "overflow": self.overflow,
        }


class XbzrleEncoder:
    """The cache and the re-encoding of each batch's whole pages.

    Args:
        pages: guest RAM as (pages x PAGE_SIZE), read when a batch is encoded.
        cache_size: `xbzrle-cache-size` in bytes (at least one page).

    Attributes:
        guest_may_run: a context within which the guest may write RAM again (the daemon's
            vCPU thread: `vmm.vcpu_thread`); whole pages are copied within it, since what goes
            is what was copied. Deltas are taken and their pages cached outside it: a delta
            and the copy it leaves in the cache must see the same bytes.
    """

    def __init__(self, pages: NDArray[np.uint8], cache_size: int) -> None:
        slots = cache_bytes(cache_size) // PAGE_SIZE
        self._pages = pages
        self._data = np.zeros((slots, PAGE_SIZE), dtype=np.uint8)
        self._tags = np.full(slots, -1, dtype=np.int64)
        self._holds_all = slots >= len(pages)  # one slot per page: no two pages share one
        self.stats = XbzrleStats(cache_size=slots * PAGE_SIZE)
        self.guest_may_run: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext

    def use_memory(self, memory: NDArray[np.uint8]) -> bool:
        """Keep the cache in `memory` (faulted in already) if it is the cache's size.

        Only before the first batch: what the cache held is forgotten.
        """
        if memory.nbytes != self._data.nbytes:
            return False
        self._data = memory.reshape(self._data.shape)
        self._tags[:] = -1
        return True

    def encode(self, batch: PageBatch) -> PageBatch:
        """`batch` with its cached pages as deltas, the others whole (snapshot or cache slots)."""
        kinds = batch.kinds
        first = batch.first_pfns.astype(np.int64)
        count = batch.n_pages.astype(np.int64)
        self._forget(spread_runs(first[kinds == PageKind.ZERO], count[kinds == PageKind.ZERO]))
        pfns = spread_runs(first[kinds == PageKind.NORMAL], count[kinds == PageKind.NORMAL])
        if self._holds_all:
            return self._encode_in_place(batch, pfns)
        with self.guest_may_run():
            snapshot = self._pages[pfns]  # a copy: what is sent, and what the cache keeps
        slots = pfns % len(self._tags)
        deltas = self._deltas(pfns, slots, snapshot, np.arange(len(pfns)))
        self._insert(pfns, slots, snapshot)
        return _rebuild(batch, pfns, snapshot, deltas)

    def _encode_in_place(self, batch: PageBatch, pfns: NDArray[np.int64]) -> PageBatch:
        """A cache for all of RAM: page p's slot is p, and it is what goes whole (no snapshot).

        The deltas are taken from the slots before the pages are copied in. A frame still
        queued may then go out with a slot's newer copy instead of the one it was built with:
        that is harmless, because every later delta of that page follows it on the same stream
        and a delta only writes the bytes it changes, so once the stream has caught up the
        destination's copy is the slot's again. One copy of each page where the snapshot took two.
        """
        deltas = self._deltas(pfns, pfns, self._pages, pfns)
        whole = np.ones(len(pfns), dtype=np.bool_)
        whole[deltas.index] = False
        self._insert(pfns[~whole], pfns[~whole], self._pages, by_pfn=True)
        with self.guest_may_run():  # what is copied is what goes: torn or not, the copies agree
            self._insert(pfns[whole], pfns[whole], self._pages, by_pfn=True)
        return _rebuild(batch, pfns, self._data, deltas, by_pfn=True)

    def encode_frozen(self, batch: PageBatch) -> PageBatch:
        """`batch` against the cache as it is, which it leaves as it is (postcopy's push).

        After the switch the source's guest is stopped and each page the destination lacks
        still holds the copy last sent, which is the cached one: a cached page goes as the
        delta from it, the others whole, as views of RAM (nothing changes them any more).
        """
        kinds = batch.kinds
        normal = kinds == PageKind.NORMAL
        pfns = spread_runs(batch.first_pfns[normal].astype(np.int64), batch.n_pages[normal])
        deltas = self._deltas(pfns, pfns % len(self._tags), self._pages, pfns)
        return _rebuild(batch, pfns, self._pages, deltas, by_pfn=True)

    def forget(self, pfns: NDArray[np.intp]) -> None:
        """Drop these pages from the cache: their last copy may never have arrived (a resume)."""
        self._forget(pfns.astype(np.int64))

    def _deltas(
        self,
        pfns: NDArray[np.int64],
        slots: NDArray[np.int64],
        rows: NDArray[np.uint8],
        row_of: NDArray[np.int64],
    ) -> _Deltas:
        """The cached pages whose delta is smaller than a page, and their deltas.

        Page ``pfns[i]`` is now ``rows[row_of[i]]``.
        """
        stats = self.stats
        hits = np.flatnonzero(self._tags[slots] == pfns)
        stats.lookups += len(pfns)
        stats.cache_miss += len(pfns) - len(hits)
        lengths, blob = xbzrle_batch.encode_batch(
            _take(self._data, slots[hits]), _take(rows, row_of[hits])
        )
        fits = lengths != xbzrle_batch.OVERFLOW
        stats.overflow += len(hits) - int(fits.sum())
        stats.pages += int(fits.sum())
        stats.bytes += len(blob)
        stats.raw_bytes += int(fits.sum()) * PAGE_SIZE
        return _Deltas(index=hits[fits], lengths=lengths[fits], blob=blob)

    def _insert(
        self,
        pfns: NDArray[np.int64],
        slots: NDArray[np.int64],
        rows: NDArray[np.uint8],
        *,
        by_pfn: bool = False,
    ) -> None:
        """Cache every page sent (the last of the batch where two share a slot).

        Page ``pfns[i]`` is ``rows[i]``, or ``rows[pfns[i]]`` with `by_pfn` (guest RAM).
        """
        if self._holds_all:  # a batch's pages differ, so do their slots
            runs = row_runs(slots, np.arange(len(slots)))
            if len(runs) > _INSERT_MAX_SLICES:
                self._tags[slots] = pfns
                self._data[slots] = rows[pfns] if by_pfn else rows
                return
            for low, high in runs:
                first, count = int(slots[low]), high - low
                source = int(pfns[low]) if by_pfn else low
                self._tags[first : first + count] = pfns[low:high]
                self._data[first : first + count] = rows[source : source + count]
            return
        _, last = np.unique(slots[::-1], return_index=True)
        keep = len(slots) - 1 - last
        self._tags[slots[keep]] = pfns[keep]
        self._data[slots[keep]] = rows[pfns[keep]] if by_pfn else rows[keep]

    def _forget(self, pfns: NDArray[np.int64]) -> None:
        """Pages sent as ZERO leave the cache."""
        slots = pfns % len(self._tags)
        stale = self._tags[slots] == pfns
        self._tags[slots[stale]] = -1


@dataclass(frozen=True, slots=True)
class _Deltas:
    """Which pages of a batch go as deltas (indices into its page list), and the deltas."""

    index: NDArray[np.int64]
    lengths: NDArray[np.int64]
    blob: bytes


def _take(rows: NDArray[np.uint8], index: NDArray[np.int64]) -> NDArray[np.uint8]:
    """``rows[index]``: a view if the rows follow each other (a first pass, a push), else a copy."""
    if len(index) and bool(np.all(np.diff(index) == 1)):
        return rows[int(index[0]) : int(index[-1]) + 1]
    return rows[index]


def _rebuild(
    batch: PageBatch,
    pfns: NDArray[np.int64],
    rows: NDArray[np.uint8],
    deltas: _Deltas,
    *,
    by_pfn: bool = False,
) -> PageBatch:
    """ZERO runs as they were, whole pages regrouped into runs, then the deltas in one buffer.

    Whole page ``pfns[i]`` is a view of ``rows[i]`` (a snapshot), or of ``rows[pfns[i]]``
    with `by_pfn` (guest RAM).
    """
    zero = batch.kinds == PageKind.ZERO
    whole = np.ones(len(pfns), dtype=bool)
    whole[deltas.index] = False
    runs = row_runs(pfns, np.flatnonzero(whole))
    starts = [int(pfns[a]) if by_pfn else a for a, _ in runs]
    views = [rows[s : s + b - a].reshape(-1).data.toreadonly()
             for s, (a, b) in zip(starts, runs, strict=True)]  # fmt: skip
    has_deltas = len(deltas.index) > 0
    first = np.concatenate(
        (batch.first_pfns[zero], pfns[[a for a, _ in runs]], pfns[deltas.index])
    ).astype(np.uint32)
    n_pages = np.concatenate(
        (batch.n_pages[zero], [b - a for a, b in runs], np.ones(len(deltas.index)))
    ).astype(np.uint16)
    kinds = np.concatenate(
        (
            batch.kinds[zero],
            np.full(len(runs), PageKind.NORMAL),
            np.full(len(deltas.index), int(WirePageKind.XBZRLE)),
        )
    ).astype(np.uint8)
    return PageBatch(
        first_pfns=first,
        n_pages=n_pages,
        kinds=kinds,
        data=(*views, memoryview(deltas.blob)) if has_deltas else tuple(views),
        normal_pages=int(whole.sum()),
        zero_pages=batch.zero_pages,
        delta_lens=deltas.lengths if has_deltas else None,
    )
