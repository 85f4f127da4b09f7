"""Precopy resume (beyond QEMU): what a precopy whose connection broke keeps, and when it retries.

A precopy migration whose connection breaks before the switchover does not start over: the VM
runs on here, the source keeps its dirty bitmap and the destination keeps what it loaded, and the
source reconnects on a `recover` channel within `x-precopy-resume-ms` (docs/protocol.md 1.11,
docs/handover.md). The destination answers RESUME_POINT: how many RAM frames of the stream it
loaded. A received-page bitmap cannot say *which copy* of a page arrived (a page sent in pass 1
may have arrived while its pass-2 copy was lost in the kernel's buffers), but frames arrive in
order on one TCP stream, so the count is exact: every page whose last copy went in a later frame
is sent again, and every page dirtied since is in the bitmap anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np

from migration.backoff import Backoff

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from migration.xbzrle import XbzrleEncoder
    from vmsim import PageBatch, RamSaveHandler

PRECOPY_RESUME_CAPABILITY: Final = "x-precopy-resume"
"""Named in the configuration when the source will reconnect: the destination keeps its copy."""

RECONNECT_FIRST_S: Final = 0.1
RECONNECT_MAX_S: Final = 1.0


def batch_pfns(batch: PageBatch) -> NDArray[np.intp]:
    """Every page of a batch's runs, in order."""
    counts = batch.n_pages.astype(np.intp)
    if not len(counts):
        return np.zeros(0, dtype=np.intp)
    starts = np.repeat(batch.first_pfns.astype(np.intp) - np.cumsum(counts) + counts, counts)
    return starts + np.arange(int(counts.sum()), dtype=np.intp)


class SentFrames:
    """Which RAM frame carried the last copy of each page sent (1-based; 0: none unconfirmed).

    Attributes:
        ram_frames: RAM frames of the stream so far, on every connection (the destination
            counts the ones it loaded the same way).
    """

    def __init__(self, n_pages: int) -> None:
        self.ram_frames = 0
        self._frame_of_page = np.zeros(n_pages, dtype=np.int64)

    def sent(self, batch: PageBatch) -> None:
        """One RAM frame with these pages was queued."""
        self.ram_frames += 1
        self._frame_of_page[batch_pfns(batch)] = self.ram_frames

    def unconfirmed(self, loaded_frames: int) -> NDArray[np.intp]:
        """The destination loaded `loaded_frames`: the pages whose last copy went after them.

        The count of the stream restarts there (the frames after it never counted).
        """
        pages = np.flatnonzero(self._frame_of_page > loaded_frames)
        self._frame_of_page[pages] = 0
        self.ram_frames = loaded_frames
        return pages

    def resend(self, loaded_frames: int, ram: RamSaveHandler, xbzrle: XbzrleEncoder | None) -> int:
        """Mark the unconfirmed pages to send again; return how many.

        They also leave XBZRLE's cache: a delta needs the copy it was made against.
        """
        pages = self.unconfirmed(loaded_frames)
        ram.mark_unsent(pages)
        if xbzrle is not None:
            xbzrle.forget(pages)
        return len(pages)


class ReconnectBudget(Backoff):
    """`x-precopy-resume-ms`: reconnect with backoff (100 ms doubling to 1 s) until the deadline.

    The deadline counts from the first break; a resumed connection that breaks again starts a
    new budget.
    """

    def __init__(self) -> None:
        super().__init__(RECONNECT_FIRST_S, RECONNECT_MAX_S)
        self.breaks = 0
        self.deadline: float | None = None

    @property
    def reconnecting(self) -> bool:
        """Whether the connection is broken and not yet taken up again."""
        return self.deadline is not None

    def lost(self, now: float, budget_s: float) -> bool:
        """The connection (or an attempt) failed: schedule the next attempt; False if too late."""
        if self.deadline is None:
            self.breaks += 1
            self.deadline = now + budget_s
        if now >= self.deadline:
            return False
        self.schedule(now, not_after=self.deadline)
        return True

    def resumed(self) -> None:
        """Precopy goes on: a later break gets a whole budget again."""
        self.reset()
        self.deadline = None
