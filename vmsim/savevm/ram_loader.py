"""RamLoader: the destination's page sink — where received page data goes in guest RAM.

It is the one RAM loader: the daemons attach it to the wire protocol's destination connection
(``protocol.PageSink``, structurally), and the RAM save handler's ``load_state`` (in-memory
migrations in the machine's own tests) goes through it too.

For each frame the sink is asked for the buffers its page data must fill, then told the frame
was verified. Page data of a few long runs is received straight into guest RAM (one buffer per
extent of consecutive pages: the kernel writes the bytes where they belong, no copy in Python).
A frame fragmented into many small extents is received into one scratch buffer instead and
scattered into RAM with one vectorised copy once verified: an extra memcpy beats thousands of
tiny receive targets (bench/protocol_codec.py). ZERO runs are zero-filled once the frame is
verified. A frame of compressed or XBZRLE pages is decoded by the protocol into these buffers
(or, for XBZRLE deltas, into the pages `delta_pages` hands it).

In postcopy (``postcopy`` set, `vmsim.postcopy`) every frame goes to scratch, and
``pages_loaded`` places only the pages not received yet and marks them received: a page the
guest may already have written is never overwritten by a late copy (QEMU too copies each page
into place from a temporary page, UFFDIO_COPY).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

import numpy as np

from vmsim.config import PAGE_SIZE
from vmsim.errors import RamError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from vmsim.postcopy import PostcopyPages
    from vmsim.ram import GuestRam

__all__ = [
    "SCATTER_MAX_MEAN_BYTES",
    "SCATTER_MIN_EXTENTS",
    "PageRuns",
    "RamLoader",
    "Runs",
    "row_runs",
]

SCATTER_MIN_EXTENTS: Final = 8
"""A frame with at least this many separate extents of guest RAM ..."""
SCATTER_MAX_MEAN_BYTES: Final = 64 * 1024
"""... averaging at most this many bytes is received into scratch and scattered with numpy."""


class PageRuns(Protocol):
    """The runs of one frame: page ranges ``[first_pfn, end_pfn)`` and which carry data.

    ``protocol.RunTable`` has this shape; so does `Runs`.
    """

    @property
    def first_pfn(self) -> NDArray[np.int64]:
        """First page of each run."""

    @property
    def end_pfn(self) -> NDArray[np.int64]:
        """One past the last page of each run."""

    @property
    def normal(self) -> NDArray[np.bool_]:
        """True for runs whose page data is in the frame (NORMAL), False for ZERO runs."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Runs:
    """A concrete `PageRuns` (built from a `PageBatch` by the RAM handler)."""

    first_pfn: NDArray[np.int64]
    end_pfn: NDArray[np.int64]
    normal: NDArray[np.bool_]


class RamLoader:
    """Receives page data into guest RAM (``protocol.PageSink``).

    Attributes:
        loaded_pages: pages made final since the loader was created (NORMAL and ZERO).
        postcopy: the received-page map in postcopy (`Machine.start_postcopy` sets it).
    """

    def __init__(self, ram: GuestRam) -> None:
        self._ram = ram
        self._scatter_buffer = bytearray()
        self._scatter_bytes: int | None = None
        self.loaded_pages = 0
        self.postcopy: PostcopyPages | None = None

    def page_buffers(self, runs: PageRuns, data_len: int) -> list[memoryview]:
        """Writable buffers, in order, for a frame's ``data_len`` bytes of NORMAL page data.

        Raises:
            RamError: the runs do not fit RAM or do not account for ``data_len`` bytes.
        """
        first, end = runs.first_pfn[runs.normal], runs.end_pfn[runs.normal]
        _check(first, end, data_len, self._ram.n_pages)
        extents = _extents(first, end)
        self._scatter_bytes = None
        if self.postcopy is not None or (
            len(extents) >= SCATTER_MIN_EXTENTS
            and data_len <= len(extents) * SCATTER_MAX_MEAN_BYTES
        ):
            if len(self._scatter_buffer) < data_len:
                self._scatter_buffer = bytearray(data_len)
            self._scatter_bytes = data_len
            return [memoryview(self._scatter_buffer)[:data_len]]
        view = self._ram.view
        return [view[first * PAGE_SIZE : end * PAGE_SIZE] for first, end in extents]

    def pages_loaded(self, runs: PageRuns) -> None:
        """The frame's data was verified: scatter it if it went to scratch, zero-fill ZERO runs."""
        if self.postcopy is not None:
            self._place_new(runs, self.postcopy)
            return
        if self._scatter_bytes is not None:
            self._scatter(runs, self._scatter_bytes)
            self._scatter_bytes = None
        pages = self._ram.pages
        zero = ~runs.normal
        for first, end in _extents(runs.first_pfn[zero], runs.end_pfn[zero]):
            pages[first:end] = 0
        self.loaded_pages += int((runs.end_pfn - runs.first_pfn).sum())

    def delta_pages(self, pfns: NDArray[np.int64]) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
        """Guest RAM (pages x PAGE_SIZE) and which of `pfns` to apply XBZRLE deltas to, in place.

        In precopy all of them. In postcopy only the pages not received yet, which still hold
        the copy the source sent before the switch (the one it encoded the delta against);
        they are marked received, so a later copy of them is dropped.

        Raises:
            RamError: a page is outside RAM.
        """
        if len(pfns) and (int(pfns.min()) < 0 or int(pfns.max()) >= self._ram.n_pages):
            raise RamError(f"ram: an XBZRLE page outside RAM of {self._ram.n_pages} pages")
        apply = (
            np.ones(len(pfns), dtype=np.bool_)
            if self.postcopy is None
            else self.postcopy.take(pfns)
        )
        self.loaded_pages += len(pfns)
        return self._ram.pages, apply

    def _scatter(self, runs: PageRuns, data_len: int) -> None:
        pfns = _pages_of(runs.first_pfn[runs.normal], runs.end_pfn[runs.normal])
        data = np.frombuffer(self._scatter_buffer, dtype=np.uint8, count=data_len)
        self._ram.pages[pfns] = data.reshape(len(pfns), PAGE_SIZE)

    def _place_new(self, runs: PageRuns, postcopy: PostcopyPages) -> None:
        """Postcopy: place the frame's pages that were not received yet, and mark them."""
        pfns = _pages_of(runs.first_pfn[runs.normal], runs.end_pfn[runs.normal])
        if len(pfns):
            data_len = len(pfns) * PAGE_SIZE
            data = np.frombuffer(self._scatter_buffer, dtype=np.uint8, count=data_len)
            new = postcopy.take(pfns)
            _place_rows(self._ram.pages, pfns, data.reshape(len(pfns), PAGE_SIZE), new)
        zero = ~runs.normal
        zero_pfns = _pages_of(runs.first_pfn[zero], runs.end_pfn[zero])
        if len(zero_pfns):
            self._ram.pages[zero_pfns[postcopy.take(zero_pfns)]] = 0
        self._scatter_bytes = None
        self.loaded_pages += len(pfns) + len(zero_pfns)


