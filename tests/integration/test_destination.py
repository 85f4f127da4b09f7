"""The destination: what it refuses, what supersedes a held copy, and QEMU's rules for loading.

- BUSY: a VM runs here, another stream loads, or a different VM is held in doubt;
- a new migration of the VM held in doubt supersedes the held copy (only its owner can start it);
- a device the source did not send because its `needed` was false loads as its reset state;
- a VM that was not running on the source keeps its run state here (QEMU's globalstate);
- a file stream may end without VMDESCRIPTION.
"""

from __future__ import annotations

import asyncio
import ctypes
import time
from dataclasses import dataclass

from migration.glue import configuration_for
from protocol import SourceConnection
from tests.helpers.inproc import FINAL, Pair, make_pair, small_vm, start_daemon
from tests.integration import paths
from vmm import standby
from vmsim import Machine, MachineConfig, RunState, VMStateDescription, field_uint


def test_a_destination_with_a_vm_refuses_busy(run, tmp):
    async def main() -> None:
        source = await start_daemon(tmp, vm=small_vm(), incoming=None)
        busy = await start_daemon(tmp, vm=small_vm(seed=9))
        try:
            await source.execute("migrate", {"uri": busy.incoming_uri})
            assert "failed" == await source.wait(FINAL)
            info = await source.execute("query-migrate")
            assert "a VM is already on this daemon" in info["error-desc"]
            assert busy.vmm.ledger.current is None  # refused before it was a migration
            assert await source.runs()
            assert await busy.runs()
        finally:
            await source.close()
            await busy.close()

    run(main)


def test_a_second_concurrent_stream_is_refused(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        other = await start_daemon(tmp, vm=small_vm(seed=3), incoming=None)
        pair.others.append(other)
        try:
            await pair.source.execute("migrate-set-parameters", {"max-bandwidth": 2 << 20})
            await pair.migrate()
            await pair.dest.wait({"active"})
            await other.execute("migrate", {"uri": pair.dest.incoming_uri})
            assert "failed" == await other.wait(FINAL)
            info = await other.execute("query-migrate")
            assert "already receiving" in info["error-desc"]
            assert "active" == await pair.source.status()  # the first one goes on
        finally:
            await pair.close()

    run(main)


def test_a_new_migration_of_the_held_vm_supersedes_the_held_copy(run, tmp):
    async def main() -> None:
        vm = small_vm(uuid="33333333-3333-3333-3333-333333333333")
        pair = await make_pair(tmp, proxy=True, vm=vm)
        try:
            fault = pair.fault(type="stall", direction="return", before_frame="LOADED")
            await pair.migrate()
            await pair.proxy.wait_fired(fault, 10)
            await pair.source.close()  # its host died after the destination loaded the VM
            assert "in-doubt" == await pair.dest.wait({"in-doubt"})
            held = pair.dest.record

            # A different VM is refused while one is held ...
            stranger = await start_daemon(tmp, vm=small_vm(seed=5), incoming=None)
            pair.others.append(stranger)
            await stranger.execute("migrate", {"uri": pair.dest.incoming_uri})
            assert "failed" == await stranger.wait(FINAL)
            assert "held in doubt" in (await stranger.execute("query-migrate"))["error-desc"]

            # ... the same VM, from wherever its owner runs it now, supersedes the held copy.
            owner = await start_daemon(tmp, vm=vm, incoming=None)
            pair.others.append(owner)
            await owner.execute("migrate", {"uri": pair.dest.incoming_uri})
            assert "completed" == await owner.wait(FINAL)
            assert paths.DST_HELD_DISCARDED == held.history
            assert "superseded by migration" in (held.reason or "")
            assert paths.DST_COMMITTED == pair.dest.dest_path()
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main)


@dataclass
class Extra:
    """A device whose state is only sent when it has something to say (QEMU's `needed`)."""

    value: int = 0


EXTRA_VMSD = VMStateDescription(
    name="extra",
    version_id=1,
    fields=(field_uint("value", 32),),
    needed=lambda device: device.value != 0,
)


