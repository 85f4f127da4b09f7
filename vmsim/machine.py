"""The simulated machine: guest RAM, vCPUs, devices, run state and savevm registry.

The rule every migration test relies on: the digest taken at a stop after N ticks is a pure
function of (config, N), whatever stops, saves, loads or migrations happened in between and
however the N ticks were sliced into `run` calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmsim.config import CONTENT_FILLS, WorkloadKind
from vmsim.devices.cpu import CPU_VMSD, VCpu
from vmsim.devices.globalstate import GLOBALSTATE_VMSD, GlobalState
from vmsim.devices.its import ITS_VMSD, Its
from vmsim.devices.serial import SERIAL_VMSD, Serial
from vmsim.devices.timer import TIMER_VMSD, Timer
from vmsim.digest import machine_digest
from vmsim.errors import ChangeStateError, ConfigError, NotAllowed
from vmsim.fill import fill_content_digest, fill_ram
from vmsim.guest import Guest
from vmsim.layout import MachineLayout
from vmsim.postcopy import PostcopyPages
from vmsim.ram import GuestRam
from vmsim.runstate import RunState, RunStateMachine
from vmsim.savevm.ram_handler import RAM_IDSTR, RAM_VERSION_ID, RamSaveHandler
from vmsim.savevm.registry import SaveVMRegistry
from vmsim.workload import check_ab_ranges

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from vmsim.config import MachineConfig

__all__ = ["GLOBALSTATE_IDSTR", "Machine", "replay"]

GLOBALSTATE_IDSTR = "globalstate"


class Machine:
    """A deterministic simulated VM.

    Attributes:
        config: the configuration it was built from.
        layout: the RAM map derived from the configuration.
        ram: guest RAM with its dirty log.
        vcpus: the vCPUs.
        timer: the timer (its clock is the tick count).
        serial: the UART.
        its: the interrupt translation service.
        globalstate: the run state stored for migration.
        ram_handler: the RAM section's save/load handlers.
        savevm: the savevm registry of every section.
        runstate: the run state and change-state handlers.
        postcopy: on a destination in postcopy, which pages it holds and the vCPU's waiting
            writes (`vmsim.postcopy`); None otherwise.
    """

    def __init__(
        self, config: MachineConfig, *, incoming: bool, memory: NDArray[np.uint8] | None = None
    ) -> None:
        """Build the machine; use `boot` or `for_incoming` instead."""
        self.config = config
        self.layout = MachineLayout.of(config)
        self.ram = GuestRam(config.ram_bytes, prefault=incoming, memory=memory)
        self.vcpus = [VCpu(index) for index in range(config.vcpus)]
        self.timer = Timer()
        self.serial = Serial()
        self.its = Its(self.ram, self.layout)
        self.globalstate = GlobalState()
        self.ram_handler = RamSaveHandler(self.ram)
        self.runstate = RunStateMachine(RunState.PRELAUNCH)
        self.savevm = SaveVMRegistry(runstate=self.runstate)
        self.postcopy: PostcopyPages | None = None
        self._guest = Guest(
            config, self.layout, self.ram, self.vcpus, (self.timer, self.serial, self.its)
        )
        self._register_sections()
        self.runstate.add_change_state_handler(self.its.on_change_state)

    def _register_sections(self) -> None:
        registry = self.savevm
        registry.register(RAM_IDSTR, 0, handlers=self.ram_handler, version_id=RAM_VERSION_ID)
        registry.register(GLOBALSTATE_IDSTR, 0, vmsd=GLOBALSTATE_VMSD, opaque=self.globalstate)
        for cpu in self.vcpus:
            registry.register("cpu", cpu.index, vmsd=CPU_VMSD, opaque=cpu)
        registry.register("timer", 0, vmsd=TIMER_VMSD, opaque=self.timer)
        registry.register("serial", 0, vmsd=SERIAL_VMSD, opaque=self.serial)
        registry.register("its", 0, vmsd=ITS_VMSD, opaque=self.its)

    @classmethod
    def boot(cls, config: MachineConfig, content: bytes | memoryview | None = None) -> Machine:
        """Build a machine, fill its RAM and boot the guest; the run state is PRELAUNCH.

        `content` is an `image` or `mixed` fill's bytes, read by the caller (vmsim does no
        I/O); they must have the digest the configuration names.

        Raises:
            ConfigError: the content is missing, or is not what the configuration names.
        """
        if config.fill in CONTENT_FILLS and content is not None:
            digest = fill_content_digest(content)
            if digest != config.fill_digest:
                where = f" ({config.fill_source})" if config.fill_source else ""
                msg = (
                    f"the {config.fill} fill's bytes{where} changed: digest {digest}, the "
                    f"configuration names {config.fill_digest}"
                )
                raise ConfigError(msg)
        machine = cls(config, incoming=False)
        fill_ram(machine.ram, config.fill, config.seed, content)
        machine._guest.boot()
        return machine

    @classmethod
    def for_incoming(
        cls,
        config: MachineConfig,
        *,
        prefault: bool = True,
        memory: NDArray[np.uint8] | None = None,
    ) -> Machine:
        """Build an empty machine to load a migration into; the run state is INMIGRATE.

        With `prefault`, RAM is zeroed and every page touched now, so the stop-and-copy phase
        does not pay for page faults (QEMU's -mem-prealloc); without, the caller populates it
        (`vmsim.populate_write`, while pages arrive). `memory` (the RAM size, zero-filled and
        faulted in already) is used instead. Nothing is filled or booted: the stream brings it.
        """
        machine = cls(config, incoming=prefault, memory=memory)
        machine.runstate.transition(RunState.INMIGRATE)
        return machine

    @property
    def ticks(self) -> int:
        """Ticks executed since boot (the timer's virtual clock)."""
        return self.timer.clock_ticks

    @property
    def is_running(self) -> bool:
        """Whether the run state is RUNNING."""
        return self.runstate.is_running

    def run(self, n_ticks: int) -> None:
        """Execute n_ticks guest ticks.

        Raises:
            NotAllowed: the VM is not RUNNING, or n_ticks is negative.
        """
        if not self.runstate.is_running:
            raise NotAllowed(f"run: the VM is {self.runstate.state}, not running")
        if n_ticks < 0:
            raise NotAllowed(f"run: n_ticks must be >= 0, got {n_ticks}")
        postcopy = self.postcopy
        if postcopy is not None and postcopy.blocked:
            missing = len(postcopy.waiting_for())
            raise NotAllowed(f"run: the vCPUs wait for {missing} pages not received (postcopy)")
        self._guest.run(n_ticks)
        if postcopy is not None:
            postcopy.try_unblock()

    # ------------------------------------------------------------------ postcopy

    def start_postcopy(self, missing: NDArray[np.integer] | NDArray[np.bool_]) -> PostcopyPages:
        """Destination: from now on the guest may run before the `missing` pages have arrived.

        `missing` are page numbers, or one bool per page (True: missing).

        Guest writes are journaled and applied once their pages are received (`run` then
        blocks the vCPUs until they are); received pages go through the RAM loader, which
        places only pages not received yet.

        Raises:
            NotAllowed: postcopy already started, or a device page is missing (the source
                sends the pages device state reads at load before it: `layout.device_pfns`).
            RamError: a missing page is outside RAM.
        """
        if self.postcopy is not None:
            raise NotAllowed("start_postcopy: postcopy already started")
        pages = PostcopyPages(self.ram.n_pages, missing)
        device_missing = ~pages.received[self.layout.device_pfns]
        if device_missing.any():
            msg = (
                "start_postcopy: a page the device state reads at load (the ITS tables) is "
                "missing; it must arrive before the device state"
            )
            raise NotAllowed(msg)
        self.postcopy = pages
        self.ram.journal = pages.journal
        self.ram_handler.loader.postcopy = pages
        return pages

    def postcopy_unblock(self) -> bool:
        """Apply the vCPUs' waiting writes if their pages arrived; True if they may run."""
        return self.postcopy is None or self.postcopy.try_unblock()

    def finish_postcopy(self) -> None:
        """Every page arrived: apply the waiting writes and leave postcopy.

        Raises:
            NotAllowed: pages are still missing.
        """
        postcopy = self.postcopy
        if postcopy is None:
            return
        if postcopy.missing_count or not postcopy.try_unblock():
            msg = f"finish_postcopy: {postcopy.missing_count} pages have not arrived"
            raise NotAllowed(msg)
        self.ram.journal = None
        self.ram_handler.loader.postcopy = None
        self.postcopy = None

    def vm_start(self) -> None:
        """QEMU's vm_start: go RUNNING and run the change-state handlers forward.

        A no-op if the VM is already running. A handler that fails on a start does not stop
        it: QEMU's vm_state_notify ignores the handlers' results when the VM starts.

        Raises:
            InvalidTransition: the current state cannot go to RUNNING.
        """
        if self.runstate.is_running:
            return
        self.runstate.transition(RunState.RUNNING)
        self.runstate.notify(running=True, state=RunState.RUNNING)  # failures ignored, as QEMU

    def vm_stop(self, state: RunState = RunState.PAUSED) -> None:
        """QEMU's do_vm_stop: if running, set state and run the handlers in reverse.

        If the VM is already stopped only the run state changes (vm_stop_force_state).

        Raises:
            InvalidTransition: the current state cannot go to state.
            ChangeStateError: handlers failed. As in QEMU the VM is stopped all the same (run
                state `state`, every handler ran), so the caller can vm_start it again.
        """
        old_state = self.runstate.state
        self.runstate.transition(state)
        if old_state is RunState.RUNNING:
            failures = self.runstate.notify(running=False, state=state)
            if failures:
                raise ChangeStateError(old_state, state, failures)

    def stop_for_migration(self) -> RunState:
        """QEMU's migration_stop_vm: store the run state in globalstate, stop in FINISH_MIGRATE.

        Returns:
            The run state before the stop (the source returns to it if migration fails).

        Raises:
            ChangeStateError: handlers failed; the VM is in FINISH_MIGRATE, globalstate holds
                the state before the stop, and so does the error's `from_state`.
        """
        old_state = self.runstate.state
        self.globalstate.store(old_state)
        self.vm_stop(RunState.FINISH_MIGRATE)
        return old_state

    def migrated_runstate(self) -> RunState:
        """On a destination after the load: the source's run state (RUNNING if none arrived)."""
        stored = self.globalstate.stored_runstate() if self.globalstate.received else None
        return RunState.RUNNING if stored is None else stored

    def digest(self) -> str:
        """xxh3-128 of RAM, the tick count and every device's state, in registry order.

        The state of a device is what its VMSD saves (all subsections' registers are reset
        while unneeded, so they agree either way) plus device-internal state such as the ITS
        cache. The globalstate section is migration metadata and is left out.

        Raises:
            NotAllowed: in postcopy (pages are missing or writes wait: RAM is not final).
        """
        if self.postcopy is not None:
            msg = f"digest: in postcopy, {self.postcopy.missing_count} pages not received yet"
            raise NotAllowed(msg)
        devices: list[object] = []
        for entry in self.savevm.entries:
            if entry.vmsd is None or entry.idstr == GLOBALSTATE_IDSTR:
                continue
            item: dict[str, object] = {
                "idstr": entry.idstr,
                "instance_id": entry.instance_id,
                "state": entry.vmsd.save(entry.opaque),
            }
            if isinstance(entry.opaque, Its):
                item["internal"] = entry.opaque.internal_state()
            devices.append(item)
        return machine_digest(self.ram, self.ticks, devices)

    def take_serial_output(self) -> bytes:
        """Return the bytes the UART transmitted since the last call (they left the VM)."""
        return self.serial.take_output()

    def check_ab_ram(self) -> list[str]:
        """QEMU's check_guests_ram over every vCPU's ab sweep range.

        Returns:
            [] when consistent, else descriptions of the first 10 inconsistencies.

        Raises:
            NotAllowed: the workload is not ab.
        """
        if self.config.workload is not WorkloadKind.AB:
            raise NotAllowed(f"check_ab_ram needs the ab workload, not {self.config.workload}")
        return check_ab_ranges(self.ram, self.layout.partitions)


def replay(config: MachineConfig, ticks: int, content: bytes | memoryview | None = None) -> str:
    """Boot, start, run `ticks` ticks, pause, and return the digest (the oracle's reference).

    `content`: an `image` or `mixed` fill's bytes (see `Machine.boot`).
    """
    machine = Machine.boot(config, content)
    machine.vm_start()
    machine.run(ticks)
    machine.vm_stop(RunState.PAUSED)
    return machine.digest()
