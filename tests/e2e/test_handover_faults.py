"""docs/handover.md's failure table, one test per row, against real daemons through a fault proxy.

Every test checks the rule: afterwards (and after the documented resolution, where the table says
so) the VM runs on exactly one side, with exactly the state a replay that never moved has.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from faultproxy import FaultProxy, parse_fault
from livemig.resolve import resolve
from netio import QMPClientError, TcpAddress
from tests.e2e.conftest import (
    FINAL,
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

pytestmark = [pytest.mark.e2e, pytest.mark.fault, pytest.mark.timeout(120)]

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

    async def start_migration(self, *, pause_before_switchover: bool = False) -> None:
        """Fast liveness timeouts, digest check on, and `migrate` through the proxy."""
        for daemon in (self.source, self.dest):
            async with qmp(daemon) as client:
                await client.execute("migrate-set-parameters", FAST_TIMEOUTS)
        caps = {"events": True, "x-digest-check": True}
        caps["pause-before-switchover"] = pause_before_switchover
        async with qmp(self.source) as client:
            await client.execute(
                "migrate-set-capabilities",
                {"capabilities": [{"capability": n, "state": s} for n, s in caps.items()]},
            )
            await client.execute("migrate", {"uri": self.proxy_uri})

    async def status(self, daemon: DaemonProcess) -> str:
        """The daemon's migration status."""
        async with qmp(daemon) as client:
            return str((await client.execute("query-migrate")).get("status", "none"))

    async def wait(self, daemon: DaemonProcess, statuses: set[str], timeout_s: float = 30) -> str:
        """Wait for one of `statuses` on a daemon."""
        async with qmp(daemon) as client:
            info = await wait_status(client, frozenset(statuses), timeout_s)
        return str(info["status"])


@pytest.fixture
async def rig(daemons: Callable[..., DaemonProcess]) -> AsyncIterator[Rig]:
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


# -- rows 1-3: faults during setup or precopy ------------------------------------------------


async def test_row1_cut_during_precopy_then_retry_succeeds(rig: Rig) -> None:
    rig.fault(type="cut", direction="main", after_bytes=8 * 1024 * 1024)
    await rig.start_migration()

    assert "failed" == await rig.wait(rig.source, RESOLVED)
    assert "failed" == await rig.wait(rig.dest, {"failed"})
    assert await runs(rig.source)
    assert not await runs(rig.dest)

    await rig.start_migration()  # the cut was one-shot: the retry goes through
    assert "completed" == await rig.wait(rig.source, RESOLVED)
    await assert_runs_only_on(rig.dest, rig.source)


async def test_row2_destination_killed_during_precopy(rig: Rig) -> None:
    await rig.start_migration()
    await wait_active_with_data(rig)
    rig.dest.signal(signal.SIGKILL)

    assert "failed" == await rig.wait(rig.source, RESOLVED)
    await assert_runs_only_on(rig.source, rig.dest)


async def test_row3_source_killed_during_precopy(rig: Rig) -> None:
    await rig.start_migration()
    await wait_active_with_data(rig)
    rig.source.signal(signal.SIGKILL)

    assert "failed" == await rig.wait(rig.dest, {"failed"})
    assert not await runs(rig.dest)  # the VM died with its only complete copy


# -- rows 4-8: after the stop, before HANDOVER ------------------------------------------------


async def test_row4_cut_after_loaded_was_sent_source_resumes_dest_discards(rig: Rig) -> None:
    rig.fault(type="cut", before_frame="LOADED")
    await rig.start_migration()

    assert "failed" == await rig.wait(rig.source, RESOLVED)
    # The destination held a complete copy in doubt; the source's ABORT releases it.
    assert "failed" == await rig.wait(rig.dest, {"failed"})
    await assert_runs_only_on(rig.source, rig.dest)


async def test_row5_destination_killed_after_stop(rig: Rig) -> None:
    await rig.start_migration(pause_before_switchover=True)
    await rig.wait(rig.source, {"pre-switchover"})
    rig.dest.signal(signal.SIGKILL)
    async with qmp(rig.source) as client:
        # The source may notice the dead peer first and fail before the continue: either way.
        with contextlib.suppress(QMPClientError):
            await client.execute("migrate-continue", {"state": "pre-switchover"})

    assert "failed" == await rig.wait(rig.source, RESOLVED)
    await assert_runs_only_on(rig.source, rig.dest)


async def test_row6_source_killed_after_stop_with_an_incomplete_stream(rig: Rig) -> None:
    await rig.start_migration(pause_before_switchover=True)
    await rig.wait(rig.source, {"pre-switchover"})
    rig.source.signal(signal.SIGKILL)

    assert "failed" == await rig.wait(rig.dest, {"failed"})
    assert not await runs(rig.dest)  # incomplete: discarded (the killed host had the only copy)


