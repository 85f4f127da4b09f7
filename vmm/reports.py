"""What a migration reports outside its machine: QMP events, status changes, log lines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

import structlog

from migration import actions as act

if TYPE_CHECKING:
    from collections.abc import Mapping

log = structlog.get_logger("vmm.migration")


def side_of(context: Mapping[str, object]) -> str | None:
    """The migration side a runner's context names (its `role`), for the metrics."""
    role = context.get("role")
    return role if isinstance(role, str) else None


LOG_LEVELS: Final = {
    act.Level.DEBUG: 10,
    act.Level.INFO: 20,
    act.Level.WARNING: 30,
    act.Level.ERROR: 40,
}


class ReportHost(Protocol):
    """Where reports of a ledger change made outside a machine go (a QMP command's)."""

    def emit_event(self, name: str, data: Mapping[str, object] | None = None) -> None:
        """A QMP event."""
        ...

    def migration_status_changed(self, side: str | None, status: str, migration_id: str) -> None:
        """Migration `migration_id` of `side` (source or destination) reached `status`."""
        ...


def execute_reports(
    actions: list[act.Action], host: ReportHost, *, context: Mapping[str, object]
) -> None:
    """Execute the events and log lines of a ledger change made by a command (no machine).

    Raises:
        TypeError: an action that needs a runner (a bug in the caller).
    """
    for action in actions:
        if isinstance(action, act.EmitEvent):
            host.emit_event(action.name, action.data)
        elif isinstance(action, act.StatusChanged):
            host.migration_status_changed(side_of(context), action.status, action.migration_id)
        elif isinstance(action, act.LogFact):
            log.log(LOG_LEVELS[action.level], action.event, **{**context, **action.fields})
        else:
            msg = f"{type(action).__name__} needs a runner"
            raise TypeError(msg)
