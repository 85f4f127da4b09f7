"""The postcopy-preempt channel (QEMU's `postcopy-preempt`): requested pages on their own road.

In postcopy a page the destination's guest waits for is urgent, but on the main channel it
queues behind the background push already in the kernel's buffers (megabytes on a fast link).
With the capability, the source opens a `preempt` channel at the switch and sends every page the
destination asked for on it, as PAGES frames, then EOF once the push is over; the background
push stays on the main channel (docs/protocol.md 1.10). The destination names the capability
in its configuration and does not end the load before the preempt channel's EOF, since a page
sent there never travels on the main channel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from migration.actions import OpenChannel
from migration.inputs import ChannelKey
from protocol import ChannelRole, SourceConnection

if TYPE_CHECKING:
    from migration.outbox import Outbox
    from protocol import MigrationConfiguration
    from vmsim import PageBatch

PREEMPT: Final = ChannelKey(ChannelRole.PREEMPT)


class PreemptChannel:
    """The source's preempt channel of one postcopy (a new one after each recovery).

    Attributes:
        ready: its handshake went out: pages may follow.
        pages: pages sent on it.
    """

    def __init__(self, outbox: Outbox, *, authenticated: bool = False) -> None:
        self._out = outbox
        self.conn = SourceConnection(timeouts=None, now=outbox.now, authenticated=authenticated)
        self.ready = False
        self.pages = 0
        self._end_pending = False

    def open(self) -> None:
        """Connect it (the runner answers ChannelOpened or ChannelOpenFailed)."""
        self._out.do(OpenChannel(channel=PREEMPT, conn=self.conn))

    def opened(self, config: MigrationConfiguration) -> None:
        """Connected: the handshake, and the EOF if the push ended meanwhile."""
        self.conn.open_preempt(config)
        self.ready = True
        if self._end_pending:
            self.conn.send_eof()
        self._out.flush(PREEMPT)

    def send(self, batch: PageBatch) -> None:
        """Requested pages, as one PAGES frame (the sender does not wait for it to leave)."""
        self.conn.send_pages(batch)
        self.pages += batch.normal_pages + batch.zero_pages
        self._out.flush(PREEMPT)

    def end(self) -> None:
        """The push is over: EOF (once connected; the destination waits for it)."""
        if not self.ready:
            self._end_pending = True
            return
        self.conn.send_eof()
        self._out.flush(PREEMPT)
