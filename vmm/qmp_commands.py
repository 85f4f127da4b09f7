"""The QMP commands of a livemig daemon, with QEMU's names, arguments and refusals.

QEMU commands: query-status, stop, cont, quit, migrate, migrate-incoming, migrate_cancel,
migrate-continue, migrate-start-postcopy, query-migrate, migrate-set-parameters,
query-migrate-parameters, migrate-set-capabilities, query-migrate-capabilities,
set-vcpu-dirty-limit, cancel-vcpu-dirty-limit, query-vcpu-dirty-limit. livemig's own (x-
prefixed): x-query-vm (ticks, digest, config, for `livemig replay`), x-migrate-resolve and
x-migrate-incoming-resolve (docs/handover.md), x-query-migration-records
(docs/observability.md); QEMU's object-add and object-del for TLS credentials and authorization
objects (docs/security.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from migration import (
    CommandRefusedError,
    EngineError,
    Install,
    MigrationStatus,
    ParameterError,
    capability_names,
    is_active,
)
from migration.outbox import Outbox
from migration.params import MAX_DIRTY_LIMIT_MB_S
from netio import Args, CommandRegistry, NetIOError, QMPError, UriError, parse_migration_uri
from vmm.reports import execute_reports
from vmsim import ChangeStateError, RunState, WorkloadKind

log = structlog.get_logger("vmm.qmp")

if TYPE_CHECKING:
    from netio import MigrationAddress
    from netio.qmp.commands import Handler
    from vmm.daemon import Vmm
    from vmm.vm import VirtualMachine


def build_registry(vmm: Vmm) -> CommandRegistry:
    """All commands, bound to one daemon's state."""
    registry = CommandRegistry()
    commands = _Commands(vmm)
    for name, handler in (
        ("query-status", commands.query_status),
        ("stop", commands.stop),
        ("cont", commands.cont),
        ("quit", commands.quit),
        ("migrate", commands.migrate),
        ("migrate-incoming", commands.migrate_incoming),
        ("migrate_cancel", commands.migrate_cancel),
        ("migrate-continue", commands.migrate_continue),
        ("migrate-start-postcopy", commands.migrate_start_postcopy),
        ("query-migrate", commands.query_migrate),
        ("migrate-set-parameters", commands.set_parameters),
        ("query-migrate-parameters", commands.query_parameters),
        ("migrate-set-capabilities", commands.set_capabilities),
        ("query-migrate-capabilities", commands.query_capabilities),
        ("set-vcpu-dirty-limit", commands.set_vcpu_dirty_limit),
        ("cancel-vcpu-dirty-limit", commands.cancel_vcpu_dirty_limit),
        ("query-vcpu-dirty-limit", commands.query_vcpu_dirty_limit),
        ("x-query-vm", commands.query_vm),
        ("x-migrate-resolve", commands.migrate_resolve),
        ("x-query-migration-outcome", commands.query_migration_outcome),
        ("x-migrate-incoming-resolve", commands.migrate_incoming_resolve),
        ("x-query-migration-records", commands.query_migration_records),
        ("object-add", commands.object_add),
        ("object-del", commands.object_del),
    ):
        registry.register(name, _guarded(handler))
    return registry


def _guarded(handler: Handler) -> Handler:
    """Turn the daemon's own errors into QMP GenericErrors."""

    async def run(args: Args) -> object:
        try:
            return await handler(args)
        except EngineError as exc:
            raise QMPError.generic(exc.message) from exc
        except NetIOError as exc:
            raise QMPError.generic(str(exc)) from exc

    return run


