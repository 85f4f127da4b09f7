"""An outgoing migration: setup, precopy iterations, switchover, ownership handover.

The algorithm is QEMU's (`migration_thread`, `migration_iteration_run`, `migration_completion`;
see ../shared/reference/qemu-migration.md §3), run as one asyncio task beside the vCPU task:

1. setup: connect, send the configuration and open the return path; the destination allocates and
   pre-faults its RAM before it acknowledges; START sections (the RAM bitmap starts all dirty);
2. iterations while the guest runs: send dirty pages in batches for at most 50 ms at a time, within
   the `max-bandwidth` budget; every 100 ms window re-estimates the bandwidth and the threshold
   (bandwidth x downtime-limit); a dirty sync only when the estimate falls under the threshold;
3. switchover when the first full pass is done and what is pending fits the threshold (QEMU may
   switch before its first pass ends, leaving the rest of that pass to the stop-and-copy, where a
   bandwidth misestimate lands in the downtime; those pages must be sent anyway, so livemig sends
   them while the guest runs, as Cloud Hypervisor does): stop the VM to finish-migrate (change-state
   handlers in reverse, e.g. the ITS flushes its tables into RAM), STOP, [pre-switchover], device:
   SWITCHOVER_START, the last dirty pages (END), every device (FULL), EOF, VMDESCRIPTION, no rate
   limit;
4. handover (docs/handover.md): wait for LOADED, send HANDOVER, wait for RESUMED, completed and
   postmigrate. Before HANDOVER any failure resumes the VM here; after it, the migration is in
   doubt until the destination's outcome is known.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Final

import structlog

from netio import (
    Channel,
    ChannelError,
    FileAddress,
    FileChannel,
    NetIOError,
    open_connection,
)
from protocol import ErrorCode, ProtocolError, SourceConnection, Timeouts
from vmm.errors import MigrationError
from vmm.glue import configuration_for
from vmm.handover import notify_abort, resolve_in_doubt
from vmm.precopy import ConvergencePolicy, DirtyRateMeter, RateLimiter, WindowSample
from vmm.returnpath import PeerError, ReturnPath
from vmm.sockets import tune_migration_socket
from vmm.stats import OutgoingStats, outgoing_info
from vmm.status import MigrationStatus, Side, StatusMachine, is_terminal
from vmsim import (
    PAGE_SIZE,
    RunState,
    SectionFull,
    SectionPart,
    SectionStart,
    state_cleanup,
    state_complete,
    state_iterate,
    state_pending_estimate,
    state_pending_exact,
    state_setup,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from netio import MigrationAddress
    from vmm.params import MigrationCapabilities, MigrationParameters
    from vmm.vm import EventSink, VirtualMachine

# 16 MiB of page data per frame at most (protocol Limits.max_data_bytes): fewer, larger frames
# halve the per-frame cost on both sides next to 4 MiB ones (bench/, throughput figure).
MAX_BATCH_PAGES: Final = 4096
ITERATE_MAX_S: Final = 0.05  # QEMU MAX_WAIT: bound one iteration so counters stay fresh
_QUEUE_AHEAD_BYTES: Final = MAX_BATCH_PAGES * PAGE_SIZE  # one batch queued ahead of the kernel

log = structlog.get_logger("vmm.outgoing")

AnyChannel = Channel | FileChannel


class OutgoingMigration:
    """One migration of this daemon's VM to a destination URI."""

    def __init__(
        self,
        *,
        vm: VirtualMachine,
        address: MigrationAddress,
        migration_id: str,
        params: Callable[[], MigrationParameters],
        caps: MigrationCapabilities,
        emit_event: EventSink,
        clock: Callable[[], float],
        on_completed: Callable[[OutgoingMigration], None],
    ) -> None:
        self.vm = vm
        self.address = address
        self.migration_id = migration_id
        self.params = params
        self.caps = caps
        self._emit_event = emit_event
        self.clock = clock
        self._on_completed = on_completed
        self.status = StatusMachine(Side.OUTGOING)
        self.stats = OutgoingStats(
            page_size=PAGE_SIZE, total_bytes=vm.machine.config.ram_bytes, started_at=clock()
        )
        self.policy: ConvergencePolicy | None = None
        self.dirty_rate = DirtyRateMeter(now=clock())
        self._limiter = RateLimiter(now=clock())
        self._conn: SourceConnection | None = None
        self._channel: AnyChannel | None = None
        self._return_path: ReturnPath | None = None
        self._return_path_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None
        self._failure: MigrationError | None = None
        self._old_runstate: RunState | None = None
        self._handed_over = False
        self._shutting_down = False
        self._continue = asyncio.Event()
        self.done = asyncio.Event()

    # -- public ---------------------------------------------------------------------------

    @property
    def uses_return_path(self) -> bool:
        """Whether there is a return path (and so a handover): not for files, nor when off."""
        return self.caps.return_path and not isinstance(self.address, FileAddress)

    @property
    def handed_over(self) -> bool:
        """Whether HANDOVER was sent: from then on this side never resumes by itself."""
        return self._handed_over

    def start(self) -> None:
        """Start the migration task (status setup)."""
        self._move(MigrationStatus.SETUP)
        self._main = self._spawn(self._run(), name=f"migrate-{self.migration_id[:8]}")

    def cancel(self) -> None:
        """`migrate_cancel` (the caller checked it is allowed: before HANDOVER)."""
        if is_terminal(self.status.status) or self._handed_over:
            return
        if self.status.status is MigrationStatus.CANCELLING:
            return
        self._move(MigrationStatus.CANCELLING)
        self._interrupt(MigrationError("migration cancelled by the user"))

    def continue_switchover(self) -> None:
        """`migrate-continue` from pre-switchover."""
        self._continue.set()

    def info(self) -> dict[str, object]:
        """The `query-migrate` reply."""
        if not is_terminal(self.status.status):
            self._refresh_transferred()
        info = outgoing_info(
            self.status.status,
            self.stats,
            now=self.clock(),
            policy=self.policy,
            dirty_rate=self.dirty_rate,
        )
        if info:
            info["x-migration-id"] = self.migration_id
        ram = info.get("ram")
        if isinstance(ram, dict) and "dirty-pages-rate" in ram:
            # QEMU's dirty-pages-rate counts distinct pages; this is the guest's write rate.
            ram["x-page-writes-per-second"] = round(self.vm.page_writes_per_second())
        return info

    async def close(self) -> None:
        """Daemon shutdown: stop this migration's tasks without deciding anything.

        Resuming the VM or sending ABORT now would be a decision taken by a process about to
        exit: the destination might discard the only complete copy. The connection is just
        dropped, as if the process had died: the destination discards an incomplete stream and
        holds a loaded one in doubt (docs/handover.md rows 6-7).
        """
        self._shutting_down = True
        while self._tasks:  # a cancelled task may spawn another (e.g. the in-doubt resolver)
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
        self._close_channel()

    # -- the phases ----------------------------------------------------------------------

    async def _run(self) -> None:
        structlog.contextvars.bind_contextvars(migration_id=self.migration_id, role="source")
        try:
            await self._setup()
            await self._iterate_until_converged()
            await self._switchover()
            await self._finish()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await self._abandon(self._failure or MigrationError("migration interrupted"))
        except (MigrationError, NetIOError, ProtocolError, OSError) as exc:
            # The peer's own reason (FAILED, a timeout) beats the EPIPE it caused here.
            failure = exc if isinstance(exc, MigrationError) else MigrationError(str(exc))
            await self._abandon(self._failure or failure)
        except Exception as exc:
            # A bug must not leave the VM stopped or the migration hanging: fail it like any
            # other error (the VM resumes unless it was handed over), and say so loudly.
            log.exception("migration_internal_error")
            await self._abandon(MigrationError(f"internal error: {exc!r}"))
        finally:
            await self._stop_return_path()
            self._close_channel()
            self.done.set()

    async def _setup(self) -> None:
        params = self.params()
        log.info("migration_setup", uri=str(self.address), ram_bytes=self.stats.total_bytes)
        self._channel, self._conn = await self._open(params)
        conn = self._conn
        conn.send_configuration(
            configuration_for(
                self.vm.machine, migration_id=self.migration_id, capabilities=self.caps.wire_names()
            )
        )
        if self.uses_return_path and isinstance(self._channel, Channel):
            conn.send_open_return_path()
            self._return_path = ReturnPath(self._channel, on_failure=self._peer_failed)
            self._return_path_task = self._spawn(self._return_path.run(), name="return-path")
        await self._flush()
        if self._return_path is not None:
            await self._return_path.wait(self._return_path.acked)
        self._send_records(state_setup(self.vm.machine.savevm))
        await self._flush()
        self._count_passes()  # pass 1: the bitmap starts all dirty (QEMU's setup sync)
        self.stats.setup_done_at = self.clock()
        self.policy = ConvergencePolicy(
            now=self.clock(), downtime_limit_ms=params.downtime_limit_ms
        )
        self._move(MigrationStatus.ACTIVE)

    async def _open(self, params: MigrationParameters) -> tuple[AnyChannel, SourceConnection]:
        timeouts = Timeouts(
            ping_interval_s=params.ping_interval_ms / 1000,
            peer_timeout_s=params.peer_timeout_ms / 1000,
        )
        if isinstance(self.address, FileAddress):
            conn = SourceConnection(return_path=False, timeouts=None, now=self.clock())
            return FileChannel.for_writing(self.address, conn), conn
        sock = await open_connection(self.address, timeout_s=params.connect_timeout_ms / 1000)
        try:
            tune_migration_socket(sock, params)
            conn = SourceConnection(
                return_path=self.uses_return_path,
                timeouts=timeouts if self.uses_return_path else None,
                now=self.clock(),
            )
            return Channel(sock, conn, clock=self.clock), conn
        except BaseException:
            sock.close()
            raise

    async def _iterate_until_converged(self) -> None:
        policy = self._require_policy()
        registry = self.vm.machine.savevm
        while True:
            params = self.params()
            policy.downtime_limit_ms = params.downtime_limit_ms
            policy.avail_switchover_bandwidth_bytes_per_s = (
                params.avail_switchover_bandwidth_bytes_per_s
            )
            self._update_counters()
            pending = state_pending_estimate(registry)
            if policy.needs_exact(pending):
                pending = self._sync()
            self.stats.remaining_bytes = pending
            if self.vm.machine.ram_handler.stats().complete_rounds > 0:
                policy.first_pass_done()
            if policy.can_switchover(pending):
                log.info(
                    "switchover_decided",
                    pending_bytes=pending,
                    threshold_bytes=policy.threshold_bytes,
                    bandwidth_mbps=round(policy.mbps),
                    dirty_syncs=self.stats.dirty_sync_count,
                )
                return
            await self._iterate(params)

    async def _iterate(self, params: MigrationParameters) -> None:
        """Send dirty pages for at most ITERATE_MAX_S, within the rate limit."""
        await self._send_batches(params)
        await self._flush()  # the next round decides on what was sent: nothing stays queued

    async def _send_batches(self, params: MigrationParameters) -> None:
        registry = self.vm.machine.savevm
        deadline = self.clock() + ITERATE_MAX_S
        while self.clock() < deadline:
            max_pages = self._allowed_pages(params)
            if max_pages == 0:
                await self._flush()
                await asyncio.sleep(max(0.0, self._limiter.slot_ends_at() - self.clock()))
                return
            part = state_iterate(registry, max_pages)
            if part is None:
                return  # the bitmap is empty: the next round decides (sync or switchover)
            self._send_part(part, end=False)
            # Wait for the socket only with one batch still queued: the kernel then always has
            # bytes to move while the next batch is built (a flush to empty left it idle).
            await self._flush(keep_bytes=_QUEUE_AHEAD_BYTES)
            await asyncio.sleep(0)  # let the vCPU run between batches

    def _allowed_pages(self, params: MigrationParameters) -> int:
        allowance = self._limiter.allowance_bytes(
            now=self.clock(), limit_bytes_per_s=params.max_bandwidth_bytes_per_s
        )
        if allowance is None:
            return MAX_BATCH_PAGES
        if allowance == 0:
            return 0
        return max(1, min(MAX_BATCH_PAGES, allowance // PAGE_SIZE))

    def _sync(self) -> int:
        """The exact pending count: a dirty-bitmap sync (QEMU `migration_bitmap_sync`)."""
        pending = state_pending_exact(self.vm.machine.savevm)
        self._count_passes()
        return pending

    def _count_passes(self) -> None:
        """Account the dirty syncs the RAM handler did since the last look (MIGRATION_PASS)."""
        ram = self.vm.machine.ram_handler.stats()
        for sync in range(self.stats.dirty_sync_count + 1, ram.dirty_sync_count + 1):
            if sync > 1:  # pass 1 (setup) found the whole RAM: no guest writes to count
                self.dirty_rate.record_sync(
                    now=self.clock(), dirtied_pages=ram.logged_pages_last_sync
                )
            if self.caps.events:
                self._emit_event("MIGRATION_PASS", {"pass": sync})
        self.stats.dirty_sync_count = ram.dirty_sync_count

    def _update_counters(self) -> None:
        policy = self._require_policy()
        ram = self.vm.machine.ram_handler.stats()
        self._refresh_transferred()
        closed = policy.update(
            WindowSample(
                now=self.clock(),
                transferred_bytes=self.stats.transferred_bytes,
                transferred_pages=self.stats.normal_pages + self.stats.zero_pages,
                dirty_bytes_last_sync=ram.dirty_bytes_last_sync,
                dirty_pages_rate=self.dirty_rate.pages_per_second,
            )
        )
        if closed:
            log.debug(
                "bandwidth_window",
                mbps=round(policy.mbps),
                threshold_bytes=policy.threshold_bytes,
                expected_downtime_ms=policy.expected_downtime_ms,
                transferred_bytes=self.stats.transferred_bytes,
            )

    async def _switchover(self) -> None:
        marks = self.stats.downtime
        marks.stopped_at = self.clock()
        self.stats.bytes_at_stop = self._require_channel().bytes_sent
        self._old_runstate = self.vm.stop_for_migration()
        if self.caps.pause_before_switchover:
            self._move(MigrationStatus.PRE_SWITCHOVER)
            await self._continue.wait()
        self._move(MigrationStatus.DEVICE)
        conn = self._require_conn()
        conn.send_switchover_start()
        for record in state_complete(self.vm.machine.savevm, MAX_BATCH_PAGES):
            if isinstance(record, SectionPart):
                self._send_part(record, end=True)
            else:
                if marks.final_ram_sent_at is None:
                    marks.final_ram_sent_at = self.clock()
                self._send_records([record])
            await self._flush()
        self._count_passes()  # the final sync, done by the RAM handler with the VM stopped
        conn.send_eof()
        conn.send_vmdesc(self.vm.machine.savevm.describe())
        await self._flush()
        marks.devices_sent_at = self.clock()
        self.stats.remaining_bytes = 0

    async def _finish(self) -> None:
        if self._return_path is None:
            self._complete()  # QEMU without a return path: done once the stream is out
            return
        own_digest = self.vm.machine.digest() if self.caps.digest_check else None
        loaded = await self._return_path.wait(self._return_path.loaded)
        self.stats.downtime.loaded_at = self.clock()
        if own_digest is not None and loaded.digest != own_digest:
            raise PeerError(
                f"state digest mismatch at handover: destination {loaded.digest}, "
                f"source {own_digest}",
                ErrorCode.DIGEST_MISMATCH,
            )
        # Rule 5 of docs/handover.md: decide before the decision can reach the destination.
        self._handed_over = True
        self._require_conn().send_handover()
        await self._flush()
        resumed = await self._return_path.wait(self._return_path.resumed)
        self.stats.downtime.resumed_at = self.clock()
        log.info("destination_resumed", runstate=resumed.runstate)
        self._complete()

    # -- endings -------------------------------------------------------------------------

    def _complete(self) -> None:
        self.stats.ended_at = self.clock()
        self._old_runstate = None  # handed over (or written out): never resumed here again
        marks = self.stats.downtime
        if marks.resumed_at is None:  # no handover (file, QEMU semantics): down until sent
            marks.resumed_at = marks.devices_sent_at or self.stats.ended_at
        self._refresh_transferred()
        self.vm.stop(RunState.POSTMIGRATE)
        state_cleanup(self.vm.machine.savevm)
        self._move(MigrationStatus.COMPLETED)
        self._log_summary()
        self._on_completed(self)

    def complete_from_resolution(self) -> None:
        """The destination runs the VM (found by RESOLVE or by the operator): complete."""
        log.info("in_doubt_resolved", outcome="the destination runs the VM")
        self.stats.downtime.resumed_at = self.clock()
        self._complete()

    def resume_from_resolution(self, reason: str) -> None:
        """The destination will never run the VM: resume it here and fail the migration."""
        log.warning("migration_failed", error=reason, resolved_from_doubt=True)
        self.stats.error_desc = reason
        self._resume_vm()
        self.stats.ended_at = self.clock()
        self._move(MigrationStatus.FAILED)

    async def _abandon(self, failure: MigrationError) -> None:
        """A failure or a cancel: in doubt after HANDOVER, otherwise resume the VM here."""
        self._refresh_transferred()
        if self._shutting_down:
            self.stats.error_desc = "the daemon shut down during the migration"
            self._move(MigrationStatus.FAILED)
            return
        if self._handed_over:
            await self._enter_in_doubt(failure)
            return
        cancelled = self.status.status is MigrationStatus.CANCELLING
        code = _abort_code(failure, cancelled=cancelled)
        stopped = self._old_runstate is not None
        self._send_abort_nowait(code, failure.message)
        self.stats.error_desc = None if cancelled else failure.message  # QEMU: no error on cancel
        self._resume_vm()
        self.stats.ended_at = self.clock()
        self._move(MigrationStatus.CANCELLED if cancelled else MigrationStatus.FAILED)
        log.warning("migration_failed", error=failure.message, cancelled=cancelled)
        if stopped and self.uses_return_path:
            # The destination may hold a loaded copy in doubt: tell it, best effort.
            self._spawn(notify_abort(self, code=code, reason=failure.message), name="notify-abort")

    async def _enter_in_doubt(self, failure: MigrationError) -> None:
        self.stats.error_desc = (
            f"handover in doubt: {failure.message}; the VM stays paused here until the "
            "destination's outcome is known (livemig resolve)"
        )
        self._move(MigrationStatus.IN_DOUBT)
        log.warning("migration_in_doubt", error=failure.message)
        self._close_channel()
        self._spawn(resolve_in_doubt(self), name="resolve-in-doubt")

    def _resume_vm(self) -> None:
        state_cleanup(self.vm.machine.savevm)
        old = self._old_runstate
        if old is None:
            return  # never stopped: still running
        self._old_runstate = None
        if old is RunState.RUNNING:
            self.vm.start()
        else:
            self.vm.stop(old)

    # -- helpers -------------------------------------------------------------------------

    def _send_records(self, records: list[SectionStart | SectionFull]) -> None:
        conn = self._require_conn()
        for record in records:
            if isinstance(record, SectionStart):
                conn.send_section_start(
                    record.section_id,
                    record.idstr,
                    record.instance_id,
                    record.version_id,
                    record.setup,
                )
            else:
                conn.send_section_full(
                    record.section_id,
                    record.idstr,
                    record.instance_id,
                    record.version_id,
                    record.state,
                )

    def _send_part(self, part: SectionPart, *, end: bool) -> None:
        conn = self._require_conn()
        before = conn.pending_send_bytes
        conn.send_ram(part.section_id, part.batch, end=end)
        self._limiter.consume(conn.pending_send_bytes - before)
        self.stats.count_batch(
            normal_pages=part.batch.normal_pages, zero_pages=part.batch.zero_pages
        )

    async def _flush(self, *, keep_bytes: int = 0) -> None:
        channel = self._require_channel()
        if keep_bytes and isinstance(channel, Channel):
            await channel.flush(keep_bytes=keep_bytes)
        else:
            await channel.flush()
        self._refresh_transferred()

    def _refresh_transferred(self) -> None:
        if self._channel is not None:
            self.stats.transferred_bytes = self._channel.bytes_sent

    def _send_abort_nowait(self, code: ErrorCode, reason: str) -> None:
        conn, channel = self._conn, self._channel
        if conn is None or channel is None or not self.uses_return_path:
            return
        with contextlib.suppress(ProtocolError, ChannelError, OSError):
            conn.send_abort(code, reason[:200])
            if isinstance(channel, Channel):
                channel.flush_nowait()

    def _peer_failed(self, failure: PeerError) -> None:
        self._interrupt(failure)

    def _interrupt(self, failure: MigrationError) -> None:
        if self._failure is None:
            self._failure = failure
        if self._main is not None and not self._main.done():
            self._main.cancel()

    async def _stop_return_path(self) -> None:
        task = self._return_path_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def _move(self, status: MigrationStatus) -> None:
        self.status.move(status)
        if self.caps.events:
            self._emit_event("MIGRATION", {"status": str(status)})

    def _spawn(self, coro: Coroutine[object, object, None], *, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _require_conn(self) -> SourceConnection:
        if self._conn is None:
            raise MigrationError("internal error: no connection")
        return self._conn

    def _require_channel(self) -> AnyChannel:
        if self._channel is None:
            raise MigrationError("internal error: no channel")
        return self._channel

    def _require_policy(self) -> ConvergencePolicy:
        if self.policy is None:
            raise MigrationError("internal error: no convergence policy")
        return self.policy

    def _log_summary(self) -> None:
        stats = self.stats
        log.info(
            "migration_completed",
            total_ms=round(((stats.ended_at or 0.0) - stats.started_at) * 1000),
            downtime_ms=stats.downtime_ms(),
            downtime_breakdown_ms=stats.downtime.breakdown_ms(),
            transferred_bytes=stats.transferred_bytes,
            normal_pages=stats.normal_pages,
            zero_pages=stats.zero_pages,
            dirty_syncs=stats.dirty_sync_count,
        )


def _abort_code(failure: MigrationError, *, cancelled: bool) -> ErrorCode:
    """The code sent in ABORT: CANCELLED, the peer-side cause, or INTERNAL for our own errors."""
    if cancelled:
        return ErrorCode.CANCELLED
    if isinstance(failure, PeerError):
        return failure.code
    return ErrorCode.INTERNAL
