"""File descriptors and the event loop: no socket is lost, no closed fd stays watched.

Each test closes or cancels, then at once (same loop iteration) opens sockets until they reuse the
closed numbers and checks the loop watches them (`tests.helpers.fds`). Every test runs on the
stdlib loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from netio import Channel, ChannelClosedError, TcpAddress, accept, close_socket, listen
from netio.sockopts import _connect_one
from tests.helpers.fake_conn import FakeConnection
from tests.helpers.fds import ReusedFds

LOOPBACK = "127.0.0.1"


def _full_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A listener with backlog 0 and a full queue: the kernel drops further SYNs."""
    listener = socket.socket()
    listener.bind((LOOPBACK, 0))
    listener.listen(0)
    fillers = []
    for _ in range(2):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    return listener, fillers


@pytest.mark.parametrize("cancel_at", ["before_the_listener_is_read", "after_accepting"])
def test_a_cancelled_accept_never_loses_the_connection(run, cancel_at):
    """The cancellation lands in the loop iteration where the connection is taken off the backlog:
    before the readiness callback runs (``call_soon``: CPython 3.11's ``sock_accept`` then accepts
    into the cancelled future) or after it (``call_later(0)``: the accepted socket is in a future
    the cancelled task never reads). Either way the connection must not be dropped unclosed: the
    cancelled accept returned it, or the next accept does."""

    async def main():
        loop = asyncio.get_running_loop()
        with listen(TcpAddress(host=LOOPBACK, port=0)) as listener:
            accepting = asyncio.ensure_future(accept(listener))
            await asyncio.sleep(0)  # accept() now waits for the listener to become readable
            with socket.create_connection(listener.getsockname(), timeout=2) as client:
                if cancel_at == "before_the_listener_is_read":
                    loop.call_soon(accepting.cancel)
                else:
                    loop.call_later(0, accepting.cancel)
                await asyncio.wait([accepting])
                if accepting.cancelled():
                    async with asyncio.timeout(1.0):
                        server = await accept(listener)
                else:
                    server = accepting.result()
                with server:
                    assert client.getsockname() == server.getpeername()

    run(main)


def test_a_listener_may_be_closed_as_soon_as_its_accept_is_cancelled(run):
    async def main():
        listener = listen(TcpAddress(host=LOOPBACK, port=0))
        fd = listener.fileno()
        accepting = asyncio.ensure_future(accept(listener))
        await asyncio.sleep(0)  # accept() now waits for the listener to become readable
        accepting.cancel()
        listener.close()
        reused = ReusedFds([fd])
        with pytest.raises(asyncio.CancelledError):
            await accepting
        await reused.check()

    run(main)


def test_a_cancelled_connect_leaves_its_fd_unwatched(run):
    """A guard: the fd of a socket whose pending connect was cancelled may be reused at once."""

    async def main():
        listener, fillers = _full_listener()
        address = TcpAddress(host=LOOPBACK, port=listener.getsockname()[1])
        reused: list[ReusedFds] = []
        with listener:
            probe = socket.socket()
            fd = probe.fileno()
            probe.close()  # the connect's socket gets this number: the lowest free one
            connecting = asyncio.ensure_future(
                _connect_one(socket.AF_INET, 0, listener.getsockname(), address)
            )
            connecting.add_done_callback(lambda _task: reused.append(ReusedFds([fd])))
            await asyncio.sleep(0.05)  # the SYN was dropped: the connect is pending
            connecting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await connecting
            await reused[0].check()
        for filler in fillers:
            filler.close()

    run(main)


def test_a_closed_channel_leaves_its_fd_unwatched(run):
    """A guard: `Channel.close` while a reader and a writer wait unregisters both first."""

    async def main():
        a_sock, b_sock = socket.socketpair()
        with b_sock:
            conn = FakeConnection()
            channel = Channel(a_sock, conn)
            conn.send(bytes(16 << 20))  # more than the socket buffers take: flush() waits
            reading = asyncio.ensure_future(channel.next_event())
            writing = asyncio.ensure_future(channel.flush())
            await asyncio.sleep(0.02)
            assert not reading.done()
            assert not writing.done()
            fd = a_sock.fileno()
            channel.close()
            reused = ReusedFds([fd])
            for waiting in (reading, writing):
                with pytest.raises(ChannelClosedError):
                    await waiting
            await reused.check()

    run(main)


def test_close_socket_unregisters_a_pending_receive(run):
    """Another task waits in ``loop.sock_recv`` when the socket is closed, as the fault proxy
    closes a connection: the fd may be reused at once, and the waiting task ends when cancelled.
    (A plain close leaves the stdlib loop a stale key; uvloop keeps the fd open meanwhile.)"""

    async def main():
        loop = asyncio.get_running_loop()
        client, server = socket.socketpair()
        with client:
            server.setblocking(False)
            receiving = asyncio.ensure_future(loop.sock_recv(server, 1024))
            await asyncio.sleep(0)  # sock_recv now waits for the socket to become readable
            fd = server.fileno()
            close_socket(server)
            reused = ReusedFds([fd])
            receiving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await receiving
            await reused.check()

    run(main)


def test_close_socket_unregisters_a_writer(run):
    """A writer registered with ``add_writer`` (as `netio.Channel` does) on a socket that is not
    writable. (A plain close leaves the stdlib loop a stale key, and makes libuv abort.)"""

    async def main():
        loop = asyncio.get_running_loop()
        client, server = socket.socketpair()
        with client:
            server.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    server.send(bytes(64 << 10))
            loop.add_writer(server.fileno(), lambda: None)
            fd = server.fileno()
            close_socket(server)
            await ReusedFds([fd]).check()

    run(main)


def test_close_socket_is_idempotent_and_works_without_a_loop():
    sock = socket.socket()
    close_socket(sock)
    close_socket(sock)
    assert -1 == sock.fileno()
