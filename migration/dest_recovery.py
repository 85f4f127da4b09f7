"""The recovery half of `DestMigration`: postcopy's switch and page requests, and recover channels.

`migration.dest_postcopy` keeps the postcopy state (discards, requests, the received bitmap's
frames); this is what the destination's machine does with each postcopy event, and how a
`recover` channel takes a paused postcopy (docs/protocol.md 1.10) or a broken precopy (1.11) up
again (docs/handover.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from migration import actions as act
from migration.dest_phases import AwaitingReconnect, Done, Receiving
from migration.dest_postcopy import PreemptIncoming
from migration.errors import LoadError
from migration.ledger_states import (
    Loaded,
    Loading,
    Postcopy,
    PrecopyPaused,
    Preparing,
    Recovering,
)
from migration.params import PREEMPT_CAPABILITY
from migration.precopy_resume import PRECOPY_RESUME_CAPABILITY
from protocol import (
    ChannelRole,
    ErrorCode,
    PagesDiscarded,
    PostcopyAdvised,
    PostcopyListening,
    PostcopyResumed,
    PostcopyRunning,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    from numpy.typing import NDArray

    from migration.dest_multifd import MultifdReceivers
    from migration.dest_phases import Phase
    from migration.dest_postcopy import PostcopyIncoming
    from migration.inputs import ChannelKey
    from migration.ledger import IncomingLedger, IncomingRecord
    from migration.outbox import Outbox
    from protocol import DestConnection
    from vmsim import Machine


POSTCOPY_EVENTS = (
    PostcopyAdvised,
    PagesDiscarded,
    PostcopyListening,
    PostcopyRunning,
    PostcopyResumed,
)
"""The main-stream events of postcopy, handled by `_on_postcopy_event`."""


class PostcopyIncomingControl:
    """`DestMigration` provides the attributes and the two helpers declared here."""

    ledger: IncomingLedger
    conn: DestConnection
    channel: ChannelKey
    phase: Phase
    postcopy: PostcopyIncoming
    preempt: PreemptIncoming
    multifd: MultifdReceivers
    _out: Outbox
    _recover_id: str | None
    _generation: int
    _earlier_bytes: int
    _precopy_resume_s: float
    _source_stopped: bool

    def _require_receiving(self) -> Receiving:
        raise NotImplementedError

    def _load(self, step: Callable[[Machine], None]) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    @property
    def record(self) -> IncomingRecord | None:
        """The ledger record of this stream (`DestMigration.record`)."""
        raise NotImplementedError

    def _refresh(self) -> None:
        """The record's received bytes, while this connection drives it.

        Not once a recover channel took over: an old connection still open behind a stalled
        link wrote its own count over the total.
        """
        record = self.record
        if record is not None and record.generation == self._generation:
            pages = self.multifd.received_bytes + self.preempt.received_bytes
            record.metrics.received_bytes = self._earlier_bytes + self.conn.received_bytes + pages

    def _recover(self) -> None:
        """A recover channel: RESUME_POINT (a precopy) or the received bitmap (a postcopy)."""
        record = self.ledger.recover(self._recover_id or "", self._out)
        self._generation = record.generation
        self._earlier_bytes = record.metrics.received_bytes
        machine, config = record.machine, record.config
        if config is None or record.ram_section_id is None:
            msg = f"migration {record.migration_id} cannot be resumed here"
            raise LoadError(msg, ErrorCode.INTERNAL)
        self.preempt = PreemptIncoming(expected=PREEMPT_CAPABILITY in config.capabilities)
        sink = machine.ram_handler.loader if machine is not None else None
        advised = record.advised and isinstance(record.state, Loading)
        self.conn.resume(config, sink, record.ram_section_id, advised=advised)
        self.phase = Receiving(record=record, config=config)
        if isinstance(record.state, Loading):  # a precopy: it goes on from RESUME_POINT
            self.conn.send_resume_point(record.ram_frames)
            self._out.flush(self.channel)
            self._out.log("precopy_resuming", ram_frames=record.ram_frames)
            return
        for frame in self.postcopy.bitmap_frames(machine, config.ram_pages):
            self.conn.send_recv_bitmap(*frame)
        self._out.flush(self.channel)
        if machine is None:  # committed here already: the stream only confirms it
            self._out.log("postcopy_recovering_committed")
            return
        self.postcopy.resume(machine)
        self._out.do(act.WatchVmFaults())
        self._out.do(act.WakeVm())  # a blocked guest asks again, on this channel
        self._out.log("postcopy_recovering", missing_pages=self._missing(machine))

    def _lost(self, reason: str) -> None:
        """The source is gone: hold the VM in doubt if it was loaded, else discard it."""
        record = self.record
        if record is not None:
            if isinstance(record.state, Postcopy | Recovering):
                self.ledger.postcopy_paused(record.migration_id, reason, self._out)
            elif isinstance(record.state, Loaded):
                self.ledger.hold(record.migration_id, reason, self._out)
            elif self._may_resume_precopy(record):
                self._pause_precopy(record, reason)
                return
            elif isinstance(record.state, Preparing | Loading):
                self.ledger.discard(
                    record.migration_id,
                    f"incomplete migration: {reason}",
                    self._out,
                    cause="connection-lost",
                )
        self._close()

    def _may_resume_precopy(self, record: IncomingRecord) -> bool:
        """The source will reconnect (it said so) and its VM runs: keep what was loaded."""
        config = record.config
        return (
            self._precopy_resume_s > 0
            and not self._source_stopped
            and isinstance(record.state, Loading)
            and config is not None
            and PRECOPY_RESUME_CAPABILITY in config.capabilities
            and not config.multifd_channels
            and record.ram_section_id is not None
        )

    def _pause_precopy(self, record: IncomingRecord, reason: str) -> None:
        self.ledger.precopy_paused(record.migration_id, reason, self._out)
        self.phase = AwaitingReconnect(record=record, until=self._out.now + self._precopy_resume_s)
        self._out.do(act.CloseChannel(channel=self.channel))

    def _reconnect_expired(self) -> None:
        """`x-precopy-resume-ms` is over: discard the copy if no recover channel took it."""
        phase = self.phase
        if not isinstance(phase, AwaitingReconnect) or self._out.now < phase.until:
            return
        record = phase.record
        if record.generation == self._generation and isinstance(record.state, PrecopyPaused):
            budget_ms = round(self._precopy_resume_s * 1000)
            reason = f"{record.reason}; the source did not reconnect within {budget_ms} ms"
            self.ledger.discard(record.migration_id, reason, self._out, cause="connection-lost")
        self.phase = Done()
        self._out.do(act.Finished())

    def _on_postcopy_event(self, event: object) -> None:
        match event:
            case PostcopyAdvised():
                self.postcopy.advised = True
                if (record := self.record) is not None:  # it comes before RAM is ready
                    record.advised = True
            case PagesDiscarded(ranges=ranges):
                self._source_stopped = True
                self.postcopy.discard(ranges)
            case PostcopyListening():
                self._source_stopped = True
                self._load(self.postcopy.listen)
                self._load(self.preempt.listened)
                self._require_receiving().record.ram_section_id = self.conn.ram_section_id
            case PostcopyResumed():
                record = self._require_receiving().record
                self.ledger.recovered(record.migration_id, self._out)
            case PostcopyRunning():
                record = self._require_receiving().record
                install = self.ledger.postcopy_run(record.migration_id, self._out)
                record.metrics.postcopy_run_at = self._out.now
                self._out.do(act.RunMigratedVm(machine=install.machine, postcopy=True))
            case _:
                pass

    def _on_multifd_event(self, channel: ChannelKey, event: object) -> None:
        if channel.role is ChannelRole.PREEMPT:
            self._on_preempt_event(event)
            return
        metrics = self._require_receiving().record.metrics
        if self.multifd.on_event(channel.serial, event, metrics) and self.multifd.all_ended:
            for held in self.multifd.release():
                self._on_load_event(held)

    def _on_preempt_event(self, event: object) -> None:
        """Requested pages arrived on the preempt channel (or it ended: the held end goes on)."""
        record = self._require_receiving().record
        held = self.preempt.on_event(event)
        record.metrics.preempt_pages = self.preempt.pages
        if self.postcopy.running:
            self._out.do(act.WakeVm())
        for event_held in held:
            self._on_load_event(event_held)

    def _on_load_event(self, event: object) -> None:
        raise NotImplementedError

    def _on_pages_needed(self, pfns: NDArray[np.intp]) -> None:
        phase = self.phase
        if not isinstance(phase, Receiving) or (machine := phase.record.machine) is None:
            return
        if self.postcopy.request(pfns, machine, self.conn):
            phase.record.metrics.postcopy_requests = self.postcopy.requests
            self._out.flush(self.channel)

    @staticmethod
    def _missing(machine: Machine) -> int:
        return machine.postcopy.missing_count if machine.postcopy is not None else 0
