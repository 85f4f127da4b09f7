"""Stream sockets: options for liveness, connecting with a timeout, listening, accepting, closing.

The migration channel is a plain non-blocking socket driven by `netio.channel.Channel`, so these
helpers return `socket.socket` objects rather than asyncio transports.

Liveness (docs/protocol.md §4): besides the protocol's own PING and peer timeout, a TCP socket
gets keepalive probes (``SO_KEEPALIVE``, ``TCP_KEEPIDLE``/``TCP_KEEPINTVL``/``TCP_KEEPCNT``) and
``TCP_USER_TIMEOUT``, so a partitioned peer also surfaces as ``ETIMEDOUT`` from the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import stat
from pathlib import Path
from typing import Any

from netio.errors import ConnectError, ListenError
from netio.uri import SocketAddress, TcpAddress, UnixAddress

__all__ = [
    "accept",
    "bound_address",
    "close_socket",
    "configure_stream_socket",
    "listen",
    "open_connection",
]

_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_DEFAULT_BACKLOG = 16


def configure_stream_socket(
    sock: socket.socket,
    *,
    keepalive_idle_s: float,
    keepalive_interval_s: float,
    keepalive_count: int,
    user_timeout_ms: int,
    nodelay: bool = True,
    sndbuf_bytes: int | None = None,
    rcvbuf_bytes: int | None = None,
) -> None:
    """Set liveness and buffering options on a connected stream socket.

    TCP options are skipped on unix sockets; the buffer sizes apply to both.

    Args:
        sock: A TCP or unix stream socket.
        keepalive_idle_s: Idle time before the first keepalive probe (rounded up to whole
            seconds, at least 1).
        keepalive_interval_s: Time between probes (rounded up to whole seconds, at least 1).
        keepalive_count: Unanswered probes before the kernel declares the peer dead.
        user_timeout_ms: ``TCP_USER_TIMEOUT``: how long sent data may stay unacknowledged
            before the connection fails with ``ETIMEDOUT`` (0 = the kernel default).
        nodelay: Disable Nagle's algorithm (small control frames go out at once).
        sndbuf_bytes: ``SO_SNDBUF``, or None for kernel autotuning.
        rcvbuf_bytes: ``SO_RCVBUF``, or None for kernel autotuning.

    Raises:
        ValueError: A count or duration is out of range.
    """
    if keepalive_count < 1 or user_timeout_ms < 0:
        raise ValueError(
            f"keepalive_count must be >= 1 and user_timeout_ms >= 0, "
            f"got {keepalive_count} and {user_timeout_ms}"
        )
    if sndbuf_bytes is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf_bytes)
    if rcvbuf_bytes is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
    if sock.family not in _TCP_FAMILIES:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, _whole_seconds(keepalive_idle_s))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, _whole_seconds(keepalive_interval_s))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, keepalive_count)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(nodelay))


def _whole_seconds(duration_s: float) -> int:
    if not duration_s > 0:
        raise ValueError(f"keepalive durations must be > 0 s, got {duration_s}")
    return max(1, math.ceil(duration_s))


async def open_connection(address: SocketAddress, timeout_s: float) -> socket.socket:
    """Connect a non-blocking stream socket to an address.

    Args:
        address: Where to connect (host names are resolved; every result is tried in turn).
        timeout_s: Give up after this long, resolution included.

    Returns:
        The connected, non-blocking socket.

    Raises:
        ConnectError: Refused, unreachable, timed out, or the name did not resolve. The message
            names the address.
    """
    try:
        async with asyncio.timeout(timeout_s):
            if isinstance(address, UnixAddress):
                return await _connect_one(socket.AF_UNIX, 0, address.path, address)
            return await _connect_tcp(address)
    except TimeoutError:
        raise ConnectError(
            f"cannot connect to {address}: timed out after {timeout_s:g} s",
            address=str(address),
        ) from None


async def _connect_tcp(address: TcpAddress) -> socket.socket:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except socket.gaierror as exc:
        raise ConnectError(
            f"cannot connect to {address}: cannot resolve {address.host!r}: {exc.strerror}",
            address=str(address),
        ) from exc
    errors: list[ConnectError] = []
    for family, _type, proto, _name, sockaddr in infos:
        try:
            return await _connect_one(family, proto, sockaddr, address)
        except ConnectError as exc:
            errors.append(exc)
    raise errors[-1]


async def _connect_one(
    family: int, proto: int, sockaddr: tuple[Any, ...] | str, address: SocketAddress
) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, sockaddr)
    except OSError as exc:
        sock.close()
        raise ConnectError(
            f"cannot connect to {address}: {_reason(exc)}", address=str(address)
        ) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def _reason(exc: OSError) -> str:
    """The error's plain description (asyncio rewrites ``strerror`` with the address)."""
    text = os.strerror(exc.errno) if exc.errno else (exc.strerror or type(exc).__name__)
    return text[:1].lower() + text[1:]


