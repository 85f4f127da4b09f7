"""TLS channels over real loopback sockets, with certificates made by `livemig certs`.

Each refusal is a clear `TlsError` naming the peer and the reason, on the side that refuses:
an untrusted CA, an expired or not-yet-valid certificate, a name the client did not ask for, a
client name the `authz` object denies, a plaintext peer, a silent peer, and garbage after the
handshake (the channel then ends with the TLS error as its last error).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
from typing import TYPE_CHECKING

import pytest

from livemig.certs import CertificateAuthority, client_identity, make_creds_dir, write_pem
from netio import (
    Channel,
    ChannelListener,
    ChannelOptions,
    TcpAddress,
    TlsAuthzError,
    TlsClient,
    TlsCredentialsError,
    TlsCredsX509,
    TlsHandshakeError,
    TlsServer,
    connect_channel,
    open_accepted,
)
from netio.authz import AuthzList, AuthzRule, AuthzSimple, distinguished_name
from tests.helpers.fake_conn import DataReceived, FakeConnection, StreamEnded

if TYPE_CHECKING:
    from pathlib import Path

OPTIONS = ChannelOptions(connect_timeout_s=2.0)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


@pytest.fixture
def creds_dir(tmp_path: Path, ca: CertificateAuthority) -> Path:
    directory = tmp_path / "tls"
    make_creds_dir(directory, ["localhost"], ca=ca)
    return directory


def server_side(directory: Path, authz=None) -> TlsServer:
    creds = TlsCredsX509(id="tls0", dir=directory, endpoint="server")
    return TlsServer(creds=creds, authz=authz)


def client_side(directory: Path, hostname: str = "localhost") -> TlsClient:
    creds = TlsCredsX509(id="tls0", dir=directory, endpoint="client")
    return TlsClient(creds=creds, hostname=hostname)


async def connect_pair(server: TlsServer | None, client: TlsClient | None):
    """A TLS (or plaintext) channel pair over loopback; either side's error is returned."""
    listener = ChannelListener(TcpAddress(host="127.0.0.1", port=0))
    address = listener.address
    server_conn, client_conn = FakeConnection(), FakeConnection()

    async def accept():
        sock = await listener.accept_socket()
        return await open_accepted(sock, lambda: server_conn, OPTIONS, tls=server)

    try:
        results = await asyncio.gather(
            accept(),
            connect_channel(address, client_conn, OPTIONS, tls=client),
            return_exceptions=True,
        )
    finally:
        listener.close()
    return results, server_conn, client_conn


async def receive_bytes(channel: Channel, conn: FakeConnection, nbytes: int) -> None:
    while len(conn.received) < nbytes:
        event = await channel.next_event()
        assert isinstance(event, DataReceived), event


def close_all(*items: object) -> None:
    for item in items:
        if isinstance(item, Channel):
            item.close()


def test_a_tls_channel_carries_bytes_both_ways(run, creds_dir):
    async def main():
        (accepted, client), server_conn, client_conn = await connect_pair(
            server_side(creds_dir), client_side(creds_dir)
        )
        server, _ = accepted
        try:
            payload = os.urandom(3 << 20)  # several TLS records, more than the send batch
            client_conn.send(memoryview(payload)[: 1 << 20])
            client_conn.send(memoryview(payload)[1 << 20 :])
            await asyncio.gather(client.flush(), receive_bytes(server, server_conn, len(payload)))
            assert payload == bytes(server_conn.received)
            server_conn.send(b"reply")
            await asyncio.gather(server.flush(), receive_bytes(client, client_conn, 5))
            assert b"reply" == bytes(client_conn.received)
            assert len(payload) == client.bytes_sent == server.bytes_received
        finally:
            close_all(server, client)

    run(main)


def test_small_and_large_buffers_arrive_in_their_order(run, creds_dir):
    """Small buffers are gathered into records, large ones written as they are: in order."""
    sizes = [16, 40_000, 4096, 4096, 70_000, 100, 33_000, 31_000, 4096, 200_000, 8]
    parts = [os.urandom(size) for size in sizes]

    async def main():
        (accepted, client), server_conn, client_conn = await connect_pair(
            server_side(creds_dir), client_side(creds_dir)
        )
        server, _ = accepted
        try:
            for part in parts:
                client_conn.send(memoryview(part))
            total = sum(sizes)
            await asyncio.gather(client.flush(), receive_bytes(server, server_conn, total))
            assert b"".join(parts) == bytes(server_conn.received)
        finally:
            close_all(server, client)

    run(main)


