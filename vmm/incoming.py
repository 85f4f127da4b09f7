"""The destination side: accept migration streams, load them, and take over the VM safely.

Every incoming migration has one `IncomingRecord` whose phase moves along a table
(docs/handover.md):

    preparing -> loading -> loaded -> committed           (HANDOVER on the live connection)
                                   +-> held -> committed   (HANDOVER after a RESOLVE)
    any phase but committed -> discarded                  (ABORT, a failed load, an operator)

`query-migrate` shows the newest record (its phase maps to QEMU's statuses: setup, active,
in-doubt, completed, failed). A decision (committed or discarded) is final, and a record is only
ever changed by its own id, so an old connection cannot touch a newer migration.

`IncomingService` owns the listening socket for the daemon's whole life: it also answers RESOLVE
for migrations it has seen, refuses a second stream while one is loading, a VM runs here or one is
held in doubt (BUSY), and lets a validated stream of the same VM supersede a held copy (only the
VM's owner can start migrating it). `IncomingMigration` drives one connection: it allocates and
pre-faults guest RAM in a thread while still answering PINGs, attaches that RAM to the protocol
(which receives page data straight into it), loads START/FULL sections through the savevm
framework, reports LOADED (with the digest under x-digest-check) and waits for HANDOVER or ABORT.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

import structlog

from netio import (
    Channel,
    FileAddress,
    FileChannel,
    NetIOError,
    TcpAddress,
    accept,
    bound_address,
    listen,
)
from protocol import (
    AbortReceived,
    ConfigurationReceived,
    ConnectionClosed,
    DescriptionReceived,
    DestConnection,
    DeviceStateReceived,
    ErrorCode,
    HandoverReceived,
    MigrationConfiguration,
    Outcome,
    PeerTimedOut,
    PingReceived,
    ProtocolError,
    RamPagesReceived,
    RemoteProtocolError,
    ResolveRequested,
    ReturnPathRequested,
    SectionStarted,
    StreamEnded,
    Timeouts,
)
from vmm.errors import CommandRefusedError, MigrationError, StatusTransitionError
from vmm.glue import DIGEST_CHECK, machine_config_from
from vmm.sockets import tune_migration_socket
from vmm.status import MigrationStatus
from vmsim import (
    Machine,
    MachineConfig,
    SectionFull,
    SectionStart,
    VMSimError,
    load_cleanup,
    load_section_full,
    load_section_start,
)

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Coroutine

    from netio import MigrationAddress
    from vmm.params import MigrationParameters
    from vmm.vm import EventSink

log = structlog.get_logger("vmm.incoming")
ACCEPT_RETRY_S: Final = 0.1


class IncomingHost(Protocol):
    """What the incoming side needs from its daemon."""

    def busy_reason(self) -> str | None:
        """Why this daemon cannot take a VM now (one runs here), or None."""

    def adopt(self, machine: Machine) -> str:
        """Install a migrated machine, run it (or keep it paused); return its run state."""


class LoadError(MigrationError):
    """The stream cannot be loaded; the code goes back to the source in FAILED."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


class Phase(enum.Enum):
    """Where one incoming migration stands."""

    PREPARING = "preparing"
    LOADING = "loading"
    LOADED = "loaded"
    HELD = "held"
    COMMITTED = "committed"
    DISCARDED = "discarded"


P = Phase
PHASE_TRANSITIONS: Final[dict[Phase, frozenset[Phase]]] = {
    P.PREPARING: frozenset({P.LOADING, P.DISCARDED}),
    P.LOADING: frozenset({P.LOADED, P.DISCARDED}),
    P.LOADED: frozenset({P.COMMITTED, P.HELD, P.DISCARDED}),
    P.HELD: frozenset({P.COMMITTED, P.DISCARDED}),
    P.COMMITTED: frozenset(),
    P.DISCARDED: frozenset(),
}
STATUS_OF_PHASE: Final = {
    P.PREPARING: MigrationStatus.SETUP,
    P.LOADING: MigrationStatus.ACTIVE,
    P.LOADED: MigrationStatus.ACTIVE,
    P.HELD: MigrationStatus.IN_DOUBT,
    P.COMMITTED: MigrationStatus.COMPLETED,
    P.DISCARDED: MigrationStatus.FAILED,
}
OUTCOME_OF_PHASE: Final = {
    P.LOADED: Outcome.IN_DOUBT,
    P.HELD: Outcome.IN_DOUBT,
    P.COMMITTED: Outcome.COMMITTED,
    P.DISCARDED: Outcome.DISCARDED,
}


