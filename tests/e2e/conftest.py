"""Fixtures for end-to-end tests: real daemon processes on loopback, driven over QMP."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from livemig.daemons import DaemonProcess, start_daemon
from netio import QMPClient
from vmm.fill_content import fill_content
from vmsim import MachineConfig, replay

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

pytestmark = pytest.mark.e2e

FINAL = frozenset({"completed", "failed", "cancelled"})
LIVEMIG = str(Path(sys.executable).parent / "livemig")


async def livemig(*arguments: str) -> tuple[int, str, str]:
    """Run the `livemig` CLI as a user would: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        LIVEMIG, *arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    """Every e2e test runs the daemons on both event loops."""
    return str(request.param)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemons; all are stopped (and their logs kept in tmp_path) at the end."""
    started: list[DaemonProcess] = []

    def start(module: str, *arguments: str, name: str | None = None) -> DaemonProcess:
        name = name or module
        daemon = start_daemon(
            module, list(arguments), name=name, log_path=tmp_path / f"{name}-{len(started)}.log"
        )
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def source_args(
    loop: str, *, ram_mib: int = 64, workload: str = "random", **extra: object
) -> list[str]:
    """Command line of a source daemon with a small busy VM."""
    args = ["--qmp", "tcp:127.0.0.1:0", "--loop", loop, "--ram-mib", str(ram_mib)]
    args += ["--workload", workload, "--fill", str(extra.pop("fill", "random"))]
    args += ["--dirty-rate", str(extra.pop("dirty_rate", 20_000))]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def dest_args(loop: str, *extra: str) -> list[str]:
    """Command line of a destination daemon listening on a free port."""
    return ["--qmp", "tcp:127.0.0.1:0", "--incoming", "tcp:127.0.0.1:0", "--loop", loop, *extra]


@contextlib.asynccontextmanager
async def qmp(daemon: DaemonProcess) -> AsyncIterator[QMPClient]:
    """A negotiated QMP session with a daemon."""
    async with await QMPClient.connect(daemon.qmp_address) as client:
        yield client


async def wait_status(
    client: QMPClient, statuses: frozenset[str] | set[str], timeout_s: float = 60.0
) -> dict[str, object]:
    """Poll query-migrate until its status is one of `statuses`."""
    async with asyncio.timeout(timeout_s):
        while True:
            info = await client.execute("query-migrate")
            assert isinstance(info, dict)
            if info.get("status") in statuses:
                return info
            await asyncio.sleep(0.02)


async def stopped_vm(client: QMPClient) -> dict[str, object]:
    """Stop a VM and return x-query-vm (ticks, digest, config)."""
    await client.execute("stop")
    vm = await client.execute("x-query-vm")
    assert isinstance(vm, dict)
    return vm


def assert_matches_replay(vm: dict[str, object]) -> None:
    """The oracle: a stopped VM's digest equals a replay of its config for its ticks."""
    config = MachineConfig.from_dict(vm["config"])  # type: ignore[arg-type]
    ticks = vm["ticks"]
    assert isinstance(ticks, int)
    digest = replay(config, ticks, fill_content(config))
    assert digest == vm["digest"], f"digest differs from replay after {ticks} ticks"


async def migrate(
    source: DaemonProcess,
    dest: DaemonProcess,
    *,
    capabilities: dict[str, bool] | None = None,
    parameters: dict[str, object] | None = None,
    wait_for: frozenset[str] = FINAL,
) -> dict[str, object]:
    """Start a migration and wait until it reaches one of `wait_for`."""
    caps = {"events": True, "x-digest-check": True, **(capabilities or {})}
    async with qmp(source) as client:
        await client.execute(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": n, "state": s} for n, s in caps.items()]},
        )
        if parameters:
            await client.execute("migrate-set-parameters", parameters)
        await client.execute("migrate", {"uri": dest.incoming_uri})
        return await wait_status(client, wait_for)
