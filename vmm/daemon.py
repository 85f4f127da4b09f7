"""The VMM: one daemon's state — at most one VM, migrations out and in, QMP — and its main.

Both entry points (`source-daemon`, `dest-daemon`) run this; they differ only in whether they boot
a VM or wait for one. A destination that received a VM can migrate it onward, and a source whose
VM left can receive one back (A→B→A), as QEMU is one binary with or without `-incoming`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import structlog

from netio import FileAddress, QMPServer, VersionInfo, bind_context, parse_migration_uri
from vmm.errors import CommandRefusedError
from vmm.incoming import IncomingService
from vmm.outgoing import OutgoingMigration
from vmm.params import MigrationCapabilities, MigrationParameters
from vmm.status import MigrationStatus, is_active
from vmm.vm import VirtualMachine
from vmsim import Machine, MachineConfig, RunState

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from netio import MigrationAddress

log = structlog.get_logger("vmm.daemon")
SERIAL_LINE_BYTES: Final = 80  # guest serial output is logged a line (or this much) at a time


@dataclass(frozen=True, kw_only=True, slots=True)
class DaemonOptions:
    """How a daemon starts."""

    role: str
    vm_config: MachineConfig | None = None
    start_paused: bool = False
    incoming: str | None = None
    qmp: tuple[str, ...] = ()
    serial_path: Path | None = None
    expected_uuid: str | None = None


class Vmm:
    """The state behind one daemon's QMP commands."""

    def __init__(self, options: DaemonOptions) -> None:
        loop = asyncio.get_running_loop()
        self.options = options
        self.qmp: QMPServer | None = None
        self.clock: Callable[[], float] = loop.time
        self.params = MigrationParameters()
        self.caps = MigrationCapabilities()
        self.vm: VirtualMachine | None = None
        self.migrated_away = False
        self.autostart = not options.start_paused
        self.outgoing: OutgoingMigration | None = None
        self.incoming: IncomingService | None = None
        self.quit_requested = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._serial_file = (
            options.serial_path.open("ab") if options.serial_path is not None else None
        )
        self._serial_line = bytearray()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Boot the configured VM and/or start listening for an incoming one."""
        if self.options.vm_config is not None:
            self.boot(self.options.vm_config)
        if self.options.incoming not in (None, "defer"):
            await self.start_incoming(parse_migration_uri(self.options.incoming or "", listen=True))

    def boot(self, config: MachineConfig) -> None:
        """Boot a new VM from its configuration (QEMU's startup, then `cont` unless -S)."""
        if config.uuid is None:
            config = MachineConfig.from_dict({**config.to_dict(), "uuid": str(uuid.uuid4())})
        vm = self._install(Machine.boot(config))
        log.info("vm_booted", config=config.to_dict())
        if self.autostart:
            vm.start()

    async def close(self) -> None:
        """Stop migrations, the VM and the listeners."""
        if self.outgoing is not None:
            await self.outgoing.close()
        if self.incoming is not None:
            await self.incoming.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._serial_file is not None:
            self._serial_file.close()

    def _install(self, machine: Machine) -> VirtualMachine:
        if self._runner is not None:
            self._runner.cancel()
        vm = VirtualMachine(
            machine, emit_event=self.emit_event, clock=self.clock, serial_sink=self._serial
        )
        self.vm = vm
        self.migrated_away = False
        self._runner = asyncio.create_task(vm.run(), name="vcpu")
        return vm

    # -- the IncomingHost protocol -------------------------------------------------------

    def busy_reason(self) -> str | None:
        """Why no VM can be received now, or None."""
        if self.outgoing is not None and is_active(self.outgoing.status.status):
            return "this daemon is migrating its VM out"
        if self.vm is not None and not self.migrated_away:
            return f"a VM is already on this daemon (runstate {self.vm.runstate})"
        return None

    def adopt(self, machine: Machine) -> str:
        """Run a VM that was handed over to us (or keep it paused, as the source had it)."""
        vm = self._install(machine)
        if machine.migrated_runstate() is RunState.RUNNING and self.autostart:
            vm.start()
        else:
            vm.stop(RunState.PAUSED)
        return str(vm.runstate)

    # -- migrations ----------------------------------------------------------------------

    def start_outgoing(self, address: MigrationAddress) -> OutgoingMigration:
        """`migrate`: refuse when QEMU would, else start one."""
        self._check_can_migrate(address)
        vm = self.vm
        assert vm is not None  # noqa: S101 - checked above
        migration = OutgoingMigration(
            vm=vm,
            address=address,
            migration_id=uuid.uuid4().hex,
            params=lambda: self.params,
            caps=self.caps,
            emit_event=self.emit_event,
            clock=self.clock,
            on_completed=self._outgoing_completed,
        )
        self.outgoing = migration
        bind_context(role=self.options.role)
        migration.start()
        return migration

    def _check_can_migrate(self, address: MigrationAddress) -> None:
        if self.outgoing is not None and is_active(self.outgoing.status.status):
            raise CommandRefusedError("There's a migration process in progress")
        if self.vm is None:
            raise CommandRefusedError("Guest is waiting for an incoming migration")
        if self.vm.runstate is RunState.POSTMIGRATE:
            raise CommandRefusedError(
                "Can't migrate the vm that was paused due to previous migration"
            )
        if not self.caps.return_path and not isinstance(address, FileAddress):
            raise CommandRefusedError(
                "capability return-path is off, but a tcp/unix migration needs the return path "
                "for its ownership handover (docs/handover.md); only a file: migration has none"
            )

    def _outgoing_completed(self, migration: OutgoingMigration) -> None:
        if migration.uses_return_path:
            self.migrated_away = True

    async def start_incoming(self, address: MigrationAddress) -> None:
        """`migrate-incoming` (or `--incoming`): listen, or load a file (checked right away)."""
        incoming = self._incoming_service()
        if isinstance(address, FileAddress):
            reason = self.busy_reason()
            if reason is not None:
                raise CommandRefusedError(f"cannot load {address}: {reason}")
            incoming.load_file(address)
            return
        if incoming.address is not None:
            raise CommandRefusedError("The incoming migration has already been started")
        # A daemon with a VM may listen: each arriving stream is refused (BUSY) while its VM is
        # here, and the listener answers RESOLVE for migrations it took part in.
        incoming.listen(address)

    def _incoming_service(self) -> IncomingService:
        if self.incoming is None:
            self.incoming = IncomingService(
                host=self,
                params=lambda: self.params,
                events_enabled=lambda: self.caps.events,
                emit_event=self.emit_event,
                clock=self.clock,
                expected_uuid=self.options.expected_uuid,
            )
        return self.incoming

    def query_migrate(self) -> dict[str, object]:
        """`query-migrate`: the newest migration, in or out (QEMU shows one at a time)."""
        outgoing, incoming = self.outgoing, self.incoming
        current_in = incoming.current if incoming is not None else None
        info: dict[str, object] = {}
        if outgoing is not None and (
            current_in is None or outgoing.stats.started_at >= current_in.started_at
        ):
            info = outgoing.info()
        elif incoming is not None:
            info = incoming.info()
        if incoming is not None and incoming.address is not None:
            # Where this daemon listens, whichever migration is shown (QEMU's socket-address).
            info.setdefault("socket-address", incoming.info()["socket-address"])
        return info

    def migration_status(self) -> MigrationStatus:
        """The status `query-migrate` reports."""
        return MigrationStatus(str(self.query_migrate().get("status", "none")))

    # -- events and serial ---------------------------------------------------------------

    def emit_event(self, name: str, data: Mapping[str, object] | None = None) -> None:
        """Send a QMP event to every connected client, and log it."""
        log.info("qmp_event", qmp_event=name, data=dict(data) if data else {})
        if self.qmp is not None:
            self.qmp.emit_event(name, data)

    def _serial(self, output: bytes) -> None:
        if self._serial_file is not None:
            self._serial_file.write(output)
            self._serial_file.flush()
        self._serial_line.extend(output)
        while b"\n" in self._serial_line or len(self._serial_line) >= SERIAL_LINE_BYTES:
            cut = self._serial_line.find(b"\n")
            cut = cut if cut >= 0 else SERIAL_LINE_BYTES
            line = bytes(self._serial_line[:cut])
            del self._serial_line[: cut + 1 if cut < len(self._serial_line) else cut]
            log.debug("serial", text=line.decode("latin-1"))


def version_info() -> VersionInfo:
    """What the QMP greeting announces (QEMU-shaped, with livemig's own version)."""
    return VersionInfo(major=0, minor=1, micro=0, package="livemig 0.1.0")
