"""Multifd on the destination: the channels that joined a migration, and when all of them ended.

Each multifd channel gets its own RAM loader (a loader keeps the state of the frame it is
receiving, and the channels' frames interleave); all of them write the same guest RAM. Pages
never need ordering across channels: the source stripes RAM so that a page always travels on
the same channel (`migration.multifd`).

Device state must not load before the RAM it may read: a device's post_load can rebuild its
state from guest memory (the ITS reads its table there, as GICv3's does), and the main stream
runs ahead of the multifd channels. So once SWITCHOVER_START arrived, FULL sections, EOF and
VMDESCRIPTION wait until every channel sent EOF after the same last MULTIFD_SYNC (QEMU's main
thread waits in `multifd_recv_sync_main` for the same reason).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from migration.errors import LoadError
from protocol import (
    ConnectionClosed,
    DescriptionReceived,
    DeviceStateReceived,
    ErrorCode,
    MultifdPagesReceived,
    MultifdSynced,
    PeerTimedOut,
    StreamEnded,
)
from vmsim import RamLoader

if TYPE_CHECKING:
    from migration.metrics import DestMetrics
    from protocol import DestConnection, MigrationConfiguration
    from vmsim import Machine


class MultifdReceivers:
    """The multifd channels of one incoming migration.

    Args:
        expected: how many channels the configuration announced (0: none).
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.conns: dict[int, DestConnection] = {}
        self._last_pass: dict[int, int] = {}
        self._ended: set[int] = set()
        self._switched_over = False
        self._held: list[object] = []

    @property
    def all_ended(self) -> bool:
        """Every announced channel sent EOF."""
        return len(self._ended) == self.expected

    @property
    def received_bytes(self) -> int:
        """Bytes received on the multifd channels."""
        return sum(conn.received_bytes for conn in self.conns.values())

    def switched_over(self) -> None:
        """SWITCHOVER_START arrived: device state from now on waits for the RAM."""
        self._switched_over = True

    def hold(self, event: object) -> bool:
        """Keep a main-stream event that must wait for the multifd channels; whether kept."""
        waits = isinstance(event, DeviceStateReceived | StreamEnded | DescriptionReceived)
        if self._switched_over and waits and not self.all_ended:
            self._held.append(event)
            return True
        return False

    def release(self) -> list[object]:
        """Every channel ended: check them, and hand back the held events, in order.

        Raises:
            LoadError: a channel is missing a pass the others have.
        """
        self._check_passes()
        held, self._held = self._held, []
        return held

    def join(
        self, index: int, conn: DestConnection, config: MigrationConfiguration, machine: Machine
    ) -> None:
        """Channel `index` carries pages into `machine`'s RAM from now on.

        Raises:
            LoadError: the configuration announced no such channel, or it joined already.
        """
        if index >= self.expected:
            msg = f"multifd channel {index} joined, the configuration announced {self.expected}"
            raise LoadError(msg, ErrorCode.UNEXPECTED_SECTION)
        if index in self.conns:
            msg = f"multifd channel {index} joined twice"
            raise LoadError(msg, ErrorCode.UNEXPECTED_SECTION)
        conn.join(config, RamLoader(machine.ram))
        self.conns[index] = conn

    def on_event(self, index: int, event: object, metrics: DestMetrics) -> bool:
        """Account an event of channel `index`; whether that channel just ended.

        Raises:
            LoadError: a pass went backwards, or the channel closed before its EOF.
        """
        if isinstance(event, MultifdPagesReceived):
            metrics.normal_pages += event.normal_pages
            metrics.zero_pages += event.zero_pages
        elif isinstance(event, MultifdSynced):
            if event.pass_number <= self._last_pass.get(index, 0):
                msg = f"multifd channel {index}: pass {event.pass_number} after a later one"
                raise LoadError(msg, ErrorCode.UNEXPECTED_SECTION)
            self._last_pass[index] = event.pass_number
        elif isinstance(event, StreamEnded):
            self._ended.add(index)
            return True
        elif isinstance(event, ConnectionClosed | PeerTimedOut) and index not in self._ended:
            msg = f"multifd channel {index} ended before its EOF"
            raise LoadError(msg, ErrorCode.PROTOCOL_ERROR)
        return False

    def _check_passes(self) -> None:
        """Every channel ended after the same last pass.

        Raises:
            LoadError: a channel is missing a pass the others have.
        """
        passes = {self._last_pass.get(index, 0) for index in range(self.expected)}
        if len(passes) > 1:
            msg = f"multifd channels ended after different passes: {sorted(passes)}"
            raise LoadError(msg, ErrorCode.PROTOCOL_ERROR)
