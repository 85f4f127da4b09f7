"""Liveness (docs/protocol.md section 4): PING schedule, PONG round-trip time, peer timeout."""

from __future__ import annotations

import pytest
from helpers.pair import ConnectionPair, drain, make_config, sent_bytes

from protocol import (
    DestConnection,
    LocalProtocolError,
    PeerTimedOut,
    PingReceived,
    PongReceived,
    SourceConnection,
    Timeouts,
)

TIMEOUTS = Timeouts(ping_interval_s=1.0, peer_timeout_s=10.0)


def open_pair(now: float = 100.0) -> ConnectionPair:
    pair = ConnectionPair(timeouts=TIMEOUTS, now=now)
    pair.source.send_configuration(make_config())
    pair.source.send_open_return_path()
    pair.to_dest()
    pair.dest.send_open_ack()
    pair.to_source()
    return pair


def test_no_timers_when_disabled():
    source = SourceConnection(timeouts=None, now=0.0)
    source.send_configuration(make_config())
    source.send_open_return_path()
    source.handle_timer(1e9)

    assert source.get_timer() is None
    assert DestConnection(timeouts=None, now=0.0).get_timer() is None
    assert source.next_event() is None


def test_source_pings_once_the_return_path_is_open():
    source = SourceConnection(timeouts=TIMEOUTS, now=100.0)
    assert 110.0 == source.get_timer()  # only the peer timeout: no PING before OPEN_RETURN_PATH
    source.send_configuration(make_config())
    pending = source.pending_send_bytes
    source.handle_timer(100.5)
    assert pending == source.pending_send_bytes  # no PING before the return path
    source.send_open_return_path()

    assert 100.0 == source.get_timer()  # due at once, as QEMU's PING(1) after OPEN_RETURN_PATH
    source.handle_timer(100.5)
    assert 101.5 == source.get_timer()
    dest = DestConnection(timeouts=TIMEOUTS, now=100.0)
    dest.receive_data(sent_bytes(source), 100.5)
    pings = [e for e in drain(dest) if isinstance(e, PingReceived)]
    assert [1] == [p.value for p in pings]


def test_pong_reports_round_trip_time():
    pair = open_pair()
    pair.now = 100.25
    pair.source.handle_timer(100.25)
    pair.to_dest()
    pair.now = 100.75
    events = pair.to_source()

    pongs = [e for e in events if isinstance(e, PongReceived)]
    assert [(1, 0.5)] == [(p.value, p.rtt_s) for p in pongs]


def test_peer_timeout_when_nothing_arrives():
    dest = DestConnection(timeouts=TIMEOUTS, now=0.0)
    assert 10.0 == dest.get_timer()
    dest.handle_timer(9.9)
    assert dest.next_event() is None
    dest.handle_timer(10.0)

    assert PeerTimedOut(idle_s=10.0) == dest.next_event()
    assert dest.get_timer() is None


def test_received_bytes_postpone_the_timeout():
    dest = DestConnection(timeouts=TIMEOUTS, now=0.0)
    dest.receive_data(b"LVMG", 6.0)
    assert 16.0 == dest.get_timer()
    dest.buffers_filled(1, 7.0)
    assert 17.0 == dest.get_timer()


def test_bytes_waiting_unread_postpone_the_timeout():
    """The I/O layer saw the peer's bytes in the socket, unread (this side was stopped)."""
    dest = DestConnection(timeouts=TIMEOUTS, now=0.0)
    dest.peer_bytes_waiting(14.0)  # the deadline (10.0) passed while this side could not read
    dest.handle_timer(14.0)
    assert dest.next_event() is None
    assert 24.0 == dest.get_timer()
    dest.peer_bytes_waiting(3.0)  # an older instant never moves the deadline back
    assert 24.0 == dest.get_timer()
    dest.handle_timer(24.0)
    assert PeerTimedOut(idle_s=10.0) == dest.next_event()


def test_slow_but_moving_link_is_not_dead():
    """Nothing received, but our queued bytes keep going out: no timeout."""
    pair = open_pair(now=0.0)
    source = pair.source
    source.send_section_start(1, "ram", 0, 4, {"ram_size": 16 * 4096, "page_size": 4096})
    source.data_sent(10, 5.0)
    assert 15.0 == source.get_timer() or source.get_timer() < 15.0  # a PING may be due first
    source.handle_timer(12.0)
    assert not [e for e in drain(source) if isinstance(e, PeerTimedOut)]
    source.handle_timer(15.0)
    assert [PeerTimedOut(idle_s=15.0)] == [e for e in drain(source) if isinstance(e, PeerTimedOut)]


def test_stalled_sends_without_return_path_time_out():
    source = SourceConnection(return_path=False, timeouts=TIMEOUTS, now=0.0)
    assert source.get_timer() is None  # nothing queued, nothing expected
    source.send_configuration(make_config())
    assert 10.0 == source.get_timer()
    source.data_sent(4, 3.0)
    assert 13.0 == source.get_timer()
    source.handle_timer(13.0)
    assert PeerTimedOut(idle_s=10.0) == source.next_event()


def test_timers_stop_at_the_end():
    pair = open_pair()
    pair.dest.send_resumed.__self__  # noqa: B018 - the bound method exists
    pair.source.send_abort(3, "cancel")
    pair.to_dest()
    assert pair.dest.get_timer() is None  # ABORT: the main stream is over, nothing expected
    pair.dest.send_failed(11, "cancelled")
    pair.to_source()
    assert pair.source.get_timer() is None


@pytest.mark.parametrize("count", [1, 70])
def test_pings_in_flight_are_bounded(count):
    pair = open_pair()
    for value in range(count):
        pair.source.send_ping(value)
    assert min(count, 64) == len(pair.source._pings)


def test_a_ping_value_already_in_flight_is_refused_and_its_pong_still_counts():
    """Two PINGs with one value would leave the second PONG answering no PING (found by
    test_return_path_any_split_gives_the_same_events): the second send is refused instead."""
    pair = open_pair()
    pair.source.send_ping(0)
    with pytest.raises(LocalProtocolError, match="PING 0 is already in flight"):
        pair.source.send_ping(0)
    pair.to_dest()
    pair.to_source()
    assert not pair.source._pings  # the one PONG answered the one PING
    pair.source.send_ping(0)  # free again