def row_runs(pfns: NDArray[np.int64], index: NDArray[np.int64]) -> list[tuple[int, int]]:
    """Rows ``[a, b)`` of the selected `index`, cut where page numbers or rows stop following.

    `pfns` holds one page number per row; each range is rows ``a..b-1`` of pages
    ``pfns[a]..pfns[a] + b - a - 1``: one slice of guest RAM.
    """
    if not len(index):
        return []
    breaks = np.flatnonzero((np.diff(pfns[index]) != 1) | (np.diff(index) != 1)) + 1
    starts = np.concatenate(([0], breaks)).tolist()
    ends = np.concatenate((breaks, [len(index)])).tolist()
    return [(int(index[s]), int(index[e - 1]) + 1) for s, e in zip(starts, ends, strict=True)]


def _place_rows(
    pages: NDArray[np.uint8],
    pfns: NDArray[np.int64],
    rows: NDArray[np.uint8],
    new: NDArray[np.bool_],
) -> None:
    """``pages[pfns[i]] = rows[i]`` where ``new[i]``: a slice copy per run of consecutive pages.

    The postcopy push brings runs of new pages: one copy each, where a gather through the mask
    copied the frame twice (0.67 against 0.33 ms per 4 MiB frame). Scattered pages are gathered.
    """
    index = np.flatnonzero(new)
    runs = row_runs(pfns, index)
    if len(runs) > SCATTER_MIN_EXTENTS:
        pages[pfns[index]] = rows[index]
        return
    for low, high in runs:
        first = int(pfns[low])
        pages[first : first + high - low] = rows[low:high]


def _pages_of(first: NDArray[np.int64], end: NDArray[np.int64]) -> NDArray[np.int64]:
    """Every page of the runs ``[first, end)``, in run order."""
    counts = end - first
    offsets = np.cumsum(counts) - counts
    return np.repeat(first - offsets, counts) + np.arange(int(counts.sum()))


def _extents(first: NDArray[np.int64], end: NDArray[np.int64]) -> list[tuple[int, int]]:
    """Merge runs that follow each other (in the given order) into ``(first, end)`` extents."""
    if not len(first):
        return []
    breaks = np.flatnonzero(first[1:] != end[:-1]) + 1
    starts = first[np.concatenate(([0], breaks))]
    ends = end[np.concatenate((breaks - 1, [len(first) - 1]))]
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def _check(first: NDArray[np.int64], end: NDArray[np.int64], data_len: int, n_pages: int) -> None:
    pages = int((end - first).sum())
    if pages * PAGE_SIZE != data_len:
        raise RamError(f"ram: {data_len} bytes of page data for {pages} NORMAL pages")
    if len(first) and (int(first.min()) < 0 or int(end.max()) > n_pages):
        raise RamError(f"ram: page runs outside RAM of {n_pages} pages")
