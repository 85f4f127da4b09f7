"""The fault proxy: forwards TCP connections to one upstream and applies the active faults.

Each proxied connection has two pipes (main: client to upstream, i.e. source to destination;
return: the other way). A pipe's reader decides what may pass (scanning frame boundaries for
`before_frame` faults, counting bytes for `after_bytes` cuts, holding everything while stalled — it
then stops reading, so TCP backpressure stops the sender, as a real stall would); its writer
delivers in order, applying latency and bandwidth.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import structlog

from faultproxy.faults import Direction, Fault, FaultKind
from faultproxy.scanner import FrameStart, StreamScanner
from netio import TcpAddress, accept, bound_address, close_socket, listen, open_connection

if TYPE_CHECKING:
    from collections.abc import Callable

    from netio import SocketAddress

READ_BYTES: Final = 256 * 1024
_QUEUE_CHUNKS: Final = 64
_CUT: Final = object()
log = structlog.get_logger("faultproxy")


@dataclass(kw_only=True, slots=True)
class ProxyStats:
    """Counters shown by the control API."""

    connections_total: int = 0
    connections_open: int = 0
    bytes_main: int = 0
    bytes_return: int = 0
    refused: int = 0

    def to_json(self) -> dict[str, int]:
        """The control API's view."""
        return {
            "connections_total": self.connections_total,
            "connections_open": self.connections_open,
            "bytes_main": self.bytes_main,
            "bytes_return": self.bytes_return,
            "refused": self.refused,
        }


@dataclass(frozen=True, slots=True)
class _Chunk:
    """Bytes on their way through a pipe, stamped with when they arrived."""

    arrived_at: float
    data: bytes


class FaultProxy:
    """A TCP proxy to one upstream address, with faults that can change at any time."""

    def __init__(self, *, upstream: SocketAddress, seed: int = 0) -> None:
        self.upstream = upstream
        self.stats = ProxyStats()
        self.faults: dict[int, Fault] = {}
        self.fired = asyncio.Event()  # set whenever a fault acts
        self._next_id = 1
        self._released = asyncio.Event()
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._connecting: dict[socket.socket, asyncio.Task[None]] = {}  # client: its _serve
        self._serving: set[asyncio.Task[None]] = set()  # every connection's task
        self._random = random.Random(seed)
        self._lingering: list[socket.socket] = []
        self.address: SocketAddress | None = None

    # -- control -------------------------------------------------------------------------

    def add(self, fault: Fault) -> Fault:
        """Activate a fault; returns it with its id."""
        fault.fault_id = self._next_id
        self._next_id += 1
        self.faults[fault.fault_id] = fault
        if fault.kind is FaultKind.STALL:
            self._released.clear()
        log.info("fault_added", fault=fault.to_json())
        return fault

    def remove(self, fault_id: int) -> bool:
        """Deactivate one fault (releasing it if it is a stall)."""
        fault = self.faults.pop(fault_id, None)
        if fault is not None and fault.kind is FaultKind.STALL:
            self.release()
        return fault is not None

    def clear(self) -> None:
        """Deactivate every fault and release every stall."""
        self.faults.clear()
        self.release()

    def release(self) -> None:
        """Let stalled pipes move again (their stall faults are spent or removed)."""
        for fault_id in [i for i, f in self.faults.items() if f.kind is FaultKind.STALL]:
            del self.faults[fault_id]
        self._released.set()

    def reset_connections(self) -> None:
        """Drop every proxied connection with a TCP reset."""
        for link in list(self._links):
            link.close(reset=True)

    async def wait_fired(self, fault: Fault, timeout_s: float) -> None:
        """Wait until a fault has acted at least once."""
        async with asyncio.timeout(timeout_s):
            while fault.fired == 0:
                self.fired.clear()
                await self.fired.wait()

    def active(self, direction: Direction, kind: FaultKind) -> list[Fault]:
        """Faults of a kind that apply to a direction now.

        A stall without a frame condition holds until released, however often it acted.
        """
        return [
            fault
            for fault in self.faults.values()
            if fault.kind is kind
            and fault.direction.covers(direction)
            and (not fault.spent or (kind is FaultKind.STALL and fault.before_frame is None))
        ]

    def record(self, fault: Fault) -> None:
        """A fault acted."""
        fault.fired += 1
        log.info("fault_fired", fault=fault.to_json())
        self.fired.set()

    # -- serving -------------------------------------------------------------------------

    async def start(self, address: SocketAddress) -> SocketAddress:
        """Listen; returns the bound address (port 0 picks one)."""
        self._listener = listen(address)
        self.address = bound_address(self._listener)
        self._accept_task = asyncio.create_task(self._accept_loop(self._listener))
        return self.address

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
        connecting = list(self._connecting.values())
        for task in connecting:
            task.cancel()
        await asyncio.gather(*connecting, return_exceptions=True)
        for client in list(self._connecting):  # tasks cancelled before they ever ran
            client.close()
        self._connecting.clear()
        if self._listener is not None:
            self._listener.close()
        for link in list(self._links):
            link.close(reset=False)
            await link.wait_closed()
        await asyncio.gather(*self._serving, return_exceptions=True)  # the pipes wind down
        for sock in self._lingering:
            close_socket(sock)
        self._lingering.clear()

    async def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            client = await accept(listener)
            if self.active(Direction.BOTH, FaultKind.REFUSE):
                self.stats.refused += 1
                client.close()
                continue
            task = asyncio.create_task(self._serve(client))
            self._connecting[client] = task
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _serve(self, client: socket.socket) -> None:
        upstream = await self._connect_upstream(client)
        if upstream is None:
            return
        link = _Link(self, client, upstream)
        self._links.add(link)
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        try:
            await link.run()
        finally:
            self._links.discard(link)
            self.stats.connections_open -= 1

    async def _connect_upstream(self, client: socket.socket) -> socket.socket | None:
        """Connect upstream for a client; None (the client closed) if that fails.

        `close` cancels the clients still connecting, so a cancellation closes the client too.
        """
        try:
            return await open_connection(self.upstream, timeout_s=5.0)
        except Exception as exc:  # noqa: BLE001 - netio ConnectError and friends: drop the client
            log.info("upstream_unreachable", error=str(exc))
            client.close()
            return None
        except BaseException:
            client.close()
            raise
        finally:
            self._connecting.pop(client, None)

    def linger(self, sock: socket.socket) -> None:
        """Keep a half-cut connection's other socket open until the proxy closes."""
        self._lingering.append(sock)

    def wait_released(self) -> asyncio.Event:
        """The event stalled pipes wait on."""
        return self._released

    def jitter_s(self, fault: Fault) -> float:
        """A random delay for one chunk: ms ± jitter_ms, never negative."""
        spread = self._random.uniform(-fault.jitter_ms, fault.jitter_ms)
        return max(0.0, (fault.ms + spread) / 1000.0)


