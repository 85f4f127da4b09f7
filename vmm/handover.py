"""The source's side of in-doubt resolution (docs/handover.md).

Both tasks open a fresh connection to the migration URI and ask the destination, with RESOLVE,
what became of a migration id:
- `resolve_in_doubt`: the source sent HANDOVER but never saw RESUMED. Committed: complete here.
  In doubt: send HANDOVER again (the decision was taken). Discarded or unknown: the destination
  will never run it, so resume here. Unreachable: try again later, for ever (or until the operator
  resolves it with `x-migrate-resolve`).
- `notify_abort`: the source abandoned a migration after the whole stream went out, so the
  destination may hold a loaded copy in doubt: tell it to discard it. Best effort, a few tries; a
  new migration of the same VM or `livemig resolve` also releases it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import structlog

from netio import Channel, FileAddress, NetIOError, open_connection
from protocol import ErrorCode, Outcome, OutcomeReported, ProtocolError, SourceConnection, Timeouts
from vmm.errors import MigrationError
from vmm.returnpath import ReturnPath
from vmm.sockets import tune_migration_socket
from vmm.status import MigrationStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from vmm.outgoing import OutgoingMigration

NOTIFY_ABORT_ATTEMPTS: Final = 5

log = structlog.get_logger("vmm.handover")


@dataclass(frozen=True, kw_only=True, slots=True)
class _Session:
    conn: SourceConnection
    channel: Channel
    return_path: ReturnPath
    outcome: OutcomeReported


@contextlib.asynccontextmanager
async def _resolve_session(migration: OutgoingMigration) -> AsyncIterator[_Session]:
    """Connect, send RESOLVE for the migration id and wait for the OUTCOME."""
    params = migration.params()
    address = migration.address
    if isinstance(address, FileAddress):
        raise MigrationError("a migration to a file has no destination to ask")
    sock = await open_connection(address, timeout_s=params.connect_timeout_ms / 1000)
    tune_migration_socket(sock, params, keepalive_idle_s=1)
    timeout_s = params.peer_timeout_ms / 1000
    conn = SourceConnection(
        return_path=True,
        timeouts=Timeouts(ping_interval_s=params.ping_interval_ms / 1000, peer_timeout_s=timeout_s),
        now=migration.clock(),
    )
    channel = Channel(sock, conn, clock=migration.clock)
    return_path = ReturnPath(channel, on_failure=lambda _failure: None)
    reader = asyncio.create_task(return_path.run(), name="resolve-return-path")
    try:
        conn.send_resolve(migration.migration_id)
        await channel.flush()
        async with asyncio.timeout(timeout_s):
            outcome = await return_path.wait(return_path.outcome)
        yield _Session(conn=conn, channel=channel, return_path=return_path, outcome=outcome)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        channel.close()


async def resolve_in_doubt(migration: OutgoingMigration) -> None:
    """Ask the destination until the in-doubt migration is settled one way or the other."""
    interval_s = migration.params().resolve_interval_ms / 1000
    while migration.status.status is MigrationStatus.IN_DOUBT:
        await asyncio.sleep(interval_s)
        try:
            async with _resolve_session(migration) as session:
                await _settle(migration, session)
        except (MigrationError, NetIOError, ProtocolError, OSError, TimeoutError) as exc:
            log.info("resolve_attempt_failed", error=str(exc) or type(exc).__name__)
        interval_s = migration.params().resolve_interval_ms / 1000


async def _settle(migration: OutgoingMigration, session: _Session) -> None:
    outcome = session.outcome.outcome
    log.info("resolve_outcome", outcome=str(outcome))
    if migration.status.status is not MigrationStatus.IN_DOUBT:
        return  # the operator settled it meanwhile
    if outcome is Outcome.COMMITTED:
        migration.complete_from_resolution()
    elif outcome is Outcome.IN_DOUBT:
        session.conn.send_handover()
        await session.channel.flush()
        async with asyncio.timeout(migration.params().peer_timeout_ms / 1000):
            await session.return_path.wait(session.return_path.resumed)
        if migration.status.status is MigrationStatus.IN_DOUBT:
            migration.complete_from_resolution()
    else:
        migration.resume_from_resolution(
            f"the destination reports the migration {outcome}: it will never run the VM, "
            "so it was resumed here"
        )


async def notify_abort(migration: OutgoingMigration, *, code: ErrorCode, reason: str) -> None:
    """Tell a destination that may hold a loaded copy in doubt to discard it (best effort)."""
    for attempt in range(NOTIFY_ABORT_ATTEMPTS):
        try:
            async with _resolve_session(migration) as session:
                outcome = session.outcome.outcome
                if outcome is Outcome.IN_DOUBT:
                    session.conn.send_abort(code, reason[:200])
                    await session.channel.flush()
                elif outcome is Outcome.COMMITTED:  # pragma: no cover - would be a bug
                    log.error("abort_after_commit", migration_id=migration.migration_id)
                log.info("abort_notified", outcome=str(outcome), attempt=attempt)
                return
        except (MigrationError, NetIOError, ProtocolError, OSError, TimeoutError) as exc:
            log.info("abort_notify_failed", error=str(exc) or type(exc).__name__, attempt=attempt)
        await asyncio.sleep(migration.params().resolve_interval_ms / 1000)
