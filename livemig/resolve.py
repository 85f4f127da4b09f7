"""`livemig resolve`: settle an in-doubt handover, the one safe way (docs/handover.md).

It reads both sides over QMP and applies the only action that can neither lose the VM nor run it
twice. It acts only on positive evidence: a side that cannot be reached is not assumed dead (the
operator says so with `--source-dead` / `--dest-dead`: an unreachable daemon may still run the VM),
and a held copy is discarded only when the source shows it still owns that VM.

| source | destination | action |
|---|---|---|
| in doubt (migration S) | committed S | source: complete |
| in doubt (S) | holds S in doubt | destination: commit, then source: complete |
| in doubt (S) | discarded S, or never saw it | source: resume |
| in doubt (S) | dead (--dest-dead) | source: resume |
| S failed or cancelled, or runs VM U | holds S (VM U) in doubt | destination: discard |
| S completed | holds S in doubt | destination: commit |
| dead (--source-dead) | holds a VM in doubt | destination: commit |
| anything else with a side in doubt | | refuse, saying what is missing |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from netio import QMPClient, QMPClientError

IN_DOUBT: Final = "in-doubt"
_SOURCE_GAVE_UP: Final = frozenset({"failed", "cancelled"})


class ResolveError(RuntimeError):
    """Nothing safe can be done with what is known."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SourceView:
    """The source daemon as QMP shows it (or dead, or unreachable: status None)."""

    status: str | None
    migration_id: str | None = None
    vm_uuid: str | None = None
    dead: bool = False

    @property
    def in_doubt(self) -> bool:
        """Whether the source holds its VM paused in doubt."""
        return self.status == IN_DOUBT


@dataclass(frozen=True, kw_only=True, slots=True)
class DestView:
    """The destination daemon: what it holds, and its outcome for the source's migration."""

    reachable: bool
    held_migration_id: str | None = None
    held_uuid: str | None = None
    outcome: str | None = None  # for the source's in-doubt migration id
    dead: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Action:
    """A QMP command to send to one side."""

    side: str  # "source" or "dest"
    command: str
    action: str

    def describe(self) -> str:
        """Human-readable form for the report."""
        return f"{self.side}: {self.command} {{action: {self.action}}}"


COMMIT: Final = Action(side="dest", command="x-migrate-incoming-resolve", action="commit")
DISCARD: Final = Action(side="dest", command="x-migrate-incoming-resolve", action="discard")
COMPLETE: Final = Action(side="source", command="x-migrate-resolve", action="complete")
RESUME: Final = Action(side="source", command="x-migrate-resolve", action="resume")


def decide(source: SourceView, dest: DestView) -> list[Action]:
    """The safe actions for these two states (pure; the table in this module's docstring)."""
    if source.in_doubt:
        return _source_in_doubt(dest)
    if dest.held_migration_id is not None:
        return _dest_in_doubt(source, dest)
    return []


def _source_in_doubt(dest: DestView) -> list[Action]:
    if dest.dead:
        return [RESUME]
    if not dest.reachable:
        raise ResolveError("the destination cannot be reached; if it is dead, pass --dest-dead")
    if dest.outcome == "committed":
        return [COMPLETE]
    if dest.outcome == IN_DOUBT:
        return [COMMIT, COMPLETE]
    if dest.outcome in ("discarded", "unknown"):
        return [RESUME]  # the destination will never run this migration's VM
    raise ResolveError(
        f"the destination is still loading the migration ({dest.outcome}); try again shortly"
    )


def _dest_in_doubt(source: SourceView, dest: DestView) -> list[Action]:
    if source.dead:
        return [COMMIT]  # the held copy is the only one left
    if source.status is None:
        raise ResolveError("the source cannot be reached; if it is dead, pass --source-dead")
    same_migration = source.migration_id == dest.held_migration_id
    if same_migration and source.status == "completed":
        return [COMMIT]  # the source handed it over and let go of its copy
    if same_migration and source.status in _SOURCE_GAVE_UP:
        return [DISCARD]  # the source never sent HANDOVER and resumed its copy
    if dest.held_uuid is not None and source.vm_uuid == dest.held_uuid:
        return [DISCARD]  # the source has this VM: it owns it (e.g. a newer migration ran)
    raise ResolveError(
        f"cannot tell whether the source still has VM {dest.held_uuid} (its last migration is "
        f"{source.migration_id or 'none'}, status {source.status}); if the source is gone, "
        "pass --source-dead"
    )


async def read_source(address: str | None, *, dead: bool) -> SourceView:
    """Query the source; status None when it cannot be reached."""
    if dead or address is None:
        return SourceView(status=None, dead=dead)
    try:
        async with await QMPClient.connect(address, timeout_s=3.0) as qmp:
            info = await qmp.execute("query-migrate", timeout_s=5.0)
            vm_uuid = await _vm_uuid(qmp)
    except (QMPClientError, OSError):
        return SourceView(status=None)
    info = info if isinstance(info, dict) else {}
    return SourceView(
        status=str(info.get("status", "none")),
        migration_id=_str(info.get("x-migration-id")),
        vm_uuid=vm_uuid,
    )


async def read_dest(address: str | None, *, dead: bool, migration_id: str | None) -> DestView:
    """Query the destination, including its outcome for `migration_id` when given."""
    if dead or address is None:
        return DestView(reachable=False, dead=dead)
    try:
        async with await QMPClient.connect(address, timeout_s=3.0) as qmp:
            info = await qmp.execute("query-migrate", timeout_s=5.0)
            outcome = None
            if migration_id is not None:
                reply = await qmp.execute(
                    "x-query-migration-outcome", {"migration-id": migration_id}, timeout_s=5.0
                )
                outcome = reply.get("outcome") if isinstance(reply, dict) else None
    except (QMPClientError, OSError):
        return DestView(reachable=False)
    info = info if isinstance(info, dict) else {}
    held = info.get("status") == IN_DOUBT
    return DestView(
        reachable=True,
        held_migration_id=_str(info.get("x-migration-id")) if held else None,
        held_uuid=_str(info.get("x-vm-uuid")) if held else None,
        outcome=_str(outcome),
    )


async def _vm_uuid(qmp: QMPClient) -> str | None:
    try:
        vm = await qmp.execute("x-query-vm", timeout_s=5.0)
    except QMPClientError:
        return None  # no VM on that daemon
    config = vm.get("config") if isinstance(vm, dict) else None
    return _str(config.get("uuid")) if isinstance(config, dict) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


async def resolve(
    source: str | None, dest: str | None, *, source_dead: bool, dest_dead: bool
) -> list[str]:
    """Read both sides, decide, apply; return what was done."""
    source_view = await read_source(source, dead=source_dead)
    in_doubt_id = source_view.migration_id if source_view.in_doubt else None
    dest_view = await read_dest(dest, dead=dest_dead, migration_id=in_doubt_id)
    actions = decide(source_view, dest_view)
    addresses = {"source": source, "dest": dest}
    for action in actions:
        address = addresses[action.side]
        if address is None:
            raise ResolveError(f"{action.describe()} needs the {action.side}'s QMP address")
        async with await QMPClient.connect(address) as qmp:
            await qmp.execute(action.command, {"action": action.action}, timeout_s=10.0)
    return [action.describe() for action in actions] or ["nothing in doubt: nothing to do"]