async def test_row7_source_killed_after_loaded_dest_resolves_with_source_dead(rig: Rig) -> None:
    fault = rig.fault(type="stall", before_frame="LOADED")
    await rig.start_migration()
    await rig.proxy.wait_fired(fault, 30)  # type: ignore[arg-type]
    rig.source.signal(signal.SIGKILL)

    assert "in-doubt" == await rig.wait(rig.dest, {"in-doubt"})
    assert not await runs(rig.dest)
    actions = await resolve(None, rig.dest.qmp_address, source_dead=True, dest_dead=False)

    assert ["dest: x-migrate-incoming-resolve {action: commit}"] == actions
    assert await runs(rig.dest)
    async with qmp(rig.dest) as client:
        assert_matches_replay(await stopped_vm(client))


# -- rows 9-12: around HANDOVER -----------------------------------------------------------------


async def test_row9_cut_before_handover_arrives_resolves_to_destination(rig: Rig) -> None:
    rig.fault(type="cut", before_frame="HANDOVER")
    await rig.start_migration()

    # In doubt, then the source's RESOLVE finds the destination in doubt and hands over again.
    assert "completed" == await rig.wait(rig.source, RESOLVED)
    assert "completed" == await rig.wait(rig.dest, {"completed"})
    await assert_runs_only_on(rig.dest, rig.source)


async def test_row10_cut_before_resumed_arrives_resolves_to_destination(rig: Rig) -> None:
    rig.fault(type="cut", before_frame="RESUMED")
    await rig.start_migration()

    assert "completed" == await rig.wait(rig.source, RESOLVED)
    await assert_runs_only_on(rig.dest, rig.source)


async def test_row11_destination_killed_after_handover_sent_source_resolves(rig: Rig) -> None:
    fault = rig.fault(type="stall", before_frame="HANDOVER")
    await rig.start_migration()
    await rig.proxy.wait_fired(fault, 30)  # type: ignore[arg-type]
    rig.dest.signal(signal.SIGKILL)

    assert "in-doubt" == await rig.wait(rig.source, {"in-doubt"})
    assert not await runs(rig.source)  # never resumes by itself after HANDOVER
    actions = await resolve(rig.source.qmp_address, None, source_dead=False, dest_dead=True)

    assert ["source: x-migrate-resolve {action: resume}"] == actions
    await assert_runs_only_on(rig.source, rig.dest)


async def test_row12_source_killed_after_handover_arrived(rig: Rig) -> None:
    fault = rig.fault(type="stall", before_frame="RESUMED")
    await rig.start_migration()
    await rig.proxy.wait_fired(fault, 30)  # type: ignore[arg-type]
    rig.source.signal(signal.SIGKILL)

    assert "completed" == await rig.wait(rig.dest, {"completed"})
    assert await runs(rig.dest)
    async with qmp(rig.dest) as client:
        assert_matches_replay(await stopped_vm(client))


# -- rows 13-15: stalled peers --------------------------------------------------------------


async def test_row13_source_stalled_during_precopy(rig: Rig) -> None:
    await rig.start_migration()
    await wait_active_with_data(rig)
    rig.source.signal(signal.SIGSTOP)
    assert "failed" == await rig.wait(rig.dest, {"failed"})  # peer timeout: discarded
    rig.source.signal(signal.SIGCONT)

    assert "failed" == await rig.wait(rig.source, RESOLVED)
    await assert_runs_only_on(rig.source, rig.dest)


async def test_row14_destination_stalled_during_precopy(rig: Rig) -> None:
    await rig.start_migration()
    await wait_active_with_data(rig)
    rig.dest.signal(signal.SIGSTOP)
    assert "failed" == await rig.wait(rig.source, RESOLVED)  # peer timeout: resumed
    rig.dest.signal(signal.SIGCONT)

    assert "failed" == await rig.wait(rig.dest, {"failed"})
    await assert_runs_only_on(rig.source, rig.dest)


async def test_row15_destination_stalled_after_handover_arrived(rig: Rig) -> None:
    fault = rig.fault(type="stall", before_frame="HANDOVER")
    await rig.start_migration()
    await rig.proxy.wait_fired(fault, 30)  # type: ignore[arg-type]
    rig.dest.signal(signal.SIGSTOP)
    rig.proxy.release()  # HANDOVER lands in the stopped destination's socket buffer

    assert "in-doubt" == await rig.wait(rig.source, {"in-doubt"})
    rig.dest.signal(signal.SIGCONT)

    assert "completed" == await rig.wait(rig.source, RESOLVED)
    await assert_runs_only_on(rig.dest, rig.source)


# -- row 17: cancel once the VM is being handed over ------------------------------------------


async def test_row17_cancel_after_handover_sent_is_refused(rig: Rig) -> None:
    fault = rig.fault(type="stall", before_frame="HANDOVER")
    await rig.start_migration()
    await rig.proxy.wait_fired(fault, 30)  # type: ignore[arg-type]
    async with qmp(rig.source) as client:
        with pytest.raises(QMPClientError, match="being handed over"):
            await client.execute("migrate_cancel")
    rig.proxy.release()

    assert "completed" == await rig.wait(rig.source, FINAL)
    await assert_runs_only_on(rig.dest, rig.source)
