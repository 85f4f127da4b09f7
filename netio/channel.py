"""Drive a sans-IO connection over a non-blocking stream socket.

`Channel` is the only code that moves migration bytes between the kernel and a sans-IO protocol
object (`SansIOConnection`). It follows aioquic's adapter pattern: after every interaction with the
connection it re-arms one `loop.call_later` timer from ``conn.get_timer()``; when the timer fires it
calls ``conn.handle_timer(now)``, sends what that queued (a PING, say) and wakes whoever waits.

Page data is never copied in Python: ``sock.sendmsg`` gathers the connection's output buffers
(memoryviews of guest RAM) and ``sock.recvmsg_into`` scatters input straight into the buffers the
connection asks for. Readiness comes from ``loop.add_reader``/``add_writer`` futures, which the
stdlib loop and uvloop both provide; asyncio transports cannot scatter into caller-given buffers.

A reader task (``next_event``) and a writer task (``flush``) may use one channel concurrently.
Neither starves the event loop: each yields after `YIELD_EVERY_BYTES` moved without waiting, so a
vCPU task on the same loop keeps running while pages stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from typing import TYPE_CHECKING, NoReturn

from netio.errors import ChannelClosedError, ChannelError
from netio.wire import IOV_MAX, PLAIN, SansIOConnection

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from netio.tls import TlsSession
    from netio.wire import Wire

__all__ = [
    "IOV_MAX",
    "YIELD_EVERY_BYTES",
    "Channel",
    "SansIOConnection",
]

#: Bytes moved without suspending before a channel yields to the event loop once.
YIELD_EVERY_BYTES = 8 << 20
_LINGER_RESET = struct.pack("ii", 1, 0)


class _SendResult(enum.Enum):
    DONE = enum.auto()  # nothing left to send
    BLOCKED = enum.auto()  # the kernel buffer is full
    MORE = enum.auto()  # the byte budget ran out; more is queued


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Channel:
    """A sans-IO connection driven over a non-blocking stream socket.

    The channel owns the socket: `close` closes it.

    Attributes:
        bytes_sent: Bytes the kernel accepted so far.
        bytes_received: Bytes received so far.
        last_error: The last socket error seen (a failed send, or a receive error such as
            ``ECONNRESET``/``ETIMEDOUT`` that was fed to the connection as end of stream).
        send_guard: Held while the kernel copies queued bytes and the connection hashes them,
            when the queued data views memory another thread writes (guest RAM and its vCPU
            thread: `vmm.vcpu_thread`); None by default.
    """

    def __init__(
        self,
        sock: socket.socket,
        conn: SansIOConnection,
        *,
        clock: Callable[[], float] | None = None,
        auto_flush: bool = True,
        tls: TlsSession | None = None,
    ) -> None:
        """Wrap a connected socket. Must be called with an event loop running.

        Args:
            sock: A connected stream socket (made non-blocking here).
            conn: The sans-IO connection to drive.
            clock: The connection's clock; ``loop.time`` by default.
            auto_flush: After receiving bytes or handling the timer, send what the kernel takes
                at once (acks, PONGs), without waiting for a `flush`.
            tls: The TLS session of a socket whose handshake is done (`netio.tls`): bytes
                then go through it, and `bytes_sent`/`bytes_received` count plaintext.
        """
        self._loop = asyncio.get_running_loop()
        sock.setblocking(False)
        self._sock = sock
        self._wire: Wire = tls if tls is not None else PLAIN
        self._fd = sock.fileno()
        self._conn = conn
        self._clock = clock if clock is not None else self._loop.time
        self._auto_flush = auto_flush
        self._peer = _peer_text(sock)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        self._write_waiter: asyncio.Future[None] | None = None
        self._write_lock = asyncio.Lock()
        self._reading = False
        self._eof = False
        self._closed = False
        self._send_error: OSError | None = None
        self._timer_error: Exception | None = None
        self._unyielded_read_bytes = 0
        self._unyielded_write_bytes = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.last_error: OSError | None = None
        self.send_guard: contextlib.AbstractContextManager[object] | None = None
        self._rearm_timer()

    # ------------------------------------------------------------------ properties

    @property
    def sock(self) -> socket.socket:
        """The socket (owned by the channel)."""
        return self._sock

    @property
    def conn(self) -> SansIOConnection:
        """The sans-IO connection this channel drives."""
        return self._conn

    @property
    def closed(self) -> bool:
        """Whether `close` or `abort` was called."""
        return self._closed

    @property
    def at_eof(self) -> bool:
        """Whether the end of the stream was fed to the connection."""
        return self._eof

    # ------------------------------------------------------------------ receiving

    async def next_event(self) -> object:
        """Return the connection's next event, receiving bytes as needed.

        End of stream, and receive errors such as ``ECONNRESET`` or ``ETIMEDOUT`` (kept in
        `last_error`), are fed to the connection with ``receive_eof``; the connection then
        reports them as events. The protocol timer keeps running while this waits.

        Returns:
            The next event.

        Raises:
            ChannelClosedError: The channel was closed, or the stream ended and the connection
                has neither an event nor a timer left.
            ChannelError: Another task is already awaiting `next_event`.
        """
        if self._reading:
            raise ChannelError(f"next_event() on {self._peer} is already being awaited")
        self._reading = True
        try:
            return await self._receive_until_event()
        finally:
            self._reading = False

    async def _receive_until_event(self) -> object:
        conn = self._conn
        while True:
            self._check_open()
            event = conn.next_event()
            if event is not None:
                self._rearm_timer()
                return event
            if self._eof:
                await self._wait_after_eof()
                continue
            buffers = conn.get_buffers()
            nbytes = self._receive_into(buffers) if buffers else 0
            if nbytes is None:
                await self._wait_readable()
            elif nbytes == 0:
                if not self._eof:
                    await self._wait_paused()
            else:
                self._unyielded_read_bytes += nbytes
                if self._unyielded_read_bytes >= YIELD_EVERY_BYTES:
                    self._unyielded_read_bytes = 0
                    await asyncio.sleep(0)

    def _receive_into(self, buffers: Sequence[memoryview]) -> int | None:
        """Receive once; return the byte count, 0 at end of stream or paused, None if EAGAIN."""
        try:
            nbytes = self._wire.recv_into(self._sock, buffers[:IOV_MAX])
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            self.last_error = exc
            self._feed_eof()
            return 0
        if nbytes == 0:
            if any(buffer.nbytes for buffer in buffers):
                self._feed_eof()
            return 0
        self.bytes_received += nbytes
        self._conn.buffers_filled(nbytes, self._clock())
        self._after_receive()
        return nbytes

    def _feed_eof(self) -> None:
        self._eof = True
        self._conn.receive_eof(self._clock())
        self._after_receive()

    def _after_receive(self) -> None:
        if self._auto_flush and self._write_waiter is None and self._send_error is None:
            self._send_quietly()
        self._rearm_timer()

    async def _wait_readable(self) -> None:
        waiter = self._loop.create_future()
        self._read_waiter = waiter
        self._loop.add_reader(self._fd, _wake, waiter)
        try:
            await waiter
        finally:
            self._read_waiter = None
            if not self._closed:
                self._loop.remove_reader(self._fd)
        self._unyielded_read_bytes = 0

    async def _wait_paused(self) -> None:
        """Wait while the connection takes no bytes: until the timer fires or bytes are sent."""
        waiter = self._loop.create_future()
        self._read_waiter = waiter
        self._read_paused = True
        try:
            await waiter
        finally:
            self._read_waiter = None
            self._read_paused = False
        self._unyielded_read_bytes = 0

    async def _wait_after_eof(self) -> None:
        if self._timer is None:
            raise ChannelClosedError(
                f"the stream from {self._peer} ended and the connection reported no event"
            ) from self.last_error
        await self._wait_paused()

    # ------------------------------------------------------------------ sending

    async def flush(self, *, keep_bytes: int = 0) -> None:
        """Send everything the connection has queued, waiting for the kernel as needed.

        Buffers the connection appends while this runs (a frame footer after the body went
        out, say) are sent too. The protocol timer keeps running while this waits.

        Args:
            keep_bytes: Return, without waiting for the kernel, once at most this many bytes
                are still queued (what the kernel takes now is sent all the same). A sender
                that queues its next batch before waiting keeps the stream busy while it
                builds batches.

        Raises:
            ChannelClosedError: The channel is closed or sending failed (``EPIPE``,
                ``ECONNRESET``, ``ETIMEDOUT``); the `OSError` is kept in `last_error`.
        """
        async with self._write_lock:
            while True:
                self._check_open()
                self._check_sendable()
                result = self._send_some(YIELD_EVERY_BYTES - self._unyielded_write_bytes)
                if result is _SendResult.DONE or self._conn.pending_send_bytes <= keep_bytes:
                    return
                if result is _SendResult.BLOCKED:
                    await self._wait_writable()
                else:
                    self._unyielded_write_bytes = 0
                    await asyncio.sleep(0)

    def flush_nowait(self, max_bytes: int = YIELD_EVERY_BYTES) -> int:
        """Send what the kernel takes now, without waiting.

        Args:
            max_bytes: Stop after about this many bytes even if the kernel would take more.

        Returns:
            The number of bytes sent.

        Raises:
            ChannelClosedError: The channel is closed or sending failed.
        """
        self._check_open()
        self._check_sendable()
        before = self.bytes_sent
        self._send_some(max_bytes)
        return self.bytes_sent - before

    def _send_some(self, budget_bytes: int) -> _SendResult:
        """Send until the queue is empty, the kernel is full or the budget is spent."""
        if self.send_guard is None:
            return self._send_unguarded(budget_bytes)
        with self.send_guard:
            return self._send_unguarded(budget_bytes)

    def _send_unguarded(self, budget_bytes: int) -> _SendResult:
        conn, sock, wire = self._conn, self._sock, self._wire
        sent = 0
        result = _SendResult.MORE
        try:
            while sent < budget_bytes:
                buffers = conn.data_to_send()
                if not buffers:
                    result = _SendResult.DONE if self._drained() else _SendResult.BLOCKED
                    break
                try:
                    nbytes = wire.send(sock, buffers[:IOV_MAX])
                except (BlockingIOError, InterruptedError):
                    result = _SendResult.BLOCKED
                    break
                except OSError as exc:
                    self._fail_send(exc)
                sent += nbytes
                conn.data_sent(nbytes, self._clock())
        finally:
            if sent:
                self.bytes_sent += sent
                self._unyielded_write_bytes += sent
                self._rearm_timer()
                if self._read_paused and self._read_waiter is not None:
                    _wake(self._read_waiter)
        return result

    def _drained(self) -> bool:
        """Whether no ciphertext waits for the kernel (always, without TLS).

        Raises:
            ChannelClosedError: sending failed.
        """
        if not self._wire.pending_bytes:
            return True
        try:
            return self._wire.drain(self._sock)
        except OSError as exc:
            self._fail_send(exc)

    def _send_quietly(self) -> None:
        """Send what the kernel takes now; a failure is kept for the next `flush`."""
        if self._conn.pending_send_bytes or self._wire.pending_bytes:
            with contextlib.suppress(ChannelClosedError):
                self._send_some(YIELD_EVERY_BYTES)

    def _fail_send(self, exc: OSError) -> NoReturn:
        self.last_error = exc
        self._send_error = exc
        raise ChannelClosedError(f"sending to {self._peer} failed: {exc.strerror or exc}") from exc

    async def _wait_writable(self) -> None:
        waiter = self._loop.create_future()
        self._write_waiter = waiter
        self._loop.add_writer(self._fd, _wake, waiter)
        try:
            await waiter
        finally:
            self._write_waiter = None
            if not self._closed:
                self._loop.remove_writer(self._fd)
        self._unyielded_write_bytes = 0

    def _check_sendable(self) -> None:
        if self._send_error is not None:
            raise ChannelClosedError(
                f"sending to {self._peer} failed earlier: "
                f"{self._send_error.strerror or self._send_error}"
            ) from self._send_error

    # ------------------------------------------------------------------ timer

    def _rearm_timer(self) -> None:
        """Arm the one timer for the connection's deadline (aioquic's transmit() pattern).

        A timer armed for an earlier deadline is kept: when it fires early it re-arms, which is
        cheaper than cancelling a handle after every received chunk.
        """
        deadline = self._conn.get_timer()
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = self._timer_at = None
            return
        if self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay_s = max(deadline - self._clock(), 0.0)
        self._timer = self._loop.call_later(delay_s, self._on_timer)
        self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        if self._closed:
            return
        try:
            deadline = self._conn.get_timer()
            now = self._clock()
            if deadline is not None and now >= deadline:
                if self._peer_bytes_waiting():
                    self._conn.peer_bytes_waiting(now)
                self._conn.handle_timer(now)
                if self._send_error is None:
                    self._send_quietly()
                self._wake_all()
            self._rearm_timer()
        except Exception as exc:  # noqa: BLE001 - re-raised from next_event()/flush()
            self._timer_error = exc
            self._wake_all()

    def _peer_bytes_waiting(self) -> bool:
        """Whether the peer's bytes wait unread in the socket (peeked, none consumed).

        A deadline can pass while they wait: this process was stopped (SIGSTOP) or its loop
        busy, and a loop may run a due timer before it polls for input (uvloop always does).
        """
        if self._eof:
            return False
        try:
            return bool(self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:  # BlockingIOError: nothing waits; any other error: the read reports it
            return False

    def _wake_all(self) -> None:
        if self._read_waiter is not None:
            _wake(self._read_waiter)
        if self._write_waiter is not None:
            _wake(self._write_waiter)

    # ------------------------------------------------------------------ closing

    def _check_open(self) -> None:
        if self._timer_error is not None:
            error, self._timer_error = self._timer_error, None
            raise ChannelError(f"the connection's timer handler failed: {error!r}") from error
        if self._closed:
            raise ChannelClosedError(f"the channel to {self._peer} is closed")

    def close(self) -> None:
        """Close the channel and its socket; idempotent.

        Removes the reader and writer, cancels the timer and wakes waiting tasks, which then
        raise `ChannelClosedError`.
        """
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        if self._read_waiter is not None:
            if not self._read_paused:
                self._loop.remove_reader(self._fd)
            _wake(self._read_waiter)
        if self._write_waiter is not None:
            self._loop.remove_writer(self._fd)
            _wake(self._write_waiter)
        self._sock.close()

    def abort(self) -> None:
        """Reset the connection (``SO_LINGER`` 0, so the peer sees RST) and close."""
        if self._closed:
            return
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<Channel {self._peer} {state} sent={self.bytes_sent} received={self.bytes_received}>"
        )


def _peer_text(sock: socket.socket) -> str:
    """Name the peer for messages: ``tcp:127.0.0.1:4444`` or ``unix:/path``."""
    try:
        name = sock.getpeername()
    except OSError:
        return "an unconnected socket"
    if sock.family == socket.AF_UNIX:
        return f"unix:{name or '(unnamed)'}"
    host = f"[{name[0]}]" if sock.family == socket.AF_INET6 else name[0]
    return f"tcp:{host}:{name[1]}"
