"""The precopy-resume half of `SourceMigration`: a broken connection before the switchover.

With `x-precopy-resume-ms` above 0 (and no multifd), a lost connection while precopy runs
does not fail the migration: the VM runs on here, the bitmap is kept, and the source reconnects
on a `recover` channel with backoff until the budget runs out; RESUME_POINT says which pages to
send again (`migration.precopy_resume`, docs/protocol.md 1.11). Past the budget it fails as
QEMU does, the VM running here. The status stays `active` throughout (QEMU's tools see a
precopy that takes longer); `query-migrate` shows `x-precopy-breaks` and `x-reconnecting`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from migration import actions as act
from migration.sender import MAIN
from migration.sender_phases import Draining, ResumeAwaitingPoint, Sending, Sleeping
from migration.sender_phases import RecoverConnecting as Connecting
from migration.source_phases import PrecopyReconnecting, Resolving, Streaming
from migration.status import MigrationStatus
from migration.table import SourceTrigger as T
from protocol import ChannelRole, ErrorCode, PagesRequested, ReceivedBitmap

if TYPE_CHECKING:
    from migration.inputs import ChannelKey
    from migration.metrics import SourceMetrics
    from migration.outbox import Outbox
    from migration.params import MigrationParameters
    from migration.precopy_resume import ReconnectBudget
    from migration.resolve import SessionOutcome
    from migration.sender import StreamSender
    from migration.sender_phases import Milestone
    from migration.source_phases import Phase
    from migration.source_postcopy import AutoRecover
    from migration.table import SourceTrigger, StatusMachine
    from protocol import ResumePointReported
    from vmsim import RunState

_PRECOPY_SENDER_PHASES = (Sending, Draining, Sleeping, Connecting, ResumeAwaitingPoint)
NEVER_SWITCHED = (
    "the destination answered the postcopy recovery as a paused precopy (RESUME_POINT): it "
    "never received POSTCOPY_RUN, so its copy never ran and is dropped; the VM resumed here"
)


class PrecopyResumeControl:
    """`SourceMigration` provides the attributes and the methods declared here."""

    phase: Phase
    status: StatusMachine
    metrics: SourceMetrics
    params: MigrationParameters
    sender: StreamSender
    reconnect: ReconnectBudget
    auto_recover: AutoRecover
    _out: Outbox
    _previous_runstate: RunState | None

    def _fire(self, trigger: SourceTrigger) -> None:
        raise NotImplementedError

    def _fail(self, reason: str, code: ErrorCode, trigger: SourceTrigger = T.FAILED) -> None:
        raise NotImplementedError

    def _milestone(self, milestone: Milestone | None) -> None:
        raise NotImplementedError

    def _on_channel_failure(
        self, channel: ChannelKey, reason: str, code: ErrorCode, *, lost: bool = False
    ) -> None:
        """A channel broke (`lost`: the connection was lost or could not be made)."""
        if channel.role is ChannelRole.MAIN and lost:
            self._lost(reason, code)
        elif channel.role in {ChannelRole.MAIN, ChannelRole.MULTIFD, ChannelRole.PREEMPT}:
            if channel.role is not ChannelRole.MAIN:
                reason = f"{channel.role} channel {channel.serial}: {reason}"
            self._fail(reason, code)  # in postcopy: paused, and recovered
        elif isinstance(self.phase, Resolving):
            self._settle(self.phase.resolver.failed(channel, reason))

    def _settle(self, outcome: SessionOutcome | None) -> None:
        raise NotImplementedError

    def _lost(self, reason: str, code: ErrorCode) -> None:
        """The connection was lost (not refused): reconnect if precopy may, else fail."""
        if self._may_resume_precopy():
            self._pause_precopy(reason, code)
        else:
            self._fail(reason, code)

    def _may_resume_precopy(self) -> bool:
        sender = self.sender
        return (
            sender.resumable
            and self.status.status is MigrationStatus.ACTIVE
            and isinstance(self.phase, Streaming | PrecopyReconnecting)
            and self._previous_runstate is None  # the VM runs (not stopping for switchover)
            and sender.postcopy is None
            and isinstance(sender.phase, _PRECOPY_SENDER_PHASES)
        )

    def _pause_precopy(self, reason: str, code: ErrorCode) -> None:
        first = not self.reconnect.reconnecting
        if not self.reconnect.lost(self._out.now, self.params.precopy_resume_s):
            budget_ms = self.params.precopy_resume_ms
            self.metrics.reconnecting = False
            self._fail(f"{reason}; not reconnected within {budget_ms} ms", code)
            return
        if first:
            self._fire(T.PRECOPY_BROKEN)
            self.metrics.precopy_breaks = self.reconnect.breaks
            self.metrics.precopy_break_passes.append(self.metrics.dirty_sync_count)
            self.metrics.reconnecting = True
            self._out.log("precopy_connection_lost", level=act.Level.WARNING, error=reason)
        self.sender.close_channels()
        self.phase = PrecopyReconnecting(reason=reason)

    def _precopy_reconnect_tick(self) -> None:
        """A reconnection attempt is due: open a `recover` channel."""
        budget = self.reconnect
        if budget.due_at is None or self._out.now < budget.due_at:
            return
        budget.attempt()
        self._out.log("precopy_reconnecting", attempt=budget.attempts)
        self.phase = Streaming()
        self._out.do(act.OpenChannel(channel=MAIN, conn=self.sender.reconnect()))

    def _on_recovery_reply(
        self, reply: PagesRequested | ReceivedBitmap | ResumePointReported
    ) -> None:
        """A postcopy page request, or a reply on a recover channel."""
        if isinstance(reply, PagesRequested):
            self.sender.postcopy_request(reply.ranges)
        elif isinstance(reply, ReceivedBitmap):
            if self.sender.recv_bitmap(reply, self.params):
                self.auto_recover.recovered()
                self._fire(T.RECOVERED)
        elif self.status.status is MigrationStatus.POSTCOPY_RECOVER:
            self._fail(NEVER_SWITCHED, ErrorCode.DISCARDED)  # RESUME_POINT: it never saw RUN
        else:  # RESUME_POINT: the destination kept what it loaded; precopy goes on
            self.reconnect.resumed()
            self.metrics.reconnecting = False
            self._fire(T.PRECOPY_RESUMED)
            self._milestone(self.sender.resume_point(reply.ram_frames, self.params))

    @property
    def reconnecting(self) -> bool:
        """Whether a broken precopy is reconnecting now."""
        return self.reconnect.reconnecting
