"""The TLS wire ceiling: what Python's ``ssl`` moves on this machine with nothing else to do.

A bare TLS 1.3 sender and receiver, each its own process (as the two daemons are), verified
both ways with the credentials `bench tls` gives the daemons, moving bytes from one pre-faulted
buffer to another over loopback with blocking ``SSLSocket.sendall`` / ``recv_into`` of 4 MiB
views: OpenSSL reads and writes the socket itself (no memory BIO, no event loop, no framing, no
guest). No TLS path through Python's ``ssl`` does less work per byte, so this rate bounds what
any livemig TLS migration can reach here; `bench tls` prints it next to livemig's plaintext
rate. (Without kernel TLS, OpenSSL encrypts and decrypts in user space, a record at a time.)

Internal entry points (used by `measure`): ``python -m bench.wire_tls receive N DIR`` prints its
port, then the seconds from the end of the handshake to the last byte;
``python -m bench.wire_tls send PORT N DIR``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from bench.common import gbps
from bench.wire import next_chunk, prefaulted_buffer
from netio.tls import TlsCredsX509

SERVER_NAME: Final = "localhost"


def measure(n_bytes: int, creds_dir: Path) -> float:
    """Move n_bytes over TLS 1.3 between two fresh processes on loopback; return GB/s."""
    module = [sys.executable, "-m", "bench.wire_tls"]
    receiver = subprocess.Popen(
        [*module, "receive", str(n_bytes), str(creds_dir)], stdout=subprocess.PIPE, text=True
    )
    assert receiver.stdout is not None
    port = receiver.stdout.readline().strip()
    subprocess.run([*module, "send", port, str(n_bytes), str(creds_dir)], check=True)
    seconds = float(receiver.stdout.readline())
    receiver.wait()
    return gbps(n_bytes, seconds)


def receive(total: int, creds_dir: Path) -> None:
    """Accept one sender; print the port, then the seconds from handshake to last byte."""
    buffer = prefaulted_buffer(total)
    context = TlsCredsX509(id="wire", dir=creds_dir, endpoint="server").context()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        print(listener.getsockname()[1], flush=True)
        raw, _ = listener.accept()
    with context.wrap_socket(raw, server_side=True) as sock:
        started = time.perf_counter()
        got = 0
        while got < total:
            n = sock.recv_into(next_chunk(buffer, total, got))
            if n == 0:
                raise ConnectionError(f"sender closed after {got} of {total} bytes")
            got += n
        print(time.perf_counter() - started, flush=True)


def send(port: int, total: int, creds_dir: Path) -> None:
    """Connect, handshake (both peers verified), send total bytes."""
    buffer = prefaulted_buffer(total)
    context = TlsCredsX509(id="wire", dir=creds_dir, endpoint="client").context()
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with context.wrap_socket(raw, server_hostname=SERVER_NAME) as sock:
        sent = 0
        while sent < total:
            chunk = next_chunk(buffer, total, sent)
            sock.sendall(chunk)
            sent += len(chunk)
        # Closing with unread bytes (the server's session tickets) would reset the connection
        # and drop what is still in flight: end the sending side, then read until the receiver
        # closes.
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(1 << 16):
            pass


def main(argv: list[str]) -> None:
    role, *args = argv
    if role == "receive":
        receive(int(args[0]), Path(args[1]))
    elif role == "send":
        send(int(args[0]), int(args[1]), Path(args[2]))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
