"""The destination side of a daemon: listen, route each connection, load files.

`IncomingRouter` owns the listening socket for the daemon's whole life. Each accepted connection
opens with a CHANNEL handshake naming its migration and role (protocol version 3; an older
source's first frame says the same: CONFIGURATION or RESOLVE), and the router hands it to the
machine of that role: a `DestMigration` for a `main` channel, a `ResolveResponder` for a
`resolve` one, each with its own runner. What became of every migration is in the ledger
(`migration.IncomingLedger`), which outlives the connections.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Final

import structlog

from migration import (
    ChannelJoined,
    ChannelKey,
    DestMigration,
    EngineError,
    IncomingLedger,
    ResolveResponder,
    TakenOver,
    dest_info,
)
from migration.outbox import Outbox
from netio import ChannelListener, NetIOError, TcpAddress, open_accepted, read_file
from protocol import (
    ChannelAnnounced,
    ChannelRole,
    ConfigurationReceived,
    ConnectionClosed,
    DestConnection,
    ErrorCode,
    PeerTimedOut,
    ProtocolError,
    ResolveRequested,
)
from vmm import workers
from vmm.outgoing import channel_options
from vmm.runner import MachineRunner

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Coroutine

    from migration import MigrationParameters
    from netio import ChannelLike, FileAddress, MigrationAddress, SocketAddress, TlsServer
    from vmm.runner import RunnerHost

log = structlog.get_logger("vmm.incoming")
ACCEPT_RETRY_S: Final = 0.1
_JOINING_ROLES: Final = frozenset({ChannelRole.MULTIFD, ChannelRole.PREEMPT})

First = ChannelAnnounced | ConfigurationReceived | ResolveRequested


class IncomingRouter:
    """Listens for migration channels and runs the machine each one belongs to."""

    def __init__(
        self,
        *,
        ledger: IncomingLedger,
        host: RunnerHost,
        busy_reason: Callable[[], str | None],
        params: Callable[[], MigrationParameters],
        clock: Callable[[], float],
        tls: Callable[[], TlsServer | None] = lambda: None,
    ) -> None:
        self.ledger = ledger
        self._tls = tls
        self._host = host
        self._busy_reason = busy_reason
        self._params = params
        self._clock = clock
        self.address: MigrationAddress | None = None
        self._listener: ChannelListener | None = None
        self._runners: set[MachineRunner] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unrouted: dict[ChannelLike, asyncio.Task[None]] = {}
        self._accepted: set[socket.socket] = set()  # accepted, not yet a channel

    # ------------------------------------------------------------------ lifecycle

    def listen(self, address: SocketAddress) -> None:
        """Start listening on a tcp/unix address."""
        self._listener = ChannelListener(address)
        self.address = self._listener.address
        self._spawn(self._accept_loop(self._listener))
        log.info("incoming_listening", uri=str(self.address))

    def load_file(self, address: FileAddress) -> None:
        """Load a migration written to a file (checked first: it must open, nothing held).

        Raises:
            NetIOError: the file cannot be opened.
        """
        conn = DestConnection(return_path=False, timeouts=None, now=self._clock())
        channel = read_file(address, conn, clock=self._clock)
        self._unrouted[channel] = self._spawn(self._route(channel, conn, from_file=True))

    async def close(self) -> None:
        """Stop accepting, then shut every machine down (they decide nothing)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in list(self._unrouted):  # accepted, then cancelled before it was routed
            channel.close()
        self._unrouted.clear()
        for sock in self._accepted:  # accepted, its task cancelled before it ever ran
            sock.close()
        self._accepted.clear()
        for runner in list(self._runners):
            await runner.close()
        if self._listener is not None:
            self._listener.close()

    def info(self) -> dict[str, object]:
        """The destination's `query-migrate` reply."""
        info = dest_info(self.ledger.current)
        if self.address is not None:
            info["socket-address"] = [qemu_socket_address(self.address)]
        return info

    # ------------------------------------------------------------------ routing

    async def _accept_loop(self, listener: ChannelListener) -> None:
        while True:
            try:
                sock = await listener.accept_socket()
            except OSError as exc:  # e.g. EMFILE: keep listening, RESOLVE must stay answerable
                log.warning("incoming_accept_failed", error=str(exc))
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            self._accepted.add(sock)
            self._spawn(self._open_and_route(sock))

    async def _open_and_route(self, sock: socket.socket) -> None:
        """Secure an accepted connection (in its own task: a stalled handshake holds only it)."""
        self._accepted.discard(sock)  # from here on, this task closes it on every path
        try:
            tls = self._tls()
        except EngineError as exc:  # tls-creds names no server credentials here
            sock.close()
            log.warning("incoming_tls_refused", error=exc.message)
            return
        try:
            channel, conn = await open_accepted(
                sock,
                functools.partial(self._dest_conn, authenticated=tls is not None),
                channel_options(self._params()),
                tls=tls,
                refuse=_refuse,
            )
        except (NetIOError, OSError) as exc:  # closed by open_accepted
            log.warning("incoming_connection_refused", error=str(exc), tls=tls is not None)
            return
        self._unrouted[channel] = asyncio.current_task()  # type: ignore[assignment]
        await self._route(channel, conn, from_file=False)

    def _dest_conn(self, *, authenticated: bool = False) -> DestConnection:
        """The protocol connection of an accepted channel, with the parameters of now.

        `authenticated`: the channel is TLS, so its frames may come without checksums.
        """
        conn = DestConnection(
            timeouts=self._params().timeouts, now=self._clock(), authenticated=authenticated
        )
        conn.defer_decode = workers.decode_on_workers  # compressed frames: decoded on workers
        return conn

    async def _route(self, channel: ChannelLike, conn: DestConnection, *, from_file: bool) -> None:
        try:
            await self._route_first(channel, conn, from_file=from_file)
        finally:
            self._unrouted.pop(channel, None)

    async def _route_first(
        self, channel: ChannelLike, conn: DestConnection, *, from_file: bool
    ) -> None:
        try:
            first = await _first_request(channel)
        except (ProtocolError, NetIOError, OSError) as exc:
            log.info("incoming_connection_error", error=str(exc))
            channel.close()
            return
        except asyncio.CancelledError:
            channel.close()  # the daemon shuts down before the channel said what it is for
            raise
        if first is None:
            channel.close()
            return
        if isinstance(first, ResolveRequested) or (
            isinstance(first, ChannelAnnounced) and first.role is ChannelRole.RESOLVE
        ):
            self._run_responder(channel, conn, first)
        elif isinstance(first, ChannelAnnounced) and first.role in _JOINING_ROLES:
            self._join_migration(channel, conn, first)
        elif isinstance(first, ChannelAnnounced) and first.role is ChannelRole.RECOVER:
            self._stand_down(first.migration_id)
            self._run_migration(channel, conn, first, from_file=False, recover=True)
        elif from_file and not isinstance(first, ConfigurationReceived):
            log.warning("incoming_file_rejected", first=type(first).__name__)
            channel.close()
        else:
            self._run_migration(channel, conn, first, from_file=from_file)

    def _run_migration(
        self,
        channel: ChannelLike,
        conn: DestConnection,
        first: First,
        *,
        from_file: bool,
        recover: bool = False,
    ) -> None:
        key = ChannelKey(ChannelRole.MAIN)
        machine = DestMigration(
            ledger=self.ledger,
            conn=conn,
            channel=key,
            from_file=from_file,
            busy_reason=self._busy_reason,
            now=self._clock(),
            recover_id=first.migration_id
            if recover and isinstance(first, ChannelAnnounced)
            else None,
            precopy_resume_s=self._params().precopy_resume_s,
        )

        def context() -> dict[str, object]:
            record = machine.record
            migration_id = record.migration_id if record is not None else None
            return {"role": "destination", "migration_id": migration_id}

        runner = self._runner(machine, context)
        runner.adopt_channel(key, channel)
        config = first if isinstance(first, ConfigurationReceived) else None
        runner.start(machine.start(self._clock(), config))

    def _stand_down(self, migration_id: str) -> None:
        """A recover channel takes `migration_id` over: its old connection stops now.

        Synchronously, before the new one loads anything: bytes the old connection still
        delivers (retransmitted once a partition heals) must never land in guest RAM after
        the newer copies the recover channel brings.
        """
        if not self.ledger.recoverable(migration_id):
            return  # the recover channel will be refused: the old connection stays
        for runner in list(self._runners):
            machine = runner.machine
            record = machine.record if isinstance(machine, DestMigration) else None
            if record is not None and record.migration_id == migration_id:
                runner.feed(TakenOver())  # it closes its channel now, the record paused

    def _join_migration(
        self, channel: ChannelLike, conn: DestConnection, first: ChannelAnnounced
    ) -> None:
        """Hand a multifd or preempt channel to the migration it names (its RAM is ready)."""
        for runner in self._runners:
            machine = runner.machine
            record = machine.record if isinstance(machine, DestMigration) else None
            if record is not None and record.migration_id == first.migration_id:
                key = ChannelKey(first.role, first.index)
                runner.adopt_channel(key, channel)
                runner.feed(ChannelJoined(channel=key, conn=conn))
                return
        log.warning(
            "incoming_channel_unrouted",
            role=str(first.role),
            index=first.index,
            migration_id=first.migration_id,
        )
        channel.close()

    def _run_responder(self, channel: ChannelLike, conn: DestConnection, first: First) -> None:
        key = ChannelKey(ChannelRole.RESOLVE)
        machine = ResolveResponder(ledger=self.ledger, conn=conn, channel=key, now=self._clock())
        runner = self._runner(machine, lambda: {"role": "destination", "channel": "resolve"})
        runner.adopt_channel(key, channel)
        request = first if isinstance(first, ResolveRequested) else None
        runner.start(machine.start(self._clock(), request))

    def _runner(
        self, machine: DestMigration | ResolveResponder, context: Callable[[], dict[str, object]]
    ) -> MachineRunner:
        runner = MachineRunner(
            machine,
            host=self._host,
            address=None,
            options=lambda: channel_options(self._params()),
            clock=self._clock,
            context=context,
        )
        self._runners.add(runner)
        self._spawn(self._forget_when_done(runner))
        return runner

    async def _forget_when_done(self, runner: MachineRunner) -> None:
        await runner.done.wait()
        self._runners.discard(runner)

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ operator

    def operator_outbox(self) -> Outbox:
        """An outbox for a ledger change made by a QMP command (its actions run at once)."""
        return Outbox(self._clock())


def _refuse(conn: DestConnection, reason: str) -> None:
    """The last word to a source that `tls-authz` refuses: FAILED, UNAUTHORIZED."""
    conn.send_failed(ErrorCode.UNAUTHORIZED, reason)


async def _first_request(channel: ChannelLike) -> First | None:
    """Read until the event that says what a connection is for (None: it closed first)."""
    while True:
        event = await channel.next_event()
        if isinstance(event, ChannelAnnounced | ConfigurationReceived | ResolveRequested):
            return event
        if isinstance(event, ConnectionClosed | PeerTimedOut):
            return None


def qemu_socket_address(address: MigrationAddress) -> dict[str, object]:
    """QEMU's SocketAddress: {type: inet, host, port (a string)} or {type: unix, path}."""
    if isinstance(address, TcpAddress):
        return {"type": "inet", "host": address.host, "port": str(address.port)}
    return {"type": "unix", "path": str(getattr(address, "path", ""))}
