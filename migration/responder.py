"""The destination's side of a resolve connection (docs/handover.md, resolution).

A source in doubt, or one that abandoned a migration, opens a `resolve` channel and asks with
RESOLVE what became of a migration id. The responder answers from the ledger (deciding
`discarded` for a load that never finished: the source gave it up), then applies what may follow
on the same connection: HANDOVER (the source had decided: commit, install, RESUMED) or ABORT
(discard a held copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from migration import actions as act
from migration import inputs as inp
from migration.errors import LoadError
from migration.ledger import Install
from migration.metrics import error_cause
from migration.outbox import Outbox
from protocol import (
    AbortReceived,
    ConnectionClosed,
    HandoverReceived,
    LocalProtocolError,
    PeerTimedOut,
    ResolveRequested,
)

if TYPE_CHECKING:
    from migration.ledger import IncomingLedger
    from protocol import DestConnection


@dataclass(frozen=True, slots=True)
class AwaitingResolve:
    """The channel is ours; RESOLVE has not arrived yet."""


@dataclass(frozen=True, slots=True)
class Answered:
    """OUTCOME sent for `migration_id`; HANDOVER or ABORT may follow."""

    migration_id: str


@dataclass(frozen=True, slots=True)
class Adopting:
    """HANDOVER committed the VM; the daemon installs it, RESUMED follows."""

    migration_id: str


@dataclass(frozen=True, slots=True)
class Closing:
    """The last reply is on its way."""


@dataclass(frozen=True, slots=True)
class Done:
    """Nothing left to do."""


Phase = AwaitingResolve | Answered | Adopting | Closing | Done


class ResolveResponder:
    """One resolve connection at the destination, as a sans-IO state machine."""

    def __init__(
        self,
        *,
        ledger: IncomingLedger,
        conn: DestConnection,
        channel: inp.ChannelKey,
        now: float,
    ) -> None:
        self.ledger = ledger
        self.conn = conn
        self.channel = channel
        self._out = Outbox(now)
        self.phase: Phase = AwaitingResolve()

    def next_deadline(self) -> float | None:
        """Never: the connection's own timer watches the peer."""
        return None

    @property
    def finished(self) -> bool:
        """Whether the responder has nothing left to do."""
        return isinstance(self.phase, Done)

    def start(self, now: float, first: ResolveRequested | None = None) -> list[act.Action]:
        """Begin with the RESOLVE the router already read, or read until it arrives."""
        self._out.begin(now)
        self._out.do(act.Receive(channel=self.channel))
        if first is not None:
            self._on_resolve(first.migration_id)
        return self._out.take()

    def handle(self, event: inp.Input, now: float) -> list[act.Action]:
        """Take one input; return the actions to execute, in order."""
        self._out.begin(now)
        match event:
            case inp.PeerEventReceived(event=received) if event.channel == self.channel:
                self._on_event(received)
            case inp.ChannelFailed() | inp.ShutdownRequested():
                self._close()
            case inp.VmAdopted(runstate=runstate) if isinstance(self.phase, Adopting):
                self.ledger.adopted(self.phase.migration_id, runstate, self._out)
                self._reply_resumed(runstate)
            case inp.SendDone() if isinstance(self.phase, Closing):
                if self.conn.pending_send_bytes == 0:  # the reply left, not just a PONG before it
                    self._close()
                else:
                    self._out.flush(self.channel)
            case _:
                pass
        return self._out.take()

    def _on_event(self, event: object) -> None:
        phase = self.phase
        match event:
            case ResolveRequested(migration_id=migration_id):
                self._on_resolve(migration_id)
            case HandoverReceived() if isinstance(phase, Answered):
                self._on_handover(phase.migration_id)
            case AbortReceived(code=code, reason=reason) if isinstance(phase, Answered):
                if phase.migration_id in self.ledger.records:
                    aborted, cause = f"source aborted: {reason}", error_cause(code)
                    self.ledger.discard(phase.migration_id, aborted, self._out, cause=cause)
                self._close()
            case ConnectionClosed() | PeerTimedOut():
                self._close()
            case _:
                pass

    def _on_resolve(self, migration_id: str) -> None:
        outcome = self.ledger.answer_resolve(migration_id, self._out)
        self._out.log("resolve_requested", migration_id=migration_id, outcome=str(outcome))
        self.conn.send_outcome(migration_id, outcome)
        self.phase = Answered(migration_id=migration_id)
        self._out.flush(self.channel)

    def _on_handover(self, migration_id: str) -> None:
        try:
            decision = self.ledger.commit(migration_id, self._out)
        except LoadError as exc:
            self._reply_failed(exc)
            return
        if isinstance(decision, Install):
            self.phase = Adopting(migration_id=migration_id)
            self._out.do(act.RunMigratedVm(machine=decision.machine))
        else:
            self._reply_resumed(decision)

    def _reply_resumed(self, runstate: str) -> None:
        self.conn.send_resumed(runstate)
        self.phase = Closing()
        self._out.flush(self.channel)

    def _reply_failed(self, error: LoadError) -> None:
        try:
            self.conn.send_failed(error.code, error.message[:400])
        except LocalProtocolError:
            self._close()
            return
        self.phase = Closing()
        self._out.flush(self.channel)

    def _close(self) -> None:
        if isinstance(self.phase, Done):
            return
        self.phase = Done()
        self._out.do(act.CloseChannel(channel=self.channel))
        self._out.do(act.Finished())