@dataclass(kw_only=True, slots=True)
class IncomingRecord:
    """One incoming migration: its identity, phase, machine and fate."""

    migration_id: str
    uuid: str | None
    started_at: float
    phase: Phase = Phase.PREPARING
    machine: Machine | None = None
    reason: str | None = None
    runstate: str | None = None

    def move(self, phase: Phase) -> None:
        """Change phase along the table, or raise (a bug, never ignored)."""
        if phase not in PHASE_TRANSITIONS[self.phase]:
            raise StatusTransitionError(
                f"incoming migration {self.migration_id} cannot go from {self.phase.value} "
                f"to {phase.value}"
            )
        self.phase = phase

    @property
    def status(self) -> MigrationStatus:
        """The QEMU status this phase shows as."""
        return STATUS_OF_PHASE[self.phase]


@dataclass(kw_only=True, slots=True)
class _Counters:
    normal_pages: int = 0
    zero_pages: int = 0
    devices: set[tuple[str, int]] = field(default_factory=set)


class IncomingService:
    """Listens for migrations, one at a time, and remembers what became of each."""

    def __init__(
        self,
        *,
        host: IncomingHost,
        params: Callable[[], MigrationParameters],
        events_enabled: Callable[[], bool],
        emit_event: EventSink,
        clock: Callable[[], float],
        expected_uuid: str | None = None,
    ) -> None:
        self._host = host
        self.params = params
        self._events_enabled = events_enabled
        self._emit_event = emit_event
        self.clock = clock
        self.expected_uuid = expected_uuid
        self.records: dict[str, IncomingRecord] = {}
        self.current: IncomingRecord | None = None
        self.address: MigrationAddress | None = None
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -----------------------------------------------------------------------

    def listen(self, address: MigrationAddress) -> None:
        """Start listening on a tcp/unix address."""
        self._listener = listen(address)  # type: ignore[arg-type]
        self.address = bound_address(self._listener)
        self._spawn(self._accept_loop(self._listener))
        log.info("incoming_listening", uri=str(self.address))

    def load_file(self, address: FileAddress) -> None:
        """Load a migration written to a file (checked first: it must open and nothing is held)."""
        held = self.held
        if held is not None:
            raise CommandRefusedError(
                f"VM {held.uuid} from migration {held.migration_id} is held in doubt here; "
                "resolve it first (livemig resolve)"
            )
        conn = DestConnection(return_path=False, timeouts=None, now=self.clock())
        try:
            channel = FileChannel.for_reading(address, conn)
        except NetIOError as exc:
            raise CommandRefusedError(f"cannot load {address}: {exc}") from exc
        self._spawn(self._load_file(channel, conn, address))

    async def close(self) -> None:
        """Stop accepting, then drop every connection."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._listener is not None:
            self._listener.close()

    # -- what query-migrate and RESOLVE see ----------------------------------------------

    @property
    def status(self) -> MigrationStatus:
        """The newest incoming migration's status."""
        return self.current.status if self.current is not None else MigrationStatus.NONE

    @property
    def held(self) -> IncomingRecord | None:
        """The loaded VM held in doubt, if any."""
        for record in self.records.values():
            if record.phase is Phase.HELD:
                return record
        return None

    def info(self) -> dict[str, object]:
        """The destination's `query-migrate` reply."""
        current = self.current
        info: dict[str, object] = {"status": str(self.status)} if current is not None else {}
        if self.address is not None:
            info["socket-address"] = [_qemu_socket_address(self.address)]
        if current is not None:
            info["x-migration-id"] = current.migration_id
            info["x-vm-uuid"] = current.uuid
            if current.reason is not None and current.phase in (Phase.DISCARDED, Phase.HELD):
                info["error-desc"] = current.reason
        return info

    def outcome_of(self, migration_id: str) -> Outcome | None:
        """What became of a migration (no side effect); None while it is still loading."""
        record = self.records.get(migration_id)
        if record is None:
            return Outcome.UNKNOWN
        return OUTCOME_OF_PHASE.get(record.phase)

    # -- decisions -----------------------------------------------------------------------

    def answer_resolve(self, migration_id: str) -> Outcome:
        """RESOLVE from a source: the outcome, deciding 'discarded' for an unfinished load."""
        record = self.records.get(migration_id)
        if record is not None and record.phase in (Phase.PREPARING, Phase.LOADING):
            # The source gave this stream up (it asks from a new connection): never run it.
            self.discard(migration_id, "the source abandoned the migration before it was loaded")
        return self.outcome_of(migration_id) or Outcome.DISCARDED

    def commit(self, migration_id: str) -> str:
        """HANDOVER: run the migration's VM here; idempotent; returns its run state."""
        record = self._record(migration_id)
        if record.phase is Phase.COMMITTED and record.runstate is not None:
            return record.runstate
        if record.phase not in (Phase.LOADED, Phase.HELD) or record.machine is None:
            why = f": {record.reason}" if record.reason else ""
            raise MigrationError(
                f"migration {migration_id} is {record.phase.value}{why}; it cannot run here"
            )
        machine = record.machine
        self.advance(record, Phase.COMMITTED)  # decided before the VM starts (rule 5)
        record.machine = None
        record.reason = None
        record.runstate = self._host.adopt(machine)
        log.info("handover_committed", migration_id=migration_id, runstate=record.runstate)
        return record.runstate

    def discard(self, migration_id: str, reason: str) -> None:
        """Never run this migration's VM here (a committed one cannot be discarded)."""
        record = self._record(migration_id)
        if record.phase is Phase.COMMITTED:
            log.error("discard_after_commit_refused", migration_id=migration_id, reason=reason)
            return
        if record.phase is Phase.DISCARDED:
            return
        record.machine = None
        record.reason = reason
        self.advance(record, Phase.DISCARDED)
        log.warning("incoming_discarded", migration_id=migration_id, reason=reason)

    def hold(self, migration_id: str, reason: str) -> None:
        """Keep a loaded VM paused in doubt (rule 4 of docs/handover.md)."""
        record = self._record(migration_id)
        record.reason = (
            f"handover in doubt: {reason}; the loaded VM is held paused until the source's "
            "decision is known (livemig resolve)"
        )
        self.advance(record, Phase.HELD)
        log.warning("incoming_in_doubt", migration_id=migration_id, reason=reason)

    def begin(self, config: MigrationConfiguration, *, from_file: bool) -> IncomingRecord:
        """Accept a checked configuration as a new migration, or raise LoadError (BUSY)."""
        refusal = self._refusal(config, from_file=from_file)
        if refusal is not None:
            raise LoadError(refusal, ErrorCode.BUSY)
        held = self.held
        if held is not None:  # same VM, over the network: only its owner can migrate it
            self.discard(held.migration_id, f"superseded by migration {config.migration_id}")
        record = IncomingRecord(
            migration_id=config.migration_id, uuid=config.uuid, started_at=self.clock()
        )
        self.records[record.migration_id] = record
        self.current = record
        self._emit_status(record)
        return record

    def _refusal(self, config: MigrationConfiguration, *, from_file: bool) -> str | None:
        if config.migration_id in self.records:
            return f"migration {config.migration_id} was already received here"
        busy = [r for r in self.records.values() if r.phase in (P.PREPARING, P.LOADING, P.LOADED)]
        if busy:
            return (
                f"the destination is already receiving migration {busy[0].migration_id}; "
                "a second concurrent stream is refused"
            )
        reason = self._host.busy_reason()
        if reason is not None:
            return reason
        held = self.held
        if held is not None and (from_file or held.uuid is None or held.uuid != config.uuid):
            return (
                f"VM {held.uuid} from migration {held.migration_id} is held in doubt here; "
                "resolve it first (livemig resolve)"
            )
        return None

    def advance(self, record: IncomingRecord, phase: Phase) -> None:
        """Move a record to its next phase (and emit MIGRATION when it is the current one)."""
        record.move(phase)
        self._emit_status(record)

    def _emit_status(self, record: IncomingRecord) -> None:
        if record is self.current and self._events_enabled():
            self._emit_event("MIGRATION", {"status": str(record.status)})

    def _record(self, migration_id: str) -> IncomingRecord:
        record = self.records.get(migration_id)
        if record is None:
            raise MigrationError(f"no incoming migration {migration_id} here")
        return record

    # -- connections ---------------------------------------------------------------------

    async def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                sock = await accept(listener)
            except OSError as exc:  # e.g. EMFILE: keep listening, RESOLVE must stay answerable
                log.warning("incoming_accept_failed", error=str(exc))
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            self._spawn(self._serve(sock))

    async def _serve(self, sock: socket.socket) -> None:
        params = self.params()
        if isinstance(self.address, TcpAddress):
            tune_migration_socket(sock, params)
        conn = DestConnection(
            return_path=True,
            timeouts=Timeouts(
                ping_interval_s=params.ping_interval_ms / 1000,
                peer_timeout_s=params.peer_timeout_ms / 1000,
            ),
            now=self.clock(),
        )
        channel = Channel(sock, conn, clock=self.clock)
        try:
            first = await _first_request(channel)
            if isinstance(first, ResolveRequested):
                await _ResolveSession(self, channel, conn).run(first.migration_id)
            elif first is not None:
                await IncomingMigration(self, channel=channel, conn=conn).run(first.config)
        except (ProtocolError, NetIOError, OSError) as exc:
            log.info("incoming_connection_error", error=str(exc))
        except Exception:
            log.exception("incoming_connection_crashed")
        finally:
            channel.close()

    async def _load_file(
        self, channel: FileChannel, conn: DestConnection, address: FileAddress
    ) -> None:
        try:
            first = await _first_request(channel)
            if isinstance(first, ConfigurationReceived):
                migration = IncomingMigration(self, channel=channel, conn=conn)
                await migration.run(first.config)
            else:
                log.warning("incoming_file_rejected", path=str(address))
        except (ProtocolError, NetIOError, OSError) as exc:
            log.warning("incoming_file_failed", path=str(address), error=str(exc))
        finally:
            channel.close()

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _ResolveSession:
    """A resolve connection: answer RESOLVE, then apply HANDOVER or ABORT if one follows."""

    def __init__(self, service: IncomingService, channel: Channel, conn: DestConnection) -> None:
        self._service = service
        self._channel = channel
        self._conn = conn

    async def run(self, migration_id: str) -> None:
        service = self._service
        outcome = service.answer_resolve(migration_id)
        log.info("resolve_requested", migration_id=migration_id, outcome=str(outcome))
        self._conn.send_outcome(migration_id, outcome)
        await self._channel.flush()
        while True:
            event = await self._channel.next_event()
            if isinstance(event, HandoverReceived):
                try:
                    self._conn.send_resumed(service.commit(migration_id))
                except MigrationError as exc:
                    self._conn.send_failed(ErrorCode.PROTOCOL_ERROR, exc.message[:400])
                await self._channel.flush()
                return
            if isinstance(event, AbortReceived):
                service.discard(migration_id, f"source aborted: {event.reason}")
                return
            if isinstance(event, ConnectionClosed | PeerTimedOut):
                return


