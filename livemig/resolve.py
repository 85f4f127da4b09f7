"""`livemig resolve`: settle an in-doubt handover, the one safe way (docs/handover.md).

It reads both sides' `query-migrate` and applies the only action that can neither lose the VM nor
run it twice. A side that cannot be reached is not assumed dead: the operator must say so
(`--source-dead`, `--dest-dead`), because an unreachable daemon may still be running the VM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from netio import QMPClient, QMPClientError

IN_DOUBT: Final = "in-doubt"


class ResolveError(RuntimeError):
    """Nothing safe can be done with what is known."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SideState:
    """One side as `query-migrate` shows it, or dead/unreachable."""

    status: str | None
    migration_id: str | None
    dead: bool = False

    @property
    def in_doubt(self) -> bool:
        """Whether this side holds the VM in doubt."""
        return self.status == IN_DOUBT


@dataclass(frozen=True, kw_only=True, slots=True)
class Action:
    """A QMP command to send to one side."""

    side: str  # "source" or "dest"
    command: str
    action: str

    def describe(self) -> str:
        """Human-readable form for the report."""
        return f"{self.side}: {self.command} {{action: {self.action}}}"


def decide(source: SideState, dest: SideState) -> list[Action]:
    """The safe actions for these two states (pure; the table of docs/handover.md)."""
    if source.in_doubt:
        return _source_in_doubt(source, dest)
    if dest.in_doubt:
        if source.dead:
            # The source is gone: the held copy is the only one left.
            return [Action(side="dest", command="x-migrate-incoming-resolve", action="commit")]
        if source.status is None:
            raise ResolveError("the source cannot be reached; if it is dead, pass --source-dead")
        # The source is alive and not in doubt: it never sent HANDOVER and owns the VM.
        return [Action(side="dest", command="x-migrate-incoming-resolve", action="discard")]
    return []


def _source_in_doubt(source: SideState, dest: SideState) -> list[Action]:
    complete = Action(side="source", command="x-migrate-resolve", action="complete")
    resume = Action(side="source", command="x-migrate-resolve", action="resume")
    if dest.dead:
        return [resume]
    if dest.status is None:
        raise ResolveError("the destination cannot be reached; if it is dead, pass --dest-dead")
    same = dest.migration_id == source.migration_id
    if same and dest.status == "completed":
        return [complete]
    if same and dest.in_doubt:
        commit = Action(side="dest", command="x-migrate-incoming-resolve", action="commit")
        return [commit, complete]
    # The destination does not hold this migration: it will never run it.
    return [resume]


async def read_side(address: str | None, *, dead: bool) -> SideState:
    """Query one side; None status when it cannot be reached."""
    if dead or address is None:
        return SideState(status=None, migration_id=None, dead=dead)
    try:
        async with await QMPClient.connect(address, timeout_s=3.0) as qmp:
            info = await qmp.execute("query-migrate", timeout_s=5.0)
    except (QMPClientError, OSError):
        return SideState(status=None, migration_id=None)
    if not isinstance(info, dict):
        return SideState(status=None, migration_id=None)
    migration_id = info.get("x-migration-id")
    return SideState(
        status=str(info.get("status", "none")),
        migration_id=migration_id if isinstance(migration_id, str) else None,
    )


async def resolve(
    source: str | None, dest: str | None, *, source_dead: bool, dest_dead: bool
) -> list[str]:
    """Read both sides, decide, apply; return what was done."""
    source_state = await read_side(source, dead=source_dead)
    dest_state = await read_side(dest, dead=dest_dead)
    actions = decide(source_state, dest_state)
    addresses = {"source": source, "dest": dest}
    for action in actions:
        address = addresses[action.side]
        if address is None:
            raise ResolveError(f"{action.describe()} needs the {action.side}'s QMP address")
        async with await QMPClient.connect(address) as qmp:
            await qmp.execute(action.command, {"action": action.action})
    return [action.describe() for action in actions] or ["nothing in doubt: nothing to do"]
