"""Postcopy on the destination: a guest that runs before all of its pages have arrived.

In postcopy the destination runs the vCPUs while pages are still arriving (QEMU's
userfaultfd). Here every guest write of a slice is first recorded in a `WriteJournal` instead of
being applied; when the slice ends, the journal is applied at once if every page it touches has
been received, and otherwise the vCPU is *blocked*: the journal waits, the missing pages are
what the destination requests from the source, and each arriving page may unblock it.

This is exact, not an approximation: nothing the guest computes depends on what RAM holds (the
ITS translates from its cache; the ab workload keeps its position in registers), so applying a
slice's writes in order after the slice gives the same RAM as applying them during it. The
state after N ticks therefore still equals the replay's, which is how every postcopy migration
is checked. The one RAM read outside the guest's run, the ITS rebuilding its cache at load, is
served by the source sending the device pages (`MachineLayout.device_pfns`) before the device
state.

A page is received at most once: once the guest may have written it, a late copy (a page sent
both on request and by the background push) must never overwrite it (QEMU's UFFDIO_COPY of a
present page fails with EEXIST and is dropped). `PostcopyPages.take` says which pages of a frame
are new.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import numpy as np

from vmsim.errors import RamError

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

__all__ = ["PostcopyPages", "WriteJournal", "unique_pages"]

_NO_PAGES: Final = np.zeros(0, dtype=np.intp)


def unique_pages(pfns: NDArray[np.integer]) -> NDArray[np.intp]:
    """`pfns` sorted, each once.

    `np.unique` imports numpy.ma on its first call: 9 ms, in the guest's pause at the switch.
    """
    ordered = np.sort(pfns.astype(np.intp, copy=False))
    if len(ordered) < 2:  # noqa: PLR2004 - nothing to merge
        return ordered
    keep = np.empty(len(ordered), dtype=np.bool_)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


class WriteJournal:
    """Guest writes recorded in order, with the pages each touches, to be applied later."""

    __slots__ = ("_ops", "_pfns")

    def __init__(self) -> None:
        self._ops: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._pfns: list[NDArray[np.intp]] = []

    def __len__(self) -> int:
        """Writes recorded and not yet applied."""
        return len(self._ops)

    def defer(self, pfns: NDArray[np.integer], apply: Callable[..., None], *args: Any) -> None:  # noqa: ANN401 - a write's own arguments
        """Record one write: `apply(*args)` later, touching `pfns`."""
        self._ops.append((apply, args))
        self._pfns.append(pfns.astype(np.intp, copy=False))

    def pages(self) -> NDArray[np.intp]:
        """Every page the recorded writes touch, sorted, each once."""
        if not self._pfns:
            return _NO_PAGES
        merged = np.concatenate(self._pfns) if len(self._pfns) > 1 else self._pfns[0]
        self._pfns = [unique_pages(merged)]
        return self._pfns[0]

    def replay(self) -> None:
        """Apply every recorded write in order and forget them."""
        ops, self._ops, self._pfns = self._ops, [], []
        for apply, args in ops:
            apply(*args)


class PostcopyPages:
    """Which pages a postcopy destination holds, and the vCPU's journal of waiting writes.

    Attributes:
        received: one bool per page: True once the page's final contents are in RAM.
        journal: the guest's writes not yet applied (the blocked slice, if any).
    """

    def __init__(self, n_pages: int, missing: NDArray[np.integer] | NDArray[np.bool_]) -> None:
        """Every page is received except the `missing` ones (what the source discarded).

        Args:
            n_pages: The RAM's pages.
            missing: The missing page numbers, or one bool per page (True: missing).

        Raises:
            RamError: a missing page is outside RAM, or the mask is not one bool per page.
        """
        if missing.dtype == np.bool_:
            if len(missing) != n_pages:
                raise RamError(f"postcopy: {len(missing)} bools for a RAM of {n_pages} pages")
            self.received: NDArray[np.bool_] = np.logical_not(missing)
        else:
            outside = len(missing) and (int(missing.min()) < 0 or int(missing.max()) >= n_pages)
            if outside:
                raise RamError(f"postcopy: missing pages outside RAM of {n_pages} pages")
            self.received = np.ones(n_pages, dtype=np.bool_)
            self.received[missing] = False
        self._missing_count = n_pages - int(np.count_nonzero(self.received))
        self.journal = WriteJournal()

    @property
    def missing_count(self) -> int:
        """Pages not received yet."""
        return self._missing_count

    @property
    def blocked(self) -> bool:
        """Whether the vCPU waits for pages (writes are journaled that touch missing ones)."""
        return len(self.journal) > 0

    def waiting_for(self) -> NDArray[np.intp]:
        """The pages the blocked vCPU needs that have not arrived (empty if not blocked)."""
        if not self.blocked:
            return _NO_PAGES
        pages = self.journal.pages()
        return pages[~self.received[pages]]

    def take(self, pfns: NDArray[np.integer]) -> NDArray[np.bool_]:
        """Pages of a frame arrived: mark them received; True where a page is new.

        A page already received keeps what it holds (the guest may have written it), so the
        caller places only the pages marked True.
        """
        new: NDArray[np.bool_] = ~self.received[pfns]
        fresh = unique_pages(pfns[new])
        self.received[fresh] = True
        self._missing_count -= len(fresh)
        return new

    def try_unblock(self) -> bool:
        """Apply the journal if every page it touches has arrived; True if the vCPU may run."""
        if not self.blocked:
            return True
        pages = self.journal.pages()
        if not bool(self.received[pages].all()):
            return False
        self.journal.replay()
        return True
