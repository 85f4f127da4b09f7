"""QEMU's qmp-shell (a subprocess) against our QMP server.

qmp-shell greets, negotiates, calls ``query-commands`` for tab completion, then sends each stdin
line as ``{"execute": NAME, "arguments": {...}}`` without an ``id`` and prints the reply as JSON.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from netio import TcpAddress
from tests.unit.netio.qmp_fixtures import serving

QMP_SHELL = Path(sys.executable).parent / "qmp-shell"


async def shell(target: str, commands: str, *options: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(QMP_SHELL),
        *options,
        target,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"HOME": "/tmp", "PATH": "/usr/bin:/bin"},
    )
    async with asyncio.timeout(20):
        stdout, stderr = await process.communicate(commands.encode())
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.mark.skipif(not QMP_SHELL.exists(), reason="qmp-shell is not installed")
def test_qmp_shell_over_tcp_runs_commands_and_prints_replies(run):
    async def main():
        async with serving() as (_server, address, _commands):
            assert isinstance(address, TcpAddress)
            code, out, err = await shell(
                f"{address.host}:{address.port}",
                "echo value=hi\nquery-version\nnope\nfail\necho value=1 extra=2\n",
            )

        assert 0 == code, err
        assert "Welcome to the QMP low-level shell!" in out
        assert "Connected to QEMU 10.2.0" in out
        assert '{"return": {"value": "hi"}}' in out
        assert (
            '{"return": {"qemu": {"major": 10, "minor": 2, "micro": 0}, "package": "livemig-test"}}'
            in out
        )
        assert (
            '{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}'
            in out
        )
        assert (
            '{"error": {"class": "DeviceNotActive", "desc": "No migration is in progress"}}' in out
        )
        assert (
            '{"error": {"class": "GenericError", "desc": "Parameter \'extra\' is unexpected"}}'
            in out
        )

    run(main, timeout_s=30)


@pytest.mark.skipif(not QMP_SHELL.exists(), reason="qmp-shell is not installed")
def test_qmp_shell_over_a_unix_socket_pretty_prints(run, sock_dir):
    async def main():
        path = sock_dir / "qmp"
        async with serving(f"unix:{path}"):
            code, out, err = await shell(str(path), "query-commands\n", "-p")

        assert 0 == code, err
        assert '"name": "qmp_capabilities"' in out
        assert '"name": "echo"' in out

    run(main, timeout_s=30)
