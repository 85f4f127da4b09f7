"""TLS between real daemon processes: `--object` on the command line, QMP over TLS driven with
QEMU's own `qemu.qmp` and with `livemig qmp`, a TLS migration driven by `livemig migrate`, and the
QMP hardening: unix sockets 0600, a warning for plaintext TCP QMP off loopback.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from qemu.qmp import QMPClient as QemuQMPClient

from livemig.certs import make_creds_dir
from netio import TlsCredsX509
from tests.e2e.conftest import FINAL, dest_args, livemig, qmp, source_args, wait_status

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def tls_object(directory: Path, endpoint: str, object_id: str = "tls0") -> list[str]:
    return ["--object", f"tls-creds-x509,id={object_id},dir={directory},endpoint={endpoint}"]


class TlsQemuQMPClient(QemuQMPClient):
    """qemu.qmp's own client, minus one flush on disconnect.

    Its disconnect sets the transport's write limits to (0, 0) and drains; on Python 3.11's
    SSL transport (asyncio's sslproto, and uvloop's) an empty buffer then counts as full
    (0 >= 0), writing pauses and nothing resumes it, so disconnect never returns (measured
    here, 2026-12-03). Everything queued is still sent: the outgoing queue is joined.
    """

    async def _bh_flush_writer(self) -> None:
        await self._outgoing.join()


async def test_qmp_over_tls_with_qemu_qmp_and_livemig_qmp(daemons, tmp_path) -> None:
    directory = tmp_path / "tls"
    make_creds_dir(directory, ["localhost"])
    source = daemons(
        "source_daemon",
        *tls_object(directory, "server"),
        *source_args("uvloop"),
        "--qmp", "tcp:127.0.0.1:0,tls-creds=tls0",
    )  # fmt: skip
    tls_address = str(source.ready["qmp"][1])  # after the plaintext one source_args adds
    host, port = tls_address.removeprefix("tcp:").rsplit(":", 1)
    context = TlsCredsX509(id="c", dir=directory, endpoint="client").context()

    client = TlsQemuQMPClient("tls-test")
    await client.connect((host, int(port)), ssl=context)
    try:
        assert "running" == (await client.execute("query-status"))["status"]
    finally:
        await client.disconnect()

    code, out, err = await livemig(
        "qmp", tls_address, "query-status", "--tls-creds", str(directory)
    )
    assert 0 == code, err
    assert '"running": true' in out
    code, _, err = await livemig("qmp", tls_address, "query-status")  # plaintext
    assert 1 == code
    assert "livemig qmp:" in err


async def test_a_migration_between_daemons_over_tls(daemons, tmp_path) -> None:
    directory = tmp_path / "tls"
    make_creds_dir(directory, ["localhost"])
    source = daemons("source_daemon", *tls_object(directory, "client"), *source_args("uvloop"))
    dest = daemons("dest_daemon", *dest_args("uvloop", *tls_object(directory, "server")))
    async with qmp(dest) as client:
        await client.execute("migrate-set-parameters", {"tls-creds": "tls0"})
    code, out, err = await livemig(
        "migrate", "--from", source.qmp_address, "--to", dest.incoming_uri,
        "--set", "tls-creds=tls0", "--cap", "x-digest-check=on",
    )  # fmt: skip
    assert 0 == code, err + out
    assert "status:        completed" in out
    async with qmp(dest) as client:
        assert "completed" == (await wait_status(client, FINAL))["status"]


async def test_qmp_sockets_are_private_and_open_tcp_qmp_is_warned_about(daemons, tmp_path) -> None:
    path = tmp_path / "vm.qmp"
    source = daemons(
        "source_daemon", *source_args("uvloop"), "--qmp", f"unix:{path}",
        "--qmp", "tcp:0.0.0.0:0",
    )  # fmt: skip
    assert 0o600 == path.stat().st_mode & 0o777
    warning = source.wait_for_log("qmp_without_tls")
    assert str(warning["address"]).startswith("tcp:0.0.0.0:")
    assert not [line for line in source.lines if line.get("event") == "qmp_without_tls"
                and "127.0.0.1" in str(line.get("address"))]  # fmt: skip


async def test_a_bad_object_is_a_clear_start_up_error(tmp_path) -> None:
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dest_daemon",
        *dest_args("uvloop", *tls_object(tmp_path / "nothing-here", "server")),
        stderr=subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(done.communicate(), 30)
    assert 2 == done.returncode
    assert b"ca-cert.pem is missing" in stderr


def test_the_client_context_refuses_an_unknown_server(tmp_path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    make_creds_dir(ours, ["localhost"])
    make_creds_dir(theirs, ["localhost"])
    context = TlsCredsX509(id="c", dir=ours, endpoint="client").context()
    assert ssl.TLSVersion.TLSv1_3 == context.minimum_version
    assert context.check_hostname
