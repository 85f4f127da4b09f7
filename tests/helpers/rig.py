"""A source and a destination on loopback with a fault proxy on the migration path."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from faultproxy import FaultProxy, parse_fault
from netio import QMPClientError, TcpAddress
from tests.e2e.conftest import (
    assert_matches_replay,
    dest_args,
    qmp,
    source_args,
    stopped_vm,
    wait_status,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from livemig.daemons import DaemonProcess

FAST_TIMEOUTS = {
    "x-peer-timeout-ms": 2000,
    "x-ping-interval-ms": 200,
    "x-resolve-interval-ms": 200,
    "x-connect-timeout-ms": 1000,
}
RESOLVED = frozenset({"completed", "failed", "cancelled"})


@dataclass
class Rig:
    """A source and a destination joined through a fault proxy."""

    source: DaemonProcess
    dest: DaemonProcess
    proxy: FaultProxy
    proxy_uri: str

    def fault(self, **spec: object) -> object:
        """Activate a fault on the proxy."""
        return self.proxy.add(parse_fault(spec))

    async def start_migration(
        self, *, pause_before_switchover: bool = False, postcopy: bool = False
    ) -> None:
        """Fast liveness timeouts, digest check on, and `migrate` through the proxy.

        With `postcopy`: a 1 ms limit precopy cannot meet, and `migrate-start-postcopy` at once.
        """
        for daemon in (self.source, self.dest):
            async with qmp(daemon) as client:
                await client.execute("migrate-set-parameters", FAST_TIMEOUTS)
        caps = {"events": True, "x-digest-check": True, "postcopy-ram": postcopy}
        caps["pause-before-switchover"] = pause_before_switchover
        async with qmp(self.source) as client:
            await client.execute(
                "migrate-set-capabilities",
                {"capabilities": [{"capability": n, "state": s} for n, s in caps.items()]},
            )
            limit = 1 if postcopy else 300
            await client.execute("migrate-set-parameters", {"downtime-limit": limit})
            await client.execute("migrate", {"uri": self.proxy_uri})
            if postcopy:
                await client.execute("migrate-start-postcopy")

    async def status(self, daemon: DaemonProcess) -> str:
        """The daemon's migration status."""
        async with qmp(daemon) as client:
            return str((await client.execute("query-migrate")).get("status", "none"))

    async def wait(self, daemon: DaemonProcess, statuses: set[str], timeout_s: float = 30) -> str:
        """Wait for one of `statuses` on a daemon."""
        async with qmp(daemon) as client:
            info = await wait_status(client, frozenset(statuses), timeout_s)
        return str(info["status"])


async def make_rig(daemons: Callable[..., DaemonProcess]) -> AsyncIterator[Rig]:
    """Source (busy 64 MiB VM) and destination, with a fault proxy on the migration path."""
    source = daemons("source_daemon", *source_args("uvloop", dirty_rate=50_000), name="source")
    dest = daemons("dest_daemon", *dest_args("uvloop"), name="dest")
    host, port = dest.incoming_uri.removeprefix("tcp:").rsplit(":", 1)
    proxy = FaultProxy(upstream=TcpAddress(host=host, port=int(port)))
    address = await proxy.start(TcpAddress(host="127.0.0.1", port=0))
    yield Rig(source=source, dest=dest, proxy=proxy, proxy_uri=f"tcp:127.0.0.1:{address.port}")
    await proxy.close()


async def runs(daemon: DaemonProcess) -> bool | None:
    """Whether the daemon runs a VM (None: the daemon is gone)."""
    if daemon.process.poll() is not None:
        return None
    try:
        async with qmp(daemon) as client:
            return bool((await client.execute("query-status"))["running"])
    except QMPClientError:
        return None


async def assert_runs_only_on(winner: DaemonProcess, loser: DaemonProcess) -> None:
    """The VM runs on `winner` and not on `loser`, and equals the replay after a stop."""
    assert await runs(winner), f"the VM does not run on {winner.name}"
    assert not await runs(loser), f"the VM also runs on {loser.name}"
    await asyncio.sleep(0.2)
    async with qmp(winner) as client:
        assert_matches_replay(await stopped_vm(client))


async def wait_active_with_data(rig: Rig) -> None:
    """Precopy is under way (status active and pages flowing through the proxy)."""
    await rig.wait(rig.source, {"active"})
    async with asyncio.timeout(10):
        while rig.proxy.stats.bytes_main < 4 * 1024 * 1024:
            await asyncio.sleep(0.01)
