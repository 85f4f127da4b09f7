"""Migration status (QEMU `MigrationStatus`) and the table of allowed changes, per side.

QEMU changes the status with compare-and-swap calls scattered over migration.c; here every allowed
change is in one table, and anything else is a bug that raises. `in-doubt` is livemig's: a migration
whose outcome one side cannot know yet (docs/handover.md).
"""

from __future__ import annotations

import enum
from typing import Final

from vmm.errors import StatusTransitionError


class MigrationStatus(enum.StrEnum):
    """Status names as `query-migrate` reports them."""

    NONE = "none"
    SETUP = "setup"
    ACTIVE = "active"
    PRE_SWITCHOVER = "pre-switchover"
    DEVICE = "device"
    IN_DOUBT = "in-doubt"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"


class Side(enum.StrEnum):
    """Which end of a migration a status belongs to."""

    OUTGOING = "outgoing"
    INCOMING = "incoming"


S = MigrationStatus
_TERMINAL: Final = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED})

OUTGOING_TRANSITIONS: Final[dict[MigrationStatus, frozenset[MigrationStatus]]] = {
    S.NONE: frozenset({S.SETUP}),
    S.SETUP: frozenset({S.ACTIVE, S.FAILED, S.CANCELLING, S.CANCELLED}),
    S.ACTIVE: frozenset({S.PRE_SWITCHOVER, S.DEVICE, S.FAILED, S.CANCELLING, S.COMPLETED}),
    S.PRE_SWITCHOVER: frozenset({S.DEVICE, S.FAILED, S.CANCELLING}),
    S.DEVICE: frozenset({S.COMPLETED, S.FAILED, S.CANCELLING, S.IN_DOUBT}),
    S.IN_DOUBT: frozenset({S.COMPLETED, S.FAILED}),
    S.CANCELLING: frozenset({S.CANCELLED, S.FAILED, S.COMPLETED}),
    S.CANCELLED: frozenset({S.SETUP}),
    S.COMPLETED: frozenset({S.SETUP}),
    S.FAILED: frozenset({S.SETUP}),
}

INCOMING_TRANSITIONS: Final[dict[MigrationStatus, frozenset[MigrationStatus]]] = {
    S.NONE: frozenset({S.SETUP}),
    S.SETUP: frozenset({S.ACTIVE, S.FAILED}),
    S.ACTIVE: frozenset({S.COMPLETED, S.FAILED, S.IN_DOUBT}),
    S.IN_DOUBT: frozenset({S.COMPLETED, S.FAILED}),
    S.COMPLETED: frozenset({S.SETUP}),
    S.FAILED: frozenset({S.SETUP}),
}

_TABLES: Final = {Side.OUTGOING: OUTGOING_TRANSITIONS, Side.INCOMING: INCOMING_TRANSITIONS}


def is_terminal(status: MigrationStatus) -> bool:
    """Whether a migration in this status is over (a new one may start)."""
    return status in _TERMINAL


def is_active(status: MigrationStatus) -> bool:
    """Whether a migration in this status is under way (QEMU `migration_is_running`)."""
    return status not in _TERMINAL and status is not S.NONE


class StatusMachine:
    """The status of one side, changed only along its table."""

    def __init__(self, side: Side) -> None:
        self._side = side
        self._table = _TABLES[side]
        self._status = MigrationStatus.NONE

    @property
    def status(self) -> MigrationStatus:
        """The current status."""
        return self._status

    def can_move(self, new: MigrationStatus) -> bool:
        """Whether the table allows moving to `new` now."""
        return new in self._table.get(self._status, frozenset())

    def move(self, new: MigrationStatus) -> None:
        """Move to `new`, or raise: an unlisted change is a bug, never silently ignored."""
        if not self.can_move(new):
            raise StatusTransitionError(
                f"{self._side} migration cannot go from '{self._status}' to '{new}'"
            )
        self._status = new
