"""The destination side: accept migration streams, load them, and take over the VM safely.

`IncomingService` owns the listening socket for the daemon's whole life (it also answers RESOLVE
for migrations it has seen) and at most one `IncomingMigration` at a time. A migration:

1. checks the configuration (machine type, page size, UUID under validate-uuid) and refuses a
   second stream while one is loaded, running or held in doubt (BUSY);
2. builds the machine for incoming (RAM allocated and pre-faulted) and attaches its RAM to the
   protocol, which receives page data straight into it; then acknowledges (OPEN_ACK);
3. loads START/FULL sections through the savevm framework (versions, subsections, post_load);
4. at the end of the stream checks that every device arrived, sends LOADED (with the digest under
   x-digest-check) and waits: HANDOVER runs the VM here (RESUMED), ABORT discards it, and a lost
   connection either discards it (load incomplete) or holds it in doubt (docs/handover.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

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
    ProtocolError,
    RamPagesReceived,
    RemoteProtocolError,
    ResolveRequested,
    ReturnPathRequested,
    SectionStarted,
    StreamEnded,
    Timeouts,
)
from vmm.errors import MigrationError
from vmm.glue import DIGEST_CHECK, machine_config_from
from vmm.stats import incoming_info
from vmm.status import MigrationStatus, Side, StatusMachine
from vmsim import (
    Machine,
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


class IncomingHost(Protocol):
    """What the incoming side needs from its daemon."""

    def busy_reason(self) -> str | None:
        """Why this daemon cannot take a VM now (one runs here), or None."""

    def adopt(self, machine: Machine) -> str:
        """Install a migrated machine, run it (or keep it paused); return its run state."""


class LoadError(MigrationError):
    """The stream cannot be loaded; the code goes back in FAILED."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


