"""The phases of the source machine beyond its stream sender's steps (`migration.source`).

Each is a small value carrying what the machine waits with, so nothing is cleared by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from migration.resolve import Resolver


@dataclass(frozen=True, slots=True)
class Streaming:
    """The stream sender is at work (setup, precopy, or the switchover's sections)."""


@dataclass(frozen=True, slots=True)
class Stopping:
    """Switchover (or the switch to postcopy): the VM is being stopped."""

    postcopy: bool = False


@dataclass(frozen=True, slots=True)
class Paused:
    """pre-switchover: the VM is stopped; waiting for migrate-continue."""


@dataclass(frozen=True, slots=True)
class AwaitingLoaded:
    """The stream is out; waiting for LOADED (with our own digest under x-digest-check)."""

    own_digest: str | None


@dataclass(frozen=True, slots=True)
class Deciding:
    """LOADED checked (or, `postcopy`, the VM stopped for the switch): the arbiter decides."""

    postcopy: bool = False


@dataclass(frozen=True, slots=True)
class AwaitingResumed:
    """HANDOVER sent (the decision is taken); waiting for RESUMED."""


@dataclass(frozen=True, slots=True)
class Resolving:
    """In doubt, or notifying an abort: resolve sessions until one settles."""

    resolver: Resolver


@dataclass(frozen=True, slots=True)
class PostcopyPaused:
    """Postcopy, and the channel broke: the VM stays stopped here, its pages kept.

    The destination runs the guest until it needs one of them; a recovery resends them.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class PrecopyReconnecting:
    """Precopy, and the connection broke: the VM runs on here; reconnecting (x-precopy-resume-ms).

    The dirty bitmap is kept, and the destination keeps what it loaded; a `recover` channel
    takes the migration up again (`migration.precopy_resume`).
    """

    reason: str


@dataclass(frozen=True, slots=True)
class Done:
    """Nothing left to do."""


Phase = (
    Streaming
    | Stopping
    | Paused
    | AwaitingLoaded
    | Deciding
    | AwaitingResumed
    | Resolving
    | PrecopyReconnecting
    | PostcopyPaused
    | Done
)
