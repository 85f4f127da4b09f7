"""FileChannel: a sans-IO connection over a file (file: migrations), on both event loops."""

from __future__ import annotations

import asyncio

import pytest

import netio.filechannel
from netio import ChannelClosedError, ChannelError, FileAddress, FileChannel
from netio.filechannel import CHUNK_BYTES, _bounded
from tests.helpers.fake_conn import DataReceived, FakeConnection, StreamEnded, TimerFired


def pattern(nbytes: int) -> bytes:
    return (bytes(range(251)) * (nbytes // 251 + 1))[:nbytes]


async def read_all(channel: FileChannel, conn: FakeConnection) -> list[object]:
    events = []
    while not events or not isinstance(events[-1], StreamEnded):
        events.append(await channel.next_event())
    return events


def test_write_then_read_back(run, tmp_path):
    async def main():
        address = FileAddress(path=str(tmp_path / "vm.mig"))
        out_conn = FakeConnection()
        body = pattern(3 * CHUNK_BYTES + 12345)
        out_conn.send(b"HEAD")
        out_conn.send(memoryview(body), footer=b"FOOT")
        writer = FileChannel.for_writing(address, out_conn)
        await writer.flush()
        writer.close()
        writer.close()

        assert b"HEAD" + body + b"FOOT" == (tmp_path / "vm.mig").read_bytes()
        assert 4 + len(body) + 4 == writer.bytes_sent

        in_conn = FakeConnection(recv_chunk_bytes=1 << 20)
        reader = FileChannel.for_reading(address, in_conn)
        events = await read_all(reader, in_conn)
        reader.close()

        assert b"HEAD" + body + b"FOOT" == bytes(in_conn.received)
        assert len(in_conn.received) == reader.bytes_received
        assert isinstance(events[-1], StreamEnded)
        assert reader.at_eof
        with pytest.raises(ChannelClosedError):
            await reader.next_event()

    run(main)


def test_offset_keeps_what_precedes_it_and_drops_what_follows(run, tmp_path):
    async def main():
        path = tmp_path / "disk.img"
        path.write_bytes(b"LIBVIRT-HEADER" + b"stale stream bytes" * 100)
        address = FileAddress(path=str(path), offset_bytes=14)
        out_conn = FakeConnection()
        out_conn.send(b"new stream")
        writer = FileChannel.for_writing(address, out_conn)
        await writer.flush()
        writer.close()

        assert b"LIBVIRT-HEADERnew stream" == path.read_bytes()

        in_conn = FakeConnection()
        reader = FileChannel.for_reading(address, in_conn)
        await read_all(reader, in_conn)
        reader.close()
        assert b"new stream" == bytes(in_conn.received)

    run(main)


def test_large_writes_and_reads_yield_to_other_tasks(run, tmp_path, monkeypatch):
    monkeypatch.setattr(netio.filechannel, "CHUNK_BYTES", 256 << 10)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticking = asyncio.ensure_future(ticker())
        address = FileAddress(path=str(tmp_path / "big"))
        out_conn = FakeConnection()
        out_conn.send(pattern(8 << 20))
        writer = FileChannel.for_writing(address, out_conn)
        await asyncio.sleep(0)
        before = ticks
        await writer.flush()
        writer.close()
        written_ticks = ticks - before

        in_conn = FakeConnection(recv_chunk_bytes=4 << 20)
        reader = FileChannel.for_reading(address, in_conn)
        before = ticks
        await read_all(reader, in_conn)
        reader.close()
        read_ticks = ticks - before
        ticking.cancel()
        await asyncio.gather(ticking, return_exceptions=True)

        assert written_ticks >= 30
        assert read_ticks >= 30
        assert pattern(8 << 20) == bytes(in_conn.received)

    run(main)


def test_timer_is_polled_between_chunks_and_while_idle(run, tmp_path, monkeypatch):
    monkeypatch.setattr(netio.filechannel, "CHUNK_BYTES", 64 << 10)

    async def main():
        loop = asyncio.get_running_loop()
        address = FileAddress(path=str(tmp_path / "t"))
        out_conn = FakeConnection(timer_at=loop.time() - 1)  # already due
        out_conn.send(pattern(1 << 20))
        writer = FileChannel.for_writing(address, out_conn)
        await writer.flush()
        writer.close()

        assert 1 == len(out_conn.timer_calls)

        in_conn = FakeConnection(timer_at=loop.time() + 0.03)
        in_conn.paused = True
        reader = FileChannel.for_reading(address, in_conn)
        assert isinstance(await reader.next_event(), TimerFired)
        in_conn.paused = False
        assert isinstance(await reader.next_event(), DataReceived)
        reader.close()

    run(main)


def test_a_stalled_connection_without_timer_is_an_error(run, tmp_path):
    async def main():
        path = tmp_path / "s"
        path.write_bytes(b"abc")
        conn = FakeConnection()
        conn.paused = True
        reader = FileChannel.for_reading(FileAddress(path=str(path)), conn)
        with pytest.raises(ChannelClosedError, match="connection takes no bytes"):
            await reader.next_event()
        reader.close()

    run(main)


def test_missing_file_names_the_address(run, tmp_path):
    async def main():
        address = FileAddress(path=str(tmp_path / "absent.mig"))
        with pytest.raises(ChannelError) as caught:
            FileChannel.for_reading(address, FakeConnection())
        assert (
            f"cannot open file:{tmp_path}/absent.mig for reading: No such file or directory"
            == str(caught.value)
        )
        with pytest.raises(ChannelError, match=r"cannot open file:.* for writing: No such file"):
            FileChannel.for_writing(
                FileAddress(path=str(tmp_path / "no" / "dir")), FakeConnection()
            )

    run(main)


def test_write_errors_raise_channel_closed(run, tmp_path):
    async def main():
        address = FileAddress(path=str(tmp_path / "w"))
        conn = FakeConnection()
        writer = FileChannel.for_writing(address, conn)
        writer.close()
        conn.send(b"x")
        with pytest.raises(ChannelClosedError, match="is closed"):
            await writer.flush()
        assert "closed" in repr(writer)

    run(main)


def test_flush_nowait_and_abort_mirror_the_socket_channel(run, tmp_path):
    async def main():
        address = FileAddress(path=str(tmp_path / "n"))
        conn = FakeConnection()
        conn.send(pattern(3000))
        writer = FileChannel.for_writing(address, conn)

        assert 1000 == writer.flush_nowait(1000)
        assert 2000 == writer.flush_nowait()
        assert 0 == writer.flush_nowait()
        writer.abort()
        writer.abort()
        assert writer.closed
        assert pattern(3000) == (tmp_path / "n").read_bytes()

    run(main)


def test_bounded_takes_at_most_iov_max_buffers_and_the_byte_limit():
    buffers = [b"abc"] * 2000

    taken = _bounded(buffers, 10)
    assert [b"abc", b"abc", b"abc", b"a"] == [bytes(b) for b in taken]

    taken = _bounded(buffers, 1 << 20)
    assert 1024 == len(taken)

    assert [b"ab"] == [bytes(b) for b in _bounded([memoryview(b"abcdef")], 2)]
