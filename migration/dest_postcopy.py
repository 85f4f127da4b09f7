"""The destination's part of postcopy: discards, the switch, and the guest's page requests.

After POSTCOPY_ADVISE the stream may switch to postcopy: POSTCOPY_RAM_DISCARD commands name the
pages that will come again, POSTCOPY_LISTEN starts postcopy on the machine (those pages are
missing from now on, `vmsim.postcopy`), the device state loads, and POSTCOPY_RUN runs the guest
(`DestMigration`). When the running guest blocks on missing pages the VMM says so
(`PagesNeeded`), and they are requested on the return path (REQ_PAGES), each page once: the
source serves requests ahead of its background push.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np

from migration.errors import LoadError
from protocol import (
    ConnectionClosed,
    DescriptionReceived,
    ErrorCode,
    MultifdPagesReceived,
    PeerTimedOut,
    StreamEnded,
)
from protocol.postcopy import MAX_REQUEST_RANGES, ranges_mask, ranges_of_pages
from vmsim import RamLoader
from vmsim.postcopy import PostcopyPages, unique_pages

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from protocol import DestConnection, MigrationConfiguration, PageRanges
    from vmsim import Machine

BITMAP_FRAME_PAGES: Final = 1 << 21
"""Pages one RECV_BITMAP frame covers (256 KiB of bitmap, 8 GiB of RAM)."""
MAX_REQUEST_PAGES: Final = 1024
"""Pages asked for in one REQ_PAGES (4 MiB): the pages a blocked slice waits for come first."""


class PostcopyIncoming:
    """Postcopy on the destination, from POSTCOPY_ADVISE to the last page.

    Attributes:
        advised: POSTCOPY_ADVISE arrived.
        requests: REQ_PAGES sent.
        requested_pages: pages asked for in them.
    """

    def __init__(self) -> None:
        self.advised = False
        self.requests = 0
        self.requested_pages = 0
        self._discards: list[PageRanges] = []
        self._requested: NDArray[np.bool_] | None = None

    @property
    def running(self) -> bool:
        """Whether the switch happened (LISTEN arrived)."""
        return self._requested is not None

    def discard(self, ranges: PageRanges) -> None:
        """POSTCOPY_RAM_DISCARD: these pages will come again."""
        self._discards.append(ranges)

    def listen(self, machine: Machine) -> None:
        """POSTCOPY_LISTEN: the discarded pages are missing from now on.

        Raises:
            LoadError: no POSTCOPY_ADVISE came first (UNEXPECTED_SECTION).
            VMSimError: a page is outside RAM, or a device page is missing.
        """
        if not self.advised:
            msg = "POSTCOPY_LISTEN without POSTCOPY_ADVISE at setup"
            raise LoadError(msg, ErrorCode.UNEXPECTED_SECTION)
        missing = ranges_mask(self._discards, machine.ram.n_pages)
        self._discards = []
        machine.start_postcopy(missing)
        self._requested = np.zeros(machine.ram.n_pages, dtype=np.bool_)

    def resume(self, machine: Machine) -> None:
        """A recover channel: ask again for whatever the guest waits for (nothing is in flight)."""
        self.advised = True
        self._requested = np.zeros(machine.ram.n_pages, dtype=np.bool_)

    @staticmethod
    def bitmap_frames(machine: Machine | None, ram_pages: int) -> list[tuple[int, int, bytes]]:
        """RECV_BITMAP frames (first_pfn, n_pages, bitmap) of the pages received here.

        Without postcopy running (every page arrived, or the VM was committed) all are set.
        """
        postcopy = machine.postcopy if machine is not None else None
        received = postcopy.received if postcopy is not None else np.ones(ram_pages, np.bool_)
        frames = []
        for first in range(0, len(received), BITMAP_FRAME_PAGES):
            chunk = received[first : first + BITMAP_FRAME_PAGES]
            frames.append((first, len(chunk), np.packbits(chunk, bitorder="little").tobytes()))
        return frames

    def request(self, pfns: NDArray[np.intp], machine: Machine, conn: DestConnection) -> bool:
        """Ask the source for the pages of `pfns` still missing and not asked for yet.

        Returns:
            Whether a REQ_PAGES was queued.
        """
        postcopy, requested = machine.postcopy, self._requested
        if postcopy is None or requested is None or not len(pfns):
            return False
        wanted = unique_pages(pfns)
        wanted = wanted[~postcopy.received[wanted] & ~requested[wanted]][:MAX_REQUEST_PAGES]
        if not len(wanted):
            return False
        first, count = ranges_of_pages(wanted)
        first, count = first[:MAX_REQUEST_RANGES], count[:MAX_REQUEST_RANGES]
        conn.send_req_pages(first, count)
        for start, n_pages in zip(first.tolist(), count.tolist(), strict=True):
            requested[start : start + n_pages] = True
        self.requests += 1
        self.requested_pages += int(count.sum())
        return True

    def finish(self, machine: Machine) -> None:
        """The stream ended: every page must have arrived.

        Raises:
            LoadError: pages are still missing (LOAD_FAILED).
        """
        postcopy = machine.postcopy
        if postcopy is None:
            return
        if postcopy.missing_count:
            msg = f"the stream ended with {postcopy.missing_count} postcopy pages never sent"
            raise LoadError(msg, ErrorCode.LOAD_FAILED)
        machine.finish_postcopy()


class PreemptIncoming:
    """The destination's postcopy-preempt channel: requested pages ahead of the push.

    Its pages go through a loader of their own (frames of two connections interleave) that
    places only pages still missing: before POSTCOPY_LISTEN none is, so nothing it carries can
    overwrite RAM outside postcopy. The load does not end before its EOF (a page sent on it
    never travels on the main channel).

    Attributes:
        expected: the configuration named `postcopy-preempt`.
        pages: pages received on it.
    """

    def __init__(self, *, expected: bool) -> None:
        self.expected = expected
        self.pages = 0
        self.conn: DestConnection | None = None
        self._loader: RamLoader | None = None
        self._ended = False
        self._held: list[object] = []

    @property
    def received_bytes(self) -> int:
        """Bytes received on it."""
        return self.conn.received_bytes if self.conn is not None else 0

    def join(self, conn: DestConnection, config: MigrationConfiguration, machine: Machine) -> None:
        """Its CHANNEL handshake arrived: its pages go to a loader of its own.

        Raises:
            LoadError: the migration did not name the capability, or one joined already.
        """
        if not self.expected or self.conn is not None:
            msg = "a preempt channel this migration did not announce (postcopy-preempt)"
            raise LoadError(msg, ErrorCode.UNEXPECTED_SECTION)
        self._loader = RamLoader(machine.ram)
        self._loader.postcopy = PostcopyPages(machine.ram.n_pages, np.zeros(0, np.int64))
        self.listened(machine)
        conn.join(config, self._loader)
        self.conn = conn

    def listened(self, machine: Machine) -> None:
        """Postcopy runs (LISTEN, or a recovery): place what the guest still misses."""
        if self._loader is not None and machine.ram_handler.loader.postcopy is not None:
            self._loader.postcopy = machine.ram_handler.loader.postcopy

    def hold(self, event: object, *, running: bool) -> bool:
        """Keep the main stream's end until the preempt channel ended; whether kept."""
        waits = isinstance(event, StreamEnded | DescriptionReceived)
        if self.expected and running and waits and not self._ended:
            self._held.append(event)
            return True
        return False

    def on_event(self, event: object) -> list[object]:
        """An event of the preempt channel; the held main-stream events once it ended.

        Raises:
            LoadError: it closed before its EOF (the pages sent on it may be lost).
        """
        match event:
            case MultifdPagesReceived(normal_pages=normal, zero_pages=zero):
                self.pages += normal + zero
            case StreamEnded():
                self._ended = True
                held, self._held = self._held, []
                return held
            case ConnectionClosed() | PeerTimedOut() if not self._ended:
                msg = "the preempt channel closed before its end"
                raise LoadError(msg, ErrorCode.PROTOCOL_ERROR)
            case _:
                pass
        return []
