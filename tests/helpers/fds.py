"""Check that closed fd numbers can be reused at once with the running event loop.

The kernel hands out the lowest free fd number, so a socket opened right after another was closed
usually gets its number. If the loop still watches the closed fd, the stdlib loop's selector keeps
a stale key for that number: registering the new socket then fails with ``FileNotFoundError``
(epoll MOD on an fd the kernel dropped) or, when the events do not change, silently never watches
it. `ReusedFds` opens sockets until they hold given numbers and checks the loop watches them.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

MAX_PAIRS: Final = 64


class ReusedFds:
    """Socket pairs opened until they hold given fd numbers, those ends watched for reading."""

    def __init__(self, fds: Iterable[int]) -> None:
        """Open the pairs and register the readers.

        Call it with the loop running and without awaiting in between, right after the close
        being tested, so that nothing the loop does later can hide a stale registration.
        """
        self.fds = set(fds)
        self.pairs = _pairs_holding(self.fds)
        self.loop = asyncio.get_running_loop()
        self.readable: dict[int, asyncio.Future[None]] = {}
        try:
            for a, b in self.pairs:
                for end, peer in ((a, b), (b, a)):
                    if end.fileno() in self.fds:
                        peer.send(b"x")
                        self._watch(end.fileno())
        except BaseException:
            self._close()
            raise

    def _watch(self, fd: int) -> None:
        waiter = self.loop.create_future()
        self.loop.add_reader(fd, lambda: waiter.done() or waiter.set_result(None))
        self.readable[fd] = waiter

    async def check(self, timeout_s: float = 1.0) -> None:
        """Each reused fd is reported readable (a stale key would hide it); then clean up."""
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*self.readable.values())
        finally:
            self._close()

    def _close(self) -> None:
        for fd in self.readable:
            self.loop.remove_reader(fd)
        for a, b in self.pairs:
            a.close()
            b.close()


def _pairs_holding(fds: set[int]) -> list[tuple[socket.socket, socket.socket]]:
    """Open socket pairs until their ends hold every number in ``fds``."""
    pairs: list[tuple[socket.socket, socket.socket]] = []
    while not fds <= {sock.fileno() for pair in pairs for sock in pair}:
        if len(pairs) == MAX_PAIRS:
            for a, b in pairs:
                a.close()
                b.close()
            raise AssertionError(f"fds {sorted(fds)} were not all reused (still open?)")
        pairs.append(socket.socketpair())
    return pairs