def listen(
    address: SocketAddress, *, backlog: int = _DEFAULT_BACKLOG, unix_mode: int | None = None
) -> socket.socket:
    """Create a non-blocking listening socket.

    TCP port 0 lets the kernel pick a port: read it back with `bound_address`. A stale unix
    socket file at the path is removed first (as QEMU does); any other kind of file is left
    alone and the bind fails.

    Args:
        address: Where to listen. An empty TCP host means every interface.
        backlog: The listen backlog.
        unix_mode: The permissions of a unix socket's file, set before it listens (0o600:
            its owner only).

    Returns:
        The listening socket.

    Raises:
        ListenError: The address is in use, not permitted, or does not resolve.
    """
    try:
        if isinstance(address, UnixAddress):
            sock = _listen_unix(address.path, backlog, unix_mode)
        else:
            sock = _listen_tcp(address, backlog)
    except OSError as exc:
        raise ListenError(
            f"cannot listen on {address}: {_reason(exc)}", address=str(address)
        ) from exc
    sock.setblocking(False)
    return sock


def _listen_tcp(address: TcpAddress, backlog: int) -> socket.socket:
    if not address.host:
        dualstack = socket.has_dualstack_ipv6()
        family = socket.AF_INET6 if dualstack else socket.AF_INET
        return socket.create_server(
            ("", address.port), family=family, backlog=backlog, dualstack_ipv6=dualstack
        )
    infos = socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, _type, _proto, _name, sockaddr = infos[0]
    return socket.create_server(sockaddr[:2], family=family, backlog=backlog)


def _listen_unix(path: str, backlog: int, mode: int | None) -> socket.socket:
    socket_path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(socket_path.stat().st_mode):
            socket_path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        if mode is not None:
            socket_path.chmod(mode)  # before listen: nobody connects in between
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def bound_address(sock: socket.socket) -> SocketAddress:
    """Return the address a socket is bound to (the real port after listening on port 0).

    Args:
        sock: A bound TCP or unix socket.

    Returns:
        The bound address.
    """
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        path = os.fsdecode(name) if isinstance(name, bytes) else str(name)
        return UnixAddress(path=path)
    return TcpAddress(host=str(name[0]), port=int(name[1]))


async def accept(listener: socket.socket) -> socket.socket:
    """Accept one connection on a listening socket.

    Cancelling never loses a connection: it is accepted here, in the caller's task, once the
    listener is readable, so it is either returned or left in the backlog for the next call.
    (``loop.sock_accept`` accepts in a loop callback: a cancellation landing in the same loop
    iteration drops the accepted socket unclosed, and CPython 3.11 even accepts into an already
    cancelled future.) Nothing stays registered on the listener once this returns or is
    cancelled, so the listener may be closed at once.

    Args:
        listener: A non-blocking listening socket from `listen`.

    Returns:
        The accepted connection, non-blocking.

    Raises:
        OSError: ``accept`` failed (e.g. ``EMFILE``, ``ECONNABORTED``).
    """
    while True:
        try:
            sock, _peer = listener.accept()
        except (BlockingIOError, InterruptedError):
            await _ReadableWaiter(listener)
            continue
        sock.setblocking(False)
        return sock


class _ReadableWaiter(asyncio.Future[None]):
    """Done once the running loop reports a socket readable; never leaves the reader behind.

    The reader is removed synchronously when it fires and when the waiter is cancelled, not in a
    later loop iteration (as the stdlib loop's ``sock_*`` done callbacks do), so no moment exists
    where the loop watches an fd its owner may already have closed. uvloop's socket futures do
    the same.
    """

    def __init__(self, sock: socket.socket) -> None:
        """Register the reader; must be called with the loop running."""
        super().__init__(loop=asyncio.get_running_loop())
        self._sock = sock
        self._fd = sock.fileno()
        self.get_loop().add_reader(self._fd, self._on_readable)

    def cancel(self, msg: object = None) -> bool:
        """Remove the reader, then cancel."""
        if not self.done():
            self._remove_reader()
        return super().cancel(msg)

    def _on_readable(self) -> None:
        self._remove_reader()
        if not self.done():
            self.set_result(None)

    def _remove_reader(self) -> None:
        # A socket closed meanwhile (fileno -1) may have had its number reused by now: the
        # number is no longer ours to unregister (whoever closes a watched socket must do it).
        if self._sock.fileno() == self._fd:
            self.get_loop().remove_reader(self._fd)


def close_socket(sock: socket.socket) -> None:
    """Close a socket the running event loop may still be watching; idempotent.

    A reader or writer still registered on it (a pending ``loop.sock_recv``/``sock_sendall``, an
    ``add_reader``) is removed first. Closing with it registered leaves the stdlib loop's selector
    a stale key for the fd number, which the next socket usually gets: registering that socket
    then fails with ``FileNotFoundError`` (epoll MOD on an fd the kernel dropped) or silently
    never watches it. (uvloop keeps the fd open while one of its own ``sock_*`` operations waits,
    and aborts in libuv for a plain ``add_reader``/``add_writer``.) A task still waiting on the
    socket keeps waiting until it is cancelled.

    Args:
        sock: A socket that no asyncio transport owns (close those with the transport).
    """
    fd = sock.fileno()
    loop = _running_loop()
    if fd != -1 and loop is not None:
        loop.remove_reader(fd)
        loop.remove_writer(fd)
    sock.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
