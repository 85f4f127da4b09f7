"""Guest RAM and its dirty log.

Guest RAM is one contiguous numpy `uint8` buffer (numpy allocations get transparent huge pages,
which makes first touch several times faster than plain mmap). Every write the guest or a
device makes goes through a vectorised `GuestRam` method, which marks the written pages in the
`DirtyLog` while logging is on, like QEMU's migration bitmap under TCG.
"""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Final

import numpy as np

from vmsim.config import PAGE_SIZE
from vmsim.errors import RamError

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

    from vmsim.postcopy import WriteJournal

__all__ = ["WORDS_PER_PAGE", "DirtyLog", "GuestRam", "populate_write", "populate_write_supported"]

WORDS_PER_PAGE: Final = PAGE_SIZE // 8
_WORD_TO_PAGE_SHIFT: Final = np.uint64(9)  # log2(WORDS_PER_PAGE)
_PREFAULT_MAX_THREADS: Final = 4
_PREFAULT_MIN_BYTES_PER_THREAD: Final = 256 << 20
_MADV_POPULATE_WRITE: Final = 23


class DirtyLog:
    """Which pages were written since the last sync: one byte per page.

    A byte map rather than a bit map: marking is a plain vectorised store, and 8 GiB of RAM
    needs only 2 MiB. Everything runs on the vCPU's thread, so `sync` is atomic with respect to
    guest writes by construction: no write can fall between two syncs.
    """

    __slots__ = ("_active", "_map", "_n_pages")

    def __init__(self, n_pages: int) -> None:
        self._n_pages = n_pages
        self._map: NDArray[np.uint8] = np.zeros(n_pages, dtype=np.uint8)
        self._active = False

    @property
    def active(self) -> bool:
        """Whether writes are being logged."""
        return self._active

    def start(self) -> None:
        """Start logging from a clean epoch (KVM_MEM_LOG_DIRTY_PAGES on)."""
        self._map = np.zeros(self._n_pages, dtype=np.uint8)
        self._active = True

    def stop(self) -> None:
        """Stop logging; pages written from now on are not recorded."""
        self._active = False

    def sync(self) -> NDArray[np.bool_]:
        """Hand over the pages dirtied since the last sync and start a new epoch.

        Returns:
            One bool per page, True where the page was written. The array belongs to the caller.
        """
        dirty = self._map
        # np.zeros maps fresh zero pages lazily, so the swap costs far less than clearing.
        self._map = np.zeros(self._n_pages, dtype=np.uint8)
        return dirty.view(np.bool_)

    def count(self) -> int:
        """Return the number of pages dirtied in the current epoch."""
        return int(np.count_nonzero(self._map))

    def mark_pages(self, pfns: NDArray[np.integer]) -> None:
        """Mark the given pages dirty (no-op while logging is off)."""
        if self._active:
            self._map[pfns] = 1

    def mark_range(self, first_pfn: int, n_pages: int) -> None:
        """Mark pages first_pfn .. first_pfn + n_pages - 1 dirty (no-op while logging is off)."""
        if self._active:
            self._map[first_pfn : first_pfn + n_pages] = 1