@dataclass(kw_only=True, slots=True)
class HeldVm:
    """A loaded VM whose handover is in doubt: kept paused, never run, until resolved."""

    migration_id: str
    uuid: str | None
    machine: Machine


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
        self._params = params
        self._events_enabled = events_enabled
        self._emit_event = emit_event
        self.clock = clock
        self.expected_uuid = expected_uuid
        self.status = StatusMachine(Side.INCOMING)
        self.error_desc: str | None = None
        self.held: HeldVm | None = None
        self.outcomes: dict[str, Outcome] = {}
        self._committed_runstate: dict[str, str] = {}
        self.current: IncomingMigration | None = None
        self.address: MigrationAddress | None = None
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, address: MigrationAddress) -> None:
        """Listen on a tcp/unix address, or load a file, in the background."""
        self.address = address
        if isinstance(address, FileAddress):
            self._spawn(self._load_file(address))
            return
        self._listener = listen(address)
        self.address = bound_address(self._listener)
        self._spawn(self._accept_loop(self._listener))
        log.info("incoming_listening", uri=str(address))

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._listener is not None:
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def info(self) -> dict[str, object]:
        """The destination's `query-migrate` reply."""
        info = incoming_info(self.status.status, self.error_desc)
        if self.address is not None and not isinstance(self.address, FileAddress):
            info["socket-address"] = [_qemu_socket_address(self.address)]
        if info and self.current is not None:
            info["x-migration-id"] = self.current.migration_id
        return info

    # -- accepting -----------------------------------------------------------------------

    async def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            sock = await accept(listener)
            self._spawn(self._serve(sock))

    async def _serve(self, sock: socket.socket) -> None:
        params = self._params()
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
            first = await self._first_request(channel)
            if isinstance(first, ResolveRequested):
                await self._answer_resolve(channel, conn, first.migration_id)
            elif first is not None:
                await self._receive(channel, conn, first.config)
        except (ProtocolError, NetIOError, OSError) as exc:
            log.info("incoming_connection_error", error=str(exc))
        finally:
            channel.close()

    async def _first_request(
        self, channel: Channel
    ) -> ConfigurationReceived | ResolveRequested | None:
        while True:
            event = await channel.next_event()
            if isinstance(event, ConfigurationReceived | ResolveRequested):
                return event
            if isinstance(event, ConnectionClosed | PeerTimedOut):
                return None

    async def _receive(
        self, channel: Channel | FileChannel, conn: DestConnection, config: MigrationConfiguration
    ) -> None:
        refusal = self._refusal(config)
        if refusal is not None:
            log.warning("incoming_refused", migration_id=config.migration_id, reason=refusal)
            await _send_failed(channel, conn, ErrorCode.BUSY, refusal)
            return
        migration = IncomingMigration(self, channel=channel, conn=conn, config=config)
        self.current = migration
        await migration.run()

    def _refusal(self, config: MigrationConfiguration) -> str | None:
        if self.current is not None and not self.current.finished:
            return (
                "the destination is already receiving migration "
                f"{self.current.migration_id}; a second concurrent stream is refused"
            )
        reason = self._host.busy_reason()
        if reason is not None:
            return reason
        held = self.held
        if held is not None:
            if held.uuid is not None and held.uuid == config.uuid:
                # Only the VM's owner can start migrating it: the source resumed its copy.
                self.discard_held(f"superseded by migration {config.migration_id} of the same VM")
                return None
            return (
                f"holding VM {held.uuid} in doubt from migration {held.migration_id}; "
                "resolve it first (livemig resolve)"
            )
        return None

    async def _load_file(self, address: FileAddress) -> None:
        conn = DestConnection(return_path=False, timeouts=None, now=self.clock())
        channel = FileChannel.for_reading(address, conn)
        try:
            first = await self._first_request(channel)  # type: ignore[arg-type]
            if isinstance(first, ConfigurationReceived):
                await self._receive(channel, conn, first.config)
            else:
                self.fail(f"{address} does not start with a migration configuration")
        except (ProtocolError, NetIOError, OSError) as exc:
            self.fail(f"loading {address} failed: {exc}")
        finally:
            channel.close()

    # -- resolution ----------------------------------------------------------------------

    def outcome_of(self, migration_id: str) -> Outcome:
        """What became of a migration id (answer to RESOLVE)."""
        if self.held is not None and self.held.migration_id == migration_id:
            return Outcome.IN_DOUBT
        current = self.current
        if current is not None and current.migration_id == migration_id and not current.finished:
            if current.loaded:
                return Outcome.IN_DOUBT
            # The source asks about a stream it abandoned: never run it.
            current.abandon("the source abandoned the migration (RESOLVE before LOADED)")
            return Outcome.DISCARDED
        return self.outcomes.get(migration_id, Outcome.UNKNOWN)

    async def _answer_resolve(
        self, channel: Channel, conn: DestConnection, migration_id: str
    ) -> None:
        outcome = self.outcome_of(migration_id)
        log.info("resolve_requested", migration_id=migration_id, outcome=str(outcome))
        conn.send_outcome(migration_id, outcome)
        await channel.flush()
        while True:
            event = await channel.next_event()
            if isinstance(event, HandoverReceived):
                runstate = self.commit(migration_id)
                conn.send_resumed(runstate)
                await channel.flush()
                return
            if isinstance(event, AbortReceived):
                self.discard(migration_id, f"source aborted: {event.reason}")
                return
            if isinstance(event, ConnectionClosed | PeerTimedOut):
                return

    def commit(self, migration_id: str) -> str:
        """HANDOVER for a migration: run its VM here (idempotent); return the run state."""
        if self.outcomes.get(migration_id) is Outcome.COMMITTED:
            return self._committed_runstate[migration_id]
        machine = self._take_loaded_machine(migration_id)
        self.outcomes[migration_id] = Outcome.COMMITTED
        runstate = self._host.adopt(machine)
        self._committed_runstate[migration_id] = runstate
        self.error_desc = None
        self.move(MigrationStatus.COMPLETED)
        log.info("handover_committed", migration_id=migration_id, runstate=runstate)
        return runstate

    def _take_loaded_machine(self, migration_id: str) -> Machine:
        held = self.held
        if held is not None and held.migration_id == migration_id:
            self.held = None
            return held.machine
        current = self.current
        if current is not None and current.migration_id == migration_id and current.loaded:
            current.finished = True
            return current.require_machine()
        raise MigrationError(f"no loaded VM for migration {migration_id}")

    def discard(self, migration_id: str, reason: str) -> None:
        """Never run this migration's VM: drop it, remember DISCARDED."""
        if self.outcomes.get(migration_id) is Outcome.COMMITTED:
            log.error("discard_after_commit_ignored", migration_id=migration_id)
            return
        self.outcomes[migration_id] = Outcome.DISCARDED
        if self.held is not None and self.held.migration_id == migration_id:
            self.held = None
        current = self.current
        if current is not None and current.migration_id == migration_id:
            current.abandon(reason)
        self.fail(reason)

    def discard_held(self, reason: str) -> None:
        """Discard the in-doubt VM (superseded, ABORT, or the operator)."""
        if self.held is not None:
            self.discard(self.held.migration_id, reason)

    def hold(self, migration_id: str, uuid: str | None, machine: Machine, reason: str) -> None:
        """Keep a loaded VM paused in doubt (rule 4 of docs/handover.md)."""
        self.held = HeldVm(migration_id=migration_id, uuid=uuid, machine=machine)
        self.outcomes[migration_id] = Outcome.IN_DOUBT
        self.error_desc = (
            f"handover in doubt: {reason}; the loaded VM is held paused until the source's "
            "decision is known (livemig resolve)"
        )
        self.move(MigrationStatus.IN_DOUBT)
        log.warning("incoming_in_doubt", migration_id=migration_id, reason=reason)

    def fail(self, reason: str) -> None:
        """The current incoming migration failed (its VM, if any, is discarded)."""
        self.error_desc = reason
        if self.status.can_move(MigrationStatus.FAILED):
            self.move(MigrationStatus.FAILED)
        log.warning("incoming_failed", reason=reason)

    def move(self, status: MigrationStatus) -> None:
        """Change the incoming status (and emit MIGRATION when events are on)."""
        self.status.move(status)
        if self._events_enabled():
            self._emit_event("MIGRATION", {"status": str(status)})

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class IncomingMigration:
    """One incoming stream, from its configuration to handover, abort or failure."""

    def __init__(
        self,
        service: IncomingService,
        *,
        channel: Channel | FileChannel,
        conn: DestConnection,
        config: MigrationConfiguration,
    ) -> None:
        self._service = service
        self._channel = channel
        self._conn = conn
        self.config = config
        self.migration_id = config.migration_id
        self.machine: Machine | None = None
        self.loaded = False
        self.finished = False
        self._counters = _Counters()
        self._abandoned: str | None = None

    def require_machine(self) -> Machine:
        """The machine being loaded."""
        if self.machine is None:
            raise MigrationError("internal error: no machine yet")
        return self.machine

    def abandon(self, reason: str) -> None:
        """Stop this migration and never run its VM."""
        self._abandoned = reason
        self.finished = True
        self.machine = None

    async def run(self) -> None:
        """Receive, load, and hand over or fail."""
        structlog.contextvars.bind_contextvars(migration_id=self.migration_id, role="destination")
        service = self._service
        if service.status.can_move(MigrationStatus.SETUP) is False:
            service.move(MigrationStatus.FAILED)
        service.error_desc = None
        service.move(MigrationStatus.SETUP)
        try:
            self._prepare()
            service.move(MigrationStatus.ACTIVE)
            await self._load_until_decided()
        except LoadError as exc:
            await self._refuse(exc.code, exc.message)
        except RemoteProtocolError as exc:
            await self._refuse(exc.code, f"bad migration stream: {exc}")
        except (NetIOError, OSError) as exc:
            self._lost(f"connection lost: {exc}")
        finally:
            self.finished = True

    def _prepare(self) -> None:
        try:
            machine_config = machine_config_from(
                self.config, expected_uuid=self._service.expected_uuid
            )
        except MigrationError as exc:
            raise LoadError(exc.message, ErrorCode.CONFIG_MISMATCH) from exc
        log.info("incoming_setup", ram_bytes=machine_config.ram_bytes)
        self.machine = Machine.for_incoming(machine_config)  # allocates and pre-faults RAM
        self._conn.attach_ram(self.machine.ram.view)

    async def _load_until_decided(self) -> None:
        while not self.finished:
            event = await self._channel.next_event()
            if self._abandoned is not None:
                raise LoadError(self._abandoned, ErrorCode.CANCELLED)
            await self._on_event(event)
            await self._channel.flush()

    async def _on_event(self, event: object) -> None:
        match event:
            case ReturnPathRequested():
                self._conn.send_open_ack()
            case SectionStarted():
                self._load(lambda m: load_section_start(m.savevm, _start_record(event)))
            case RamPagesReceived():
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
                self._conn.send_resumed(self._service.commit(self.migration_id))
                self.finished = True
            case AbortReceived(reason=reason):
                self._service.discard(self.migration_id, f"source aborted: {reason}")
            case ConnectionClosed() | PeerTimedOut():
                self._lost(_describe_loss(event))
            case _:
                pass

    def _load(self, action: Callable[[Machine], None]) -> None:
        try:
            action(self.require_machine())
        except VMSimError as exc:
            raise LoadError(str(exc), ErrorCode.LOAD_FAILED) from exc

    def _check_complete(self) -> None:
        expected = {(d.idstr, d.instance_id) for d in self.config.devices if d.idstr != "ram"}
        missing = sorted(expected - self._counters.devices)
        if missing:
            names = ", ".join(f"'{idstr}' instance {instance}" for idstr, instance in missing)
            raise LoadError(f"missing device state for {names}", ErrorCode.LOAD_FAILED)

    def _loaded(self) -> None:
        machine = self.require_machine()
        load_cleanup(machine.savevm)
        digest = machine.digest() if DIGEST_CHECK in self.config.capabilities else None
        self.loaded = True
        counters = self._counters
        log.info(
            "incoming_loaded",
            normal_pages=counters.normal_pages,
            zero_pages=counters.zero_pages,
            devices=len(counters.devices),
        )
        if isinstance(self._channel, FileChannel):
            # A file has no handover: it is a snapshot, so nothing else can run this VM.
            self._service.commit(self.migration_id)
            self.finished = True
            return
        self._conn.send_loaded(
            digest=digest,
            normal_pages=counters.normal_pages,
            zero_pages=counters.zero_pages,
            devices=len(counters.devices),
        )

    def _lost(self, reason: str) -> None:
        """The source is gone: hold the VM in doubt if it was loaded, else discard it."""
        if self.finished:
            return
        self.finished = True
        if self.loaded and self.machine is not None:
            self._service.hold(self.migration_id, self.config.uuid, self.machine, reason)
        else:
            self._service.discard(self.migration_id, f"incomplete migration: {reason}")

    async def _refuse(self, code: ErrorCode, reason: str) -> None:
        self.machine = None
        self._service.discard(self.migration_id, reason)
        await _send_failed(self._channel, self._conn, code, reason)


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


async def _send_failed(
    channel: Channel | FileChannel, conn: DestConnection, code: ErrorCode, reason: str
) -> None:
    if isinstance(channel, FileChannel):
        return
    with contextlib.suppress(ProtocolError, NetIOError, OSError):
        conn.send_failed(code, reason[:400])
        async with asyncio.timeout(1.0):
            await channel.flush()
