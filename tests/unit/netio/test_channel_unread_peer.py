"""A side that could not read for a while does not call its peer silent for unread bytes.

The destination's process stopped (SIGSTOP) or its loop blocked past the peer timeout while the
source's frames arrived in its socket: when it runs again, a loop may run the due timer before
it polls for input (uvloop always does; asyncio runs the timer before the woken reader). The
channel peeks first: bytes waiting mean the peer spoke, so the timeout counts from now. A CI run
lost a postcopy migration this way: the destination discarded a stream whose POSTCOPY_RUN
waited, unread, in its socket.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from netio import Channel
from protocol import (
    ConfigurationReceived,
    DestConnection,
    PeerTimedOut,
    SourceConnection,
    StreamStarted,
    Timeouts,
)
from tests.helpers.pair import make_config, sent_bytes
from tests.unit.netio.test_netio_channel import tcp_pair

if TYPE_CHECKING:
    import socket

PEER_TIMEOUT_S = 0.2
BLOCKED_S = 0.4  # the loop stands still this long: past the peer timeout


def _source_bytes() -> bytes:
    source = SourceConnection(timeouts=None, now=0.0)
    source.send_configuration(make_config())
    return sent_bytes(source)


def _blocked_while_the_peer_sends(sock, data: bytes) -> None:
    sock.sendall(data)
    time.sleep(BLOCKED_S)  # the point: this process cannot read meanwhile


async def _reading_destination() -> tuple[socket.socket, Channel, asyncio.Task[object]]:
    """The source's socket, and a destination channel waiting for input, its timer armed."""
    source_sock, dest_sock = await tcp_pair()
    timeouts = Timeouts(ping_interval_s=10.0, peer_timeout_s=PEER_TIMEOUT_S)
    now = asyncio.get_running_loop().time()
    dest = Channel(dest_sock, DestConnection(timeouts=timeouts, now=now))
    reading = asyncio.create_task(dest.next_event())
    await asyncio.sleep(0.05)
    return source_sock, dest, reading


def test_bytes_that_waited_unread_are_not_silence(run):
    async def main() -> None:
        source_sock, dest, reading = await _reading_destination()
        try:
            loop = asyncio.get_running_loop()
            loop.call_soon(_blocked_while_the_peer_sends, source_sock, _source_bytes())
            events = [await reading]
            while not isinstance(events[-1], ConfigurationReceived | PeerTimedOut):
                events.append(await dest.next_event())
            assert isinstance(events[0], StreamStarted)
            assert isinstance(events[-1], ConfigurationReceived), events
        finally:
            dest.close()
            source_sock.close()

    run(main)


def test_a_peer_that_sends_nothing_still_times_out(run):
    async def main() -> None:
        source_sock, dest, reading = await _reading_destination()
        try:
            asyncio.get_running_loop().call_soon(time.sleep, BLOCKED_S)
            event = await reading
            assert isinstance(event, PeerTimedOut), event
            assert event.idle_s >= BLOCKED_S
        finally:
            dest.close()
            source_sock.close()

    run(main)
