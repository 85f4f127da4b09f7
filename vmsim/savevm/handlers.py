"""SaveVMHandlers: the hooks of an iterable (live) section such as RAM, and its page batches.

The hooks are QEMU's include/migration/register.h, reduced to what precopy uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Protocol

import numpy as np

from vmsim.config import PAGE_SIZE

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["MAX_RUN_PAGES", "PageBatch", "PageKind", "SaveVMHandlers"]

MAX_RUN_PAGES = 65535
"""Longest run of one batch entry (the wire carries a run length as u16)."""


class PageKind(IntEnum):
    """How a run of pages travels; the numbers are the wire's."""

    NORMAL = 1
    ZERO = 2


@dataclass(frozen=True, kw_only=True, slots=True)
class PageBatch:
    """A batch of guest pages as runs of consecutive pages of one kind.

    Attributes:
        first_pfns: the first page frame number of each run.
        n_pages: the length of each run (1 .. 65535).
        kinds: the PageKind of each run.
        data: one read-only memoryview of guest RAM per NORMAL run, in order. These are views,
            never copies: a page that changes before the bytes are sent is dirty again and is
            sent again later (QEMU's rule).
        normal_pages: pages in NORMAL runs.
        zero_pages: pages in ZERO runs.
        delta_lens: with XBZRLE runs (one page each, after every NORMAL run), the length of
            each one's delta: `data` then ends with one buffer holding all of them in run order
            (None: one buffer per XBZRLE run, or none).
    """

    first_pfns: NDArray[np.uint32]
    n_pages: NDArray[np.uint16]
    kinds: NDArray[np.uint8]
    data: tuple[memoryview, ...]
    normal_pages: int
    zero_pages: int
    delta_lens: NDArray[np.int64] | None = None

    @classmethod
    def empty(cls) -> PageBatch:
        """A batch with no runs."""
        return cls(
            first_pfns=np.zeros(0, dtype=np.uint32),
            n_pages=np.zeros(0, dtype=np.uint16),
            kinds=np.zeros(0, dtype=np.uint8),
            data=(),
            normal_pages=0,
            zero_pages=0,
        )

    @property
    def n_runs(self) -> int:
        """The number of runs."""
        return len(self.first_pfns)

    @property
    def total_pages(self) -> int:
        """Pages in the batch, of any kind."""
        return self.normal_pages + self.zero_pages

    @property
    def data_bytes(self) -> int:
        """Bytes of page data it carries: its NORMAL pages, and its deltas if any."""
        deltas = int(self.delta_lens.sum()) if self.delta_lens is not None else 0
        return self.normal_pages * PAGE_SIZE + deltas


class SaveVMHandlers(Protocol):
    """The hooks of an iterable section (QEMU's SaveVMHandlers, precopy subset).

    Save side, in call order: save_setup once; save_live_iterate while the VM runs, with
    state_pending_estimate/exact in between; save_complete with the VM stopped until it
    returns None; save_cleanup. Load side: load_setup, load_state per batch, load_cleanup.
    """

    def save_setup(self) -> dict[str, object]:
        """Prepare to save (start dirty tracking) and return the START section's payload."""
        ...

    def save_live_iterate(self, max_pages: int) -> PageBatch | None:
        """Return up to max_pages pages still to send, or None if none are left for now."""
        ...

    def save_complete(self, max_pages: int) -> PageBatch | None:
        """With the VM stopped, return the remaining pages batch by batch, then None."""
        ...

    def state_pending_estimate(self) -> int:
        """Bytes still to send, as known without synchronising (cheap)."""
        ...

    def state_pending_exact(self) -> int:
        """Bytes still to send after a dirty-log sync."""
        ...

    def save_cleanup(self) -> None:
        """Release save-side resources (stop dirty tracking)."""
        ...

    def load_setup(self, setup: dict[str, object]) -> None:
        """Check a START payload against the local machine and prepare to load."""
        ...

    def load_state(self, batch: PageBatch) -> None:
        """Load one batch of pages."""
        ...

    def load_cleanup(self) -> None:
        """Release load-side resources."""
        ...
