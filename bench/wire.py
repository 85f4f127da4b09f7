"""The wire baseline: raw loopback throughput with the daemons' event loop and buffer sizes.

A plain sender and receiver, each its own process (as the two daemons are, one core each), on
uvloop, moving bytes from one pre-faulted buffer to another with non-blocking ``sendmsg`` /
``recvmsg_into`` of 4 MiB views (one RAM frame of MAX_BATCH_PAGES pages) and ``add_writer`` /
``add_reader`` readiness, as ``netio.Channel`` does. No framing, no checksums, no guest: what the
daemons would reach if the protocol and the machine cost nothing. ``iperf3`` too, if installed.

Internal entry points (used by `measure`): ``python -m bench.wire receive N`` prints its port,
then the seconds from accept to the last byte; ``python -m bench.wire send PORT N``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Final

import numpy as np
import uvloop

from bench.common import GIB, MIB, Spread, gbps, header, say

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from bench.common import Run

CHUNK_BYTES: Final = 4 * MIB  # migration.precopy.MAX_BATCH_PAGES x PAGE_SIZE
MAX_BUFFER_BYTES: Final = GIB


def wire(run: Run) -> dict[str, object]:
    """The wire baseline on its own: repeated plain transfers, and iperf3 if installed."""
    header("Wire baseline: plain uvloop sender/receiver processes, 4 MiB buffers, loopback")
    n_bytes = run.pick(2 * GIB, 512 * MIB)
    rates = Spread.of([measure(n_bytes) for _ in range(run.pick(5, 2))])
    iperf = iperf3(run.pick(3, 1))
    say(f"  {n_bytes / GIB:g} GiB per transfer: {rates.text('.2f')} GB/s (median, range)")
    say(f"  iperf3, 1 stream: {'not installed' if iperf is None else f'{iperf:.2f} GB/s'}")
    return {"transfer_bytes": n_bytes, "gbps": rates, "iperf3_gbps": iperf}


def measure(n_bytes: int) -> float:
    """Move n_bytes between two fresh processes on loopback; return GB/s."""
    receiver = subprocess.Popen(
        [sys.executable, "-m", "bench.wire", "receive", str(n_bytes)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdout is not None
    port = receiver.stdout.readline().strip()
    subprocess.run([sys.executable, "-m", "bench.wire", "send", port, str(n_bytes)], check=True)
    seconds = float(receiver.stdout.readline())
    receiver.wait()
    return gbps(n_bytes, seconds)


def iperf3(seconds: float) -> float | None:
    """iperf3 loopback, one stream, in GB/s; None when iperf3 is not installed."""
    binary = shutil.which("iperf3")
    if binary is None:
        return None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    server = subprocess.Popen(
        [binary, "-s", "-1", "-p", port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.3)
        done = subprocess.run(
            [binary, "-c", "127.0.0.1", "-p", port, "-t", str(seconds), "-J"],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        server.wait(timeout=10)
    report = json.loads(done.stdout)
    return float(report["end"]["sum_received"]["bits_per_second"]) / 8e9


def prefaulted_buffer(n_bytes: int) -> NDArray[np.uint8]:
    """A buffer for n_bytes (at most MAX_BUFFER_BYTES, reused round-robin), pre-faulted."""
    return np.ones(min(n_bytes, MAX_BUFFER_BYTES), dtype=np.uint8)  # touched: pre-faulted


def next_chunk(buffer: NDArray[np.uint8], total: int, done: int) -> memoryview:
    """The next CHUNK_BYTES (or fewer) of the buffer once `done` of `total` bytes moved."""
    view = memoryview(buffer.data)
    offset = done % len(view)
    return view[offset : offset + min(CHUNK_BYTES, len(view) - offset, total - done)]


async def _ready(sock: socket.socket, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    add, remove = (
        (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    )
    add(sock.fileno(), waiter.set_result, None)
    try:
        await waiter
    finally:
        remove(sock.fileno())


async def _receive(listener: socket.socket, buffer: NDArray[np.uint8], total: int) -> float:
    loop = asyncio.get_running_loop()
    sock, _ = await loop.sock_accept(listener)
    started = time.perf_counter()
    got = 0
    with sock:
        sock.setblocking(False)
        while got < total:
            try:
                n = sock.recvmsg_into([next_chunk(buffer, total, got)])[0]
            except BlockingIOError:
                await _ready(sock, write=False)
                continue
            if n == 0:
                raise ConnectionError(f"sender closed after {got} of {total} bytes")
            got += n
    return time.perf_counter() - started


async def _send(port: int, total: int) -> None:
    buffer = prefaulted_buffer(total)
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        sent = 0
        while sent < total:
            try:
                sent += sock.sendmsg([next_chunk(buffer, total, sent)])
            except BlockingIOError:
                await _ready(sock, write=True)


def main(argv: list[str]) -> None:
    role, *args = argv
    if role == "receive":
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        total = int(args[0])
        buffer = prefaulted_buffer(total)  # pre-faulted before the port is announced
        print(listener.getsockname()[1], flush=True)
        print(uvloop.run(_receive(listener, buffer, total)), flush=True)
    elif role == "send":
        uvloop.run(_send(int(args[0]), int(args[1])))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
