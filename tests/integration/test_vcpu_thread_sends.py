"""The vCPU on its own thread while its VM migrates: which sends hold the VM's lock, and the oracle.

Pages sent as views of guest RAM are sent holding the lock (the writer hashes what the kernel
copied right after the copy); pages sent from the XBZRLE cache are not, so the guest runs while
they go. Either way the migrated VM equals a replay that never moved.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.helpers.inproc import FINAL, Daemon, make_pair, small_vm
from vmsim import WorkloadKind

BUSY_VM = {"ram_mib": 16, "workload": WorkloadKind.AB, "dirty_rate": 200_000}
SLOW = {"max-bandwidth": 64 << 20}  # a few passes of a guest that keeps writing


async def _guards_while_active(source: Daemon) -> set[object]:
    """The send guards of the source's channels, looked at while the migration is active."""
    for _ in range(2000):
        outgoing = source.vmm.outgoing
        channels = outgoing.runner.channels if outgoing is not None else {}
        if channels:
            return {channel.send_guard for channel in channels.values()}
        await asyncio.sleep(0.005)
    pytest.fail("no channel was opened in 10 s")


@pytest.mark.parametrize("xbzrle", [False, True])
def test_sends_hold_the_vm_lock_only_when_pages_are_views_of_guest_ram(run, tmp, xbzrle):
    async def main() -> None:
        pair = await make_pair(tmp, vm=small_vm(**BUSY_VM))
        try:
            vm = pair.source.vmm.vm
            assert vm is not None
            await pair.source.execute("migrate-set-parameters", SLOW)
            await pair.migrate(xbzrle=xbzrle)
            guards = await _guards_while_active(pair.source)
            assert any(t.name == "vcpu" and t.is_alive() for t in threading.enumerate())

            assert guards == ({None} if xbzrle else {vm.lock})
            assert "completed" == await pair.source.wait(FINAL, timeout_s=30)
            assert "completed" == await pair.dest.wait({"completed"}, timeout_s=30)
            await pair.dest.assert_matches_replay()
        finally:
            await pair.close()

    run(main, timeout_s=40)
