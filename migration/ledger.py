"""The destination's ledger: every incoming migration it has seen, and what became of it.

Each migration has one `IncomingRecord`. Its state is a value that carries what that state needs
(the loaded machine while it may still run here, the reason once discarded), so nothing is
cleared by hand, and it changes only along the destination's status table
(`migration.table.DEST_ROWS`):

    Preparing -> Loading -> Loaded -> Committed        (HANDOVER on the live connection)
               Loading <-> PrecopyPaused               (precopy resume: a recover channel)
                                   +-> Held -> Committed (HANDOVER after a RESOLVE, or operator)
    any state but Committed -> Discarded                (ABORT, a failed load, an operator)
    Loading -> Postcopy -> Committed                    (POSTCOPY_RUN, then every page and HANDOVER)
               Postcopy <-> PostcopyPaused -> RecoverySetup -> Recovering -> Postcopy (recovery)

The states are in `migration.ledger_states`.

A decision (committed or discarded) is final, and a record is only ever changed by its own id, so
an old connection cannot touch a newer migration (docs/handover.md, rule 5). `query-migrate`
shows the newest record. The ledger refuses a second stream while one is loading, a VM runs here,
or one is held in doubt (BUSY), and lets a validated stream of the same VM supersede a held copy
(only the VM's owner can start migrating it). It answers RESOLVE for every migration it has seen;
a restarted destination knows none of them (`unknown`), which is safe: it holds no copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from migration import actions as act
from migration.errors import LoadError, TransitionError
from migration.ledger_states import (
    OUTCOME_OF,
    POSTCOPY_STATES,
    RECEIVING_STATES,
    STATUS_OF,
    Committed,
    Discarded,
    Held,
    Loaded,
    Loading,
    Postcopy,
    PostcopyPaused,
    PrecopyPaused,
    Preparing,
    RecordState,
    Recovering,
    RecoverySetup,
)
from migration.metrics import DestMetrics
from migration.precopy_resume import PRECOPY_RESUME_CAPABILITY
from migration.status import MigrationStatus
from migration.table import DEST_TABLE, DestTrigger, Row, Side, StatusMachine
from protocol import ErrorCode, Outcome

if TYPE_CHECKING:
    from migration.outbox import Outbox
    from protocol import MigrationConfiguration
    from vmsim import Machine

__all__ = [
    "OUTCOME_OF",
    "STATUS_OF",
    "Committed",
    "Discarded",
    "Held",
    "IncomingLedger",
    "IncomingRecord",
    "Install",
    "Loaded",
    "Loading",
    "Postcopy",
    "PostcopyPaused",
    "PrecopyPaused",
    "Preparing",
    "RecordState",
    "Recovering",
    "RecoverySetup",
]

D = DestTrigger
S = MigrationStatus


class IncomingRecord:
    """One incoming migration: its identity, state, metrics and fate."""

    def __init__(self, *, migration_id: str, uuid: str | None, from_file: bool, now: float) -> None:
        self.migration_id = migration_id
        self.uuid = uuid
        self.from_file = from_file
        self.config: MigrationConfiguration | None = None  # set by `IncomingLedger.begin`
        self.ram_section_id: int | None = None  # postcopy: the stream's RAM section, to resume
        self.generation = 0  # which connection drives it: each recover channel takes over
        self.ram_frames = 0  # RAM frames loaded, on every connection (precopy resume)
        self.advised = False  # POSTCOPY_ADVISE arrived: it may switch to postcopy
        self.metrics = DestMetrics(started_at=now)
        self.state: RecordState = Preparing()
        self._status = StatusMachine(Side.DESTINATION)
        self._status.fire(D.STREAM_ACCEPTED)

    @property
    def status(self) -> MigrationStatus:
        """The QEMU status this record shows as."""
        return self._status.status

    @property
    def machine(self) -> Machine | None:
        """The received machine, while it may still run here."""
        state = self.state
        return (
            state.machine
            if isinstance(state, (Loading, PrecopyPaused, Loaded, Held, *POSTCOPY_STATES))
            else None
        )

    @property
    def failure_cause(self) -> str | None:
        """The short label of why it was discarded, if it was."""
        state = self.state
        return state.cause if isinstance(state, Discarded) else None

    @property
    def reason(self) -> str | None:
        """Why it was discarded or is held, if so."""
        state = self.state
        paused = PostcopyPaused | PrecopyPaused
        return state.reason if isinstance(state, Discarded | Held | paused) else None

    def move(self, trigger: DestTrigger, state: RecordState) -> None:
        """Fire `trigger` and take `state`, which must show as the status the table gives.

        Raises:
            TransitionError: the table has no such row, or `state` does not fit it (a bug).
        """
        if not self._status.can_fire(trigger):
            msg = (
                f"incoming migration {self.migration_id} in status '{self.status}' "
                f"({type(self.state).__name__}) cannot take '{trigger}'"
            )
            raise TransitionError(msg)
        expected = DEST_TABLE[self.status][trigger]
        if STATUS_OF[type(state)] is not expected:
            msg = f"{type(state).__name__} does not show as '{expected}'"
            raise TransitionError(msg)
        self._status.fire(trigger)
        self.state = state

    @property
    def history(self) -> list[Row]:
        """Every status change so far, as the rows of the destination's table."""
        return self._status.history