def test_the_end_of_a_tls_stream_is_an_event(run, creds_dir):
    async def main():
        (accepted, client), _, _ = await connect_pair(
            server_side(creds_dir), client_side(creds_dir)
        )
        server, _ = accepted
        client.close()
        assert isinstance(await server.next_event(), StreamEnded)
        server.close()

    run(main)


def test_the_authz_list_lets_the_allowed_client_in(run, creds_dir):
    allowed = AuthzList(
        id="auth0",
        policy="deny",
        rules=(AuthzRule(match="CN=livemig-*,O=livemig", policy="allow", format="glob"),),
    )

    async def main():
        (accepted, client), _, _ = await connect_pair(
            server_side(creds_dir, allowed), client_side(creds_dir)
        )
        server, _ = accepted
        close_all(server, client)
        assert isinstance(server, Channel)

    run(main)


def refusal(results, *, side: int) -> BaseException:
    error = results[side]
    assert isinstance(error, BaseException), results
    close_all(*(r[0] if isinstance(r, tuple) else r for r in results))
    return error


def test_a_client_name_the_authz_denies_is_refused(run, creds_dir):
    deny = AuthzSimple(id="auth0", identity="CN=someone-else,O=livemig")

    async def main():
        results, _, _ = await connect_pair(server_side(creds_dir, deny), client_side(creds_dir))
        error = refusal(results, side=0)
        assert isinstance(error, TlsAuthzError)
        assert f"TLS authorization 'auth0' denies '{client_identity()}'" in str(error)

    run(main)


def test_a_server_from_another_ca_is_not_trusted(run, tmp_path, creds_dir):
    other = tmp_path / "other"
    make_creds_dir(other, ["localhost"])

    async def main():
        results, _, _ = await connect_pair(server_side(other), client_side(creds_dir))
        error = refusal(results, side=1)
        assert isinstance(error, TlsHandshakeError)
        assert "is not accepted: " in str(error)
        assert f"it is not signed by the CA in {creds_dir / 'ca-cert.pem'}" in str(error)

    run(main)


def test_a_client_from_another_ca_is_refused_by_the_server(run, tmp_path, creds_dir):
    other = tmp_path / "other"
    make_creds_dir(other, ["localhost"])
    mixed = tmp_path / "mixed"  # trusts our CA, presents a client certificate of another
    make_creds_dir(mixed, ["localhost"])
    (mixed / "ca-cert.pem").write_bytes((creds_dir / "ca-cert.pem").read_bytes())

    async def main():
        results, _, _ = await connect_pair(server_side(creds_dir), client_side(mixed))
        error = refusal(results, side=0)
        assert isinstance(error, TlsHandshakeError)
        assert "certificate" in str(error)

    run(main)


@pytest.mark.parametrize(
    ("when", "message"),
    [("expired", "certificate has expired"), ("future", "certificate is not yet valid")],
)
def test_a_server_certificate_outside_its_validity_is_refused(run, ca, creds_dir, when, message):
    now = dt.datetime.now(dt.UTC)
    window = (
        (now - dt.timedelta(days=10), now - dt.timedelta(days=1))
        if when == "expired"
        else (now + dt.timedelta(days=1), now + dt.timedelta(days=10))
    )
    issued = ca.issue("localhost", server=True, hosts=["localhost"], not_before=window[0],
                      not_after=window[1])  # fmt: skip
    write_pem(creds_dir / "server-cert.pem", issued.cert_pem)
    write_pem(creds_dir / "server-key.pem", issued.key_pem, private=True)

    async def main():
        results, _, _ = await connect_pair(server_side(creds_dir), client_side(creds_dir))
        error = refusal(results, side=1)
        assert isinstance(error, TlsHandshakeError)
        assert message in str(error)

    run(main)


def test_a_hostname_the_certificate_does_not_name_is_refused(run, creds_dir):
    async def main():
        results, _, _ = await connect_pair(
            server_side(creds_dir), client_side(creds_dir, hostname="dest.example")
        )
        error = refusal(results, side=1)
        assert isinstance(error, TlsHandshakeError)
        assert "Hostname mismatch" in str(error)
        assert "'dest.example'" in str(error)

    run(main)


