"""An outgoing migration in a daemon: the source machine, its runner and its QMP operations.

Everything the migration decides is in the machine; this module only wires it to the daemon:
the runner executes its actions (channels from the migration URI, the VM's run state, QMP
events) and the QMP commands become inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from migration import (
    CommandRefusedError,
    MigrationStatus,
    SourceMigration,
    is_active,
    source_info,
)
from migration import inputs as inp
from netio import ChannelOptions, FileAddress
from vmm.runner import MachineRunner
from vmm.workers import parallel_map

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    from numpy.typing import NDArray

    from migration import MigrationCapabilities, MigrationParameters
    from migration.multifd import MapJobs
    from netio import MigrationAddress, TlsClient
    from vmm.runner import RunnerHost
    from vmm.vm import VirtualMachine


def channel_options(params: MigrationParameters) -> ChannelOptions:
    """Socket options of a migration's channels, from its parameters."""
    return ChannelOptions(
        connect_timeout_s=params.connect_timeout_ms / 1000,
        peer_timeout_ms=params.peer_timeout_ms,
    )


class OutgoingMigration:
    """One migration of this daemon's VM to a destination URI."""

    def __init__(
        self,
        *,
        vm: VirtualMachine,
        address: MigrationAddress,
        migration_id: str,
        params: Callable[[], MigrationParameters],
        caps: MigrationCapabilities,
        host: RunnerHost,
        clock: Callable[[], float],
        tls: TlsClient | None = None,
        map_jobs: MapJobs = parallel_map,
        xbzrle_cache: NDArray[np.uint8] | None = None,
    ) -> None:
        self.vm = vm
        self.address = address
        self._throttled_ticks_before = vm.throttled_ticks()
        self._params = params
        self._clock = clock
        self.source = SourceMigration(
            machine=vm.machine,
            migration_id=migration_id,
            params=params(),
            caps=caps,
            to_file=isinstance(address, FileAddress),
            now=clock(),
            map_jobs=map_jobs,
        )
        xbzrle = self.source.sender.xbzrle
        if xbzrle is not None:
            xbzrle.guest_may_run = vm.lock.released  # while it copies whole pages
            if xbzrle_cache is not None:
                xbzrle.use_memory(xbzrle_cache)  # faulted in ahead (standby)
        self.runner = MachineRunner(
            self.source,
            host=host,
            address=address,
            options=lambda: channel_options(params()),
            clock=clock,
            context=lambda: {"role": "source", "migration_id": migration_id},
            tls=tls,
            # Pages go as views of guest RAM unless XBZRLE sends them from its cache (a copy).
            send_guard=vm.lock if xbzrle is None else None,
        )

    @property
    def migration_id(self) -> str:
        """The migration's id."""
        return self.source.migration_id

    @property
    def status(self) -> MigrationStatus:
        """Its status (QEMU's names)."""
        return self.source.status.status

    @property
    def started_at(self) -> float:
        """When `migrate` started it."""
        return self.source.metrics.started_at

    @property
    def migrated_away(self) -> bool:
        """Completed with a handover: the VM runs at the destination now."""
        return self.status is MigrationStatus.COMPLETED and self.source.uses_return_path

    def start(self) -> None:
        """Start it (status setup)."""
        with self.vm.lock:
            actions = self.source.start(self._clock())
        self.runner.start(actions)

    def info(self) -> dict[str, object]:
        """The `query-migrate` reply."""
        source = self.source
        with self.vm.lock:
            source.refresh()
        info = source_info(self.status, source.metrics, now=self._clock(), caps=source.caps)
        if info:
            info["x-migration-id"] = self.migration_id
        ram = info.get("ram")
        if isinstance(ram, dict) and "dirty-pages-rate" in ram:
            # QEMU's dirty-pages-rate counts distinct pages; this is the guest's write rate.
            ram["x-page-writes-per-second"] = round(self.vm.page_writes_per_second())
        if "ram" in info and source.metrics.throttle_started_at_pass is not None:
            info["x-guest-ticks-throttled"] = self.guest_ticks_throttled()
        pacer = self.vm.pacer
        if source.caps.dirty_limit and pacer.migration_limit_mib_per_s is not None:
            # QEMU shows them while its dirty limit is in service (populate_ram_info).
            info["dirty-limit-throttle-time-per-round"] = pacer.throttle_time_per_round_us()
            info["dirty-limit-ring-full-time"] = pacer.ring_full_time_us()
        return info

    def guest_ticks_throttled(self) -> int:
        """The guest work this migration's throttle cost: ticks an unthrottled guest had run."""
        return self.vm.throttled_ticks() - self._throttled_ticks_before

    def cancel(self) -> None:
        """`migrate_cancel`: refused once HANDOVER was sent, a no-op when nothing runs.

        Raises:
            CommandRefusedError: the VM is being handed over (docs/handover.md row 17).
        """
        if not is_active(self.status):
            return
        self.source.check_cancel()
        self.runner.feed(inp.CancelRequested())

    def resume(self, address: MigrationAddress) -> None:
        """`migrate {uri, resume: true}`: take the paused postcopy up again at `address`.

        Raises:
            CommandRefusedError: nothing is paused in postcopy.
        """
        self.source.check_resume()
        self.runner.retarget(address)
        self.runner.feed(inp.ResumeRequested())

    def start_postcopy(self) -> None:
        """`migrate-start-postcopy`: switch to postcopy at the next round that cannot end.

        Raises:
            CommandRefusedError: no postcopy-ram capability, or not in setup or active.
        """
        self.source.check_start_postcopy()
        self.runner.feed(inp.StartPostcopyRequested())

    def continue_switchover(self, state: str) -> None:
        """`migrate-continue {state}` from pre-switchover.

        Raises:
            CommandRefusedError: the migration is not in `state`.
        """
        if str(self.status) != state:
            msg = f"Migration not in expected state: {self.status}"
            raise CommandRefusedError(msg)
        self.runner.feed(inp.ContinueRequested())

    def parameters_changed(self) -> None:
        """`migrate-set-parameters` while it runs: the new downtime limit, bandwidth, etc."""
        if is_active(self.status):
            self.runner.feed(inp.ParametersChanged(params=self._params()))

    def resolve(self, *, destination_runs: bool) -> None:
        """`x-migrate-resolve`: the operator settles a handover in doubt.

        Raises:
            CommandRefusedError: the migration is not in doubt.
        """
        if self.status is not MigrationStatus.IN_DOUBT:
            msg = "no outgoing migration is in doubt"
            raise CommandRefusedError(msg)
        self.runner.feed(inp.OperatorResolved(destination_runs=destination_runs))

    async def close(self) -> None:
        """Daemon shutdown: drop the connections, decide nothing (docs/handover.md)."""
        await self.runner.close()

    def __repr__(self) -> str:
        return f"<OutgoingMigration {self.migration_id[:8]} {self.status} to {self.address}>"
