"""The source's part of postcopy: when it may switch, the switch, and serving page requests.

With the `postcopy-ram` capability the stream is advised at setup (POSTCOPY_ADVISE) and runs as
precopy. `migrate-start-postcopy` asks for the switch; as in QEMU (`migration_iteration_run`) it
happens at the next round that does not fit the downtime limit (one that does completes as
precopy). The switch, with the VM stopped and the ownership arbiter's consent (the destination
owns the guest from POSTCOPY_RUN on, docs/handover.md): the device pages, the discard of every
page still to send, POSTCOPY_LISTEN, the device state, POSTCOPY_RUN. Then the missing pages go
out, pages the destination asks for (REQ_PAGES) ahead of the background push.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

import numpy as np

from migration.backoff import Backoff
from migration.errors import CommandRefusedError
from migration.status import MigrationStatus
from protocol.postcopy import MAX_DISCARD_RANGES, ranges_of_mask
from vmsim import PAGE_SIZE, state_complete_devices

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

    from migration.metrics import SourceMetrics
    from migration.params import MigrationCapabilities
    from protocol import PageRanges, ReceivedBitmap, SourceConnection
    from vmsim import Machine, PageBatch, SectionFull

POSTCOPY_FRAME_MS: Final = 4.0
"""A background frame after the switch takes about this long at the rate precopy moved, and
one is kept queued ahead of the kernel: a requested page waits behind it (and the sockets'
buffers), not behind precopy's 16 MiB. On loopback the push of a 1 GiB busy guest took
0.75-0.79 s with 4 MiB frames against 1.03-1.16 s with 1 MiB and 0.86-0.89 with 16 MiB, and its
guest blocked 567-644 ms against 856-951 (`bench postcopy`, three each); precopy moves that
guest at ~1.1 GB/s (its vCPU shares the source's core), so 4 ms of it is the 4 MiB."""
POSTCOPY_BATCH_PAGES: Final = 256
"""1 MiB frames when precopy moved nothing to measure (a switch right after setup)."""
POSTCOPY_MIN_BATCH_PAGES: Final = 64
POSTCOPY_MAX_BATCH_PAGES: Final = 1024


def push_batch_pages(rate_bytes_per_s: float, cap_bytes_per_s: int = 0) -> int:
    """Pages per background frame after the switch, for a link that carries this rate.

    `cap_bytes_per_s` is `max-postcopy-bandwidth` (0: none): the push is held to it.
    """
    if cap_bytes_per_s > 0:
        rate_bytes_per_s = (
            min(rate_bytes_per_s, cap_bytes_per_s) if rate_bytes_per_s > 0 else cap_bytes_per_s
        )
    if not rate_bytes_per_s > 0:
        return POSTCOPY_BATCH_PAGES
    pages = int(rate_bytes_per_s * POSTCOPY_FRAME_MS / 1000.0 / PAGE_SIZE)
    return max(POSTCOPY_MIN_BATCH_PAGES, min(POSTCOPY_MAX_BATCH_PAGES, pages))


CANCEL_IN_POSTCOPY: Final = (
    "the migration is in postcopy: the destination runs the guest and only this side holds its "
    "missing pages, migrate_cancel is not possible now"
)


AUTO_RECOVER_FIRST_S: Final = 0.1
AUTO_RECOVER_MAX_S: Final = 5.0


class AutoRecover(Backoff):
    """`x-auto-recover`: when a paused postcopy tries again (100 ms, doubling, at most 5 s).

    Forever: the paused VM has no other way back, and an operator may still resume it by hand
    or fix what keeps the link down.
    """

    def __init__(self) -> None:
        super().__init__(AUTO_RECOVER_FIRST_S, AUTO_RECOVER_MAX_S)

    def paused(self, now: float) -> None:
        """The connection broke (or an attempt failed): the next attempt is due later."""
        self.schedule(now)

    def recovered(self) -> None:
        """Postcopy runs again: a later break starts from the first delay."""
        self.reset()


def check_start(caps: MigrationCapabilities, status: MigrationStatus) -> None:
    """`migrate-start-postcopy` is refused without the capability or outside setup/active.

    Raises:
        CommandRefusedError: with QEMU's messages.
    """
    if not caps.postcopy_ram:
        msg = "Enable postcopy with migrate_set_capability before the start of migration"
        raise CommandRefusedError(msg)
    if status not in {MigrationStatus.SETUP, MigrationStatus.ACTIVE}:
        msg = "Postcopy must be started after migration has been started"
        raise CommandRefusedError(msg)


class PostcopyPush:
    """After POSTCOPY_RUN: which pages go next (requested ones first), and what was asked.

    Attributes:
        requests: REQ_PAGES received (QEMU's `postcopy-requests`).
        requested_pages: pages asked for in them.
    """

    def __init__(
        self,
        machine: Machine,
        *,
        now: float,
        batch_pages: int,
        encode: Callable[[PageBatch], PageBatch] | None = None,
    ) -> None:
        self._handler = machine.ram_handler
        self.batch_pages = batch_pages  # per background frame (`push_batch_pages`)
        self._encode = encode  # of the pages it sends (x-postcopy-xbzrle: as deltas)
        self._requests: deque[NDArray[np.intp]] = deque()
        self.requests = 0
        self.requested_pages = 0
        self._started_at = now
        self._background_bytes = 0

    @property
    def frame_bytes(self) -> int:
        """Page data in one background frame (and kept queued ahead of the kernel)."""
        return self.batch_pages * PAGE_SIZE

    def background_due_at(self, now: float, rate_bytes_per_s: int) -> float | None:
        """`max-postcopy-bandwidth`: when the next background frame may go (None: now).

        Only the background push is held to it; a requested page never waits (the guest is
        blocked on it), as with QEMU's preempt channel.
        """
        if rate_bytes_per_s <= 0:
            return None
        next_bytes = self._background_bytes + self.frame_bytes
        due_at = self._started_at + next_bytes / rate_bytes_per_s
        return due_at if due_at > now else None

    def background_batch(self) -> PageBatch | None:
        """The next pages of the background push (None: all sent), counted against the rate."""
        batch = self._handler.save_live_iterate(self.batch_pages)
        if batch is None:
            return None
        if self._encode is not None:
            batch = self._encode(batch)
        self._background_bytes += batch.data_bytes
        return batch

    def forget_requests(self) -> None:
        """A new connection: requests in flight on the old one are asked again if still due."""
        self._requests.clear()

    def request(self, ranges: PageRanges) -> None:
        """REQ_PAGES: serve these pages before the background push."""
        self.requests += 1
        self.requested_pages += ranges.n_pages
        self._requests.append(ranges.pages().astype(np.intp))

    def urgent_batch(self, *, whole: bool = False) -> PageBatch | None:
        """The requested pages not sent yet (None: every one went already).

        Encoded as the background push is unless `whole` (the preempt channel carries only
        whole pages).
        """
        while self._requests:
            batch = self._handler.save_pages(self._requests.popleft())
            if batch is not None:
                return batch if whole or self._encode is None else self._encode(batch)
        return None


class BitmapIntake:
    """The destination's received bitmap, as RECV_BITMAP frames bring it in."""

    def __init__(self, n_pages: int) -> None:
        self.received = np.zeros(n_pages, dtype=np.bool_)
        self._covered = np.zeros(n_pages, dtype=np.bool_)

    def add(self, event: ReceivedBitmap) -> bool:
        """Take one frame; True once every page is covered."""
        bits = np.unpackbits(
            np.frombuffer(event.bitmap, dtype=np.uint8), count=event.n_pages, bitorder="little"
        )
        end = event.first_pfn + event.n_pages
        self.received[event.first_pfn : end] = bits.astype(np.bool_)
        self._covered[event.first_pfn : end] = True
        return bool(self._covered.all())


def send_switch(conn: SourceConnection, machine: Machine, ram_section_id: int) -> int:
    """Queue the switch: device pages, discards, LISTEN, device state, RUN; return pages left.

    The VM is stopped. Raises what a save hook or a refused frame raises (before RUN, so the
    source may still resume its VM).
    """
    first, discard = machine.ram_handler.postcopy_start(machine.layout.device_pfns)
    if first is not None:
        conn.send_ram(ram_section_id, first, end=False)
    starts, counts = ranges_of_mask(discard)
    for at in range(0, len(starts), MAX_DISCARD_RANGES):
        end = at + MAX_DISCARD_RANGES
        conn.send_postcopy_discard(starts[at:end], counts[at:end])
    conn.send_postcopy_listen()
    for record in state_complete_devices(machine.savevm):
        _send_full(conn, record)
    conn.send_postcopy_run()
    return int(counts.sum())


def _send_full(conn: SourceConnection, record: SectionFull) -> None:
    conn.send_section_full(
        record.section_id, record.idstr, record.instance_id, record.version_id, record.state
    )


def ram_section_id(machine: Machine) -> int:
    """The RAM section's id in the machine's savevm registry."""
    return next(e.section_id for e in machine.savevm.entries if e.idstr == "ram")


def record_run(metrics: SourceMetrics, *, now: float, missing_pages: int) -> None:
    """POSTCOPY_RUN left: the guest may run there from now on."""
    metrics.postcopy_run_at = now
    metrics.bytes_at_postcopy_run = metrics.transferred_bytes
    metrics.postcopy_missing_pages = missing_pages
    metrics.postcopy_after_pass = metrics.dirty_sync_count
