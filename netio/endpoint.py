"""The one place migration channels are made: connect, listen and accept, or open a file.

A migration URI names a transport (``tcp:``, ``unix:``, ``file:``), and TLS (`netio.tls`) may
wrap a socket here; whatever it is, the caller gets a `ChannelLike` that drives a sans-IO
connection over it with the same API. Every socket gets the same liveness options
(`ChannelOptions`: keepalive probes and ``TCP_USER_TIMEOUT`` derived from the peer timeout), so a
silent peer surfaces as an error everywhere, not only where someone remembered to set them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from netio.channel import Channel
from netio.errors import NetIOError, TlsAuthzError, TlsCredentialsError
from netio.filechannel import FileChannel
from netio.sockopts import accept, bound_address, configure_stream_socket, listen, open_connection
from netio.tls import authorization_refusal, tls_handshake
from netio.uri import FileAddress

if TYPE_CHECKING:
    import contextlib
    import socket
    from collections.abc import Callable

    from netio.channel import SansIOConnection
    from netio.tls import TlsClient, TlsServer
    from netio.uri import MigrationAddress, SocketAddress

C = TypeVar("C", bound="SansIOConnection")

__all__ = [
    "ChannelLike",
    "ChannelListener",
    "ChannelOptions",
    "connect_channel",
    "open_accepted",
    "read_file",
]


class ChannelLike(Protocol):
    """What `Channel` (a socket) and `FileChannel` (a file) both offer."""

    bytes_sent: int
    bytes_received: int
    last_error: OSError | None
    send_guard: contextlib.AbstractContextManager[object] | None

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        ...

    @property
    def conn(self) -> SansIOConnection:
        """The sans-IO connection this channel drives."""
        ...

    async def next_event(self) -> object:
        """The connection's next event, reading as needed."""
        ...

    async def flush(self, *, keep_bytes: int = 0) -> None:
        """Send what is queued until at most `keep_bytes` remain."""
        ...

    def flush_nowait(self, max_bytes: int = ...) -> int:
        """Send what can go now, without waiting."""
        ...

    def close(self) -> None:
        """Close the transport (idempotent)."""
        ...

    def abort(self) -> None:
        """Close abruptly (a TCP reset where there is one)."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class ChannelOptions:
    """How a migration socket is connected and watched.

    Attributes:
        connect_timeout_s: give up connecting after this long.
        peer_timeout_ms: `TCP_USER_TIMEOUT`, and keepalive probes tuned to find a dead peer
            within about this long.
        keepalive_idle_s: seconds of silence before the first keepalive probe; by default half
            the peer timeout (at least one second).
    """

    connect_timeout_s: float = 5.0
    peer_timeout_ms: int = 10_000
    keepalive_idle_s: int | None = None

    def tune(self, sock: socket.socket) -> None:
        """Keepalives and `TCP_USER_TIMEOUT` on a connected socket (skipped for unix ones)."""
        configure_stream_socket(
            sock,
            keepalive_idle_s=self.keepalive_idle_s or max(1, self.peer_timeout_ms // 2000),
            keepalive_interval_s=1,
            keepalive_count=3,
            user_timeout_ms=self.peer_timeout_ms,
        )


async def connect_channel(
    address: MigrationAddress,
    conn: SansIOConnection,
    options: ChannelOptions,
    *,
    clock: Callable[[], float] | None = None,
    tls: TlsClient | None = None,
) -> ChannelLike:
    """Open a channel to `address` (a file is created for writing) and drive `conn` over it.

    With `tls`, the TLS handshake runs first (within the connect timeout).

    Raises:
        ConnectError: the peer cannot be reached (refused, unreachable, timed out).
        ChannelError: the file cannot be opened.
        TlsError: TLS was asked for and the handshake failed (`TlsHandshakeError`), or our
            credentials are unusable (`TlsCredentialsError`); a file cannot carry TLS.
    """
    if isinstance(address, FileAddress):
        if tls is not None:
            msg = f"TLS cannot be used with {address}: a file has no peer to authenticate"
            raise TlsCredentialsError(msg)
        return FileChannel.for_writing(address, conn, clock=clock)
    sock = await open_connection(address, timeout_s=options.connect_timeout_s)
    try:
        options.tune(sock)
        session = None
        if tls is not None:
            timeout_s = options.connect_timeout_s
            session = await tls_handshake(sock, tls, timeout_s=timeout_s, peer=str(address))
        return Channel(sock, conn, clock=clock, tls=session)
    except BaseException:
        sock.close()
        raise


def read_file(
    address: FileAddress, conn: SansIOConnection, *, clock: Callable[[], float] | None = None
) -> ChannelLike:
    """Open a stream file for reading and drive `conn` over it.

    Raises:
        ChannelError: the file cannot be opened.
    """
    return FileChannel.for_reading(address, conn, clock=clock)


class ChannelListener:
    """A listening socket whose accepted connections become channels.

    Raises:
        ListenError: the address is in use, not permitted, or does not resolve.
    """

    def __init__(self, address: SocketAddress) -> None:
        self._sock = listen(address)
        self.address = bound_address(self._sock)

    async def accept(
        self, conn_for: Callable[[], C], options_for: Callable[[], ChannelOptions]
    ) -> tuple[Channel, C]:
        """Wait for a connection; return a channel driving a fresh `conn_for()`, and that conn.

        Both factories are called once the connection arrived, so they see the settings of that
        moment (parameters changed while the listener waited apply).

        Raises:
            OSError: accepting failed (e.g. EMFILE); the listener goes on.
        """
        return await open_accepted(await self.accept_socket(), conn_for, options_for())

    async def accept_socket(self) -> socket.socket:
        """Wait for a connection; the raw socket (`open_accepted` makes it a channel).

        Raises:
            OSError: accepting failed (e.g. EMFILE); the listener goes on.
        """
        return await accept(self._sock)

    def close(self) -> None:
        """Stop listening."""
        self._sock.close()


async def open_accepted(
    sock: socket.socket,
    conn_for: Callable[[], C],
    options: ChannelOptions,
    *,
    tls: TlsServer | None = None,
    refuse: Callable[[C, str], None] | None = None,
) -> tuple[Channel, C]:
    """An accepted socket as a channel driving a fresh `conn_for()` (TLS handshake first).

    Run it in a task of the connection's own: a peer that stalls the handshake holds only its
    task, for at most the connect timeout. The socket is closed on any failure. When
    `tls.authz` denies the peer, `refuse(conn, reason)` may queue a last word for it (a
    protocol's FAILED), which is sent over the session before the channel closes.

    Raises:
        TlsError: the handshake failed (`TlsHandshakeError`), or `tls.authz` denies the peer's
            certificate (`TlsAuthzError`).
    """
    peer = _peer_of(sock)
    try:
        options.tune(sock)
        session = None
        if tls is not None:
            timeout_s = options.connect_timeout_s
            session = await tls_handshake(sock, tls, timeout_s=timeout_s, peer=peer)
        conn = conn_for()
        channel = Channel(sock, conn, tls=session)
    except BaseException:
        sock.close()
        raise
    if tls is not None and tls.authz is not None and session is not None:
        refusal = authorization_refusal(session, tls.authz)
        if refusal is not None:
            await _last_word(channel, conn, refusal, refuse, options.connect_timeout_s)
            msg = f"{refusal} ({peer})"
            raise TlsAuthzError(msg)
    return channel, conn


async def _last_word(
    channel: Channel,
    conn: C,
    reason: str,
    refuse: Callable[[C, str], None] | None,
    timeout_s: float,
) -> None:
    try:
        if refuse is not None:
            refuse(conn, reason)
            async with asyncio.timeout(timeout_s):
                await channel.flush()
    except (TimeoutError, NetIOError, OSError):
        pass
    finally:
        channel.close()


def _peer_of(sock: socket.socket) -> str:
    try:
        peer = sock.getpeername()
    except OSError:
        return "the peer"
    if isinstance(peer, tuple):
        return f"tcp:{peer[0]}:{peer[1]}"
    return f"unix:{peer}" if peer else "a unix peer"
