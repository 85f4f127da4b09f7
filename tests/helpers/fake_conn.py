"""Sans-IO test doubles for netio's channels, and the channel throughput measurement.

- `FakeConnection`: a small, configurable `netio.SansIOConnection`. Output is queued with `send`
  (optionally with a footer appended only once the body has gone out, as the migration protocol
  does); input lands in a scratch buffer and surfaces as `DataReceived` events; end of stream is
  `StreamEnded`; a timer (one-shot or periodic) surfaces as `TimerFired` and may queue a ping.
- `BulkSender` / `BulkReceiver`: the page data path in miniature. Each frame is a 16-byte header,
  one batch of page data gathered straight from "guest RAM" (a memoryview, never copied) and a
  16-byte footer queued after the body went out; the receiver scatters the data straight into
  its own RAM.
- `measure_throughput`: move the same bytes between two processes over loopback, through
  `netio.Channel` or with blocking ``sendall``/``recv_into``; each side reports what it counted
  and a digest of the RAM it sent from or received into.
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

import numpy as np
import uvloop
import xxhash

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
        self.bytes_waiting_at: list[float] = []  # peer_bytes_waiting calls
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

    def peer_bytes_waiting(self, now: float) -> None:
        self.bytes_waiting_at.append(now)

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
FOOTER = struct.Struct(">4sIQ")  # magic, frame index, offset of the data in RAM


def frame_offset(index: int, batch_bytes: int, ram_bytes: int) -> int:
    """Where frame ``index``'s data lies in RAM, on both sides (batches wrap around RAM)."""
    per_ram = ram_bytes // batch_bytes
    return (index % per_ram) * batch_bytes


