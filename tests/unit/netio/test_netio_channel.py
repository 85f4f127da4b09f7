"""Channel: a sans-IO connection over a real non-blocking socket, on both event loops."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

import netio.channel
from netio import (
    IOV_MAX,
    Channel,
    ChannelClosedError,
    ChannelError,
    TcpAddress,
    UnixAddress,
    accept,
    bound_address,
    listen,
    open_connection,
)
from tests.helpers.fake_conn import DataReceived, FakeConnection, StreamEnded, TimerFired


class RecordingSocket(socket.socket):
    """A socket that records how many buffers each sendmsg/recvmsg_into call got."""

    def __init__(self, fileno: int) -> None:
        super().__init__(fileno=fileno)
        self.send_buffer_counts: list[int] = []
        self.receive_buffer_counts: list[int] = []

    def sendmsg(self, buffers, *args):
        buffers = list(buffers)
        self.send_buffer_counts.append(len(buffers))
        return super().sendmsg(buffers, *args)

    def recvmsg_into(self, buffers, *args):
        buffers = list(buffers)
        self.receive_buffer_counts.append(len(buffers))
        return super().recvmsg_into(buffers, *args)


async def tcp_pair(*, buffer_bytes: int | None = None) -> tuple[socket.socket, socket.socket]:
    listener = listen(TcpAddress(host="127.0.0.1", port=0))
    with listener:
        client = await open_connection(bound_address(listener), 2.0)
        server = await accept(listener)
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if buffer_bytes is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
    return client, server


async def unix_pair(path: str) -> tuple[socket.socket, socket.socket]:
    listener = listen(UnixAddress(path=path))
    with listener:
        client = await open_connection(UnixAddress(path=path), 2.0)
        server = await accept(listener)
    return client, server


async def receive_until(channel: Channel, conn: FakeConnection, nbytes: int) -> list[object]:
    events = []
    while len(conn.received) < nbytes:
        events.append(await channel.next_event())
    return events


def count_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def pattern(nbytes: int, seed: int = 0) -> bytes:
    block = bytes((seed + i) % 251 for i in range(251))
    return (block * (nbytes // 251 + 1))[:nbytes]


# --------------------------------------------------------------------------- data


def test_bytes_arrive_in_order_and_are_counted(run):
    async def main():
        a_sock, b_sock = await tcp_pair()
        a_conn, b_conn = FakeConnection(), FakeConnection()
        a, b = Channel(a_sock, a_conn), Channel(b_sock, b_conn)
        payload = [b"head", memoryview(bytearray(b"middle")), pattern(100_000)]
        for buffer in payload:
            a_conn.send(buffer)
        await a.flush()
        events = await receive_until(b, b_conn, 100_010)

        assert b"".join(bytes(p) for p in payload) == bytes(b_conn.received)
        assert all(isinstance(event, DataReceived) for event in events)
        assert 100_010 == a.bytes_sent
        assert 100_010 == b.bytes_received
        assert 0 == a_conn.pending_send_bytes
        assert 100_010 == sum(a_conn.sent_reports)
        a.close()
        b.close()

    run(main)


def test_works_over_unix_sockets(run, sock_dir):
    async def main():
        a_sock, b_sock = await unix_pair(str(sock_dir / "c"))
        a_conn, b_conn = FakeConnection(), FakeConnection()
        a, b = Channel(a_sock, a_conn), Channel(b_sock, b_conn)
        a_conn.send(b"over unix")
        await a.flush()
        await receive_until(b, b_conn, 9)

        assert b"over unix" == bytes(b_conn.received)
        assert "unix:" in repr(a)
        a.close()
        b.close()

    run(main)


def test_partial_sends_re_slice_and_iov_max_is_respected(run):
    """Thousands of odd-sized buffers through small kernel buffers: every byte, in order."""

    async def main():
        a_raw, b_sock = await tcp_pair(buffer_bytes=64 << 10)
        a_sock = RecordingSocket(a_raw.detach())
        a_conn, b_conn = FakeConnection(), FakeConnection(recv_chunk_bytes=7777)
        a, b = Channel(a_sock, a_conn), Channel(b_sock, b_conn)
        chunks = [pattern(1 + (i * 37) % 900, seed=i) for i in range(3000)]
        for chunk in chunks:
            a_conn.send(chunk)
        expected = b"".join(chunks)
        sending = asyncio.ensure_future(a.flush())
        await receive_until(b, b_conn, len(expected))
        await sending

        assert expected == bytes(b_conn.received)
        assert max(a_sock.send_buffer_counts) == IOV_MAX
        assert len(a_sock.send_buffer_counts) > 3
        assert len(expected) == a.bytes_sent == b.bytes_received
        a.close()
        b.close()

    run(main)


def test_receives_scatter_into_at_most_iov_max_buffers(run):
    class ManyBuffers(FakeConnection):
        def __init__(self) -> None:
            super().__init__()
            self.store = bytearray(3000 * 3)

        def get_buffers(self):
            view = memoryview(self.store)
            start = len(self.received)
            return [view[i : i + 3] for i in range(start, len(self.store), 3)]

        def buffers_filled(self, nbytes, now):
            start = len(self.received)
            self.received += self.store[start : start + nbytes]
            self.events.append(DataReceived(data=b""))

    async def main():
        a_sock, b_raw = await tcp_pair()
        b_sock = RecordingSocket(b_raw.detach())
        a_conn, b_conn = FakeConnection(), ManyBuffers()
        a, b = Channel(a_sock, a_conn), Channel(b_sock, b_conn)
        a_conn.send(pattern(9000))
        await a.flush()
        await receive_until(b, b_conn, 9000)

        assert pattern(9000) == bytes(b_conn.store)
        assert max(b_sock.receive_buffer_counts) == IOV_MAX
        a.close()
        b.close()

    run(main)


def test_footer_queued_after_the_body_went_out_follows_it(run):
    async def main():
        a_sock, b_sock = await tcp_pair(buffer_bytes=64 << 10)
        a_conn, b_conn = FakeConnection(), FakeConnection()
        a, b = Channel(a_sock, a_conn), Channel(b_sock, b_conn)
        body = pattern(300_000)
        a_conn.send(b"HEADER")
        a_conn.send(body, footer=b"FOOTER")
        a_conn.send(b"NEXT")
        sending = asyncio.ensure_future(a.flush())
        await receive_until(b, b_conn, 6 + len(body) + 6 + 4)
        await sending

        assert b"HEADER" + body + b"FOOTER" + b"NEXT" == bytes(b_conn.received)
        a.close()
        b.close()

    run(main)


def test_concurrent_reader_and_writer_tasks_in_both_directions(run):
    async def main():
        a_sock, b_sock = await tcp_pair(buffer_bytes=64 << 10)
        a_conn, b_conn = FakeConnection(), FakeConnection()
        a, b = Channel(a_sock, a_conn), Channel(b_sock, b_conn)
        to_b, to_a = pattern(2_000_000, 1), pattern(1_500_000, 2)
        a_conn.send(to_b)
        b_conn.send(to_a)
        await asyncio.gather(
            a.flush(),
            b.flush(),
            receive_until(a, a_conn, len(to_a)),
            receive_until(b, b_conn, len(to_b)),
        )

        assert to_a == bytes(a_conn.received)
        assert to_b == bytes(b_conn.received)
        a.close()
        b.close()

    run(main)


def test_two_concurrent_flushes_both_wait_for_everything(run):
    async def main():
        a_sock, b_sock = await tcp_pair(buffer_bytes=64 << 10)
        a_conn, b_conn = FakeConnection(), FakeConnection()
        a, b = Channel(a_sock, a_conn), Channel(b_sock, b_conn)
        a_conn.send(pattern(500_000))
        reading = asyncio.ensure_future(receive_until(b, b_conn, 500_000))
        await asyncio.gather(a.flush(), a.flush())

        assert 0 == a_conn.pending_send_bytes
        await reading
        a.close()
        b.close()

    run(main)


def test_second_concurrent_next_event_is_refused(run):
    async def main():
        a_sock, b_sock = await tcp_pair()
        b = Channel(b_sock, FakeConnection())
        first = asyncio.ensure_future(b.next_event())
        await asyncio.sleep(0.01)
        with pytest.raises(ChannelError, match=r"next_event\(\) on tcp:127.0.0.1:\d+ is already"):
            await b.next_event()
        b.close()
        with pytest.raises(ChannelClosedError):
            await first
        a_sock.close()

    run(main)


def test_flush_nowait_sends_what_the_kernel_takes(run):
    async def main():
        a_sock, b_sock = await tcp_pair(buffer_bytes=64 << 10)
        a_conn = FakeConnection()
        a = Channel(a_sock, a_conn)
        a_conn.send(pattern(4_000_000))
        sent = a.flush_nowait()

        assert 0 < sent < 4_000_000
        assert sent == a.bytes_sent
        assert 0 == a.flush_nowait()
        a.close()
        b_sock.close()

    run(main)


# --------------------------------------------------------------------------- end of stream


def test_end_of_stream_is_an_event_then_the_channel_is_done(run):
    async def main():
        a_sock, b_sock = await tcp_pair()
        b_conn = FakeConnection()
        b = Channel(b_sock, b_conn)
        a_sock.sendall(b"last words")
        a_sock.close()
        events = await receive_until(b, b_conn, 10)
        events.append(await b.next_event())

        assert isinstance(events[-1], StreamEnded)
        assert b.at_eof
        assert b.last_error is None
        with pytest.raises(ChannelClosedError, match="ended and the connection reported no"):
            await b.next_event()
        b.close()

    run(main)


def test_connection_reset_is_fed_as_eof_and_kept_in_last_error(run):
    async def main():
        a_sock, b_sock = await tcp_pair()
        a = Channel(a_sock, FakeConnection())
        b = Channel(b_sock, FakeConnection())
        a.abort()

        assert isinstance(await b.next_event(), StreamEnded)
        assert isinstance(b.last_error, ConnectionResetError)
        b.close()

    run(main)


def test_send_error_raises_channel_closed_and_keeps_last_error(run):
    async def main():
        a_sock, b_sock = await tcp_pair()
        a_conn = FakeConnection()
        a = Channel(a_sock, a_conn)
        b_sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        b_sock.close()
        await asyncio.sleep(0.05)
        a_conn.send(pattern(1_000_000))
        with pytest.raises(
            ChannelClosedError, match=r"sending to tcp:127\.0\.0\.1:\d+ failed"
        ) as caught:
            await a.flush()

        assert isinstance(a.last_error, ConnectionResetError | BrokenPipeError)
        assert caught.value.__cause__ is a.last_error
        with pytest.raises(ChannelClosedError, match="failed earlier"):
            a.flush_nowait()
        a.close()

    run(main)


# --------------------------------------------------------------------------- timer


def test_timer_fires_while_waiting_for_input_and_its_output_is_sent(run):
    async def main():
        a_sock, b_sock = await tcp_pair()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.05
        a_conn = FakeConnection(timer_at=deadline, ping=b"PING")
        b_conn = FakeConnection()
        a, b = Channel(a_sock, a_conn), Channel(b_sock, b_conn)
        event = await a.next_event()
        await receive_until(b, b_conn, 4)

        assert isinstance(event, TimerFired)
        assert [event.at] == a_conn.timer_calls
        assert event.at >= deadline
        assert b"PING" == bytes(b_conn.received)
        a.close()
        b.close()

    run(main)


def test_periodic_timer_keeps_running_while_flush_waits(run):
    async def main():
        a_sock, b_sock = await tcp_pair(buffer_bytes=64 << 10)
        loop = asyncio.get_running_loop()
        a_conn = FakeConnection(timer_at=loop.time() + 0.02, timer_interval_s=0.02)
        b_conn = FakeConnection()
        a, b = Channel(a_sock, a_conn), Channel(b_sock, b_conn)
        a_conn.send(pattern(2_000_000))
        flushing = asyncio.ensure_future(a.flush())
        await asyncio.sleep(0.15)  # nobody reads: the flush is stuck on a full kernel buffer

        assert not flushing.done()
        assert len(a_conn.timer_calls) >= 3
        await receive_until(b, b_conn, 2_000_000)
        await flushing
        a.close()
        b.close()

    run(main)


def test_earlier_deadline_rearms_the_timer(run):
    async def main():
        a_sock, b_sock = await tcp_pair()
        loop = asyncio.get_running_loop()
        a_conn = FakeConnection(timer_at=loop.time() + 60)
        a = Channel(a_sock, a_conn)
        waiting = asyncio.ensure_future(a.next_event())
        await asyncio.sleep(0.01)
        a_conn.timer_at = loop.time() + 0.03
        b_sock.sendall(b"x")  # any interaction re-reads get_timer()

        assert isinstance(await waiting, DataReceived)
        assert isinstance(await a.next_event(), TimerFired)
        a.close()
        b_sock.close()

    run(main)


def test_later_deadline_does_not_fire_early(run):
    async def main():
        a_sock, b_sock = await tcp_pair()
        loop = asyncio.get_running_loop()
        a_conn = FakeConnection(timer_at=loop.time() + 0.02)
        a = Channel(a_sock, a_conn)
        later = loop.time() + 0.1
        a_conn.timer_at = later  # pushed back without the channel noticing yet
        event = await a.next_event()

        assert isinstance(event, TimerFired)
        assert event.at >= later
        assert [event.at] == a_conn.timer_calls
        a.close()
        b_sock.close()

    run(main)


def test_no_deadline_cancels_the_timer(run):
    async def main():
        a_sock, b_sock = await tcp_pair()
        loop = asyncio.get_running_loop()
        a_conn = FakeConnection(timer_at=loop.time() + 0.05)
        a = Channel(a_sock, a_conn)
        a_conn.timer_at = None
        b_sock.sendall(b"x")
        await a.next_event()
        await asyncio.sleep(0.1)

        assert [] == a_conn.timer_calls
        a.close()
        b_sock.close()

    run(main)


def test_paused_connection_waits_for_the_timer(run):
    async def main():
        a_sock, b_sock = await tcp_pair()
        loop = asyncio.get_running_loop()
        a_conn = FakeConnection(timer_at=loop.time() + 0.03)
        a_conn.paused = True
        a = Channel(a_sock, a_conn)
        b_sock.sendall(b"queued")

        assert isinstance(await a.next_event(), TimerFired)
        assert b"" == bytes(a_conn.received)
        assert 1 == len(a_conn.bytes_waiting_at)  # told, before the timer: the peer spoke
        a_conn.paused = False
        assert DataReceived(data=b"queued") == await a.next_event()
        a.close()
        b_sock.close()

    run(main)


def test_a_failing_timer_handler_surfaces_in_next_event(run):
    class Broken(FakeConnection):
        def handle_timer(self, now):
            raise RuntimeError("protocol bug")

    async def main():
        a_sock, b_sock = await tcp_pair()
        a = Channel(a_sock, Broken(timer_at=asyncio.get_running_loop().time() + 0.01))
        with pytest.raises(ChannelError, match="timer handler failed") as caught:
            await a.next_event()

        assert isinstance(caught.value.__cause__, RuntimeError)
        a.close()
        b_sock.close()

    run(main)


def test_custom_clock_is_passed_to_the_connection(run):
    async def main():
        a_sock, b_sock = await tcp_pair()
        loop = asyncio.get_running_loop()
        offset_s = 1000.0
        a_conn = FakeConnection(timer_at=loop.time() + offset_s + 0.02)
        a = Channel(a_sock, a_conn, clock=lambda: loop.time() + offset_s)
        event = await a.next_event()

        assert isinstance(event, TimerFired)
        assert event.at >= a_conn.timer_calls[0] > offset_s
        a.close()
        b_sock.close()

    run(main)


# --------------------------------------------------------------------------- auto flush


class Acker(FakeConnection):
    """Answers every received chunk with b"ACK" (like PONG or a section ack)."""

    def buffers_filled(self, nbytes, now):
        super().buffers_filled(nbytes, now)
        self.send(b"ACK")


def test_replies_queued_while_receiving_go_out_without_flush(run):
    async def main():
        a_sock, b_sock = await tcp_pair()
        a_conn, b_conn = FakeConnection(), Acker()
        a, b = Channel(a_sock, a_conn), Channel(b_sock, b_conn)
        a_conn.send(b"PING")
        await a.flush()
        await b.next_event()
        await receive_until(a, a_conn, 3)

        assert b"ACK" == bytes(a_conn.received)
        a.close()
        b.close()

    run(main)


def test_auto_flush_can_be_turned_off(run):
    async def main():
        a_sock, b_sock = await tcp_pair()
        b_conn = Acker()
        b = Channel(b_sock, b_conn, auto_flush=False)
        a_sock.sendall(b"PING")
        await b.next_event()

        assert 3 == b_conn.pending_send_bytes
        await b.flush()
        assert 0 == b_conn.pending_send_bytes
        b.close()
        a_sock.close()

    run(main)


# --------------------------------------------------------------------------- fairness


def test_a_long_receive_yields_to_other_tasks(run, monkeypatch):
    monkeypatch.setattr(netio.channel, "YIELD_EVERY_BYTES", 64 << 10)

    async def main():
        a_sock, b_sock = await tcp_pair(buffer_bytes=4 << 20)
        a_sock.setblocking(True)
        a_sock.sendall(pattern(2_000_000))  # all of it waits in the kernel before reading
        b_conn = FakeConnection(recv_chunk_bytes=16 << 10)
        b = Channel(b_sock, b_conn)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticking = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        before = ticks
        await receive_until(b, b_conn, 2_000_000)
        ticking.cancel()
        await asyncio.gather(ticking, return_exceptions=True)

        assert ticks - before >= 10
        b.close()
        a_sock.close()

    run(main)


# --------------------------------------------------------------------------- closing


def test_close_wakes_a_waiting_reader_and_writer(run):
    async def main():
        a_sock, b_sock = await tcp_pair(buffer_bytes=64 << 10)
        a_conn = FakeConnection()
        a = Channel(a_sock, a_conn)
        a_conn.send(pattern(2_000_000))
        reading = asyncio.ensure_future(a.next_event())
        writing = asyncio.ensure_future(a.flush())
        await asyncio.sleep(0.02)
        a.close()
        a.close()  # idempotent

        with pytest.raises(ChannelClosedError, match="is closed"):
            await reading
        with pytest.raises(ChannelClosedError, match="is closed"):
            await writing
        assert a.closed
        assert -1 == a.sock.fileno()
        b_sock.close()

    run(main)


def test_operations_after_close_raise(run):
    async def main():
        a_sock, b_sock = await tcp_pair()
        a = Channel(a_sock, FakeConnection())
        a.abort()
        a.abort()

        with pytest.raises(ChannelClosedError):
            await a.next_event()
        with pytest.raises(ChannelClosedError):
            await a.flush()
        with pytest.raises(ChannelClosedError):
            a.flush_nowait()
        assert "closed" in repr(a)
        b_sock.close()

    run(main)


def test_close_cancels_the_timer(run):
    async def main():
        a_sock, b_sock = await tcp_pair()
        a_conn = FakeConnection(timer_at=asyncio.get_running_loop().time() + 0.02)
        a = Channel(a_sock, a_conn)
        a.close()
        await asyncio.sleep(0.05)

        assert [] == a_conn.timer_calls
        b_sock.close()

    run(main)


def test_channel_owns_a_fresh_fd_per_connection(run):
    async def main():
        before = count_fds()
        for _ in range(20):
            a_sock, b_sock = await tcp_pair()
            Channel(a_sock, FakeConnection()).close()
            Channel(b_sock, FakeConnection()).abort()

        assert before == count_fds()

    run(main)


class _Guard:
    """A send guard that records whether it is held."""

    def __init__(self) -> None:
        self.held = False
        self.entered = 0

    def __enter__(self) -> None:
        self.held = True
        self.entered += 1

    def __exit__(self, *exc: object) -> None:
        self.held = False


def test_the_send_guard_is_held_while_the_kernel_copies_and_the_connection_consumes(run):
    async def main():
        a_sock, b_sock = await tcp_pair()
        a_conn, b_conn = FakeConnection(), FakeConnection()
        a, b = Channel(a_sock, a_conn), Channel(b_sock, b_conn)
        guard = _Guard()
        a.send_guard = guard
        consumed_under_guard: list[bool] = []
        data_sent = a_conn.data_sent

        def noting(nbytes, now=None):
            consumed_under_guard.append(guard.held)
            data_sent(nbytes, now)

        a_conn.data_sent = noting
        a_conn.send(pattern(300_000))
        await a.flush()
        await receive_until(b, b_conn, 300_000)

        assert guard.entered >= 1
        assert consumed_under_guard
        assert all(consumed_under_guard)
        assert not guard.held
        a.close()
        b.close()

    run(main)
