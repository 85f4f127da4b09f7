"""Socket helpers (netio/sockopts.py), on both event loops."""

from __future__ import annotations

import socket

import pytest

from netio import (
    ConnectError,
    ListenError,
    TcpAddress,
    UnixAddress,
    accept,
    bound_address,
    configure_stream_socket,
    listen,
    open_connection,
)

LOOPBACK = "127.0.0.1"


async def _pair(address):
    listener = listen(address)
    try:
        bound = bound_address(listener)
        client = await open_connection(bound, 2.0)
        server = await accept(listener)
    finally:
        listener.close()
    return client, server


def test_listen_on_port_zero_exposes_the_bound_port(run):
    async def main():
        listener = listen(TcpAddress(host=LOOPBACK, port=0))
        with listener:
            bound = bound_address(listener)
            assert LOOPBACK == bound.host
            assert bound.port > 0
            assert not listener.getblocking()

    run(main)


def test_connect_and_accept_over_tcp(run):
    async def main():
        client, server = await _pair(TcpAddress(host=LOOPBACK, port=0))
        with client, server:
            assert not client.getblocking()
            assert not server.getblocking()
            client.sendall(b"ping")
            server.setblocking(True)
            assert b"ping" == server.recv(4)

    run(main)


def test_connect_by_host_name(run):
    async def main():
        listener = listen(TcpAddress(host=LOOPBACK, port=0))
        with listener:
            port = bound_address(listener).port
            client = await open_connection(TcpAddress(host="localhost", port=port), 2.0)
            client.close()

    run(main)


def test_connect_and_accept_over_unix(run, sock_dir):
    async def main():
        path = str(sock_dir / "s")
        with listen(UnixAddress(path=path)) as listener:
            assert UnixAddress(path=path) == bound_address(listener)
        client, server = await _pair(UnixAddress(path=path))
        with client, server:
            client.sendall(b"x")
            server.setblocking(True)
            assert b"x" == server.recv(1)

    run(main)


def test_unix_listen_replaces_a_stale_socket_but_not_a_file(run, sock_dir):
    async def main():
        stale = sock_dir / "stale"
        old = listen(UnixAddress(path=str(stale)))
        old.close()  # the file stays behind
        assert stale.exists()
        listen(UnixAddress(path=str(stale))).close()

        regular = sock_dir / "regular"
        regular.write_text("keep me")
        with pytest.raises(ListenError, match=r"cannot listen on unix:.*regular: address already"):
            listen(UnixAddress(path=str(regular)))
        assert "keep me" == regular.read_text()

    run(main)


def test_listen_on_a_busy_port_names_the_address(run):
    async def main():
        first = listen(TcpAddress(host=LOOPBACK, port=0))
        with first:
            port = bound_address(first).port
            with pytest.raises(ListenError) as caught:
                listen(TcpAddress(host=LOOPBACK, port=port))
            assert f"cannot listen on tcp:127.0.0.1:{port}: address already in use" == str(
                caught.value
            )
            assert f"tcp:127.0.0.1:{port}" == caught.value.address

    run(main)


def test_refused_connection_names_the_address(run):
    async def main():
        listener = listen(TcpAddress(host=LOOPBACK, port=0))
        port = bound_address(listener).port
        listener.close()
        with pytest.raises(ConnectError) as caught:
            await open_connection(TcpAddress(host=LOOPBACK, port=port), 2.0)
        assert f"cannot connect to tcp:127.0.0.1:{port}: connection refused" == str(caught.value)
        assert isinstance(caught.value.__cause__, ConnectionRefusedError)

    run(main)


def test_missing_unix_socket(run, sock_dir):
    async def main():
        path = sock_dir / "absent"
        with pytest.raises(ConnectError, match=f"cannot connect to unix:{path}: no such file"):
            await open_connection(UnixAddress(path=str(path)), 2.0)

    run(main)


def test_connect_timeout_names_the_address(run):
    async def main():
        # A listener that never accepts, backlog 0: once its queue holds one connection the
        # kernel drops further SYNs, so the next connect hangs until our timeout.
        listener = socket.socket()
        listener.bind((LOOPBACK, 0))
        listener.listen(0)
        address = TcpAddress(host=LOOPBACK, port=listener.getsockname()[1])
        fillers = []
        try:
            for _ in range(2):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex((address.host, address.port))
                fillers.append(filler)
            with pytest.raises(ConnectError) as caught:
                await open_connection(address, 0.3)
            assert f"cannot connect to {address}: timed out after 0.3 s" == str(caught.value)
        finally:
            for filler in fillers:
                filler.close()
            listener.close()

    run(main)


def test_configure_stream_socket_sets_liveness_options(run):
    async def main():
        client, server = await _pair(TcpAddress(host=LOOPBACK, port=0))
        with client, server:
            configure_stream_socket(
                client,
                keepalive_idle_s=2.5,
                keepalive_interval_s=1,
                keepalive_count=4,
                user_timeout_ms=7000,
                sndbuf_bytes=256 << 10,
                rcvbuf_bytes=128 << 10,
            )
            get = client.getsockopt
            assert 1 == get(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            assert 3 == get(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            assert 1 == get(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
            assert 4 == get(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
            assert 7000 == get(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
            assert 1 == get(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            # Linux doubles the requested buffer sizes for bookkeeping.
            assert 512 << 10 == get(socket.SOL_SOCKET, socket.SO_SNDBUF)
            assert 256 << 10 == get(socket.SOL_SOCKET, socket.SO_RCVBUF)

    run(main)


def test_configure_skips_tcp_options_on_unix_sockets(run, sock_dir):
    async def main():
        client, server = await _pair(UnixAddress(path=str(sock_dir / "u")))
        with client, server:
            configure_stream_socket(
                client,
                keepalive_idle_s=1,
                keepalive_interval_s=1,
                keepalive_count=1,
                user_timeout_ms=0,
                nodelay=False,
            )
            assert 0 == client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)

    run(main)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"keepalive_count": 0}, "keepalive_count must be >= 1"),
        ({"user_timeout_ms": -1}, "user_timeout_ms >= 0"),
        ({"keepalive_idle_s": 0}, "keepalive durations must be > 0 s, got 0"),
        ({"keepalive_interval_s": float("nan")}, "keepalive durations must be > 0 s, got nan"),
    ],
)
def test_configure_rejects_bad_values(overrides, message):
    options = {
        "keepalive_idle_s": 1.0,
        "keepalive_interval_s": 1.0,
        "keepalive_count": 3,
        "user_timeout_ms": 1000,
    } | overrides
    with socket.socket() as sock, pytest.raises(ValueError, match=message):
        configure_stream_socket(sock, **options)