def test_a_device_that_is_not_needed_is_not_sent_and_keeps_its_reset_state(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            source_machine = pair.source.vmm.vm.machine
            source_machine.savevm.register("extra", 0, vmsd=EXTRA_VMSD, opaque=Extra(0))
            original = pair.dest.vmm.build_machine
            loaded: list[Extra] = []

            async def with_extra(config):
                machine = await original(config)
                loaded.append(Extra(0))
                machine.savevm.register("extra", 0, vmsd=EXTRA_VMSD, opaque=loaded[-1])
                return machine

            pair.dest.vmm.build_machine = with_extra
            await pair.migrate(x_digest_check=False)  # vmsim's digest knows its own devices
            assert "completed" == await pair.source.wait(FINAL)
            assert paths.DST_COMMITTED == pair.dest.dest_path()
            assert [Extra(0)] == loaded
            assert ("extra", 0) not in pair.dest.record.metrics.devices  # never sent
        finally:
            await pair.close()

    run(main)


def test_a_vm_that_was_not_running_keeps_its_run_state_at_the_destination(run, tmp):
    async def main() -> None:
        pair = await make_pair(tmp)
        try:
            pair.source.vmm.vm.stop(RunState.SUSPENDED)  # QEMU: e.g. a guest in S3
            await pair.migrate()
            assert "completed" == await pair.source.wait(FINAL)
            status = await pair.dest.execute("query-status")
            assert {"status": "suspended", "running": False} == status
        finally:
            await pair.close()

    run(main)


def test_a_file_stream_without_vmdescription_loads(run, tmp):
    async def main() -> None:
        source = await start_daemon(tmp, vm=small_vm(), incoming=None)
        dest = await start_daemon(tmp, incoming=None)
        try:
            path = tmp / "vm.stream"
            await source.execute("migrate", {"uri": f"file:{path}"})
            assert "completed" == await source.wait(FINAL)
            stream = path.read_bytes()
            vmdesc = _last_frame_offset(stream)
            path.write_bytes(stream[:vmdesc])  # VMDESCRIPTION is optional in a file (QEMU)

            await dest.execute("migrate-incoming", {"uri": f"file:{path}"})
            assert "completed" == await dest.wait({"completed", "failed"})
            assert paths.DST_FILE_COMMITTED == dest.dest_path()
            await dest.assert_matches_replay()
        finally:
            await source.close()
            await dest.close()

    run(main)


def _last_frame_offset(stream: bytes) -> int:
    """Where the stream's last frame (VMDESCRIPTION) starts."""
    from protocol import analyze_stream  # noqa: PLC0415

    frames = analyze_stream([stream])["frames"]
    assert "VMDESCRIPTION" == frames[-1]["kind"]
    return int(frames[-1]["offset"])


def test_a_silent_source_times_out_with_the_parameters_set_after_listening(run, tmp):
    """The destination applies `x-peer-timeout-ms` set while it was already listening."""

    async def main() -> None:
        dest = await start_daemon(tmp)  # FAST_PARAMETERS are set after it started listening
        try:
            conn = SourceConnection(timeouts=None, now=0.0)  # a source that will go silent
            machine = Machine.boot(small_vm())
            conn.send_configuration(configuration_for(machine, migration_id="m", capabilities=()))
            conn.send_open_return_path()
            host, port = dest.incoming_uri.removeprefix("tcp:").rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"".join(bytes(buffer) for buffer in conn.data_to_send()))
            await writer.drain()

            assert "failed" == await dest.wait({"failed"}, timeout_s=3.0)  # 600 ms, not 10 s
            assert "the source went silent" in (dest.record.reason or "")
            writer.close()
            await writer.wait_closed()
            del reader
        finally:
            await dest.close()

    run(main)


def _resident_share(array) -> float:
    """The share of `array`'s pages in memory now (mincore(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    page = 4096
    start = array.ctypes.data // page * page
    length = array.ctypes.data + array.nbytes - start
    pages = -(-length // page)
    vec = (ctypes.c_ubyte * pages)()
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    assert libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vec) == 0
    return sum(b & 1 for b in vec) / pages


def test_a_destination_with_mem_prealloc_has_its_ram_in_before_the_first_page(run, tmp):
    """`--mem-prealloc` (QEMU's -mem-prealloc): the incoming machine's RAM is faulted in
    before setup ends, instead of on a thread while the first pass arrives."""

    async def main() -> None:
        source = await start_daemon(tmp, vm=small_vm(), incoming=None)
        dest = await start_daemon(tmp, mem_prealloc=True)
        pair = Pair(source=source, dest=dest)
        seen: list[tuple[float, int]] = []
        build = dest.vmm.build_machine

        async def observed(config: MachineConfig) -> Machine:
            machine = await build(config)
            seen.append((_resident_share(machine.ram.array), len(dest.vmm._populating)))
            return machine

        dest.vmm.build_machine = observed  # type: ignore[method-assign]
        try:
            await pair.migrate()
            assert "completed" == await pair.source.wait(FINAL)
            await pair.dest.assert_matches_replay()
            assert [(1.0, 0)] == seen  # all of it resident, nothing populating behind
        finally:
            await pair.close()

    run(main)


def test_a_destination_given_the_ram_size_is_ready_only_with_that_ram_in_and_uses_it(
    run, tmp, monkeypatch
):
    """`dest-daemon --mem-prealloc --ram-mib N` (QEMU's -m N -mem-prealloc): started means the
    RAM is faulted in; the incoming VM of that size gets exactly that memory, as it was."""
    faulted_in = standby._faulted_in

    def slowly(size_bytes: int):  # a slow host: start() must still wait for it
        time.sleep(0.3)
        return faulted_in(size_bytes)

    monkeypatch.setattr(standby, "_faulted_in", slowly)

    async def main() -> None:
        dest = await start_daemon(tmp, mem_prealloc=True, standby_ram_mib=8)
        source = await start_daemon(tmp, vm=small_vm(), incoming=None)
        try:
            prepared = dest.vmm.standby._ready
            assert prepared is not None
            assert prepared.done()  # start() returned: the RAM is in
            ram = prepared.result()
            assert 1.0 == _resident_share(ram)
            await Pair(source=source, dest=dest).migrate()
            assert "completed" == await source.wait(FINAL)
            assert dest.vmm.vm is not None
            assert dest.vmm.vm.machine.ram.array is ram
            await dest.assert_matches_replay()
        finally:
            await source.close()
            await dest.close()

    run(main)


def test_with_mem_prealloc_a_vm_coming_back_lands_in_the_ram_of_the_one_that_left(run, tmp):
    """A -> B -> A: A's incoming machine reuses the RAM of its postmigrate VM (already faulted
    in; freed memory comes back cold on this host), zeroed first; the VM is the replay's."""

    async def main() -> None:
        a = await start_daemon(tmp, vm=small_vm(), mem_prealloc=True)
        b = await start_daemon(tmp, mem_prealloc=True)
        try:
            assert a.vmm.vm is not None
            left = a.vmm.vm.machine.ram.array
            await Pair(source=a, dest=b).migrate()
            assert "completed" == await a.wait(FINAL)
            await Pair(source=b, dest=a).migrate()
            assert "completed" == await b.wait(FINAL)
            assert a.vmm.vm is not None
            assert a.vmm.vm.machine.ram.array is left
            await a.assert_matches_replay()
        finally:
            await a.close()
            await b.close()

    run(main)