class IncomingMigration:
    """One incoming stream, from its configuration to handover, abort or failure."""

    def __init__(
        self,
        service: IncomingService,
        *,
        channel: Channel | FileChannel,
        conn: DestConnection,
    ) -> None:
        self._service = service
        self._channel = channel
        self._conn = conn
        self._record: IncomingRecord | None = None
        self._config: MigrationConfiguration | None = None
        self._counters = _Counters()
        self._pending_event: asyncio.Task[object] | None = None
        self._return_path_requested = False

    @property
    def _is_file(self) -> bool:
        return isinstance(self._channel, FileChannel)

    async def run(self, config: MigrationConfiguration) -> None:
        """Check, prepare, receive and load; then hand over, hold or discard."""
        structlog.contextvars.bind_contextvars(migration_id=config.migration_id, role="destination")
        self._config = config
        try:
            machine_config = self._check(config)
            self._record = self._service.begin(config, from_file=self._is_file)
            await self._prepare(machine_config)
            self._service.advance(self._record, Phase.LOADING)
            await self._load_until_decided()
        except LoadError as exc:
            await self._refuse(exc.code, exc.message)
        except RemoteProtocolError as exc:
            await self._refuse(exc.code, f"bad migration stream: {exc}")
        except (NetIOError, OSError) as exc:
            self._lost(f"connection lost: {exc}")
        finally:
            if self._pending_event is not None:
                self._pending_event.cancel()

    def _check(self, config: MigrationConfiguration) -> MachineConfig:
        try:
            return machine_config_from(config, expected_uuid=self._service.expected_uuid)
        except MigrationError as exc:
            raise LoadError(exc.message, ErrorCode.CONFIG_MISMATCH) from exc

    async def _prepare(self, machine_config: MachineConfig) -> None:
        """Allocate and pre-fault guest RAM in a thread; keep answering PINGs meanwhile."""
        log.info("incoming_setup", ram_bytes=machine_config.ram_bytes)
        building = asyncio.create_task(asyncio.to_thread(Machine.for_incoming, machine_config))
        # A file has no peer waiting for PONGs and no handshake: its sections follow at once.
        while not building.done() and not self._is_file:
            if self._pending_event is None:
                self._pending_event = asyncio.create_task(self._channel.next_event())
            await asyncio.wait({building, self._pending_event}, return_when=asyncio.FIRST_COMPLETED)
            if self._pending_event.done():
                event = self._pending_event.result()
                self._pending_event = None
                await self._early_event(event)
        machine = await building
        record = self._require_record()
        record.machine = machine
        self._conn.attach_sink(machine.ram_handler.loader)
        if self._return_path_requested:
            self._conn.send_open_ack()
            await self._channel.flush()

    async def _early_event(self, event: object) -> None:
        """Events before RAM is ready: PINGs, the return-path request, or the end."""
        if isinstance(event, ReturnPathRequested):
            self._return_path_requested = True
        elif isinstance(event, PingReceived):
            await self._channel.flush()  # the PONG the protocol queued
        elif isinstance(event, ConnectionClosed | PeerTimedOut):
            raise LoadError(_describe_loss(event), ErrorCode.PROTOCOL_ERROR)
        else:
            raise LoadError(
                f"{type(event).__name__} arrived before the destination acknowledged",
                ErrorCode.UNEXPECTED_SECTION,
            )

    async def _load_until_decided(self) -> None:
        record = self._require_record()
        while record.phase in (Phase.LOADING, Phase.LOADED):
            if self._pending_event is not None:
                event = await self._pending_event
                self._pending_event = None
            else:
                event = await self._channel.next_event()
            if record.phase not in (Phase.LOADING, Phase.LOADED):
                break  # decided elsewhere (a RESOLVE connection, an operator)
            self._on_event(event)
            if not self._is_file:
                await self._channel.flush()

    def _on_event(self, event: object) -> None:  # noqa: C901 - a dispatch over event types
        match event:
            case ReturnPathRequested():
                self._conn.send_open_ack()
            case SectionStarted():
                self._load(lambda m: load_section_start(m.savevm, _start_record(event)))
            case RamPagesReceived():
                if event.data is not None:
                    raise LoadError("page data arrived without guest RAM", ErrorCode.INTERNAL)
                self._counters.normal_pages += event.normal_pages
                self._counters.zero_pages += event.zero_pages
            case DeviceStateReceived():
                self._load(lambda m: load_section_full(m.savevm, _full_record(event)))
                self._counters.devices.add((event.idstr, event.instance_id))
            case StreamEnded():
                self._check_complete()
            case DescriptionReceived():
                self._loaded()
            case HandoverReceived():
                self._conn.send_resumed(self._service.commit(self._require_record().migration_id))
            case AbortReceived(reason=reason):
                self._service.discard(
                    self._require_record().migration_id, f"source aborted: {reason}"
                )
            case ConnectionClosed() | PeerTimedOut():
                self._lost(_describe_loss(event))
            case _:
                pass

    def _load(self, action: Callable[[Machine], None]) -> None:
        machine = self._require_record().machine
        if machine is None:
            raise LoadError("no guest to load into", ErrorCode.INTERNAL)
        try:
            action(machine)
        except VMSimError as exc:
            raise LoadError(str(exc), ErrorCode.LOAD_FAILED) from exc

    def _check_complete(self) -> None:
        config = self._config
        assert config is not None  # noqa: S101 - set by run()
        expected = {(d.idstr, d.instance_id) for d in config.devices if d.idstr != "ram"}
        missing = sorted(expected - self._counters.devices)
        if missing:
            names = ", ".join(f"'{idstr}' instance {instance}" for idstr, instance in missing)
            raise LoadError(f"missing device state for {names}", ErrorCode.LOAD_FAILED)

    def _loaded(self) -> None:
        record = self._require_record()
        machine = record.machine
        config = self._config
        if machine is None or config is None:
            raise LoadError("internal error: loaded before prepared", ErrorCode.INTERNAL)
        load_cleanup(machine.savevm)
        digest = machine.digest() if DIGEST_CHECK in config.capabilities else None
        self._service.advance(record, Phase.LOADED)
        counters = self._counters
        log.info(
            "incoming_loaded",
            normal_pages=counters.normal_pages,
            zero_pages=counters.zero_pages,
            devices=len(counters.devices),
        )
        if self._is_file:
            # A file has no handover: it is a snapshot, nothing else can run this copy.
            self._service.commit(record.migration_id)
            return
        self._conn.send_loaded(
            digest=digest,
            normal_pages=counters.normal_pages,
            zero_pages=counters.zero_pages,
            devices=len(counters.devices),
        )

    def _lost(self, reason: str) -> None:
        """The source is gone: hold the VM in doubt if it was loaded, else discard it."""
        record = self._record
        if record is None:
            return
        if record.phase is Phase.LOADED:
            self._service.hold(record.migration_id, reason)
        elif record.phase in (Phase.PREPARING, Phase.LOADING):
            self._service.discard(record.migration_id, f"incomplete migration: {reason}")

    async def _refuse(self, code: ErrorCode, reason: str) -> None:
        if self._record is not None:
            self._service.discard(self._record.migration_id, reason)
        else:
            log.warning("incoming_refused", reason=reason)
        if self._is_file:
            return
        with contextlib.suppress(ProtocolError, NetIOError, OSError, TimeoutError):
            self._conn.send_failed(code, reason[:400])
            async with asyncio.timeout(1.0):
                await self._channel.flush()

    def _require_record(self) -> IncomingRecord:
        if self._record is None:
            raise MigrationError("internal error: no incoming record")
        return self._record


