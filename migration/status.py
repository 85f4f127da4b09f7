"""Migration status: QEMU's `MigrationStatus` names, plus livemig's `in-doubt`.

`in-doubt` is a migration whose outcome one side cannot know yet (docs/handover.md). The postcopy
statuses are QEMU's; the tables in `migration.table` already have their rows.
"""

from __future__ import annotations

import enum
from typing import Final


class MigrationStatus(enum.StrEnum):
    """Status names as `query-migrate` reports them."""

    NONE = "none"
    SETUP = "setup"
    ACTIVE = "active"
    PRE_SWITCHOVER = "pre-switchover"
    DEVICE = "device"
    POSTCOPY_ACTIVE = "postcopy-active"
    POSTCOPY_PAUSED = "postcopy-paused"
    POSTCOPY_RECOVER_SETUP = "postcopy-recover-setup"
    POSTCOPY_RECOVER = "postcopy-recover"
    IN_DOUBT = "in-doubt"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"


S = MigrationStatus
TERMINAL: Final = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED})


def is_terminal(status: MigrationStatus) -> bool:
    """Whether a migration in this status is over (a new one may start)."""
    return status in TERMINAL


def is_active(status: MigrationStatus) -> bool:
    """Whether a migration in this status is under way (QEMU `migration_is_running`)."""
    return status not in TERMINAL and status is not S.NONE
