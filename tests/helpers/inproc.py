"""Daemons in the test's own event loop: the real VMM, QMP server and client, over real sockets.

Each `Daemon` is what `source-daemon`/`dest-daemon` run (`vmm.daemon.Vmm` with its QMP command
registry), minus the process: tests drive it with a real QMP client over a unix socket and may
look inside (`vmm.outgoing.source`, `vmm.ledger`) to check a machine's path through its table.
A fault proxy (`faultproxy`) can sit on the migration path. "Killing" a daemon is closing it:
its connections drop and it decides nothing, as a killed process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from faultproxy import FaultProxy, parse_fault
from netio import QMPClient, QMPServer, TcpAddress
from vmm.daemon import DaemonOptions, Vmm, version_info
from vmm.fill_content import fill_content
from vmm.qmp_commands import build_registry
from vmsim import MachineConfig, replay

if TYPE_CHECKING:
    from pathlib import Path

    from migration import IncomingRecord, SourceMigration
    from migration.table import Row
    from vmsim import Machine

FAST_PARAMETERS = {
    "x-peer-timeout-ms": 600,
    "x-ping-interval-ms": 100,
    "x-resolve-interval-ms": 50,
    "x-connect-timeout-ms": 500,
}
FINAL = frozenset({"completed", "failed", "cancelled"})
_names = itertools.count()


class SlowVmm(Vmm):
    """A VMM whose incoming machines take `build_delay_s` longer to build (a slow host)."""

    build_delay_s: float = 0.0

    async def build_machine(self, config: MachineConfig) -> Machine:
        """Build after the delay (the destination stays in setup meanwhile)."""
        await asyncio.sleep(self.build_delay_s)
        return await super().build_machine(config)


@dataclass
class Daemon:
    """One in-process daemon and a QMP session with it."""

    name: str
    vmm: SlowVmm
    server: QMPServer
    qmp: QMPClient
    closed: bool = False

    @property
    def incoming_uri(self) -> str:
        """Where it listens for migrations."""
        router = self.vmm.incoming
        assert router is not None
        assert router.address is not None
        return str(router.address)

    @property
    def source(self) -> SourceMigration:
        """Its newest outgoing migration's machine."""
        outgoing = self.vmm.outgoing
        assert outgoing is not None, f"{self.name} has no outgoing migration"
        return outgoing.source

    @property
    def record(self) -> IncomingRecord:
        """Its newest incoming migration's record."""
        record = self.vmm.ledger.current
        assert record is not None, f"{self.name} has no incoming migration"
        return record

    def source_path(self) -> list[Row]:
        """The rows the outgoing migration took through the source table."""
        return list(self.source.status.history)

    def dest_path(self) -> list[Row]:
        """The rows the newest incoming migration took through the destination table."""
        return list(self.record.history)

    async def execute(self, command: str, arguments: dict[str, object] | None = None) -> object:
        """Run a QMP command."""
        return await self.qmp.execute(command, arguments)

    async def status(self) -> str:
        """Its migration status (query-migrate)."""
        info = await self.execute("query-migrate")
        assert isinstance(info, dict)
        return str(info.get("status", "none"))

    async def wait(self, statuses: set[str] | frozenset[str], timeout_s: float = 10.0) -> str:
        """Poll query-migrate until the status is one of `statuses`."""
        async with asyncio.timeout(timeout_s):
            while (status := await self.status()) not in statuses:
                await asyncio.sleep(0.005)
        return status

    async def runs(self) -> bool:
        """Whether its VM runs."""
        if self.closed:
            return False
        reply = await self.execute("query-status")
        assert isinstance(reply, dict)
        return bool(reply["running"])

    async def assert_matches_replay(self) -> None:
        """Stop its VM; the digest equals a replay of the config for the same ticks."""
        await self.execute("stop")
        vm = await self.execute("x-query-vm")
        assert isinstance(vm, dict)
        config = MachineConfig.from_dict(vm["config"])  # type: ignore[arg-type]
        ticks = vm["ticks"]
        content = fill_content(config)  # an image or mixed fill's bytes, read again
        assert replay(config, ticks, content) == vm["digest"], "digest differs from the replay"  # type: ignore[arg-type]

    async def close(self) -> None:
        """Shut it down (it decides nothing: to its peers, as if it were killed)."""
        if self.closed:
            return
        self.closed = True
        await self.qmp.close()
        await self.vmm.close()
        await self.server.close()


