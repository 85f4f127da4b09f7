"""The destination's migration state machine: one incoming stream, to handover or failure.

For each main channel (or file) the router hands over, a `DestMigration` checks the
configuration, asks for an empty machine (RAM allocated and pre-faulted in a thread while PINGs
are still answered), attaches that machine's RAM loader as the protocol's page sink (page data
goes from the kernel straight into guest RAM), loads START/FULL sections through the savevm
framework, checks that every device arrived, reports LOADED (with the digest under
x-digest-check) and waits for HANDOVER or ABORT (docs/handover.md). What the migration *is*
(loading, loaded, held, committed, discarded) lives in the ledger's record, which outlives the
connection; this machine drives one connection's part of it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from migration import actions as act
from migration import inputs as inp
from migration.dest_multifd import MultifdReceivers
from migration.dest_phases import (
    Adopting,
    AwaitingConfiguration,
    AwaitingRam,
    AwaitingReconnect,
    Closing,
    Done,
    Phase,
    Receiving,
    describe_loss,
)
from migration.dest_postcopy import PostcopyIncoming, PreemptIncoming
from migration.dest_recovery import POSTCOPY_EVENTS, PostcopyIncomingControl
from migration.errors import LoadError
from migration.glue import DIGEST_CHECK, full_record, machine_config_from, start_record
from migration.ledger import (
    Committed,
    Install,
    Loaded,
    Loading,
    Postcopy,
    Recovering,
)
from migration.metrics import error_cause
from migration.outbox import Outbox
from migration.params import PREEMPT_CAPABILITY
from migration.table import DestTrigger
from protocol import (
    AbortReceived,
    ChannelRole,
    ConfigurationReceived,
    ConnectionClosed,
    DescriptionReceived,
    DeviceStateReceived,
    ErrorCode,
    HandoverReceived,
    LocalProtocolError,
    PeerTimedOut,
    PingReceived,
    RamPagesReceived,
    ReturnPathRequested,
    SectionStarted,
    StreamEnded,
    SwitchoverStarted,
)
from vmsim import (
    VMSimError,
    load_check_complete,
    load_cleanup,
    load_section_full,
    load_section_start,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from migration.ledger import IncomingLedger, IncomingRecord
    from protocol import DestConnection, MigrationConfiguration
    from vmsim import Machine


_LOAD_EVENTS = (
    SwitchoverStarted,
    SectionStarted,
    RamPagesReceived,
    DeviceStateReceived,
    StreamEnded,
    DescriptionReceived,
    *POSTCOPY_EVENTS,
)


class DestMigration(PostcopyIncomingControl):
    """One incoming stream, as a sans-IO state machine.

    Args:
        ledger: the daemon's ledger of incoming migrations.
        conn: the main channel's (or file's) protocol connection.
        channel: its key.
        from_file: a `file:` stream: no return path, committed once loaded (a snapshot).
        busy_reason: why this daemon cannot take a VM now (a VM runs here), or None; asked
            when the configuration arrives.
        now: the current time (the runner's clock, seconds).
        recover_id: a `recover` channel of this paused migration (docs/protocol.md 1.10,
            1.11): it takes the migration up again instead of starting one.
        precopy_resume_s: how long a broken precopy's copy is kept for the source to
            reconnect, when the source said it would (`x-precopy-resume-ms`; 0: discarded).
    """

    def __init__(
        self,
        *,
        ledger: IncomingLedger,
        conn: DestConnection,
        channel: inp.ChannelKey,
        from_file: bool,
        busy_reason: Callable[[], str | None],
        now: float,
        recover_id: str | None = None,
        precopy_resume_s: float = 0.0,
    ) -> None:
        self.ledger = ledger
        self.conn = conn
        self.channel = channel
        self.from_file = from_file
        self._busy_reason = busy_reason
        self._out = Outbox(now)
        self.phase: Phase = AwaitingConfiguration()
        self.multifd = MultifdReceivers(0)
        self.postcopy = PostcopyIncoming()
        self.preempt = PreemptIncoming(expected=False)  # set from the configuration
        self._recover_id = recover_id
        self._generation = 0  # the record's generation this connection drives
        self._earlier_bytes = 0  # received by the connections a recover channel took over from
        self._precopy_resume_s = precopy_resume_s
        self._source_stopped = False  # SWITCHOVER_START or the postcopy switch arrived

    def next_deadline(self) -> float | None:
        """When a broken precopy's copy expires (the connection's own timer watches the peer)."""
        phase = self.phase
        return phase.until if isinstance(phase, AwaitingReconnect) else None

    @property
    def finished(self) -> bool:
        """Whether the machine has nothing left to do."""
        return isinstance(self.phase, Done)

    @property
    def record(self) -> IncomingRecord | None:
        """The ledger record of this stream, once its configuration was accepted."""
        phase = self.phase
        receiving = AwaitingRam | Receiving | Adopting | AwaitingReconnect
        return phase.record if isinstance(phase, receiving) else None

    def start(self, now: float, first: ConfigurationReceived | None = None) -> list[act.Action]:
        """Begin with the configuration the router already read, or read until it arrives."""
        self._out.begin(now)
        if first is None or not self.from_file:
            self._out.do(act.Receive(channel=self.channel))  # PINGs are answered meanwhile
        if first is not None:
            self._guarded(lambda: self._on_configuration(first.config))
        if self._recover_id is not None:
            self._guarded(self._recover)
        return self._out.take()

    def handle(self, event: inp.Input, now: float) -> list[act.Action]:
        """Take one input; return the actions to execute, in order."""
        self._out.begin(now)
        self._guarded(lambda: self._dispatch(event))
        return self._out.take()

    # ------------------------------------------------------------------ dispatch

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            self._refresh()
            if self._decided_elsewhere():
                self._close()  # a RESOLVE connection or an operator settled it
                return
            step()
        except LoadError as exc:
            self._refuse(exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the stream hanging
            self._out.log("incoming_internal_error", level=act.Level.ERROR, error=repr(exc))
            self._refuse(ErrorCode.INTERNAL, f"internal error: {exc!r}")

    def _dispatch(self, event: inp.Input) -> None:
        match event:
            case inp.PeerEventReceived(channel=channel, event=received) if channel == self.channel:
                self._on_event(received)
            case inp.PeerEventReceived(channel=channel, event=received):
                self._on_multifd_event(channel, received)
            case inp.ChannelJoined(channel=channel, conn=conn):
                self._on_joined(channel, conn)
            case inp.ChannelFailed(channel=channel, reason=reason, code=code):
                self._on_channel_failed(channel, reason, code)
            case inp.SendDone(channel=channel) if isinstance(self.phase, Closing):
                self._on_last_reply_flushed()
            case inp.ShutdownRequested():
                self._close()
            case inp.TakenOver():
                self._lost("a recover channel took the migration over")
            case inp.TimerFired():
                self._reconnect_expired()
            case _:
                self._on_vm_input(event)

    def _on_vm_input(self, event: inp.Input) -> None:
        match event:
            case inp.MachinePrepared(machine=machine):
                self._on_prepared(machine)
            case inp.MachinePrepareFailed(reason=reason):
                self._refuse(ErrorCode.INTERNAL, f"cannot build the VM here: {reason}")
            case inp.VmAdopted(runstate=runstate):
                self._on_adopted(runstate)
            case inp.PagesNeeded(pfns=pfns):
                self._on_pages_needed(pfns)
            case _:
                pass

    def _on_channel_failed(
        self, channel: inp.ChannelKey, reason: str, code: ErrorCode | None
    ) -> None:
        where = "" if channel == self.channel else f"{channel.role} channel {channel.serial}: "
        record = self.record  # a frame cut short is a loss too, for a precopy that may resume
        cut = (
            code is ErrorCode.TRUNCATED and record is not None and self._may_resume_precopy(record)
        )
        if code is None or cut:
            self._lost(f"connection lost: {where}{reason}")
        else:
            self._refuse(code, f"bad migration stream: {where}{reason}")

    def _on_event(self, event: object) -> None:
        if isinstance(event, _LOAD_EVENTS):
            self._on_load_event(event)
            return
        match event:
            case ConfigurationReceived(config=config):
                self._on_configuration(config)
            case ReturnPathRequested():
                self._on_ack_request()
            case PingReceived():
                self._out.flush(self.channel)  # the PONG the protocol queued
            case HandoverReceived():
                self._commit()
            case AbortReceived(code=code, reason=reason):
                if (record := self.record) is not None:
                    aborted, cause = f"source aborted: {reason}", error_cause(code)
                    self.ledger.discard(record.migration_id, aborted, self._out, cause=cause)
                self._close()
            case ConnectionClosed() | PeerTimedOut():
                self._on_close(event)
            case _:
                pass

    def _on_load_event(self, event: object) -> None:
        if self.multifd.hold(event) or self.preempt.hold(event, running=self.postcopy.running):
            return  # it waits for the RAM still on its way on multifd or preempt channels
        match event:
            case SwitchoverStarted():
                self._source_stopped = True
                self.multifd.switched_over()
            case SectionStarted():
                self._load(lambda m: load_section_start(m.savevm, start_record(event)))
                self._require_receiving().record.ram_section_id = self.conn.ram_section_id
            case RamPagesReceived():
                self._on_pages(event)
            case DeviceStateReceived():
                self._load(lambda m: load_section_full(m.savevm, full_record(event)))
                self._require_receiving().record.metrics.devices.add(
                    (event.idstr, event.instance_id)
                )
            case StreamEnded():
                self._on_stream_ended()
            case DescriptionReceived():
                self._loaded()
            case _:
                self._on_postcopy_event(event)

    # ------------------------------------------------------------------ setup

    def _on_configuration(self, config: MigrationConfiguration) -> None:
        if not isinstance(self.phase, AwaitingConfiguration):
            return
        machine_config = machine_config_from(config, expected_uuid=self.ledger.expected_uuid)
        record = self.ledger.begin(
            config, from_file=self.from_file, busy_reason=self._busy_reason(), out=self._out
        )
        self.phase = AwaitingRam(record=record, config=config)
        self.multifd = MultifdReceivers(config.multifd_channels)
        self.preempt = PreemptIncoming(expected=PREEMPT_CAPABILITY in config.capabilities)
        self._out.log(
            "incoming_setup",
            ram_bytes=machine_config.ram_bytes,
            multifd_channels=config.multifd_channels,
        )
        self._out.do(act.PrepareMachine(config=machine_config))

    def _on_ack_request(self) -> None:
        phase = self.phase
        if isinstance(phase, AwaitingRam):
            self.phase = AwaitingRam(record=phase.record, config=phase.config, ack_requested=True)
        else:
            self.conn.send_open_ack()
            self._out.flush(self.channel)

    def _on_prepared(self, machine: Machine) -> None:
        phase = self.phase
        if not isinstance(phase, AwaitingRam):
            return  # refused or lost meanwhile: the machine is dropped
        record = phase.record
        self.ledger.advance(record, DestTrigger.RAM_READY, Loading(machine=machine), self._out)
        record.metrics.ram_ready_at = self._out.now
        self.conn.attach_sink(machine.ram_handler.loader)
        self.phase = Receiving(record=record, config=phase.config)
        if phase.ack_requested:
            self.conn.send_open_ack()
            self._out.flush(self.channel)
        if self.from_file:
            self._out.do(act.Receive(channel=self.channel))  # a file is read once RAM is ready

    # ------------------------------------------------------------------ loading

    def _load(self, step: Callable[[Machine], None]) -> None:
        machine = self._require_receiving().record.machine
        if machine is None:
            msg = "no guest to load into"
            raise LoadError(msg, ErrorCode.INTERNAL)
        try:
            step(machine)
        except VMSimError as exc:
            raise LoadError(str(exc), ErrorCode.LOAD_FAILED) from exc

    def _on_pages(self, event: RamPagesReceived) -> None:
        phase = self._require_receiving()
        if event.data is not None and event.normal_pages:  # a confirming recovery has none
            msg = "page data arrived without guest RAM"
            raise LoadError(msg, ErrorCode.INTERNAL)
        phase.record.ram_frames += 1
        phase.record.metrics.normal_pages += event.normal_pages
        phase.record.metrics.zero_pages += event.zero_pages
        if self.postcopy.running:
            self._out.do(act.WakeVm())

    def _on_stream_ended(self) -> None:
        phase = self._require_receiving()
        if not isinstance(phase.record.state, Committed):  # confirmed only: nothing loaded
            self._load(lambda m: load_check_complete(m.savevm, phase.record.metrics.devices))
        self.phase = Receiving(record=phase.record, config=phase.config, ended=True)

    def _on_joined(self, channel: inp.ChannelKey, conn: DestConnection) -> None:
        if channel.role is ChannelRole.PREEMPT and not isinstance(self.phase, Receiving):
            self._out.do(act.CloseChannel(channel=channel))  # late: no postcopy loads here now
            return
        phase = self._require_receiving()
        if phase.record.machine is not None and channel.role is ChannelRole.PREEMPT:
            self.preempt.join(conn, phase.config, phase.record.machine)
            self._out.do(act.Receive(channel=channel))
            return
        if phase.record.machine is None or channel.role is not ChannelRole.MULTIFD:
            msg = f"a {channel.role} channel cannot join a migration"
            raise LoadError(msg, ErrorCode.UNEXPECTED_SECTION)
        self.multifd.join(channel.serial, conn, phase.config, phase.record.machine)
        self._out.do(act.Receive(channel=channel))

    def _loaded(self) -> None:
        phase = self._require_receiving()
        record, machine = phase.record, phase.record.machine
        if isinstance(record.state, Committed) and phase.ended:  # a recovery confirms it
            self._send_loaded(record, None)
            return
        if machine is None or not phase.ended:
            msg = "the stream ended before its end of stream"
            raise LoadError(msg, ErrorCode.UNEXPECTED_SECTION)
        load_cleanup(machine.savevm)
        if isinstance(record.state, Postcopy):  # it runs here already: nothing to compare
            self.postcopy.finish(machine)
            digest = None
        else:
            digest = machine.digest() if DIGEST_CHECK in phase.config.capabilities else None
            advance = self.ledger.advance
            advance(record, DestTrigger.STREAM_LOADED, Loaded(machine=machine), self._out)
        record.metrics.loaded_at = self._out.now
        self._out.log_figures("incoming_loaded", record.metrics.summary())
        if self.from_file:
            # A file has no handover: it is a snapshot, nothing else can run this copy.
            self._commit()
            return
        self._send_loaded(record, digest)

    def _send_loaded(self, record: IncomingRecord, digest: str | None) -> None:
        metrics = record.metrics
        self.conn.send_loaded(
            digest=digest,
            normal_pages=metrics.normal_pages,
            zero_pages=metrics.zero_pages,
            devices=len(metrics.devices),
        )
        self._out.flush(self.channel)

    # ------------------------------------------------------------------ handover

    def _commit(self) -> None:
        record = self._require_receiving().record
        decision = self.ledger.commit(record.migration_id, self._out, from_file=self.from_file)
        if isinstance(decision, Install):
            self.phase = Adopting(record=record)
            self._out.do(act.RunMigratedVm(machine=decision.machine))
        else:
            self._on_adopted(decision)

    def _on_adopted(self, runstate: str) -> None:
        phase = self.phase
        if isinstance(phase, Receiving) and isinstance(phase.record.state, Postcopy):
            # POSTCOPY_RUN: the guest runs while pages still come (RESUMED follows HANDOVER)
            self.ledger.adopted(phase.record.migration_id, runstate, self._out)
            return
        if isinstance(phase, Adopting):
            self.ledger.adopted(phase.record.migration_id, runstate, self._out)
        if self.from_file:
            self._close()
            return
        self.conn.send_resumed(runstate)
        self.phase = Closing()
        self._out.flush(self.channel)

    # ------------------------------------------------------------------ endings

    def _on_close(self, event: ConnectionClosed | PeerTimedOut) -> None:
        phase = self.phase
        if (
            self.from_file
            and isinstance(event, ConnectionClosed)
            and event.clean
            and isinstance(phase, Receiving)
            and phase.ended
        ):
            self._loaded()  # VMDESCRIPTION is optional in a file (QEMU reads it only if there)
            return
        self._lost(describe_loss(event))

    def _refuse(self, code: ErrorCode, reason: str) -> None:
        record = self.record
        if record is not None and isinstance(record.state, Postcopy | Recovering):
            self.ledger.postcopy_paused(record.migration_id, reason, self._out)  # it runs here
        elif record is not None:
            self.ledger.discard(record.migration_id, reason, self._out, cause=error_cause(code))
        else:
            self._out.log("incoming_refused", level=act.Level.WARNING, reason=reason)
        if not self.from_file:
            with contextlib.suppress(LocalProtocolError):  # a final reply went out already
                self.conn.send_failed(code, reason[:400])
        self.phase = Done()
        self._out.do(act.CloseChannel(channel=self.channel, linger_s=1.0))
        self._out.do(act.Finished())

    def _on_last_reply_flushed(self) -> None:
        """Close once the last reply left, not at the end of an earlier flush.

        A PONG's flush that ended after RESUMED was queued closed the channel before RESUMED
        went out: the source saw the end of the stream and stayed in doubt for a second
        (`python -m bench downtime`: 3 of 360 downtimes of ~1010 ms, each a migration that
        reached its handover when the source's 1 s ping was due).
        """
        if self.conn.pending_send_bytes == 0:
            self._close()
        else:
            self._out.flush(self.channel)

    def _close(self) -> None:
        if isinstance(self.phase, Done):
            return
        self.phase = Done()
        self._out.do(act.CloseChannel(channel=self.channel))
        self._out.do(act.Finished())

    # ------------------------------------------------------------------ helpers

    def _decided_elsewhere(self) -> bool:
        phase = self.phase
        if not isinstance(phase, Receiving):
            return False
        if phase.record.generation != self._generation:
            return True  # a recover channel took this migration over
        if self._recover_id is not None and isinstance(phase.record.state, Committed):
            return False  # a recover channel confirming what completed here
        return not isinstance(phase.record.state, Loading | Loaded | Postcopy | Recovering)

    def _require_receiving(self) -> Receiving:
        phase = self.phase
        if not isinstance(phase, Receiving):
            msg = f"a section arrived before the destination acknowledged ({type(phase).__name__})"
            raise LoadError(msg, ErrorCode.UNEXPECTED_SECTION)
        return phase
