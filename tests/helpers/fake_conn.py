"""Sans-IO test doubles for netio's channels, and the channel throughput measurement.

- `FakeConnection`: a small, configurable `netio.SansIOConnection`. Output is queued with `send`
  (optionally with a footer appended only once the body has gone out, as the migration protocol
  does); input lands in a scratch buffer and surfaces as `DataReceived` events; end of stream is
  `StreamEnded`; a timer (one-shot or periodic) surfaces as `TimerFired` and may queue a ping.
- `BulkSender` / `BulkReceiver`: the page data path in miniature. Each frame is a 16-byte header,
  one batch of page data gathered straight from "guest RAM" (a memoryview, never copied) and a
  16-byte footer queued after the body went out; the receiver scatters the data straight into
  its own RAM.
- `measure_channel_throughput` / `measure_raw_throughput`: move the same bytes between two
  processes over loopback, through `netio.Channel` or with blocking ``sendall``/``recv_into``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import socket
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import uvloop

from netio import Channel, TcpAddress, accept, open_connection

if TYPE_CHECKING:
    from collections.abc import Callable

# --------------------------------------------------------------------------- events


@dataclass(frozen=True, kw_only=True, slots=True)
class DataReceived:
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamEnded:
    pass


@dataclass(frozen=True, kw_only=True, slots=True)
class TimerFired:
    at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class FrameReceived:
    index: int


# --------------------------------------------------------------------------- FakeConnection


class FakeConnection:
    """A configurable sans-IO connection for channel tests."""

    def __init__(
        self,
        *,
        recv_chunk_bytes: int = 64 << 10,
        timer_at: float | None = None,
        timer_interval_s: float | None = None,
        ping: bytes | None = None,
    ) -> None:
        self._out: collections.deque[tuple[memoryview, Callable[[], None] | None]] = (
            collections.deque()
        )
        self._pending_bytes = 0
        self._scratch = memoryview(bytearray(recv_chunk_bytes))
        self.events: collections.deque[object] = collections.deque()
        self.received = bytearray()
        self.sent_reports: list[int] = []
        self.eof_at: float | None = None
        self.paused = False
        self.timer_at = timer_at
        self.timer_interval_s = timer_interval_s
        self.ping = ping
        self.timer_calls: list[float] = []
        self.get_timer_calls = 0

    # -- output
    def send(self, body: bytes | memoryview, *, footer: bytes | None = None) -> None:
        """Queue ``body``; once the body was reported sent, queue ``footer`` right after it."""
        view = memoryview(body).cast("B")
        callback = None if footer is None else (lambda: self._insert_next(footer))
        self._out.append((view, callback))
        self._pending_bytes += view.nbytes

    def _insert_next(self, data: bytes) -> None:
        self._out.appendleft((memoryview(data), None))
        self._pending_bytes += len(data)

    @property
    def pending_send_bytes(self) -> int:
        return self._pending_bytes

    def data_to_send(self) -> list[bytes | memoryview]:
        """Queued output up to the first body whose footer is not known yet (as the protocol)."""
        views: list[bytes | memoryview] = []
        for view, callback in self._out:
            views.append(view)
            if callback is not None:
                break
        return views

    def data_sent(self, nbytes: int, now: float) -> None:
        self.sent_reports.append(nbytes)
        self._pending_bytes -= nbytes
        while nbytes:
            view, callback = self._out[0]
            if nbytes < view.nbytes:
                self._out[0] = (view[nbytes:], callback)
                return
            nbytes -= view.nbytes
            self._out.popleft()
            if callback is not None:
                callback()

    # -- input
    def get_buffers(self) -> list[memoryview]:
        return [] if self.paused else [self._scratch]

    def buffers_filled(self, nbytes: int, now: float) -> None:
        data = bytes(self._scratch[:nbytes])
        self.received += data
        self.events.append(DataReceived(data=data))

    def receive_eof(self, now: float) -> None:
        self.eof_at = now
        self.events.append(StreamEnded())

    def next_event(self) -> object | None:
        return self.events.popleft() if self.events else None

    # -- timer
    def get_timer(self) -> float | None:
        self.get_timer_calls += 1
        return self.timer_at

    def handle_timer(self, now: float) -> None:
        if self.timer_at is None or now < self.timer_at:
            return
        self.timer_calls.append(now)
        self.events.append(TimerFired(at=now))
        if self.ping is not None:
            self.send(self.ping)
        self.timer_at = None if self.timer_interval_s is None else now + self.timer_interval_s


# --------------------------------------------------------------------------- bulk data path

HEADER = struct.Struct(">4sIQ")  # magic, frame index, data length
FOOTER = struct.Struct(">4sIQ")  # magic, frame index, checksum stand-in


class BulkSender:
    """Queues frames of page data gathered from ``ram`` (memoryviews, never copied)."""

    def __init__(self, ram: memoryview) -> None:
        self._conn = FakeConnection()
        self._ram = ram
        self._frames = 0

    @property
    def conn(self) -> FakeConnection:
        return self._conn

    def queue_frame(self, batch_bytes: int) -> None:
        offset = (self._frames * batch_bytes) % self._ram.nbytes
        if offset + batch_bytes > self._ram.nbytes:
            offset = 0
        index = self._frames
        self._frames += 1
        self._conn.send(HEADER.pack(b"HDR!", index, batch_bytes))
        self._conn.send(
            self._ram[offset : offset + batch_bytes],
            footer=FOOTER.pack(b"FTR!", index, offset),
        )


class BulkReceiver:
    """Scatters frames straight into ``ram``; one `FrameReceived` event per frame."""

    def __init__(self, ram: memoryview, *, batch_bytes: int, frames: int) -> None:
        self._ram = ram
        self._batch_bytes = batch_bytes
        self._frames = frames
        self._index = 0  # frame being received
        self._offset = 0  # bytes of it received
        self._header = memoryview(bytearray(HEADER.size))
        self._footer = memoryview(bytearray(FOOTER.size))
        self._frame_bytes = HEADER.size + batch_bytes + FOOTER.size
        self.events: collections.deque[object] = collections.deque()

    @property
    def pending_send_bytes(self) -> int:
        return 0

    def data_to_send(self) -> list[bytes | memoryview]:
        return []

    def data_sent(self, nbytes: int, now: float) -> None:
        raise AssertionError("the receiver sends nothing")

    def _data_view(self, index: int) -> memoryview:
        offset = (index * self._batch_bytes) % self._ram.nbytes
        if offset + self._batch_bytes > self._ram.nbytes:
            offset = 0
        return self._ram[offset : offset + self._batch_bytes]

    def get_buffers(self) -> list[memoryview]:
        if self._index >= self._frames:
            return []
        parts = [self._header, self._data_view(self._index), self._footer]
        skip = self._offset
        buffers = []
        for part in parts:
            if skip >= part.nbytes:
                skip -= part.nbytes
                continue
            buffers.append(part[skip:])
            skip = 0
        return buffers

    def buffers_filled(self, nbytes: int, now: float) -> None:
        self._offset += nbytes
        if self._offset == self._frame_bytes:
            magic, index, _ = HEADER.unpack(self._header)
            footer_magic, footer_index, _ = FOOTER.unpack(self._footer)
            if (magic, index, footer_magic, footer_index) != (  # pragma: no cover - a bug
                b"HDR!",
                self._index,
                b"FTR!",
                self._index,
            ):
                raise AssertionError(f"bad frame {bytes(self._header)!r} {bytes(self._footer)!r}")
            self.events.append(FrameReceived(index=self._index))
            self._index += 1
            self._offset = 0

    def receive_eof(self, now: float) -> None:
        self.events.append(StreamEnded())

    def next_event(self) -> object | None:
        return self.events.popleft() if self.events else None

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None


# --------------------------------------------------------------------------- throughput

LoopName = Literal["asyncio", "uvloop"]
_RAM_BYTES = 64 << 20


def _new_loop(loop_name: LoopName) -> asyncio.AbstractEventLoop:
    if loop_name == "uvloop":
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _prefaulted_ram(size_bytes: int) -> memoryview:
    ram = bytearray(size_bytes)
    pattern = bytes(range(256)) * 4096
    for offset in range(0, size_bytes, len(pattern)):
        ram[offset : offset + len(pattern)] = pattern
    return memoryview(ram)


async def _channel_send(port: int, batch_bytes: int, frames: int, window: int) -> None:
    sender = BulkSender(_prefaulted_ram(_RAM_BYTES))
    sock = await open_connection(TcpAddress(host="127.0.0.1", port=port), 5.0)
    channel = Channel(sock, sender.conn)
    queued = 0
    while queued < frames:
        while queued < frames and sender.conn.pending_send_bytes < window * batch_bytes:
            sender.queue_frame(batch_bytes)
            queued += 1
        await channel.flush()
    channel.sock.shutdown(socket.SHUT_WR)
    with contextlib.suppress(OSError):
        channel.sock.recv(1)
    channel.close()


async def _channel_receive(listener: socket.socket, batch_bytes: int, frames: int) -> float:
    receiver = BulkReceiver(_prefaulted_ram(_RAM_BYTES), batch_bytes=batch_bytes, frames=frames)
    sock = await accept(listener)
    channel = Channel(sock, receiver)
    first = await channel.next_event()
    started = time.perf_counter()
    assert isinstance(first, FrameReceived)
    for _ in range(frames - 1):
        event = await channel.next_event()
        assert isinstance(event, FrameReceived), event
    elapsed_s = time.perf_counter() - started
    channel.close()
    return elapsed_s


def _run_in_loop(loop_name: LoopName, coro_factory: Callable[[], object]) -> object:
    loop = _new_loop(loop_name)
    try:
        return loop.run_until_complete(coro_factory())  # type: ignore[arg-type]
    finally:
        loop.close()


def _sender_process(kind: str, loop_name: LoopName, port: int, batch: int, frames: int) -> None:
    if kind == "raw":
        ram = _prefaulted_ram(_RAM_BYTES)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for index in range(frames):
                offset = (index * batch) % _RAM_BYTES
                sock.sendall(ram[offset : offset + batch])
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1)
        return
    _run_in_loop(loop_name, lambda: _channel_send(port, batch, frames, window=4))


def _receiver_process(
    kind: str,
    loop_name: LoopName,
    batch: int,
    frames: int,
    result: multiprocessing.connection.Connection,
) -> None:
    """Listen on 127.0.0.1, report the port, receive, report the elapsed time (or the error)."""
    try:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            result.send(listener.getsockname()[1])
            result.send(_receive(kind, loop_name, listener, batch, frames))
    except BaseException as exc:
        result.send(f"receiver failed: {exc!r}")
        raise


def _receive(
    kind: str, loop_name: LoopName, listener: socket.socket, batch: int, frames: int
) -> float:
    if kind == "raw":
        ram = _prefaulted_ram(_RAM_BYTES)
        conn, _ = listener.accept()
        total = batch * frames
        received = conn.recv_into(ram[:batch])
        started = time.perf_counter()
        while received < total:
            offset = (received % _RAM_BYTES) // batch * batch
            received += conn.recv_into(ram[offset : offset + batch])
        elapsed_s = time.perf_counter() - started
        conn.close()
        return elapsed_s
    listener.setblocking(False)
    elapsed_s = _run_in_loop(loop_name, lambda: _channel_receive(listener, batch, frames))
    assert isinstance(elapsed_s, float)
    return elapsed_s


def _result(
    pipe: multiprocessing.connection.Connection,
    sender: multiprocessing.process.BaseProcess | None,
    deadline: float,
) -> object:
    while not pipe.poll(0.2):
        if (sender is not None and sender.exitcode) or time.monotonic() > deadline:
            raise RuntimeError("the throughput measurement failed or hung")
    result = pipe.recv()
    if isinstance(result, str):
        raise RuntimeError(result)  # noqa: TRY004 - the receiver's error report
    return result


@dataclass(frozen=True, kw_only=True, slots=True)
class Throughput:
    kind: str
    loop: str
    total_bytes: int
    elapsed_s: float

    @property
    def gb_per_s(self) -> float:
        return self.total_bytes / self.elapsed_s / 1e9


def measure_throughput(
    kind: Literal["raw", "channel"],
    loop_name: LoopName = "uvloop",
    *,
    batch_bytes: int = 1 << 20,
    total_bytes: int = 2 << 30,
) -> Throughput:
    """Move ``total_bytes`` in ``batch_bytes`` batches between two processes over loopback.

    ``kind="channel"`` uses `netio.Channel` on both sides (frames of header + gathered page data
    + footer, scattered straight into the receiver's RAM); ``kind="raw"`` is the baseline:
    blocking ``sendall``/``recv_into`` of the bare data. Time is measured at the receiver, from
    the first received frame to the last.
    """
    frames = total_bytes // batch_bytes
    # spawn, not fork: pytest-xdist workers run threads, and a forked child could inherit a
    # lock one of them held.
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe(duplex=False)
    receiver = context.Process(
        target=_receiver_process, args=(kind, loop_name, batch_bytes, frames, child_end)
    )
    receiver.start()
    sender = None
    deadline = time.monotonic() + 120
    try:
        port = _result(parent_end, None, deadline)
        sender = context.Process(
            target=_sender_process, args=(kind, loop_name, port, batch_bytes, frames)
        )
        sender.start()
        elapsed_s = _result(parent_end, sender, deadline)
        assert isinstance(elapsed_s, float)
    finally:
        for process in (sender, receiver):
            if process is not None:
                process.join(30)
                if process.is_alive():
                    process.kill()
    return Throughput(
        kind=kind,
        loop=loop_name if kind == "channel" else "blocking",
        total_bytes=frames * batch_bytes,
        elapsed_s=elapsed_s,
    )


def compare_throughput(*, total_bytes: int = 2 << 30, rounds: int = 3) -> list[Throughput]:
    """Interleave raw and channel runs (both loops) so they share the machine's noise."""
    results = []
    for _ in range(rounds):
        results.append(measure_throughput("raw", total_bytes=total_bytes))
        results.append(measure_throughput("channel", "asyncio", total_bytes=total_bytes))
        results.append(measure_throughput("channel", "uvloop", total_bytes=total_bytes))
    return results


if __name__ == "__main__":
    import statistics
    import sys

    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rows = compare_throughput(rounds=rounds)
    raw = [r.gb_per_s for r in rows if r.kind == "raw"]
    for loop in ("asyncio", "uvloop"):
        rates = [r.gb_per_s for r in rows if r.kind == "channel" and r.loop == loop]
        ratios = [rate / base for rate, base in zip(rates, raw, strict=True)]
        print(
            f"channel/{loop:8} median {statistics.median(rates):.2f} GB/s, "
            f"median ratio to raw {statistics.median(ratios):.2f}, runs "
            + " ".join(f"{rate:.2f}" for rate in rates)
        )
    print(
        f"raw/blocking     median {statistics.median(raw):.2f} GB/s, runs "
        + " ".join(f"{rate:.2f}" for rate in raw)
    )
