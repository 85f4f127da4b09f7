"""The fault proxy: frame-exact cuts and stalls, byte cuts, latency, refusal — real sockets."""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest
import uvloop

from faultproxy import FaultProxy, parse_fault
from faultproxy.faults import FaultError
from faultproxy.proxy import delivery_time
from faultproxy.scanner import StreamScanner
from netio import TcpAddress
from protocol import Command, FrameKind, SourceConnection
from protocol.postcopy import MAX_DISCARD_RANGES
from tests.helpers.fds import ReusedFds
from tests.helpers.pair import PAGE_SIZE, make_batch, make_config, pattern_ram, sent_bytes

pytestmark = pytest.mark.timeout(30)


def _stream_with_handover() -> tuple[bytes, int]:
    """A valid main stream up to HANDOVER, and the offset where HANDOVER's frame starts."""
    source = SourceConnection(return_path=True, timeouts=None, now=0.0)
    ram = pattern_ram(16)
    source.send_configuration(make_config(ram_pages=16))
    source.send_open_return_path()
    source.send_section_start(1, "ram", 0, 4, {"ram_size": len(ram), "page_size": PAGE_SIZE})
    source.send_ram(1, make_batch(ram, ((0, 4, 1), (4, 2, 2))), end=False)
    source.send_switchover_start()
    source.send_ram(1, make_batch(ram, ((8, 1, 1),)), end=True)
    source.send_section_full(2, "serial0", 0, 1, {"fields": {"lsr": 96}})
    source.send_section_full(3, "cpu", 0, 2, {"fields": {"pc": 4096}})
    source.send_eof()
    source.send_vmdesc({"devices": []})
    before = sent_bytes(source)
    source.send_handover()
    return before + sent_bytes(source), len(before)


def test_scanner_stops_exactly_before_the_matching_frame() -> None:
    stream, handover_at = _stream_with_handover()
    scanner = StreamScanner(main_stream=True)

    plan = scanner.plan(
        stream, lambda f: f.kind == FrameKind.COMMAND and f.command == Command.HANDOVER
    )

    assert handover_at == plan.passable
    assert plan.frame is not None
    assert Command.HANDOVER == plan.frame.command


@pytest.mark.parametrize("chunk", [1, 7, 16, 17, 4096])
def test_scanner_finds_the_frame_whatever_the_chunking(chunk: int) -> None:
    stream, handover_at = _stream_with_handover()
    scanner = StreamScanner(main_stream=True)
    held = b""
    passed = 0
    for start in range(0, len(stream), chunk):
        held += stream[start : start + chunk]
        plan = scanner.plan(held, lambda f: f.command == Command.HANDOVER)
        passed += plan.passable
        held = held[plan.passable :]
        if plan.frame is not None:
            break

    assert handover_at == passed


def test_scanner_stops_before_the_largest_discard() -> None:
    """A POSTCOPY_RAM_DISCARD's meta holds binary ranges, up to ~64 KiB of them: still matched."""
    source = SourceConnection(return_path=True, timeouts=None, now=0.0)
    source.send_configuration(make_config(ram_pages=2 * MAX_DISCARD_RANGES))
    source.send_open_return_path()
    source.send_postcopy_advise()
    before = sent_bytes(source)
    every_other = np.arange(0, 2 * MAX_DISCARD_RANGES, 2)
    source.send_postcopy_discard(every_other, np.ones_like(every_other))
    source.send_postcopy_listen()
    stream = before + sent_bytes(source)
    scanner = StreamScanner(main_stream=True)

    plan = scanner.plan(stream, lambda f: f.command == Command.POSTCOPY_RAM_DISCARD)

    assert len(stream) - len(before) > 64 * 1024  # more meta than the scanner once looked into
    assert len(before) == plan.passable
    assert plan.frame is not None


def test_scanner_passes_everything_of_a_foreign_stream() -> None:
    scanner = StreamScanner(main_stream=True)

    assert 100 == scanner.plan(b"QEVM" + bytes(96), lambda f: True).passable


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "cut"}, "needs after_bytes or before_frame"),
        ({"type": "explode"}, "type: 'explode' is not one of"),
        ({"type": "stall", "before_frame": "NOPE"}, "unknown frame 'NOPE'"),
        ({"type": "latency"}, "ms must be > 0"),
        ({"type": "cut", "after_bytes": -1}, "non-negative integer"),
        ({"type": "cut", "before_frame": "LOADED", "direction": "main"}, "flows return"),
        ({"type": "cut", "after_bytes": 5, "color": "red"}, "unknown field"),
    ],
)
def test_bad_fault_specs_name_the_field(spec: dict[str, object], message: str) -> None:
    with pytest.raises(FaultError, match=message):
        parse_fault(spec)


