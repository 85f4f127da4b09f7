"""The VMM: one daemon's state — at most one VM, migrations out and in, QMP — and its main.

Both entry points (`source-daemon`, `dest-daemon`) run this; they differ only in whether they boot
a VM or wait for one. A destination that received a VM can migrate it onward, and a source whose
VM left can receive one back (A→B→A), as QEMU is one binary with or without `-incoming`.

The migration logic is in the sans-IO machines of `migration`; this class is the host their
runners call for what touches the daemon (`vmm.runner.RunnerHost`): the VM's run state, building
and installing a migrated machine, QMP events and the ownership decision.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from migration import (
    CommandRefusedError,
    IncomingLedger,
    MigrationCapabilities,
    MigrationParameters,
    MigrationStatus,
    is_active,
    is_terminal,
)
from migration.record import dest_record, source_record, summary_fields
from netio import FileAddress, QMPServer, VersionInfo, bind_context, parse_migration_uri
from vmm.fill_content import fill_content
from vmm.incoming import IncomingRouter
from vmm.objects import ObjectRegistry, tls_client_for, tls_server_for
from vmm.outgoing import OutgoingMigration
from vmm.prometheus import MigrationCounts
from vmm.records import RecordBook, wall_clock_iso
from vmm.runner import VmStopError
from vmm.serial_console import SerialConsole
from vmm.standby import StandbyRam
from vmm.vcpu_thread import VcpuLock
from vmm.vm import VirtualMachine
from vmm.workers import parallel_map
from vmsim import (
    ChangeStateError,
    Machine,
    MachineConfig,
    RunState,
    populate_write,
    populate_write_supported,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    import numpy as np
    from numpy.typing import NDArray

    from migration.multifd import MapJobs
    from migration.record import Record
    from netio import MigrationAddress

log = structlog.get_logger("vmm.daemon")


@dataclass(frozen=True, kw_only=True, slots=True)
class DaemonOptions:
    """How a daemon starts."""

    role: str
    vm_config: MachineConfig | None = None
    vm_content: bytes | None = None  # an image/mixed fill's bytes, read with the config
    start_paused: bool = False
    incoming: str | None = None
    qmp: tuple[str, ...] = ()
    serial_path: Path | None = None
    expected_uuid: str | None = None
    metrics: tuple[str, ...] = ()
    record_dir: Path | None = None
    objects: tuple[Mapping[str, object], ...] = ()  # --object, as object-add takes them
    parameters: Mapping[str, object] = field(default_factory=dict)  # --global migration.X=V
    capabilities: Mapping[str, bool] = field(default_factory=dict)
    mem_prealloc: bool = False  # QEMU -mem-prealloc: fault incoming RAM in before setup ends
    standby_ram_mib: int = 0  # dest-daemon --ram-mib: with mem_prealloc, RAM ready at start
    vcpu_thread: bool = True  # the vCPU on a thread of its own (vmm.vcpu_thread), or the loop


class Vmm:
    """The state behind one daemon's QMP commands, and the host of its migrations."""

    def __init__(self, options: DaemonOptions) -> None:
        loop = asyncio.get_running_loop()
        self.options = options
        self.qmp: QMPServer | None = None
        self.clock: Callable[[], float] = loop.time
        self.params = MigrationParameters().updated(options.parameters)
        self.caps = MigrationCapabilities().updated(options.capabilities)
        self.vm: VirtualMachine | None = None
        self.vcpu_lock = VcpuLock()  # every VM this daemon runs, and its migrations, hold it
        self.autostart = not options.start_paused
        self.outgoing: OutgoingMigration | None = None
        self.map_jobs: MapJobs = parallel_map  # runs multifd compression jobs
        self._populating: dict[asyncio.Task[bool], threading.Event] = {}  # incoming RAM
        self.standby = StandbyRam()
        self.ledger = IncomingLedger(expected_uuid=options.expected_uuid)
        self.migration_counts = MigrationCounts()
        self.records = RecordBook(directory=options.record_dir)
        self.objects = ObjectRegistry()
        for props in options.objects:
            self.objects.add(props)
        self.incoming: IncomingRouter | None = None
        self.quit_requested = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._serial = SerialConsole(options.serial_path)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Boot the configured VM and/or start listening for an incoming one."""
        if self.options.mem_prealloc and self.options.standby_ram_mib:
            self.standby.prepare(self.options.standby_ram_mib << 20)
            await self.standby.ready()  # as QEMU's -mem-prealloc: RAM faulted in at startup
        if self.options.vm_config is not None:
            self.boot(self.options.vm_config, self.options.vm_content)
        if self.options.incoming not in (None, "defer"):
            await self.start_incoming(parse_migration_uri(self.options.incoming or "", listen=True))

    def boot(self, config: MachineConfig, content: bytes | None = None) -> None:
        """Boot a new VM from its configuration (QEMU's startup, then `cont` unless -S).

        `content`: an `image` or `mixed` fill's bytes, if the caller read them already.

        Raises:
            ConfigError: the fill's bytes cannot be read, or differ from the configuration's.
        """
        if config.uuid is None:
            config = MachineConfig.from_dict({**config.to_dict(), "uuid": str(uuid.uuid4())})
        if content is None:
            content = fill_content(config)
        vm = self._install(Machine.boot(config, content))
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
            await asyncio.gather(self._runner, return_exceptions=True)
        self._serial.close()
        for stop in self._populating.values():
            stop.set()  # the thread stops after its current chunk
        await asyncio.gather(*self._populating, return_exceptions=True)
        await self.standby.close()

    def _install(self, machine: Machine) -> VirtualMachine:
        if self._runner is not None:
            self._runner.cancel()
        vm = VirtualMachine(
            machine,
            emit_event=self.emit_event,
            clock=self.clock,
            serial_sink=self._serial.write,
            lock=self.vcpu_lock,
            vcpu_thread=self.options.vcpu_thread,
        )
        self.vm = vm
        self._runner = asyncio.create_task(vm.run(), name="vcpu")
        return vm

    @property
    def migrated_away(self) -> bool:
        """The VM was handed over to another daemon and runs there (postmigrate here)."""
        outgoing = self.outgoing
        return outgoing is not None and outgoing.vm is self.vm and outgoing.migrated_away

    # -- the host of the migration machines (vmm.runner.RunnerHost) -----------------------

    def stop_vm_for_migration(self) -> RunState:
        """QEMU `migration_stop_vm`.

        Raises:
            VmStopError: a change-state handler refused (or failed); the VM is stopped, and the
                error names the run state to return to.
        """
        vm = self._require_vm()
        previous = vm.runstate
        try:
            return vm.stop_for_migration()
        except ChangeStateError as exc:
            raise VmStopError(RunState(exc.from_state), str(exc)) from exc
        except Exception as exc:
            log.exception("vm_stop_crashed")
            raise VmStopError(previous, f"stopping the VM crashed: {exc!r}") from exc

    def restore_vm(self, runstate: RunState) -> None:
        """Put the VM back as it was before the migration stopped it (QEMU: vm_start if live)."""
        vm = self._require_vm()
        if runstate is RunState.RUNNING:
            vm.start()
        else:
            vm.stop(runstate)

    def set_vm_runstate(self, runstate: RunState) -> None:
        """Leave the stopped VM in `runstate` (postmigrate after a completed migration)."""
        self._require_vm().stop(runstate)

    def throttle_vm(self, *, cpu_percent: int, dirty_limit_mb_per_s: int | None) -> None:
        """The migration's auto-converge or dirty-limit throttle (0 and None lift it)."""
        vm = self._require_vm()
        vm.set_cpu_throttle(cpu_percent)
        vm.set_migration_dirty_limit(dirty_limit_mb_per_s)

    async def build_machine(self, config: MachineConfig) -> Machine:
        """An empty machine for an incoming VM, its RAM faulted in on a thread.

        With MADV_POPULATE_WRITE the machine is ready at once and its RAM is populated while
        the first pass arrives (the populate keeps what was received); without it, or with
        `--mem-prealloc` (QEMU's -mem-prealloc: the cost belongs to setup, not to the pages),
        every page is touched before the source may send (OPEN_ACK waits for it).
        """
        if self.options.mem_prealloc:
            departed = self.vm.machine.ram if self.vm is not None and self.migrated_away else None
            spare = await self.standby.take(config.ram_bytes, departed)
            return await asyncio.to_thread(Machine.for_incoming, config, memory=spare)
        if not _populate_write_supported():
            return await asyncio.to_thread(Machine.for_incoming, config)
        machine = await asyncio.to_thread(Machine.for_incoming, config, prefault=False)
        stop = threading.Event()
        populating = asyncio.create_task(
            asyncio.to_thread(populate_write, machine.ram.array, stop=stop.is_set)
        )
        self._populating[populating] = stop
        populating.add_done_callback(self._populating.pop)
        return machine

    def run_migrated_vm(
        self, machine: Machine, on_page_fault: Callable[[NDArray[np.intp]], None] | None = None
    ) -> str:
        """Install a VM handed over to us and give it the run state QEMU would.

        QEMU (`process_incoming_migration_bh`): a VM that ran on the source runs here too,
        unless this daemon was started with -S (then paused); a VM that was not running keeps
        the run state the source stored in its globalstate section.
        """
        vm = self._install(machine)
        vm.on_page_fault = on_page_fault
        migrated = machine.migrated_runstate()
        if migrated is not RunState.RUNNING:
            vm.stop(migrated)
        elif self.autostart:
            vm.start()
        else:
            vm.stop(RunState.PAUSED)
        return str(vm.runstate)

    def wake_vm(self) -> None:
        """Postcopy: pages arrived for the VM."""
        if self.vm is not None:
            self.vm.wake()

    def watch_vm_faults(self, on_page_fault: Callable[[NDArray[np.intp]], None]) -> None:
        """Postcopy recovery: the VM's page faults go to the recover channel's runner."""
        if self.vm is not None:
            self.vm.on_page_fault = on_page_fault

    def decide_handover(self, migration_id: str) -> tuple[bool, str]:
        """The ownership arbiter. Local: the checks passed, so the VM may pass.

        With several hosts this becomes one compare-and-swap in an external store (etcd)
        that either side may write (docs/architecture.md).
        """
        del migration_id
        return True, ""

    def emit_event(self, name: str, data: Mapping[str, object] | None = None) -> None:
        """Send a QMP event to every connected client, and log it."""
        log.info("qmp_event", qmp_event=name, data=dict(data) if data else {})
        if self.qmp is not None:
            self.qmp.emit_event(name, data)

    def migration_status_changed(self, side: str | None, status: str, migration_id: str) -> None:
        """Count a migration's status change (events on or off); record it once it ends."""
        if side is None:
            return
        self.migration_counts.record(side, status)
        ended = is_terminal(MigrationStatus(status))
        if not ended and status != MigrationStatus.IN_DOUBT:
            return
        record = self._record_of(side, migration_id)
        if record is None:
            return
        self.records.keep(record)
        if ended:
            log.info("migration_summary", **summary_fields(record))
        if (cause := record.get("failure-cause")) is not None:
            self.migration_counts.record_failure(side, str(cause))

    def _record_of(self, side: str, migration_id: str) -> Record | None:
        now = self.clock()
        if side == "source":
            outgoing = self.outgoing
            if outgoing is None or outgoing.migration_id != migration_id:
                return None
            record = source_record(outgoing.source, info=outgoing.info(), now=now)
            started_at, vm_uuid = outgoing.started_at, outgoing.vm.machine.config.uuid
        else:
            incoming = self.ledger.records.get(migration_id)
            if incoming is None:
                return None
            record = dest_record(incoming, params=self.params, caps=self.caps, now=now)
            started_at, vm_uuid = incoming.metrics.started_at, incoming.uuid
        record["vm-uuid"] = vm_uuid
        record["started-at"] = wall_clock_iso(time.time() - (now - started_at))
        return record

    def busy_reason(self) -> str | None:
        """Why no VM can be received now, or None."""
        if self.outgoing is not None and is_active(self.outgoing.status):
            return "this daemon is migrating its VM out"
        if self.vm is not None and not self.migrated_away:
            return f"a VM is already on this daemon (runstate {self.vm.runstate})"
        return None

    # -- migrations ----------------------------------------------------------------------

    def start_outgoing(self, address: MigrationAddress) -> OutgoingMigration:
        """`migrate`: refuse when QEMU would, else start one."""
        vm = self._check_can_migrate(address)
        tls = tls_client_for(self.params, self.objects, address)
        migration = OutgoingMigration(
            vm=vm,
            address=address,
            migration_id=uuid.uuid4().hex,
            params=lambda: self.params,
            caps=self.caps,
            host=self,
            clock=self.clock,
            tls=tls,
            map_jobs=self.map_jobs,
            xbzrle_cache=self.standby.xbzrle_cache(),
        )
        self.outgoing = migration
        bind_context(role=self.options.role)
        migration.start()
        return migration

    def _check_can_migrate(self, address: MigrationAddress) -> VirtualMachine:
        if self.outgoing is not None and is_active(self.outgoing.status):
            msg = "There's a migration process in progress"
            raise CommandRefusedError(msg)
        if self.vm is None:
            msg = "Guest is waiting for an incoming migration"
            raise CommandRefusedError(msg)
        if self.vm.runstate is RunState.POSTMIGRATE:
            msg = "Can't migrate the vm that was paused due to previous migration"
            raise CommandRefusedError(msg)
        if not self.caps.return_path and not isinstance(address, FileAddress):
            msg = (
                "capability return-path is off, but a tcp/unix migration needs the return path "
                "for its ownership handover (docs/handover.md); only a file: migration has none"
            )
            raise CommandRefusedError(msg)
        if self.caps.multifd and isinstance(address, FileAddress):
            msg = "capability multifd is on, but a file: migration is one stream (turn it off)"
            raise CommandRefusedError(msg)
        if self.params.timeout_action == "postcopy" and not self.caps.postcopy_ram:
            msg = "x-timeout-action postcopy needs the postcopy-ram capability on"
            raise CommandRefusedError(msg)
        if self.caps.postcopy_ram and isinstance(address, FileAddress):
            msg = "capability postcopy-ram is on, but a file: migration has no return path"
            raise CommandRefusedError(msg)
        return self.vm

    async def start_incoming(self, address: MigrationAddress) -> None:
        """`migrate-incoming` (or `--incoming`): listen, or load a file (checked right away)."""
        router = self._router()
        if isinstance(address, FileAddress):
            self._check_can_load_file(address)
            router.load_file(address)
            return
        if router.address is not None:
            msg = "The incoming migration has already been started"
            raise CommandRefusedError(msg)
        # A daemon with a VM may listen: each arriving stream is refused (BUSY) while its VM is
        # here, and the listener answers RESOLVE for migrations it took part in.
        router.listen(address)

    def _check_can_load_file(self, address: FileAddress) -> None:
        reason = self.busy_reason()
        if reason is not None:
            msg = f"cannot load {address}: {reason}"
            raise CommandRefusedError(msg)
        held = self.ledger.held
        if held is not None:
            msg = (
                f"VM {held.uuid} from migration {held.migration_id} is held in doubt here; "
                "resolve it first (livemig resolve)"
            )
            raise CommandRefusedError(msg)

    def _router(self) -> IncomingRouter:
        if self.incoming is None:
            self.incoming = IncomingRouter(
                ledger=self.ledger,
                host=self,
                busy_reason=self.busy_reason,
                params=lambda: self.params,
                clock=self.clock,
                tls=lambda: tls_server_for(self.params, self.objects),
            )
        return self.incoming

    def set_capabilities(self, caps: MigrationCapabilities) -> None:
        """`migrate-set-capabilities` (the caller checked no migration runs)."""
        self.caps = caps
        self.ledger.events_enabled = caps.events
        self.standby.follow_xbzrle(caps, self.params)

    def set_parameters(self, params: MigrationParameters) -> None:
        """`migrate-set-parameters`: also applies to a running migration, as in QEMU."""
        self.params = params
        self.standby.follow_xbzrle(self.caps, params)
        if self.outgoing is not None:
            self.outgoing.parameters_changed()

    def query_migrate(self) -> dict[str, object]:
        """`query-migrate`: the newest migration, in or out (QEMU shows one at a time)."""
        side, info = self.newest_migration()
        if side is None and self.incoming is not None:
            info = self.incoming.info()  # status none, with where it listens
        if self.incoming is not None and self.incoming.address is not None:
            # Where this daemon listens, whichever migration is shown (QEMU's socket-address).
            info.setdefault("socket-address", self.incoming.info()["socket-address"])
        return info

    def newest_migration(self) -> tuple[str | None, dict[str, object]]:
        """The side (source or destination) and `query-migrate` of the newest migration."""
        outgoing, current_in = self.outgoing, self.ledger.current
        if outgoing is not None and (
            current_in is None or outgoing.started_at >= current_in.metrics.started_at
        ):
            return "source", outgoing.info()
        record = self.ledger.current
        if record is not None and self.incoming is not None:
            info = self.incoming.info()  # QEMU's destination shows no RAM figures; ours counts
            received = record.metrics
            info["ram"] = {
                "transferred": received.received_bytes,
                "normal": received.normal_pages,
                "duplicate": received.zero_pages,
            }
            if received.postcopy_run_at is not None and self.vm is not None:
                info.update(self.vm.blocktime.to_qmp(self.vm.machine.config.vcpus))
                info["x-postcopy-requests"] = received.postcopy_requests
            return "destination", info
        return None, {}

    def vm_uuid(self) -> str | None:
        """The UUID of the VM this daemon has (running or not), if any."""
        return self.vm.machine.config.uuid if self.vm is not None else None

    def migration_status(self) -> MigrationStatus:
        """The status `query-migrate` reports."""
        return MigrationStatus(str(self.query_migrate().get("status", "none")))

    def _require_vm(self) -> VirtualMachine:
        if self.vm is None:
            msg = "there is no VM on this daemon"
            raise CommandRefusedError(msg)
        return self.vm


def version_info() -> VersionInfo:
    """What the QMP greeting announces (QEMU-shaped, with livemig's own version)."""
    return VersionInfo(major=0, minor=1, micro=0, package="livemig 0.1.0")


@functools.cache
def _populate_write_supported() -> bool:
    return populate_write_supported()