def ram_digest(ram: memoryview, frames: int, batch_bytes: int) -> str:
    """xxh3-128 of the part of RAM that ``frames`` batches cover (from offset 0)."""
    covered = min(frames, ram.nbytes // batch_bytes) * batch_bytes
    return xxhash.xxh3_128_hexdigest(ram[:covered])


class BulkSender:
    """Queues frames of page data gathered from ``ram`` (memoryviews, never copied)."""

    def __init__(self, ram: memoryview) -> None:
        self._conn = FakeConnection()
        self._ram = ram
        self.frames_queued = 0

    @property
    def conn(self) -> FakeConnection:
        return self._conn

    def queue_frame(self, batch_bytes: int) -> None:
        index = self.frames_queued
        offset = frame_offset(index, batch_bytes, self._ram.nbytes)
        self.frames_queued += 1
        self._conn.send(HEADER.pack(b"HDR!", index, batch_bytes))
        self._conn.send(
            self._ram[offset : offset + batch_bytes],
            footer=FOOTER.pack(b"FTR!", index, offset),
        )


class BulkReceiver:
    """Scatters frames straight into ``ram`` until the stream ends; one `FrameReceived` each.

    It takes any number of frames: how many arrived (``frames_received``), how many page bytes
    they carried (``page_bytes``) and how many bytes of an incomplete frame the stream ended in
    (``truncated_bytes``) are what it counted, not what it was told to expect.
    """

    def __init__(self, ram: memoryview, *, batch_bytes: int) -> None:
        self._ram = ram
        self._batch_bytes = batch_bytes
        self._offset = 0  # bytes of the current frame received
        self._header = memoryview(bytearray(HEADER.size))
        self._footer = memoryview(bytearray(FOOTER.size))
        self._frame_bytes = HEADER.size + batch_bytes + FOOTER.size
        self.frames_received = 0
        self.page_bytes = 0
        self.truncated_bytes = 0
        self.events: collections.deque[object] = collections.deque()

    @property
    def pending_send_bytes(self) -> int:
        return 0

    def data_to_send(self) -> list[bytes | memoryview]:
        return []

    def data_sent(self, nbytes: int, now: float) -> None:
        raise AssertionError("the receiver sends nothing")

    def _data_offset(self) -> int:
        return frame_offset(self.frames_received, self._batch_bytes, self._ram.nbytes)

    def get_buffers(self) -> list[memoryview]:
        offset = self._data_offset()
        parts = [self._header, self._ram[offset : offset + self._batch_bytes], self._footer]
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
            index = self.frames_received
            magic, header_index, data_len = HEADER.unpack(self._header)
            footer_magic, footer_index, offset = FOOTER.unpack(self._footer)
            if (magic, header_index, data_len, footer_magic, footer_index, offset) != (
                b"HDR!",
                index,
                self._batch_bytes,
                b"FTR!",
                index,
                self._data_offset(),
            ):
                raise AssertionError(f"bad frame {bytes(self._header)!r} {bytes(self._footer)!r}")
            self.events.append(FrameReceived(index=index))
            self.frames_received += 1
            self.page_bytes += self._batch_bytes
            self._offset = 0

    def receive_eof(self, now: float) -> None:
        self.truncated_bytes = self._offset
        self.events.append(StreamEnded())

    def peer_bytes_waiting(self, now: float) -> None:
        return None

    def next_event(self) -> object | None:
        return self.events.popleft() if self.events else None

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None


# --------------------------------------------------------------------------- throughput

LoopName = Literal["asyncio", "uvloop"]
_RAM_BYTES = 64 << 20
_RAM_SEED = 20240611


def _new_loop(loop_name: LoopName) -> asyncio.AbstractEventLoop:
    if loop_name == "uvloop":
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _sender_ram(size_bytes: int) -> memoryview:
    """Seeded random bytes: misplaced, reordered or lost data changes the receiver's digest."""
    return memoryview(bytearray(np.random.default_rng(_RAM_SEED).bytes(size_bytes)))


def _receiver_ram(size_bytes: int) -> memoryview:
    """Pre-faulted with a fill the sender's random data differs from in every batch."""
    return memoryview(bytearray(b"\xa5") * size_bytes)


@dataclass(frozen=True, kw_only=True, slots=True)
class SenderReport:
    """What the sending side counted: from its channel (or socket) and its own RAM."""

    frames: int
    bytes_sent: int
    digest: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ReceiverReport:
    """What the receiving side counted and what landed in its RAM."""

    frames: int
    page_bytes: int
    bytes_received: int
    truncated_bytes: int
    digest: str
    elapsed_s: float


async def _channel_send(port: int, batch_bytes: int, frames: int, window: int) -> SenderReport:
    ram = _sender_ram(_RAM_BYTES)
    sender = BulkSender(ram)
    sock = await open_connection(TcpAddress(host="127.0.0.1", port=port), 5.0)
    channel = Channel(sock, sender.conn)
    while sender.frames_queued < frames:
        while (
            sender.frames_queued < frames and sender.conn.pending_send_bytes < window * batch_bytes
        ):
            sender.queue_frame(batch_bytes)
        await channel.flush()
    channel.sock.shutdown(socket.SHUT_WR)
    with contextlib.suppress(OSError):
        channel.sock.recv(1)
    channel.close()
    return SenderReport(
        frames=sender.frames_queued,
        bytes_sent=channel.bytes_sent,
        digest=ram_digest(ram, sender.frames_queued, batch_bytes),
    )


async def _channel_receive(listener: socket.socket, batch_bytes: int) -> ReceiverReport:
    ram = _receiver_ram(_RAM_BYTES)
    receiver = BulkReceiver(ram, batch_bytes=batch_bytes)
    sock = await accept(listener)
    channel = Channel(sock, receiver)
    started = ended = None
    while not isinstance(event := await channel.next_event(), StreamEnded):
        assert isinstance(event, FrameReceived), event
        ended = time.perf_counter()
        if started is None:
            started = ended
    channel.close()
    return ReceiverReport(
        frames=receiver.frames_received,
        page_bytes=receiver.page_bytes,
        bytes_received=channel.bytes_received,
        truncated_bytes=receiver.truncated_bytes,
        digest=ram_digest(ram, receiver.frames_received, batch_bytes),
        elapsed_s=0.0 if started is None or ended is None else ended - started,
    )


def _run_in_loop(loop_name: LoopName, coro_factory: Callable[[], object]) -> object:
    loop = _new_loop(loop_name)
    try:
        return loop.run_until_complete(coro_factory())  # type: ignore[arg-type]
    finally:
        loop.close()


def _raw_send(port: int, batch: int, frames: int) -> SenderReport:
    ram = _sender_ram(_RAM_BYTES)
    bytes_sent = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for index in range(frames):
            offset = frame_offset(index, batch, _RAM_BYTES)
            sock.sendall(ram[offset : offset + batch])
            bytes_sent += batch  # sendall sends all or raises
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
    return SenderReport(frames=frames, bytes_sent=bytes_sent, digest=ram_digest(ram, frames, batch))


def _sender_process(
    kind: str,
    loop_name: LoopName,
    port: int,
    batch: int,
    frames: int,
    result: multiprocessing.connection.Connection,
) -> None:
    try:
        if kind == "raw":
            report: object = _raw_send(port, batch, frames)
        else:
            report = _run_in_loop(loop_name, lambda: _channel_send(port, batch, frames, window=4))
        result.send(report)
    except BaseException as exc:
        result.send(f"sender failed: {exc!r}")
        raise


def _receiver_process(
    kind: str,
    loop_name: LoopName,
    batch: int,
    result: multiprocessing.connection.Connection,
) -> None:
    """Listen on 127.0.0.1, report the port, receive, report what arrived (or the error)."""
    try:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            result.send(listener.getsockname()[1])
            result.send(_receive(kind, loop_name, listener, batch))
    except BaseException as exc:
        result.send(f"receiver failed: {exc!r}")
        raise


def _raw_receive(listener: socket.socket, batch: int) -> ReceiverReport:
    """Receive batches into RAM until the sender closes; each batch lands at its frame offset."""
    ram = _receiver_ram(_RAM_BYTES)
    conn, _ = listener.accept()
    received = 0
    started = ended = None
    while True:
        index, within = divmod(received, batch)
        offset = frame_offset(index, batch, _RAM_BYTES)
        nbytes = conn.recv_into(ram[offset + within : offset + batch])
        if nbytes == 0:
            break
        ended = time.perf_counter()
        if started is None:
            started = ended
        received += nbytes
    conn.close()
    frames, truncated = divmod(received, batch)
    return ReceiverReport(
        frames=frames,
        page_bytes=frames * batch,
        bytes_received=received,
        truncated_bytes=truncated,
        digest=ram_digest(ram, frames, batch),
        elapsed_s=0.0 if started is None or ended is None else ended - started,
    )


def _receive(kind: str, loop_name: LoopName, listener: socket.socket, batch: int) -> ReceiverReport:
    if kind == "raw":
        return _raw_receive(listener, batch)
    listener.setblocking(False)
    report = _run_in_loop(loop_name, lambda: _channel_receive(listener, batch))
    assert isinstance(report, ReceiverReport)
    return report


def _result(
    pipe: multiprocessing.connection.Connection,
    process: multiprocessing.process.BaseProcess | None,
    deadline: float,
) -> object:
    while not pipe.poll(0.2):
        if (process is not None and process.exitcode) or time.monotonic() > deadline:
            raise RuntimeError("the throughput measurement failed or hung")
    result = pipe.recv()
    if isinstance(result, str):
        raise RuntimeError(result)  # noqa: TRY004 - the other process's error report
    return result


@dataclass(frozen=True, kw_only=True, slots=True)
class Throughput:
    """One measurement: what each side counted, and the digests of what it sent and received.

    ``total_bytes`` is the page data the receiver took in whole frames; ``bytes_sent`` and
    ``bytes_received`` are the channels' (or sockets') own counts, framing included.
    """

    kind: str
    loop: str
    total_bytes: int
    elapsed_s: float
    frames_sent: int
    frames_received: int
    bytes_sent: int
    bytes_received: int
    truncated_bytes: int
    sent_digest: str
    received_digest: str

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
    the first received frame to the last. The sender's RAM is seeded random bytes and the
    receiver's starts with a different fill; both digest the RAM the batches covered after the
    transfer (outside the timed part), so `Throughput` says whether the bytes arrived intact.
    """
    frames = total_bytes // batch_bytes
    # spawn, not fork: pytest-xdist workers run threads, and a forked child could inherit a
    # lock one of them held.
    context = multiprocessing.get_context("spawn")
    receiver_end, receiver_child_end = context.Pipe(duplex=False)
    sender_end, sender_child_end = context.Pipe(duplex=False)
    receiver = context.Process(
        target=_receiver_process, args=(kind, loop_name, batch_bytes, receiver_child_end)
    )
    receiver.start()
    sender = None
    deadline = time.monotonic() + 120
    try:
        port = _result(receiver_end, None, deadline)
        sender = context.Process(
            target=_sender_process,
            args=(kind, loop_name, port, batch_bytes, frames, sender_child_end),
        )
        sender.start()
        received = _result(receiver_end, sender, deadline)
        sent = _result(sender_end, receiver, deadline)
        assert isinstance(received, ReceiverReport)
        assert isinstance(sent, SenderReport)
    finally:
        for process in (sender, receiver):
            if process is not None:
                process.join(30)
                if process.is_alive():
                    process.kill()
    return Throughput(
        kind=kind,
        loop=loop_name if kind == "channel" else "blocking",
        total_bytes=received.page_bytes,
        elapsed_s=received.elapsed_s,
        frames_sent=sent.frames,
        frames_received=received.frames,
        bytes_sent=sent.bytes_sent,
        bytes_received=received.bytes_received,
        truncated_bytes=received.truncated_bytes,
        sent_digest=sent.digest,
        received_digest=received.digest,
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