class _Echo:
    """An upstream that records what it receives and answers with a fixed reply."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.eof = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"hello from upstream")
            await writer.drain()
            while data := await reader.read(65536):
                self.received += data
        except ConnectionResetError:
            pass  # a cut may arrive as a reset: the end of the stream either way
        finally:
            self.eof.set()
            writer.close()


@pytest.fixture
async def proxied():
    echo = _Echo()
    server = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = FaultProxy(upstream=TcpAddress(host="127.0.0.1", port=port))
    address = await proxy.start(TcpAddress(host="127.0.0.1", port=0))
    yield proxy, address, echo
    await proxy.close()
    server.close()
    await server.wait_closed()


async def test_clean_proxying_passes_both_ways(proxied) -> None:
    _, address, echo = proxied
    reader, writer = await asyncio.open_connection(address.host, address.port)
    writer.write(b"x" * 100_000)
    await writer.drain()
    greeting = await reader.readexactly(19)
    writer.write_eof()
    await asyncio.wait_for(echo.eof.wait(), 5)
    writer.close()

    assert b"hello from upstream" == greeting
    assert 100_000 == len(echo.received)


async def test_cut_after_exact_byte_count(proxied) -> None:
    proxy, address, echo = proxied
    fault = proxy.add(parse_fault({"type": "cut", "direction": "main", "after_bytes": 1234}))
    _, writer = await asyncio.open_connection(address.host, address.port)
    writer.write(b"y" * 5000)
    await writer.drain()
    await proxy.wait_fired(fault, 5)
    await asyncio.wait_for(echo.eof.wait(), 5)
    writer.close()

    assert 1234 == len(echo.received)


async def test_stall_before_a_frame_holds_it_until_released(proxied) -> None:
    proxy, address, echo = proxied
    stream, handover_at = _stream_with_handover()
    fault = proxy.add(parse_fault({"type": "stall", "before_frame": "HANDOVER"}))
    _, writer = await asyncio.open_connection(address.host, address.port)
    writer.write(stream)
    await writer.drain()
    await proxy.wait_fired(fault, 5)
    await asyncio.sleep(0.2)
    assert handover_at == len(echo.received)

    proxy.release()
    writer.write_eof()
    await asyncio.wait_for(echo.eof.wait(), 5)
    writer.close()

    assert stream == bytes(echo.received)


async def test_latency_delays_delivery(proxied) -> None:
    proxy, address, _ = proxied
    proxy.add(parse_fault({"type": "latency", "direction": "return", "ms": 150}))
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(address.host, address.port)
    await reader.readexactly(19)
    elapsed = time.monotonic() - started
    writer.close()

    assert elapsed >= 0.15


async def test_refuse_closes_new_connections(proxied) -> None:
    proxy, address, _ = proxied
    proxy.add(parse_fault({"type": "refuse"}))
    reader, writer = await asyncio.open_connection(address.host, address.port)

    assert b"" == await asyncio.wait_for(reader.read(10), 5)
    writer.close()
    assert 1 == proxy.stats.refused


async def test_stall_now_holds_both_directions_until_released(proxied) -> None:
    proxy, address, echo = proxied
    fault = proxy.add(parse_fault({"type": "stall"}))
    reader, writer = await asyncio.open_connection(address.host, address.port)
    writer.write(b"z" * 1000)
    await writer.drain()
    await proxy.wait_fired(fault, 5)
    await asyncio.sleep(0.2)

    assert 0 == len(echo.received)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(19), 0.2)

    proxy.release()
    assert b"hello from upstream" == await asyncio.wait_for(reader.readexactly(19), 5)
    writer.write_eof()
    await asyncio.wait_for(echo.eof.wait(), 5)
    writer.close()
    assert 1000 == len(echo.received)


async def test_a_stall_after_bytes_passes_them_then_holds_until_released(proxied) -> None:
    """`after_bytes` on a stall counts this connection's bytes (it held at once before, so a
    stall meant for mid-stream stopped the next connection's TLS handshake)."""
    proxy, address, echo = proxied
    fault = proxy.add(parse_fault({"type": "stall", "direction": "main", "after_bytes": 600}))
    _, writer = await asyncio.open_connection(address.host, address.port)
    writer.write(b"z" * 1000)
    await writer.drain()
    await proxy.wait_fired(fault, 5)
    await asyncio.sleep(0.2)
    assert 600 == len(echo.received)

    proxy.release()
    writer.write_eof()
    await asyncio.wait_for(echo.eof.wait(), 5)
    writer.close()
    assert 1000 == len(echo.received)