class GuestRam:
    """The guest's physical memory: `n_pages` pages of `PAGE_SIZE` bytes in one buffer.

    Attributes:
        array: the whole RAM as a flat uint8 array (read freely; write through the methods).
        pages: the same memory viewed as n_pages x PAGE_SIZE.
        view: a writable memoryview of the whole RAM (the wire layer receives pages into it).
        words: the same memory as u64 words, native byte order.
        dirty_log: the dirty log fed by every write method.
    """

    __slots__ = (
        "array",
        "dirty_log",
        "journal",
        "n_pages",
        "pages",
        "size_bytes",
        "view",
        "words",
    )

    def __init__(
        self,
        size_bytes: int,
        *,
        prefault: bool = False,
        memory: NDArray[np.uint8] | None = None,
    ) -> None:
        """Allocate zeroed RAM.

        Args:
            size_bytes: a positive multiple of PAGE_SIZE.
            prefault: touch every page now (a destination does this before the first pass so
                page faults do not slow the stop-and-copy phase; QEMU's -mem-prealloc).
            memory: `size_bytes` of zero-filled memory, faulted in already, to use instead
                (kept as given: zeroing 1 GiB again would cost a destination ~0.1-0.2 s of
                setup).

        Raises:
            RamError: the size is not a positive multiple of PAGE_SIZE, or `memory` is not
                that size.
        """
        if size_bytes <= 0 or size_bytes % PAGE_SIZE:
            raise RamError(f"RAM size {size_bytes} is not a positive multiple of {PAGE_SIZE}")
        if memory is not None and (memory.nbytes != size_bytes or memory.ndim != 1):
            raise RamError(f"memory of {memory.nbytes} bytes given for RAM of {size_bytes}")
        self.size_bytes = size_bytes
        self.n_pages = size_bytes // PAGE_SIZE
        if memory is not None:
            self.array: NDArray[np.uint8] = memory
        else:
            self.array = np.zeros(size_bytes, dtype=np.uint8)
        if prefault and memory is None:
            _prefault(self.array)
        self.pages: NDArray[np.uint8] = self.array.reshape(self.n_pages, PAGE_SIZE)
        self.words: NDArray[np.uint64] = self.array.view(np.uint64)
        self.view = memoryview(self.array.data)
        self.dirty_log = DirtyLog(self.n_pages)
        self.journal: WriteJournal | None = None

    def write_words(self, word_indexes: NDArray[np.uint64], values: NDArray[np.uint64]) -> None:
        """Store u64 values at u64 word indexes (byte address // 8) and mark their pages.

        numpy does not promise which of several stores to one element wins, so a repeated
        index must come with the same value each time (determinism depends on it).
        """
        if self.journal is not None:
            pfns = word_indexes >> _WORD_TO_PAGE_SHIFT
            self.journal.defer(pfns, self._write_words, word_indexes, values)
            return
        self._write_words(word_indexes, values)

    def _write_words(self, word_indexes: NDArray[np.uint64], values: NDArray[np.uint64]) -> None:
        self.words[word_indexes] = values
        self.dirty_log.mark_pages(word_indexes >> _WORD_TO_PAGE_SHIFT)

    def write_word(self, word_index: int, value: int) -> None:
        """Store one u64 at a word index and mark its page."""
        if self.journal is not None:
            pfns = np.array([word_index // WORDS_PER_PAGE], dtype=np.intp)
            self.journal.defer(pfns, self._write_word, word_index, value)
            return
        self._write_word(word_index, value)

    def _write_word(self, word_index: int, value: int) -> None:
        self.words[word_index] = value
        self.dirty_log.mark_range(word_index // WORDS_PER_PAGE, 1)

    def write_bytes(self, address: int, data: bytes | NDArray[np.uint8]) -> None:
        """Copy bytes to a guest physical address and mark the pages they cover."""
        end = address + len(data)
        self._check_span(address, end)
        if self.journal is not None:
            pfns = np.arange(address // PAGE_SIZE, -(-end // PAGE_SIZE), dtype=np.intp)
            self.journal.defer(pfns, self._write_bytes, address, data)
            return
        self._write_bytes(address, data)

    def _write_bytes(self, address: int, data: bytes | NDArray[np.uint8]) -> None:
        end = address + len(data)
        self.array[address:end] = np.frombuffer(data, dtype=np.uint8)
        first_pfn = address // PAGE_SIZE
        self.dirty_log.mark_range(first_pfn, (end + PAGE_SIZE - 1) // PAGE_SIZE - first_pfn)

    def add_to_first_bytes(self, first_pfn: int, n_pages: int, delta: int) -> None:
        """Add delta (mod 256) to byte 0 of each page in a run and mark the run."""
        if n_pages <= 0:
            return
        if self.journal is not None:
            pfns = np.arange(first_pfn, first_pfn + n_pages, dtype=np.intp)
            self.journal.defer(pfns, self._add_to_first_bytes, first_pfn, n_pages, delta)
            return
        self._add_to_first_bytes(first_pfn, n_pages, delta)

    def _add_to_first_bytes(self, first_pfn: int, n_pages: int, delta: int) -> None:
        end = (first_pfn + n_pages) * PAGE_SIZE
        first_bytes = self.array[first_pfn * PAGE_SIZE : end : PAGE_SIZE]
        first_bytes += np.uint8(delta % 256)
        self.dirty_log.mark_range(first_pfn, n_pages)

    def set_first_bytes(self, first_pfn: int, n_pages: int, value: int) -> None:
        """Set byte 0 of each page in a run and mark the run."""
        if self.journal is not None:
            pfns = np.arange(first_pfn, first_pfn + n_pages, dtype=np.intp)
            self.journal.defer(pfns, self._set_first_bytes, first_pfn, n_pages, value)
            return
        self._set_first_bytes(first_pfn, n_pages, value)

    def _set_first_bytes(self, first_pfn: int, n_pages: int, value: int) -> None:
        end = (first_pfn + n_pages) * PAGE_SIZE
        self.array[first_pfn * PAGE_SIZE : end : PAGE_SIZE] = value
        self.dirty_log.mark_range(first_pfn, n_pages)

    def load_pages(self, first_pfn: int, data: memoryview | bytes) -> None:
        """Copy whole pages of data into RAM from first_pfn on and mark them."""
        n_bytes = memoryview(data).nbytes
        n_pages, remainder = divmod(n_bytes, PAGE_SIZE)
        if remainder:
            raise RamError(f"page data of {n_bytes} bytes is not a whole number of pages")
        self._check_pages(first_pfn, n_pages)
        start = first_pfn * PAGE_SIZE
        self.array[start : start + n_bytes] = np.frombuffer(data, dtype=np.uint8)
        self.dirty_log.mark_range(first_pfn, n_pages)

    def store_pages(self, pfns: NDArray[np.intp], data: NDArray[np.uint8]) -> None:
        """Scatter whole pages (data is len(pfns) x PAGE_SIZE) to the given pages; mark them."""
        self.pages[pfns] = data
        self.dirty_log.mark_pages(pfns)

    def zero_page_set(self, pfns: NDArray[np.intp]) -> None:
        """Zero-fill the given pages and mark them."""
        self.pages[pfns] = 0
        self.dirty_log.mark_pages(pfns)

    def zero_pages(self, first_pfn: int, n_pages: int) -> None:
        """Zero-fill a run of pages and mark it."""
        self._check_pages(first_pfn, n_pages)
        self.array[first_pfn * PAGE_SIZE : (first_pfn + n_pages) * PAGE_SIZE] = 0
        self.dirty_log.mark_range(first_pfn, n_pages)

    def read_bytes(self, address: int, n_bytes: int) -> bytes:
        """Return a copy of n_bytes at a guest physical address."""
        self._check_span(address, address + n_bytes)
        return self.array[address : address + n_bytes].tobytes()

    def _check_span(self, start: int, end: int) -> None:
        if start < 0 or end > self.size_bytes or start > end:
            raise RamError(
                f"access [{start:#x}, {end:#x}) outside RAM of {self.size_bytes:#x} bytes"
            )

    def _check_pages(self, first_pfn: int, n_pages: int) -> None:
        if first_pfn < 0 or n_pages < 0 or first_pfn + n_pages > self.n_pages:
            raise RamError(
                f"pages {first_pfn}..{first_pfn + n_pages - 1} outside RAM of {self.n_pages} pages"
            )


def populate_write(
    array: NDArray[np.uint8],
    chunk_bytes: int = 4 << 20,
    stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Fault every page of `array` in for writing without changing a byte (MADV_POPULATE_WRITE).

    Unlike a touch, it preserves what is there, so it may run while pages are being received
    into the same memory: a destination acknowledges at once and lets this run on a thread
    ahead of the stream, instead of making the first pass wait for a whole pre-fault (ctypes
    releases the GIL during the call). Chunked, so the receiver never waits long on the
    kernel's lock for the range it writes; `stop` is asked between chunks (the daemon exits).
    Returns False on kernels before 5.14 (nothing done) or when stopped.
    """
    start = array.ctypes.data
    end = start + array.nbytes
    first = -(-start // PAGE_SIZE) * PAGE_SIZE
    offsets = list(range(first, end - PAGE_SIZE + 1, chunk_bytes))
    for offset in reversed(offsets):
        if stop():
            return False
        length = min(chunk_bytes, (end - offset) // PAGE_SIZE * PAGE_SIZE)
        if _madvise(offset, length, _MADV_POPULATE_WRITE) != 0:
            return False
    return True


def populate_write_supported() -> bool:
    """Whether this kernel has MADV_POPULATE_WRITE (Linux 5.14 or later)."""
    return populate_write(np.zeros(PAGE_SIZE * 2, dtype=np.uint8))


def _madvise(address: int, length: int, advice: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return int(libc.madvise(address, length, advice))


def _prefault(array: NDArray[np.uint8]) -> None:
    """Touch one byte per page, in a few threads: the kernel zeroes pages in parallel.

    numpy releases the GIL for the strided store. Measured here (2 cores, 2 GiB, transparent
    huge pages on madvise): ~12 GB/s with one thread, ~21 GB/s with two.
    """
    threads = min(
        _PREFAULT_MAX_THREADS, os.cpu_count() or 1, len(array) // _PREFAULT_MIN_BYTES_PER_THREAD
    )
    if len(array):
        array[-1] = 0  # a buffer that does not start on a page boundary ends inside one more
    if threads <= 1:
        array[::PAGE_SIZE] = 0
        return
    share = -(-len(array) // threads // PAGE_SIZE) * PAGE_SIZE  # whole pages per thread

    def touch(index: int) -> None:
        array[index * share : (index + 1) * share : PAGE_SIZE] = 0

    with ThreadPoolExecutor(threads, thread_name_prefix="prefault") as pool:
        list(pool.map(touch, range(threads)))
