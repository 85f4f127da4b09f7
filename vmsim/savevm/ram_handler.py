"""RamSaveHandler: guest RAM as an iterable section (QEMU's migration/ram.c, precopy part).

The migration bitmap holds the pages still to send. It starts all-set at setup (the first
pass sends everything); each dirty-log sync ORs in the pages the guest wrote since the last
one. Iteration scans the bitmap from where it stopped (wrapping), takes up to `max_pages` set
bits, classifies zero pages and coalesces consecutive pages of one kind into runs. All of it is
vectorised: there is no Python loop per page, only one per run.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

from vmsim.config import PAGE_SIZE
from vmsim.errors import NotAllowed, RamError
from vmsim.postcopy import unique_pages
from vmsim.ram import WORDS_PER_PAGE
from vmsim.savevm.handlers import MAX_RUN_PAGES, PageBatch, PageKind
from vmsim.savevm.ram_loader import RamLoader, Runs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import NDArray

    from vmsim.ram import GuestRam

__all__ = ["RAM_IDSTR", "RAM_VERSION_ID", "RamSaveHandler", "RamStats"]

RAM_IDSTR: Final = "ram"
RAM_VERSION_ID: Final = 4
_MIN_SCAN_WINDOW_PAGES: Final = 1 << 14
_ZERO_CHECK_BLOCK_PAGES: Final = 1024
_ZERO_CHECK_MAX_VIEWS: Final = 16  # runs of candidates checked through views, not copies
_SETUP_KEYS: Final = frozenset({"ram_size", "page_size"})


@dataclass(frozen=True, kw_only=True, slots=True)
class RamStats:
    """RAM counters for a QEMU-like query-migrate (times and rates are the daemon's).

    Attributes:
        total_bytes: guest RAM size.
        remaining_bytes: bytes still set in the migration bitmap.
        normal_pages: pages sent as data since setup.
        zero_pages: pages sent as zero pages since setup (QEMU's "duplicate").
        normal_bytes: normal_pages x page_size.
        dirty_sync_count: dirty-log syncs since setup, the setup sync included.
        dirty_pages_last_sync: pages the last sync newly found dirty.
        logged_pages_last_sync: pages the guest wrote between the last two syncs (dirty log).
        dirty_bytes_last_sync: bytes remaining right after the last sync (QEMU's
            dirty_bytes_last_sync, the base of expected-downtime).
        complete_rounds: times the scan wrapped past the end of RAM.
        page_size: bytes per page.
    """

    total_bytes: int
    remaining_bytes: int
    normal_pages: int
    zero_pages: int
    normal_bytes: int
    dirty_sync_count: int
    dirty_pages_last_sync: int
    logged_pages_last_sync: int
    dirty_bytes_last_sync: int
    complete_rounds: int
    page_size: int


class RamSaveHandler:
    """SaveVMHandlers for guest RAM (idstr "ram", instance 0, version 4).

    Attributes:
        dirty_sync_count: dirty-log syncs since setup (setup counts as the first).
        dirty_pages_last_sync: pages the last sync newly found dirty.
        logged_pages_last_sync: pages the guest wrote between the last two syncs (dirty log).
        dirty_bytes_last_sync: bytes still to send right after the last sync.
        normal_pages: pages sent as data since setup.
        zero_pages: pages sent as zero pages since setup.
        complete_rounds: how often the scan wrapped past the end of RAM.
    """

    idstr: Final = RAM_IDSTR
    version_id: Final = RAM_VERSION_ID

    def __init__(self, ram: GuestRam) -> None:
        self._ram = ram
        self.loader = RamLoader(ram)
        self._readonly = ram.view.toreadonly()
        self._pages64: NDArray[np.uint64] = ram.words.reshape(ram.n_pages, WORDS_PER_PAGE)
        self._bitmap: NDArray[np.bool_] | None = None
        self._remaining_pages = 0
        self._scan_pfn = 0
        self._completing = False
        self.detect_zero_pages = True  # QEMU's zero-page-detection (none: send zeros as data)
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.dirty_sync_count = 0
        self.dirty_pages_last_sync = 0
        self.dirty_bytes_last_sync = 0
        self.logged_pages_last_sync = 0
        self.normal_pages = 0
        self.zero_pages = 0
        self.complete_rounds = 0

    # ------------------------------------------------------------------ save side

    def save_setup(self) -> dict[str, object]:
        """Mark every page to send, start dirty logging, and describe the RAM."""
        self._reset_counters()
        self._bitmap = np.ones(self._ram.n_pages, dtype=np.bool_)
        self._remaining_pages = self._ram.n_pages
        self._scan_pfn = 0
        self._completing = False
        self._ram.dirty_log.start()
        # QEMU's ram_init_bitmaps ends with the first sync; starting the log is that sync.
        self.dirty_sync_count = 1
        self.dirty_bytes_last_sync = self._remaining_pages * PAGE_SIZE
        return {"ram_size": self._ram.size_bytes, "page_size": PAGE_SIZE}

    def save_live_iterate(self, max_pages: int) -> PageBatch | None:
        """Return up to max_pages pages still to send, or None when the bitmap is empty."""
        bitmap = self._require_bitmap()
        if self._remaining_pages == 0:
            return None
        return self._batch(self._take(bitmap, max_pages))

    def save_complete(self, max_pages: int) -> PageBatch | None:
        """With the VM stopped: sync once, then return what is left batch by batch, then None."""
        bitmap = self._require_bitmap()
        if not self._completing:
            self._completing = True
            self._sync(bitmap)
        if self._remaining_pages == 0:
            return None
        return self._batch(self._take(bitmap, max_pages))

    def postcopy_start(
        self, first_pfns: Sequence[int]
    ) -> tuple[PageBatch | None, NDArray[np.bool_]]:
        """With the VM stopped, switch to postcopy (QEMU's ram_postcopy_send_discard_bitmap).

        Syncs the dirty log once more, takes `first_pfns` that are still to send (the pages the
        device state reads at load, `MachineLayout.device_pfns`) into a batch that goes before
        the device state, and returns it with every page still to send: what the destination
        must treat as missing (one bool per page, a copy). The rest goes by `save_live_iterate`
        (the background push) and `save_pages` (the destination's requests); the source's RAM no
        longer changes.
        """
        bitmap = self._require_bitmap()
        self._completing = True
        self._sync(bitmap)
        batch = self.save_pages(np.asarray(first_pfns, dtype=np.intp))
        return batch, bitmap.copy()

    def postcopy_recover(self, received: NDArray[np.bool_]) -> int:
        """Postcopy recovery: every page the destination has not received is to send again.

        Pages sent before the connection broke may never have arrived; the destination's
        bitmap says. Returns the pages to send.
        """
        bitmap = self._require_bitmap()
        np.logical_not(received, out=bitmap)
        self._remaining_pages = int(np.count_nonzero(bitmap))
        self._scan_pfn = 0
        return self._remaining_pages

    def mark_unsent(self, pfns: NDArray[np.intp]) -> None:
        """Precopy resume: these pages' last copies may not have arrived; send them again."""
        bitmap = self._require_bitmap()
        bitmap[pfns] = True
        self._remaining_pages = int(np.count_nonzero(bitmap))

    def save_pages(self, pfns: NDArray[np.intp]) -> PageBatch | None:
        """Postcopy: the pages of `pfns` still to send, as one batch (None if all were sent).

        Raises:
            RamError: a page is outside RAM.
        """
        bitmap = self._require_bitmap()
        if len(pfns) and (int(pfns.min()) < 0 or int(pfns.max()) >= len(bitmap)):
            raise RamError(f"ram: requested pages outside RAM of {len(bitmap)} pages")
        wanted = unique_pages(pfns)
        take = wanted[bitmap[wanted]]
        if not len(take):
            return None
        bitmap[take] = False
        self._remaining_pages -= len(take)
        return self._batch(take)

    def state_pending_estimate(self) -> int:
        """Bytes still set in the migration bitmap (no sync)."""
        return self._remaining_pages * PAGE_SIZE

    def state_pending_exact(self) -> int:
        """Sync the dirty log into the bitmap, then return the bytes still to send."""
        self._sync(self._require_bitmap())
        return self._remaining_pages * PAGE_SIZE

    def save_cleanup(self) -> None:
        """Stop dirty logging and drop the bitmap."""
        self._ram.dirty_log.stop()
        self._bitmap = None
        self._remaining_pages = 0

    def stats(self) -> RamStats:
        """Return the counters as one value."""
        return RamStats(
            total_bytes=self._ram.size_bytes,
            remaining_bytes=self._remaining_pages * PAGE_SIZE,
            normal_pages=self.normal_pages,
            zero_pages=self.zero_pages,
            normal_bytes=self.normal_pages * PAGE_SIZE,
            dirty_sync_count=self.dirty_sync_count,
            dirty_pages_last_sync=self.dirty_pages_last_sync,
            logged_pages_last_sync=self.logged_pages_last_sync,
            dirty_bytes_last_sync=self.dirty_bytes_last_sync,
            complete_rounds=self.complete_rounds,
            page_size=PAGE_SIZE,
        )

    def _require_bitmap(self) -> NDArray[np.bool_]:
        if self._bitmap is None:
            msg = "RAM save handler used before save_setup (or after save_cleanup)"
            raise NotAllowed(msg)
        return self._bitmap

    def _sync(self, bitmap: NDArray[np.bool_]) -> None:
        dirty = self._ram.dirty_log.sync()
        # Every page the guest wrote in the epoch (the guest's dirty rate), and of those the ones
        # not already waiting to be sent (QEMU's count of newly dirty pages).
        self.logged_pages_last_sync = int(np.count_nonzero(dirty))
        self.dirty_pages_last_sync = int(np.count_nonzero(dirty > bitmap))
        np.logical_or(bitmap, dirty, out=bitmap)
        self._remaining_pages = int(np.count_nonzero(bitmap))
        self.dirty_sync_count += 1
        self.dirty_bytes_last_sync = self._remaining_pages * PAGE_SIZE

    def _take(self, bitmap: NDArray[np.bool_], max_pages: int) -> NDArray[np.intp]:
        """Take up to max_pages set bits from the scan position on, wrapping; clear them."""
        want = min(max(max_pages, 0), self._remaining_pages)
        n_pages = len(bitmap)
        found: list[NDArray[np.intp]] = []
        got = 0
        position = self._scan_pfn
        window = max(want, _MIN_SCAN_WINDOW_PAGES)
        scanned = 0
        # Windows that double in size: a dense bitmap costs about one window per batch, and a
        # sparse one at most twice the distance scanned, so a whole round is O(n_pages) in
        # total rather than O(n_pages) per batch.
        while got < want and scanned <= n_pages + window:
            end = min(position + window, n_pages)
            hits = np.flatnonzero(bitmap[position:end])
            if len(hits) > want - got:
                hits = hits[: want - got]
                end = position + int(hits[-1]) + 1
            if len(hits):
                found.append(hits + position)
                got += len(hits)
            scanned += end - position
            position = end
            if position >= n_pages:
                position = 0
                self.complete_rounds += 1
            window = min(window * 2, n_pages)
        self._scan_pfn = position
        pfns = np.concatenate(found) if found else np.zeros(0, dtype=np.intp)
        bitmap[pfns] = False
        self._remaining_pages -= len(pfns)
        return pfns

    def _batch(self, pfns: NDArray[np.intp]) -> PageBatch:
        if self.detect_zero_pages:
            is_zero = self._zero_mask(pfns)
        else:
            is_zero = np.zeros(len(pfns), dtype=np.bool_)
        kinds = np.where(is_zero, np.uint8(PageKind.ZERO), np.uint8(PageKind.NORMAL))
        first_pfns, run_pages, run_kinds = _coalesce(pfns, kinds)
        zero_pages = int(np.count_nonzero(is_zero))
        normal_pages = len(pfns) - zero_pages
        self.normal_pages += normal_pages
        self.zero_pages += zero_pages
        view = self._readonly
        normal = run_kinds == PageKind.NORMAL
        data = tuple(
            view[first * PAGE_SIZE : (first + count) * PAGE_SIZE]
            for first, count in zip(
                first_pfns[normal].tolist(), run_pages[normal].tolist(), strict=True
            )
        )
        return PageBatch(
            first_pfns=first_pfns.astype(np.uint32),
            n_pages=run_pages.astype(np.uint16),
            kinds=run_kinds,
            data=data,
            normal_pages=normal_pages,
            zero_pages=zero_pages,
        )

    def _zero_mask(self, pfns: NDArray[np.intp]) -> NDArray[np.bool_]:
        """True for pages that are all zero: word 0 first, the whole page only where it is 0.

        `pfns` are unique and ascend (a scan may wrap back to page 0 once, ending lower than it
        began), so when the last is first + count - 1 they are exactly consecutive (a first
        pass): word 0 of each is read through a strided view, half the cost of gathering it.
        """
        n_pfns = len(pfns)
        if n_pfns and int(pfns[-1]) - int(pfns[0]) + 1 == n_pfns:
            first = int(pfns[0]) * WORDS_PER_PAGE
            first_words = self._ram.words[first : first + n_pfns * WORDS_PER_PAGE : WORDS_PER_PAGE]
        else:
            first_words = self._ram.words[pfns * WORDS_PER_PAGE]
        candidates = np.flatnonzero(first_words == 0)
        is_zero = np.zeros(len(pfns), dtype=np.bool_)
        if not len(candidates):
            return is_zero
        candidate_pfns = pfns[candidates]
        breaks = np.flatnonzero(np.diff(candidate_pfns) != 1) + 1
        if len(breaks) < _ZERO_CHECK_MAX_VIEWS:
            # A few runs of consecutive pages (zero-filled RAM): reduce views of RAM, no copy.
            bounds = [0, *breaks.tolist(), len(candidates)]
            for low, high in itertools.pairwise(bounds):
                first = int(candidate_pfns[low])
                rows = self._pages64[first : first + high - low]
                is_zero[candidates[low:high]] = np.bitwise_or.reduce(rows, axis=1) == 0
            return is_zero
        # Scattered pages: blocks bound the temporary copy the fancy index makes (4 MiB each).
        for start in range(0, len(candidates), _ZERO_CHECK_BLOCK_PAGES):
            block = candidates[start : start + _ZERO_CHECK_BLOCK_PAGES]
            is_zero[block] = np.bitwise_or.reduce(self._pages64[pfns[block]], axis=1) == 0
        return is_zero

    # ------------------------------------------------------------------ load side

    def load_setup(self, setup: dict[str, object]) -> None:
        """Check the source's RAM description against the local RAM.

        Raises:
            RamError: the keys, the page size or the RAM size differ.
        """
        if set(setup) != _SETUP_KEYS:
            raise RamError(f"ram: setup keys {sorted(setup)} != {sorted(_SETUP_KEYS)}")
        if setup["page_size"] != PAGE_SIZE:
            raise RamError(f"ram: page size {setup['page_size']!r} != {PAGE_SIZE}")
        size = setup["ram_size"]
        if size != self._ram.size_bytes:
            received = f"{size:#x}" if isinstance(size, int) else repr(size)
            raise RamError(f"Length mismatch: ram: {received} in != {self._ram.size_bytes:#x}")

    def load_state(self, batch: PageBatch) -> None:
        """Load a batch through the RAM loader, as the wire protocol does with a received frame.

        Raises:
            RamError: the batch is inconsistent or outside RAM; nothing is written then.
        """
        _check_batch(batch, self._ram.n_pages)
        first = batch.first_pfns.astype(np.int64)
        runs = Runs(
            first_pfn=first,
            end_pfn=first + batch.n_pages.astype(np.int64),
            normal=batch.kinds == PageKind.NORMAL,
        )
        data_len = int(batch.n_pages[runs.normal].astype(np.int64).sum()) * PAGE_SIZE
        targets = self.loader.page_buffers(runs, data_len)
        _copy_into(batch.data, targets)
        self.loader.pages_loaded(runs)

    def load_cleanup(self) -> None:
        """Nothing to release on the load side."""


def _coalesce(
    pfns: NDArray[np.intp], kinds: NDArray[np.uint8]
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.uint8]]:
    """Group consecutive pages of one kind into runs of at most MAX_RUN_PAGES pages."""
    if len(pfns) == 0:
        return pfns, np.zeros(0, dtype=np.intp), kinds
    breaks = np.ones(len(pfns), dtype=np.bool_)
    breaks[1:] = (pfns[1:] != pfns[:-1] + 1) | (kinds[1:] != kinds[:-1])
    starts = np.flatnonzero(breaks)
    lengths = np.diff(np.append(starts, len(pfns)))
    first_pfns = pfns[starts]
    run_kinds = kinds[starts]
    if int(lengths.max()) <= MAX_RUN_PAGES:
        return first_pfns, lengths, run_kinds
    pieces = (lengths + MAX_RUN_PAGES - 1) // MAX_RUN_PAGES
    owner = np.repeat(np.arange(len(lengths)), pieces)
    piece_index = np.arange(len(owner)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    offsets = piece_index * MAX_RUN_PAGES
    return (
        first_pfns[owner] + offsets,
        np.minimum(lengths[owner] - offsets, MAX_RUN_PAGES),
        run_kinds[owner],
    )


def _copy_into(sources: tuple[memoryview, ...], targets: list[memoryview]) -> None:
    """Copy the bytes of `sources`, in order, into `targets` (both hold the same total)."""
    pending = iter(targets)
    target = memoryview(b"")
    for source in sources:
        data = memoryview(source).cast("B")
        while data.nbytes:
            if not target.nbytes:
                target = next(pending)
            step = min(data.nbytes, target.nbytes)
            target[:step] = data[:step]
            data, target = data[step:], target[step:]


def _check_batch(batch: PageBatch, n_pages: int) -> None:
    runs = len(batch.first_pfns)
    if len(batch.n_pages) != runs or len(batch.kinds) != runs:
        raise RamError("ram: batch arrays differ in length")
    if runs == 0:
        return
    ends = batch.first_pfns.astype(np.int64) + batch.n_pages.astype(np.int64)
    if int(ends.max()) > n_pages or int(batch.n_pages.min()) == 0:
        raise RamError(f"ram: batch run outside RAM of {n_pages} pages, or empty")
    normal = batch.kinds == PageKind.NORMAL
    if not np.all(normal | (batch.kinds == PageKind.ZERO)):
        raise RamError(f"ram: unknown page kind in {sorted(set(batch.kinds.tolist()))}")
    expected = (batch.n_pages[normal].astype(np.int64) * PAGE_SIZE).tolist()
    if [view.nbytes for view in batch.data] != expected:
        raise RamError("ram: batch data does not match its NORMAL runs")
