"""The status tables of both sides: every allowed change, and the trigger that causes it.

QEMU changes the status with compare-and-swap calls scattered over migration.c; here each side
has one table, `TABLE[status][trigger] -> status`, and the state machines change status only by
firing a trigger (`StatusMachine.fire`). A trigger the table does not list for the current
status is a bug and raises `TransitionError`. The docs render these tables
(`render_markdown`, checked by a test), and the in-process tests drive every row.

Rows marked *reserved* belong to capabilities that later work fills in; they are in the table
so that a capability is a row, not a new flag.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from migration.errors import TransitionError
from migration.status import MigrationStatus

S = MigrationStatus


class SourceTrigger(enum.StrEnum):
    """What moves an outgoing migration from one status to another."""

    MIGRATE = "migrate"
    SETUP_DONE = "destination ready, setup sections sent"
    THROTTLE = "auto-converge or dirty-limit changes the throttle"
    CONVERGED = "pending fits the threshold: VM stopped"
    CONVERGED_PAUSED = "as converged, with pause-before-switchover"
    CONTINUED = "migrate-continue"
    STREAM_SENT = "whole stream written (no return path)"
    RESUMED = "RESUMED: the destination runs the VM"
    FAILED = "failure before HANDOVER: VM resumed here"
    TIMED_OUT = "a timeout policy gives up (x-timeout-action cancel): VM resumed here"
    LOST_AFTER_HANDOVER = "failure after HANDOVER"
    CANCEL = "migrate_cancel"
    CANCELLED = "VM resumed after the cancel"
    OUTCOME_COMMITTED = "RESOLVE: committed, or RESUMED after a second HANDOVER"
    OUTCOME_DISCARDED = "RESOLVE: discarded or unknown: VM resumed here"
    OPERATOR_COMPLETE = "x-migrate-resolve complete"
    OPERATOR_RESUME = "x-migrate-resolve resume"
    SHUTDOWN = "the daemon shuts down"
    START_POSTCOPY = "migrate-start-postcopy"
    CHANNEL_LOST = "a channel breaks"
    RESUME = "migrate resume=true"
    RECOVER_FAILED = "the recovery connection fails"
    RECOVERY_CONNECTED = "recovery channel up, bitmap exchange"
    RECOVERED = "missing pages resent: postcopy goes on"
    PRECOPY_BROKEN = "precopy: the connection breaks, the VM runs on here (x-precopy-resume-ms)"
    PRECOPY_RESUMED = "precopy: reconnected, RESUME_POINT in"
    DEST_DISCARDED = "recovery: the destination never got POSTCOPY_RUN, dropped it: VM resumed here"


class DestTrigger(enum.StrEnum):
    """What moves an incoming migration from one status to another."""

    STREAM_ACCEPTED = "configuration accepted: RAM being prepared"
    RAM_READY = "RAM ready: OPEN_ACK"
    STREAM_LOADED = "stream loaded and checked: LOADED sent"
    HANDOVER = "HANDOVER: the VM runs here"
    FILE_LOADED = "file loaded: the VM runs here (a snapshot has no handover)"
    SOURCE_LOST = "the source went away after LOADED"
    DISCARDED = "load failed, ABORT, lost before loaded, superseded or operator"
    OPERATOR_COMMIT = "x-migrate-incoming-resolve commit"
    POSTCOPY_RUN = "postcopy: device state loaded, RUN"
    CHANNEL_LOST = "a channel breaks"
    RECOVER = "migrate-recover"
    RECOVERY_CONNECTED = "recovery channel up, bitmap sent"
    RECOVERED = "postcopy goes on"
    PRECOPY_BROKEN = "precopy: the connection breaks, what was loaded is kept"
    PRECOPY_RESUMED = "precopy: a recover channel takes it up, RESUME_POINT sent"


@dataclass(frozen=True, slots=True)
class Row:
    """One allowed change."""

    status: MigrationStatus
    trigger: SourceTrigger | DestTrigger
    after: MigrationStatus
    reserved: bool = False


_T = SourceTrigger
_BEFORE_HANDOVER: Final = (S.SETUP, S.ACTIVE, S.PRE_SWITCHOVER, S.DEVICE)

SOURCE_ROWS: Final[tuple[Row, ...]] = (
    Row(S.NONE, _T.MIGRATE, S.SETUP),
    Row(S.SETUP, _T.SETUP_DONE, S.ACTIVE),
    Row(S.ACTIVE, _T.THROTTLE, S.ACTIVE),
    Row(S.ACTIVE, _T.PRECOPY_BROKEN, S.ACTIVE),
    Row(S.ACTIVE, _T.PRECOPY_RESUMED, S.ACTIVE),
    Row(S.ACTIVE, _T.CONVERGED, S.DEVICE),
    Row(S.ACTIVE, _T.CONVERGED_PAUSED, S.PRE_SWITCHOVER),
    Row(S.PRE_SWITCHOVER, _T.CONTINUED, S.DEVICE),
    Row(S.DEVICE, _T.STREAM_SENT, S.COMPLETED),
    Row(S.DEVICE, _T.RESUMED, S.COMPLETED),
    *(Row(status, _T.FAILED, S.FAILED) for status in _BEFORE_HANDOVER),
    Row(S.ACTIVE, _T.TIMED_OUT, S.FAILED),
    *(Row(status, _T.CANCEL, S.CANCELLING) for status in _BEFORE_HANDOVER),
    Row(S.DEVICE, _T.LOST_AFTER_HANDOVER, S.IN_DOUBT),
    Row(S.CANCELLING, _T.CANCELLED, S.CANCELLED),
    Row(S.IN_DOUBT, _T.OUTCOME_COMMITTED, S.COMPLETED),
    Row(S.IN_DOUBT, _T.OUTCOME_DISCARDED, S.FAILED),
    Row(S.IN_DOUBT, _T.OPERATOR_COMPLETE, S.COMPLETED),
    Row(S.IN_DOUBT, _T.OPERATOR_RESUME, S.FAILED),
    *(Row(status, _T.SHUTDOWN, S.FAILED) for status in (*_BEFORE_HANDOVER, S.IN_DOUBT)),
    Row(S.ACTIVE, _T.START_POSTCOPY, S.POSTCOPY_ACTIVE),
    Row(S.POSTCOPY_ACTIVE, _T.RESUMED, S.COMPLETED),
    Row(S.POSTCOPY_ACTIVE, _T.FAILED, S.FAILED),  # before POSTCOPY_RUN: the VM resumes here
    Row(S.POSTCOPY_ACTIVE, _T.CHANNEL_LOST, S.POSTCOPY_PAUSED),
    Row(S.POSTCOPY_ACTIVE, _T.LOST_AFTER_HANDOVER, S.IN_DOUBT),  # every page had arrived
    *(Row(status, _T.SHUTDOWN, S.FAILED) for status in (S.POSTCOPY_ACTIVE, S.POSTCOPY_PAUSED)),
    Row(S.POSTCOPY_PAUSED, _T.RESUME, S.POSTCOPY_RECOVER_SETUP),
    Row(S.POSTCOPY_RECOVER_SETUP, _T.RECOVER_FAILED, S.POSTCOPY_PAUSED),
    Row(S.POSTCOPY_RECOVER_SETUP, _T.RECOVERY_CONNECTED, S.POSTCOPY_RECOVER),
    Row(S.POSTCOPY_RECOVER, _T.CHANNEL_LOST, S.POSTCOPY_PAUSED),
    Row(S.POSTCOPY_RECOVER, _T.RECOVERED, S.POSTCOPY_ACTIVE),
    Row(S.POSTCOPY_RECOVER, _T.DEST_DISCARDED, S.FAILED),  # it never ran there: resumes here
)
"""The source's table: QEMU's precopy and postcopy statuses, plus in-doubt (docs/handover.md).