async def test_close_drops_a_client_whose_upstream_does_not_answer() -> None:
    """Closing the proxy while it still connects upstream for a client closes that client (it
    was left to the loop's teardown, which dropped it unclosed: a ResourceWarning)."""
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(0)
    fillers = [socket.socket() for _ in range(2)]
    for filler in fillers:  # a full backlog: the kernel drops further SYNs
        filler.setblocking(False)
        filler.connect_ex(upstream.getsockname())
    proxy = FaultProxy(upstream=TcpAddress(host="127.0.0.1", port=upstream.getsockname()[1]))
    address = await proxy.start(TcpAddress(host="127.0.0.1", port=0))
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        await asyncio.sleep(0.1)  # the proxy accepted the client and now connects upstream
        await proxy.close()

        assert b"" == await asyncio.wait_for(reader.read(10), 1)
    finally:
        writer.close()
        for sock in (upstream, *fillers):
            sock.close()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("close", ["reset_connections", "cut_one_side"])
def test_a_closed_connection_leaves_no_fd_watched(loop_kind: str, close: str) -> None:
    """The proxy closes a connection while both its pipes wait in ``sock_recv``: sockets opened
    at once reuse the fd numbers and must be watchable (the e2e failure: a QMP connect right after
    a proxied connection ended died in epoll MOD with FileNotFoundError)."""

    async def main() -> None:
        echo = _Echo()
        server = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
        proxy = FaultProxy(
            upstream=TcpAddress(host="127.0.0.1", port=server.sockets[0].getsockname()[1])
        )
        address = await proxy.start(TcpAddress(host="127.0.0.1", port=0))
        reader, writer = await asyncio.open_connection(address.host, address.port)
        try:
            assert b"hello from upstream" == await reader.readexactly(19)
            await asyncio.sleep(0.05)  # both pipes now wait in sock_recv
            (link,) = proxy._links
            if close == "reset_connections":
                fds = [link.client.fileno(), link.upstream.fileno()]
                proxy.reset_connections()
            else:
                fds = [link.client.fileno()]
                link.cut(parse_fault({"type": "cut", "after_bytes": 0, "side": "client"}))
            await ReusedFds(fds).check()
        finally:
            writer.close()
            await proxy.close()
            await asyncio.wait_for(echo.eof.wait(), 5)  # the upstream side saw the close
            server.close()
            await server.wait_closed()

    factory = uvloop.new_event_loop if loop_kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


@pytest.mark.parametrize("offset", [0, 5, 8, 9, 20, 24, 31, 100])
def test_byte_cuts_never_stall_inside_a_header(offset: int) -> None:
    """Without a frame trigger the scanner holds nothing back, whatever the chunk boundary:
    a cut limited to `offset` bytes must be able to pass exactly that many (campaign bug)."""
    stream, _ = _stream_with_handover()
    scanner = StreamScanner(main_stream=True)

    assert offset == scanner.plan(stream[:offset], None).passable
    assert len(stream) - offset == scanner.plan(stream[offset:], None).passable


def test_latency_delays_each_chunk_from_its_arrival_without_capping_throughput() -> None:
    """128 chunks arriving 1 ms apart with 50 ms of latency all leave within ~178 ms, in
    order; capping would have taken 128 x 50 ms."""
    previous = 0.0
    for index in range(128):
        arrived = index * 0.001
        previous = delivery_time(
            arrived_at=arrived, previous_at=previous, delay_s=0.05, nbytes=262_144, bytes_per_s=0
        )
        assert previous == pytest.approx(arrived + 0.05)


def test_bandwidth_spaces_chunks_out() -> None:
    at = delivery_time(arrived_at=0.0, previous_at=1.0, delay_s=0.0, nbytes=1000, bytes_per_s=1000)

    assert 2.0 == at