def test_a_plaintext_client_against_a_tls_server_is_refused_clearly(run, creds_dir):
    async def main():
        listener = ChannelListener(TcpAddress(host="127.0.0.1", port=0))
        plaintext = socket.create_connection(("127.0.0.1", listener.address.port))
        plaintext.sendall(b"LVMG" + bytes(60))  # what a plaintext source sends first
        try:
            sock = await listener.accept_socket()
            with pytest.raises(TlsHandshakeError, match="the peer does not speak TLS"):
                await open_accepted(sock, FakeConnection, OPTIONS, tls=server_side(creds_dir))
        finally:
            plaintext.close()
            listener.close()

    run(main)


def test_a_tls_client_against_a_plaintext_server_is_refused_clearly(run, creds_dir):
    async def main():
        listener = ChannelListener(TcpAddress(host="127.0.0.1", port=0))

        async def plaintext_server() -> None:  # its first bytes are no TLS record
            sock = await listener.accept_socket()
            sock.sendall(b"LVMG not tls at all, a plaintext migration peer\n" * 4)
            await asyncio.sleep(0.5)
            sock.close()

        server = asyncio.ensure_future(plaintext_server())
        connect = connect_channel(
            listener.address, FakeConnection(), OPTIONS, tls=client_side(creds_dir)
        )
        try:
            with pytest.raises(TlsHandshakeError, match="the peer does not speak TLS"):
                await connect
            await server
        finally:
            listener.close()

    run(main)


def test_a_peer_that_stops_mid_handshake_times_out(run, creds_dir):
    async def main():
        listener = ChannelListener(TcpAddress(host="127.0.0.1", port=0))
        silent = socket.create_connection(("127.0.0.1", listener.address.port))
        silent.sendall(b"\x16\x03\x01\x00")  # the first bytes of a ClientHello, then nothing
        try:
            sock = await listener.accept_socket()
            fast = ChannelOptions(connect_timeout_s=0.3)
            with pytest.raises(TlsHandshakeError, match=r"no TLS handshake from tcp:127.0.0.1:"):
                await open_accepted(sock, FakeConnection, fast, tls=server_side(creds_dir))
            assert sock.fileno() == -1  # closed on failure
        finally:
            silent.close()
            listener.close()

    run(main)


def test_garbage_after_the_handshake_ends_the_channel_with_the_tls_error(run, creds_dir):
    async def main():
        (accepted, client), server_conn, _ = await connect_pair(
            server_side(creds_dir), client_side(creds_dir)
        )
        server, _ = accepted
        client.sock.sendall(os.urandom(4096))  # raw bytes beneath the TLS layer
        assert isinstance(await server.next_event(), StreamEnded)
        assert server.last_error is not None
        assert "SSL" in type(server.last_error).__name__ or "ssl" in repr(server.last_error)
        assert b"" == bytes(server_conn.received)
        close_all(server, client)

    run(main)


def test_a_removed_certificate_is_a_clear_credentials_error(run, creds_dir):
    (creds_dir / "server-cert.pem").unlink()

    async def main():
        results, _, _ = await connect_pair(server_side(creds_dir), client_side(creds_dir))
        error = refusal(results, side=0)
        assert isinstance(error, TlsCredentialsError)
        assert f"{creds_dir / 'server-cert.pem'} is missing" in str(error)

    run(main)


def test_distinguished_names_are_written_as_qemu_writes_them():
    subject = ((("countryName", "GB"),), (("organizationName", "Example, Org"),),
               (("commonName", "laptop.example.com"),))  # fmt: skip
    assert "CN=laptop.example.com,O=Example\\, Org,C=GB" == distinguished_name(subject)


def test_a_revoked_client_certificate_is_refused_when_a_crl_is_present(run, ca, creds_dir):
    revoked = (creds_dir / "client-cert.pem").read_bytes()
    write_pem(creds_dir / "ca-crl.pem", ca.revocation_list([revoked]))

    async def main():
        results, _, _ = await connect_pair(server_side(creds_dir), client_side(creds_dir))
        error = refusal(results, side=0)
        assert isinstance(error, TlsHandshakeError)
        assert "certificate revoked" in str(error)

    run(main)


def test_a_crl_that_revokes_nothing_lets_everyone_in(run, ca, creds_dir):
    write_pem(creds_dir / "ca-crl.pem", ca.revocation_list())

    async def main():
        (accepted, client), _, _ = await connect_pair(
            server_side(creds_dir), client_side(creds_dir)
        )
        close_all(accepted[0], client)

    run(main)