async def _first_request(
    channel: Channel | FileChannel,
) -> ConfigurationReceived | ResolveRequested | None:
    while True:
        event = await channel.next_event()
        if isinstance(event, ConfigurationReceived | ResolveRequested):
            return event
        if isinstance(event, ConnectionClosed | PeerTimedOut):
            return None


def _qemu_socket_address(address: MigrationAddress) -> dict[str, object]:
    """QEMU's SocketAddress: {type: inet, host, port (a string)} or {type: unix, path}."""
    if isinstance(address, TcpAddress):
        return {"type": "inet", "host": address.host, "port": str(address.port)}
    return {"type": "unix", "path": str(getattr(address, "path", ""))}


def _start_record(event: SectionStarted) -> SectionStart:
    return SectionStart(
        section_id=event.section_id,
        idstr=event.idstr,
        instance_id=event.instance_id,
        version_id=event.version_id,
        setup=dict(event.setup),
    )


def _full_record(event: DeviceStateReceived) -> SectionFull:
    return SectionFull(
        section_id=event.section_id,
        idstr=event.idstr,
        instance_id=event.instance_id,
        version_id=event.version_id,
        state=dict(event.state),
    )


def _describe_loss(event: ConnectionClosed | PeerTimedOut) -> str:
    if isinstance(event, PeerTimedOut):
        return f"the source went silent for {event.idle_s:.1f} s"
    return "the source closed the connection" if event.clean else "the connection was cut"