Each migration is its own machine starting at `none` (QEMU reuses one global state, so its
table also has completed/failed/cancelled -> setup); `query-migrate` shows the newest.
"""

_D = DestTrigger
DEST_ROWS: Final[tuple[Row, ...]] = (
    Row(S.NONE, _D.STREAM_ACCEPTED, S.SETUP),
    Row(S.SETUP, _D.RAM_READY, S.ACTIVE),
    Row(S.SETUP, _D.DISCARDED, S.FAILED),
    Row(S.ACTIVE, _D.STREAM_LOADED, S.ACTIVE),
    Row(S.ACTIVE, _D.PRECOPY_BROKEN, S.ACTIVE),
    Row(S.ACTIVE, _D.PRECOPY_RESUMED, S.ACTIVE),
    Row(S.ACTIVE, _D.HANDOVER, S.COMPLETED),
    Row(S.ACTIVE, _D.FILE_LOADED, S.COMPLETED),
    Row(S.ACTIVE, _D.SOURCE_LOST, S.IN_DOUBT),
    Row(S.ACTIVE, _D.DISCARDED, S.FAILED),
    Row(S.IN_DOUBT, _D.HANDOVER, S.COMPLETED),
    Row(S.IN_DOUBT, _D.OPERATOR_COMMIT, S.COMPLETED),
    Row(S.IN_DOUBT, _D.DISCARDED, S.FAILED),
    Row(S.ACTIVE, _D.POSTCOPY_RUN, S.POSTCOPY_ACTIVE),
    Row(S.POSTCOPY_ACTIVE, _D.HANDOVER, S.COMPLETED),
    Row(S.POSTCOPY_ACTIVE, _D.CHANNEL_LOST, S.POSTCOPY_PAUSED),
    Row(S.POSTCOPY_ACTIVE, _D.SOURCE_LOST, S.COMPLETED),  # every page here: nothing is missing
    Row(S.POSTCOPY_PAUSED, _D.RECOVER, S.POSTCOPY_RECOVER_SETUP),
    Row(S.POSTCOPY_RECOVER_SETUP, _D.RECOVERY_CONNECTED, S.POSTCOPY_RECOVER),
    Row(S.POSTCOPY_RECOVER, _D.RECOVERED, S.POSTCOPY_ACTIVE),
    Row(S.POSTCOPY_RECOVER, _D.CHANNEL_LOST, S.POSTCOPY_PAUSED),
)
"""The destination's table. A new incoming migration starts at NONE; each has its own record."""


