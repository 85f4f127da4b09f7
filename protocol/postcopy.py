"""Page ranges on the wire: postcopy's discards (main stream) and page requests (return path).

A range list is packed as little-endian ``(first_pfn u32, n_pages u32)`` records in one msgpack
bin (docs/protocol.md 1.10). QEMU sends discards as start/length pairs, at most 12 per
command, and a page request as one start/length; livemig bounds a POSTCOPY_RAM_DISCARD to
`MAX_DISCARD_RANGES` and a REQ_PAGES to `MAX_REQUEST_RANGES`. Discard ranges ascend and do not
touch (so the pages of a discard are its size); a request's ranges only have to fit RAM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import numpy as np

from protocol.meta import bad

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import NDArray

__all__ = [
    "MAX_DISCARD_RANGES",
    "MAX_REQUEST_RANGES",
    "RANGE_DTYPE",
    "PageRanges",
    "check_ranges_fit",
    "pack_ranges",
    "ranges_mask",
    "ranges_of_mask",
    "ranges_of_pages",
    "unpack_ranges",
]

RANGE_DTYPE: Final = np.dtype([("first_pfn", "<u4"), ("n_pages", "<u4")])
MAX_DISCARD_RANGES: Final = 8192
"""Ranges in one POSTCOPY_RAM_DISCARD (64 KiB of records); a long discard takes several."""
MAX_REQUEST_RANGES: Final = 64
"""Ranges in one REQ_PAGES."""
_PFN_LIMIT: Final = 1 << 32
_FEW_RANGES: Final = 64  # up to this many, `ranges_mask` assigns slices; past it, one cumsum


@dataclass(frozen=True, kw_only=True, slots=True)
class PageRanges:
    """A checked list of page ranges ``[first_pfn, end_pfn)``.

    ``first_pfn`` and ``end_pfn`` do not take part in ``==`` (numpy arrays); ``n_pages`` does.
    """

    first_pfn: NDArray[np.int64] = field(compare=False)
    end_pfn: NDArray[np.int64] = field(compare=False)
    n_pages: int

    def pages(self) -> NDArray[np.int64]:
        """Every page of the ranges, in range order."""
        counts = self.end_pfn - self.first_pfn
        offsets = np.cumsum(counts) - counts
        return np.repeat(self.first_pfn - offsets, counts) + np.arange(int(counts.sum()))


def ranges_mask(ranges: Sequence[PageRanges], n_pages: int) -> NDArray[np.bool_]:
    """One bool per page of `n_pages`: True inside any of `ranges` (they may overlap).

    No page list is built: a discard of all of a 1 GiB guest's pages expanded to page numbers
    cost the destination 2-5 ms of the guest's pause (`bench postcopy`), a slice takes µs.

    Raises:
        ValueError: a range ends past `n_pages` (the tracker refuses those: `check_ranges_fit`).
    """
    if any(len(r.end_pfn) and int(r.end_pfn.max()) > n_pages for r in ranges):
        msg = f"a range ends past page {n_pages}"
        raise ValueError(msg)
    if sum(len(r.first_pfn) for r in ranges) <= _FEW_RANGES:
        mask = np.zeros(n_pages, dtype=np.bool_)
        for r in ranges:
            for first, end in zip(r.first_pfn.tolist(), r.end_pfn.tolist(), strict=True):
                mask[first:end] = True
        return mask
    depth = np.zeros(n_pages + 1, dtype=np.int32)  # +1 at a range's first page, -1 past its end
    for r in ranges:
        np.add.at(depth, r.first_pfn, 1)
        np.add.at(depth, r.end_pfn, -1)
    return np.cumsum(depth[:-1], dtype=np.int32) > 0


def ranges_of_mask(mask: NDArray[np.bool_]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The runs of True in one bool per page, as ranges: ``(first_pfn, n_pages)``.

    The inverse of `ranges_mask`, without listing the pages: 0.06 ms for a 1 GiB guest's mask
    that is all True, against 1.6 ms for `ranges_of_pages` of ``np.flatnonzero(mask)``.
    """
    padded = np.zeros(len(mask) + 2, dtype=np.bool_)  # False before and after: runs close
    padded[1:-1] = mask
    edges = np.flatnonzero(padded[1:] != padded[:-1]).astype(np.int64)
    return edges[0::2], edges[1::2] - edges[0::2]


def ranges_of_pages(pfns: NDArray[np.integer]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Coalesce sorted, distinct pages into ranges: ``(first_pfn, n_pages)``."""
    if not len(pfns):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    pages = pfns.astype(np.int64, copy=False)
    breaks = np.flatnonzero(np.diff(pages) != 1) + 1
    starts = np.concatenate(([0], breaks)).astype(np.int64)
    ends = np.concatenate((breaks, [len(pages)])).astype(np.int64)
    return pages[starts], ends - starts


def pack_ranges(first_pfn: NDArray[np.integer], n_pages: NDArray[np.integer]) -> bytes:
    """The records of ranges (checked as the receiver will check them, by the caller)."""
    records = np.empty(len(first_pfn), dtype=RANGE_DTYPE)
    records["first_pfn"] = first_pfn
    records["n_pages"] = n_pages
    return records.tobytes()


def unpack_ranges(data: bytes, *, max_ranges: int, ascending: bool, what: str) -> PageRanges:
    """Check and decode packed ranges.

    Raises:
        LocalProtocolError: BAD_METADATA: not whole records, none or more than `max_ranges`, an
            empty range, one past page 2**32, or (``ascending``) ranges out of order or touching.
    """
    if len(data) % RANGE_DTYPE.itemsize:
        msg = (
            f"{what}: {len(data)} bytes of ranges is not whole {RANGE_DTYPE.itemsize}-byte records"
        )
        raise bad(msg)
    count = len(data) // RANGE_DTYPE.itemsize
    if not 0 < count <= max_ranges:
        msg = f"{what}: {count} ranges (1 to {max_ranges} allowed)"
        raise bad(msg)
    records = np.frombuffer(data, dtype=RANGE_DTYPE)
    first = records["first_pfn"].astype(np.int64)
    n_pages = records["n_pages"].astype(np.int64)
    end = first + n_pages
    if not bool((n_pages > 0).all()):
        index = int(np.flatnonzero(n_pages == 0)[0])
        msg = f"{what}: range {index} is empty"
        raise bad(msg)
    if int(end.max()) > _PFN_LIMIT:
        msg = f"{what}: a range ends past page 2**32"
        raise bad(msg)
    if ascending and count > 1 and not bool((first[1:] > end[:-1]).all()):
        index = int(np.flatnonzero(first[1:] <= end[:-1])[0]) + 1
        msg = f"{what}: range {index} does not start after the end of the one before"
        raise bad(msg)
    return PageRanges(first_pfn=first, end_pfn=end, n_pages=int(n_pages.sum()))


def check_ranges_fit(ranges: PageRanges, ram_pages: int, what: str) -> None:
    """Raise BAD_METADATA if a range goes past the guest's RAM."""
    if int(ranges.end_pfn.max()) > ram_pages:
        msg = f"{what}: a range ends past the guest's {ram_pages} pages of RAM"
        raise bad(msg)
