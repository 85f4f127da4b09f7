"""The source's migration state machine: setup, precopy, switchover, handover, endings.

The algorithm is QEMU's (`migration_thread`, `migration_iteration_run`, `migration_completion`;
../shared/reference/qemu-migration.md §3) and the handover is docs/handover.md's, written as a
sans-IO machine: ``handle(input, now)`` returns the actions the runner executes, and the status
changes only along `migration.table.SOURCE_ROWS`.

1. setup: open the main channel; CONFIGURATION (after the CHANNEL handshake) and
   OPEN_RETURN_PATH; the destination allocates and pre-faults its RAM before OPEN_ACK; then the
   START sections (the RAM bitmap starts all dirty);
2. active: precopy rounds while the guest runs (`migration.sender`, `migration.precopy`);
   auto-converge or dirty-limit slow the guest down when it dirties memory faster than the
   link carries it, and timeout policies may give up or throttle (`migration.convergence`);
3. switchover once the first full pass is done and what is pending fits the threshold: stop the
   VM (finish-migrate: change-state handlers in reverse), [pre-switchover], device:
   SWITCHOVER_START, the last dirty pages (END), every needed device (FULL), EOF, VMDESCRIPTION;
4. handover: wait for LOADED (and compare digests under x-digest-check), ask the ownership
   arbiter, send HANDOVER, wait for RESUMED: completed, postmigrate. Before HANDOVER any failure
   resumes the VM here (failed, or cancelled); after it, the migration is in doubt until a
   resolve session or the operator learns the destination's outcome (`migration.source_doubt`).

The stream sender puts frames on the main channel; this machine owns the status and decisions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from migration import actions as act
from migration import inputs as inp
from migration.convergence import Convergence, SwitchToPostcopy
from migration.errors import CommandRefusedError
from migration.metrics import SourceMetrics
from migration.multifd import MapJobs, serial_map
from migration.outbox import Outbox
from migration.precopy_resume import ReconnectBudget
from migration.resolve import Purpose
from migration.sender import MAIN, StreamSender
from migration.sender_phases import Milestone, PostcopyDue, SetupDone, StreamSent, SwitchoverDue
from migration.source_doubt import CANCEL_AFTER_HANDOVER, DoubtEndings
from migration.source_phases import (
    AwaitingLoaded,
    AwaitingResumed,
    Deciding,
    Done,
    Paused,
    Phase,
    PostcopyPaused,
    PrecopyReconnecting,
    Resolving,
    Stopping,
    Streaming,
)
from migration.source_postcopy import CANCEL_IN_POSTCOPY, AutoRecover
from migration.source_recovery import POSTCOPY_STATUSES, PostcopyControl, never_ran_there
from migration.source_replies import FailureNote, check_digest, describe_reply
from migration.source_resume import PrecopyResumeControl
from migration.status import MigrationStatus, is_terminal
from migration.table import SOURCE_ROWS, Side, SourceTrigger, StatusMachine
from protocol import (
    ErrorCode,
    LoadCompleted,
    PagesRequested,
    ProtocolError,
    ReceivedBitmap,
    ResumePointReported,
    ReturnPathAcked,
)
from vmsim import RunState, VMSimError, state_cleanup

if TYPE_CHECKING:
    from migration.params import MigrationCapabilities, MigrationParameters
    from vmsim import Machine

T = SourceTrigger
_CANCELLABLE = frozenset(row.status for row in SOURCE_ROWS if row.trigger is T.CANCEL)
_SETTLED_ELSEWHERE = frozenset({MigrationStatus.IN_DOUBT, MigrationStatus.POSTCOPY_PAUSED})
_RECOVERING = frozenset({MigrationStatus.POSTCOPY_RECOVER_SETUP, MigrationStatus.POSTCOPY_RECOVER})
_CHANNEL_INPUTS: tuple[type[inp.Input], ...] = (inp.ChannelOpened, inp.ChannelOpenFailed)
_CHANNEL_INPUTS += (inp.PeerEventReceived, inp.ChannelFailed, inp.SendDone, inp.TimerFired)


class SourceMigration(DoubtEndings, PostcopyControl, PrecopyResumeControl):
    """One migration of a VM to a destination, as a sans-IO state machine.

    Args:
        machine: the VM's machine (its savevm registry is read; its run state is changed only
            through `StopVm`/`ResumeVm`/`SetVmRunState` actions).
        migration_id: this migration's id (named in every channel's handshake).
        params: the migration parameters when it starts (`ParametersChanged` updates them).
        caps: the capabilities, fixed for the migration.
        to_file: a `file:` migration: no return path, no handover.
        now: the current time (the runner's clock, seconds).
        map_jobs: runs multifd compression jobs (worker threads in the daemon).
    """

    def __init__(
        self,
        *,
        machine: Machine,
        migration_id: str,
        params: MigrationParameters,
        caps: MigrationCapabilities,
        to_file: bool,
        now: float,
        map_jobs: MapJobs = serial_map,
    ) -> None:
        self.machine = machine
        self.migration_id = migration_id
        self.params = params
        self.caps = caps
        self.uses_return_path = caps.return_path and not to_file
        self.status = StatusMachine(Side.SOURCE)
        self.metrics = SourceMetrics.starting(
            ram_bytes=machine.config.ram_bytes, downtime_limit_ms=params.downtime_limit_ms, now=now
        )
        self.phase: Phase = Streaming()
        self.handed_over = False
        self._out = Outbox(now)
        self.sender = StreamSender(
            outbox=self._out,
            machine=machine,
            metrics=self.metrics,
            migration_id=migration_id,
            caps=caps,
            timeouts=self.params.timeouts if self.uses_return_path else None,
            params=params,
            map_jobs=map_jobs,
        )
        self.convergence = Convergence(
            outbox=self._out,
            metrics=self.metrics,
            caps=caps,
            precopy=lambda: self.sender.precopy,
            on_throttle=lambda: self._fire(T.THROTTLE),
            now=now,
        )
        self._previous_runstate: RunState | None = None
        self._loaded: LoadCompleted | None = None
        self.auto_recover = AutoRecover()
        self.reconnect = ReconnectBudget()

    # ------------------------------------------------------------------ public

    def start(self, now: float) -> list[act.Action]:
        """`migrate`: status setup, connect the main channel."""
        self._out.begin(now)
        self._fire(T.MIGRATE)
        self._out.log("migration_setup", ram_bytes=self.metrics.total_bytes)
        self._out.do(act.OpenChannel(channel=MAIN, conn=self.sender.conn))
        return self._out.take()

    def handle(self, event: inp.Input, now: float) -> list[act.Action]:
        """Take one input; return the actions to execute, in order."""
        self._out.begin(now)
        self.refresh()
        try:
            self._dispatch(event)
        except (ProtocolError, VMSimError) as exc:
            # A refused send (a bug) or a device that cannot be saved: fail like any error.
            code = exc.code if isinstance(exc, ProtocolError) else ErrorCode.INTERNAL
            self._fail(str(exc), code)
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the VM stopped
            self._out.log("migration_internal_error", level=act.Level.ERROR, error=repr(exc))
            self._fail(f"internal error: {exc!r}", ErrorCode.INTERNAL)
        return self._out.take()

    def next_deadline(self) -> float | None:
        """When `TimerFired` is due, if the machine waits for time."""
        if isinstance(self.phase, Resolving):
            return self.phase.resolver.next_deadline()
        if isinstance(self.phase, PostcopyPaused):
            return self.auto_recover.due_at
        if isinstance(self.phase, PrecopyReconnecting):
            return self.reconnect.due_at
        if not isinstance(self.phase, Streaming):
            return None
        deadlines = [self.sender.next_deadline()]
        if self.status.status is MigrationStatus.ACTIVE:
            deadlines.append(self.convergence.next_deadline(self.params))
        return min((d for d in deadlines if d is not None), default=None)

    def refresh(self) -> None:
        """Bring the byte counters up to date (before reading the metrics)."""
        self.sender.count_bytes()

    def check_cancel(self) -> None:
        """Raise if `migrate_cancel` is refused now (after HANDOVER: docs/handover.md row 17).

        Raises:
            CommandRefusedError: the VM is being handed over.
        """
        if self.handed_over and not is_terminal(self.status.status):
            raise CommandRefusedError(CANCEL_AFTER_HANDOVER)
        if self.status.status in POSTCOPY_STATUSES:
            raise CommandRefusedError(CANCEL_IN_POSTCOPY)

    @property
    def finished(self) -> bool:
        """Whether the machine has nothing left to do."""
        return isinstance(self.phase, Done)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, event: inp.Input) -> None:
        if isinstance(event, _CHANNEL_INPUTS):
            self._on_channel_input(event)
        else:
            self._on_control_input(event)

    def _on_channel_input(self, event: inp.Input) -> None:
        match event:
            case inp.ChannelOpened(channel=channel):
                self._on_opened(channel)
            case inp.ChannelOpenFailed(channel=channel, reason=reason):
                self._on_channel_failure(
                    channel, f"cannot connect: {reason}", ErrorCode.INTERNAL, lost=True
                )
            case inp.PeerEventReceived(channel=channel, event=reply, io_error=io_error):
                self._on_reply(channel, reply, io_error)
            case inp.ChannelFailed(channel=channel, reason=reason, code=code):
                lost = code in {None, ErrorCode.TRUNCATED}  # I/O or a cut, not a refusal
                self._on_channel_failure(
                    channel, reason, code or ErrorCode.PROTOCOL_ERROR, lost=lost
                )
            case inp.SendDone(channel=channel):
                self._on_sent(channel)
            case inp.TimerFired():
                self._on_timer()
            case _:
                pass

    def _on_control_input(self, event: inp.Input) -> None:
        match event:
            case inp.VmStopped(previous=previous):
                self._on_stopped(previous)
            case inp.VmStopFailed(previous=previous, reason=reason):
                self._previous_runstate = previous
                self._fail(f"stopping the VM failed: {reason}", ErrorCode.INTERNAL)
            case inp.ContinueRequested() if isinstance(self.phase, Paused):
                self._fire(T.CONTINUED)
                self._start_completion()
            case inp.CancelRequested():
                self._on_cancel()
            case inp.StartPostcopyRequested() | inp.ResumeRequested():
                self._on_postcopy_command(event)
            case inp.ParametersChanged(params=params):
                self.params = params
            case inp.HandoverDecided(commit=commit, reason=reason):
                self._on_decided(commit=commit, reason=reason)
            case inp.OperatorResolved(destination_runs=runs):
                self._on_operator(destination_runs=runs)
            case inp.ShutdownRequested():
                self._on_shutdown()
            case _:
                pass

    def _on_opened(self, channel: inp.ChannelKey) -> None:
        if isinstance(self.phase, Resolving):
            self.phase.resolver.opened(channel)
        elif isinstance(self.phase, Streaming) and channel == MAIN:
            self.sender.opened(return_path=self.uses_return_path)
            if self.status.status is MigrationStatus.POSTCOPY_RECOVER_SETUP:
                self._fire(T.RECOVERY_CONNECTED)
        elif isinstance(self.phase, Streaming):
            self.sender.multifd_opened(channel)

    def _on_sent(self, channel: inp.ChannelKey) -> None:
        if isinstance(self.phase, Streaming):
            self._milestone(self.sender.sent(channel, self.params))

    def _on_timer(self) -> None:
        phase = self.phase
        if isinstance(phase, Streaming):
            if self._check_timeouts():
                return
            self._milestone(self.sender.timer(self.params))
        elif isinstance(phase, Resolving):
            self._settle(phase.resolver.timer())
        elif isinstance(phase, PostcopyPaused):
            self._auto_recover_tick()
        elif isinstance(phase, PrecopyReconnecting):
            self._precopy_reconnect_tick()

    def _milestone(self, milestone: Milestone | None) -> None:
        if isinstance(milestone, SetupDone):
            self.sender.start_precopy()
            # pass 1: the bitmap starts all dirty (QEMU's setup sync)
            self.convergence.report_passes(self.params)
            self.metrics.setup_done_at = self._out.now
            self._fire(T.SETUP_DONE)
            milestone = self.sender.start_round(self.params)
        self.convergence.report_passes(self.params)
        if self._check_timeouts():
            return
        if isinstance(milestone, SwitchoverDue | PostcopyDue):
            self._switch_over(postcopy=isinstance(milestone, PostcopyDue))
        elif isinstance(milestone, StreamSent):
            self._stream_sent()

    # ------------------------------------------------------------------ switchover

    def _switch_over(self, *, postcopy: bool) -> None:
        self.metrics.downtime.stopped_at = self._out.now
        self.metrics.bytes_at_stop = self.metrics.transferred_bytes
        self.phase = Stopping(postcopy=postcopy)
        self._out.do(act.StopVm())

    def _on_stopped(self, previous: RunState) -> None:
        self._previous_runstate = previous
        phase = self.phase
        if not isinstance(phase, Stopping):
            return
        if phase.postcopy:  # the arbiter first: the destination owns the guest from RUN on
            self._fire(T.START_POSTCOPY)
            self.phase = Deciding(postcopy=True)
            self._out.do(act.DecideHandover(migration_id=self.migration_id))
        elif self.caps.pause_before_switchover:
            self._fire(T.CONVERGED_PAUSED)
            self.phase = Paused()
        else:
            self._fire(T.CONVERGED)
            self._start_completion()

    def _start_completion(self) -> None:
        self.phase = Streaming()
        self.sender.start_completion()

    def _stream_sent(self) -> None:
        self.metrics.downtime.devices_sent_at = self._out.now
        self.metrics.remaining_bytes = 0
        if not self.uses_return_path:
            self._complete(T.STREAM_SENT)  # QEMU without a return path: done once sent
            return
        checked = self.caps.digest_check and self.metrics.postcopy_run_at is None
        own = self.machine.digest() if checked else None  # postcopy: the guest ran there
        self.phase = AwaitingLoaded(own_digest=own)
        if self._loaded is not None:
            self._on_loaded(self._loaded)

    # ------------------------------------------------------------------ handover

    def _on_reply(self, channel: inp.ChannelKey, reply: object, io_error: str | None) -> None:
        phase = self.phase
        if channel != MAIN:
            if isinstance(phase, Resolving):
                self._settle(phase.resolver.reply(channel, reply))  # type: ignore[arg-type]
            return
        if isinstance(reply, ReturnPathAcked):
            if isinstance(phase, Streaming):
                self.sender.send_setup()
        elif isinstance(reply, LoadCompleted):
            self._loaded = reply
            self._on_loaded(reply)
        elif isinstance(reply, PagesRequested | ReceivedBitmap | ResumePointReported):
            self._on_recovery_reply(reply)
        else:
            note = describe_reply(reply, io_error)
            if isinstance(note, FailureNote):
                (self._lost if note.network else self._fail)(note.reason, note.code)
            elif note is not None and isinstance(phase, AwaitingResumed):
                self.metrics.downtime.resumed_at = self._out.now
                self._out.log("destination_resumed", runstate=note)
                self._complete(T.RESUMED)

    def _on_loaded(self, loaded: LoadCompleted) -> None:
        phase = self.phase
        if not isinstance(phase, AwaitingLoaded):
            return
        self.metrics.downtime.loaded_at = self._out.now
        if (mismatch := check_digest(self.metrics, loaded.digest, phase.own_digest)) is not None:
            self._fail(mismatch.reason, mismatch.code)
            return
        if self.sender.postcopy is not None:  # decided before POSTCOPY_RUN
            self._hand_over()
            return
        self.phase = Deciding()
        self._out.do(act.DecideHandover(migration_id=self.migration_id))

    def _on_decided(self, *, commit: bool, reason: str) -> None:
        phase = self.phase
        if not isinstance(phase, Deciding):
            return
        if not commit:
            self._fail(f"the ownership arbiter refused the handover: {reason}", ErrorCode.INTERNAL)
            return
        if phase.postcopy:
            self.phase = Streaming()
            self.sender.start_postcopy(self.params)
            return
        self._hand_over()

    def _hand_over(self) -> None:
        # Rule 5 of docs/handover.md: decide before the decision can reach the destination.
        self.handed_over = True
        self.sender.conn.send_handover()
        self.phase = AwaitingResumed()
        self._out.flush(MAIN)

    # ------------------------------------------------------------------ endings

    def _complete(self, trigger: SourceTrigger) -> None:
        metrics = self.metrics
        metrics.ended_at = self._out.now
        self.convergence.lift()
        self._previous_runstate = None  # handed over (or written out): never resumed here again
        if metrics.downtime.resumed_at is None:  # no handover (file, QEMU): down until sent
            metrics.downtime.resumed_at = metrics.downtime.devices_sent_at or metrics.ended_at
        self._out.do(act.SetVmRunState(runstate=RunState.POSTMIGRATE))
        state_cleanup(self.machine.savevm)
        self._fire(trigger)
        self.sender.close_channels()
        self._finish()

    def _fail(
        self, reason: str, code: ErrorCode, trigger: SourceTrigger = SourceTrigger.FAILED
    ) -> None:
        """A failure or a cancel: in doubt after HANDOVER, otherwise resume the VM here."""
        status = self.status.status
        if is_terminal(status) or status in _SETTLED_ELSEWHERE:
            return
        if self.handed_over:
            self._enter_in_doubt(reason)
            return
        if self.sender.postcopy is not None:  # RUN may have left: never resume here...
            if not never_ran_there(code, status):  # ...unless the destination says so
                self._pause_postcopy(reason)
                return
            trigger = T.DEST_DISCARDED
        cancelled = status is MigrationStatus.CANCELLING
        code = ErrorCode.CANCELLED if cancelled else code
        stopped = self._previous_runstate is not None
        if self.uses_return_path:
            self.sender.abort_nowait(code, reason)
        self.metrics.error_desc = None if cancelled else reason  # QEMU: no error on cancel
        self.metrics.error_code = code
        self.convergence.lift()
        self._resume_vm()
        self.metrics.ended_at = self._out.now
        self._fire(T.CANCELLED if cancelled else trigger)
        self._out.log(
            "migration_failed", level=act.Level.WARNING, error=reason, cancelled=cancelled
        )
        self.sender.close_channels()
        if stopped and self.uses_return_path:  # it may hold a loaded copy in doubt: tell it
            self._resolve(Purpose.NOTIFY_ABORT, first_at=self._out.now, abort=(code, reason))
        else:
            self._finish()

    def _resume_vm(self) -> None:
        state_cleanup(self.machine.savevm)
        previous, self._previous_runstate = self._previous_runstate, None
        if previous is not None:
            self._out.do(act.ResumeVm(runstate=previous))

    def _on_cancel(self) -> None:
        if self.handed_over or self.status.status not in _CANCELLABLE:
            return
        self._fire(T.CANCEL)
        self._fail("migration cancelled by the user", ErrorCode.CANCELLED)

    def _on_shutdown(self) -> None:
        """Decide nothing: drop the connections as if the process had died (rows 6-7)."""
        if self.status.status in _RECOVERING:
            self._pause_postcopy("the daemon shut down during the recovery")
        if not is_terminal(self.status.status):
            self.metrics.error_desc = "the daemon shut down during the migration"
            self.metrics.ended_at = self._out.now
            self.convergence.lift()
            self._fire(T.SHUTDOWN)
        if isinstance(self.phase, Resolving):
            self.phase.resolver.close()
        self.sender.close_channels()
        self._finish()

    def _finish(self) -> None:
        self.phase = Done()
        self._out.do(act.Finished())

    # ------------------------------------------------------------------ policies, status

    def _check_timeouts(self) -> bool:
        """Consult the timeout policies while active; whether one ended the migration."""
        if self.status.status is not MigrationStatus.ACTIVE:
            return False
        give_up = self.convergence.check(self.params)
        if isinstance(give_up, SwitchToPostcopy):
            self.sender.postcopy_wanted = True  # at the next round
            return False
        if give_up is not None:
            self._fail(give_up.reason, ErrorCode.TIMEOUT, trigger=T.TIMED_OUT)
        return give_up is not None

    def _fire(self, trigger: SourceTrigger) -> None:
        before = self.status.status
        status = self.status.fire(trigger)
        if status is not before:
            extra = {"x-ended-by": self.metrics.ended_by} if trigger is T.TIMED_OUT else {}
            out, events = self._out, self.caps.events
            out.status_changed(status, migration_id=self.migration_id, events=events, extra=extra)
