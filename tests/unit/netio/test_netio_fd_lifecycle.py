"""File descriptors and the event loop: no socket is lost, no closed fd stays watched.

The kernel hands out the lowest free fd number, so a socket opened right after another was closed
usually gets its number. If the loop still watches the closed fd, the stdlib loop's selector keeps
a stale key for that number: registering the new socket then fails with ``FileNotFoundError``
(epoll MOD on an fd the kernel dropped) or silently never watches it. Each test closes or cancels,
then at once (same loop iteration) opens sockets until one reuses the number and checks the loop
reports it readable. Every test runs on the stdlib loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from netio import TcpAddress, accept, listen
from netio.sockopts import _connect_one

LOOPBACK = "127.0.0.1"
MAX_PAIRS = 64


class _ReusedFd:
    """Socket pairs opened until one end has a given fd number, that end watched for reading."""

    def __init__(self, fd: int) -> None:
        """Open the pairs and register the reader; call with the loop running, without awaiting."""
        self.fd = fd
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        while not any(fd in (a.fileno(), b.fileno()) for a, b in self.pairs):
            assert len(self.pairs) < MAX_PAIRS, f"fd {fd} was not reused"
            self.pairs.append(socket.socketpair())
        a, b = self.pairs[-1]
        peer = b if a.fileno() == fd else a
        peer.send(b"x")
        self.loop = asyncio.get_running_loop()
        self.readable = self.loop.create_future()
        self.loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        if not self.readable.done():
            self.readable.set_result(None)

    async def check(self) -> None:
        """The loop reports the reused fd readable (a stale key would hide it); then clean up."""
        try:
            async with asyncio.timeout(1.0):
                await self.readable
        finally:
            self.loop.remove_reader(self.fd)
            for a, b in self.pairs:
                a.close()
                b.close()


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
        reused = _ReusedFd(fd)
        with pytest.raises(asyncio.CancelledError):
            await accepting
        await reused.check()

    run(main)


def test_a_cancelled_connect_leaves_its_fd_unwatched(run):
    """A guard: the fd of a socket whose pending connect was cancelled may be reused at once."""

    async def main():
        listener, fillers = _full_listener()
        address = TcpAddress(host=LOOPBACK, port=listener.getsockname()[1])
        reused: list[_ReusedFd] = []
        with listener:
            probe = socket.socket()
            fd = probe.fileno()
            probe.close()  # the connect's socket gets this number: the lowest free one
            connecting = asyncio.ensure_future(
                _connect_one(socket.AF_INET, 0, listener.getsockname(), address)
            )
            connecting.add_done_callback(lambda _task: reused.append(_ReusedFd(fd)))
            await asyncio.sleep(0.05)  # the SYN was dropped: the connect is pending
            connecting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await connecting
            await reused[0].check()
        for filler in fillers:
            filler.close()

    run(main)
