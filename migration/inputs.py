"""Inputs of the migration state machines: what happened, as past-tense facts.

The runner (vmm) feeds them to ``handle(event, now)``: protocol events from a channel, the end of
a flush, channel failures, VM notifications, QMP commands and the ownership decision. Timer
deadlines come in as `TimerFired`. All are frozen, keyword-only dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from migration.params import MigrationParameters
    from protocol import ChannelRole, DestConnection, ErrorCode
    from protocol import Event as ProtocolEvent
    from vmsim import Machine, RunState


@dataclass(frozen=True, slots=True)
class ChannelKey:
    """One channel of a migration: its role and which opening of that role it is.

    A migration may open a role several times (a resolve connection per attempt); events of a
    channel that was since replaced carry an old `serial` and are ignored.
    """

    role: ChannelRole
    serial: int = 0

    def __str__(self) -> str:
        return f"{self.role}#{self.serial}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Input:
    """Base of every input."""


# --------------------------------------------------------------------------- channels


@dataclass(frozen=True, kw_only=True, slots=True)
class ChannelOpened(Input):
    """The runner connected a channel the machine asked for."""

    channel: ChannelKey


@dataclass(frozen=True, kw_only=True, slots=True)
class ChannelJoined(Input):
    """The router routed an accepted channel to this migration (a multifd channel).

    Nothing was read past its CHANNEL handshake: the machine joins `conn` to the migration
    before it asks to read (`Receive`).
    """

    channel: ChannelKey
    conn: DestConnection


@dataclass(frozen=True, kw_only=True, slots=True)
class ChannelOpenFailed(Input):
    """Connecting a channel failed (refused, unreachable, timed out)."""

    channel: ChannelKey
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerEventReceived(Input):
    """The peer's protocol connection on `channel` reported `event`.

    `io_error` names the socket error behind a `ConnectionClosed` (e.g. a reset), if any.
    """

    channel: ChannelKey
    event: ProtocolEvent
    io_error: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ChannelFailed(Input):
    """A channel broke: the peer broke the protocol (`code`), or an I/O error (`code` None)."""

    channel: ChannelKey
    reason: str
    code: ErrorCode | None


@dataclass(frozen=True, kw_only=True, slots=True)
class SendDone(Input):
    """A `Flush` finished: at most its `keep_bytes` are still queued on `channel`."""

    channel: ChannelKey


@dataclass(frozen=True, kw_only=True, slots=True)
class TimerFired(Input):
    """The machine's deadline (``next_deadline()``) passed."""


# --------------------------------------------------------------------------- the VM


@dataclass(frozen=True, kw_only=True, slots=True)
class VmStopped(Input):
    """The VM stopped for the switchover (finish-migrate); `previous` is its run state before."""

    previous: RunState


@dataclass(frozen=True, kw_only=True, slots=True)
class VmStopFailed(Input):
    """Stopping the VM failed (a change-state handler refused); it was stopped all the same."""

    previous: RunState
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class MachinePrepared(Input):
    """The destination's empty machine (RAM allocated and pre-faulted) is ready."""

    machine: Machine


@dataclass(frozen=True, kw_only=True, slots=True)
class MachinePrepareFailed(Input):
    """Building the destination's machine failed (e.g. out of memory)."""

    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class VmAdopted(Input):
    """The daemon installed the migrated VM; `runstate` is what it runs as now."""

    runstate: str


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, kw_only=True, slots=True)
class CancelRequested(Input):
    """`migrate_cancel`."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StartPostcopyRequested(Input):
    """`migrate-start-postcopy` (or a timeout policy): switch once precopy cannot end."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ResumeRequested(Input):
    """`migrate {uri, resume: true}`: take a paused postcopy up again on a new connection."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PagesNeeded(Input):
    """Postcopy destination: the running guest blocked on these missing pages."""

    pfns: NDArray[np.intp] = field(compare=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class ContinueRequested(Input):
    """`migrate-continue` from pre-switchover."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ParametersChanged(Input):
    """`migrate-set-parameters` during the migration (downtime limit, bandwidth, timeouts)."""

    params: MigrationParameters


@dataclass(frozen=True, kw_only=True, slots=True)
class OperatorResolved(Input):
    """`x-migrate-resolve`: the operator says whether the destination runs the VM."""

    destination_runs: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class ShutdownRequested(Input):
    """The daemon exits: drop the channels and decide nothing (docs/handover.md)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TakenOver(Input):
    """A recover channel takes this migration over: stand down as if the connection broke.

    The record is left paused (postcopy-paused, or a precopy kept for the reconnection) for
    the new connection's machine, never half-recovered.
    """


@dataclass(frozen=True, kw_only=True, slots=True)
class HandoverDecided(Input):
    """The ownership decision (`DecideHandover`): hand the VM over, or keep it here."""

    commit: bool
    reason: str = ""
