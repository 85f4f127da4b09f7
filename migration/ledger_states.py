"""The states of an incoming migration's record (`migration.ledger`).

Each is a value carrying what it needs; `STATUS_OF` and `OUTCOME_OF` say the QEMU status and
the RESOLVE outcome each shows as.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from migration.status import MigrationStatus
from protocol import Outcome

if TYPE_CHECKING:
    from vmsim import Machine

S = MigrationStatus


@dataclass(frozen=True, slots=True)
class Preparing:
    """Configuration accepted; guest RAM is being allocated and pre-faulted."""


@dataclass(frozen=True, slots=True)
class Loading:
    """Sections arrive and load into `machine`."""

    machine: Machine


@dataclass(frozen=True, slots=True)
class PrecopyPaused:
    """Loading, and the connection broke: what was loaded is kept for a `recover` channel.

    Only when the source said it will reconnect (`x-precopy-resume` in the configuration), for
    `x-precopy-resume-ms`; then discarded. The VM runs on the source meanwhile.
    """

    machine: Machine
    reason: str


@dataclass(frozen=True, slots=True)
class Loaded:
    """Everything loaded and checked, LOADED sent; waiting for HANDOVER or ABORT."""

    machine: Machine


@dataclass(frozen=True, slots=True)
class Held:
    """Loaded, then the source went away: paused, in doubt (docs/handover.md rule 4)."""

    machine: Machine
    reason: str


@dataclass(frozen=True, slots=True)
class Postcopy:
    """POSTCOPY_RUN: the VM runs here while its missing pages still arrive into `machine`.

    The destination owns the guest from POSTCOPY_RUN on (docs/handover.md): a RESOLVE answers
    committed, and nothing can discard it any more.
    """

    machine: Machine
    runstate: str | None = None


@dataclass(frozen=True, slots=True)
class PostcopyPaused:
    """Postcopy, and the source's channel broke: the guest runs until it needs a missing page.

    Only the source holds those pages; a `recover` channel takes it up again. As in QEMU, the
    VM is lost if the source's process dies now.
    """

    machine: Machine
    reason: str
    runstate: str | None = None


@dataclass(frozen=True, slots=True)
class RecoverySetup:
    """A recover channel arrived for a paused postcopy (a step on the way to `Recovering`)."""

    machine: Machine
    runstate: str | None = None


@dataclass(frozen=True, slots=True)
class Recovering:
    """The received bitmap went back on the recover channel; waiting for POSTCOPY_RESUME."""

    machine: Machine
    runstate: str | None = None


@dataclass(frozen=True, slots=True)
class Committed:
    """The VM runs here (or keeps the source's run state); `runstate` once it is installed."""

    runstate: str | None = None


@dataclass(frozen=True, slots=True)
class Discarded:
    """Never to run here: why, and its cause as a short bounded label (the metrics')."""

    reason: str
    cause: str


RecordState = (
    Preparing
    | Loading
    | PrecopyPaused
    | Loaded
    | Held
    | Postcopy
    | PostcopyPaused
    | RecoverySetup
    | Recovering
    | Committed
    | Discarded
)
POSTCOPY_STATES: Final = (Postcopy, PostcopyPaused, RecoverySetup, Recovering)
RECEIVING_STATES: Final = (Preparing, Loading, PrecopyPaused, Loaded)

STATUS_OF: Final[dict[type[RecordState], MigrationStatus]] = {
    Preparing: S.SETUP,
    Loading: S.ACTIVE,
    PrecopyPaused: S.ACTIVE,
    Loaded: S.ACTIVE,
    Held: S.IN_DOUBT,
    Postcopy: S.POSTCOPY_ACTIVE,
    PostcopyPaused: S.POSTCOPY_PAUSED,
    RecoverySetup: S.POSTCOPY_RECOVER_SETUP,
    Recovering: S.POSTCOPY_RECOVER,
    Committed: S.COMPLETED,
    Discarded: S.FAILED,
}
OUTCOME_OF: Final[dict[type[RecordState], Outcome]] = {
    Loaded: Outcome.IN_DOUBT,
    Held: Outcome.IN_DOUBT,
    Postcopy: Outcome.COMMITTED,
    PostcopyPaused: Outcome.COMMITTED,
    RecoverySetup: Outcome.COMMITTED,
    Recovering: Outcome.COMMITTED,
    Committed: Outcome.COMMITTED,
    Discarded: Outcome.DISCARDED,
}
