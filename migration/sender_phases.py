"""The steps of the source's stream sender (`migration.sender`) and the milestones it reports.

Each phase is a small value carrying what the sender waits with, so nothing is cleared by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from migration.source_postcopy import BitmapIntake
    from vmsim import SectionFull, SectionPart


# --------------------------------------------------------------------------- phases


@dataclass(frozen=True, slots=True)
class Connecting:
    """Waiting for the main channel to connect."""


@dataclass(frozen=True, slots=True)
class AwaitingAck:
    """CONFIGURATION and OPEN_RETURN_PATH sent; waiting for OPEN_ACK (RAM ready there)."""


@dataclass(frozen=True, slots=True)
class SendingSetup:
    """START sections queued; waiting for them to leave."""


@dataclass(frozen=True, slots=True)
class Sending:
    """Precopy: a batch is queued; the next one is built when the kernel took the one before."""


@dataclass(frozen=True, slots=True)
class Draining:
    """Precopy: the round is over; the channel drains before the next decision."""

    resume_at: float | None = None  # throttled: the next round starts when the slot does


@dataclass(frozen=True, slots=True)
class Sleeping:
    """Precopy: the slot's byte budget is spent; the next round starts at `until`."""

    until: float


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing to send now (the VM is being stopped, or the switchover waits)."""


@dataclass(frozen=True, slots=True)
class Completing:
    """Switchover: END and FULL sections go out one by one.

    RAM parts keep one batch queued ahead, as in precopy (draining to empty after each left
    the link idle while the next batch was gathered: 15-25 ms of a 50 ms downtime). The first
    device record waits in `held` until the RAM has left, which marks the end of final-ram.
    """

    records: Iterator[SectionPart | SectionFull]
    held: SectionFull | None = None


@dataclass(frozen=True, slots=True)
class PostcopySwitching:
    """Postcopy: the switch (device pages, discards, device state, RUN) is on its way."""

    missing_pages: int


@dataclass(frozen=True, slots=True)
class PostcopyPushing:
    """Postcopy: the missing pages go out, requested ones first; the guest runs there."""


@dataclass(frozen=True, slots=True)
class PostcopyThrottled:
    """Postcopy: the background push waits for `max-postcopy-bandwidth` until `until`."""

    until: float


@dataclass(frozen=True, slots=True)
class RecoverConnecting:
    """Postcopy recovery: the recover channel is being connected."""


@dataclass(frozen=True, slots=True)
class RecoverAwaitingBitmap:
    """Postcopy recovery: CHANNEL recover sent; the destination's bitmap comes in."""

    intake: BitmapIntake


@dataclass(frozen=True, slots=True)
class ResumeAwaitingPoint:
    """Precopy resume: CHANNEL recover sent; the destination's RESUME_POINT comes in."""


@dataclass(frozen=True, slots=True)
class SendingEnd:
    """EOF and VMDESCRIPTION queued; waiting for the stream's last bytes to leave."""


Phase = (
    Connecting
    | AwaitingAck
    | SendingSetup
    | Sending
    | Draining
    | Sleeping
    | Idle
    | Completing
    | PostcopySwitching
    | PostcopyPushing
    | PostcopyThrottled
    | RecoverConnecting
    | RecoverAwaitingBitmap
    | ResumeAwaitingPoint
    | SendingEnd
)


# --------------------------------------------------------------------------- milestones


@dataclass(frozen=True, slots=True)
class SetupDone:
    """The START sections left: precopy may begin."""


@dataclass(frozen=True, slots=True)
class SwitchoverDue:
    """A round decided to switch over: stop the VM."""

    pending_bytes: int


@dataclass(frozen=True, slots=True)
class PostcopyDue:
    """migrate-start-postcopy was asked and the round does not fit the limit: stop the VM."""


@dataclass(frozen=True, slots=True)
class StreamSent:
    """The whole stream left (EOF and VMDESCRIPTION included)."""


Milestone = SetupDone | SwitchoverDue | PostcopyDue | StreamSent
