"""The postcopy half of `DestMigration`: the switch, page requests and recovery.

`migration.dest_postcopy` keeps the state (discards, requests, the received bitmap's frames);
this is what the destination's machine does with each postcopy event, and how a `recover`
channel takes a paused postcopy up again (docs/protocol.md 1.10, docs/handover.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from migration import actions as act
from migration.dest_phases import Receiving
from migration.errors import LoadError
from protocol import (
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

    from migration.dest_phases import Phase
    from migration.dest_postcopy import PostcopyIncoming
    from migration.inputs import ChannelKey
    from migration.ledger import IncomingLedger
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
    _out: Outbox
    _recover_id: str | None
    _generation: int

    def _require_receiving(self) -> Receiving:
        raise NotImplementedError

    def _load(self, step: Callable[[Machine], None]) -> None:
        raise NotImplementedError

    def _recover(self) -> None:
        """A recover channel: send the received bitmap, then wait for POSTCOPY_RESUME."""
        record = self.ledger.recover(self._recover_id or "", self._out)
        self._generation = record.generation
        machine, config = record.machine, record.config
        if config is None or record.ram_section_id is None:
            msg = f"migration {record.migration_id} cannot be resumed here"
            raise LoadError(msg, ErrorCode.INTERNAL)
        sink = machine.ram_handler.loader if machine is not None else None
        self.conn.resume(config, sink, record.ram_section_id)
        self.phase = Receiving(record=record, config=config)
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

    def _on_postcopy_event(self, event: object) -> None:
        match event:
            case PostcopyAdvised():
                self.postcopy.advised = True
            case PagesDiscarded(ranges=ranges):
                self.postcopy.discard(ranges)
            case PostcopyListening():
                self._load(self.postcopy.listen)
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