class _Commands:
    def __init__(self, vmm: Vmm) -> None:
        self._vmm = vmm

    # -- the VM --------------------------------------------------------------------------

    async def query_status(self, args: Args) -> object:
        args.finish()
        vm = self._vmm.vm
        if vm is None:
            waiting = self._vmm.incoming is not None or self._vmm.options.incoming is not None
            status = RunState.INMIGRATE if waiting else RunState.PRELAUNCH
            return {"status": str(status), "running": False}
        return {"status": str(vm.runstate), "running": vm.is_running}

    async def stop(self, args: Args) -> object:
        args.finish()
        vm = self._vmm.vm
        if vm is None or vm.runstate is RunState.PRELAUNCH:
            self._vmm.autostart = False  # QEMU: stop before/while incoming means -S
        if vm is not None and vm.is_running:
            try:
                vm.stop(RunState.PAUSED)
            except ChangeStateError as exc:
                # QEMU's qmp_stop ignores vm_stop's error: the VM is stopped all the same.
                log.warning("stop_handler_failed", error=str(exc))
        return {}

    async def cont(self, args: Args) -> object:
        args.finish()
        vmm = self._vmm
        vm = vmm.vm
        if vm is None:
            if vmm.incoming is None and vmm.options.incoming is None:
                raise CommandRefusedError("there is no VM to run")
            vmm.autostart = True
            return {}
        if vm.is_running:
            return {}
        if vmm.migrated_away:
            raise CommandRefusedError(
                "the VM was migrated to another daemon and runs there (postmigrate); "
                "running this copy too would run it twice"
            )
        outgoing = vmm.outgoing
        if outgoing is not None and is_active(outgoing.status):
            raise CommandRefusedError(
                f"the VM is being migrated (status {outgoing.status}); "
                "use migrate_cancel or, when in doubt, livemig resolve"
            )
        vm.start()
        return {}

    async def quit(self, args: Args) -> object:
        args.finish()
        self._vmm.quit_requested.set()
        return {}

    async def query_vm(self, args: Args) -> object:
        args.finish()
        vm = self._vmm.vm
        if vm is None:
            raise CommandRefusedError("there is no VM on this daemon")
        with vm.lock:  # the vCPU thread is between slices: one consistent view
            return self._vm_reply(vm)

    def _vm_reply(self, vm: VirtualMachine) -> dict[str, object]:
        machine = vm.machine
        reply: dict[str, object] = {
            "ticks": machine.ticks,
            "runstate": str(vm.runstate),
            "running": vm.is_running,
            # The oracle compares digests taken at a stop (docs/architecture.md).
            "digest": None if vm.is_running else machine.digest(),
            "config": machine.config.to_dict(),
            "lost-ticks": vm.lost_ticks,
            "throttled-ticks": vm.throttled_ticks(),
            "cpu-throttle-percentage": vm.pacer.cpu_throttle_percent,
            "ticks-per-second": round(vm.ticks_per_second(), 1),
            "page-writes-per-second": round(vm.page_writes_per_second()),
        }
        if machine.config.workload is WorkloadKind.AB and not vm.is_running:
            reply["ab-check"] = machine.check_ab_ram()  # QEMU's check_guests_ram
        return reply

    # -- dirty limits (QEMU 7.1+: the KVM dirty ring; here the simulated vCPU's pacing) ---

    async def set_vcpu_dirty_limit(self, args: Args) -> object:
        cpu_index = self._cpu_index(args)
        rate = args.integer("dirty-rate", min_value=0, max_value=MAX_DIRTY_LIMIT_MB_S, unit="MB/s")
        args.finish()
        vm = self._vm_for_dirty_limit("set")
        # QEMU: a rate of 0 cancels the limit.
        vm.set_vcpu_dirty_limit(cpu_index, rate or None)
        return {}

    async def cancel_vcpu_dirty_limit(self, args: Args) -> object:
        cpu_index = self._cpu_index(args)
        args.finish()
        self._vm_for_dirty_limit("cancel").set_vcpu_dirty_limit(cpu_index, None)
        return {}

    async def query_vcpu_dirty_limit(self, args: Args) -> object:
        args.finish()
        vm = self._vmm.vm
        if vm is None:
            return []
        return [
            {
                "cpu-index": row.cpu_index,
                "limit-rate": row.limit_rate,
                "current-rate": row.current_rate,
            }
            for row in vm.pacer.vcpu_limits(vm.ticks_per_second())
        ]

    def _cpu_index(self, args: Args) -> int | None:
        vm = self._vmm.vm
        vcpus = vm.machine.config.vcpus if vm is not None else 1
        index = args.integer("cpu-index", None)
        if index is not None and not 0 <= index < vcpus:
            raise QMPError.generic("incorrect cpu index specified")
        return index

    def _vm_for_dirty_limit(self, verb: str) -> VirtualMachine:
        vm = self._vmm.vm
        if vm is None:
            raise CommandRefusedError("there is no VM on this daemon")
        outgoing = self._vmm.outgoing
        if outgoing is not None and is_active(outgoing.status) and outgoing.source.caps.dirty_limit:
            raise CommandRefusedError(
                f"can't {verb} dirty page rate limit while migration is running"
            )
        return vm

    # -- migration -----------------------------------------------------------------------

    async def migrate(self, args: Args) -> object:
        uri = args.string("uri")
        args.boolean("detach", default=True)  # accepted and ignored, as QEMU does
        resume = args.boolean("resume", default=False)
        args.finish()
        if resume:
            outgoing = self._vmm.outgoing
            if outgoing is None:
                raise CommandRefusedError("Cannot resume if there is no paused migration")
            outgoing.resume(_parse_uri(uri))
            return {}
        address = _parse_uri(uri)
        await self._vmm.standby.xbzrle_ready()  # the cache faulting in since xbzrle was set
        self._vmm.start_outgoing(address)
        return {}

    async def migrate_incoming(self, args: Args) -> object:
        uri = args.string("uri")
        args.boolean("exit-on-error", default=False)  # livemig always survives a failure
        args.finish()
        if uri == "defer":
            raise QMPError.generic("Parameter 'uri' does not accept value 'defer'")
        await self._vmm.start_incoming(_parse_uri(uri, listen=True))
        return {}

    async def migrate_cancel(self, args: Args) -> object:
        args.finish()
        outgoing = self._vmm.outgoing
        if outgoing is not None:
            outgoing.cancel()  # QEMU: a no-op when nothing runs; refused after HANDOVER
        return {}

    async def migrate_start_postcopy(self, args: Args) -> object:
        args.finish()
        outgoing = self._vmm.outgoing
        if outgoing is None:
            msg = "Postcopy must be started after migration has been started"
            raise CommandRefusedError(msg)
        outgoing.start_postcopy()
        return {}

    async def migrate_continue(self, args: Args) -> object:
        state = args.enum("state", [str(status) for status in MigrationStatus])
        args.finish()
        outgoing = self._vmm.outgoing
        if outgoing is None:
            raise CommandRefusedError(f"Migration not in expected state: {MigrationStatus.NONE}")
        outgoing.continue_switchover(state)
        return {}

    async def query_migrate(self, args: Args) -> object:
        args.finish()
        return self._vmm.query_migrate()

    async def set_parameters(self, args: Args) -> object:
        changes = {name: args.value(name) for name in list(args.unconsumed())}
        args.finish()
        try:
            self._vmm.set_parameters(self._vmm.params.updated(changes))
        except ParameterError as exc:
            raise QMPError.generic(exc.message) from exc
        return {}

    async def query_parameters(self, args: Args) -> object:
        args.finish()
        return self._vmm.params.to_qmp()

    async def set_capabilities(self, args: Args) -> object:
        changes: dict[str, bool] = {}
        for item in args.struct_array("capabilities"):
            name = item.enum("capability", capability_names())
            changes[name] = item.boolean("state")
        args.finish()
        if self._vmm.migration_status() not in (
            MigrationStatus.NONE,
            MigrationStatus.COMPLETED,
            MigrationStatus.FAILED,
            MigrationStatus.CANCELLED,
        ):
            raise CommandRefusedError("There's a migration process in progress")
        self._vmm.set_capabilities(self._vmm.caps.updated(changes))
        return {}

    async def query_capabilities(self, args: Args) -> object:
        args.finish()
        return self._vmm.caps.to_qmp()

    # -- in-doubt resolution -------------------------------------------------------------

    async def migrate_resolve(self, args: Args) -> object:
        action = args.enum("action", ["complete", "resume"])
        args.finish()
        outgoing = self._vmm.outgoing
        if outgoing is None:
            raise CommandRefusedError("no outgoing migration is in doubt")
        outgoing.resolve(destination_runs=action == "complete")
        return {}

    async def migrate_incoming_resolve(self, args: Args) -> object:
        action = args.enum("action", ["commit", "discard"])
        args.finish()
        vmm = self._vmm
        ledger = vmm.ledger
        held = ledger.held
        if held is None:
            raise CommandRefusedError("no incoming migration is in doubt")
        out = Outbox(vmm.clock())
        if action == "commit":
            install: Install = ledger.operator_commit(held.migration_id, out)
            ledger.adopted(held.migration_id, vmm.run_migrated_vm(install.machine), out)
        else:
            why = "discarded by the operator (livemig resolve)"
            ledger.discard(held.migration_id, why, out, cause="operator")
        execute_reports(out.take(), vmm, context={"role": "destination"})
        return {}

    async def query_migration_outcome(self, args: Args) -> object:
        """What this destination did with a migration id (no side effect)."""
        migration_id = args.string("migration-id")
        args.finish()
        ledger = self._vmm.ledger
        outcome = ledger.outcome_of(migration_id)
        record = ledger.records.get(migration_id)
        reply: dict[str, object] = {"outcome": str(outcome) if outcome else "loading"}
        if record is not None:
            reply["vm-uuid"] = record.uuid
        return reply

    # -- objects (QEMU's object-add / object-del: TLS credentials, authorization) --------

    async def object_add(self, args: Args) -> object:
        props = args.rest()
        args.finish()
        self._vmm.objects.add(props)
        return {}

    async def object_del(self, args: Args) -> object:
        object_id = args.string("id")
        args.finish()
        self._vmm.objects.delete(object_id)
        return {}

    # -- records -------------------------------------------------------------------------

    async def query_migration_records(self, args: Args) -> object:
        """The records of the newest migrations (oldest first), optionally by id prefix/role."""
        migration_id = args.string("id", None)
        role = args.enum("role", ["source", "destination"], None)
        args.finish()
        return self._vmm.records.find(migration_id=migration_id, role=role)


def _parse_uri(uri: str, *, listen: bool = False) -> MigrationAddress:
    try:
        return parse_migration_uri(uri, listen=listen)
    except UriError as exc:
        raise QMPError.generic(str(exc)) from exc