async def start_daemon(
    tmp: Path,
    *,
    vm: MachineConfig | None = None,
    incoming: str | None = "tcp:127.0.0.1:0",
    expected_uuid: str | None = None,
    record_dir: Path | None = None,
    mem_prealloc: bool = False,
    standby_ram_mib: int = 0,
) -> Daemon:
    """A daemon with (or without) a VM, listening for migrations, with FAST_PARAMETERS set."""
    name = f"d{next(_names)}"
    options = DaemonOptions(
        role=name,
        vm_config=vm,
        incoming=incoming,
        expected_uuid=expected_uuid,
        record_dir=record_dir,
        mem_prealloc=mem_prealloc,
        standby_ram_mib=standby_ram_mib,
    )
    vmm = SlowVmm(options)
    server = QMPServer(commands=build_registry(vmm), version_info=version_info())
    vmm.qmp = server
    address = await server.start(f"unix:{tmp / (name + '.qmp')}")
    await vmm.start()
    client = await QMPClient.connect(address)
    daemon = Daemon(name=name, vmm=vmm, server=server, qmp=client)
    await daemon.execute("migrate-set-parameters", FAST_PARAMETERS)
    return daemon


def small_vm(**changes: object) -> MachineConfig:
    """A small busy VM (8 MiB, random writes), quick to migrate."""
    values: dict[str, object] = {"ram_mib": 8, "dirty_rate": 5000, "seed": 7, **changes}
    return MachineConfig.from_dict(values)


@dataclass
class Pair:
    """A source with a VM and an empty destination, optionally joined through a fault proxy."""

    source: Daemon
    dest: Daemon
    proxy: FaultProxy | None = None
    proxy_uri: str | None = None
    others: list[Daemon] = field(default_factory=list)

    @property
    def uri(self) -> str:
        """Where the source migrates to (the proxy when there is one)."""
        return self.proxy_uri or self.dest.incoming_uri

    def fault(self, **spec: object) -> object:
        """Activate a fault on the proxy."""
        assert self.proxy is not None, "no fault proxy on this pair"
        return self.proxy.add(parse_fault(spec))

    async def migrate(self, **capabilities: bool) -> None:
        """Set capabilities (events and x-digest-check on by default), then `migrate`."""
        caps = {"events": True, "x-digest-check": True, **capabilities}
        await self.source.execute(
            "migrate-set-capabilities",
            {
                "capabilities": [
                    {"capability": name.replace("_", "-"), "state": on} for name, on in caps.items()
                ]
            },
        )
        await self.source.execute("migrate", {"uri": self.uri})

    async def close(self) -> None:
        """Stop everything."""
        for daemon in (self.source, self.dest, *self.others):
            with contextlib.suppress(Exception):
                await daemon.close()
        if self.proxy is not None:
            await self.proxy.close()


async def make_pair(
    tmp: Path, *, proxy: bool = False, vm: MachineConfig | None = None, records: bool = False
) -> Pair:
    """A source (small busy VM) and a destination, with a fault proxy between them if asked.

    With `records`, they write their migration records under tmp/records-source and
    tmp/records-dest.
    """
    source_dir = dest_dir = None
    if records:
        source_dir, dest_dir = tmp / "records-source", tmp / "records-dest"
        source_dir.mkdir()
        dest_dir.mkdir()
    source = await start_daemon(tmp, vm=vm or small_vm(), incoming=None, record_dir=source_dir)
    dest = await start_daemon(tmp, record_dir=dest_dir)
    pair = Pair(source=source, dest=dest)
    if proxy:
        router = dest.vmm.incoming
        assert router is not None
        address = router.address
        assert isinstance(address, TcpAddress)
        pair.proxy = FaultProxy(upstream=address)
        bound = await pair.proxy.start(TcpAddress(host="127.0.0.1", port=0))
        pair.proxy_uri = f"tcp:127.0.0.1:{bound.port}"
    return pair
