"""XBZRLE on the source: a cache of what was sent, and batches re-encoded against it (QEMU's).

QEMU's `ram_save_page` with the `xbzrle` capability: a page found in the cache goes as the
delta from the cached copy (`protocol.xbzrle`), or whole when the delta would not be smaller
(an *overflow*); a page not in the cache is inserted and goes whole. The cache is direct-mapped
by page number (QEMU's page cache), `xbzrle-cache-size` bytes.

What is sent is always a snapshot taken when the batch is built (the guest cannot write while
the loop builds it), and the cache holds exactly that snapshot: the destination's copy of a
page and the cached one never differ, however the guest writes while the bytes are in flight.
A page that goes as ZERO leaves the cache (the destination now has zeros).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from protocol import PageKind as WirePageKind
from protocol import xbzrle
from vmsim import PAGE_SIZE, PageBatch, PageKind, row_runs

if TYPE_CHECKING:
    from numpy.typing import NDArray


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
    """

    def __init__(self, pages: NDArray[np.uint8], cache_size: int) -> None:
        slots = max(1, cache_size // PAGE_SIZE)
        self._pages = pages
        self._data = np.zeros((slots, PAGE_SIZE), dtype=np.uint8)
        self._tags = np.full(slots, -1, dtype=np.int64)
        self.stats = XbzrleStats(cache_size=slots * PAGE_SIZE)

    def encode(self, batch: PageBatch) -> PageBatch:
        """`batch` with its whole pages snapshotted, and the cached ones as deltas."""
        kinds = batch.kinds
        first = batch.first_pfns.astype(np.int64)
        count = batch.n_pages.astype(np.int64)
        self._forget(_expand(first[kinds == PageKind.ZERO], count[kinds == PageKind.ZERO]))
        pfns = _expand(first[kinds == PageKind.NORMAL], count[kinds == PageKind.NORMAL])
        snapshot = self._pages[pfns]  # a copy: what is sent, and what the cache keeps
        slots = pfns % len(self._tags)
        deltas = self._deltas(pfns, slots, snapshot)
        self._insert(pfns, slots, snapshot)
        return _rebuild(batch, pfns, snapshot, deltas)

    def forget(self, pfns: NDArray[np.intp]) -> None:
        """Drop these pages from the cache: their last copy may never have arrived (a resume)."""
        self._forget(pfns.astype(np.int64))

    def _deltas(
        self, pfns: NDArray[np.int64], slots: NDArray[np.int64], snapshot: NDArray[np.uint8]
    ) -> dict[int, bytes]:
        """Index in `pfns` -> delta, for the cached pages whose delta is smaller than a page."""
        stats = self.stats
        hits = np.flatnonzero(self._tags[slots] == pfns)
        stats.lookups += len(pfns)
        stats.cache_miss += len(pfns) - len(hits)
        deltas: dict[int, bytes] = {}
        for i in hits.tolist():
            delta = xbzrle.encode(self._data[slots[i]].data, snapshot[i].data)
            if delta is None:
                stats.overflow += 1
                continue
            deltas[i] = delta
            stats.pages += 1
            stats.bytes += len(delta)
            stats.raw_bytes += PAGE_SIZE
        return deltas

    def _insert(
        self, pfns: NDArray[np.int64], slots: NDArray[np.int64], snapshot: NDArray[np.uint8]
    ) -> None:
        """Cache every page sent (the last of the batch where two share a slot)."""
        _, last = np.unique(slots[::-1], return_index=True)
        keep = len(slots) - 1 - last
        self._tags[slots[keep]] = pfns[keep]
        self._data[slots[keep]] = snapshot[keep]

    def _forget(self, pfns: NDArray[np.int64]) -> None:
        """Pages sent as ZERO leave the cache."""
        slots = pfns % len(self._tags)
        stale = self._tags[slots] == pfns
        self._tags[slots[stale]] = -1


def _expand(first: NDArray[np.int64], count: NDArray[np.int64]) -> NDArray[np.int64]:
    """Every page number of the runs."""
    offsets = np.cumsum(count) - count
    return np.repeat(first - offsets, count) + np.arange(int(count.sum()), dtype=np.int64)


def _rebuild(
    batch: PageBatch,
    pfns: NDArray[np.int64],
    snapshot: NDArray[np.uint8],
    deltas: dict[int, bytes],
) -> PageBatch:
    """ZERO runs as they were, whole pages regrouped into runs of the snapshot, then deltas."""
    zero = batch.kinds == PageKind.ZERO
    whole = np.ones(len(pfns), dtype=bool)
    whole[list(deltas)] = False
    index = np.flatnonzero(whole)
    rows = row_runs(pfns, index)
    views = tuple(snapshot[a:b].reshape(-1).data.toreadonly() for a, b in rows)
    delta_pfns = np.array(sorted(deltas), dtype=np.int64)
    first = np.concatenate(
        (batch.first_pfns[zero], pfns[[a for a, _ in rows]], pfns[delta_pfns])
    ).astype(np.uint32)
    n_pages = np.concatenate(
        (batch.n_pages[zero], [b - a for a, b in rows], np.ones(len(delta_pfns)))
    ).astype(np.uint16)
    kinds = np.concatenate(
        (
            batch.kinds[zero],
            np.full(len(rows), PageKind.NORMAL),
            np.full(len(delta_pfns), int(WirePageKind.XBZRLE)),
        )
    ).astype(np.uint8)
    return PageBatch(
        first_pfns=first,
        n_pages=n_pages,
        kinds=kinds,
        data=(*views, *(memoryview(deltas[i]) for i in sorted(deltas))),
        normal_pages=len(index),
        zero_pages=batch.zero_pages,
    )