class _Link:
    """One proxied connection: two pipes, closed together."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.closed = asyncio.Event()
        self._pipes = [
            _Pipe(self, client, upstream, Direction.MAIN),
            _Pipe(self, upstream, client, Direction.RETURN),
        ]

    async def run(self) -> None:
        tasks = [asyncio.create_task(pipe.run()) for pipe in self._pipes]
        await self.closed.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self, *, reset: bool) -> None:
        """Close both sockets at once; the pipes, which may be waiting on them, are cancelled next.

        `close_socket` unregisters the pipes' pending ``sock_recv``/``sock_sendall`` first: a
        plain close would leave the loop watching fd numbers that the next socket opened in this
        process reuses (epoll MOD fails with ``FileNotFoundError`` on the stdlib loop).
        """
        if self.closed.is_set():
            return
        for sock in (self.client, self.upstream):
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            close_socket(sock)
        self.closed.set()

    def cut(self, fault: Fault) -> None:
        """A cut fault: drop both sides, or only one and leave the other open (and silent)."""
        if fault.side == "both":
            self.close(reset=fault.reset)
            return
        dropped, kept = (
            (self.client, self.upstream) if fault.side == "client" else (self.upstream, self.client)
        )
        if fault.reset:
            with contextlib.suppress(OSError):
                dropped.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        close_socket(dropped)
        self.proxy.linger(kept)  # open, but nothing more passes: the peer must notice by itself
        self.closed.set()

    def pipe_done(self) -> None:
        if all(pipe.done for pipe in self._pipes):
            self.close(reset=False)

    async def wait_closed(self) -> None:
        await self.closed.wait()


class _Pipe:
    """One direction of a link: a reader deciding what passes, a writer delivering it."""

    def __init__(
        self, link: _Link, source: socket.socket, sink: socket.socket, direction: Direction
    ) -> None:
        self.link = link
        self.source = source
        self.sink = sink
        self.direction = direction
        self.done = False
        self.forwarded = 0
        self._queue: asyncio.Queue[object] = asyncio.Queue(_QUEUE_CHUNKS)
        self._scanner = StreamScanner(main_stream=direction is Direction.MAIN)
        self._deliver_at = 0.0

    async def run(self) -> None:
        writer = asyncio.create_task(self._write())
        try:
            await self._read()
        except OSError:
            self._enqueue_cut(None)
        except asyncio.CancelledError:
            writer.cancel()  # the link closes: the writer may wait for a chunk that never comes
            await asyncio.gather(writer, return_exceptions=True)
            raise
        await writer  # deliver what was read (a cancel now reaches the writer too)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        pending = bytearray()
        while True:
            chunk = await loop.sock_recv(self.source, READ_BYTES)
            if not chunk:
                await self._queue.put(_Chunk(asyncio.get_running_loop().time(), b""))  # the FIN
                return
            pending += chunk
            if not await self._forward(pending):
                return

    async def _forward(self, pending: bytearray) -> bool:
        """Pass what the faults allow; False once the connection is cut."""
        proxy = self.link.proxy
        while pending:
            await self._hold_while_stalled()
            limit, cut = self._byte_limit(len(pending))
            plan = self._scanner.plan(memoryview(pending)[:limit], self._matcher())
            if plan.passable:
                await self._queue.put(
                    _Chunk(asyncio.get_running_loop().time(), bytes(pending[: plan.passable]))
                )
                del pending[: plan.passable]
                self.forwarded += plan.passable
            if plan.frame is not None:
                if not await self._fire_at(plan.frame):
                    return False
                continue
            if cut is not None and self.forwarded >= (cut.after_bytes or 0):
                proxy.record(cut)
                self._enqueue_cut(cut)
                return False
            if not plan.passable:
                return True  # a frame header is incomplete: read more
        return True

    async def _hold_while_stalled(self) -> None:
        """A stall without a frame condition holds this direction until released.

        At once, or once its `after_bytes` went through on this connection.
        """
        proxy = self.link.proxy
        stalls = [
            f
            for f in proxy.active(self.direction, FaultKind.STALL)
            if not f.before_frame and self.forwarded >= (f.after_bytes or 0)
        ]
        if not stalls:
            return
        for fault in stalls:
            if fault.fired == 0:
                proxy.record(fault)
        await proxy.wait_released().wait()

    def _byte_limit(self, available: int) -> tuple[int, Fault | None]:
        """What may pass before the nearest `after_bytes` cut or stall; that cut, if any."""
        proxy = self.link.proxy
        cuts = [f for f in proxy.active(self.direction, FaultKind.CUT) if f.after_bytes is not None]
        stalls = [
            f
            for f in proxy.active(self.direction, FaultKind.STALL)
            if f.after_bytes is not None and not f.before_frame and f.after_bytes > self.forwarded
        ]
        cut = min(cuts, key=lambda f: f.after_bytes or 0, default=None)
        limit = min((f.after_bytes or 0 for f in [*cuts, *stalls]), default=None)
        if limit is None:
            return available, None
        return max(0, min(available, limit - self.forwarded)), cut

    def _matcher(self) -> Callable[[FrameStart], bool] | None:
        faults = [
            f
            for kind in (FaultKind.CUT, FaultKind.STALL)
            for f in self.link.proxy.active(self.direction, kind)
            if f.before_frame is not None
        ]
        if not faults:
            return None
        return lambda frame: any(f.before_frame and f.before_frame.matches(frame) for f in faults)

    async def _fire_at(self, frame: FrameStart) -> bool:
        proxy = self.link.proxy
        for kind in (FaultKind.CUT, FaultKind.STALL):
            for fault in proxy.active(self.direction, kind):
                if fault.before_frame is None or not fault.before_frame.matches(frame):
                    continue
                proxy.record(fault)
                if kind is FaultKind.CUT:
                    self._enqueue_cut(fault)
                    return False
                await proxy.wait_released().wait()  # stalled: stop reading until released
                return True
        return True

    def _enqueue_cut(self, fault: Fault | None) -> None:
        """Cut after what is queued; at once if the queue is full (its receiver is stuck)."""
        item: object = _CUT if fault is None else (_CUT, fault)
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            if fault is None:
                self.link.close(reset=False)
            else:
                self.link.cut(fault)

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()
            if isinstance(item, tuple):
                self.link.cut(item[1])
                return
            if item is _CUT:
                self.link.close(reset=False)
                return
            assert isinstance(item, _Chunk)  # noqa: S101
            if not item.data:
                with contextlib.suppress(OSError):
                    self.sink.shutdown(socket.SHUT_WR)
                self.done = True
                self.link.pipe_done()
                return
            await self._pace(item)
            try:
                await loop.sock_sendall(self.sink, item.data)
            except OSError:
                self.link.close(reset=False)
                return
            self._count(len(item.data))

    async def _pace(self, chunk: _Chunk) -> None:
        """Hold a chunk until it may go out (see `delivery_time`)."""
        proxy = self.link.proxy
        now = asyncio.get_running_loop().time()
        delay_s = sum(proxy.jitter_s(f) for f in proxy.active(self.direction, FaultKind.LATENCY))
        rates = [f.bytes_per_s for f in proxy.active(self.direction, FaultKind.BANDWIDTH)]
        self._deliver_at = delivery_time(
            arrived_at=chunk.arrived_at,
            previous_at=self._deliver_at,
            delay_s=delay_s,
            nbytes=len(chunk.data),
            bytes_per_s=min(rates, default=0),
        )
        if self._deliver_at > now:
            await asyncio.sleep(self._deliver_at - now)

    def _count(self, nbytes: int) -> None:
        stats = self.link.proxy.stats
        if self.direction is Direction.MAIN:
            stats.bytes_main += nbytes
        else:
            stats.bytes_return += nbytes


def delivery_time(
    *, arrived_at: float, previous_at: float, delay_s: float, nbytes: int, bytes_per_s: int
) -> float:
    """When a chunk may go out.

    Its arrival plus the latency (so latency never caps throughput), never before the previous
    chunk (bytes stay in order whatever the jitter), and no sooner than the bandwidth allows.
    """
    earliest = arrived_at + delay_s
    if bytes_per_s > 0:
        earliest = max(earliest, previous_at + nbytes / bytes_per_s)
    return max(previous_at, earliest)


def tcp(host: str, port: int) -> TcpAddress:
    """A TcpAddress (for callers that do not parse URIs)."""
    return TcpAddress(host=host, port=port)
