"""The phases of the destination machine (`migration.dest`), each carrying what it waits with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol import PeerTimedOut

if TYPE_CHECKING:
    from migration.ledger import IncomingRecord
    from protocol import ConnectionClosed, MigrationConfiguration


@dataclass(frozen=True, slots=True)
class AwaitingConfiguration:
    """The channel is ours; its CONFIGURATION has not arrived yet."""


@dataclass(frozen=True, slots=True)
class AwaitingRam:
    """Guest RAM is being allocated; OPEN_ACK goes out once it is ready (if asked for)."""

    record: IncomingRecord
    config: MigrationConfiguration
    ack_requested: bool = False


@dataclass(frozen=True, slots=True)
class Receiving:
    """Sections arrive and load; `ended` once EOF arrived."""

    record: IncomingRecord
    config: MigrationConfiguration
    ended: bool = False


@dataclass(frozen=True, slots=True)
class Adopting:
    """Committed: the daemon installs the VM; RESUMED follows."""

    record: IncomingRecord


@dataclass(frozen=True, slots=True)
class AwaitingReconnect:
    """Precopy, and the connection broke: the copy is kept until `until` for a recover channel."""

    record: IncomingRecord
    until: float


@dataclass(frozen=True, slots=True)
class Closing:
    """The last reply is on its way; the channel closes once it left."""


@dataclass(frozen=True, slots=True)
class Done:
    """Nothing left to do."""


Phase = (
    AwaitingConfiguration | AwaitingRam | Receiving | Adopting | AwaitingReconnect | Closing | Done
)


def describe_loss(event: ConnectionClosed | PeerTimedOut) -> str:
    """Why the source's stream ended, for the record."""
    if isinstance(event, PeerTimedOut):
        return f"the source went silent for {event.idle_s:.1f} s"
    return "the source closed the connection" if event.clean else "the connection was cut"