@dataclass(frozen=True, slots=True)
class Install:
    """HANDOVER decided: install `machine` as this daemon's VM, then call `adopted`."""

    machine: Machine


class IncomingLedger:
    """Every incoming migration this daemon has seen, by id; the newest is `current`."""

    def __init__(self, *, expected_uuid: str | None = None) -> None:
        self.expected_uuid = expected_uuid
        self.records: dict[str, IncomingRecord] = {}
        self.current: IncomingRecord | None = None
        self.events_enabled = False

    @property
    def held(self) -> IncomingRecord | None:
        """The loaded VM held in doubt, if any."""
        return next((r for r in self.records.values() if isinstance(r.state, Held)), None)

    def outcome_of(self, migration_id: str) -> Outcome | None:
        """What became of a migration (no side effect); None while it is still loading."""
        record = self.records.get(migration_id)
        if record is None:
            return Outcome.UNKNOWN
        return OUTCOME_OF.get(type(record.state))

    # ------------------------------------------------------------------ decisions

    def begin(
        self,
        config: MigrationConfiguration,
        *,
        from_file: bool,
        busy_reason: str | None,
        out: Outbox,
    ) -> IncomingRecord:
        """Accept a checked configuration as a new migration.

        Raises:
            LoadError: BUSY: another stream loads, a VM runs here, one is held, or the id was
                already received.
        """
        refusal = self._refusal(config, from_file=from_file, busy_reason=busy_reason)
        if refusal is not None:
            raise LoadError(refusal, ErrorCode.BUSY)
        superseded = f"superseded by migration {config.migration_id}"
        for old in self._supersedable(config.uuid):  # only the VM's owner can migrate it
            self.discard(old.migration_id, superseded, out, cause="superseded")
        record = IncomingRecord(
            migration_id=config.migration_id, uuid=config.uuid, from_file=from_file, now=out.now
        )
        record.config = config
        self.records[record.migration_id] = record
        self.current = record
        self._announce(record, out)
        return record

    def advance(
        self, record: IncomingRecord, trigger: DestTrigger, state: RecordState, out: Outbox
    ) -> None:
        """Move a record (and emit MIGRATION when it is the current one)."""
        before = record.status
        record.move(trigger, state)
        if record.status is not before:
            self._announce(record, out)

    def commit(self, migration_id: str, out: Outbox, *, from_file: bool = False) -> Install | str:
        """HANDOVER (or a loaded file): decide that the VM runs here (idempotent).

        Returns:
            `Install` the first time (the caller installs the machine, then calls `adopted`),
            the run state when it was committed before.

        Raises:
            LoadError: the migration is not loaded here (nothing to run).
        """
        record = self._record(migration_id)
        state = record.state
        if isinstance(state, Committed):
            return state.runstate or "running"
        if isinstance(state, Postcopy):  # every page arrived: the handover confirms it
            self.advance(record, D.HANDOVER, Committed(runstate=state.runstate), out)
            record.metrics.ended_at = out.now
            return state.runstate or "running"
        machine = record.machine
        if not isinstance(state, Loaded | Held) or machine is None:
            why = f": {record.reason}" if record.reason else ""
            what = type(state).__name__.lower()
            msg = f"migration {migration_id} is {what}{why}; it cannot run here"
            raise LoadError(msg, ErrorCode.PROTOCOL_ERROR)
        trigger = D.FILE_LOADED if from_file else D.HANDOVER
        self.advance(record, trigger, Committed(), out)  # decided before the VM starts (rule 5)
        record.metrics.ended_at = out.now
        return Install(machine=machine)

    def postcopy_run(self, migration_id: str, out: Outbox) -> Install:
        """POSTCOPY_RUN: the VM runs here from now on, its missing pages still to come.

        Raises:
            LoadError: the migration is not loading here.
        """
        record = self._record(migration_id)
        state = record.state
        if not isinstance(state, Loading):
            what = type(state).__name__.lower()
            msg = f"migration {migration_id} is {what}; POSTCOPY_RUN cannot run it here"
            raise LoadError(msg, ErrorCode.PROTOCOL_ERROR)
        self.advance(record, D.POSTCOPY_RUN, Postcopy(machine=state.machine), out)
        return Install(machine=state.machine)

    def postcopy_paused(self, migration_id: str, reason: str, out: Outbox) -> None:
        """The source's channel broke in postcopy: the guest runs on, its pages wait.

        Once every page is here (`machine.postcopy` is over) nothing waits: it completes.
        """
        record = self._record(migration_id)
        state = record.state
        if not isinstance(state, Postcopy | Recovering):
            return
        if isinstance(state, Postcopy) and state.machine.postcopy is None:
            self.advance(record, D.SOURCE_LOST, Committed(runstate=state.runstate), out)
            record.metrics.ended_at = out.now
            out.log("postcopy_completed_without_source", migration_id=migration_id, reason=reason)
            return
        why = f"postcopy paused: {reason}; the pages not yet received are on the source"
        paused = PostcopyPaused(machine=state.machine, reason=why, runstate=state.runstate)
        self.advance(record, D.CHANNEL_LOST, paused, out)
        warning = act.Level.WARNING
        out.log("postcopy_paused", level=warning, migration_id=migration_id, reason=reason)

    def recover(self, migration_id: str, out: Outbox) -> IncomingRecord:
        """A recover channel for a paused postcopy: postcopy-recover-setup, -recover.

        A migration whose old connection still looks alive here is paused first: the source
        reconnects only once it lost that connection, and the machine that drove it stands
        down when it sees the record's generation move on. One that completed here meanwhile
        (its last page arrived, then the connection broke before HANDOVER) stays completed:
        the recover channel only tells the source so.

        Raises:
            LoadError: the migration is not in postcopy here (PROTOCOL_ERROR), or was discarded
                before its guest ran here (DISCARDED: the source may resume it, as it holds
                the only copy that ever ran).
        """
        record = self.records.get(migration_id)
        if record is not None and isinstance(record.state, Loading | PrecopyPaused):
            return self._resume_precopy(record, out)
        if record is not None and isinstance(record.state, Postcopy):
            self.postcopy_paused(migration_id, "the source reconnected", out)
        completed = record is not None and isinstance(record.state, Committed)
        if record is not None and completed and record.ram_section_id is not None:
            record.generation += 1  # a postcopy that completed here meanwhile
            return record
        state = record.state if record is not None else None
        if isinstance(state, Discarded):  # before POSTCOPY_RUN: its guest never ran here
            msg = (
                f"migration {migration_id} was discarded by the destination before its guest "
                f"ran ({state.reason}): it will never run there, so the source resumes it"
            )
            raise LoadError(msg, ErrorCode.DISCARDED)
        if record is None or not isinstance(state, PostcopyPaused):
            msg = f"migration {migration_id} is not paused in postcopy here: nothing to recover"
            raise LoadError(msg, ErrorCode.PROTOCOL_ERROR)
        machine, runstate = state.machine, state.runstate
        record.generation += 1
        self.advance(record, D.RECOVER, RecoverySetup(machine=machine, runstate=runstate), out)
        recovering = Recovering(machine=machine, runstate=runstate)
        self.advance(record, D.RECOVERY_CONNECTED, recovering, out)
        return record

    def recoverable(self, migration_id: str) -> bool:
        """Whether a recover channel may take this migration over (`recover` would accept it)."""
        record = self.records.get(migration_id)
        if record is None or record.config is None:
            return False
        if isinstance(record.state, Loading | PrecopyPaused):
            return PRECOPY_RESUME_CAPABILITY in record.config.capabilities
        return isinstance(record.state, POSTCOPY_STATES)

    def precopy_paused(self, migration_id: str, reason: str, out: Outbox) -> None:
        """The connection broke while loading, and the source will reconnect: keep the copy."""
        record = self._record(migration_id)
        state = record.state
        if not isinstance(state, Loading):
            return
        why = f"precopy paused: {reason}; waiting for the source to reconnect"
        self.advance(
            record, D.PRECOPY_BROKEN, PrecopyPaused(machine=state.machine, reason=why), out
        )
        out.log("precopy_paused", level=act.Level.WARNING, migration_id=migration_id, reason=reason)

    def _resume_precopy(self, record: IncomingRecord, out: Outbox) -> IncomingRecord:
        """A recover channel for a precopy: loading again, driven by the new connection.

        One whose old connection still looks alive here is paused first (the source
        reconnects only once it lost it; the machine that drove it stands down).

        Raises:
            LoadError: the source did not say it would reconnect (PROTOCOL_ERROR).
        """
        config = record.config
        if config is None or PRECOPY_RESUME_CAPABILITY not in config.capabilities:
            msg = f"migration {record.migration_id} is not resumable (no x-precopy-resume)"
            raise LoadError(msg, ErrorCode.PROTOCOL_ERROR)
        self.precopy_paused(record.migration_id, "the source reconnected", out)
        state = record.state
        if not isinstance(state, PrecopyPaused):  # a bug: precopy_paused takes Loading
            raise TransitionError(f"{type(state).__name__} cannot resume")
        record.generation += 1
        self.advance(record, D.PRECOPY_RESUMED, Loading(machine=state.machine), out)
        return record

    def recovered(self, migration_id: str, out: Outbox) -> None:
        """POSTCOPY_RESUME on the recover channel: postcopy-active again."""
        record = self._record(migration_id)
        state = record.state
        if isinstance(state, Recovering):
            postcopy = Postcopy(machine=state.machine, runstate=state.runstate)
            self.advance(record, D.RECOVERED, postcopy, out)

    def adopted(self, migration_id: str, runstate: str, out: Outbox) -> None:
        """The committed VM was installed and runs as `runstate`."""
        record = self._record(migration_id)
        if isinstance(record.state, Postcopy):
            record.state = Postcopy(machine=record.state.machine, runstate=runstate)
            out.log("postcopy_running", migration_id=migration_id, runstate=runstate)
            return
        record.state = Committed(runstate=runstate)
        out.log("handover_committed", migration_id=migration_id, runstate=runstate)

    def operator_commit(self, migration_id: str, out: Outbox) -> Install:
        """`x-migrate-incoming-resolve commit` of a held VM."""
        record = self._record(migration_id)
        state = record.state
        if not isinstance(state, Held):
            msg = f"migration {migration_id} is not held in doubt here"
            raise LoadError(msg, ErrorCode.PROTOCOL_ERROR)
        self.advance(record, D.OPERATOR_COMMIT, Committed(), out)
        record.metrics.ended_at = out.now
        return Install(machine=state.machine)

    def discard(self, migration_id: str, reason: str, out: Outbox, *, cause: str) -> None:
        """Never run this migration's VM here (a committed one cannot be discarded).

        `cause` is a short label from a fixed set (an error code's name, `connection-lost`,
        `superseded`, `operator`, `abandoned`): what the metrics count failures by.
        """
        record = self._record(migration_id)
        if isinstance(record.state, (Committed, *POSTCOPY_STATES)):
            out.log(
                "discard_after_commit_refused",
                level=act.Level.ERROR,
                migration_id=migration_id,
                reason=reason,
            )
            return
        if isinstance(record.state, Discarded):
            return
        self.advance(record, D.DISCARDED, Discarded(reason=reason, cause=cause), out)
        record.metrics.ended_at = out.now
        out.log(
            "incoming_discarded", level=act.Level.WARNING, migration_id=migration_id, reason=reason
        )

    def hold(self, migration_id: str, reason: str, out: Outbox) -> None:
        """Keep a loaded VM paused in doubt (rule 4 of docs/handover.md)."""
        record = self._record(migration_id)
        state = record.state
        if not isinstance(state, Loaded):
            return
        why = (
            f"handover in doubt: {reason}; the loaded VM is held paused until the source's "
            "decision is known (livemig resolve)"
        )
        self.advance(record, D.SOURCE_LOST, Held(machine=state.machine, reason=why), out)
        out.log(
            "incoming_in_doubt", level=act.Level.WARNING, migration_id=migration_id, reason=reason
        )

    def answer_resolve(self, migration_id: str, out: Outbox) -> Outcome:
        """RESOLVE from a source: the outcome, deciding `discarded` for an unfinished load."""
        record = self.records.get(migration_id)
        if record is not None and isinstance(record.state, Preparing | Loading | PrecopyPaused):
            # The source gave this stream up (it asks from a new connection): never run it.
            self.discard(
                migration_id,
                "the source abandoned the migration before it was loaded",
                out,
                cause="abandoned",
            )
        return self.outcome_of(migration_id) or Outcome.DISCARDED

    # ------------------------------------------------------------------ helpers

    def _supersedable(self, uuid: str | None) -> list[IncomingRecord]:
        """Copies of VM `uuid` a new migration of it replaces: held, or a broken precopy's."""
        return [
            r
            for r in self.records.values()
            if isinstance(r.state, Held | PrecopyPaused) and uuid is not None and r.uuid == uuid
        ]

    def _refusal(
        self, config: MigrationConfiguration, *, from_file: bool, busy_reason: str | None
    ) -> str | None:
        if config.migration_id in self.records:
            return f"migration {config.migration_id} was already received here"
        replaced = [] if from_file else self._supersedable(config.uuid)
        busy = [
            r
            for r in self.records.values()
            if isinstance(r.state, RECEIVING_STATES + POSTCOPY_STATES) and r not in replaced
        ]
        if busy:
            return (
                f"the destination is already receiving migration {busy[0].migration_id}; "
                "a second concurrent stream is refused"
            )
        if busy_reason is not None:
            return busy_reason
        held = self.held
        if held is not None and (from_file or held.uuid is None or held.uuid != config.uuid):
            return (
                f"VM {held.uuid} from migration {held.migration_id} is held in doubt here; "
                "resolve it first (livemig resolve)"
            )
        return None

    def _announce(self, record: IncomingRecord, out: Outbox) -> None:
        events = record is self.current and self.events_enabled
        out.status_changed(record.status, migration_id=record.migration_id, events=events)

    def _record(self, migration_id: str) -> IncomingRecord:
        record = self.records.get(migration_id)
        if record is None:
            msg = f"no incoming migration {migration_id} here"
            raise LoadError(msg, ErrorCode.PROTOCOL_ERROR)
        return record