def _index(rows: tuple[Row, ...]) -> dict[MigrationStatus, dict[object, MigrationStatus]]:
    table: dict[MigrationStatus, dict[object, MigrationStatus]] = {}
    for row in rows:
        cell = table.setdefault(row.status, {})
        if row.trigger in cell:
            msg = f"two rows for {row.status} on '{row.trigger}'"
            raise TransitionError(msg)
        cell[row.trigger] = row.after
    return table


SOURCE_TABLE: Final = _index(SOURCE_ROWS)
DEST_TABLE: Final = _index(DEST_ROWS)


class Side(enum.StrEnum):
    """Which end of a migration a table belongs to."""

    SOURCE = "source"
    DESTINATION = "destination"


_TABLES: Final = {Side.SOURCE: SOURCE_TABLE, Side.DESTINATION: DEST_TABLE}


class StatusMachine:
    """The status of one migration, changed only by firing triggers its side's table lists.

    Attributes:
        history: every change so far, as the rows of the table it took.
    """

    def __init__(self, side: Side, status: MigrationStatus = MigrationStatus.NONE) -> None:
        self.side = side
        self._table = _TABLES[side]
        self.status = status
        self.history: list[Row] = []

    def can_fire(self, trigger: SourceTrigger | DestTrigger) -> bool:
        """Whether the table lists `trigger` for the current status."""
        return trigger in self._table.get(self.status, {})

    def fire(self, trigger: SourceTrigger | DestTrigger) -> MigrationStatus:
        """Apply `trigger`; return the new status.

        Raises:
            TransitionError: the table has no such row (a bug, never ignored).
        """
        after = self._table.get(self.status, {}).get(trigger)
        if after is None:
            msg = f"{self.side} migration in status '{self.status}' cannot take '{trigger}'"
            raise TransitionError(msg)
        self.history.append(Row(self.status, trigger, after))
        self.status = after
        return after


def render_markdown() -> str:
    """Both tables as Markdown, for docs/architecture.md (a test keeps the two identical)."""
    lines: list[str] = []
    for title, rows in (("Source", SOURCE_ROWS), ("Destination", DEST_ROWS)):
        lines += [f"{title}:", "", "| status | trigger | next status |", "|---|---|---|"]
        for row in rows:
            note = " *(reserved)*" if row.reserved else ""
            lines.append(f"| {row.status} | {row.trigger}{note} | {row.after} |")
        lines.append("")
    return "\n".join(lines).rstrip("\n")
