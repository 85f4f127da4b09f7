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
    from numpy.typing import NDArray

__all__ = [
    "MAX_DISCARD_RANGES",
    "MAX_REQUEST_RANGES",
    "RANGE_DTYPE",
    "PageRanges",
    "check_ranges_fit",
    "pack_ranges",
    "ranges_of_pages",
    "unpack_ranges",
]

RANGE_DTYPE: Final = np.dtype([("first_pfn", "<u4"), ("n_pages", "<u4")])
MAX_DISCARD_RANGES: Final = 8192
"""Ranges in one POSTCOPY_RAM_DISCARD (64 KiB of records); a long discard takes several."""
MAX_REQUEST_RANGES: Final = 64
"""Ranges in one REQ_PAGES."""
_PFN_LIMIT: Final = 1 << 32


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
