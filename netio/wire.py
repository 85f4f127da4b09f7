"""The two sides of a `Channel`: the sans-IO connection it drives, and its wire.

The wire is what it moves bytes through: the socket itself, or a TLS session over it. Both
offer ``send``/``recv_into`` with the semantics of ``sock.sendmsg``/``sock.recvmsg_into``
(`BlockingIOError` when nothing can move now, 0 at the end of the stream) and report the bytes
they hold that the kernel has not taken yet (`pending_bytes`, always 0 for the socket).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    import socket
    from collections.abc import Sequence

#: Most buffers one sendmsg/recvmsg_into/writev/readv call takes (Linux UIO_MAXIOV).
IOV_MAX: Final = 1024


class SansIOConnection(Protocol):
    """What a channel needs from a sans-IO connection (``protocol.MigrationConnection``).

    Times (``now``, ``get_timer``) are in the channel's clock, ``loop.time`` by default.
    """

    @property
    def pending_send_bytes(self) -> int:
        """Bytes queued for sending and not yet reported sent."""
        ...

    def data_to_send(self) -> Sequence[bytes | memoryview]:
        """Return the queued output, in order, without consuming it."""
        ...

    def data_sent(self, nbytes: int, now: float) -> None:
        """Report that the first ``nbytes`` of `data_to_send` went to the kernel."""
        ...

    def get_buffers(self) -> Sequence[memoryview]:
        """Return writable buffers for the next incoming bytes; empty means paused."""
        ...

    def buffers_filled(self, nbytes: int, now: float) -> None:
        """Report that the first ``nbytes`` of `get_buffers` were filled."""
        ...

    def receive_eof(self, now: float) -> None:
        """Report that the peer closed (or the socket failed): no more bytes will come."""
        ...

    def peer_bytes_waiting(self, now: float) -> None:
        """Report that the peer's bytes wait unread in the socket (it was not silent)."""
        ...

    def next_event(self) -> object | None:
        """Return the next event, or None when more bytes are needed."""
        ...

    def get_timer(self) -> float | None:
        """Return the next deadline, or None when no timer is needed."""
        ...

    def handle_timer(self, now: float) -> None:
        """Handle the deadline returned by `get_timer`."""
        ...


class Wire(Protocol):
    """A channel's way to the kernel."""

    @property
    def pending_bytes(self) -> int:
        """Bytes taken from the channel that the kernel has not taken yet."""
        ...

    def send(self, sock: socket.socket, buffers: Sequence[bytes | memoryview]) -> int:
        """Send what can go now; the bytes of `buffers` taken."""
        ...

    def recv_into(self, sock: socket.socket, buffers: Sequence[memoryview]) -> int:
        """Receive into `buffers`; the bytes filled, 0 at the end of the stream."""
        ...

    def drain(self, sock: socket.socket) -> bool:
        """Send what is held back; whether nothing is left."""
        ...


class PlainWire:
    """The socket itself: gathered sends, scattered receives, nothing held back."""

    pending_bytes: Final = 0

    @staticmethod
    def send(sock: socket.socket, buffers: Sequence[bytes | memoryview]) -> int:
        """``sendmsg`` of at most IOV_MAX buffers."""
        return sock.sendmsg(buffers[:IOV_MAX])

    @staticmethod
    def recv_into(sock: socket.socket, buffers: Sequence[memoryview]) -> int:
        """``recvmsg_into`` at most IOV_MAX buffers."""
        return sock.recvmsg_into(buffers[:IOV_MAX])[0]

    @staticmethod
    def drain(_sock: socket.socket) -> bool:
        """Nothing is ever held back."""
        return True


PLAIN: Final = PlainWire()
