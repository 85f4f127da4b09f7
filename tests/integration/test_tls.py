"""Migrations over TLS between in-process daemons: QEMU's objects and parameters, real sockets.

The source holds `tls-creds-x509,endpoint=client`, the destination `endpoint=server`; with
`tls-creds` set on both, every channel is TLS 1.3 with both peers verified. Each refusal fails
the migration with a clear error-desc and the VM runs on at the source.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from livemig.certs import CertificateAuthority, client_identity, make_creds_dir
from netio import (
    ChannelOptions,
    QMPCommandError,
    TcpAddress,
    TlsClient,
    TlsCredsX509,
    connect_channel,
)
from tests.helpers.fake_conn import FakeConnection
from tests.helpers.inproc import FINAL, Daemon, make_pair
from tests.integration.paths import SRC_COMPLETED

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def creds(tmp: Path, ca: CertificateAuthority, name: str = "tls") -> Path:
    directory = tmp / name
    make_creds_dir(directory, ["localhost", "127.0.0.1"], ca=ca)
    return directory


def creds_object(object_id: str, directory: Path, endpoint: str | None = None) -> dict:
    """`object-add` arguments of a tls-creds-x509 object (QEMU's default endpoint if None)."""
    props = {"qom-type": "tls-creds-x509", "id": object_id, "dir": str(directory)}
    return props if endpoint is None else {**props, "endpoint": endpoint}


async def use_tls(daemon: Daemon, directory: Path, endpoint: str, **parameters: object) -> None:
    object_id = f"tls-{endpoint}"  # a daemon may hold both ends (A -> B -> A)
    await daemon.execute("object-add", creds_object(object_id, directory, endpoint))
    await daemon.execute("migrate-set-parameters", {"tls-creds": object_id, **parameters})


async def failed_at_source(pair) -> str:
    assert "failed" == await pair.source.wait(FINAL)
    info = await pair.source.execute("query-migrate")
    assert await pair.source.runs(), "the VM must run on at the source"
    return str(info["error-desc"])


@pytest.mark.parametrize("checksums", [False, True])
def test_a_migration_over_tls_completes_and_matches_the_replay(run, tmp, ca, checksums):
    """By default the frames after CHANNEL carry no xxh3 (the AEAD authenticates them);
    `x-tls-frame-checksums` keeps it."""
    directory = creds(tmp, ca)

    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            await use_tls(pair.source, directory, "client", **{"x-tls-frame-checksums": checksums})
            await use_tls(pair.dest, directory, "server")
            await pair.migrate()
            assert "completed" == await pair.source.wait(FINAL)
            assert SRC_COMPLETED == pair.source.source_path()
            assert (checksums, True) == pair.source.source.sender.conn.checksummed
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


def test_multifd_channels_use_tls_too(run, tmp, ca):
    """With tls-creds, every multifd channel is TLS as well (the listener takes nothing else)."""
    directory = creds(tmp, ca)

    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            await use_tls(pair.source, directory, "client", **{"multifd-channels": 3})
            await use_tls(pair.dest, directory, "server")
            await pair.migrate(multifd=True)
            assert "completed" == await pair.source.wait(FINAL)
            multifd = pair.source.source.sender.multifd
            assert multifd is not None
            assert all(conn.sent_bytes for conn in multifd.conns.values())
            assert all(not conn.checksummed[0] for conn in multifd.conns.values())
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


async def refusal_of(tmp: Path, source_tls: Setup | None, dest_tls: Setup | None) -> str:
    """Set each side up (None: plaintext), migrate; the source's error-desc (it must fail)."""
    pair = await make_pair(tmp)
    try:
        for daemon, setup, endpoint in ((pair.source, source_tls, "client"),
                                        (pair.dest, dest_tls, "server")):  # fmt: skip
            if setup is not None:
                for props in setup.objects:
                    await daemon.execute("object-add", props)
                await use_tls(daemon, setup.directory, endpoint, **setup.parameters)
        await pair.migrate()
        error = await failed_at_source(pair)
        if source_tls is None:
            assert pair.dest.vmm.ledger.current is None  # nothing was received
        return error
    finally:
        await pair.close()


@dataclass(frozen=True)
class Setup:
    """One side's TLS: its credentials directory, extra objects, extra parameters."""

    directory: Path
    objects: tuple[dict[str, object], ...] = ()
    parameters: dict[str, object] = field(default_factory=dict)


DENY_ALL_BUT_ADMIN = {
    "qom-type": "authz-list",
    "id": "auth0",
    "policy": "deny",
    "rules": [{"match": "CN=admin,O=livemig", "policy": "allow"}],
}


def test_refusals_fail_the_migration_clearly_and_the_vm_runs_on(run, tmp, ca):
    ours, theirs = creds(tmp, ca), creds(tmp, CertificateAuthority.create(), "other")
    cases = [
        (None, Setup(ours), ["connection to the destination closed"]),
        (Setup(ours), None, ["cannot connect: ", "TLS"]),
        (Setup(ours), Setup(theirs), ["is not accepted", "it is not signed by the CA in"]),
        (
            Setup(ours, parameters={"tls-hostname": "other.example"}),
            Setup(ours),
            ["Hostname mismatch", "other.example"],
        ),
        (
            Setup(ours),
            Setup(ours, objects=(DENY_ALL_BUT_ADMIN,), parameters={"tls-authz": "auth0"}),
            [f"TLS authorization 'auth0' denies '{client_identity()}'"],
        ),
    ]

    async def main() -> None:
        for source_tls, dest_tls, expected in cases:
            error = await refusal_of(tmp, source_tls, dest_tls)
            for text in expected:
                assert text in error, (source_tls, dest_tls, error)

    run(main, timeout_s=60)


def test_a_certificate_removed_between_migrations_is_a_clear_error(run, tmp, ca):
    directory = creds(tmp, ca)

    async def main() -> None:
        pair = await make_pair(tmp)
        a, b = pair.source, pair.dest
        try:
            await use_tls(a, directory, "client")
            await use_tls(b, directory, "server")
            # B will send the VM back: its client end, made while the directory is intact
            await b.execute("object-add", creds_object("back", directory, "client"))
            await pair.migrate()
            assert "completed" == await a.wait(FINAL)

            (directory / "client-key.pem").unlink()
            await a.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
            await b.execute("migrate-set-parameters", {"tls-creds": "back"})
            await b.execute("migrate", {"uri": a.incoming_uri})
            assert "failed" == await b.wait(FINAL)
            info = await b.execute("query-migrate")
            assert f"{directory / 'client-key.pem'} is missing" in info["error-desc"]
            assert await b.runs()
        finally:
            await pair.close()

    run(main)


def test_qemu_refusals_for_tls_parameters_and_objects(run, tmp, ca):
    directory = creds(tmp, ca)

    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            source = pair.source
            await source.execute("migrate-set-parameters", {"tls-creds": "nope"})
            with pytest.raises(QMPCommandError, match="No TLS credentials with id 'nope'"):
                await pair.migrate()
            await use_tls(source, directory, "server")  # the wrong end for a source
            with pytest.raises(QMPCommandError, match="Expecting TLS credentials with a client"):
                await pair.migrate()
            with pytest.raises(
                QMPCommandError, match="an object with id 'tls-server' already exists"
            ):
                await source.execute("object-add", creds_object("tls-server", directory))
            with pytest.raises(QMPCommandError, match=r"/missing/ca-cert\.pem is missing"):
                await source.execute("object-add", creds_object("t1", tmp / "missing"))
            with pytest.raises(QMPCommandError, match="invalid object type: secret"):
                await source.execute("object-add", {"qom-type": "secret", "id": "s"})
            await source.execute("object-del", {"id": "tls-server"})
            with pytest.raises(QMPCommandError, match="object 'tls-server' not found"):
                await source.execute("object-del", {"id": "tls-server"})
            params = await source.execute("query-migrate-parameters")
            assert "tls-server" == params["tls-creds"]
            await source.execute("migrate-set-parameters", {"tls-creds": None})
            assert "" == (await source.execute("query-migrate-parameters"))["tls-creds"]
            assert await source.runs()
        finally:
            await pair.close()

    run(main)


def test_a_stalled_handshake_and_garbage_after_one_do_not_hold_up_a_migration(run, tmp, ca):
    directory = creds(tmp, ca)

    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            await use_tls(pair.source, directory, "client")
            await use_tls(pair.dest, directory, "server")
            host, port = pair.uri.removeprefix("tcp:").rsplit(":", 1)
            _, stalled = await asyncio.open_connection(host, int(port))
            stalled.write(b"\x16\x03\x01")  # a ClientHello that never finishes
            client = TlsClient(
                creds=TlsCredsX509(id="c", dir=directory, endpoint="client"), hostname=host
            )
            address = TcpAddress(host=host, port=int(port))
            noisy = await connect_channel(address, FakeConnection(), ChannelOptions(), tls=client)
            noisy.sock.sendall(os.urandom(4096))  # valid handshake, then garbage under TLS
            await pair.migrate()
            assert "completed" == await pair.source.wait(FINAL)
            await pair.dest.assert_matches_replay()
            stalled.close()
            noisy.close()
        finally:
            await pair.close()

    run(main)
